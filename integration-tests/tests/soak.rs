//! The soak: bridge processes running for minutes against real brokers
//! while the things that break over hours happen on a short clock.
//! `cargo xtask soak --minutes N` runs it for N minutes; `cargo xtask test`
//! (and so CI) for 5; run alone it reads `CAUSEWAY_SOAK_MINUTES` (1 when unset).
//!
//! Two routes at once, each fed at a steady rate the whole time:
//! - RabbitMQ → NATS, direct, two `causeway run` processes sharing
//!   PostgreSQL stores with a 3 s claim lease. A tenth of the feed is sent
//!   twice, so both instances meet the same event and the loser nacks it
//!   with a delay (RabbitMQ delay queues, whose idle expiry is set to 4 s
//!   so that the expiry falls inside the run many times).
//! - Kafka → SQS (moto, an emulator), durable, on SQLite, with retention
//!   every 2 s deleting everything older than 2 s that was forwarded.
//!
//! Each sink flaps: every 30 s the fault proxy in front of it resets every
//! connection and refuses new ones for 5 s. The sinks are read as the runs
//! go, through a sink-side idempotent handler. Printed and asserted: lost = 0,
//! duplicates after dedup = 0, every process exits cleanly at SIGTERM, and
//! each process's RSS is flat (the last third of the run's samples at most
//! 1.25 × the middle third's peak + 16 MiB).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_core::Event;
use causeway_testkit::fault_proxy::FaultProxy;
use common::{BridgeProcess, Broker, Kafka, Nats, Rabbit, Setup, Sqs};

fn minutes() -> f64 {
    std::env::var("CAUSEWAY_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .filter(|m: &f64| *m > 0.0)
        .unwrap_or(1.0)
}

/// `scheme://host:port...` → the socket address, for a proxy in front of it.
fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = authority.split('/').next().unwrap_or(authority);
    host_port
        .parse()
        .unwrap_or_else(|e| panic!("{url}: the soak needs ip:port addresses: {e}"))
}

/// Cuts the sink for 5 s every 30 s until `until`.
fn flap(proxy: Arc<FaultProxy>, until: Instant) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut cuts = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            if Instant::now() >= until {
                return cuts;
            }
            proxy.cut_for(Duration::from_secs(5));
            cuts += 1;
        }
    })
}

/// RSS samples of a process, in MiB, every 10 s until `until`.
fn sample_rss(pid: u32, until: Instant) -> tokio::task::JoinHandle<Vec<f64>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < until {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
            {
                samples.push(kib / 1024.0);
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        samples
    })
}

fn assert_flat(what: &str, samples: &[f64]) {
    println!("{what}: RSS MiB every 10 s: {samples:.0?}");
    if samples.len() < 6 {
        println!("{what}: RSS flatness: NOT CHECKED (fewer than 6 samples; run longer)");
        return;
    }
    let third = samples.len() / 3;
    let peak = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
    let (middle, last) = (
        peak(&samples[third..2 * third]),
        peak(&samples[2 * third..]),
    );
    println!("{what}: RSS peak middle third {middle:.0} MiB, last third {last:.0} MiB");
    assert!(
        last <= middle * 1.25 + 16.0,
        "{what}: RSS grew from {middle:.0} to {last:.0} MiB"
    );
}

