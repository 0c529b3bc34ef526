//! Producers: threads that commit business transactions enqueueing events through the outbox,
//! and roll some back. Each thread owns its aggregates, so an aggregate's events are committed
//! in their sequence order; the committed table, written in the same transactions, is the truth
//! the ledger is checked against.

use super::{database_url, Names, Options, Random};
use eventflow::outbox::OutboxTable;
use eventflow::Event;
use postgres::{Client, NoTls};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use uuid::Uuid;

const THREADS: u32 = 2;

/// What the producers did.
#[derive(Debug, Default)]
pub struct Produced {
    /// Transactions committed (as far as the producers know: a commit cut off by a terminated
    /// session may have committed or not; the committed table says which).
    pub committed: u64,
    /// Event ids of transactions rolled back on purpose.
    pub rolled_back: Vec<String>,
}

pub struct Producers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Produced>>,
}

impl Producers {
    pub fn stop(self) -> Produced {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = Produced::default();
        for thread in self.threads {
            let produced = thread.join().unwrap_or_default();
            total.committed += produced.committed;
            total.rolled_back.extend(produced.rolled_back);
        }
        total
    }
}

pub fn start(names: &Names, options: &Options, seed: u64) -> Producers {
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..THREADS)
        .map(|thread| {
            let names = names.clone();
            let stop = stop.clone();
            let aggregates: Vec<Uuid> = (0..options.aggregates)
                .filter(|a| a % THREADS == thread)
                .map(|a| Uuid::from_u128(((seed as u128) << 64) | a as u128))
                .collect();
            let per_second = (options.rate / THREADS).max(1);
            let random = Random::new(seed ^ ((thread as u64 + 1) * 0x9e37_79b9));
            std::thread::spawn(move || produce(&names, aggregates, per_second, random, &stop))
        })
        .collect();
    Producers { stop, threads }
}

fn produce(
    names: &Names,
    aggregates: Vec<Uuid>,
    per_second: u32,
    mut random: Random,
    stop: &AtomicBool,
) -> Produced {
    let outbox = OutboxTable::named(names.outbox()).expect("a valid table name");
    let insert = format!(
        "INSERT INTO {} (event_id, aggregate_id, seq) VALUES ($1, $2, $3)",
        names.committed()
    );
    let url = database_url(&format!("{}_producer", names.run));
    let mut produced = Produced::default();
    // The next sequence number of each aggregate; read back from the committed table after an
    // error (`stale`), since a commit cut off may have happened. The table's key on
    // (aggregate_id, seq) refuses a number used twice.
    let mut next_seq = vec![0i32; aggregates.len()];
    let mut stale = vec![false; aggregates.len()];
    let mut client: Option<Client> = None;
    let started = Instant::now();
    let mut events_sent: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        // Pace: events_sent should not run ahead of per_second × elapsed.
        let allowed = (started.elapsed().as_secs_f64() * per_second as f64) as u64;
        if events_sent >= allowed {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let db = match client.as_mut() {
            Some(db) if !db.is_closed() => db,
            _ => match Client::connect(&url, NoTls) {
                Ok(db) => client.insert(db),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let index = random.below(aggregates.len() as u64) as usize;
        let aggregate = aggregates[index];
        if stale[index] {
            // A commit cut off may or may not have happened: the committed table says.
            let max = db.query_one(
                &format!(
                    "SELECT max(seq) FROM {} WHERE aggregate_id = $1",
                    names.committed()
                ),
                &[&aggregate],
            );
            match max {
                Ok(row) => {
                    next_seq[index] = row.get::<_, Option<i32>>(0).map_or(0, |m| m + 1);
                    stale[index] = false;
                }
                Err(_) => {
                    client = None;
                    continue;
                }
            }
        }
        let count = 1 + random.below(3) as i32;
        let commit = !random.chance(5);
        let first = next_seq[index];
        let events: Vec<Event> = (first..first + count)
            .map(|seq| {
                let mut event = Event::new("SoakEvent", aggregate, json!({ "seq": seq }));
                event.event_id = format!("{}-{aggregate}-{seq}-{}", names.run, random.next_u64());
                event
            })
            .collect();
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let mut tx = db.transaction()?;
            for (event, seq) in events.iter().zip(first..) {
                tx.execute(&insert, &[&event.event_id, &aggregate, &seq])?;
            }
            outbox.enqueue_batch(&mut tx, &names.stream(), &events)?;
            if commit {
                tx.commit()?;
            } else {
                tx.rollback()?;
            }
            Ok(())
        })();
        events_sent += count as u64;
        match result {
            Ok(()) if commit => {
                produced.committed += 1;
                next_seq[index] += count;
            }
            Ok(()) => produced
                .rolled_back
                .extend(events.iter().map(|e| e.event_id.clone())),
            Err(_) => {
                stale[index] = true;
                client = None;
            }
        }
    }
    produced
}
