//! SIGKILL in the middle of appending: every append the store said was
//! durable is there after reopening, and no batch is half there.
//!
//! The calling test runs its own binary again as the child, selected by an
//! environment variable, so no helper test or binary exists:
//!
//! ```text
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn sigkill_mid_append() {
//!     causeway_testkit::crash::sigkill_mid_append("sigkill_mid_append", make_location, open).await;
//! }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use causeway_core::{Event, EventStore, ReadFrom, ReadQuery};

const CHILD: &str = "CAUSEWAY_CRASH_CHILD";
const WRITERS: usize = 4;
const BATCH: usize = 100;
const STREAM: &str = "crash";

fn batch(writer: usize, n: usize) -> Vec<Event> {
    (0..BATCH)
        .map(|i| {
            Event::new(
                format!("w{writer}-b{n}-{i}"),
                "causeway://crash",
                "causeway.test",
            )
            .with_payload(vec![i as u8; 1024])
        })
        .collect()
}

/// The child: four tasks append 100-event batches as fast as they can,
/// printing `durable w<writer> b<n>` once each append returned.
async fn child(store: Arc<dyn EventStore>) {
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    store.append(STREAM, &batch(w, n)).await.expect("append");
                    println!("durable w{w} b{n}");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
}

/// Runs the scenario. `test_name` is the calling test's exact name (the
/// child runs it again); `location` makes a fresh store location (a file
/// path, a schema) in the parent; `open` opens the store at a location, in
/// the child and again after the crash.
pub async fn sigkill_mid_append<L, F, Fut>(test_name: &str, location: L, open: F)
where
    L: FnOnce() -> String,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Arc<dyn EventStore>>,
{
    if let Ok(at) = std::env::var(CHILD) {
        return child(open(at).await).await;
    }
    let at = location();
    let mut process = Command::new(std::env::current_exe().expect("test binary"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, &at)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = process.stdout.take().expect("stdout");
    // Keep reading until the pipe closes, so the child never writes into a
    // closed pipe; say when enough is durable to kill it mid-stream.
    let target = 40 + fastrand::usize(..40);
    let (enough, enough_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut durable: Vec<(usize, usize)> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("durable w") {
                let (w, n) = rest.split_once(" b").expect("line format");
                durable.push((w.parse().expect("writer"), n.parse().expect("batch")));
                if durable.len() == target {
                    let _ = enough.send(());
                }
            }
        }
        durable
    });
    let reached = enough_rx.recv_timeout(Duration::from_secs(120)).is_ok();
    std::thread::sleep(Duration::from_millis(fastrand::u64(..20)));
    process.kill().expect("SIGKILL"); // std sends SIGKILL on unix
    let status = process.wait().expect("reap");
    let durable = reader.join().expect("reader");
    assert!(
        reached,
        "the child stopped after {} durable batches ({status})",
        durable.len()
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "the child ended by itself, not by SIGKILL: {status}"
    );

    let store = open(at).await;
    let stored = store
        .read(&ReadQuery::new(STREAM, ReadFrom::Position(0), usize::MAX))
        .await
        .expect("read after crash");
    let mut per_batch: HashMap<(usize, usize), usize> = HashMap::new();
    for s in &stored {
        let (w, rest) = s.event.id[1..].split_once("-b").expect("id format");
        let (n, _) = rest.split_once('-').expect("id format");
        *per_batch
            .entry((w.parse().expect("w"), n.parse().expect("n")))
            .or_default() += 1;
        assert_eq!(s.event.payload.len(), 1024, "payload damaged");
    }
    for b in &durable {
        assert_eq!(
            per_batch.get(b),
            Some(&BATCH),
            "durable batch {b:?} missing or partial after SIGKILL"
        );
    }
    for (b, count) in &per_batch {
        assert_eq!(
            *count, BATCH,
            "batch {b:?} is half there: {count} of {BATCH}"
        );
    }
    println!(
        "crash: {} batches reported durable, {} batches ({} events) stored after SIGKILL, none partial",
        durable.len(),
        per_batch.len(),
        stored.len()
    );
}
