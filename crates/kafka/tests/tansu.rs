//! The conformance suite and a rebalance test against a real Kafka-protocol
//! broker: Tansu (`cargo xtask services up kafka`; SERVICES.md). No Apache
//! Kafka broker can be installed on the project's machines.
//!
//! Tansu's known gaps, none of which these tests rely on: `read_committed`
//! sees aborted records, the high watermark is wrong (so `offsets_for_times`
//! and OffsetTail misbehave), partitions cannot be added, and the first group
//! join takes about 5 s. Broker-connection cuts are not run here: clients
//! reconnect to the advertised listener, which bypasses the fault proxy; the
//! mock-cluster tests take the broker down instead.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use causeway_core::memory::MemoryDedupStore;
use causeway_core::{
    Capabilities, Consumer, Event, Handled, Header, IdempotentHandler, InputFormat, Publisher,
    Result, Value,
};
use causeway_kafka::{KafkaClient, KafkaConfig};
use causeway_testkit::{BrokerHarness, Foreign, ForeignMessage};

const VAR: &str = "CAUSEWAY_KAFKA_BROKERS";
const DEFAULT: &str = "127.0.0.1:19092";

struct Tansu {
    brokers: String,
    client: KafkaClient,
}

impl Tansu {
    async fn new() -> Tansu {
        let brokers = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let probe = causeway_testkit::unique_name("probe");
        if let Err(e) = common::create_topics(&brokers, &[&probe], 1).await {
            causeway_testkit::env::unreachable("kafka", VAR, &brokers, e);
        }
        let mut config = common::config(&brokers);
        config.consumer = Some(common::consumer("template", &probe, true));
        Tansu {
            client: KafkaClient::new(config),
            brokers,
        }
    }

    fn config_for(&self, consumer: causeway_kafka::ConsumerConfig) -> KafkaConfig {
        let mut config = common::config(&self.brokers);
        config.consumer = Some(consumer);
        config
    }
}

#[async_trait]
impl BrokerHarness for Tansu {
    fn name(&self) -> String {
        "kafka-protocol (tansu)".into()
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        // No ack timeout; the wait to be sure nothing more arrives must
        // outlast a group join (about 5 s on Tansu).
        Duration::from_secs(8)
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        let topic = causeway_testkit::unique_name(scenario);
        let dlq = format!("{topic}.dlq");
        common::create_topics(&self.brokers, &[&topic, &dlq], 4)
            .await
            .map_err(|e| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e))?;
        Ok(topic)
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.client.publisher()?))
    }
    async fn consumer_reading(
        &self,
        destination: &str,
        group: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        let c = common::consumer(&format!("{destination}-{group}"), destination, true);
        Ok(Box::new(
            KafkaClient::new(self.config_for(c))
                .consumer(None)?
                .reading(format),
        ))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let dlq = format!("{destination}.dlq");
        let c = common::consumer(&format!("{dlq}-reader"), &dlq, false);
        Ok(Box::new(
            KafkaClient::new(self.config_for(c)).consumer(None)?,
        ))
    }
    fn foreign_keys(&self) -> bool {
        true
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        // rdkafka itself, as any producer: a key, a value, headers.
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let failed = |e: String| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e);
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .map_err(|e| failed(e.to_string()))?;
        let mut headers = OwnedHeaders::new();
        let content_type = message.content_type.map(|ct| ("content-type", ct));
        for (name, value) in message.headers.iter().chain(&content_type) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<str, [u8]>::to(destination)
            .payload(message.payload)
            .headers(headers);
        if let Some(key) = message.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| failed(e.to_string()))?;
        Ok(true)
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        // rdkafka itself, as any consumer: a group of its own, from the start.
        use rdkafka::consumer::{Consumer as _, StreamConsumer};
        use rdkafka::message::{Headers as _, Message as _};
        let failed = |e: String| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e);
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{destination}-foreign"))
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| failed(e.to_string()))?;
        consumer
            .subscribe(&[destination])
            .map_err(|e| failed(e.to_string()))?;
        let message = tokio::time::timeout(timeout, consumer.recv())
            .await
            .map_err(|_| failed(format!("nothing arrived in {timeout:?}")))?
            .map_err(|e| failed(e.to_string()))?;
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| {
                    Header::new(
                        h.key,
                        Value::Bytes(h.value.unwrap_or_default().to_vec().into()),
                    )
                })
                .collect()
        });
        Ok(Some(ForeignMessage {
            payload: message.payload().unwrap_or_default().to_vec(),
            key: message.key().map(<[u8]>::to_vec),
            headers,
            properties: Vec::new(),
        }))
    }
    fn foreign_type(&self, _written: &Value) -> &'static str {
        // Kafka headers are bytes.
        "bytes"
    }
    fn can_cut(&self) -> bool {
        false
    }
    async fn cut_connections(&self, _outage: Duration) -> bool {
        // See the module comment: the mock-cluster tests cover broker outages.
        false
    }
}

causeway_testkit::broker_conformance!(Tansu::new());

