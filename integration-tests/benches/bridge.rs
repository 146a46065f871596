//! The bridge's throughput on real brokers, next to a baseline in the same
//! run: NATS → RabbitMQ, Kafka → NATS, RabbitMQ → Kafka and NATS → NATS,
//! 10,000 events of 1 KiB per sample.
//!
//! - baseline, "raw loop": the routes' client libraries called directly,
//!   with the adapters' settings (`support/raw_loop.rs` says what it does
//!   and skips);
//! - second baseline, "adapter loop": consume a batch of up to 500 from A with the
//!   source adapter, publish it to B with the sink adapter, ack after the
//!   sink confirmed; 8 batches in flight. The adapters' own benches put each
//!   adapter next to its raw client library.
//! - the bridge's route, direct mode with dedup (SQLite), without dedup,
//!   with dedup and `strict_order` (a key's events one wave per round
//!   trip, as before sinks declared `ordered_publish`), and durable mode
//!   (SQLite store);
//! - NATS → RabbitMQ and Kafka → NATS in direct mode with dedup again, the
//!   same messages written raw (no CloudEvents attributes, two plain
//!   headers) and the route reading `format = "raw"`;
//! - NATS → RabbitMQ + NATS: one route, direct mode with dedup, two sinks
//!   (one source read), beside NATS → RabbitMQ and NATS → NATS alone (what
//!   two routes reading the source twice would cost);
//! - NATS → RabbitMQ again with 10, 50 and 90 ms of round trip added
//!   between the bridge and RabbitMQ by the fault proxy, and beside it with
//!   `strict_order` (a key's events one wave per round trip, as before
//!   RabbitMQ declared `ordered_publish`) at 10 and 90 ms;
//! - NATS → RabbitMQ, direct with dedup, with 10,000 keys (every event its
//!   own; the other cases use 100) at 0, 10, 50 and 90 ms of round trip: a
//!   key moves one wave per round trip, so few keys bound a long link and
//!   many keys fill it;
//! - both routes at 90 ms with `pipeline = false` beside the default (a
//!   key in one call at a time, as before the sinks declared
//!   `pipelined_order`), and Kafka → NATS with 10 and 90 ms of round trip
//!   added in front of NATS, the raw loop beside it at 90 ms.
//!
//! A sample is timed from the first event received to the last confirmed by
//! the sink, so that consumer start-up (a Kafka group join) is not counted;
//! every mover opens its sink's connection before its first receipt (the
//! route does so when it starts), so no handshake is timed either.
//! After the groups it prints CPU time per event of each case, the
//! process's peak RSS (which also holds the baselines and criterion), and,
//! for NATS → RabbitMQ and Kafka → NATS when their raw loop and direct
//! case ran, the latency the bridge adds at half load: events published at
//! half the lower of the two rates, each timed from its publish to its
//! receipt at the sink, p50 and p99 of the raw loop beside the bridge's.
//!
//! Run with `cargo xtask bench bridge` (brokers from `cargo xtask services up`).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/raw_loop.rs"]
mod raw_loop;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_core::{Consumer, Delivery, Event, Format, Header, Settlement, settle_all};
use causeway_servicebus_emulator::ServiceBusEmulator;
use causeway_testkit::fault_proxy::FaultProxy;
use common::{Broker, Kafka, Nats, Rabbit, Setup};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 10_000;
const BATCH: usize = 500;
const IN_FLIGHT: usize = 8;

#[derive(Debug, Clone, Copy)]
enum Mover {
    /// The client libraries called directly (`support/raw_loop.rs`).
    RawLoop,
    AdapterLoop,
    Direct {
        dedup: bool,
    },
    /// Direct with dedup and `strict_order`: a key's events one wave per
    /// round trip, as before sinks declared `ordered_publish`.
    DirectStrict,
    /// Direct with dedup and `pipeline = false`: a key in one call at a
    /// time, as before sinks declared `pipelined_order`.
    DirectUnpipelined,
    /// Direct with dedup, raw messages through a `format = "raw"` route.
    DirectRaw,
    /// Direct with dedup, every event its own key (a bank's accounts are
    /// many): what a shard can overlap across keys.
    DirectManyKeys,
    /// Direct with dedup to the sink and to NATS as well: sinks `a` and `b`.
    Fanout,
    Durable,
    /// Durable with `pipeline = false`: the forwarder's pages one at a
    /// time, as before.
    DurableUnpipelined,
}

