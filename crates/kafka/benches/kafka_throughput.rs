//! Kafka throughput and latency for 1 KiB events, in one run:
//! - produce: the adapter next to a raw rdkafka FutureProducer loop with the
//!   same settings (same headers, all enqueued before awaiting deliveries);
//! - the seed's tuning (linger 20 ms, 32 KiB batches, snappy, Nagle off)
//!   next to librdkafka's defaults: throughput of a 1,000 batch and the
//!   latency of a single event (p50/p99 from criterion's distribution);
//! - consume: the adapter (next_batch 500, ack each) next to a raw
//!   StreamConsumer loop with a manual offset commit per 500.
//!
//! Runs on Tansu (`CAUSEWAY_KAFKA_BROKERS`), the Kafka-protocol broker
//! available here: absolute numbers are Tansu's, ratios are the point.

use std::time::{Duration, Instant};

use causeway_core::{Binding, Consumer, Event, Publisher, Settlement, settle_all};
use causeway_kafka::{ConsumerConfig, KafkaClient, KafkaConfig, ProducerConfig, StartFrom};
use causeway_testkit::bench::{consume_and_ack, events_1kib, runtime};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const BATCH: usize = 1_000;
const CONSUME: usize = 10_000;

fn brokers() -> String {
    causeway_testkit::env::endpoint("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092")
}

fn config(producer: ProducerConfig) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers(),
        security: Default::default(),
        producer,
        consumer: None,
        librdkafka: Default::default(),
        max_message_bytes: 900_000,
    }
}

/// librdkafka's own defaults for the knobs the seed tunes.
fn librdkafka_defaults() -> ProducerConfig {
    ProducerConfig {
        compression: "none".into(),
        batch_size: 1_000_000,
        linger: Duration::from_millis(5),
        nagle_disabled: false,
        ..ProducerConfig::default()
    }
}

async fn topic(partitions: i32) -> String {
    let name = causeway_testkit::unique_name("bench");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    name
}

fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "snappy")
        .set("batch.size", "32768")
        .set("linger.ms", "20")
        .set("socket.nagle.disable", "true")
        .create()
        .expect("raw producer")
}

fn raw_headers(e: &Event) -> OwnedHeaders {
    let time = e
        .time
        .map(causeway_core::binding::format_time)
        .unwrap_or_default();
    OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(e.id.as_str()),
        })
        .insert(Header {
            key: "ce_source",
            value: Some(e.source.as_str()),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(e.kind.as_str()),
        })
        .insert(Header {
            key: "ce_time",
            value: Some(time.as_str()),
        })
}