/// A record as any producer writes it with rdkafka: a binary key, header
/// values that are not text, an empty one, a name repeated. Read raw, the
/// key and every header come back byte for byte, in order, repeats kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_record_keeps_binary_headers_repeated_names_and_its_key() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let h = Tansu::new().await;
    let topic = h.destination("binary-headers").await.expect("topic");
    let sent: [(&str, &[u8]); 5] = [
        ("trace", b"\x00\x01\xfe\xff"),
        ("hop", b"eu-west"),
        ("hop", b"us-east"),
        ("empty", b""),
        ("amount", &1250i64.to_be_bytes()),
    ];
    let key: &[u8] = b"\xffacct\x007";
    let payload: &[u8] = b"\x1f\x8b binary body \xc3\x28";
    let mut headers = OwnedHeaders::new();
    for (name, value) in sent {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &h.brokers)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(&topic)
                .key(key)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
    let e = &causeway_testkit::receive_one_raw(&h, &topic, Duration::from_secs(30)).await;
    assert!(e.is_raw());
    assert_eq!(e.payload.as_ref(), payload);
    assert_eq!(e.native.key.as_deref(), Some(key), "the key byte for byte");
    let read: Vec<(&str, Vec<u8>)> = e
        .native
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.value.to_bytes().into_owned()))
        .collect();
    let sent: Vec<(&str, Vec<u8>)> = sent.iter().map(|(n, v)| (*n, v.to_vec())).collect();
    assert_eq!(read, sent, "headers in order, repeats kept, byte for byte");
}

/// Two members share 10,000 events on 6 partitions; one leaves mid-stream.
/// Nothing is lost; duplicates are at most what was in flight at the
/// revocation, and none survive the idempotent handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_when_a_member_leaves_mid_stream() {
    const TOTAL: usize = 10_000;
    let h = Tansu::new().await;
    let topic = causeway_testkit::unique_name("rebalance");
    common::create_topics(&h.brokers, &[&topic], 6)
        .await
        .expect("topic");
    let sent = causeway_testkit::events("rb", TOTAL, 100);
    let publisher = h.client.publisher().expect("publisher");
    for chunk in sent.chunks(1000) {
        assert!(
            publisher
                .publish(&topic, chunk)
                .await
                .expect("publish")
                .iter()
                .all(Result::is_ok)
        );
    }
    let group = format!("{topic}-group");
    let member = || {
        KafkaClient::new(h.config_for(common::consumer(&group, &topic, false)))
            .consumer(None)
            .expect("consumer")
    };
    let (mut a, mut b) = (member(), member());
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = {
        let runs = runs.clone();
        IdempotentHandler::new(MemoryDedupStore::new(), "rebalance", move |_e: Event| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let (mut seen, mut deliveries, mut suppressed) = (HashSet::new(), 0usize, 0usize);
    let mut a_left = false;
    let in_flight_at_revocation = 0; // every delivery is settled before the next poll
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < TOTAL && Instant::now() < deadline {
        let members: Vec<&mut causeway_kafka::KafkaConsumer> = if a_left {
            vec![&mut b]
        } else {
            vec![&mut a, &mut b]
        };
        for m in members {
            for d in m
                .next_batch(500, Duration::from_millis(300))
                .await
                .expect("next_batch")
            {
                deliveries += 1;
                seen.insert(d.event.id.clone());
                if handler.handle_delivery(d).await.expect("handle") != Handled::Ran(()) {
                    suppressed += 1;
                }
            }
        }
        if !a_left && seen.len() >= TOTAL / 2 {
            a.close().await.expect("leave");
            a_left = true;
        }
    }
    let duplicates = deliveries - seen.len();
    println!(
        "kafka (tansu) rebalance: {} of {TOTAL} events, {deliveries} deliveries, {duplicates} duplicates ({suppressed} suppressed by the handler)",
        seen.len()
    );
    assert!(a_left, "the first member never left");
    assert_eq!(seen.len(), TOTAL, "events lost in the rebalance");
    assert!(
        duplicates <= in_flight_at_revocation,
        "{duplicates} duplicates, more than were in flight"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        TOTAL,
        "the handler ran other than once per event"
    );
}

/// A route connects its sink when it starts: the Kafka publisher then asks
/// for its default topic's metadata, so librdkafka has its broker
/// connections and partition leaders before the first batch, and a cluster
/// that cannot be reached is reported at start. Before, `connect` did
/// nothing and answered `Ok` for a cluster that was not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reaches_the_cluster_before_the_first_publish() {
    let tansu = Tansu::new().await;
    let topic = causeway_testkit::unique_name("connect");
    common::create_topics(&tansu.brokers, &[&topic], 1)
        .await
        .expect("topic");
    let mut config = common::config(&tansu.brokers);
    config.producer.default_topic = Some(topic);
    let publisher = KafkaClient::new(config).publisher().expect("publisher");
    publisher.connect().await.expect("connect to tansu");

    // Port 1 on loopback: nothing listens there.
    let nowhere = KafkaClient::new(common::config("127.0.0.1:1"))
        .publisher()
        .expect("publisher");
    let refused = nowhere
        .connect()
        .await
        .expect_err("connect to a cluster that is not there");
    assert!(
        refused.to_string().contains("metadata"),
        "the error says what failed: {refused}"
    );
}
