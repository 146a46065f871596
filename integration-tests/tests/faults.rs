//! Faults on the FinBank routes, Kafka → SQS (moto, an emulator) and Kafka
//! → Service Bus (the REST emulator), and on NATS → RabbitMQ:
//!
//! - the bridge process killed with SIGKILL mid-stream and started again on
//!   the same store (direct and durable mode);
//! - every connection to the sink cut for 10 s through the fault proxy, in
//!   durable mode: the source keeps being consumed into the store, and the
//!   backlog drains after;
//! - the sink broker restarted (RabbitMQ: a node of the test's own). Not
//!   for SQS: moto keeps queues in memory, a restarted moto is a new empty
//!   server; nor for Service Bus: the emulator lives in the test process.
//!   The 10 s cut covers their lost connections;
//! - a poison event among the others: dead-lettered with its reason, the
//!   rest flows;
//! - the sink's credentials rotated under the bridge (RabbitMQ: the user's
//!   password changed and its connections closed): the route pauses,
//!   nothing is dead-lettered, and it resumes once the password is back.
//!
//! The sink is read with its own adapter through a sink-side idempotent
//! handler; each test prints and asserts lost = 0 and duplicates after
//! dedup = 0, and prints the duplicates that reached the sink.

mod common;

use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::metrics::RouteMetrics;
use causeway_bridge::pipeline::dead_letter_stream;
use causeway_core::{Event, ReadFrom, ReadQuery, dead_letter};
use causeway_servicebus_emulator::ServiceBusEmulator;
use causeway_testkit::fault_proxy::FaultProxy;
use common::{BridgeProcess, Broker, Kafka, Nats, Rabbit, ServiceBus, Setup, Sqs};

/// Short leases (a restarted instance takes over within seconds) and small
/// batches (a kill lands between them, not after the last).
const KILLABLE: &str = "claim_lease = \"3s\"\nbatch_size = 50";

/// Few, quick retries: the outage is what is tested.
const QUICK_RETRY: &str =
    "retry = { max_attempts = 2, initial_delay = \"50ms\", max_delay = \"200ms\" }";

/// Events per test: moto serves about 50 messages a second.
fn events_for(to: Broker) -> usize {
    if to == Sqs { 120 } else { 2000 }
}

/// Keys per test: one per event where the source does not keep order.
fn keys(from: Broker, n: usize) -> usize {
    if from.keeps_order() { 10 } else { n }
}

/// A helper bridge in the test process, on a store of its own: the sink's
/// reader, the source's publisher, the checks.
async fn helper(dir: &std::path::Path, setup: &Setup, emulator: &ServiceBusEmulator) -> Bridge {
    let mut own = setup.clone();
    own.store = format!("sqlite = \"{}/helper.db\"", dir.display());
    Bridge::new(own.config(emulator)).await.expect("bridge")
}

async fn killed_and_restarted(from: Broker, to: Broker, mode: &'static str) {
    let what = format!(
        "{} -> {} ({mode}), kill -9 mid-stream",
        from.name(),
        to.name()
    );
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("kill");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, mode).with_servicebus(&emulator);
    setup.route_extra = KILLABLE.into();
    let helper = helper(dir.path(), &setup, &emulator).await;
    let sink = common::sink_reader(&helper, from, to).await;
    let n = events_for(to);
    let sent = causeway_testkit::events(&prefix, n, keys(from, n));
    let (first, second) = sent.split_at(n / 2);
    common::publish_to_source(&helper, from, &prefix, first).await;
    let bridge = BridgeProcess::start(dir.path(), "bridge", &setup, &emulator).await;
    bridge
        .wait_published(n as u64 / 8, Duration::from_secs(120))
        .await;
    let at_kill = bridge.metric("events_published").await;
    bridge.kill_9().await;
    assert!(
        at_kill < first.len() as u64,
        "{what}: the first half was through before the kill ({at_kill}): not mid-stream"
    );
    // The source keeps filling while the bridge is down.
    common::publish_to_source(&helper, from, &prefix, second).await;
    let bridge = BridgeProcess::start(dir.path(), "restarted", &setup, &emulator).await;
    let tally = read_all(sink, &sent).await;
    bridge.stop().await;
    println!("{what}: killed after {at_kill} published");
    tally.assert_exact(&sent, &what);
}

