//! The bridge's pipeline on the in-memory broker: order per key, dedup,
//! a sink outage in durable mode, poison events, shutdown, replay. Adapter
//! behaviour on real brokers is each adapter's own conformance suite.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use causeway_bridge::config::{Config, RouteConfig};
use causeway_bridge::endpoint::Endpoints;
use causeway_bridge::pipeline::{Fate, Route, dead_letter_stream};
use causeway_bridge::{Bridge, Replay};
use causeway_core::memory::{ConsumerOptions, MemoryBroker};
use causeway_core::{
    Capabilities, Error, ErrorKind, Event, Publisher, ReadFrom, ReadQuery, Receipt, Result,
    RetryPolicy, RetryingPublisher, dead_letter,
};
use tokio_util::sync::CancellationToken;

fn config(dir: &tempfile::TempDir, mode: &str) -> Config {
    let text = format!(
        r#"
[store]
sqlite = "{}/store.db"
[endpoints.src.memory]
topic = "in"
[endpoints.dst.memory]
[routes.r]
source = "src"
sink = "dst"
destination = "out-{{key_hash % 3}}"
mode = "{mode}"
batch_size = 100
linger = "10ms"
shards = 4
retry = {{ max_attempts = 2, initial_delay = "10ms", max_delay = "20ms" }}
breaker = {{ failures = 3, cooldown = "100ms" }}
"#,
        dir.path().display()
    );
    Config::parse(&text, "test.toml").expect("config")
}

/// A bridge whose memory broker keeps duplicates (no publish-side dedup),
/// so the bridge's own dedup is what is tested.
async fn bridge(dir: &tempfile::TempDir, mode: &str) -> (Bridge, MemoryBroker) {
    let config = config(dir, mode);
    let broker = MemoryBroker::with_limits(Duration::ZERO, 1024 * 1024);
    let mut bridge = Bridge::new(config.clone()).await.expect("bridge");
    bridge.endpoints = Endpoints::with_memory(config.endpoints, broker.clone());
    (bridge, broker)
}

async fn publish(broker: &MemoryBroker, events: &[Event]) {
    let out = broker
        .publisher()
        .publish("in", events)
        .await
        .expect("publish");
    assert!(out.iter().all(|o| o.is_ok()));
}

/// Everything at the sink, by topic, in order.
async fn drain_sink(broker: &MemoryBroker, expect: usize) -> Vec<Event> {
    let mut all = Vec::new();
    for t in 0..3 {
        let mut c = broker.consumer(&format!("out-{t}"), "check", ConsumerOptions::default());
        loop {
            let got =
                causeway_testkit::receive_and_ack(&mut c, 1000, Duration::from_millis(200)).await;
            if got.is_empty() {
                break;
            }
            all.extend(got);
        }
    }
    assert_eq!(all.len(), expect, "events at the sink");
    all
}

fn assert_order_per_key(events: &[Event]) {
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        let seq: usize = e.header("seq").expect("seq").parse().expect("seq");
        let key = e.key.clone().expect("key");
        if let Some(prev) = last.insert(key.clone(), seq) {
            assert!(prev < seq, "key {key}: {seq} after {prev}");
        }
    }
}

async fn run_until(
    bridge: &Bridge,
    broker: &MemoryBroker,
    route: Arc<Route>,
    sink_total: impl Fn(&MemoryBroker) -> usize,
    want: usize,
) {
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    // Generous: under a full CI run the store's fsyncs share the disk with every other suite.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while sink_total(broker) < want && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reached = sink_total(broker);
    shutdown.cancel();
    task.await.expect("task").expect("route stops cleanly");
    assert!(
        reached >= want,
        "only {reached} of {want} at the sink after 90 s"
    );
}

fn at_sink(broker: &MemoryBroker) -> usize {
    (0..3).map(|t| broker.published(&format!("out-{t}"))).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_keeps_order_per_key_and_every_field() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let sent = causeway_testkit::events("d", 1000, 20);
    publish(&broker, &sent).await;
    run_until(
        &bridge,
        &broker,
        bridge.route("r").await.expect("route"),
        at_sink,
        1000,
    )
    .await;
    let got = drain_sink(&broker, 1000).await;
    assert_order_per_key(&got);
    let by_id: BTreeMap<&str, &Event> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
    for e in &got {
        assert_eq!(by_id[e.id.as_str()], e, "event changed on the way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_mode_drops_duplicates_the_source_delivers() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let sent = causeway_testkit::events("dup", 300, 10);
    publish(&broker, &sent).await;
    publish(&broker, &sent[..100]).await; // the source delivers these twice
    let route = bridge.route("r").await.expect("route");
    let duplicates = bridge.metrics.route("r").duplicates;
    // Run until everything is at the sink and the second copies went by too.
    let done = move |b: &MemoryBroker| {
        if duplicates.get() >= 100 {
            at_sink(b)
        } else {
            0
        }
    };
    run_until(&bridge, &broker, route, done, 300).await;
    drain_sink(&broker, 300).await;
    assert_eq!(bridge.metrics.route("r").duplicates.get(), 100);
}

/// Applies each of `policies` once, as the bridge's retention task does.
async fn retain(bridge: &Bridge, policies: &[(&str, causeway_core::Retention)]) -> u64 {
    let mut deleted = 0;
    for (_, policy) in policies {
        deleted += bridge
            .store
            .apply_retention(policy)
            .await
            .expect("retention");
    }
    deleted
}

/// How many dead letters route `r` has in the store.
async fn dead_letter_count(bridge: &Bridge) -> u64 {
    bridge
        .store
        .stats(Some(&dead_letter_stream("r")))
        .await
        .expect("stats")
        .events
}

/// Route `r`'s dead letters in the store (at most 10).
async fn dead_letters(bridge: &Bridge) -> Vec<causeway_core::StoredEvent> {
    bridge
        .store
        .read(&ReadQuery::new(
            dead_letter_stream("r"),
            ReadFrom::Position(0),
            10,
        ))
        .await
        .expect("dead letters")
}

/// `base`'s parts without its dead-letter destination, for a route with
/// one part replaced (`Route { sink, ..parts_of(&base) }`).
fn parts_of(base: &Route) -> Route {
    Route {
        name: base.name.clone(),
        stream: base.stream.clone(),
        forwarder: base.forwarder.clone(),
        filter: base.filter.clone(),
        config: base.config.clone(),
        template: base.template.clone(),
        shape: base.shape.clone(),
        sink: base.sink.clone(),
        dead_letter: None,
        store: base.store.clone(),
        dedup: base.dedup.clone(),
        shared_store: base.shared_store,
        metrics: base.metrics.clone(),
    }
}

/// `base` with `config` and `sink` instead of its own carries `sent` from
/// the source; returns what reached the sink (all of it, checked).
async fn carry(
    bridge: &Bridge,
    broker: &MemoryBroker,
    base: &Route,
    config: RouteConfig,
    sink: Arc<dyn Publisher>,
    sent: &[Event],
) -> Vec<Event> {
    let route = Arc::new(Route {
        config,
        sink,
        ..parts_of(base)
    });
    publish(broker, sent).await;
    run_until(bridge, broker, route, at_sink, sent.len()).await;
    drain_sink(broker, sent.len()).await
}

/// A sink that can go down, and that refuses some ids permanently.
struct Flaky {
    inner: Arc<dyn Publisher>,
    down: Arc<AtomicBool>,
    poison: HashSet<String>,
}

#[async_trait]
impl Publisher for Flaky {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Connection, "sink unreachable"));
        }
        let mut out = Vec::new();
        for e in events {
            out.push(if self.poison.contains(&e.id) {
                Err(Error::new(
                    ErrorKind::Rejected,
                    "schema violation: amount is not a number",
                ))
            } else {
                self.inner
                    .publish(destination, std::slice::from_ref(e))
                    .await?
                    .remove(0)
            });
        }
        Ok(out)
    }
}

