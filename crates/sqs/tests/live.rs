//! Against real AWS SQS. Ignored unless asked for: `cargo xtask test` runs
//! it when `CAUSEWAY_SQS_LIVE_QUEUE` is set and prints that it did not when
//! it is not (nextest counts it as skipped, never as passed). Run by hand
//! without the variable, it fails saying what to set. Credentials and
//! region come from the standard AWS chain (`AWS_REGION`, the environment,
//! a profile, web identity, instance metadata). The queue must exist (a
//! standard queue; its `MaximumMessageSize` may be anything from 256 KiB);
//! `CAUSEWAY_SQS_LIVE_FIFO_QUEUE` adds a FIFO queue. Nothing here is emulated.

use std::time::Duration;

use causeway_core::{Consumer, ErrorKind, Event, Publisher};
use causeway_sqs::{QueueConfig, SqsClient, SqsConfig};
use causeway_testkit::{collect, unique_name};

const QUEUE: &str = "CAUSEWAY_SQS_LIVE_QUEUE";
const FIFO_QUEUE: &str = "CAUSEWAY_SQS_LIVE_FIFO_QUEUE";

async fn client() -> SqsClient {
    SqsClient::connect(SqsConfig {
        region: None,
        ..SqsConfig::new("unused")
    })
    .await
    .expect("sqs client from the AWS chain")
}

/// Receives until every id of this run has arrived (or a minute passed),
/// acking all; earlier runs' leftovers are acked and ignored.
async fn drain(sqs: &SqsClient, queue: &str, run: &str, n: usize) -> Vec<String> {
    let mut consumer = sqs
        .consumer(Some(&QueueConfig {
            long_poll: Duration::from_secs(5),
            ..QueueConfig::named(queue)
        }))
        .await
        .expect("consumer");
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < n && tokio::time::Instant::now() < deadline {
        for d in collect(&mut consumer, n, Duration::from_secs(10)).await {
            if d.event.id.starts_with(run) {
                ids.push(d.event.id.clone());
            }
            d.ack().await.expect("ack");
        }
    }
    let _ = consumer.close().await;
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live AWS SQS: runs when CAUSEWAY_SQS_LIVE_QUEUE is set"]
async fn live_batching_limits_and_attribute_rules_against_aws() {
    let Ok(queue) = std::env::var(QUEUE) else {
        panic!(
            "{QUEUE} is not set. Set it to an existing standard queue (credentials and region \
             from the AWS chain) to run this against AWS SQS."
        );
    };
    let sqs = client().await;
    let run = unique_name("live");
    // Ten events of 150 KB: one call of ten would be over the batch cap.
    let mut sent: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(format!("{run}-{i}"), "causeway://live", "t")
                .with_payload("x".repeat(150_000).into_bytes())
        })
        .collect();
    // Outside SQS's characters for attribute values: fails alone.
    sent.push(Event::new(format!("{run}-bad"), "causeway://live", "t").with_subject("\u{FFFF}"));
    let out = sqs
        .publisher()
        .publish(&queue, &sent)
        .await
        .expect("publish");
    for (e, o) in sent.iter().zip(&out) {
        if e.id.ends_with("-bad") {
            let err = o.as_ref().expect_err("an attribute SQS refuses was sent");
            assert_eq!(err.kind(), ErrorKind::InvalidEvent, "{err}");
        } else {
            assert!(o.is_ok(), "sqs (AWS, live): {}: {o:?}", e.id);
        }
    }
    let mut got = drain(&sqs, &queue, &run, 10).await;
    got.sort();
    assert_eq!(got.len(), 10, "sqs (AWS, live): {got:?}");
    println!(
        "sqs (AWS, live): 10 events of 150 KB sent in batches under the cap; the bad attribute failed alone"
    );
    let Ok(fifo) = std::env::var(FIFO_QUEUE) else {
        println!("sqs (AWS, live): FIFO order NOT RUN ({FIFO_QUEUE} is not set)");
        return;
    };
    let ordered: Vec<Event> = (0..20)
        .map(|i| {
            Event::new(format!("{run}-o{i:02}"), "causeway://live", "t")
                .with_key(format!("{run}-k"))
        })
        .collect();
    let out = sqs
        .publisher()
        .publish(&fifo, &ordered)
        .await
        .expect("publish");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let got = drain(&sqs, &fifo, &run, 20).await;
    let want: Vec<String> = ordered.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, want, "sqs (AWS, live): one group's order");
    println!("sqs (AWS, live): a FIFO group of 20 kept its order");
}
