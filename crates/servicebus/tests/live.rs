//! Against a real Azure Service Bus namespace. Ignored unless asked for:
//! `cargo xtask test` runs it when `CAUSEWAY_SERVICEBUS_CONNECTION_STRING`
//! is set and prints that it did not when it is not (nextest counts it as
//! skipped, never as passed). Run by hand without the variable, it fails
//! saying what to set. The queue is `CAUSEWAY_SERVICEBUS_QUEUE` (default `causeway-live`),
//! which must exist; its dead-letter entity `<queue>-dlq` is used if it
//! exists. Nothing here is emulated.

use std::time::Duration;

use causeway_core::{Event, Publisher};
use causeway_servicebus::{ReceiveConfig, ServiceBusClient, ServiceBusConfig};
use causeway_testkit::{events, receive_and_ack, unique_name};

const CONNECTION: &str = "CAUSEWAY_SERVICEBUS_CONNECTION_STRING";
const QUEUE: &str = "CAUSEWAY_SERVICEBUS_QUEUE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live Azure Service Bus: runs when CAUSEWAY_SERVICEBUS_CONNECTION_STRING is set"]
async fn live_round_trip_against_azure() {
    if std::env::var(CONNECTION).is_err() {
        panic!(
            "{CONNECTION} is not set. Set it to a namespace's connection string (and {QUEUE} \
             to an existing queue, default `causeway-live`) to run this against Azure."
        );
    }
    let queue = std::env::var(QUEUE).unwrap_or_else(|_| "causeway-live".into());
    let sb = ServiceBusClient::connect(ServiceBusConfig {
        connection_string_env: Some(CONNECTION.into()),
        receive: Some(ReceiveConfig {
            long_poll: Duration::from_secs(5),
            ..ReceiveConfig::entity(&queue)
        }),
        ..ServiceBusConfig::new("unused", "unused")
    })
    .expect("client");
    sb.ping().await.expect("ping: namespace, key and queue");
    let run = unique_name("live");
    let mut sent = events(&run, 3, 1);
    sent.push(
        Event::new(format!("{run}-binary"), "causeway://live", "t")
            .with_payload(vec![0xffu8, 0, 1, 2]),
    );
    let out = sb
        .publisher()
        .publish(&queue, &sent)
        .await
        .expect("publish");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let mut consumer = sb.consumer(None).expect("consumer");
    // Earlier runs may have left messages: keep only this run's.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < sent.len() && tokio::time::Instant::now() < deadline {
        got.extend(
            receive_and_ack(&mut consumer, sent.len(), Duration::from_secs(10))
                .await
                .into_iter()
                .filter(|e| e.id.starts_with(&run)),
        );
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, sent, "servicebus (Azure): events changed or missing");
    println!(
        "servicebus (Azure, live): {} events round-tripped",
        got.len()
    );
}
