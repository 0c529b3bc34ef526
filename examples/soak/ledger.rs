//! The soak's bookkeeping: the committed table the producers write in their business
//! transactions, the ledger the consumers' handlers write in theirs, and the check of one
//! against the other.

use super::{database_url, Names};
use postgres::{Client, NoTls};
use std::fmt;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn connect(names: &Names) -> Result<Client> {
    Ok(Client::connect(
        &database_url(&format!("{}-checker", names.run)),
        NoTls,
    )?)
}

/// Creates the committed table, the ledger and the outbox (the consumers create the inbox).
pub fn create(names: &Names) -> Result<()> {
    let mut db = connect(names)?;
    db.batch_execute(&format!(
        "CREATE TABLE {committed} (
             event_id TEXT PRIMARY KEY,
             aggregate_id UUID NOT NULL,
             seq INTEGER NOT NULL,
             UNIQUE (aggregate_id, seq));
         CREATE TABLE {ledger} (
             id BIGSERIAL PRIMARY KEY,
             event_id TEXT NOT NULL,
             aggregate_id UUID NOT NULL,
             seq INTEGER NOT NULL,
             process TEXT NOT NULL,
             handled_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());",
        committed = names.committed(),
        ledger = names.ledger(),
    ))?;
    use eventflow::store::outbox::OutboxStore;
    eventflow::store::outbox::PostgresOutbox::builder(database_url(&format!(
        "{}-setup",
        names.run
    )))
    .table(names.outbox())
    .build()?
    .migrate()?;
    Ok(())
}

