//! The conformance suite and the cut-mid-stream fault test against a real
//! NATS JetStream server (2.15; `cargo xtask services up nats`), reached
//! through the fault proxy so that connections can be cut.

use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Header, InputFormat, Publisher, Result, Value};
use causeway_nats::{ConsumerConfig, NatsClient, NatsConfig, PublishConfig, Start, StreamConfig};
use causeway_testkit::{BrokerHarness, FaultProxy, Foreign, ForeignMessage};

const VAR: &str = "CAUSEWAY_NATS_URL";
const DEFAULT: &str = "nats://127.0.0.1:14222";
const ACK_WAIT: Duration = Duration::from_secs(2);
/// Held deliveries are kept from redelivery this long, then `ACK_WAIT` runs.
const MAX_PROCESSING: Duration = Duration::from_secs(2);

/// One stream per test, capturing `<prefix>.>`; each scenario's subject is
/// `<prefix>.<scenario>` and its dead letters go to `<subject>.dlq`.
struct Nats {
    proxy: FaultProxy,
    prefix: String,
    client: NatsClient,
}

impl Nats {
    async fn new() -> Nats {
        Nats::with_publish(PublishConfig::default()).await
    }

    async fn with_publish(publish: PublishConfig) -> Nats {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let upstream = url
            .trim_start_matches("nats://")
            .parse()
            .unwrap_or_else(|e| panic!("{VAR}={url} is not nats://ip:port: {e}"));
        let proxy = FaultProxy::start(upstream).await.expect("fault proxy");
        let prefix = causeway_testkit::unique_name("t");
        let config = NatsConfig {
            url: format!("nats://{}", proxy.addr()),
            auth: Default::default(),
            tls: None,
            stream: StreamConfig {
                name: prefix.clone(),
                subjects: vec![format!("{prefix}.>")],
                duplicate_window: Duration::from_secs(120),
                max_age: Duration::from_secs(3600),
                memory_storage: false,
            },
            publish,
            consumer: Some(consumer_config("template", &prefix)),
        };
        let client = match tokio::time::timeout(
            Duration::from_secs(10),
            NatsClient::connect(config),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => causeway_testkit::env::unreachable("nats", VAR, &url, e),
            Err(_) => causeway_testkit::env::unreachable("nats", VAR, &url, "no answer in 10 s"),
        };
        Nats {
            proxy,
            prefix,
            client,
        }
    }
}

fn consumer_config(durable: &str, subject: &str) -> ConsumerConfig {
    ConsumerConfig {
        durable: durable.to_owned(),
        filter_subject: Some(subject.to_owned()),
        ack_wait: ACK_WAIT,
        max_deliver: -1,
        dead_letter_subject: Some(format!("{subject}.dlq")),
        start: Start::All,
        prefetch: 256,
        max_processing: MAX_PROCESSING,
    }
}