/// Route `r` of `bridge` publishing through `sink`, behind the retry
/// wrapper (quick retries) where `retried`.
async fn route_with_sink(
    bridge: &Bridge,
    sink: impl Publisher + 'static,
    retried: bool,
) -> Arc<Route> {
    let base = bridge.route("r").await.expect("route");
    let sink: Arc<dyn Publisher> = if retried {
        Arc::new(RetryingPublisher::new(
            sink,
            RetryPolicy {
                max_attempts: 2,
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(20),
                ..RetryPolicy::default()
            },
        ))
    } else {
        Arc::new(sink)
    };
    Arc::new(Route {
        sink,
        ..parts_of(&base)
    })
}

async fn flaky_route(bridge: &Bridge, down: Arc<AtomicBool>, poison: &[&str]) -> Arc<Route> {
    let flaky = Flaky {
        inner: bridge.endpoints.publisher("dst").await.expect("sink"),
        down,
        poison: poison.iter().map(|s| (*s).to_owned()).collect(),
    };
    route_with_sink(bridge, flaky, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_mode_keeps_consuming_through_a_sink_outage_and_drains_after() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "durable").await;
    let down = Arc::new(AtomicBool::new(true));
    let route = flaky_route(&bridge, down.clone(), &[]).await;
    let sent = causeway_testkit::events("o", 500, 10);
    publish(&broker, &sent).await;
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    // The sink is down: the source is still consumed into the store.
    for _ in 0..4500 {
        if bridge.store.stats(Some("r")).await.expect("stats").events == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        bridge.store.stats(Some("r")).await.expect("stats").events,
        500,
        "source stalled behind the sink"
    );
    assert_eq!(at_sink(&broker), 0);
    down.store(false, Ordering::SeqCst);
    for _ in 0..4500 {
        if at_sink(&broker) >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    let got = drain_sink(&broker, 500).await;
    assert_order_per_key(&got);
}

/// Retention as the bridge applies it runs all through an outage of a
/// durable route's sink that began before anything was forwarded: the
/// stream has no cursor yet, and nothing may be deleted (before the fix
/// all of it was, with `max_bytes = 0`). Dead letters stay too, unless
/// they have their own policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_never_deletes_what_was_not_forwarded() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "durable").await;
    let down = Arc::new(AtomicBool::new(true));
    let route = flaky_route(&bridge, down.clone(), &["rt-3"]).await;
    let retention: causeway_bridge::config::RetentionConfig =
        toml::from_str("max_age = \"1ms\"\nmax_bytes = 0\nevery = \"50ms\"")
            .expect("retention config");
    let policies = causeway_bridge::retention_policies(&retention);
    let sent = causeway_testkit::events("rt", 300, 10);
    publish(&broker, &sent).await;
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    let mut deleted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // The outage lasts until everything was received and retention ran
    // over the stored events for at least a second.
    let received = bridge.metrics.route("r").received;
    let outage_ends = tokio::time::Instant::now() + Duration::from_secs(1);
    while (received.get() < 300 || tokio::time::Instant::now() < outage_ends)
        && tokio::time::Instant::now() < deadline
    {
        deleted += retain(&bridge, &policies).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(deleted, 0, "retention deleted events the sink never had");
    assert_eq!(
        bridge.store.stats(Some("r")).await.expect("stats").events,
        300
    );
    down.store(false, Ordering::SeqCst);
    while at_sink(&broker) < 299 && tokio::time::Instant::now() < deadline {
        retain(&bridge, &policies).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    drain_sink(&broker, 299).await;
    // The poison event's dead letter outlives retention of its route.
    retain(&bridge, &policies).await;
    assert_eq!(
        dead_letter_count(&bridge).await,
        1,
        "dead letters are kept without a policy of their own"
    );
    // Their own policy deletes them, and only them.
    let with_dead_letters: causeway_bridge::config::RetentionConfig =
        toml::from_str("[dead_letters]\nmax_age = \"1ms\"").expect("retention config");
    retain(
        &bridge,
        &causeway_bridge::retention_policies(&with_dead_letters),
    )
    .await;
    assert_eq!(dead_letter_count(&bridge).await, 0);
}

/// A store whose cursor operations fail a few times, as a database does
/// in a failover or under lock contention.
struct CursorTrouble {
    inner: Arc<dyn causeway_core::EventStore>,
    failures_left: std::sync::atomic::AtomicU32,
}

impl CursorTrouble {
    fn fail(&self) -> Result<()> {
        let left = self.failures_left.load(Ordering::SeqCst);
        if left > 0 {
            self.failures_left.store(left - 1, Ordering::SeqCst);
            return Err(Error::new(ErrorKind::Storage, "database is locked"));
        }
        Ok(())
    }
}

#[async_trait]
impl causeway_core::EventStore for CursorTrouble {
    async fn append(
        &self,
        stream: &str,
        events: &[Event],
    ) -> Result<Vec<causeway_core::AppendOutcome>> {
        self.inner.append(stream, events).await
    }
    async fn read(&self, query: &ReadQuery) -> Result<Vec<causeway_core::StoredEvent>> {
        self.inner.read(query).await
    }
    async fn cursor(&self, stream: &str, name: &str) -> Result<Option<u64>> {
        self.fail()?;
        self.inner.cursor(stream, name).await
    }
    async fn set_cursor(&self, stream: &str, name: &str, position: u64) -> Result<()> {
        self.fail()?;
        self.inner.set_cursor(stream, name, position).await
    }
    async fn apply_retention(&self, policy: &causeway_core::Retention) -> Result<u64> {
        self.inner.apply_retention(policy).await
    }
    async fn stats(&self, stream: Option<&str>) -> Result<causeway_core::StoreStats> {
        self.inner.stats(stream).await
    }
}

/// A durable route's forwarder outlives store errors: before, one failed
/// cursor read or write ended it while the source kept being acked into
/// the store, so nothing was forwarded again and nothing said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forwarder_survives_transient_store_errors() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "durable").await;
    let base = bridge.route("r").await.expect("route");
    let route = Arc::new(Route {
        store: Arc::new(CursorTrouble {
            inner: base.store.clone(),
            failures_left: 3.into(),
        }),
        ..parts_of(&base)
    });
    publish(&broker, &causeway_testkit::events("st", 300, 10)).await;
    run_until(&bridge, &broker, route, at_sink, 300).await;
    let got = drain_sink(&broker, 300).await;
    assert_order_per_key(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_with_its_reason_and_the_rest_flows() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let route = flaky_route(&bridge, Arc::new(AtomicBool::new(false)), &["p-7"]).await;
    publish(&broker, &causeway_testkit::events("p", 50, 5)).await;
    run_until(&bridge, &broker, route, at_sink, 49).await;
    drain_sink(&broker, 49).await;
    let dead = dead_letters(&bridge).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.id, "p-7");
    assert!(
        dead[0]
            .event
            .header(dead_letter::REASON)
            .is_some_and(|r| r.contains("schema violation"))
    );
    assert_eq!(dead[0].event.header(dead_letter::ORIGIN), Some("route r"));
}

/// Events a foreign producer wrote that are not valid CloudEvents (CR/LF
/// in an id, NUL in an extension value, an empty source, an escape sequence
/// in a key) become one dead letter each, with the reason, in a form the
/// store can keep; the good events around them arrive, in both modes.
/// Before the fix control characters passed validation and reached the
/// sink (and, on real brokers, panicked async-nats or failed PostgreSQL's
/// group commit).
async fn invalid_events_are_dead_lettered_alone(mode: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, mode).await;
    let mut sent = causeway_testkit::events("h", 46, 5);
    sent[3].id = "h-3\r\nX-Injected: 1".into();
    sent[10]
        .headers
        .insert("traceparent".into(), "00-\u{0}".into());
    sent[20].source = String::new();
    sent[30].key = Some("acct\u{1b}[2J".into());
    broker.publish_unchecked("in", &sent);
    run_until(
        &bridge,
        &broker,
        bridge.route("r").await.expect("route"),
        at_sink,
        42,
    )
    .await;
    let got = drain_sink(&broker, 42).await;
    assert!(got.iter().all(|e| e.validate().is_ok()));
    let dead = dead_letters(&bridge).await;
    let reasons: Vec<&str> = dead
        .iter()
        .map(|d| d.event.header(dead_letter::REASON).unwrap_or_default())
        .collect();
    assert_eq!(dead.len(), 4, "{reasons:?}");
    for field in ["`id`", "`traceparent`", "`source`", "`partitionkey`"] {
        let reason = reasons.iter().find(|r| r.contains(field));
        assert!(reason.is_some(), "no dead letter for {field}: {reasons:?}");
    }
    assert!(
        dead.iter()
            .any(|d| d.event.id == "h-3\\u{d}\\u{a}X-Injected: 1"),
        "the id's control characters are escaped, not dropped"
    );
    assert!(dead.iter().all(|d| d.event.validate().is_ok()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_dead_lettered_alone_in_direct_mode() {
    invalid_events_are_dead_lettered_alone("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_events_are_dead_lettered_alone_in_durable_mode() {
    invalid_events_are_dead_lettered_alone("durable").await;
}

/// A sink that returns fewer outcomes than events broke its contract: the
/// events without an outcome are not acked as sent (they were before: every
/// outcome started as sent), they are retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_returning_too_few_outcomes_gets_the_rest_again() {
    struct Short {
        inner: Arc<dyn Publisher>,
        calls: AtomicUsize,
    }
    #[async_trait]
    impl Publisher for Short {
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn publish(
            &self,
            destination: &str,
            events: &[Event],
        ) -> Result<Vec<Result<Receipt>>> {
            // The first call forgets its last event entirely: not sent, no outcome.
            let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
            let n = if first {
                events.len() - 1
            } else {
                events.len()
            };
            self.inner.publish(destination, &events[..n]).await
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let base = bridge.route("r").await.expect("route");
    let mut config = base.config.clone();
    config.shards = 1;
    let route = Arc::new(Route {
        config,
        sink: Arc::new(Short {
            inner: bridge.endpoints.publisher("dst").await.expect("sink"),
            calls: Default::default(),
        }),
        ..parts_of(&base)
    });
    let sent: Vec<Event> = causeway_testkit::events("short", 20, 1)
        .into_iter()
        .map(|mut e| {
            e.key = Some("one".into());
            e
        })
        .collect();
    publish(&broker, &sent).await;
    run_until(&bridge, &broker, route, at_sink, 20).await;
    drain_sink(&broker, 20).await;
}

/// A sink that refuses everything permanently for a while, as one does
/// after a key rotation (401) or before its queue exists (not found).
struct Broken {
    inner: Arc<dyn Publisher>,
    broken: Arc<AtomicBool>,
    kind: ErrorKind,
}

#[async_trait]
impl Publisher for Broken {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        if self.broken.load(Ordering::SeqCst) {
            return Ok(events
                .iter()
                .map(|_| Err(Error::new(self.kind, "refused by the sink")))
                .collect());
        }
        self.inner.publish(destination, events).await
    }
}

/// A broken sink is not a bad event: while it refuses everything the route
/// pauses and dead-letters nothing; when it recovers everything flows.
/// Before the fix every event sent while it was broken was dead-lettered.
async fn a_broken_sink_pauses_the_route(mode: &str, kind: ErrorKind) {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, mode).await;
    let base = bridge.route("r").await.expect("route");
    let broken = Arc::new(AtomicBool::new(true));
    let route = Arc::new(Route {
        sink: Arc::new(Broken {
            inner: bridge.endpoints.publisher("dst").await.expect("sink"),
            broken: broken.clone(),
            kind,
        }),
        ..parts_of(&base)
    });
    publish(&broker, &causeway_testkit::events("b", 200, 10)).await;
    let refusals = bridge.metrics.route("r").sink_refusals;
    let heal = tokio::spawn(async move {
        // Broken until the route has been refused for a while.
        while refusals.get() < 400 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        broken.store(false, Ordering::SeqCst);
    });
    run_until(&bridge, &broker, route, at_sink, 200).await;
    heal.await.expect("heal");
    let got = drain_sink(&broker, 200).await;
    assert_order_per_key(&got);
    assert_eq!(
        dead_letter_count(&bridge).await,
        0,
        "{kind}: dead letters from a broken sink"
    );
    assert_eq!(bridge.metrics.route("r").dead_lettered.get(), 0);
}

/// Claims of a SQLite store live in one process's memory
/// (docs/specs/dedup.md): a second bridge claiming in the same file is
/// refused, and its route stops saying why instead of publishing events
/// the first may hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_bridge_claiming_in_one_sqlite_file_stops_saying_why() {
    let dir = tempfile::tempdir().expect("dir");
    let (first, first_broker) = bridge(&dir, "direct").await;
    publish(&first_broker, &causeway_testkit::events("one", 10, 2)).await;
    let route = first.route("r").await.expect("route");
    run_until(&first, &first_broker, route, at_sink, 10).await;
    let (second, second_broker) = bridge(&dir, "direct").await;
    publish(&second_broker, &causeway_testkit::events("two", 10, 2)).await;
    let source = second.endpoints.consumer("src").await.expect("source");
    let route = second.route("r").await.expect("route");
    let stopped = tokio::time::timeout(
        Duration::from_secs(30),
        route.run(source, CancellationToken::new()),
    )
    .await
    .expect("the second route stops by itself");
    let refused = format!("{:#}", stopped.expect_err("refused"));
    assert!(
        refused.contains("refuses its claims") && refused.contains("serves one process"),
        "{refused}"
    );
    assert_eq!(at_sink(&second_broker), 0, "published by the second bridge");
    drop(first);
}

/// A sink that notes when it was asked to connect.
struct Connecting {
    inner: Arc<dyn Publisher>,
    connected: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Publisher for Connecting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.inner.publish(destination, events).await
    }
    async fn connect(&self) -> Result<()> {
        self.connected.notify_one();
        Ok(())
    }
}

/// A route opens its sink's connection when it starts, through the whole
/// stack of layers (rate limit, breaker, retries), before any event came:
/// across clouds the first batch would otherwise wait for the handshake.
async fn the_sink_connects_when_the_route_starts(mode: &str) {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, _broker) = bridge(&dir, mode).await;
    let base = bridge.route("r").await.expect("route");
    let connected = Arc::new(tokio::sync::Notify::new());
    let sink = Connecting {
        inner: bridge.endpoints.publisher("dst").await.expect("sink"),
        connected: connected.clone(),
    };
    let limit = causeway_bridge::config::RateLimitConfig {
        events_per_second: Some(10),
        bytes_per_second: None,
        burst: None,
    };
    let route = Arc::new(Route {
        sink: causeway_bridge::sink::for_route(Arc::new(sink), &base.config, Some(&limit)),
        ..parts_of(&base)
    });
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    let asked = tokio::time::timeout(Duration::from_secs(10), connected.notified()).await;
    shutdown.cancel();
    task.await.expect("task").expect("route stops cleanly");
    assert!(asked.is_ok(), "{mode}: the sink was not connected at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_connects_when_a_direct_route_starts() {
    the_sink_connects_when_the_route_starts("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_connects_when_a_durable_route_starts() {
    the_sink_connects_when_the_route_starts("durable").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_rotated_credentials_pauses_the_route_direct() {
    a_broken_sink_pauses_the_route("direct", ErrorKind::Unauthorized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_rotated_credentials_pauses_the_route_durable() {
    a_broken_sink_pauses_the_route("durable", ErrorKind::Unauthorized).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_without_its_queue_pauses_the_route_direct() {
    a_broken_sink_pauses_the_route("direct", ErrorKind::NotFound).await;
}

/// A sink slower than the claim lease, telling which events it is sending.
struct Slow {
    inner: Arc<dyn Publisher>,
    delay: Duration,
    sending: Arc<std::sync::Mutex<Vec<Event>>>,
}

#[async_trait]
impl Publisher for Slow {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.sending
            .lock()
            .expect("lock")
            .extend(events.iter().cloned());
        tokio::time::sleep(self.delay).await;
        let out = self.inner.publish(destination, events).await;
        self.sending
            .lock()
            .expect("lock")
            .retain(|e| !events.contains(e));
        out
    }
}

/// A publish that outlasts the claim lease keeps its claims: another
/// instance asking for the same events while they are being sent finds
/// them busy. Before the fix the claims lapsed mid-publish and the other
/// instance could take the events and send them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_outlive_a_publish_longer_than_their_lease() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let base = bridge.route("r").await.expect("route");
    let mut config = base.config.clone();
    config.claim_lease = Duration::from_secs(1);
    let sending = Arc::new(std::sync::Mutex::new(Vec::new()));
    let route = Arc::new(Route {
        config,
        sink: Arc::new(Slow {
            inner: bridge.endpoints.publisher("dst").await.expect("sink"),
            delay: Duration::from_millis(3_000),
            sending: sending.clone(),
        }),
        ..parts_of(&base)
    });
    let sent = causeway_testkit::events("lease", 6, 2);
    publish(&broker, &sent).await;
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.clone().run(source, shutdown.clone()));
    // Well past the lease, the first publish still running: another
    // instance's claims on the events being sent. (Events queued behind it
    // may lapse: a shard renews those before it sends them, and stands
    // down from any taken over.)
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let in_publish = sending.lock().expect("lock").clone();
    assert!(!in_publish.is_empty(), "nothing being published at 2 s");
    let keys: Vec<String> = in_publish
        .iter()
        .map(|e| format!("r\u{1f}{}\u{1f}{}", e.source, e.id))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let claims = base
        .dedup
        .claim_many(&refs, Duration::from_secs(30))
        .await
        .expect("claims");
    let taken = claims
        .iter()
        .filter(|c| matches!(c, causeway_core::Claim::Claimed(_)))
        .count();
    assert_eq!(
        taken, 0,
        "claims lapsed while their events were being published"
    );
    for _ in 0..3000 {
        if at_sink(&broker) >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    drain_sink(&broker, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_republishes_the_stored_range() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "durable").await;
    publish(&broker, &causeway_testkit::events("rp", 200, 4)).await;
    run_until(
        &bridge,
        &broker,
        bridge.route("r").await.expect("route"),
        at_sink,
        200,
    )
    .await;
    let mut progressed = 0;
    let report = bridge
        .replay(
            &Replay {
                route: "r".into(),
                stream: None,
                from: ReadFrom::Position(101),
                until: None,
                key: None,
                sink: None,
                destination: Some("replayed".into()),
            },
            |n| progressed += n,
        )
        .await
        .expect("replay");
    assert_eq!(report.published, 100);
    assert_eq!(progressed, 100);
    assert_eq!(broker.published("replayed"), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_leaves_nothing_unacked() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    publish(&broker, &causeway_testkit::events("s", 2000, 50)).await;
    let route = bridge.route("r").await.expect("route");
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    // Whatever reached the sink was acked; the rest is still at the source, once each.
    let delivered = at_sink(&broker);
    let mut rest = broker.consumer("in", "causeway", ConsumerOptions::default());
    let remaining =
        causeway_testkit::receive_and_ack(&mut rest, 2000, Duration::from_millis(500)).await;
    assert_eq!(
        delivered + remaining.len(),
        2000,
        "lost or duplicated across the shutdown"
    );
}

/// Every example parses and names only endpoints it defines.
#[test]
fn examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "examples found: {n}");
}

/// A sink that fails chosen events (by id) once, temporarily, and delivers
/// everything else, one event at a time: a call can fail k:1 and deliver k:2.
struct FailsOnce {
    inner: Arc<dyn Publisher>,
    pending: std::sync::Mutex<HashSet<String>>,
    /// What it declares of a call's order: it keeps none (it fails one
    /// event and takes the next of its key), but may claim to.
    ordered: bool,
    /// Publish calls made to it.
    calls: AtomicUsize,
}

impl FailsOnce {
    async fn new(bridge: &Bridge, fail: &[String], ordered: bool) -> Self {
        FailsOnce {
            inner: bridge.endpoints.publisher("dst").await.expect("sink"),
            pending: std::sync::Mutex::new(fail.iter().cloned().collect()),
            ordered,
            calls: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Publisher for FailsOnce {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_publish: self.ordered,
            ..self.inner.capabilities()
        }
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut out = Vec::new();
        for e in events {
            let fail = self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&e.id);
            out.push(if fail {
                Err(Error::temporary(ErrorKind::Unavailable, "refused once"))
            } else {
                self.inner
                    .publish(destination, std::slice::from_ref(e))
                    .await?
                    .remove(0)
            });
        }
        Ok(out)
    }
}

async fn fails_once_route(bridge: &Bridge, fail: &[String], retried: bool) -> Arc<Route> {
    let sink = FailsOnce::new(bridge, fail, false).await;
    route_with_sink(bridge, sink, retried).await
}

/// When one event of a key fails in a publish call, the later events of
/// its key in the same batch are not sent: they fail with it, unsent, and
/// go out behind it. Before the fix they went out at once, ahead of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_holds_back_the_rest_of_its_key_in_the_same_batch() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let events = causeway_testkit::events("w", 6, 2); // keys alternate: 0 1 0 1 0 1
    let route = fails_once_route(&bridge, &["w-0".to_owned()], false).await;
    let first: Vec<bool> = route
        .forward(&events)
        .await
        .iter()
        .map(|f| !matches!(f, Fate::Failed(_)))
        .collect();
    assert_eq!(
        first,
        [false, true, false, true, false, true],
        "key-0 stops at its failed first event; key-1 goes on"
    );
    let again = [events[0].clone(), events[2].clone(), events[4].clone()];
    let second = route.forward(&again).await;
    assert!(
        second.iter().all(|f| !matches!(f, Fate::Failed(_))),
        "{second:?}"
    );
    let got = drain_sink(&broker, 6).await;
    assert_order_per_key(&got);
}

/// Durable mode end to end, through the retry wrapper, with every seventh
/// event refused once: each key's events reach the sink in order. Before
/// the fix the wrapper retried the refused event after the rest of its
/// key in the same call had gone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_refused_once_keep_their_keys_order_at_the_sink() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "durable").await;
    let sent = causeway_testkit::events("ro", 300, 5);
    let refused: Vec<String> = sent.iter().step_by(7).map(|e| e.id.clone()).collect();
    let route = fails_once_route(&bridge, &refused, true).await;
    publish(&broker, &sent).await;
    run_until(&bridge, &broker, route, at_sink, 300).await;
    let got = drain_sink(&broker, 300).await;
    assert_order_per_key(&got);
}

/// A sink that keeps a call's order takes a key's events in one call:
/// five events of one key are one call, where they were five (one per
/// wave: across clouds a round trip per event of the key). With
/// `strict_order`, or to a sink that does not promise it, still five.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_a_calls_order_takes_a_keys_events_in_one_call() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker) = bridge(&dir, "direct").await;
    let base = bridge.route("r").await.expect("route");
    let cases = [
        ("o", true, false, 1),
        ("s", true, true, 5),
        ("u", false, false, 5),
    ];
    for (prefix, ordered, strict_order, calls) in cases {
        let sink = Arc::new(FailsOnce::new(&bridge, &[], ordered).await);
        let route = Route {
            sink: sink.clone(),
            config: RouteConfig {
                strict_order,
                ..base.config.clone()
            },
            ..parts_of(&base)
        };
        let fates = route.forward(&causeway_testkit::events(prefix, 5, 1)).await;
        assert!(fates.iter().all(|f| matches!(f, Fate::Sent)), "{fates:?}");
        assert_eq!(
            sink.calls.load(Ordering::SeqCst),
            calls,
            "publish calls for 5 events of one key (ordered_publish {ordered}, strict_order {strict_order})"
        );
    }
    // Each case's events (one key) arrived in order.
    let all = drain_sink(&broker, 15).await;
    for (prefix, ..) in cases {
        let got: Vec<Event> = all
            .iter()
            .filter(|e| e.id.starts_with(prefix))
            .cloned()
            .collect();
        assert_order_per_key(&got);
    }
}