/// Waits until every committed event is published and handled; false if `timeout` passed.
pub fn wait_for_drain(names: &Names, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut db = connect(names)?;
    let sql = format!(
        "SELECT (SELECT count(*) FROM {committed}),
                (SELECT count(DISTINCT event_id) FROM {ledger}),
                (SELECT count(*) FROM {outbox} WHERE status <> 'published')",
        committed = names.committed(),
        ledger = names.ledger(),
        outbox = names.outbox(),
    );
    let mut last_print = Instant::now();
    loop {
        let row = match db.query_one(&sql, &[]) {
            Ok(row) => row,
            Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(500));
                db = connect(names)?;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        let (committed, handled, unpublished): (i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2));
        if handled >= committed && unpublished == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            println!("draining: {handled} of {committed} handled, {unpublished} unpublished");
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// What the ledger says.
#[derive(Debug)]
pub struct Report {
    pub committed: i64,
    pub handled_rows: i64,
    pub handled_events: i64,
    pub missing: i64,
    pub handled_twice: i64,
    pub not_committed_but_handled: i64,
    pub rolled_back_handled: i64,
    pub order_violations: i64,
    pub inbox_not_processed: i64,
    pub outbox_not_published: i64,
    pub quarantined: i64,
    pub aggregates: i64,
    pub by_process: Vec<(String, i64)>,
}

impl Report {
    pub fn holds(&self) -> bool {
        self.committed > 0
            && self.missing == 0
            && self.handled_twice == 0
            && self.not_committed_but_handled == 0
            && self.rolled_back_handled == 0
            && self.order_violations == 0
            && self.inbox_not_processed == 0
            && self.outbox_not_published == 0
            && self.quarantined == 0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ledger:")?;
        writeln!(f, "  committed events            {}", self.committed)?;
        writeln!(f, "  aggregates                  {}", self.aggregates)?;
        writeln!(f, "  handler commits (ledger)    {}", self.handled_rows)?;
        writeln!(f, "  distinct events handled     {}", self.handled_events)?;
        writeln!(f, "  committed, never handled    {}", self.missing)?;
        writeln!(f, "  handled more than once      {}", self.handled_twice)?;
        writeln!(
            f,
            "  handled, never committed    {}",
            self.not_committed_but_handled
        )?;
        writeln!(
            f,
            "  rolled back, yet handled    {}",
            self.rolled_back_handled
        )?;
        writeln!(f, "  out of order in aggregate   {}", self.order_violations)?;
        writeln!(
            f,
            "  inbox rows not processed    {}",
            self.inbox_not_processed
        )?;
        writeln!(
            f,
            "  outbox rows not published   {}",
            self.outbox_not_published
        )?;
        writeln!(f, "  quarantined entries         {}", self.quarantined)?;
        for (process, handled) in &self.by_process {
            writeln!(f, "  handled by {process:<28} {handled}")?;
        }
        write!(
            f,
            "verdict: {}",
            if self.holds() { "HOLDS" } else { "VIOLATED" }
        )
    }
}

pub fn check(names: &Names, rolled_back: &[String]) -> Result<Report> {
    let mut db = connect(names)?;
    let committed = names.committed();
    let ledger = names.ledger();
    let inbox = names.inbox();
    let outbox = names.outbox();
    let one = |db: &mut Client, sql: String| -> Result<i64> { Ok(db.query_one(&sql, &[])?.get(0)) };
    Ok(Report {
        committed: one(&mut db, format!("SELECT count(*) FROM {committed}"))?,
        aggregates: one(
            &mut db,
            format!("SELECT count(DISTINCT aggregate_id) FROM {committed}"),
        )?,
        handled_rows: one(&mut db, format!("SELECT count(*) FROM {ledger}"))?,
        handled_events: one(
            &mut db,
            format!("SELECT count(DISTINCT event_id) FROM {ledger}"),
        )?,
        missing: one(
            &mut db,
            format!(
                "SELECT count(*) FROM {committed} c WHERE NOT EXISTS \
                 (SELECT 1 FROM {ledger} l WHERE l.event_id = c.event_id)"
            ),
        )?,
        handled_twice: one(
            &mut db,
            format!(
                "SELECT count(*) FROM (SELECT event_id FROM {ledger} GROUP BY event_id \
                 HAVING count(*) > 1) twice"
            ),
        )?,
        not_committed_but_handled: one(
            &mut db,
            format!(
                "SELECT count(*) FROM {ledger} l WHERE NOT EXISTS \
                 (SELECT 1 FROM {committed} c WHERE c.event_id = l.event_id)"
            ),
        )?,
        rolled_back_handled: db
            .query_one(
                &format!("SELECT count(*) FROM {ledger} WHERE event_id = ANY($1)"),
                &[&rolled_back],
            )?
            .get(0),
        // Each aggregate's handler commits, in the order they were written, must carry strictly
        // increasing sequence numbers.
        order_violations: one(
            &mut db,
            format!(
                "SELECT count(*) FROM (SELECT seq, lag(seq) OVER \
                 (PARTITION BY aggregate_id ORDER BY id) AS previous FROM {ledger}) s \
                 WHERE previous IS NOT NULL AND seq <= previous"
            ),
        )?,
        inbox_not_processed: one(
            &mut db,
            format!("SELECT count(*) FROM {inbox} WHERE status <> 'processed'"),
        )?,
        outbox_not_published: one(
            &mut db,
            format!("SELECT count(*) FROM {outbox} WHERE status <> 'published'"),
        )?,
        quarantined: one(&mut db, format!("SELECT count(*) FROM {inbox}_quarantine"))?,
        by_process: db
            .query(
                &format!(
                    "SELECT process, count(*) FROM {ledger} GROUP BY process ORDER BY process"
                ),
                &[],
            )?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect(),
    })
}

pub fn drop_tables(names: &Names) -> Result<()> {
    let mut db = connect(names)?;
    let inbox = names.inbox();
    let outbox = names.outbox();
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {committed}, {ledger}, {inbox}, {inbox}_quarantine, {outbox};
         DELETE FROM eventflow_migrations WHERE target IN ('inbox:{inbox}', 'outbox:{outbox}');
         DELETE FROM eventflow_inbox_owners WHERE inbox_table = '{inbox}';",
        committed = names.committed(),
        ledger = names.ledger(),
    ))?;
    Ok(())
}
