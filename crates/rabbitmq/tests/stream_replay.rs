//! Stream queues (`x-queue-type=stream`) for replay: a consumer reads from
//! the first message or from an offset, and every consumer sees every message.

use std::time::Duration;

use causeway_core::{Consumer, Publisher};
use causeway_rabbitmq::{
    ExchangeKind, PublishConfig, QueueConfig, QueueKind, RabbitClient, RabbitConfig, StreamOffset,
};
use causeway_testkit::{events, receive_and_ack};

fn config(queue: QueueConfig) -> RabbitConfig {
    RabbitConfig {
        url: causeway_testkit::env::endpoint(
            "CAUSEWAY_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
        ),
        exchange: String::new(),
        exchange_kind: ExchangeKind::Direct,
        publish: PublishConfig::default(),
        queue: Some(queue),
        max_message_bytes: 16 * 1024 * 1024,
        max_reconnect_delay: Duration::from_secs(1),
    }
}

fn stream(name: &str, offset: StreamOffset) -> QueueConfig {
    QueueConfig {
        name: name.to_owned(),
        kind: QueueKind::Stream,
        bindings: Vec::new(),
        prefetch: 100,
        dead_letter_queue: None,
        delivery_limit: None,
        stream_offset: Some(offset),
        delay_queue_idle: Duration::from_secs(60),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_queue_replays_from_first_and_from_an_offset() {
    let name = causeway_testkit::unique_name("replay");
    let client = match RabbitClient::connect(config(stream(&name, StreamOffset::First))).await {
        Ok(c) => c,
        Err(e) => causeway_testkit::env::unreachable(
            "rabbitmq",
            "CAUSEWAY_RABBITMQ_URL",
            "the RabbitMQ URL",
            e,
        ),
    };
    let caps = client.capabilities();
    assert!(
        !caps.consumer_groups && !caps.per_message_nack,
        "stream queues must not declare these"
    );
    let sent = events("replay", 20, 0);
    let out = client
        .publisher()
        .publish(&name, &sent)
        .await
        .expect("publish");
    assert!(out.iter().all(Result::is_ok));

    // Two consumers from the start both see everything: a stream is not a work queue.
    for _ in 0..2 {
        let mut c = client
            .consumer(Some(&stream(&name, StreamOffset::First)))
            .await
            .expect("consumer");
        let got = receive_and_ack(&mut c, 20, Duration::from_secs(20)).await;
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        let want: Vec<&str> = sent.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, want, "replay from first: all, in order");
        c.close().await.expect("close");
    }
    let mut c = client
        .consumer(Some(&stream(&name, StreamOffset::Offset(15))))
        .await
        .expect("consumer");
    let got = receive_and_ack(&mut c, 5, Duration::from_secs(20)).await;
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "replay-15",
            "replay-16",
            "replay-17",
            "replay-18",
            "replay-19"
        ]
    );
}