/// A sink that declares it keeps a call's order and then fails one event
/// and confirms the next of its key broke that key's order: each event
/// confirmed ahead of the failed one is counted, not hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_an_ordered_sink_confirms_past_a_failed_one_are_counted_as_order_breaks() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, _broker) = bridge(&dir, "direct").await;
    let sink = FailsOnce::new(&bridge, &["b-1".to_owned()], true).await;
    let route = route_with_sink(&bridge, sink, false).await;
    let fates = route.forward(&causeway_testkit::events("b", 5, 1)).await;
    let failed: Vec<bool> = fates.iter().map(|f| matches!(f, Fate::Failed(_))).collect();
    assert_eq!(failed, [false, true, false, false, false]);
    assert_eq!(
        route.metrics.order_breaks.get(),
        3,
        "b-2, b-3, b-4 passed b-1"
    );
}

/// A direct-mode bridge, its route `r`, and that route's config with one
/// shard of 4 calls at once taking batches of `batch_size`.
async fn one_shard(
    dir: &tempfile::TempDir,
    batch_size: usize,
) -> (
    Bridge,
    MemoryBroker,
    Arc<Route>,
    causeway_bridge::config::RouteConfig,
) {
    let (bridge, broker) = bridge(dir, "direct").await;
    let base = bridge.route("r").await.expect("route");
    let mut config = base.config.clone();
    config.shards = 1;
    config.in_flight = 4;
    config.batch_size = batch_size;
    (bridge, broker, base, config)
}

