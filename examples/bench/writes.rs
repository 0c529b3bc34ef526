//! **Writes per event.** With `--writes`, what PostgreSQL writes for each event, counted from
//! its write-ahead log rather than estimated: a flood of `--events` events with the no-op
//! handler (so that only the inbox's own writes are counted), once through the hand-written
//! floor on the reference table and once through eventflow, each between two WAL positions
//! that the bench reads with `pg_wal_lsn`, and whose records it then lists with `pg_waldump`.
//!
//! Per event it prints the row versions written (heap inserts, updates that had to add index
//! entries, HOT updates that did not), the row locks taken (`SELECT ... FOR UPDATE` writes one
//! to the WAL per row), the index entries added (B-tree leaf inserts, into a posting list or
//! not), commits, and WAL bytes. Only records of user relations count (a relfilenode from
//! 16384 up); the system catalogs' records (a run's `CREATE TABLE`, say) are left out, but
//! their bytes are in the WAL total.
//!
//! It needs a server on this machine whose WAL it can read (`SHOW data_directory`, so a
//! superuser) and `pg_waldump` (on `PATH` or in Debian's `/usr/lib/postgresql/<major>/bin`).
//! A private server is best: another client's writes in between would be counted too.

use super::{eventflow_run, floor, Handler, Options, Scenario};
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::process::Command;

/// The first relfilenode PostgreSQL gives a user relation (`FirstNormalObjectId`).
const FIRST_USER_RELFILENODE: u64 = 16384;

/// What the WAL between two positions says was written, over user relations.
#[derive(Default, Debug)]
struct Writes {
    /// Records by resource manager and kind (`Heap/INSERT`, `Btree/INSERT_LEAF`, ...).
    records: BTreeMap<String, u64>,
    /// Rows a `Heap2/MULTI_INSERT` record stored, counted as inserts.
    multi_inserted: u64,
    commits: u64,
    wal_bytes: u64,
}

impl Writes {
    fn count(&self, kind: &str) -> u64 {
        self.records.get(kind).copied().unwrap_or(0)
    }

    fn row_versions(&self) -> u64 {
        self.count("Heap/INSERT") + self.multi_inserted + self.updates() + self.hot_updates()
    }

    fn updates(&self) -> u64 {
        self.count("Heap/UPDATE")
    }

    fn hot_updates(&self) -> u64 {
        self.count("Heap/HOT_UPDATE")
    }

    fn index_entries(&self) -> u64 {
        self.count("Btree/INSERT_LEAF") + self.count("Btree/INSERT_POST")
    }
}

/// Runs the floor and eventflow once each, counts their writes and prints them per event.
pub fn run(options: &Options) {
    let mut db = Client::connect(&options.database_url, NoTls).expect("PostgreSQL");
    let waldump = waldump(&mut db);
    let wal_dir = format!("{}/pg_wal", setting(&mut db, "data_directory"));
    let n = options.events;
    let mut measure = |name: &str, run: &dyn Fn()| {
        let start = flushed_lsn(&mut db);
        run();
        let end = flushed_lsn(&mut db);
        let wal_bytes: i64 = db
            .query_one(
                "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::int8",
                &[&end, &start],
            )
            .unwrap()
            .get(0);
        let mut writes = read_wal(&waldump, &wal_dir, &start, &end);
        writes.wal_bytes = wal_bytes as u64;
        (name.to_string(), writes)
    };
    let floor_writes = measure("floor: hand-written, reference table", &|| {
        floor::run(options, Handler::NoOp, None, None);
    });
    let eventflow_writes = measure("eventflow", &|| {
        eventflow_run(
            options,
            Scenario {
                write: false,
                ..Scenario::default()
            },
        );
    });
    println!(
        "\nwrites per event, {n} events, no-op handler (from the WAL; user relations only)\n\
         {:<38} {:>9} {:>8} {:>8} {:>8} {:>9} {:>11} {:>10}",
        "scenario", "versions", "updates", "HOT", "locks", "index ent", "commits/1k", "WAL bytes"
    );
    for (name, writes) in [floor_writes, eventflow_writes] {
        let per = |count: u64| count as f64 / n as f64;
        println!(
            "{name:<38} {:>9.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>11.1} {:>10.0}",
            per(writes.row_versions()),
            per(writes.updates()),
            per(writes.hot_updates()),
            per(writes.count("Heap/LOCK")),
            per(writes.index_entries()),
            1000.0 * per(writes.commits),
            per(writes.wal_bytes),
        );
        let detail: Vec<String> = writes
            .records
            .iter()
            .filter(|(_, count)| per(**count) >= 0.01)
            .map(|(kind, count)| format!("{kind} {:.2}", per(*count)))
            .collect();
        println!("  records per event: {}", detail.join(", "));
    }
}

