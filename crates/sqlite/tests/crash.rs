//! SIGKILL in the middle of appending: every append the store said was
//! durable is there after reopening, and no batch is half there.
//!
//! The test runs its own binary again as the child (selected by an
//! environment variable), so no helper test or binary exists.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use causeway_core::{Event, EventStore, ReadFrom, ReadQuery};
use causeway_sqlite::{SqliteOptions, SqliteStore};

const CHILD: &str = "CAUSEWAY_SQLITE_CRASH_CHILD";
const WRITERS: usize = 4;
const BATCH: usize = 100;

fn batch(writer: usize, n: usize) -> Vec<Event> {
    (0..BATCH)
        .map(|i| {
            Event::new(format!("w{writer}-b{n}-{i}"), "causeway://crash", "causeway.test")
                .with_payload(vec![i as u8; 1024])
        })
        .collect()
}

/// The child: four tasks append batches as fast as they can, printing
/// `durable w<writer> b<n>` once each append returned.
async fn child(path: &str) {
    let store = SqliteStore::open(path, SqliteOptions::default()).expect("open");
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    store.append("crash", &batch(w, n)).await.expect("append");
                    println!("durable w{w} b{n}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_append_keeps_every_durable_batch_whole() {
    if let Ok(path) = std::env::var(CHILD) {
        return child(&path).await;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["sigkill_mid_append_keeps_every_durable_batch_whole", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    // Read until enough is durable, then kill at a random moment mid-stream.
    let reader = std::thread::spawn(move || {
        let mut durable: Vec<(usize, usize)> = Vec::new();
        let target = 40 + fastrand::usize(..40);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("durable w") {
                let (w, n) = rest.split_once(" b").expect("line format");
                durable.push((w.parse().expect("writer"), n.parse().expect("batch")));
                if durable.len() == target {
                    break;
                }
            }
        }
        durable
    });
    let durable = reader.join().expect("reader");
    std::thread::sleep(Duration::from_millis(fastrand::u64(..20)));
    child.kill().expect("SIGKILL"); // std sends SIGKILL on unix
    child.wait().expect("reap");
    assert!(durable.len() >= 40, "child reported only {} durable batches", durable.len());

    let store = SqliteStore::open(&path, SqliteOptions::default()).expect("reopen after crash");
    let stored = store
        .read(&ReadQuery::new("crash", ReadFrom::Position(0), usize::MAX))
        .await
        .expect("read");
    let mut per_batch: HashMap<(usize, usize), usize> = HashMap::new();
    for s in &stored {
        let (w, rest) = s.event.id[1..].split_once("-b").expect("id format");
        let (n, _) = rest.split_once('-').expect("id format");
        *per_batch.entry((w.parse().expect("w"), n.parse().expect("n"))).or_default() += 1;
        assert_eq!(s.event.payload.len(), 1024, "payload damaged");
    }
    for batch in &durable {
        assert_eq!(per_batch.get(batch), Some(&BATCH), "durable batch {batch:?} missing or partial after SIGKILL");
    }
    for (batch, count) in &per_batch {
        assert_eq!(*count, BATCH, "batch {batch:?} is half there: {count} of {BATCH}");
    }
    println!(
        "sqlite crash: {} batches reported durable, {} batches ({} events) on disk after SIGKILL, none partial",
        durable.len(),
        per_batch.len(),
        stored.len()
    );
}