/// A slow sink that watches its calls: how many ran at once, and whether a
/// key ever had events in two calls at once.
struct Overlapping {
    inner: Arc<dyn Publisher>,
    delay: Duration,
    /// Keys in running calls, one entry per call holding them.
    running: std::sync::Mutex<Vec<HashSet<String>>>,
    most_at_once: AtomicUsize,
    key_in_two_calls: AtomicBool,
}

#[async_trait]
impl Publisher for Overlapping {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let keys: HashSet<String> = events.iter().filter_map(|e| e.key.clone()).collect();
        {
            let mut running = self.running.lock().expect("lock");
            if running.iter().any(|other| !other.is_disjoint(&keys)) {
                self.key_in_two_calls.store(true, Ordering::SeqCst);
            }
            running.push(keys.clone());
            self.most_at_once.fetch_max(running.len(), Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        let out = self.inner.publish(destination, events).await;
        let mut running = self.running.lock().expect("lock");
        if let Some(i) = running.iter().position(|k| *k == keys) {
            running.remove(i);
        }
        out
    }
}

/// Across clouds a shard must not wait for one call's round trip before
/// the next: with one shard and `in_flight = 4`, calls of different keys
/// overlap, while a key never has events in two calls at once, so events
/// refused once still reach the sink in their key's order. Before, a shard
/// sent one call at a time (at most one call at once here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shards_calls_overlap_across_keys_and_never_within_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker, base, config) = one_shard(&dir, 20).await;
    let sent = causeway_testkit::events("ov", 400, 40);
    let refused: Vec<String> = sent.iter().step_by(9).map(|e| e.id.clone()).collect();
    let sink = Arc::new(Overlapping {
        inner: Arc::new(FailsOnce::new(&bridge, &refused, false).await),
        delay: Duration::from_millis(30),
        running: std::sync::Mutex::new(Vec::new()),
        most_at_once: AtomicUsize::new(0),
        key_in_two_calls: AtomicBool::new(false),
    });
    let got = carry(&bridge, &broker, &base, config, sink.clone(), &sent).await;
    assert_order_per_key(&got);
    assert!(
        !sink.key_in_two_calls.load(Ordering::SeqCst),
        "a key had events in two calls at once"
    );
    let most = sink.most_at_once.load(Ordering::SeqCst);
    assert!(
        most > 1,
        "the shard's calls never overlapped (at most {most} at once)"
    );
    println!("calls at once, at most: {most}");
}