/// `pg_waldump`: on `PATH`, else where Debian installs the server's major version.
fn waldump(db: &mut Client) -> String {
    let on_path = Command::new("pg_waldump").arg("--version").output();
    if on_path.is_ok_and(|out| out.status.success()) {
        return "pg_waldump".into();
    }
    let version: i32 = setting(db, "server_version_num").parse().unwrap();
    let debian = format!("/usr/lib/postgresql/{}/bin/pg_waldump", version / 10000);
    assert!(
        std::path::Path::new(&debian).exists(),
        "--writes needs pg_waldump, on PATH or at {debian}"
    );
    debian
}

fn setting(db: &mut Client, name: &str) -> String {
    db.query_one("SELECT current_setting($1)", &[&name])
        .unwrap_or_else(|e| panic!("--writes reads the server's {name} (a superuser can): {e}"))
        .get(0)
}

/// How far the server's WAL is flushed: every commit of a finished run is before it.
fn flushed_lsn(db: &mut Client) -> String {
    db.query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .unwrap()
        .get(0)
}

/// Lists the records from `start` to `end` with `pg_waldump` and tallies those of user
/// relations, and the commits.
fn read_wal(waldump: &str, wal_dir: &str, start: &str, end: &str) -> Writes {
    let output = Command::new(waldump)
        .args(["--path", wal_dir, "--start", start, "--end", end])
        .output()
        .expect("run pg_waldump");
    assert!(
        output.status.success(),
        "pg_waldump failed (the bench must run where it can read {wal_dir}): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut writes = Writes::default();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        tally(&mut writes, line);
    }
    writes
}

/// Counts one `pg_waldump` line, such as `rmgr: Heap len (rec/tot): 54/54, tx: 735, lsn:
/// 0/0155D8A0, prev 0/0155D868, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel
/// 1663/5/16384 blk 0`.
fn tally(writes: &mut Writes, line: &str) {
    let Some(rmgr) = line
        .strip_prefix("rmgr: ")
        .and_then(|rest| rest.split_whitespace().next())
    else {
        return;
    };
    let Some(desc) = line.split("desc: ").nth(1) else {
        return;
    };
    let kind = desc
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches(',')
        .trim_end_matches("+INIT");
    if rmgr == "Transaction" && kind == "COMMIT" {
        writes.commits += 1;
        return;
    }
    let user_relation = line
        .split("blkref #0: rel ")
        .nth(1)
        .and_then(|rel| rel.split_whitespace().next())
        .and_then(|rel| rel.rsplit('/').next())
        .and_then(|node| node.parse::<u64>().ok())
        .is_some_and(|node| node >= FIRST_USER_RELFILENODE);
    if !user_relation {
        return;
    }
    if rmgr == "Heap2" && kind == "MULTI_INSERT" {
        writes.multi_inserted += desc
            .split("ntuples: ")
            .nth(1)
            .and_then(|n| n.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(1);
    }
    *writes.records.entry(format!("{rmgr}/{kind}")).or_default() += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_user_relations_records_and_every_commit() {
        let mut writes = Writes::default();
        for line in [
            "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0155D8A0, prev 0/0155D868, desc: INSERT+INIT off 1 flags 0x00, blkref #0: rel 1663/5/16390 blk 0",
            "rmgr: Heap        len (rec/tot):     54/    54, tx:        735, lsn: 0/0155D8A0, prev 0/0155D868, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/1259 blk 0",
            "rmgr: Btree       len (rec/tot):     64/    64, tx:        735, lsn: 0/0155D8F0, prev 0/0155D8A0, desc: INSERT_LEAF off 1, blkref #0: rel 1663/5/16393 blk 1",
            "rmgr: Btree       len (rec/tot):     64/    64, tx:        735, lsn: 0/0155D8F0, prev 0/0155D8A0, desc: INSERT_POST off 3, blkref #0: rel 1663/5/16394 blk 1",
            "rmgr: Heap        len (rec/tot):     72/    72, tx:        736, lsn: 0/0155D930, prev 0/0155D8F0, desc: HOT_UPDATE off 1 xmax 736 flags 0x10 ; new off 2 xmax 0, blkref #0: rel 1663/5/16390 blk 0",
            "rmgr: Heap2       len (rec/tot):     90/    90, tx:        737, lsn: 0/0155D970, prev 0/0155D930, desc: MULTI_INSERT+INIT ntuples: 3, flags: 0x00, blkref #0: rel 1663/5/16390 blk 4",
            "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/0155D9B0, prev 0/0155D970, desc: COMMIT 2026-12-06 16:40:00.000000 UTC",
        ] {
            tally(&mut writes, line);
        }
        assert_eq!(
            writes.count("Heap/INSERT"),
            1,
            "the catalog's insert is left out"
        );
        assert_eq!(writes.index_entries(), 2);
        assert_eq!(writes.hot_updates(), 1);
        assert_eq!(writes.row_versions(), 1 + 3 + 1);
        assert_eq!(writes.commits, 1);
    }
}
