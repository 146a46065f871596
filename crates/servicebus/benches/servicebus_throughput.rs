//! Service Bus throughput for 1 KiB events against causeway-testkit's REST
//! **emulator** (in process, sharing the bench's two cores): the adapter
//! next to direct calls of `azure_messaging_servicebus` with the same
//! requests (JSON batches of 100 with the same properties, 8 in flight to
//! publish; 8 peek-locks in flight, one complete per message, to consume),
//! in the same run. The emulator's absolute numbers mean little; the ratio
//! is what this measures.
//!
//! Run with `cargo xtask bench servicebus_throughput`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use azure_messaging_servicebus::service_bus::{QueueClient, SendMessageOptions};
use causeway_core::{Binding, Event, Publisher};
use causeway_servicebus::{ReceiveConfig, ServiceBusClient, ServiceBusConfig};
use causeway_servicebus_emulator::{QueueOptions, ROOT_POLICY, Rest, ServiceBusEmulator};
use causeway_testkit::bench::{consume_and_ack, runtime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

/// Events per measured iteration.
const PER_ITER: usize = 1000;
const IN_FLIGHT: usize = 8;
const BATCH: &str = "application/vnd.microsoft.servicebus.json";

/// 1 KiB of printable text: the shared bench events' `0x07` bytes would
/// each become six characters of JSON (`\u0007`), and the raw loop's
/// fixed batches of 100 would outgrow the 256 KiB request limit.
fn events_1kib(prefix: &str, n: usize) -> Vec<Event> {
    causeway_testkit::bench::events_1kib(prefix, n)
        .into_iter()
        .map(|e| e.with_payload(vec![b'x'; 1024]))
        .collect()
}

fn client(emulator: &ServiceBusEmulator) -> ServiceBusClient {
    let key = emulator.key(ROOT_POLICY).unwrap_or_default();
    let config =
        ServiceBusConfig::at_endpoint(emulator.namespace(), ROOT_POLICY, key, emulator.url());
    ServiceBusClient::connect(config).expect("client")
}

/// What a hand-written client sends: the same properties as the adapter.
fn raw_message(e: &Event) -> Value {
    let user: Map<String, Value> = Binding::ServiceBus
        .encode(e)
        .into_iter()
        .map(|(n, v)| (n.into_owned(), Value::String(v)))
        .collect();
    json!({
        "Body": std::str::from_utf8(&e.payload).expect("bench payloads are text"),
        "BrokerProperties": {"MessageId": e.id},
        "UserProperties": user,
    })
}

async fn raw_publish(queue: &QueueClient, events: &[Event]) {
    let bodies: Vec<String> = events
        .chunks(100)
        .map(|c| Value::Array(c.iter().map(raw_message).collect()).to_string())
        .collect();
    let results: Vec<_> = futures_util::stream::iter(bodies)
        .map(|body| async move {
            let options = SendMessageOptions {
                content_type: Some(BATCH.into()),
                ..SendMessageOptions::default()
            };
            queue.send_message(&body, Some(options)).await
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        r.expect("send batch");
    }
}

/// The raw consumer: 8 loops of peek-lock, read the properties, complete,
/// running in the background for the whole bench (as the adapter's
/// receives do), counting completed messages. Plain REST calls: the client
/// library cannot parse the emulator's 64-bit sequence numbers.
fn raw_consumer(rt: &tokio::runtime::Runtime, rest: &Rest, queue: &str) -> Arc<AtomicUsize> {
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..IN_FLIGHT {
        let (rest, queue, done) = (rest.clone(), queue.to_owned(), done.clone());
        rt.spawn(async move {
            loop {
                let r = rest.peek_lock(&queue, 1).await;
                if r.status != 201 {
                    continue;
                }
                assert_eq!(rest.complete(&r).await, 200, "complete");
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    done
}

/// Waits until the raw consumer has completed the `PER_ITER` messages of
/// this iteration. The goal counts iterations, not what was done before the
/// fill: the background loops start taking messages while the queue fills.
async fn raw_drain(done: &AtomicUsize, goal: &AtomicUsize) {
    let target = goal.fetch_add(PER_ITER, Ordering::Relaxed) + PER_ITER;
    while done.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let emulator = rt.block_on(ServiceBusEmulator::start()).expect("emulator");
    let sb = client(&emulator);
    let publisher = sb.publisher();
    let raw = sb.queue_client("bench-publish").expect("queue client");
    // Replacing the queue each iteration keeps the emulator's memory flat.
    let fresh = || {
        emulator.create_queue("bench-publish", QueueOptions::default());
        events_1kib(&causeway_testkit::unique_name("pub"), PER_ITER)
    };
    let mut group = c.benchmark_group("servicebus_publish_1KiB_rest_emulator");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("adapter_publish_1000", |b| {
        b.iter_batched(
            fresh,
            |events| {
                rt.block_on(async {
                    let out = publisher
                        .publish("bench-publish", &events)
                        .await
                        .expect("publish");
                    assert!(out.iter().all(Result::is_ok));
                })
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.bench_function("raw_send_batches_of_100_8_in_flight", |b| {
        b.iter_batched(
            fresh,
            |events| rt.block_on(raw_publish(&raw, &events)),
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// Each iteration fills `queue` (untimed, raw), then times `drain`.
fn timed_drains(
    rt: &tokio::runtime::Runtime,
    filler: &QueueClient,
    iters: u64,
    mut drain: impl FnMut(),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let events = events_1kib(&causeway_testkit::unique_name("sub"), PER_ITER);
        rt.block_on(raw_publish(filler, &events));
        let start = Instant::now();
        drain();
        total += start.elapsed();
    }
    total
}

fn consume(c: &mut Criterion) {
    let rt = runtime();
    let emulator = rt.block_on(ServiceBusEmulator::start()).expect("emulator");
    emulator.create_queue("bench-consume", QueueOptions::default());
    emulator.create_queue("bench-consume-raw", QueueOptions::default());
    let sb = client(&emulator);
    let filler = sb.queue_client("bench-consume").expect("queue client");
    let raw = sb.queue_client("bench-consume-raw").expect("queue client");
    let receive = ReceiveConfig {
        receives_in_flight: IN_FLIGHT,
        long_poll: Duration::from_secs(1),
        ..ReceiveConfig::entity("bench-consume")
    };
    let mut consumer = {
        let _guard = rt.enter();
        sb.consumer(Some(&receive)).expect("consumer")
    };
    let mut group = c.benchmark_group("servicebus_consume_1KiB_rest_emulator");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("adapter_8_peek_locks_in_flight_ack", |b| {
        b.iter_custom(|iters| {
            timed_drains(&rt, &filler, iters, || {
                rt.block_on(async {
                    consume_and_ack(&mut consumer, PER_ITER, 100).await;
                })
            })
        });
    });
    rt.block_on(causeway_core::Consumer::close(&mut consumer))
        .expect("close");
    let done = raw_consumer(&rt, &Rest::new(&emulator), "bench-consume-raw");
    let goal = AtomicUsize::new(0);
    group.bench_function("raw_8_peek_locks_in_flight_complete", |b| {
        b.iter_custom(|iters| {
            timed_drains(&rt, &raw, iters, || rt.block_on(raw_drain(&done, &goal)))
        });
    });
    group.finish();
}

criterion_group!(benches, publish, consume);
criterion_main!(benches);
