//! One source, two sinks: one Kafka consumer group feeding NATS JetStream
//! and RabbitMQ through one route.
//!
//! - Durable mode (one store append per event, a forwarder cursor per
//!   sink): RabbitMQ is cut off for 30 s; NATS must get everything while it
//!   is down, RabbitMQ must catch up after.
//! - Direct mode (the source acked when both sinks confirmed): RabbitMQ is
//!   cut off for 10 s; the route waits for it, dead-letters nothing, and
//!   both catch up.
//!
//! - Durable mode, Kafka feeding NATS and Service Bus (the REST emulator):
//!   the Service Bus key is rotated away for 15 s, so that sink refuses
//!   everything (401); its leg pauses and dead-letters nothing while NATS
//!   gets every event, and it catches up once the key is back.
//!
//! Either way each sink must hold every event once (after its reader's dedup).

mod common;

use std::time::{Duration, Instant};

use std::sync::Arc;

use causeway_bridge::Bridge;
use causeway_bridge::config::Config;
use causeway_bridge::metrics::RouteMetrics;
use causeway_core::{Consumer, Event};
use causeway_testkit::fault_proxy::FaultProxy;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 1_000;
const OUTAGE: Duration = Duration::from_secs(30);

fn config(dir: &std::path::Path, p: &str, rabbit_via: &str, mode: &str) -> Config {
    let kafka = common::env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let nats = common::env("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222");
    let rabbit = common::env(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let text = format!(
        r#"
[store]
sqlite = "{dir}/store.db"

[endpoints.kafka.kafka]
brokers = "{kafka}"
consumer = {{ group = "{p}-bridge", topics = ["{p}-in"] }}
[endpoints.nats.nats]
url = "{nats}"
stream = {{ name = "{p}-out", subjects = ["{p}.out"] }}
consumer = {{ durable = "check", filter_subject = "{p}.out", ack_wait = "5s" }}
[endpoints.rabbit.rabbitmq]
url = "amqp://guest:guest@{rabbit_via}/%2f"
queue = {{ name = "{p}-out" }}
[endpoints.rabbit-check.rabbitmq]
url = "{rabbit}"
queue = {{ name = "{p}-out", prefetch = 500 }}

[routes.r]
source = "kafka"
mode = "{mode}"
linger = "20ms"
# The outage is what is tested: few retries, a quick breaker.
retry = {{ max_attempts = 2, initial_delay = "100ms", max_delay = "500ms" }}
breaker = {{ failures = 3, cooldown = "1s" }}

[routes.r.sinks.nats]
endpoint = "nats"
destination = "{p}.out"

[routes.r.sinks.rabbit]
endpoint = "rabbit"
destination = "{p}-out"
"#,
        dir = dir.display(),
    );
    Config::parse(&text, "fanout.toml").expect("config")
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running bridge with route `r` from Kafka to NATS and RabbitMQ (behind
/// a fault proxy), the sinks' readers, and a quarter of the events through.
struct Fan {
    what: &'static str,
    prefix: String,
    _dir: tempfile::TempDir,
    proxy: FaultProxy,
    bridge: Arc<Bridge>,
    nats: Box<dyn Consumer>,
    rabbit: Box<dyn Consumer>,
    to_nats: RouteMetrics,
    to_rabbit: RouteMetrics,
    sent: Vec<Event>,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Fan {
    async fn start(what: &'static str, mode: &str) -> Fan {
        let dir = tempfile::tempdir().expect("dir");
        let prefix = causeway_testkit::unique_name("fan");
        let _emulator = common::prepare(&prefix, common::Kafka, common::Nats).await;
        let proxy = rabbit_proxy().await;
        let bridge = Arc::new(
            Bridge::new(config(dir.path(), &prefix, &proxy.addr().to_string(), mode))
                .await
                .expect("bridge"),
        );
        // The sinks' readers first (RabbitMQ's declares the queue).
        let nats = bridge
            .endpoints
            .consumer("nats")
            .await
            .expect("nats reader");
        let rabbit = bridge
            .endpoints
            .consumer("rabbit-check")
            .await
            .expect("rabbitmq reader");
        let shutdown = CancellationToken::new();
        let running = {
            let (bridge, shutdown) = (bridge.clone(), shutdown.clone());
            tokio::spawn(async move { bridge.run(shutdown).await })
        };
        let fan = Fan {
            what,
            to_nats: bridge.metrics.route("r/nats"),
            to_rabbit: bridge.metrics.route("r/rabbit"),
            sent: causeway_testkit::events(&prefix, EVENTS, 10),
            prefix,
            _dir: dir,
            proxy,
            bridge,
            nats,
            rabbit,
            shutdown,
            running,
        };
        fan.publish(..EVENTS / 4).await;
        wait_for(what, Duration::from_secs(60), || {
            fan.to_rabbit.published.get() >= EVENTS as u64 / 8
        })
        .await;
        fan
    }

    async fn publish(&self, range: impl std::slice::SliceIndex<[Event], Output = [Event]>) {
        common::publish_to_source(&self.bridge, common::Kafka, &self.prefix, &self.sent[range])
            .await;
    }

    /// Stops the bridge; then each sink must hold every event once.
    async fn stop_and_check(mut self) {
        self.shutdown.cancel();
        (&mut self.running)
            .await
            .expect("task")
            .expect("bridge stopped cleanly");
        let wait = Duration::from_secs(60);
        let quiet = Duration::from_secs(3);
        let at_nats = common::read_through_dedup(self.nats.as_mut(), &self.sent, wait, quiet).await;
        let at_rabbit =
            common::read_through_dedup(self.rabbit.as_mut(), &self.sent, wait, quiet).await;
        self.nats.close().await.expect("close");
        self.rabbit.close().await.expect("close");
        at_nats.assert_exact(&self.sent, &format!("{}, at NATS", self.what));
        at_rabbit.assert_exact(&self.sent, &format!("{}, at RabbitMQ", self.what));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_two_sinks_one_down_for_30s_durable() {
    let what = "kafka -> nats + rabbitmq (durable), rabbitmq cut for 30 s";
    let fan = Fan::start(what, "durable").await;
    let (to_nats, to_rabbit) = (fan.to_nats.clone(), fan.to_rabbit.clone());
    fan.proxy.cut_for(OUTAGE);
    let cut_at = Instant::now();
    let rabbit_at_cut = to_rabbit.published.get();
    fan.publish(EVENTS / 4..).await;
    // NATS gets every event while RabbitMQ is down.
    wait_for(what, OUTAGE - Duration::from_secs(2), || {
        to_nats.published.get() >= EVENTS as u64
    })
    .await;
    let nats_done = cut_at.elapsed();
    let rabbit_during = to_rabbit.published.get() - rabbit_at_cut;
    let rabbit_backlog = to_rabbit.backlog.get();
    assert!(
        nats_done < OUTAGE,
        "{what}: NATS did not get everything while RabbitMQ was down"
    );
    assert!(
        to_rabbit.published.get() < EVENTS as u64,
        "{what}: RabbitMQ got everything during its outage: the cut did not hold it back"
    );
    // RabbitMQ catches up after.
    wait_for(what, OUTAGE + Duration::from_secs(120), || {
        to_rabbit.published.get() >= EVENTS as u64
    })
    .await;
    let rabbit_done = cut_at.elapsed();
    let bridge = fan.bridge.clone();
    fan.stop_and_check().await;
    println!(
        "{what}: NATS had all {EVENTS} {:.1} s into the outage; RabbitMQ confirmed {rabbit_during} during it (backlog then {rabbit_backlog}) and all {:.1} s after the cut began; source read once (one consumer group)",
        nats_done.as_secs_f64(),
        rabbit_done.as_secs_f64()
    );
    let received = to_nats.received.get();
    assert_eq!(
        bridge.store.stats(Some("r")).await.expect("stats").events,
        EVENTS as u64,
        "one store append per event: received {received}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_two_sinks_one_down_for_10s_direct() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let what = "kafka -> nats + rabbitmq (direct), rabbitmq cut for 10 s";
    let fan = Fan::start(what, "direct").await;
    let (to_nats, to_rabbit) = (fan.to_nats.clone(), fan.to_rabbit.clone());
    fan.proxy.cut_for(OUTAGE);
    let cut_at = Instant::now();
    let nats_at_cut = to_nats.published.get();
    fan.publish(EVENTS / 4..).await;
    tokio::time::sleep(OUTAGE.saturating_sub(cut_at.elapsed())).await;
    let nats_during = to_nats.published.get() - nats_at_cut;
    wait_for(what, Duration::from_secs(120), || {
        to_rabbit.published.get() >= EVENTS as u64 && to_nats.published.get() >= EVENTS as u64
    })
    .await;
    let done = cut_at.elapsed();
    fan.stop_and_check().await;
    for (sink, metrics) in [("nats", &to_nats), ("rabbitmq", &to_rabbit)] {
        assert_eq!(
            metrics.dead_lettered.get(),
            0,
            "{what}: a sink that is down is not a bad event: nothing is dead-lettered at {sink}"
        );
    }
    println!(
        "{what}: NATS confirmed {nats_during} during the outage (as many as the route keeps in flight; none acked at the source before RabbitMQ had it too); both had all {EVENTS} {:.1} s after the cut began; 0 dead letters",
        done.as_secs_f64()
    );
}

/// A fault proxy in front of RabbitMQ.
async fn rabbit_proxy() -> FaultProxy {
    let rabbit = common::env(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let upstream = rabbit
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in CAUSEWAY_RABBITMQ_URL")
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("host:port");
    FaultProxy::start(upstream).await.expect("proxy")
}

/// A sink that refuses everything (its key rotated away: 401 on every
/// send) is a broken sink, not bad events: in durable mode its leg pauses
/// and dead-letters nothing, the other sink keeps its rate, and the broken
/// one catches up when its key is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_two_sinks_one_refuses_its_key_for_15s_durable_servicebus_emulator() {
    use causeway_servicebus_emulator::ROOT_POLICY;
    const REFUSED: Duration = Duration::from_secs(15);
    let what = "kafka -> service bus (REST emulator) + nats (durable), service bus key rotated away for 15 s";
    let dir = tempfile::tempdir().expect("dir");
    let p = causeway_testkit::unique_name("fankey");
    let emulator = common::prepare(&p, common::Kafka, common::ServiceBus).await;
    let mut setup =
        common::Setup::new(dir.path(), &p, common::Kafka, common::ServiceBus, "durable")
            .with_servicebus(&emulator);
    setup.also_to = Some(common::Nats);
    setup.route_extra =
        r#"retry = { max_attempts = 2, initial_delay = "100ms", max_delay = "500ms" }
breaker = { failures = 3, cooldown = "1s" }"#
            .to_owned();
    let bridge = Arc::new(Bridge::new(setup.config(&emulator)).await.expect("bridge"));
    let mut at_sb = common::sink_reader(&bridge, common::Kafka, common::ServiceBus).await;
    let mut at_nats = bridge
        .endpoints
        .consumer("nats-check")
        .await
        .expect("nats reader");
    let (to_sb, to_nats) = (bridge.metrics.route("r/a"), bridge.metrics.route("r/b"));
    let shutdown = CancellationToken::new();
    let running = {
        let (bridge, shutdown) = (bridge.clone(), shutdown.clone());
        tokio::spawn(async move { bridge.run(shutdown).await })
    };
    let sent = causeway_testkit::events(&p, EVENTS, 10);
    common::publish_to_source(&bridge, common::Kafka, &p, &sent[..EVENTS / 4]).await;
    wait_for(what, Duration::from_secs(60), || {
        to_sb.published.get() >= EVENTS as u64 / 8
    })
    .await;
    let key = emulator.key(ROOT_POLICY).expect("root key");
    assert!(emulator.set_key(ROOT_POLICY, &causeway_servicebus_emulator::random_key()));
    let rotated_at = Instant::now();
    let sb_at_rotation = to_sb.published.get();
    common::publish_to_source(&bridge, common::Kafka, &p, &sent[EVENTS / 4..]).await;
    wait_for(what, REFUSED - Duration::from_secs(2), || {
        to_nats.published.get() >= EVENTS as u64
    })
    .await;
    let nats_done = rotated_at.elapsed();
    tokio::time::sleep(REFUSED.saturating_sub(rotated_at.elapsed())).await;
    let (sb_during, refusals) = (
        to_sb.published.get() - sb_at_rotation,
        to_sb.sink_refusals.get(),
    );
    assert!(
        to_sb.published.get() < EVENTS as u64,
        "{what}: Service Bus took everything with its key rotated away"
    );
    assert!(refusals > 0, "{what}: no refusal counted");
    assert_eq!(
        to_sb.dead_lettered.get(),
        0,
        "{what}: dead letters while refused"
    );
    assert!(emulator.set_key(ROOT_POLICY, &key));
    wait_for(what, Duration::from_secs(120), || {
        to_sb.published.get() >= EVENTS as u64
    })
    .await;
    let sb_done = rotated_at.elapsed();
    shutdown.cancel();
    running
        .await
        .expect("task")
        .expect("bridge stopped cleanly");
    let (wait, quiet) = (Duration::from_secs(60), Duration::from_secs(3));
    let got_sb = common::read_through_dedup(at_sb.as_mut(), &sent, wait, quiet).await;
    let got_nats = common::read_through_dedup(at_nats.as_mut(), &sent, wait, quiet).await;
    at_sb.close().await.expect("close");
    at_nats.close().await.expect("close");
    got_sb.assert_exact(&sent, &format!("{what}, at Service Bus"));
    got_nats.assert_exact(&sent, &format!("{what}, at NATS"));
    for (sink, metrics) in [("service bus", &to_sb), ("nats", &to_nats)] {
        assert_eq!(
            metrics.dead_lettered.get(),
            0,
            "{what}: a refused key is not a bad event: nothing is dead-lettered at {sink}"
        );
    }
    println!(
        "{what}: NATS had all {EVENTS} {:.1} s after the rotation; Service Bus refused {refusals} sends and took {sb_during} while its key was away, and had all {EVENTS} {:.1} s after the rotation; 0 dead letters",
        nats_done.as_secs_f64(),
        sb_done.as_secs_f64()
    );
}