/// CPU seconds of this process (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 here; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The sample's events, over `keys` keys.
fn events(prefix: &str, keys: usize) -> Vec<Event> {
    causeway_testkit::bench::events_1kib(prefix, EVENTS)
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.with_key(format!("account-{}", i % keys)))
        .collect()
}

/// The event as a plain producer writes it: payload and key, two headers.
fn into_raw(event: &mut Event) {
    event.format = Format::Raw;
    event.kind.clear();
    event.native.headers = vec![
        Header::text("x-origin", "core-banking"),
        Header::text("x-id", event.id.clone()),
    ];
}

/// A sample's brokers and bridge: fresh destinations, the sink's queue or
/// stream declared, the fault proxy in front of RabbitMQ when `rtt` is not
/// zero. The rest is held only to live as long as the sample.
struct Prepared {
    bridge: Bridge,
    setup: Setup,
    prefix: String,
    _held: (tempfile::TempDir, ServiceBusEmulator, Option<FaultProxy>),
}

async fn prepare(from: Broker, to: Broker, mover: Mover, rtt: Duration) -> Prepared {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("bench");
    let emulator = common::prepare(&prefix, from, to).await;
    let mode = if matches!(mover, Mover::Durable | Mover::DurableUnpipelined) {
        "durable"
    } else {
        "direct"
    };
    let mut setup = Setup::new(dir.path(), &prefix, from, to, mode).with_servicebus(&emulator);
    setup.route_extra = format!(
        "batch_size = {BATCH}\ndedup = {}",
        !matches!(mover, Mover::Direct { dedup: false })
    );
    if matches!(mover, Mover::Fanout) {
        setup.also_to = Some(Nats);
    }
    if matches!(mover, Mover::DirectRaw) {
        setup.route_extra.push_str("\nformat = \"raw\"");
    }
    if matches!(mover, Mover::DirectStrict) {
        setup.route_extra.push_str("\nstrict_order = true");
    }
    if matches!(mover, Mover::DirectUnpipelined | Mover::DurableUnpipelined) {
        setup.route_extra.push_str("\npipeline = false");
    }
    let proxy = if rtt.is_zero() {
        None
    } else {
        // In front of the sink only (its URL in the route's endpoints).
        let url = match to {
            Rabbit => &mut setup.route.rabbit,
            Nats => &mut setup.route.nats,
            other => panic!("latency is injected in front of RabbitMQ or NATS, not {other:?}"),
        };
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (userinfo, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
        let (target, path) = rest.split_once('/').map_or((rest, ""), |(t, p)| (t, p));
        let proxy = FaultProxy::start(target.parse().expect("the sink's host:port"))
            .await
            .expect("proxy");
        proxy.set_latency(rtt / 2, rtt / 2);
        let at = if userinfo.is_empty() {
            String::new()
        } else {
            format!("{userinfo}@")
        };
        let path = if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        };
        *url = format!("{scheme}://{at}{}{path}", proxy.addr());
        Some(proxy)
    };
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    // Declares the sink's queue (RabbitMQ) before anything is published.
    drop(common::sink_reader(&bridge, from, to).await);
    if setup.also_to.is_some() {
        // Creates the second sink's stream.
        drop(common::sink_reader(&bridge, from, Nats).await);
    }
    Prepared {
        bridge,
        setup,
        prefix,
        _held: (dir, emulator, proxy),
    }
}