/// `host:port` of a URL such as `http://127.0.0.1:4566` or `amqp://u:p@h:5672/%2f`.
fn host_port(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.replace("localhost", "127.0.0.1");
    authority.parse().expect("host:port")
}

/// The sink's address in `setup.route` replaced by `proxy`'s.
fn through(setup: &mut Setup, to: Broker, proxy: &FaultProxy) {
    let p = proxy.addr().to_string();
    let a = &mut setup.route;
    match to {
        Sqs => a.sqs = format!("http://{p}"),
        ServiceBus => a.servicebus = Some(format!("http://{p}")),
        Rabbit => a.rabbit = format!("amqp://guest:guest@{p}/%2f"),
        Kafka => a.kafka = p,
        Nats => a.nats = format!("nats://{p}"),
    }
}

fn upstream(setup: &Setup, to: Broker) -> std::net::SocketAddr {
    let a = &setup.route;
    match to {
        Sqs => host_port(&a.sqs),
        ServiceBus => host_port(a.servicebus.as_deref().expect("emulator")),
        Rabbit => host_port(&a.rabbit),
        Kafka => host_port(&format!("tcp://{}", a.kafka)),
        Nats => host_port(&a.nats),
    }
}

/// Fills the source with the first half of `n` events, starts the route
/// and waits until an eighth went through, so that the fault lands
/// mid-stream. The test publishes the second half (`sent[n / 2..]`).
async fn half_way(
    bridge: &Bridge,
    from: Broker,
    prefix: &str,
    n: usize,
    what: &str,
) -> (Vec<Event>, RouteMetrics, common::Running) {
    let sent = causeway_testkit::events(prefix, n, keys(from, n));
    common::publish_to_source(bridge, from, prefix, &sent[..n / 2]).await;
    let metrics = bridge.metrics.route("r");
    let running = common::start_route(bridge).await;
    wait_for(what, Duration::from_secs(60), || {
        metrics.published.get() >= n as u64 / 8
    })
    .await;
    (sent, metrics, running)
}

/// Reads the sink through the idempotent handler until every event of
/// `expected` arrived (3 minutes at most) and 3 s more, then closes it.
async fn read_all(mut sink: Box<dyn causeway_core::Consumer>, expected: &[Event]) -> common::Tally {
    let tally = common::read_through_dedup(
        sink.as_mut(),
        expected,
        Duration::from_secs(180),
        Duration::from_secs(3),
    )
    .await;
    sink.close().await.expect("close the sink reader");
    tally
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}: timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sink_cut_for_10s(from: Broker, to: Broker) {
    let what = format!(
        "{} -> {} (durable), sink cut for 10 s",
        from.name(),
        to.name()
    );
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("cut");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, "durable").with_servicebus(&emulator);
    let proxy = FaultProxy::start(upstream(&setup, to))
        .await
        .expect("proxy");
    through(&mut setup, to, &proxy);
    // Fewer retries and a quick breaker: the outage is what is tested.
    setup.route_extra = QUICK_RETRY.into();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let sink = common::sink_reader(&bridge, from, to).await;
    let n = events_for(to);
    let (sent, metrics, running) = half_way(&bridge, from, &prefix, n, &what).await;
    let second = &sent[n / 2..];
    proxy.cut_for(Duration::from_secs(10));
    let cut_at = std::time::Instant::now();
    let published_at_cut = metrics.published.get();
    common::publish_to_source(&bridge, from, &prefix, second).await;
    // Durable mode: the source is consumed into the store during the outage.
    wait_for(&what, Duration::from_secs(9), || {
        metrics.received.get() >= n as u64
    })
    .await;
    let during = cut_at.elapsed();
    let published_during = metrics.published.get() - published_at_cut;
    let backlog = metrics.backlog.get();
    assert!(
        during < Duration::from_secs(10),
        "{what}: not consumed during the outage"
    );
    wait_for(&what, Duration::from_secs(120), || {
        metrics.published.get() >= n as u64
    })
    .await;
    running.stop().await;
    let tally = read_all(sink, &sent).await;
    println!(
        "{what}: all {n} consumed {:.1} s into the outage (backlog then {backlog}, {published_during} confirmed during it), drained after",
        during.as_secs_f64()
    );
    tally.assert_exact(&sent, &what);
}

