//! SQS throughput for 1 KiB events against moto, an emulator: the adapter
//! next to a raw aws-sdk-sqs loop with the same batching (10 per call, 16
//! calls in flight to publish; 4 receives of 10 in flight, one delete batch
//! per receive to consume), the same attributes and the same base64 body
//! (the bench payload is binary), in the same run. moto's absolute numbers
//! mean little; the ratio is what this measures.
//!
//! Run with `cargo xtask bench sqs_throughput` (moto from `CAUSEWAY_SQS_ENDPOINT`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use base64::Engine;
use causeway_core::{Event, Publisher};
use causeway_sqs::{QueueConfig, SqsClient, SqsConfig, StaticCredentials};
use causeway_testkit::bench::{consume_and_ack, events_1kib, runtime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;

/// Events per measured iteration: moto slows as a queue deepens, so each
/// iteration publishes or drains only this many.
const PER_ITER: usize = 200;

fn config() -> SqsConfig {
    SqsConfig {
        endpoint: Some(causeway_testkit::env::endpoint(
            "CAUSEWAY_SQS_ENDPOINT",
            "http://127.0.0.1:4566",
        )),
        credentials: Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        create_queues: true,
        ..SqsConfig::new("us-east-1")
    }
}

fn attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("attribute")
}

/// What a hand-written client sends: the CloudEvents attributes and a base64 body.
fn raw_entry(i: usize, e: &Event) -> SendMessageBatchRequestEntry {
    let mut attributes = HashMap::new();
    attributes.insert("ce_specversion".to_owned(), attr("1.0"));
    attributes.insert("ce_id".to_owned(), attr(&e.id));
    attributes.insert("ce_source".to_owned(), attr(&e.source));
    attributes.insert("ce_type".to_owned(), attr(&e.kind));
    if let Some(t) = e.time {
        attributes.insert(
            "ce_time".to_owned(),
            attr(&causeway_core::binding::format_time(t)),
        );
    }
    attributes.insert("ce_bodyencoding".to_owned(), attr("base64"));
    SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(base64::engine::general_purpose::STANDARD.encode(&e.payload))
        .set_message_attributes(Some(attributes))
        .build()
        .expect("entry")
}

async fn raw_publish(sdk: &aws_sdk_sqs::Client, url: &str, events: &[Event]) {
    let calls: Vec<Vec<SendMessageBatchRequestEntry>> = events
        .chunks(10)
        .map(|c| c.iter().enumerate().map(|(i, e)| raw_entry(i, e)).collect())
        .collect();
    let results: Vec<_> = futures_util::stream::iter(calls)
        .map(|entries| {
            sdk.send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for r in results {
        assert!(r.expect("send batch").failed.is_empty());
    }
}

/// Each iteration fills the queue at `url` with `PER_ITER` events (untimed,
/// with the raw client), then times draining it.
fn timed_drains(
    rt: &tokio::runtime::Runtime,
    sdk: &aws_sdk_sqs::Client,
    url: &str,
    iters: u64,
    mut drain: impl FnMut(),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let prefix = causeway_testkit::unique_name("drain");
        rt.block_on(raw_publish(sdk, url, &events_1kib(&prefix, PER_ITER)));
        let start = Instant::now();
        drain();
        total += start.elapsed();
    }
    total
}

/// The raw consumer: four receives in flight per round, one delete batch
/// per receive, the body decoded as the adapter does.
async fn raw_drain(sdk: &aws_sdk_sqs::Client, url: &str) {
    let mut got = 0;
    while got < PER_ITER {
        let receives = (0..4).map(|_| {
            sdk.receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .send()
        });
        let deletes = futures_util::future::join_all(receives)
            .await
            .into_iter()
            .filter_map(|r| r.expect("receive").messages)
            .filter(|m| !m.is_empty())
            .map(|messages| {
                got += messages.len();
                for m in &messages {
                    let _ =
                        base64::engine::general_purpose::STANDARD.decode(m.body().unwrap_or(""));
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or(""))
                            .build()
                            .expect("entry")
                    })
                    .collect();
                sdk.delete_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
            });
        for d in futures_util::future::join_all(deletes).await {
            d.expect("delete");
        }
    }
}

fn publish(c: &mut Criterion) {
    let rt = runtime();
    let client = rt.block_on(SqsClient::connect(config())).expect("client");
    let publisher = client.publisher();
    let sdk = client.sdk().clone();
    // A fresh queue per iteration keeps moto shallow (it allows one purge a minute).
    let fresh = |prefix: &str| {
        let name = causeway_testkit::unique_name(prefix);
        let url = rt.block_on(client.queue_url(&name)).expect("queue");
        (events_1kib(&name, PER_ITER), name, url)
    };
    let mut group = c.benchmark_group("sqs_publish_1KiB_moto_emulator");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("adapter_publish_200", |b| {
        b.iter_batched(
            || fresh("benchpub-a"),
            |(events, queue, _)| {
                rt.block_on(async {
                    let out = publisher.publish(&queue, &events).await.expect("publish");
                    assert!(out.iter().all(Result::is_ok));
                })
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.bench_function("raw_send_message_batch_10x16_in_flight", |b| {
        b.iter_batched(
            || fresh("benchpub-r"),
            |(events, _, url)| rt.block_on(raw_publish(&sdk, &url, &events)),
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn consume(c: &mut Criterion) {
    let rt = runtime();
    let client = rt.block_on(SqsClient::connect(config())).expect("client");
    let sdk = client.sdk().clone();
    let queue = causeway_testkit::unique_name("benchsub");
    let url = rt.block_on(client.queue_url(&queue)).expect("queue");
    // The raw loop gets its own queue: the adapter's receivers must not take its messages.
    let raw_url = rt
        .block_on(client.queue_url(&format!("{queue}-raw")))
        .expect("queue");
    let queue_config = QueueConfig {
        long_poll: Duration::from_secs(1),
        ..QueueConfig::named(&queue)
    };
    let mut consumer = rt
        .block_on(client.consumer(Some(&queue_config)))
        .expect("consumer");
    let mut group = c.benchmark_group("sqs_consume_1KiB_moto_emulator");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("adapter_4_receives_in_flight_ack_batch", |b| {
        b.iter_custom(|iters| {
            timed_drains(&rt, &sdk, &url, iters, || {
                rt.block_on(async {
                    consume_and_ack(&mut consumer, PER_ITER, 100).await;
                })
            })
        });
    });
    rt.block_on(causeway_core::Consumer::close(&mut consumer))
        .expect("close");
    group.bench_function("raw_4_receives_in_flight_delete_batch", |b| {
        b.iter_custom(|iters| {
            timed_drains(&rt, &sdk, &raw_url, iters, || {
                rt.block_on(raw_drain(&sdk, &raw_url))
            })
        });
    });
    group.finish();
}

criterion_group!(benches, publish, consume);
criterion_main!(benches);
