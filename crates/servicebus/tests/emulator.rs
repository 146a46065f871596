//! The Service Bus REST **emulator** of causeway-testkit, checked over raw
//! HTTP (`servicebus_emulator::Rest`): the protocol behaviour the adapter
//! relies on, as Microsoft documents it. Raw, because a client library may
//! not read what the service returns (`azure_messaging_servicebus` parses
//! `EnqueuedSequenceNumber` as 32 bits; real namespaces and the emulator
//! number past that).

use std::time::Duration;

use causeway_servicebus_emulator::{QueueOptions, Rest, ServiceBusEmulator, TopicOptions};

fn rfc1123(after: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(after).expect("duration"))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Status and body of one peek-lock, the lock kept.
async fn peek(rest: &Rest, entity: &str, wait: u64) -> (u16, String) {
    let r = rest.peek_lock(entity, wait).await;
    (r.status, r.text())
}

#[tokio::test]
async fn scheduled_messages_wait_for_their_time_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue("scheduled", QueueOptions::default());
    let rest = Rest::new(&emulator);
    let batch = format!(
        r#"[{{"Body":"later","BrokerProperties":{{"ScheduledEnqueueTimeUtc":"{}"}}}},{{"Body":"now"}}]"#,
        rfc1123(Duration::from_secs(2))
    );
    assert_eq!(rest.send_batch("scheduled", &batch).await, 201);
    assert_eq!(peek(&rest, "scheduled", 1).await, (201, "now".into()));
    assert_eq!(
        peek(&rest, "scheduled", 1).await.0,
        204,
        "a scheduled message came early"
    );
    assert_eq!(peek(&rest, "scheduled", 5).await, (201, "later".into()));
}

#[tokio::test]
async fn expired_messages_are_dropped_or_dead_lettered_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue("ttl", QueueOptions::default());
    emulator.create_queue(
        "ttl-dl",
        QueueOptions {
            dead_letter_on_expiration: true,
            ..QueueOptions::default()
        },
    );
    let rest = Rest::new(&emulator);
    for name in ["ttl", "ttl-dl"] {
        let brief = r#"[{"Body":"brief","BrokerProperties":{"TimeToLive":1}}]"#;
        assert_eq!(rest.send_batch(name, brief).await, 201);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(peek(&rest, "ttl", 0).await.0, 204);
    assert_eq!(emulator.message_count("ttl/$DeadLetterQueue"), Some(0));
    assert_eq!(emulator.message_count("ttl-dl"), Some(0));
    let r = rest.peek_lock("ttl-dl/$DeadLetterQueue", 1).await;
    assert_eq!(r.text(), "brief");
    assert_eq!(
        r.header("deadletterreason"),
        Some("\"TTLExpiredException\"")
    );
}

#[tokio::test]
async fn an_expired_lock_redelivers_with_the_delivery_count_and_settling_it_fails_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue(
        "locks",
        QueueOptions {
            lock_duration: Duration::from_secs(1),
            max_delivery_count: 3,
            ..QueueOptions::default()
        },
    );
    let rest = Rest::new(&emulator);
    let one = r#"[{"Body":"m","BrokerProperties":{"MessageId":"m-1"}}]"#;
    assert_eq!(rest.send_batch("locks", one).await, 201);
    let first = rest.peek_lock("locks", 0).await;
    assert_eq!(first.delivery_count(), Some(1));
    assert_eq!(first.broker["MessageId"], "m-1");
    // As on real namespaces, sequence numbers are past 32 bits.
    let sequence = first.broker["SequenceNumber"].as_i64().expect("a number");
    assert!(sequence > i64::from(u32::MAX), "{sequence}");
    assert_eq!(
        peek(&rest, "locks", 0).await.0,
        204,
        "a locked message was delivered twice"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = rest.peek_lock("locks", 0).await;
    assert_eq!(second.delivery_count(), Some(2));
    // The first lock is lost: completing with it is refused (404).
    assert_eq!(rest.complete(&first).await, 404);
    assert_eq!(rest.renew(&second).await, 200);
    assert_eq!(rest.unlock(&second).await, 200);
    let third = rest.peek_lock("locks", 0).await;
    assert_eq!(third.delivery_count(), Some(3));
    // The third unlock uses up MaxDeliveryCount (3): into the subqueue.
    assert_eq!(rest.unlock(&third).await, 200);
    assert_eq!(emulator.message_count("locks"), Some(0));
    assert_eq!(emulator.message_count("locks/$DeadLetterQueue"), Some(1));
}

#[tokio::test]
async fn duplicate_detection_drops_a_resent_message_id_within_the_window_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    let dedup = QueueOptions {
        duplicate_detection: Some(Duration::from_secs(60)),
        ..QueueOptions::default()
    };
    emulator.create_queue("dedup", dedup);
    emulator.create_queue("plain", QueueOptions::default());
    let rest = Rest::new(&emulator);
    let twice = r#"[{"Body":"a","BrokerProperties":{"MessageId":"x"}},{"Body":"b","BrokerProperties":{"MessageId":"x"}}]"#;
    assert_eq!(rest.send_batch("dedup", twice).await, 201);
    assert_eq!(rest.send_batch("plain", twice).await, 201);
    assert_eq!(emulator.message_count("dedup"), Some(1));
    assert_eq!(emulator.message_count("plain"), Some(2));
}

#[tokio::test]
async fn a_topic_copies_each_message_to_every_subscription_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_topic(
        "payments",
        TopicOptions::default(),
        &[
            ("ledger", QueueOptions::default()),
            ("audit", QueueOptions::default()),
        ],
    );
    let rest = Rest::new(&emulator);
    assert_eq!(rest.send_batch("payments", r#"[{"Body":"p1"}]"#).await, 201);
    for sub in ["ledger", "audit"] {
        let path = format!("payments/subscriptions/{sub}");
        assert_eq!(emulator.message_count(&path), Some(1), "{path}");
        let received = rest.receive_and_delete(&path, 0).await;
        assert_eq!((received.status, received.text()), (200, "p1".into()));
    }
    // A topic cannot be received from; a missing entity is 410.
    assert_eq!(rest.peek_lock("payments", 0).await.status, 400);
    assert_eq!(rest.peek_lock("nowhere", 0).await.status, 410);
}

#[tokio::test]
async fn a_single_message_carries_its_custom_properties_as_headers_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue("single", QueueOptions::default());
    let rest = Rest::new(&emulator);
    let headers = [("content-type", "text/plain"), ("Priority", "\"High\"")];
    assert_eq!(rest.send("single", b"hello".to_vec(), &headers).await, 201);
    let r = rest.peek_lock("single", 0).await;
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("priority"), Some("\"High\""));
    assert_eq!(rest.complete(&r).await, 200);
    assert_eq!(emulator.message_count("single"), Some(0));
}
