//! One source, several sinks, on the in-memory broker: every sink gets what
//! its filter takes, the others are counted as filtered, the source is read
//! once and acked once; a rate limit holds a sink back without losing
//! anything. Real brokers: integration-tests/tests/fanout.rs.

use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_bridge::config::Config;
use causeway_bridge::endpoint::Endpoints;
use causeway_core::memory::{ConsumerOptions, MemoryBroker};
use causeway_core::{Event, Publisher};
use tokio_util::sync::CancellationToken;

fn config(dir: &tempfile::TempDir, mode: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[store]
sqlite = "{}/store.db"
[endpoints.src.memory]
topic = "in"
[endpoints.dst.memory]
[routes.r]
source = "src"
mode = "{mode}"
batch_size = 50
linger = "10ms"
[routes.r.sinks.all]
endpoint = "dst"
destination = "all"
[routes.r.sinks.debits]
endpoint = "dst"
destination = "debits"
filter = {{ all = [{{ field = "type", glob = "tx.debit*" }}], any = [{{ field = "key", prefix = "acct-" }}, {{ field = "header.vip", equals = "yes" }}] }}
{extra}
"#,
        dir.path().display()
    );
    Config::parse(&text, "fanout.toml").expect("config")
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let kind = if i % 2 == 0 { "tx.debit" } else { "tx.credit" };
            Event::new(format!("e-{i}"), "test://fanout", kind)
                .with_key(format!("acct-{}", i % 5))
                .with_header("seq", i.to_string())
        })
        .collect()
}

