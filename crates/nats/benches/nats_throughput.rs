//! NATS JetStream throughput for 1 KiB events: the adapter next to a raw
//! async-nats loop with the same settings (the same CloudEvents headers and
//! `Nats-Msg-Id`, all publishes in flight before awaiting PubAcks; the same
//! pull consumer settings and one ack per message), in the same run.
//!
//! Run with `cargo xtask bench nats_throughput` (server from `CAUSEWAY_NATS_URL`).

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer};
use causeway_core::{Binding, Event, Publisher};
use causeway_nats::{ConsumerConfig, NatsClient, NatsConfig, PublishConfig, Start, StreamConfig};
use causeway_testkit::bench::{consume_and_ack, events_1kib, runtime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::future::join_all;

const BATCH: usize = 1_000;
const CONSUME: usize = 10_000;

fn url() -> String {
    causeway_testkit::env::endpoint("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222")
}

fn config(prefix: &str) -> NatsConfig {
    NatsConfig {
        url: url(),
        auth: Default::default(),
        tls: None,
        stream: StreamConfig {
            name: prefix.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(600),
            memory_storage: false,
        },
        publish: PublishConfig::default(),
        consumer: None,
    }
}

/// What a hand-written client sends: the same headers, built per message.
fn raw_message(e: &Event) -> PublishMessage {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", e.id.as_str());
    headers.insert("ce-source", e.source.as_str());
    headers.insert("ce-type", e.kind.as_str());
    if let Some(t) = e.time {
        headers.insert("ce-time", causeway_core::binding::format_time(t).as_str());
    }
    headers.insert(async_nats::header::NATS_MESSAGE_ID, e.id.as_str());
    PublishMessage::build()
        .payload(e.payload.clone())
        .headers(headers)
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let prefix = causeway_testkit::unique_name("benchpub");
    let client = rt
        .block_on(NatsClient::connect(config(&prefix)))
        .expect("connect");
    let publisher = client.publisher();
    // jetstream::new spawns a task: inside the runtime.
    let raw = rt
        .block_on(async { jetstream::new(async_nats::connect(url()).await.expect("raw connect")) });
    let mut group = c.benchmark_group("nats_publish_1KiB");
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
                let (publisher, subject) = (&publisher, format!("{prefix}.a"));
                async move {
                    let out = publisher.publish(&subject, &events).await.expect("publish");
                    assert!(out.iter().all(Result::is_ok));
                }
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.bench_function("raw_async_nats_1000_in_flight", |b| {
        b.to_async(&rt).iter_batched(
            || {
                round += 1;
                events_1kib(&format!("r{round}"), BATCH)
            },
            |events| {
                let (raw, subject) = (&raw, format!("{prefix}.r"));
                async move {
                    let mut acks = Vec::with_capacity(events.len());
                    for e in &events {
                        acks.push(
                            raw.send_publish(subject.clone(), raw_message(e))
                                .await
                                .expect("send"),
                        );
                    }
                    for ack in join_all(acks.into_iter().map(|a| a.into_future())).await {
                        ack.expect("ack");
                    }
                }
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn consume(c: &mut Criterion) {
    let rt = runtime();
    let prefix = causeway_testkit::unique_name("benchsub");
    let client = rt
        .block_on(NatsClient::connect(config(&prefix)))
        .expect("connect");
    let publisher = client.publisher();
    let raw = rt
        .block_on(async { jetstream::new(async_nats::connect(url()).await.expect("raw connect")) });
    let fill = |subject: String| {
        let publisher = publisher.clone();
        async move {
            for chunk in events_1kib(&subject, CONSUME).chunks(BATCH) {
                publisher.publish(&subject, chunk).await.expect("fill");
            }
        }
    };
    let mut group = c.benchmark_group("nats_consume_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(CONSUME as u64));
    let mut round = 0u64;
    group.bench_function("adapter_next_batch_500_ack_each", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (client, fill, prefix) = (&client, &fill, &prefix);
            round += iters;
            let base = round;
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let subject = format!("{prefix}.a{base}x{i}");
                    fill(subject.clone()).await;
                    let mut consumer = client
                        .consumer(Some(&ConsumerConfig {
                            durable: format!("a{base}x{i}"),
                            filter_subject: Some(subject),
                            ack_wait: Duration::from_secs(30),
                            max_deliver: -1,
                            dead_letter_subject: None,
                            start: Start::All,
                            prefetch: 500,
                            max_processing: Duration::from_secs(900),
                        }))
                        .await
                        .expect("consumer");
                    let start = Instant::now();
                    consume_and_ack(&mut consumer, CONSUME, 500).await;
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.bench_function("raw_pull_stream_ack_each", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (raw, fill, prefix) = (&raw, &fill, &prefix);
            round += iters;
            let base = round;
            async move {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let subject = format!("{prefix}.r{base}x{i}");
                    fill(subject.clone()).await;
                    let stream = raw.get_stream(prefix.as_str()).await.expect("stream");
                    let consumer = stream
                        .create_consumer(consumer::pull::Config {
                            durable_name: Some(format!("r{base}x{i}")),
                            filter_subject: subject,
                            ack_policy: consumer::AckPolicy::Explicit,
                            ack_wait: Duration::from_secs(30),
                            max_ack_pending: -1,
                            ..Default::default()
                        })
                        .await
                        .expect("consumer");
                    let start = Instant::now();
                    let mut messages = consumer
                        .stream()
                        .max_messages_per_batch(500)
                        .messages()
                        .await
                        .expect("messages");
                    let mut got = 0;
                    while got < CONSUME {
                        let m = messages.next().await.expect("end").expect("message");
                        // A raw client decodes the attributes too.
                        let headers = m.headers.as_ref().expect("headers");
                        let _ = Binding::Nats.decode(
                            headers.iter().filter_map(|(n, v)| {
                                v.first().map(|v| (n.as_ref(), AsRef::<[u8]>::as_ref(v)))
                            }),
                            None,
                            m.payload.clone(),
                        );
                        m.ack().await.expect("ack");
                        got += 1;
                    }
                    total += start.elapsed();
                }
                total
            }
        });
    });
    group.finish();
}

criterion_group!(benches, publish, consume);
criterion_main!(benches);