#[async_trait]
impl BrokerHarness for Nats {
    fn name(&self) -> String {
        "nats-jetstream".into()
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        MAX_PROCESSING + ACK_WAIT
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        Ok(format!("{}.{scenario}", self.prefix))
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.client.publisher()))
    }
    async fn consumer_reading(
        &self,
        destination: &str,
        group: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(
            self.client
                .consumer(Some(&consumer_config(group, destination)))
                .await?
                .reading(format),
        ))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let dlq = format!("{destination}.dlq");
        let mut config = consumer_config("dead-letters", &dlq);
        config.dead_letter_subject = None;
        Ok(Box::new(self.client.consumer(Some(&config)).await?))
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        // async-nats itself, as any JetStream producer.
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let failed = |e: String| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e);
        let client = async_nats::connect(url.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut headers = async_nats::HeaderMap::new();
        let content_type = message.content_type.map(|ct| ("content-type", ct));
        for (name, value) in message.headers.iter().chain(&content_type) {
            headers.append(*name, *value);
        }
        async_nats::jetstream::new(client)
            .publish_with_headers(
                destination.to_owned(),
                headers,
                message.payload.to_vec().into(),
            )
            .await
            .map_err(|e| failed(e.to_string()))?
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(true)
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        // async-nats itself: the subject's last message in the stream.
        use causeway_core::message::property;
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let failed = |e: String| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e);
        let client = async_nats::connect(url.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let stream = async_nats::jetstream::new(client)
            .get_stream(&self.prefix)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let message = loop {
            match stream.get_last_raw_message_by_subject(destination).await {
                Ok(message) => break message,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(failed(format!("nothing arrived in {timeout:?}: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (mut headers, mut properties) = (Vec::new(), Vec::new());
        for (name, values) in message.headers.iter() {
            let name: &str = name.as_ref();
            for value in values {
                let value: &str = value.as_ref();
                // The stream's dedup id is the broker's message id.
                if name == "Nats-Msg-Id" {
                    properties.push(Header::text(property::MESSAGE_ID, value));
                } else {
                    headers.push(Header::text(name, value));
                }
            }
        }
        Ok(Some(ForeignMessage {
            payload: message.payload.to_vec(),
            key: None,
            headers,
            properties,
        }))
    }
    fn foreign_type(&self, _written: &Value) -> &'static str {
        // NATS headers are text.
        "text"
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
    async fn delay_link(&self, one_way: Duration) -> bool {
        self.proxy.set_latency(one_way, one_way);
        true
    }
}

causeway_testkit::broker_conformance!(Nats::new());

/// Publishes `events` to `subject` with the adapter; all must be stored.
async fn publish(
    h: &Nats,
    subject: &str,
    events: &[causeway_core::Event],
) -> Vec<causeway_core::Receipt> {
    let outcomes = h
        .client
        .publisher()
        .publish(subject, events)
        .await
        .expect("publish");
    outcomes.into_iter().map(|o| o.expect("stored")).collect()
}

/// Ordered replay: a new consumer that starts at a stream sequence gets the
/// messages from there on, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_a_stream_sequence() {
    let h = Nats::new().await;
    let subject = h.destination("replay").await.expect("destination");
    let sent = causeway_testkit::events("replay", 20, 0);
    let sequences: Vec<u64> = publish(&h, &subject, &sent)
        .await
        .into_iter()
        .map(|r| r.position.expect("sequence").offset)
        .collect();
    let mut config = consumer_config("replayer", &subject);
    config.start = Start::Sequence(sequences[12]);
    let mut consumer = h.client.consumer(Some(&config)).await.expect("consumer");
    let got = causeway_testkit::receive_and_ack(&mut consumer, 8, Duration::from_secs(20)).await;
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    let want: Vec<&str> = sent[12..].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want);
}

/// A message as any JetStream producer writes it with async-nats: a header
/// repeated with several values, its own `Nats-Msg-Id`. Read raw, every
/// value of the repeated header comes back in order, the message id as
/// the `message_id` property, and the position is the stream sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_message_keeps_repeated_headers_and_its_message_id() {
    use causeway_core::message::property;
    let h = Nats::new().await;
    let subject = h.destination("multi-valued").await.expect("destination");
    let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
    let client = async_nats::connect(url.as_str()).await.expect("connect");
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in [
        ("hop", "eu-west"),
        ("hop", "us-east"),
        ("hop", "ap-south"),
        ("tenant", "eu"),
        ("Nats-Msg-Id", "m-1"),
    ] {
        headers.append(name, value);
    }
    let payload = br#"{"AccountId": 7}"#;
    async_nats::jetstream::new(client)
        .publish_with_headers(subject.clone(), headers, payload.to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let e = &causeway_testkit::receive_one_raw(&h, &subject, Duration::from_secs(20)).await;
    assert_eq!(e.payload.as_ref(), payload);
    let values = |name: &str| -> Vec<String> {
        e.native
            .headers
            .iter()
            .filter(|h| h.name == name)
            .filter_map(|h| h.value.to_text().map(|t| t.into_owned()))
            .collect()
    };
    assert_eq!(
        values("hop"),
        ["eu-west", "us-east", "ap-south"],
        "{:?}",
        e.native.headers
    );
    assert_eq!(values("tenant"), ["eu"]);
    assert_eq!(
        e.native
            .property(property::MESSAGE_ID)
            .and_then(|v| v.to_text())
            .as_deref(),
        Some("m-1")
    );
    assert!(
        e.native.position.as_deref().is_some_and(|p| p
            .rsplit('/')
            .next()
            .is_some_and(|n| n.parse::<u64>().is_ok())),
        "stream/sequence: {:?}",
        e.native.position
    );
}

/// Concurrent batches that together hold more PubAcks than async-nats's
/// default limit (5,000) all complete (they waited for each other forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_over_the_client_ack_limit_complete() {
    causeway_testkit::broker::concurrent_batches_complete(&Nats::new().await, 4, 3_000).await;
}

/// A delivery held (handed out, not settled) longer than `ack_wait` is not
/// redelivered while this consumer holds it: it sends in-progress acks.
/// Before the fix the server redelivered it every `ack_wait` behind a slow
/// sink: redelivery storms, and duplicates for whoever got the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delivery_is_not_redelivered_while_held() {
    let h = Nats::new().await;
    let subject = h.destination("held").await.expect("destination");
    publish(&h, &subject, &causeway_testkit::events("held", 1, 0)).await;
    let mut config = consumer_config("holder", &subject);
    config.max_processing = Duration::from_secs(60);
    let mut consumer = h.client.consumer(Some(&config)).await.expect("consumer");
    let held = causeway_testkit::collect(&mut consumer, 1, Duration::from_secs(10)).await;
    assert_eq!(held.len(), 1);
    // Three times `ack_wait`, polling all along.
    let again = causeway_testkit::collect(&mut consumer, 1, ACK_WAIT * 3).await;
    assert!(
        again.is_empty(),
        "redelivered while held: attempt {}",
        again[0].ticket.attempt()
    );
    for d in held {
        d.ack().await.expect("ack");
    }
}

