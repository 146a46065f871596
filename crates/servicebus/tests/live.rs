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

/// The queue of the live tests; fails saying what to set when the
/// namespace is not given.
fn live_queue() -> String {
    if std::env::var(CONNECTION).is_err() {
        panic!(
            "{CONNECTION} is not set. Set it to a namespace's connection string (and {QUEUE} \
             to an existing queue, default `causeway-live`) to run this against Azure."
        );
    }
    std::env::var(QUEUE).unwrap_or_else(|_| "causeway-live".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live Azure Service Bus: runs when CAUSEWAY_SERVICEBUS_CONNECTION_STRING is set"]
async fn live_round_trip_against_azure() {
    let queue = live_queue();
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
    let mut got = this_run(&mut consumer, &run, sent.len()).await;
    got.sort_by(|a, b| a.id.cmp(&b.id));
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, sent, "servicebus (Azure): events changed or missing");
    println!(
        "servicebus (Azure, live): {} events round-tripped",
        got.len()
    );
}

/// Receives and acks until `n` events of this run arrived or 90 s passed;
/// earlier runs may have left messages: they are acked and left out.
async fn this_run(consumer: &mut dyn causeway_core::Consumer, run: &str, n: usize) -> Vec<Event> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while got.len() < n && tokio::time::Instant::now() < deadline {
        got.extend(
            receive_and_ack(consumer, n, Duration::from_secs(10))
                .await
                .into_iter()
                .filter(|e| e.id.starts_with(run)),
        );
    }
    got
}

const SEND_ONLY: &str = "CAUSEWAY_SERVICEBUS_SEND_ONLY_CONNECTION_STRING";
const SESSION_QUEUE: &str = "CAUSEWAY_SERVICEBUS_SESSION_QUEUE";

/// Batching limits on the real service; with the optional variables, a
/// Send-only key (`check` and publish) and a session-enabled queue (keyless
/// events sent, `check` of a receive refused). What is not set is reported
/// NOT RUN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "live Azure Service Bus: runs when CAUSEWAY_SERVICEBUS_CONNECTION_STRING is set"]
async fn live_batching_send_only_key_and_sessions_against_azure() {
    let queue = live_queue();
    let with = |connection: &str| ServiceBusConfig {
        connection_string_env: Some(connection.into()),
        ..ServiceBusConfig::new("unused", "unused")
    };
    let sb = ServiceBusClient::connect(with(CONNECTION)).expect("client");
    let run = unique_name("live-limits");
    // Ten events of 150 KB: more than one Standard-tier request holds.
    let sent: Vec<Event> = (0..10)
        .map(|i| {
            Event::new(format!("{run}-{i}"), "causeway://live", "t")
                .with_payload("x".repeat(150_000).into_bytes())
        })
        .collect();
    let out = sb
        .publisher()
        .publish(&queue, &sent)
        .await
        .expect("publish");
    assert!(out.iter().all(Result::is_ok), "{out:?}");
    let mut consumer = sb
        .consumer(Some(&ReceiveConfig {
            long_poll: Duration::from_secs(5),
            ..ReceiveConfig::entity(&queue)
        }))
        .expect("consumer");
    let got = this_run(&mut consumer, &run, sent.len()).await.len();
    assert_eq!(got, sent.len(), "servicebus (Azure): large events missing");
    println!("servicebus (Azure, live): 10 events of 150 KB sent in requests under the limit");

    match std::env::var(SEND_ONLY) {
        Err(_) => {
            println!("servicebus (Azure, live): Send-only key NOT RUN ({SEND_ONLY} is not set)")
        }
        Ok(_) => {
            let mut config = with(SEND_ONLY);
            config.publish.default_entity = Some(queue.clone());
            let sender = ServiceBusClient::connect(config).expect("client");
            sender.ping().await.expect("check with a Send-only key");
            let out = sender
                .publisher()
                .publish("", &events(&format!("{run}-send-only"), 1, 0))
                .await
                .expect("publish");
            assert!(out.iter().all(Result::is_ok), "{out:?}");
            println!("servicebus (Azure, live): a Send-only key passed check and published");
        }
    }

    match std::env::var(SESSION_QUEUE) {
        Err(_) => {
            println!("servicebus (Azure, live): sessions NOT RUN ({SESSION_QUEUE} is not set)")
        }
        Ok(sessions) => {
            let mut config = with(CONNECTION);
            config.publish.key_property = causeway_servicebus::KeyProperty::SessionId;
            config.receive = Some(ReceiveConfig::entity(&sessions));
            let sb = ServiceBusClient::connect(config).expect("client");
            let mut keyless = events(&format!("{run}-session"), 3, 0);
            keyless[0].key = Some("account-1".into());
            let out = sb
                .publisher()
                .publish(&sessions, &keyless)
                .await
                .expect("publish");
            assert!(
                out.iter().all(Result::is_ok),
                "keyless events to a session queue: {out:?}"
            );
            let err = sb
                .ping()
                .await
                .expect_err("check passed on a session-enabled receive entity");
            println!(
                "servicebus (Azure, live): sessions: keyless events sent; check of a receive refused: {err}"
            );
        }
    }
}
