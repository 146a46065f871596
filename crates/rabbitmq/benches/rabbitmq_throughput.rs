//! RabbitMQ throughput for 1 KiB events: the adapter next to a raw lapin loop
//! with the same settings (persistent messages with the same CloudEvents
//! headers, confirms awaited after the whole batch; the same prefetch and
//! one ack per message), in the same run.
//!
//! Run with `cargo xtask bench rabbitmq_throughput` (server from `CAUSEWAY_RABBITMQ_URL`).

use std::time::{Duration, Instant};

use causeway_core::{Binding, Consumer, Event, Publisher};
use causeway_rabbitmq::{
    ExchangeKind, PublishConfig, QueueConfig, QueueKind, RabbitClient, RabbitConfig,
};
use causeway_testkit::bench::{consume_and_ack, events_1kib, runtime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

const BATCH: usize = 1_000;
const CONSUME: usize = 10_000;

fn url() -> String {
    causeway_testkit::env::endpoint(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn queue(name: &str) -> QueueConfig {
    QueueConfig {
        name: name.to_owned(),
        kind: QueueKind::Classic,
        bindings: Vec::new(),
        prefetch: 500,
        dead_letter_queue: None,
        delivery_limit: None,
        stream_offset: None,
        delay_queue_idle: Duration::from_secs(60),
    }
}

fn config(q: &str) -> RabbitConfig {
    RabbitConfig {
        url: url(),
        exchange: String::new(),
        exchange_kind: ExchangeKind::Direct,
        publish: PublishConfig::default(),
        queue: Some(queue(q)),
        max_message_bytes: 16 * 1024 * 1024,
        max_reconnect_delay: Duration::from_secs(1),
    }
}

/// What a hand-written client sends: the same properties and headers.
fn raw_properties(e: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("cloudEvents:specversion", "1.0".to_owned()),
        ("cloudEvents:id", e.id.clone()),
        ("cloudEvents:source", e.source.clone()),
        ("cloudEvents:type", e.kind.clone()),
        (
            "cloudEvents:time",
            e.time
                .map(causeway_core::binding::format_time)
                .unwrap_or_default(),
        ),
    ] {
        headers.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    BasicProperties::default()
        .with_message_id(ShortString::from(e.id.as_str()))
        .with_delivery_mode(2)
        .with_headers(headers)
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let (a, r) = (
        causeway_testkit::unique_name("bench-a"),
        causeway_testkit::unique_name("bench-r"),
    );
    let client = rt
        .block_on(RabbitClient::connect(config(&a)))
        .expect("connect");
    rt.block_on(RabbitClient::connect(config(&r)))
        .expect("declare raw queue");
    let publisher = client.publisher();
    let channel = rt.block_on(async {
        let conn = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("raw connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        std::mem::forget(conn); // keep it open for the bench
        ch
    });
    let mut group = c.benchmark_group("rabbitmq_publish_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 0u64;
    group.bench_function("adapter_batch_1000", |b| {
        b.to_async(&rt).iter_batched(
            || {
                round += 1;
                events_1kib(&format!("a{round}"), BATCH)
            },
            |events| {
                let (publisher, a) = (&publisher, &a);
                async move {
                    let out = publisher.publish(a, &events).await.expect("publish");
                    assert!(out.iter().all(Result::is_ok));
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.bench_function("raw_lapin_1000_then_confirms", |b| {
        b.to_async(&rt).iter_batched(
            || {
                round += 1;
                events_1kib(&format!("r{round}"), BATCH)
            },
            |events| {
                let (channel, r) = (&channel, &r);
                async move {
                    let mut confirms = Vec::with_capacity(events.len());
                    for e in &events {
                        confirms.push(
                            channel
                                .basic_publish(
                                    "".into(),
                                    r.as_str().into(),
                                    BasicPublishOptions::default(),
                                    &e.payload,
                                    raw_properties(e),
                                )
                                .await
                                .expect("publish"),
                        );
                    }
                    for c in join_all(confirms).await {
                        c.expect("confirm");
                    }
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
    // Empty the queues again: the consume bench fills its own.
    rt.block_on(async {
        for q in [&a, &r] {
            let _ = channel
                .queue_purge(q.as_str().into(), Default::default())
                .await;
        }
    });
}

fn consume(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("rabbitmq_consume_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(CONSUME as u64));
    let fill = |q: String| async move {
        let client = RabbitClient::connect(config(&q)).await.expect("connect");
        let publisher = client.publisher();
        for chunk in events_1kib(&q, CONSUME).chunks(BATCH) {
            publisher.publish(&q, chunk).await.expect("fill");
        }
        client
    };
    group.bench_function("adapter_next_batch_500_ack_each", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let q = causeway_testkit::unique_name("bench-ca");
                let client = fill(q.clone()).await;
                let mut consumer = client.consumer(None).await.expect("consumer");
                let start = Instant::now();
                consume_and_ack(&mut consumer, CONSUME, 500).await;
                total += start.elapsed();
                consumer.close().await.expect("close");
            }
            total
        });
    });
    group.bench_function("raw_lapin_consume_ack_each", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let q = causeway_testkit::unique_name("bench-cr");
                drop(fill(q.clone()).await);
                let conn = Connection::connect(&url(), ConnectionProperties::default())
                    .await
                    .expect("raw connect");
                let ch = conn.create_channel().await.expect("channel");
                ch.queue_declare(
                    q.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare");
                ch.basic_qos(500, BasicQosOptions::default())
                    .await
                    .expect("qos");
                let start = Instant::now();
                let mut consumer = ch
                    .basic_consume(
                        q.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("consume");
                let mut got = 0;
                while got < CONSUME {
                    let d = consumer.next().await.expect("end").expect("delivery");
                    // A raw client decodes the attributes too.
                    let headers = d.properties.headers().clone().unwrap_or_default();
                    let _ = Binding::Amqp.decode(
                        headers.inner().iter().filter_map(|(k, v)| match v {
                            AMQPValue::LongString(s) => Some((k.as_str().as_bytes(), s.as_bytes())),
                            _ => None,
                        }),
                        None,
                        bytes::Bytes::from(d.data),
                    );
                    d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    got += 1;
                }
                total += start.elapsed();
                let _ = conn.close(200, "done".into()).await;
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, publish, consume);
criterion_main!(benches);
