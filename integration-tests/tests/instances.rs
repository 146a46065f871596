//! Many instances: three `causeway run` processes on one NATS → RabbitMQ
//! route, sharing PostgreSQL stores (events, dedup claims, the forwarder's
//! lease) and the source's consumer (one JetStream durable pull consumer,
//! NATS's consumer group). Mid-stream one is killed with SIGKILL and another
//! is paused with SIGSTOP past its lease (a "zombie"), then resumed: nothing
//! may be lost, nothing may pass the sink-side dedup twice, and the zombie
//! must find itself fenced and stand down (its `causeway_fenced` counter).
//!
//! The same with the route fanning out to RabbitMQ and NATS JetStream in
//! durable mode: each sink's forwarder has its own lease, and each sink
//! must hold every event once.
//!
//! The sink is reached through a fault proxy adding 100 ms each way, so
//! that every instance always has publishes in flight: the pause and the
//! kill land while claims are held, not between batches.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_testkit::fault_proxy::FaultProxy;
use common::{BridgeProcess, Nats, Rabbit, Setup};

const EVENTS: usize = 3000;
const LEASE: &str = "claim_lease = \"3s\"\nbatch_size = 50";

/// Published by the instances still running, plus what the dead had done.
async fn published(instances: &[Option<BridgeProcess>], dead: u64) -> u64 {
    let mut total = dead;
    for p in instances.iter().flatten() {
        total += p.metric("events_published").await;
    }
    total
}

async fn wait_published(instances: &[Option<BridgeProcess>], dead: u64, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while published(instances, dead).await < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} published in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance that published the most so far: in durable mode the one
/// holding the forwarder lease.
async fn busiest(instances: &[Option<BridgeProcess>]) -> usize {
    let mut best = (0, 0);
    for (i, p) in instances.iter().enumerate() {
        if let Some(p) = p {
            let n = p.metric("events_published").await;
            if n >= best.1 {
                best = (i, n);
            }
        }
    }
    best.0
}

/// `fan_out`: the route feeds NATS JetStream as well (its sink `b`), each
/// sink with its own forwarder lease in durable mode.
async fn three_instances(mode: &'static str, fan_out: bool) {
    let sinks = if fan_out { "rabbit + nats" } else { "rabbit" };
    let what = format!("nats -> {sinks} ({mode}), three instances on PostgreSQL");
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("many");
    let emulator = common::prepare(&prefix, Nats, Rabbit).await;
    let mut setup = Setup::new(dir.path(), &prefix, Nats, Rabbit, mode).with_servicebus(&emulator);
    setup.store = common::postgres_store(&prefix);
    setup.route_extra = LEASE.into();
    let rabbit = common::Addrs::local().rabbit;
    let proxy = FaultProxy::start(
        tokio::net::lookup_host("127.0.0.1:5672")
            .await
            .expect("rabbit address")
            .next()
            .expect("rabbit address"),
    )
    .await
    .expect("proxy");
    assert!(
        rabbit.contains("127.0.0.1:5672"),
        "this test expects RabbitMQ on 127.0.0.1:5672"
    );
    proxy.set_latency(Duration::from_millis(100), Duration::from_millis(100));
    setup.route.rabbit = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    if fan_out {
        setup.also_to = Some(Nats);
    }
    // Events published by all instances when every sink has everything.
    let total = EVENTS as u64 * if fan_out { 2 } else { 1 };

    // The helper reads the sink and feeds the source, on a store of its own.
    let mut own = setup.clone();
    own.store = format!("sqlite = \"{}/helper.db\"", dir.path().display());
    let helper = Bridge::new(own.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&helper, Nats, Rabbit).await;
    let mut second_sink = match fan_out {
        true => Some(
            helper
                .endpoints
                .consumer("nats-check")
                .await
                .expect("nats sink reader"),
        ),
        false => None,
    };
    let sent = causeway_testkit::events(&prefix, EVENTS, 20);

    let mut instances = Vec::new();
    for name in ["a", "b", "c"] {
        instances.push(Some(
            BridgeProcess::start(dir.path(), name, &setup, &emulator).await,
        ));
    }
    // A steady stream, about 400 events a second.
    let publisher = helper.endpoints.publisher("nats").await.expect("publisher");
    let feed = {
        let sent = Arc::new(sent.clone());
        let destination = Nats.destination(&prefix, "in");
        tokio::spawn(async move {
            for chunk in sent.chunks(40) {
                let outcomes = publisher
                    .publish(&destination, chunk)
                    .await
                    .expect("publish to the source");
                assert!(outcomes.iter().all(Result::is_ok));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    wait_published(&instances, 0, total / 6).await;
    let killed = if mode == "durable" {
        busiest(&instances).await
    } else {
        0
    };
    let process = instances[killed].take().expect("running");
    let dead = process.metric("events_published").await;
    process.kill_9().await;
    println!("{what}: killed instance {killed} (it had published {dead})");

    wait_published(&instances, dead, total / 3).await;
    let zombie = busiest(&instances).await;
    let fenced_before = instances[zombie]
        .as_ref()
        .expect("running")
        .metric("fenced")
        .await;
    instances[zombie].as_ref().expect("running").pause(true);
    // Past the lease (3 s) and JetStream's redelivery (ack_wait 5 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    instances[zombie].as_ref().expect("running").pause(false);
    feed.await.expect("feed");

    let tally = common::read_through_dedup(
        sink.as_mut(),
        &sent,
        Duration::from_secs(180),
        Duration::from_secs(5),
    )
    .await;
    sink.close().await.expect("close the sink reader");
    let second = match second_sink.as_mut() {
        Some(reader) => {
            let tally = common::read_through_dedup(
                reader.as_mut(),
                &sent,
                Duration::from_secs(180),
                Duration::from_secs(5),
            )
            .await;
            reader.close().await.expect("close the sink reader");
            Some(tally)
        }
        None => None,
    };
    let zombie_process = instances[zombie].as_ref().expect("running");
    let fenced = zombie_process.metric("fenced").await - fenced_before;
    let log = zombie_process.log_text();
    for p in instances.into_iter().flatten() {
        p.stop().await;
    }
    println!("{what}: paused instance {zombie} for 12 s; fenced afterwards: {fenced}");
    assert!(
        fenced > 0,
        "{what}: the paused instance was not fenced; its log:\n{log}"
    );
    tally.assert_exact(&sent, &format!("{what}, at RabbitMQ"));
    if let Some(second) = second {
        second.assert_exact(&sent, &format!("{what}, at NATS"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_three_instances_one_killed_one_zombie_direct() {
    three_instances("direct", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_three_instances_one_killed_one_zombie_durable() {
    three_instances("durable", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_and_nats_three_instances_one_killed_one_zombie_durable() {
    three_instances("durable", true).await;
}