fn produce(c: &mut Criterion) {
    let rt = runtime();
    let topic = rt.block_on(topic(6));
    let seed = KafkaClient::new(config(ProducerConfig::default()))
        .publisher()
        .expect("publisher");
    let defaults = KafkaClient::new(config(librdkafka_defaults()))
        .publisher()
        .expect("publisher");
    let raw = rt.block_on(async { raw_producer() });
    let mut group = c.benchmark_group("kafka_produce_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut round = 0u64;
    for (name, publisher) in [
        ("adapter_seed_tuning_batch_1000", &seed),
        ("adapter_librdkafka_defaults_batch_1000", &defaults),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_batched(
                || {
                    round += 1;
                    events_1kib(&format!("p{round}"), BATCH)
                },
                |events| {
                    let topic = &topic;
                    async move {
                        let out = publisher.publish(topic, &events).await.expect("publish");
                        assert!(out.iter().all(Result::is_ok));
                    }
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.bench_function("raw_rdkafka_seed_tuning_batch_1000", |b| {
        b.to_async(&rt).iter_batched(
            || {
                round += 1;
                events_1kib(&format!("r{round}"), BATCH)
            },
            |events| {
                let (raw, topic) = (&raw, &topic);
                async move {
                    let futures: Vec<_> = events
                        .iter()
                        .map(|e| {
                            raw.send_result(
                                FutureRecord::<[u8], [u8]>::to(topic)
                                    .payload(&e.payload[..])
                                    .headers(raw_headers(e)),
                            )
                            .map_err(|(e, _)| e)
                            .expect("enqueue")
                        })
                        .collect();
                    for d in join_all(futures).await {
                        d.expect("canceled").map_err(|(e, _)| e).expect("delivery");
                    }
                }
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();

    // One event at a time, what a single transaction sees: p50/p99 of 500
    // sends each, measured directly (criterion reports means, not tails).
    for (name, publisher) in [("seed_tuning", &seed), ("librdkafka_defaults", &defaults)] {
        let mut samples: Vec<Duration> = rt.block_on(async {
            let mut out = Vec::with_capacity(500);
            for i in 0..500 {
                let events = events_1kib(&format!("lat-{name}-{i}"), 1);
                let start = Instant::now();
                publisher.publish(&topic, &events).await.expect("publish")[0]
                    .as_ref()
                    .expect("delivery");
                out.push(start.elapsed());
            }
            out
        });
        samples.sort_unstable();
        println!(
            "kafka_produce_latency_single_1KiB/{name}: p50 {:?} p99 {:?} (500 sends)",
            samples[samples.len() / 2],
            samples[samples.len() * 99 / 100]
        );
    }
}

fn consume(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("kafka_consume_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(CONSUME as u64));
    let fill = || async {
        let topic = topic(6).await;
        let p = KafkaClient::new(config(ProducerConfig::default()))
            .publisher()
            .expect("publisher");
        for chunk in events_1kib(&topic, CONSUME).chunks(BATCH) {
            p.publish(&topic, chunk).await.expect("fill");
        }
        topic
    };
    group.bench_function("adapter_next_batch_500_ack_each", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let topic = fill().await;
                let mut cfg = config(ProducerConfig::default());
                cfg.consumer = Some(ConsumerConfig {
                    group: format!("{topic}-g"),
                    topics: vec![topic.clone()],
                    dead_letter_topic: None,
                    commit_interval: Duration::from_secs(1),
                    start: StartFrom::Earliest,
                    max_held_back: 1_000,
                });
                let mut consumer = KafkaClient::new(cfg).consumer(None).expect("consumer");
                // The group join is not throughput: wait for the first message first.
                let first = consumer
                    .next_batch(1, Duration::from_secs(30))
                    .await
                    .expect("first");
                let start = Instant::now();
                let got = first.len();
                settle_all(first.into_iter().map(|d| (d.ticket, Settlement::Ack)))
                    .await
                    .expect("ack");
                if got < CONSUME {
                    consume_and_ack(&mut consumer, CONSUME - got, 500).await;
                }
                total += start.elapsed();
                consumer.close().await.expect("close");
            }
            total
        });
    });
    group.bench_function("raw_stream_consumer_commit_per_500", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let topic = fill().await;
                let consumer: StreamConsumer = ClientConfig::new()
                    .set("bootstrap.servers", brokers())
                    .set("group.id", format!("{topic}-raw"))
                    .set("enable.auto.commit", "false")
                    .set("auto.offset.reset", "earliest")
                    .create()
                    .expect("consumer");
                consumer.subscribe(&[topic.as_str()]).expect("subscribe");
                let first = consumer.recv().await.expect("first").detach();
                let start = Instant::now();
                let mut got = 1;
                drop(first);
                while got < CONSUME {
                    let m = consumer.recv().await.expect("recv");
                    // A raw client decodes the attributes too.
                    let headers: Vec<(&[u8], &[u8])> = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .filter_map(|h| h.value.map(|v| (h.key.as_bytes(), v)))
                                .collect()
                        })
                        .unwrap_or_default();
                    let _ = Binding::Kafka.decode(
                        headers,
                        None,
                        bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    );
                    got += 1;
                    if got % 500 == 0 {
                        consumer
                            .commit_message(&m, CommitMode::Async)
                            .expect("commit");
                    }
                }
                total += start.elapsed();
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, produce, consume);
criterion_main!(benches);