/// Feeds `events` to the route's source in chunks of `chunk` every
/// `every`, until all are sent; `twice` re-sends every tenth chunk.
async fn feed(
    bridge: &Bridge,
    from: Broker,
    prefix: &str,
    events: Vec<Event>,
    chunk: usize,
    every: Duration,
    twice: bool,
) -> tokio::task::JoinHandle<()> {
    let destination = from.destination(prefix, "in");
    let publisher = bridge
        .endpoints
        .publisher(from.name())
        .await
        .expect("source publisher");
    tokio::spawn(async move {
        for (n, c) in events.chunks(chunk).enumerate() {
            let copies = if twice && n % 10 == 9 { 2 } else { 1 };
            for _ in 0..copies {
                let outcomes = publisher
                    .publish(&destination, c)
                    .await
                    .expect("publish to the source");
                assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// The number of events a feed of `minutes` at `per_second` sends.
fn count(minutes: f64, per_second: f64) -> usize {
    (minutes * 60.0 * per_second) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_routes_flapping_sinks_leases_retention() {
    let minutes = minutes();
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    println!("soak: {minutes} minute(s)");
    let dir = tempfile::tempdir().expect("dir");
    let until = Instant::now() + run_for;

    // Route A: RabbitMQ -> NATS, direct, two instances on PostgreSQL.
    let prefix_a = causeway_testkit::unique_name("soak-a");
    let emulator_a = common::prepare(&prefix_a, Rabbit, Nats).await;
    let mut a =
        Setup::new(dir.path(), &prefix_a, Rabbit, Nats, "direct").with_servicebus(&emulator_a);
    a.store = common::postgres_store(&prefix_a);
    a.route_extra = "claim_lease = \"3s\"\nbatch_size = 100".into();
    a.rabbit_queue_extra = ", delay_queue_idle = \"4s\"".into();
    let nats_proxy = Arc::new(
        FaultProxy::start(addr_of(&a.route.nats))
            .await
            .expect("proxy"),
    );
    a.route.nats = format!("nats://{}", nats_proxy.addr());

    // Route B: Kafka -> SQS (moto), durable, SQLite, retention every 2 s.
    let prefix_b = causeway_testkit::unique_name("soak-b");
    let emulator_b = common::prepare(&prefix_b, Kafka, Sqs).await;
    let mut b =
        Setup::new(dir.path(), &prefix_b, Kafka, Sqs, "durable").with_servicebus(&emulator_b);
    b.store = format!(
        "sqlite = \"{}/soak-b.db\"\nretention = {{ max_age = \"2s\", max_bytes = 0, every = \"2s\" }}",
        dir.path().display()
    );
    let sqs_proxy = Arc::new(
        FaultProxy::start(addr_of(&b.route.sqs))
            .await
            .expect("proxy"),
    );
    b.route.sqs = format!("http://{}", sqs_proxy.addr());

    // Helpers on stores of their own: they feed the sources and read the sinks.
    let helper = |s: &Setup, name: &str| {
        let mut own = s.clone();
        own.store = format!("sqlite = \"{}/{name}.db\"", dir.path().display());
        own
    };
    let helper_a = Bridge::new(helper(&a, "helper-a").config(&emulator_a))
        .await
        .expect("bridge");
    let helper_b = Bridge::new(helper(&b, "helper-b").config(&emulator_b))
        .await
        .expect("bridge");
    let mut sink_a = common::sink_reader(&helper_a, Rabbit, Nats).await;
    let mut sink_b = common::sink_reader(&helper_b, Kafka, Sqs).await;

    let sent_a = causeway_testkit::events(&prefix_a, count(minutes, 100.0), 50);
    // moto serves about 50 messages a second, reads included.
    let sent_b = causeway_testkit::events(&prefix_b, count(minutes, 10.0), 20);
    let a1 = BridgeProcess::start(dir.path(), "a1", &a, &emulator_a).await;
    let a2 = BridgeProcess::start(dir.path(), "a2", &a, &emulator_a).await;
    let b1 = BridgeProcess::start(dir.path(), "b1", &b, &emulator_b).await;
    let rss = [
        ("rabbitmq->nats instance 1", sample_rss(a1.pid(), until)),
        ("rabbitmq->nats instance 2", sample_rss(a2.pid(), until)),
        ("kafka->sqs durable", sample_rss(b1.pid(), until)),
    ];
    let flaps = [
        flap(nats_proxy.clone(), until),
        flap(sqs_proxy.clone(), until),
    ];
    let started = Instant::now();
    let feeds = [
        feed(
            &helper_a,
            Rabbit,
            &prefix_a,
            sent_a.clone(),
            50,
            Duration::from_millis(500),
            true,
        )
        .await,
        feed(
            &helper_b,
            Kafka,
            &prefix_b,
            sent_b.clone(),
            10,
            Duration::from_secs(1),
            false,
        )
        .await,
    ];
    // Read both sinks while the feeds run; each read ends once every event
    // arrived and 10 s more brought no copy.
    let grace = run_for + Duration::from_secs(240);
    let (tally_a, tally_b) = tokio::join!(
        common::read_through_dedup(sink_a.as_mut(), &sent_a, grace, Duration::from_secs(10)),
        common::read_through_dedup(sink_b.as_mut(), &sent_b, grace, Duration::from_secs(10)),
    );
    for f in feeds {
        f.await.expect("feed");
    }
    let cuts: Vec<u32> = {
        let mut cuts = Vec::new();
        for f in flaps {
            cuts.push(f.await.expect("flap"));
        }
        cuts
    };
    let mut samples = Vec::new();
    for (what, r) in rss {
        samples.push((what, r.await.expect("rss")));
    }
    let refusals = [
        a1.metric("fenced").await + a2.metric("fenced").await,
        a1.metric("redeliveries").await + a2.metric("redeliveries").await,
        b1.metric("publish_errors").await,
    ];
    sink_a.close().await.expect("close");
    sink_b.close().await.expect("close");
    for p in [a1, a2, b1] {
        p.stop().await;
    }
    println!(
        "soak: ran {:.1} min; sink cuts {cuts:?}; route A fenced {}, redeliveries {}; route B publish errors {}",
        started.elapsed().as_secs_f64() / 60.0,
        refusals[0],
        refusals[1],
        refusals[2]
    );
    tally_a.assert_exact(
        &sent_a,
        "soak rabbitmq -> nats (direct, 2 instances, PostgreSQL)",
    );
    tally_b.assert_exact(
        &sent_b,
        "soak kafka -> sqs (moto emulator; durable, retention every 2 s)",
    );
    for (what, s) in &samples {
        assert_flat(what, s);
    }
}