/// Keys of unconfirmed calls, one entry per call.
type Unconfirmed = Arc<std::sync::Mutex<Vec<(u64, HashSet<String>)>>>;

/// A slow sink that keeps the order of submitted calls (`pipelined_order`):
/// a call is stored when submitted, and confirmed `delay` later. It
/// watches how many calls were unconfirmed at once, and whether a key had
/// events in two unconfirmed calls.
struct Pipelined {
    inner: Arc<dyn Publisher>,
    delay: Duration,
    unconfirmed: Unconfirmed,
    calls: AtomicUsize,
    most_at_once: AtomicUsize,
    key_in_two_calls: AtomicBool,
    /// Ids failed (temporarily, not stored) the first time they come.
    refuse_once: std::sync::Mutex<HashSet<String>>,
}

impl Pipelined {
    fn new(inner: Arc<dyn Publisher>) -> Self {
        Pipelined {
            inner,
            delay: Duration::from_millis(30),
            unconfirmed: Arc::default(),
            calls: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
            key_in_two_calls: AtomicBool::new(false),
            refuse_once: std::sync::Mutex::default(),
        }
    }
}

#[async_trait]
impl Publisher for Pipelined {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordered_publish: true,
            pipelined_order: true,
            ..self.inner.capabilities()
        }
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.submit(destination, events).await.await
    }
    async fn submit(&self, destination: &str, events: &[Event]) -> causeway_core::Confirms {
        let refused: Vec<bool> = {
            let mut refuse = self.refuse_once.lock().expect("lock");
            events.iter().map(|e| refuse.remove(&e.id)).collect()
        };
        let taken: Vec<Event> = events
            .iter()
            .zip(&refused)
            .filter(|(_, r)| !**r)
            .map(|(e, _)| e.clone())
            .collect();
        let stored = self
            .inner
            .publish(destination, &taken)
            .await
            .map(|outcomes| {
                let mut outcomes = outcomes.into_iter();
                refused
                    .iter()
                    .map(|&r| match r {
                        true => Err(Error::temporary(ErrorKind::Unavailable, "refused once")),
                        false => outcomes
                            .next()
                            .unwrap_or_else(|| Err(Error::new(ErrorKind::Internal, "no outcome"))),
                    })
                    .collect()
            });
        let call = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
        let keys: HashSet<String> = events.iter().filter_map(|e| e.key.clone()).collect();
        {
            let mut unconfirmed = self.unconfirmed.lock().expect("lock");
            if unconfirmed
                .iter()
                .any(|(_, other)| !other.is_disjoint(&keys))
            {
                self.key_in_two_calls.store(true, Ordering::SeqCst);
            }
            unconfirmed.push((call, keys));
            self.most_at_once
                .fetch_max(unconfirmed.len(), Ordering::SeqCst);
        }
        let (unconfirmed, delay) = (self.unconfirmed.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            unconfirmed
                .lock()
                .expect("lock")
                .retain(|(c, _)| *c != call);
            stored
        })
    }
}