/// One sample: fresh destinations, the source filled (untimed), then the
/// events moved; returns the time from first receipt to last confirmation
/// and the CPU seconds spent in it.
async fn sample(from: Broker, to: Broker, mover: Mover, rtt: Duration) -> (Duration, f64) {
    let Prepared {
        bridge,
        setup,
        prefix,
        _held,
    } = prepare(from, to, mover, rtt).await;
    let keys = if matches!(mover, Mover::DirectManyKeys) {
        EVENTS
    } else {
        100
    };
    let mut events = events(&prefix, keys);
    if matches!(mover, Mover::DirectRaw) {
        events.iter_mut().for_each(into_raw);
    }
    common::publish_to_source(&bridge, from, &prefix, &events).await;
    let destination = to.destination(&prefix, "out");
    let out = match mover {
        Mover::RawLoop => raw_loop::run(&setup.route, from, to, &prefix, EVENTS, cpu_seconds).await,
        Mover::AdapterLoop => adapter_loop(&bridge, from, to, &destination).await,
        Mover::Direct { .. }
        | Mover::DirectStrict
        | Mover::DirectUnpipelined
        | Mover::DirectRaw
        | Mover::DirectManyKeys
        | Mover::Durable
        | Mover::DurableUnpipelined => route(&bridge, &["r"]).await,
        Mover::Fanout => route(&bridge, &["r/a", "r/b"]).await,
    };
    drop(bridge);
    common::remove_destinations(&prefix).await;
    out
}

/// Runs the route until each of `sinks` (their metrics' names) published
/// every event.
async fn route(bridge: &Bridge, sinks: &[&str]) -> (Duration, f64) {
    let metrics: Vec<_> = sinks.iter().map(|s| bridge.metrics.route(s)).collect();
    let running = common::start_route(bridge).await;
    while metrics[0].received.get() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (t0, cpu0) = (Instant::now(), cpu_seconds());
    while metrics.iter().any(|m| m.published.get() < EVENTS as u64) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let out = (t0.elapsed(), cpu_seconds() - cpu0);
    running.stop().await;
    out
}

/// The baseline: consume (batches gathered as the raw loop gathers them),
/// publish, ack after the confirm; 8 batches in flight.
async fn adapter_loop(
    bridge: &Bridge,
    from: Broker,
    to: Broker,
    destination: &str,
) -> (Duration, f64) {
    let mut source = bridge
        .endpoints
        .consumer(from.name())
        .await
        .expect("source");
    let sink = bridge.endpoints.publisher(to.name()).await.expect("sink");
    // Opened before timing, as the raw loop's and the route's are.
    sink.connect().await.expect("connect");
    let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Batch tasks are joined, not counted: a failed one fails the sample.
    let mut batches = tokio::task::JoinSet::new();
    let (mut received, mut start) = (0, None);
    while received < EVENTS {
        let permit = window.clone().acquire_owned().await.expect("window");
        let batch = gather(source.as_mut()).await;
        if batch.is_empty() {
            continue;
        }
        start.get_or_insert_with(|| (Instant::now(), cpu_seconds()));
        received += batch.len();
        let (sink, destination) = (sink.clone(), destination.to_owned());
        batches.spawn(async move {
            let (events, tickets): (Vec<Event>, Vec<_>) =
                batch.into_iter().map(|d| (d.event, d.ticket)).unzip();
            let outcomes = sink.publish(&destination, &events).await.expect("publish");
            assert!(outcomes.iter().all(Result::is_ok), "a publish failed");
            settle_all(tickets.into_iter().map(|t| (t, Settlement::Ack)))
                .await
                .expect("ack");
            drop(permit);
        });
    }
    while let Some(done) = batches.join_next().await {
        done.expect("a batch failed");
    }
    let (t0, cpu0) = start.expect("received something");
    let out = (t0.elapsed(), cpu_seconds() - cpu0);
    source.close().await.expect("close");
    out
}

