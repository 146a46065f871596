//! The Service Bus REST **emulator** of causeway-testkit, checked through
//! the library the adapter uses (`azure_messaging_servicebus`): the
//! protocol behaviour the adapter relies on, as Microsoft documents it.

use std::time::Duration;

use azure_messaging_servicebus::service_bus::{QueueClient, SendMessageOptions};
use causeway_servicebus::{ServiceBusClient, ServiceBusConfig};
use causeway_testkit::servicebus_emulator::{
    QueueOptions, ROOT_POLICY, ServiceBusEmulator, TopicOptions,
};

const BATCH: &str = "application/vnd.microsoft.servicebus.json";

fn client(emulator: &ServiceBusEmulator) -> ServiceBusClient {
    let key = emulator.key(ROOT_POLICY).unwrap_or_default();
    let config =
        ServiceBusConfig::at_endpoint(emulator.namespace(), ROOT_POLICY, key, emulator.url());
    ServiceBusClient::connect(config).expect("client")
}

fn queue(emulator: &ServiceBusEmulator, name: &str) -> QueueClient {
    client(emulator).queue_client(name).expect("queue client")
}

async fn send_batch(q: &QueueClient, json: &str) {
    q.send_message(
        json,
        Some(SendMessageOptions {
            content_type: Some(BATCH.into()),
            ..SendMessageOptions::default()
        }),
    )
    .await
    .expect("send batch");
}

fn rfc1123(after: Duration) -> String {
    (chrono::Utc::now() + chrono::Duration::from_std(after).expect("duration"))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Status and body of one peek-lock, the lock kept.
async fn peek(q: &QueueClient, wait: u64) -> (u16, String) {
    let r = q
        .peek_lock_message2(Some(Duration::from_secs(wait)))
        .await
        .expect("peek-lock");
    (u16::from(*r.status()), r.body())
}

#[tokio::test]
async fn scheduled_messages_wait_for_their_time_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue("scheduled", QueueOptions::default());
    let q = queue(&emulator, "scheduled");
    send_batch(
        &q,
        &format!(
            r#"[{{"Body":"later","BrokerProperties":{{"ScheduledEnqueueTimeUtc":"{}"}}}},{{"Body":"now"}}]"#,
            rfc1123(Duration::from_secs(2))
        ),
    )
    .await;
    assert_eq!(peek(&q, 1).await, (201, "now".into()));
    assert_eq!(peek(&q, 1).await.0, 204, "a scheduled message came early");
    assert_eq!(peek(&q, 5).await, (201, "later".into()));
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
    for name in ["ttl", "ttl-dl"] {
        send_batch(
            &queue(&emulator, name),
            r#"[{"Body":"brief","BrokerProperties":{"TimeToLive":1}}]"#,
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(peek(&queue(&emulator, "ttl"), 0).await.0, 204);
    assert_eq!(emulator.message_count("ttl/$DeadLetterQueue"), Some(0));
    assert_eq!(emulator.message_count("ttl-dl"), Some(0));
    let dead = queue(&emulator, "ttl-dl/$DeadLetterQueue");
    let r = dead
        .peek_lock_message2(Some(Duration::from_secs(1)))
        .await
        .expect("peek dlq");
    assert_eq!(r.body(), "brief");
    let custom: Custom = r.custom_properties().expect("headers");
    assert_eq!(
        custom.get("deadletterreason").as_deref(),
        Some("\"TTLExpiredException\"")
    );
}

/// A response's headers, where custom properties arrive.
struct Custom(azure_core::headers::Headers);

impl From<azure_core::headers::Headers> for Custom {
    fn from(h: azure_core::headers::Headers) -> Self {
        Custom(h)
    }
}

impl Custom {
    fn get(&self, name: &'static str) -> Option<String> {
        self.0
            .get_optional_string(&azure_core::headers::HeaderName::from_static(name))
    }
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
    let q = queue(&emulator, "locks");
    send_batch(
        &q,
        r#"[{"Body":"m","BrokerProperties":{"MessageId":"m-1"}}]"#,
    )
    .await;
    let first = q.peek_lock_message2(None).await.expect("peek");
    let props = first.broker_properties().expect("BrokerProperties");
    assert_eq!(
        (props.delivery_count, props.message_id.as_str()),
        (1, "m-1")
    );
    assert_eq!(
        peek(&q, 0).await.0,
        204,
        "a locked message was delivered twice"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = q.peek_lock_message2(None).await.expect("peek");
    assert_eq!(second.broker_properties().expect("props").delivery_count, 2);
    // The first lock is lost: completing with it is refused (404).
    assert!(first.delete_message().await.is_err());
    second.renew_message_lock().await.expect("renew");
    second.unlock_message().await.expect("unlock");
    let third = q.peek_lock_message2(None).await.expect("peek");
    assert_eq!(third.broker_properties().expect("props").delivery_count, 3);
    // The third unlock uses up MaxDeliveryCount (3): into the subqueue.
    third.unlock_message().await.expect("unlock");
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
    let twice = r#"[{"Body":"a","BrokerProperties":{"MessageId":"x"}},{"Body":"b","BrokerProperties":{"MessageId":"x"}}]"#;
    send_batch(&queue(&emulator, "dedup"), twice).await;
    send_batch(&queue(&emulator, "plain"), twice).await;
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
    send_batch(&queue(&emulator, "payments"), r#"[{"Body":"p1"}]"#).await;
    for sub in ["ledger", "audit"] {
        let path = format!("payments/subscriptions/{sub}");
        assert_eq!(emulator.message_count(&path), Some(1), "{path}");
        let received = queue(&emulator, &path)
            .receive_and_delete_message()
            .await
            .expect("receive and delete");
        assert_eq!(received, "p1");
    }
    // A topic cannot be received from; a missing entity is 410.
    assert!(
        queue(&emulator, "payments")
            .peek_lock_message2(None)
            .await
            .is_ok_and(|r| u16::from(*r.status()) == 400)
    );
    assert!(
        queue(&emulator, "nowhere")
            .peek_lock_message2(None)
            .await
            .is_ok_and(|r| u16::from(*r.status()) == 410)
    );
}

#[tokio::test]
async fn a_single_message_carries_its_custom_properties_as_headers_emulator() {
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue("single", QueueOptions::default());
    let q = queue(&emulator, "single");
    let mut custom = std::collections::HashMap::new();
    custom.insert("Priority".to_owned(), "\"High\"".to_owned());
    q.send_message(
        "hello",
        Some(SendMessageOptions {
            content_type: Some("text/plain".into()),
            custom_properties: Some(custom),
            ..SendMessageOptions::default()
        }),
    )
    .await
    .expect("send");
    let r = q.peek_lock_message2(None).await.expect("peek");
    assert_eq!(r.body(), "hello");
    let custom: Custom = r.custom_properties().expect("headers");
    assert_eq!(custom.get("priority").as_deref(), Some("\"High\""));
    r.delete_message().await.expect("complete");
    assert_eq!(emulator.message_count("single"), Some(0));
}