async fn poison_event(from: Broker, to: Broker) {
    let what = format!("{} -> {} (direct), poison event", from.name(), to.name());
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("poison");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, "direct").with_servicebus(&emulator);
    let n = events_for(to).min(200);
    let mut sent = causeway_testkit::events(&prefix, n, keys(from, n));
    // What the sink refuses for good: over SQS's and Service Bus's 256 KiB
    // limit; for RabbitMQ, a routing header that leads nowhere (unroutable).
    let poison_at = n / 2;
    let poison = sent[poison_at].clone();
    let poison = match to {
        Rabbit => {
            setup.destination = Some(format!("{prefix}-out{{header.lane}}"));
            poison.with_header("lane", "-nowhere")
        }
        _ => poison.with_payload(vec![b'x'; 300 * 1024]),
    };
    sent[poison_at] = poison.clone();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let sink = common::sink_reader(&bridge, from, to).await;
    common::publish_to_source(&bridge, from, &prefix, &sent).await;
    let metrics = bridge.metrics.route("r");
    let running = common::start_route(&bridge).await;
    wait_for(&what, Duration::from_secs(120), || {
        metrics.published.get() + metrics.dead_lettered.get() >= n as u64
    })
    .await;
    running.stop().await;
    let rest: Vec<Event> = sent.iter().filter(|e| e.id != poison.id).cloned().collect();
    let tally = read_all(sink, &rest).await;
    assert_eq!(metrics.dead_lettered.get(), 1, "{what}: dead letters");
    let dead = bridge
        .store
        .read(&ReadQuery::new(
            dead_letter_stream("r"),
            ReadFrom::Position(0),
            10,
        ))
        .await
        .expect("read dead letters");
    assert_eq!(dead.len(), 1, "{what}: dead letters in the store");
    assert_eq!(dead[0].event.id, poison.id, "{what}");
    let reason = dead[0].event.header(dead_letter::REASON).unwrap_or("");
    assert!(!reason.is_empty(), "{what}: no reason");
    println!("{what}: dead-lettered with reason: {reason}");
    assert!(
        tally.handled.iter().all(|e| e.id != poison.id),
        "{what}: the poison event reached the sink"
    );
    tally.assert_exact(&rest, &what);
}

async fn sink_broker_restarted(from: Broker, mode: &'static str) {
    let to = Rabbit;
    let what = format!("{} -> rabbit ({mode}), sink broker restarted", from.name());
    let node = common::RabbitNode::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("restart");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, mode).with_servicebus(&emulator);
    setup.route.rabbit = node.url();
    setup.check.rabbit = node.url();
    setup.route_extra = QUICK_RETRY.into();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let sink = common::sink_reader(&bridge, from, to).await;
    // Declared the queue; read after the restart with a fresh reader.
    drop(sink);
    let n = events_for(to);
    let (sent, metrics, running) = half_way(&bridge, from, &prefix, n, &what).await;
    let second = &sent[n / 2..];
    node.down();
    let at_stop = metrics.published.get();
    // The source keeps filling while the sink is down.
    common::publish_to_source(&bridge, from, &prefix, second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.up().await;
    // The second half went out while the node was down: the bridge saw it fail.
    assert!(
        metrics.errors.get() > 0,
        "{what}: no publish failed while the sink was down"
    );
    wait_for(&what, Duration::from_secs(120), || {
        metrics.published.get() >= n as u64
    })
    .await;
    running.stop().await;
    let sink = common::sink_reader(&bridge, from, to).await;
    let tally = read_all(sink, &sent).await;
    println!("{what}: stopped after {at_stop} of {n} published, started again 2 s later");
    tally.assert_exact(&sent, &what);
}