/// Up to `BATCH` deliveries gathered as the raw loop gathers them: the
/// first that comes within a second, then what else comes within 20 ms.
async fn gather(source: &mut dyn Consumer) -> Vec<Delivery> {
    let mut batch = source
        .next_batch(BATCH, Duration::from_secs(1))
        .await
        .expect("receive");
    let deadline = Instant::now() + Duration::from_millis(20);
    while !batch.is_empty() && batch.len() < BATCH {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let more = source
            .next_batch(BATCH - batch.len(), left)
            .await
            .expect("receive");
        batch.extend(more);
    }
    batch
}

/// What the samples of one case took, for the tables printed at the end.
#[derive(Default)]
struct Totals {
    cpu: f64,
    events: u64,
    elapsed: Duration,
}

static TOTALS: Mutex<BTreeMap<String, Totals>> = Mutex::new(BTreeMap::new());

/// A case's events a second over its samples in this run, if it ran.
fn throughput(case: &str) -> Option<f64> {
    let totals = TOTALS.lock().expect("lock");
    let t = totals.get(case)?;
    Some(t.events as f64 / t.elapsed.as_secs_f64())
}

fn bench_pair(c: &mut Criterion, from: Broker, to: Broker, cases: &[(&str, Mover, Duration)]) {
    let rt = causeway_testkit::bench::runtime();
    let name = format!("bridge_{}_to_{}", from.name(), to.name());
    let mut group = c.benchmark_group(&name);
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for &(case, mover, rtt) in cases {
        let key = format!("{name}/{case}");
        group.bench_function(case, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let key = key.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let (elapsed, cpu) = sample(from, to, mover, rtt).await;
                        total += elapsed;
                        let mut m = TOTALS.lock().expect("lock");
                        let t = m.entry(key.clone()).or_default();
                        t.cpu += cpu;
                        t.events += EVENTS as u64;
                        t.elapsed += elapsed;
                    }
                    total
                }
            });
        });
    }
    group.finish();
}

const STANDARD: &[(&str, Mover, Duration)] = &[
    ("raw_loop_baseline", Mover::RawLoop, Duration::ZERO),
    ("adapter_loop_baseline", Mover::AdapterLoop, Duration::ZERO),
    (
        "bridge_direct_dedup",
        Mover::Direct { dedup: true },
        Duration::ZERO,
    ),
    (
        "bridge_direct_no_dedup",
        Mover::Direct { dedup: false },
        Duration::ZERO,
    ),
    (
        "bridge_direct_dedup_strict_order",
        Mover::DirectStrict,
        Duration::ZERO,
    ),
    ("bridge_durable", Mover::Durable, Duration::ZERO),
];

/// The cases both routes with a sink behind the fault proxy run.
const ACROSS_CLOUDS: &[(&str, Mover, Duration)] = &[
    (
        "raw_loop_baseline_rtt_90ms",
        Mover::RawLoop,
        Duration::from_millis(90),
    ),
    (
        "bridge_direct_dedup_rtt_10ms",
        Mover::Direct { dedup: true },
        Duration::from_millis(10),
    ),
    (
        "bridge_direct_dedup_rtt_90ms",
        Mover::Direct { dedup: true },
        Duration::from_millis(90),
    ),
    (
        "bridge_direct_dedup_unpipelined_rtt_90ms",
        Mover::DirectUnpipelined,
        Duration::from_millis(90),
    ),
];

const RAW: (&str, Mover, Duration) = ("bridge_direct_dedup_raw", Mover::DirectRaw, Duration::ZERO);