/// Runs route `r` until `done` holds (60 s at most), then stops it.
async fn run(bridge: &Bridge, broker: &MemoryBroker, done: impl Fn(&MemoryBroker) -> bool) {
    let shutdown = CancellationToken::new();
    let sinks = bridge.sinks("r").await.expect("sinks");
    assert_eq!(sinks.len(), 2);
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(causeway_bridge::pipeline::run_fanout(
        sinks,
        source,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(broker) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("route stops cleanly");
    let at = |t: &str| broker.published(t);
    assert!(
        done(broker),
        "not done within 60 s: {} at `all`, {} at `debits`",
        at("all"),
        at("debits")
    );
}

async fn bridge(dir: &tempfile::TempDir, mode: &str, extra: &str) -> (Bridge, MemoryBroker) {
    let config = config(dir, mode, extra);
    let broker = MemoryBroker::new();
    let mut bridge = Bridge::new(config.clone()).await.expect("bridge");
    bridge.endpoints = Endpoints::with_memory(config.endpoints, broker.clone());
    (bridge, broker)
}

async fn filters_and_acks(mode: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, mode, "").await;
    let sent = events(200);
    broker
        .publisher()
        .publish("in", &sent)
        .await
        .expect("publish");
    run(&bridge, &broker, |b| {
        b.published("all") == 200 && b.published("debits") == 100
    })
    .await;
    let all = bridge.metrics.route("r/all");
    let debits = bridge.metrics.route("r/debits");
    assert_eq!(all.published.get(), 200, "{mode}: every event at `all`");
    assert_eq!(all.filtered.get(), 0);
    assert_eq!(debits.published.get(), 100, "{mode}: debits only");
    assert_eq!(
        debits.filtered.get(),
        100,
        "{mode}: credits counted, not sent"
    );
    assert_eq!(
        debits.dead_lettered.get(),
        0,
        "{mode}: filtered is not dead"
    );
    // The source was acked: nothing comes back to its group.
    let mut again = broker.consumer("in", "causeway", ConsumerOptions::default());
    let left = causeway_testkit::receive_and_ack(&mut again, 1, Duration::from_millis(300)).await;
    assert!(left.is_empty(), "{mode}: source not acked: {left:?}");
    if mode == "durable" {
        let stats = bridge.store.stats(Some("r")).await.expect("stats");
        assert_eq!(stats.events, 200, "one append per event, not one per sink");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_each_sink_takes_what_its_filter_takes_and_the_source_is_acked_once() {
    filters_and_acks("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_one_append_a_cursor_per_sink_each_takes_what_its_filter_takes() {
    filters_and_acks("durable").await;
}

/// 60 events at 20 per second with a burst of 10 cannot all be sent in
/// under (60 - 10) / 20 = 2.5 s: the lower bound is the limit holding; a
/// slow machine only makes it longer. Nothing is lost or dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_its_sink_back_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let limit = "[routes.r.sinks.all.rate_limit]\nevents_per_second = 20\nburst = 10\n";
    let (bridge, broker) = bridge(&dir, "direct", limit).await;
    broker
        .publisher()
        .publish("in", &events(60))
        .await
        .expect("publish");
    let started = Instant::now();
    run(&bridge, &broker, |b| b.published("all") == 60).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2_400),
        "60 events at 20/s, burst 10, took only {took:?}"
    );
    let all = bridge.metrics.route("r/all");
    assert_eq!(all.published.get(), 60);
    assert_eq!(all.dead_lettered.get(), 0);
    assert_eq!(
        broker.published("debits"),
        30,
        "the other sink is not limited"
    );
}

/// Durable fan-out with retention deleting, every 10 ms, whatever is older
/// than 1 ms: it may delete only what every sink's cursor has passed, so
/// the slow sink (rate-limited, seconds behind the other) still gets every
/// event, and once both passed everything the stream empties. Before the
/// fix a sink had no cursor until its first confirmation, retention went
/// by the fast sink's alone, and the slow one lost 50 to 70 of the 120.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_retention_waits_for_the_slowest_sink() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempfile::tempdir().expect("dir");
    let limit = "[routes.r.sinks.all.rate_limit]\nevents_per_second = 40\nburst = 10\n";
    let (bridge, broker) = bridge(&dir, "durable", limit).await;
    broker
        .publisher()
        .publish("in", &events(120))
        .await
        .expect("publish");
    let policy = causeway_core::Retention {
        max_age: Some(Duration::from_millis(1)),
        ..causeway_core::Retention::default()
    };
    let deleted = Arc::new(AtomicU64::new(0));
    let retention = {
        let (store, policy, deleted) = (bridge.store.clone(), policy.clone(), deleted.clone());
        tokio::spawn(async move {
            loop {
                let n = store.apply_retention(&policy).await.expect("retention");
                deleted.fetch_add(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let deleted_while_running = AtomicU64::new(0);
    run(&bridge, &broker, |b| {
        if b.published("all") < 120 {
            deleted_while_running.store(deleted.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        b.published("all") == 120 && b.published("debits") == 60
    })
    .await;
    let deleted_while_running = deleted_while_running.load(Ordering::SeqCst);
    retention.abort();
    assert_eq!(bridge.metrics.route("r/all").published.get(), 120);
    assert_eq!(bridge.metrics.route("r/debits").published.get(), 60);
    assert!(
        deleted_while_running > 0,
        "retention deleted nothing while the slow sink was catching up"
    );
    bridge
        .store
        .apply_retention(&policy)
        .await
        .expect("retention");
    let left = bridge.store.stats(Some("r")).await.expect("stats").events;
    assert_eq!(left, 0, "both sinks passed everything: nothing to keep");
}

#[test]
fn a_route_gives_either_one_sink_or_sinks() {
    let bad = |extra: &str| {
        let text = format!(
            "[store]\n[endpoints.src.memory]\ntopic = \"in\"\n[endpoints.dst.memory]\n[routes.r]\nsource = \"src\"\n{extra}"
        );
        Config::parse(&text, "bad.toml")
            .expect_err("refused")
            .to_string()
    };
    let e = bad(
        "sink = \"dst\"\ndestination = \"x\"\n[routes.r.sinks.a]\nendpoint = \"dst\"\ndestination = \"y\"",
    );
    assert!(e.contains("routes.r") && e.contains("either"), "{e}");
    let e = bad("");
    assert!(e.contains("either"), "{e}");
    let e = bad("[routes.r.sinks.a]\nendpoint = \"nowhere\"\ndestination = \"y\"");
    assert!(e.contains("routes.r.sinks.a.endpoint"), "{e}");
    let e = bad(
        "[routes.r.sinks.a]\nendpoint = \"dst\"\ndestination = \"y\"\nfilter = { all = [{ field = \"type\", regex = \"(\" }] }",
    );
    assert!(
        e.contains("routes.r.sinks.a.filter") && e.contains("all[0]"),
        "{e}"
    );
    let e = bad(
        "[routes.r.sinks.a]\nendpoint = \"dst\"\ndestination = \"y\"\nrate_limit = { burst = 3 }",
    );
    assert!(e.contains("rate_limit"), "{e}");
}