/// A key rotation at the sink: the bridge's RabbitMQ user gets a new
/// password and its connections are closed, so every reconnect is refused
/// (ACCESS_REFUSED). The route must pause with the events kept, dead-letter
/// nothing, and deliver everything once the old password is back (the
/// operator fixing the secret). Before the fix, refusals from a broken sink
/// were permanent failures of each event: a rotation dead-lettered the stream.
async fn sink_credentials_rotated(from: Broker, mode: &'static str) {
    let to = Rabbit;
    let what = format!(
        "{} -> rabbit ({mode}), sink credentials rotated",
        from.name()
    );
    let node = common::RabbitNode::start().await;
    let (user, first, second) = ("causeway-bridge", "first-s3cret", "second-s3cret");
    node.rabbitmqctl(&["add_user", user, first]).await;
    node.rabbitmqctl(&["set_permissions", "-p", "/", user, ".*", ".*", ".*"])
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("rotate");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, mode).with_servicebus(&emulator);
    setup.route.rabbit = format!("amqp://{user}:{first}@127.0.0.1:{}/%2f", node.port);
    setup.check.rabbit = node.url();
    setup.route_extra = QUICK_RETRY.into();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let sink = common::sink_reader(&bridge, from, to).await;
    let n = 400;
    let (sent, metrics, running) = half_way(&bridge, from, &prefix, n, &what).await;
    wait_for(&what, Duration::from_secs(60), || {
        metrics.published.get() >= n as u64 / 2
    })
    .await;
    node.rabbitmqctl(&["change_password", user, second]).await;
    node.rabbitmqctl(&["close_all_user_connections", user, "credentials rotated"])
        .await;
    let at_rotation = metrics.published.get();
    common::publish_to_source(&bridge, from, &prefix, &sent[n / 2..]).await;
    // Paused: the events wait, refused, and none is dead-lettered.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let published_paused = metrics.published.get() - at_rotation;
    let (errors, refusals) = (metrics.errors.get(), metrics.sink_refusals.get());
    assert_eq!(
        metrics.dead_lettered.get(),
        0,
        "{what}: a refusing sink dead-lettered events"
    );
    assert_eq!(
        published_paused, 0,
        "{what}: published with a refused password"
    );
    assert!(errors > 0, "{what}: no publish failed while refused");
    node.rabbitmqctl(&["change_password", user, first]).await;
    wait_for(&what, Duration::from_secs(120), || {
        metrics.published.get() >= n as u64
    })
    .await;
    running.stop().await;
    assert_eq!(metrics.dead_lettered.get(), 0, "{what}: dead letters");
    let tally = read_all(sink, &sent).await;
    println!(
        "{what}: paused 5 s with {errors} failed publishes ({refusals} counted as refusals), nothing dead-lettered, all {n} delivered once the password was back"
    );
    tally.assert_exact(&sent, &what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_sink_credentials_rotated_direct() {
    sink_credentials_rotated(Nats, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_sink_credentials_rotated_durable() {
    sink_credentials_rotated(Nats, "durable").await;
}

macro_rules! pairs {
    ($($pair:ident: $from:expr => $to:expr;)*) => {
        $(
            mod $pair {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn bridge_killed_9_and_restarted_direct() {
                    killed_and_restarted($from, $to, "direct").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn bridge_killed_9_and_restarted_durable() {
                    killed_and_restarted($from, $to, "durable").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sink_cut_for_10s_durable_keeps_consuming() {
                    sink_cut_for_10s($from, $to).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn poison_event_dead_lettered_rest_flows() {
                    poison_event($from, $to).await;
                }
            }
        )*
    };
}

pairs! {
    kafka_to_sqs_moto_emulator: Kafka => Sqs;
    kafka_to_servicebus_rest_emulator: Kafka => ServiceBus;
    nats_to_rabbitmq: Nats => Rabbit;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_sink_broker_restarted_direct() {
    sink_broker_restarted(Nats, "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_sink_broker_restarted_durable() {
    sink_broker_restarted(Nats, "durable").await;
}