fn benches(c: &mut Criterion) {
    let ms = Duration::from_millis;
    let mut nats_rabbit = STANDARD.to_vec();
    nats_rabbit.extend(ACROSS_CLOUDS);
    nats_rabbit.extend([
        ("adapter_loop_baseline_rtt_90ms", Mover::AdapterLoop, ms(90)),
        (
            "bridge_direct_dedup_strict_order_rtt_10ms",
            Mover::DirectStrict,
            ms(10),
        ),
        (
            "bridge_direct_dedup_strict_order_rtt_90ms",
            Mover::DirectStrict,
            ms(90),
        ),
        (
            "bridge_direct_dedup_rtt_50ms",
            Mover::Direct { dedup: true },
            ms(50),
        ),
        ("bridge_durable_rtt_90ms", Mover::Durable, ms(90)),
        (
            "bridge_durable_unpipelined_rtt_90ms",
            Mover::DurableUnpipelined,
            ms(90),
        ),
        (
            "bridge_direct_dedup_10k_keys",
            Mover::DirectManyKeys,
            Duration::ZERO,
        ),
        (
            "bridge_direct_dedup_10k_keys_rtt_10ms",
            Mover::DirectManyKeys,
            ms(10),
        ),
        (
            "bridge_direct_dedup_10k_keys_rtt_50ms",
            Mover::DirectManyKeys,
            ms(50),
        ),
        (
            "bridge_direct_dedup_10k_keys_rtt_90ms",
            Mover::DirectManyKeys,
            ms(90),
        ),
        RAW,
        (
            "bridge_direct_dedup_fanout_rabbit_and_nats",
            Mover::Fanout,
            Duration::ZERO,
        ),
    ]);
    bench_pair(c, Nats, Rabbit, &nats_rabbit);
    let mut kafka_nats = STANDARD.to_vec();
    kafka_nats.extend(ACROSS_CLOUDS);
    kafka_nats.push(RAW);
    bench_pair(c, Kafka, Nats, &kafka_nats);
    bench_pair(c, Rabbit, Kafka, STANDARD);
    bench_pair(c, Nats, Nats, STANDARD);
    println!("\nCPU time per event (this process: source and sink clients, bridge, harness):");
    for (case, t) in TOTALS.lock().expect("lock").iter() {
        println!("  {case}: {:.1} µs/event", t.cpu / t.events as f64 * 1e6);
    }
    println!("peak RSS of the bench process: {:.0} MiB", peak_rss_mib());
    println!(
        "\nAdded latency at half load (half the lower of the raw loop's and the bridge's \
         (direct, dedup) rates in this run; \
         source publish to sink receipt, {LATENCY_RUNS} runs of {LATENCY_EVENTS} events each):"
    );
    let rt = causeway_testkit::bench::runtime();
    for (from, to) in [(Nats, Rabbit), (Kafka, Nats)] {
        latency_report(&rt, from, to);
    }
}

/// Events per latency run, and runs of each mover (alternating).
const LATENCY_EVENTS: usize = 10_000;
const LATENCY_RUNS: usize = 3;

/// How the latency run's events are moved.
enum Moving {
    Raw(tokio::task::JoinHandle<(Duration, f64)>),
    Route(common::Running),
}