/// Nacks do not use up `max_deliver`: a message nacked more times than it
/// allows comes back each time. Before the fix each nack was a Nak on the
/// server, which counts as a delivery: after `max_deliver` the server gave
/// the message up, and a message that was only ever busy was never delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacks_do_not_use_up_max_deliver() {
    let h = Nats::new().await;
    let subject = h.destination("busy").await.expect("destination");
    publish(&h, &subject, &causeway_testkit::events("busy", 1, 0)).await;
    let mut config = consumer_config("busy", &subject);
    config.max_deliver = 2;
    let mut consumer = h.client.consumer(Some(&config)).await.expect("consumer");
    for round in 1..=5 {
        let got = causeway_testkit::collect(&mut consumer, 1, Duration::from_secs(10)).await;
        let d = got
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("nack {round}: the message did not come back"));
        assert_eq!(d.ticket.attempt(), round, "attempt counts every delivery");
        if round < 5 {
            d.nack(Duration::from_millis(200)).await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
}

/// `publish.ack_timeout` bounds the wait for a PubAck: behind a link slower
/// than it, a publish fails with a temporary timeout instead of waiting.
/// Before the fix the setting was never read (async-nats waited 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_ack_timeout_bounds_the_wait_for_a_puback() {
    let h = Nats::with_publish(PublishConfig {
        default_subject: None,
        ack_timeout: Duration::from_millis(300),
    })
    .await;
    let subject = format!("{}.ack-timeout", h.prefix);
    let publisher = h.client.publisher();
    h.proxy
        .set_latency(Duration::from_millis(400), Duration::from_millis(400));
    let started = std::time::Instant::now();
    let outcome = publisher
        .publish(&subject, &causeway_testkit::events("slow", 1, 0))
        .await
        .map(|mut o| o.remove(0));
    let waited = started.elapsed();
    h.proxy.set_latency(Duration::ZERO, Duration::ZERO);
    let error = match outcome {
        Ok(Err(e)) | Err(e) => e,
        Ok(Ok(receipt)) => panic!(
            "published after {waited:?} behind an 800 ms round trip with a 300 ms ack timeout: {receipt:?}"
        ),
    };
    assert_eq!(
        error.kind(),
        causeway_core::ErrorKind::Timeout,
        "after {waited:?}: {error}"
    );
    assert!(error.is_temporary(), "{error}");
}