/// A live source without per-key holds (as NATS and Kafka deliver): 10
/// events per poll, 5 ms apart, each acked once; nothing is redelivered.
struct Trickle {
    events: std::collections::VecDeque<Event>,
    acked: Arc<AtomicUsize>,
}

impl Trickle {
    fn new(events: Vec<Event>) -> Self {
        Trickle {
            events: events.into(),
            acked: Arc::default(),
        }
    }
}

/// Counts acks; anything else fails the test.
struct CountAcks(Arc<AtomicUsize>);

#[async_trait]
impl causeway_core::Settler for CountAcks {
    async fn settle(&self, items: Vec<(u64, causeway_core::Settlement)>) -> Result<()> {
        let acks = items
            .iter()
            .filter(|(_, s)| matches!(s, causeway_core::Settlement::Ack))
            .count();
        assert_eq!(acks, items.len(), "nothing is handed back here");
        self.0.fetch_add(acks, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl causeway_core::Consumer for Trickle {
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<causeway_core::Delivery>> {
        if self.events.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let settler: Arc<dyn causeway_core::Settler> = Arc::new(CountAcks(self.acked.clone()));
        let n = max.min(10).min(self.events.len());
        Ok(self
            .events
            .drain(..n)
            .enumerate()
            .map(|(i, e)| {
                let ticket = causeway_core::Ticket::new(settler.clone(), i as u64, None, 1);
                causeway_core::Delivery::new(e, ticket)
            })
            .collect())
    }
}

/// To a sink that keeps the order of submitted calls, a shard hands a
/// key's later events over in the next call without waiting for the
/// earlier call's confirmation, in order: with one shard, 4 keys and
/// events arriving 10 at a time, calls holding the same key are
/// unconfirmed together and each key arrives in order. Before, a key waited a whole round trip per call (a
/// key in one call at a time); `pipeline = false` still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_sink_takes_a_keys_next_call_before_confirming_the_last() {
    for pipeline in [true, false] {
        let dir = tempfile::tempdir().expect("dir");
        let (_bridge, broker, base, mut config) = one_shard(&dir, 20).await;
        config.pipeline = pipeline;
        let sent = causeway_testkit::events("pl", 400, 4);
        let sink = Arc::new(Pipelined::new(base.sink.clone()));
        let route = Arc::new(Route {
            config,
            sink: sink.clone(),
            ..parts_of(&base)
        });
        // Events arrive as a live source's do, a few at a time and no key
        // held back: a backlog would fill the shard's window in one call,
        // and the memory broker's consumer holds a key while it is unacked.
        let source = Trickle::new(sent);
        let acked = source.acked.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(route.run(Box::new(source), shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < 400 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.expect("task").expect("route stops cleanly");
        assert_eq!(acked.load(Ordering::SeqCst), 400, "every event acked");
        let got = drain_sink(&broker, 400).await;
        assert_order_per_key(&got);
        let (two, most) = (
            sink.key_in_two_calls.load(Ordering::SeqCst),
            sink.most_at_once.load(Ordering::SeqCst),
        );
        println!(
            "pipeline {pipeline}: calls unconfirmed at once, at most {most}; a key in two: {two}"
        );
        assert_eq!(
            two, pipeline,
            "pipeline = {pipeline}: a key in two unconfirmed calls at once"
        );
        if pipeline {
            assert!(most > 1, "calls never overlapped (at most {most} at once)");
        }
        assert_eq!(
            base.metrics.order_breaks.get(),
            0,
            "no order breaks counted"
        );
    }
}

/// A durable route's forwarder keeps several pages at a sink that keeps
/// the order of submitted calls, handed over in order: with the store
/// filling, pages holding the same keys are unconfirmed together, and
/// every event arrives once, each key in order. With some events refused
/// once, the pages after a failed one finish, what they confirmed is not
/// sent again, and the cursor never passes the failed event: still every
/// event once (the key's order may break there, and is counted). Before,
/// one page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_forwarder_keeps_several_pages_at_a_pipelined_sink() {
    for refusing in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let (bridge, broker) = bridge(&dir, "durable").await;
        let base = bridge.route("r").await.expect("route");
        let mut config = base.config.clone();
        config.batch_size = 20;
        config.in_flight = 4;
        let sent = causeway_testkit::events("dp", 400, 4);
        let sink = Arc::new(Pipelined::new(base.sink.clone()));
        if refusing {
            *sink.refuse_once.lock().expect("lock") =
                sent.iter().step_by(37).map(|e| e.id.clone()).collect();
        }
        let got = carry(&bridge, &broker, &base, config, sink.clone(), &sent).await;
        let ids: HashSet<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids.len(), 400, "every event once");
        let (two, most) = (
            sink.key_in_two_calls.load(Ordering::SeqCst),
            sink.most_at_once.load(Ordering::SeqCst),
        );
        let breaks = base.metrics.order_breaks.get();
        println!(
            "refusing {refusing}: pages unconfirmed at once, at most {most}; a key in two: {two}; order breaks counted {breaks}"
        );
        assert!(two && most > 1, "pages never overlapped (at most {most})");
        if !refusing {
            assert_order_per_key(&got);
            assert_eq!(breaks, 0);
        }
    }
}

/// A dedup store behind a pool of connections, as the PostgreSQL store is:
/// an operation holds a connection until its caller has read the answer,
/// which takes the caller's next polls (here a few milliseconds).
struct Pooled {
    inner: Arc<dyn causeway_core::DedupStore>,
    connections: tokio::sync::Semaphore,
}

impl Pooled {
    async fn on_a_connection<T>(&self, op: impl std::future::Future<Output = T>) -> T {
        let _connection = self.connections.acquire().await.expect("pool");
        let answer = op.await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        answer
    }
}

#[async_trait]
impl causeway_core::DedupStore for Pooled {
    async fn claim_many(
        &self,
        keys: &[&str],
        lease: Duration,
    ) -> Result<Vec<causeway_core::Claim>> {
        self.on_a_connection(self.inner.claim_many(keys, lease))
            .await
    }
    async fn commit_many(
        &self,
        tokens: &[causeway_core::ClaimToken],
        ttl: Duration,
    ) -> Result<Vec<Result<()>>> {
        self.on_a_connection(self.inner.commit_many(tokens, ttl))
            .await
    }
    async fn release(&self, token: &causeway_core::ClaimToken) -> Result<()> {
        self.on_a_connection(self.inner.release(token)).await
    }
    async fn renew_many(
        &self,
        tokens: &[causeway_core::ClaimToken],
        lease: Duration,
    ) -> Result<Vec<Result<()>>> {
        self.on_a_connection(self.inner.renew_many(tokens, lease))
            .await
    }
}

/// A shard's calls make progress while the shard waits for the dedup
/// store. Across a slow sink, claims are renewed while their events are
/// published and, when they waited past half a lease, before; the claims
/// of the next poll are taken meanwhile, all on the store's pooled
/// connections. Before the fix the shard
/// awaited its renewal without polling its calls, so a call holding the
/// last connection could never give it back: the route stopped for good
/// (the 5-minute soak stopped this way at its first sink outage, its two
/// processes with every PostgreSQL connection idle and nothing logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_waiting_for_the_store_still_finishes_its_calls() {
    let dir = tempfile::tempdir().expect("dir");
    let (bridge, broker, base, mut config) = one_shard(&dir, 10).await;
    config.claim_lease = Duration::from_millis(400);
    let route = Arc::new(Route {
        config,
        sink: Arc::new(Slow {
            inner: bridge.endpoints.publisher("dst").await.expect("sink"),
            delay: Duration::from_millis(150),
            sending: Arc::default(),
        }),
        dedup: Arc::new(Pooled {
            inner: base.dedup.clone(),
            connections: tokio::sync::Semaphore::new(1),
        }),
        ..parts_of(&base)
    });
    let sent = causeway_testkit::events("pool", 300, 300);
    publish(&broker, &sent).await;
    let shutdown = CancellationToken::new();
    let source = bridge.endpoints.consumer("src").await.expect("source");
    let metrics = route.metrics.clone();
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = (0, tokio::time::Instant::now());
    let mut most_in_flight = 0;
    while at_sink(&broker) < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        most_in_flight = most_in_flight.max(metrics.in_flight.get());
        let now = at_sink(&broker);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        }
        // Nothing moved for 10 s: stalled (a call takes about 150 ms).
        if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let reached = at_sink(&broker);
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(20), task).await;
    assert_eq!(
        reached,
        sent.len(),
        "the route stalled: {reached} of {} at the sink, nothing more for 10 s",
        sent.len()
    );
    stopped
        .expect("the route did not stop within 20 s of shutdown")
        .expect("task")
        .expect("route stops cleanly");
    drain_sink(&broker, sent.len()).await;
    // The in-flight gauge saw the shard's events, and none is left counted.
    assert!(most_in_flight > 0, "the in-flight gauge never moved");
    assert_eq!(
        metrics.in_flight.get(),
        0,
        "in flight after the route stopped"
    );
}