/// Each event's time from before its publish at the source to its receipt
/// at the sink (read by the check endpoint's adapter, 1 ms linger), events
/// published at `rate` a second: a chunk every 5 ms, each chunk's publish a
/// task of its own so that a slow confirm does not slow the pace. Warm-up
/// events go first, untimed: a Kafka group joined, connections open.
async fn latencies(from: Broker, to: Broker, mover: Mover, rate: f64) -> Vec<Duration> {
    let p = prepare(from, to, mover, Duration::ZERO).await;
    let warm = causeway_testkit::bench::events_1kib(&format!("{}-warm", p.prefix), 100);
    let timed = events(&p.prefix, 100);
    // Before the mover starts: this creates the source's stream (NATS).
    common::publish_to_source(&p.bridge, from, &p.prefix, &warm).await;
    let moving = match mover {
        Mover::RawLoop => {
            let (addrs, prefix) = (p.setup.route.clone(), p.prefix.clone());
            let total = warm.len() + LATENCY_EVENTS;
            Moving::Raw(tokio::spawn(async move {
                raw_loop::run(&addrs, from, to, &prefix, total, cpu_seconds).await
            }))
        }
        _ => Moving::Route(common::start_route(&p.bridge).await),
    };
    let mut sink = common::sink_reader(&p.bridge, from, to).await;
    causeway_testkit::receive_and_ack(sink.as_mut(), warm.len(), Duration::from_secs(90)).await;
    let publisher = p
        .bridge
        .endpoints
        .publisher(from.name())
        .await
        .expect("publisher");
    let destination = from.destination(&p.prefix, "in");
    let pace = tokio::spawn(async move {
        let chunk = ((rate / 200.0).ceil() as usize).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let (mut sent_at, mut publishing) = (HashMap::new(), Vec::new());
        for part in timed.chunks(chunk) {
            tick.tick().await;
            let now = Instant::now();
            sent_at.extend(part.iter().map(|e| (e.id.clone(), now)));
            let (publisher, destination, part) =
                (publisher.clone(), destination.clone(), part.to_vec());
            publishing.push(tokio::spawn(async move {
                let out = publisher
                    .publish(&destination, &part)
                    .await
                    .expect("publish");
                assert!(out.iter().all(Result::is_ok), "a publish failed");
            }));
        }
        for p in publishing {
            p.await.expect("publish task");
        }
        sent_at
    });
    let warm_prefix = format!("{}-warm-", p.prefix);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut received = HashMap::new();
    while received.len() < LATENCY_EVENTS {
        assert!(
            Instant::now() < deadline,
            "{} of {LATENCY_EVENTS} timed events reached the sink in 120 s",
            received.len()
        );
        let batch = sink
            .next_batch(BATCH, Duration::from_millis(1))
            .await
            .expect("receive");
        let now = Instant::now();
        let mut tickets = Vec::with_capacity(batch.len());
        for d in batch {
            // A warm-up event delivered again (at least once) is not timed.
            if !d.event.id.starts_with(&warm_prefix) {
                received.entry(d.event.id).or_insert(now);
            }
            tickets.push((d.ticket, Settlement::Ack));
        }
        settle_all(tickets).await.expect("ack");
    }
    let sent_at = pace.await.expect("pace");
    match moving {
        Moving::Raw(task) => drop(task.await.expect("raw loop")),
        Moving::Route(running) => running.stop().await,
    }
    drop(sink);
    common::remove_destinations(&p.prefix).await;
    received
        .iter()
        .map(|(id, got)| got.duration_since(sent_at[id]))
        .collect()
}

/// Prints the raw loop's and the bridge's (direct, dedup) latency
/// percentiles, pooled over the runs, and what the bridge adds.
fn latency_report(rt: &tokio::runtime::Runtime, from: Broker, to: Broker) {
    let name = format!("bridge_{}_to_{}", from.name(), to.name());
    // Half of the slower one's maximum: both below what they can carry.
    let (Some(raw_max), Some(bridge_max)) = (
        throughput(&format!("{name}/raw_loop_baseline")),
        throughput(&format!("{name}/bridge_direct_dedup")),
    ) else {
        println!("  {name}: skipped (raw_loop_baseline and bridge_direct_dedup did not both run)");
        return;
    };
    let rate = raw_max.min(bridge_max) / 2.0;
    let (mut raw, mut bridge) = (Vec::new(), Vec::new());
    for _ in 0..LATENCY_RUNS {
        raw.extend(rt.block_on(latencies(from, to, Mover::RawLoop, rate)));
        bridge.extend(rt.block_on(latencies(from, to, Mover::Direct { dedup: true }, rate)));
    }
    let ms = |v: &mut Vec<Duration>, q: f64| {
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
    };
    let (r50, r99, b50, b99) = (
        ms(&mut raw, 0.5),
        ms(&mut raw, 0.99),
        ms(&mut bridge, 0.5),
        ms(&mut bridge, 0.99),
    );
    println!(
        "  {name} at {rate:.0} events/s: raw loop p50 {r50:.1} ms, p99 {r99:.1} ms; \
         bridge (direct, dedup) p50 {b50:.1} ms, p99 {b99:.1} ms; \
         added p50 {:+.1} ms, p99 {:+.1} ms (goal: at most 1 ms)",
        b50 - r50,
        b99 - r99
    );
}

criterion_group!(bridge, benches);
criterion_main!(bridge);
