use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use causeway_core::{Consumer, Delivery, Event};

/// A name unique to this process run: `prefix-t<pid>-<n>-<random>`, so
/// scenarios and repeated runs against one broker never share a
/// destination. The `t` marks it as a test's: xtask lets RabbitMQ delete
/// idle queues named so, and nothing else.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-t{}-{}-{:04x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        fastrand::u16(..)
    )
}

/// `n` events with ids `{prefix}-{i}`, keys `key-{i % keys}` (none if
/// `keys == 0`), a `seq` header and a small payload.
pub fn events(prefix: &str, n: usize, keys: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = Event::new(
                format!("{prefix}-{i}"),
                "causeway://testkit",
                "causeway.test",
            )
            .with_header("seq", i.to_string())
            .with_payload(format!("payload {i}").into_bytes());
            if keys > 0 {
                e = e.with_key(format!("key-{}", i % keys));
            }
            e
        })
        .collect()
}

/// Whether the suite runs in its long mode (`cargo xtask test --full` sets
/// `CAUSEWAY_FULL=1`): scenarios sized down for CI run at full size.
pub fn full() -> bool {
    std::env::var_os("CAUSEWAY_FULL").is_some_and(|v| v == "1")
}

/// The file `not_applicable` appends to, when set (`cargo xtask test`
/// sets it and lists the skipped scenarios at the end of the run).
pub const SKIPPED_FILE_VAR: &str = "CAUSEWAY_SKIPPED_FILE";

/// Says that a scenario does not apply to this backend and why (a
/// capability it does not declare). The test harness can only pass such a
/// test, so it is also recorded in [`SKIPPED_FILE_VAR`]'s file, and the
/// run reports it as skipped, not as tested.
pub fn not_applicable(backend: &str, scenario: &str, why: &str) {
    let line = format!("{backend}: {scenario}: not applicable: {why}");
    println!("{line}");
    if let Some(path) = std::env::var_os(SKIPPED_FILE_VAR) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            panic!(
                "cannot record a skipped scenario in {}: {e}",
                path.to_string_lossy()
            );
        }
    }
}

/// Receives until `n` deliveries arrived or `timeout` passed.
pub async fn collect(consumer: &mut dyn Consumer, n: usize, timeout: Duration) -> Vec<Delivery> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let batch = consumer
            .next_batch(n - out.len(), left.min(Duration::from_secs(1)))
            .await
            .expect("next_batch failed");
        out.extend(batch);
    }
    out
}

/// Receives until `n` deliveries arrived or `timeout` passed, rejecting the
/// undecodable ones as an application would (to the adapter's dead-letter
/// destination) and acking the rest; returns the acked events' ids, sorted.
pub async fn reject_undecodable_ack_rest(
    consumer: &mut dyn Consumer,
    n: usize,
    timeout: Duration,
) -> Vec<String> {
    let mut ids = Vec::new();
    for d in collect(consumer, n, timeout).await {
        match d.undecodable.clone() {
            Some(reason) => d
                .reject(format!("undecodable message: {reason}"))
                .await
                .expect("reject"),
            None => {
                ids.push(d.event.id.clone());
                d.ack().await.expect("ack");
            }
        }
    }
    ids.sort();
    ids
}

/// The one message at `destination`, read raw through the harness's
/// adapter and acked: what a foreign producer wrote, as causeway sees it.
pub async fn receive_one_raw(
    h: &dyn crate::BrokerHarness,
    destination: &str,
    timeout: Duration,
) -> Event {
    let mut consumer = h
        .consumer_reading(destination, "raw-reader", causeway_core::InputFormat::Raw)
        .await
        .expect("consumer");
    receive_and_ack(consumer.as_mut(), 1, timeout)
        .await
        .pop()
        .unwrap_or_else(|| panic!("{}: nothing arrived in {timeout:?}", h.name()))
}

/// Receives and acks until `n` events arrived or `timeout` passed.
pub async fn receive_and_ack(
    consumer: &mut dyn Consumer,
    n: usize,
    timeout: Duration,
) -> Vec<Event> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let batch = consumer
            .next_batch(n - out.len(), left.min(Duration::from_secs(1)))
            .await
            .expect("next_batch failed");
        let mut tickets = Vec::with_capacity(batch.len());
        for d in batch {
            out.push(d.event);
            tickets.push((d.ticket, causeway_core::Settlement::Ack));
        }
        causeway_core::settle_all(tickets)
            .await
            .expect("ack failed");
    }
    out
}
