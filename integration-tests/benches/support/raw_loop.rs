//! The baseline a user would write without causeway: the routes' client
//! libraries (async-nats, lapin, rdkafka) called directly, with the
//! adapters' settings (batches of up to 500 gathered for at most 20 ms, 8
//! batches in flight, JetStream and RabbitMQ publish confirms, Kafka
//! `acks=all` with idempotence, snappy, 32 KiB batches, linger 20 ms, Nagle
//! off), each source message acknowledged after the sink confirmed it.
//! Headers are copied, the CloudEvents attributes renamed for the sink's
//! binding, the key taken from the `partitionkey` attribute: nothing is
//! decoded or checked, the least a forwarder that keeps the events readable
//! does.
//!
//! One shortcut a careful forwarder would not take, which makes this
//! baseline faster, not slower: the Kafka source stores a confirmed
//! batch's offsets even while an earlier batch of the partition is still
//! at the sink (librdkafka's `store_offset`), so a crash could skip events.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, message::PublishMessage};
use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{Header as KafkaHeader, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::common::{Addrs, Broker, Kafka, Nats, Rabbit};

const BATCH: usize = 500;
const IN_FLIGHT: usize = 8;
const LINGER: Duration = Duration::from_millis(20);

/// Moves `events` messages from run `prefix`'s source to its sink at
/// `addrs` (a fault proxy's, for a round trip); returns
/// the time from the first message received to the last acknowledged, and
/// the CPU seconds (`cpu`) spent in it.
pub async fn run(
    addrs: &Addrs,
    from: Broker,
    to: Broker,
    prefix: &str,
    events: usize,
    cpu: fn() -> f64,
) -> (Duration, f64) {
    let sink = Sink::connect(addrs, to, to.destination(prefix, "out")).await;
    let mut source = Source::connect(addrs, from, prefix).await;
    let window = Arc::new(Semaphore::new(IN_FLIGHT));
    // Batch tasks are joined, not counted: a failed one fails the sample.
    let mut batches = JoinSet::new();
    let (mut received, mut start) = (0, None);
    while received < events {
        let permit = window.clone().acquire_owned().await.expect("window");
        let batch = source.next_batch().await;
        if batch.is_empty() {
            continue;
        }
        start.get_or_insert_with(|| (Instant::now(), cpu()));
        received += batch.len();
        let (sink, source) = (sink.clone(), source.acker());
        batches.spawn(async move {
            let (messages, acks): (Vec<Raw>, Vec<Ack>) = batch.into_iter().unzip();
            sink.publish(&messages).await;
            source.ack(acks).await;
            drop(permit);
        });
    }
    while let Some(done) = batches.join_next().await {
        done.expect("a batch failed");
    }
    let (t0, cpu0) = start.expect("received something");
    (t0.elapsed(), cpu() - cpu0)
}

/// A message as the loop carries it: its CloudEvents attributes apart
/// from its other headers, because each broker's binding names them its
/// own way (`ce-id`, `cloudEvents:id`, `ce_id`) and a forwarder that keeps
/// them readable renames them.
struct Raw {
    payload: Vec<u8>,
    attributes: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl Raw {
    fn new(payload: Vec<u8>, headers: impl Iterator<Item = (String, String)>) -> Raw {
        let mut raw = Raw {
            payload,
            attributes: Vec::new(),
            headers: Vec::new(),
        };
        for (name, value) in headers {
            let attribute = ["ce-", "ce_", "cloudEvents:"]
                .iter()
                .find_map(|p| name.strip_prefix(p));
            match attribute {
                Some(a) => raw.attributes.push((a.to_owned(), value)),
                None => raw.headers.push((name, value)),
            }
        }
        raw
    }

    /// Headers as a sink whose binding prefixes attributes with `prefix` names them.
    fn headers_for<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (String, &'a str)> {
        let attributes = self
            .attributes
            .iter()
            .map(move |(a, v)| (format!("{prefix}{a}"), v.as_str()));
        let headers = self.headers.iter().map(|(n, v)| (n.clone(), v.as_str()));
        attributes.chain(headers)
    }

    /// The event's id (JetStream's and RabbitMQ's message id).
    fn id(&self) -> Option<&str> {
        self.attribute("id")
    }

    /// The event's key (Kafka's message key).
    fn key(&self) -> Option<&str> {
        self.attribute("partitionkey")
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a source message is acknowledged once the sink confirmed it.
enum Ack {
    Nats(Box<jetstream::Message>),
    Rabbit(lapin::Acker),
    Kafka { partition: i32, offset: i64 },
}

enum Source {
    Nats(consumer::pull::Stream),
    /// The connection lives as long as the consumer.
    Rabbit {
        consumer: lapin::Consumer,
        _connection: Connection,
    },
    Kafka(Arc<StreamConsumer>, String),
}

/// What the batch tasks need of the source to acknowledge.
#[derive(Clone)]
enum Acker {
    Other,
    Kafka(Arc<StreamConsumer>, String),
}

impl Source {
    async fn connect(addrs: &Addrs, from: Broker, prefix: &str) -> Source {
        let name = from.destination(prefix, "in");
        match from {
            Nats => {
                let js = jetstream::new(nats_client(addrs).await);
                let stream = js.get_stream(format!("{prefix}-in")).await.expect("stream");
                let consumer = stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some("raw".into()),
                        filter_subject: name,
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_ack_pending: -1,
                        ..Default::default()
                    })
                    .await
                    .expect("consumer");
                let messages = consumer
                    .stream()
                    .max_messages_per_batch(BATCH)
                    .messages()
                    .await
                    .expect("messages");
                Source::Nats(messages)
            }
            Rabbit => {
                let conn = rabbit_connection(addrs).await;
                let channel = conn.create_channel().await.expect("channel");
                channel
                    // Room for every batch in flight: with one batch's worth
                    // the broker sent nothing while a batch was at the sink.
                    .basic_qos((IN_FLIGHT * BATCH) as u16, BasicQosOptions::default())
                    .await
                    .expect("qos");
                let consumer = channel
                    .basic_consume(
                        name.as_str().into(),
                        "raw".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                    .expect("consume");
                Source::Rabbit {
                    consumer,
                    _connection: conn,
                }
            }
            Kafka => {
                let consumer: StreamConsumer = kafka_config(addrs)
                    .set("group.id", format!("{prefix}-raw"))
                    .set("enable.auto.commit", "true")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.offset.reset", "earliest")
                    .set("session.timeout.ms", "6000")
                    .create()
                    .expect("kafka consumer");
                consumer.subscribe(&[&name]).expect("subscribe");
                Source::Kafka(Arc::new(consumer), name)
            }
            other => panic!("no raw loop from {other:?}"),
        }
    }

    /// Up to `BATCH` messages: the first that comes within a second (none
    /// otherwise), then what else comes within `LINGER`.
    async fn next_batch(&mut self) -> Vec<(Raw, Ack)> {
        let mut batch = Vec::with_capacity(BATCH);
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < BATCH {
            let Ok(message) = tokio::time::timeout_at(deadline, self.next()).await else {
                break;
            };
            if batch.is_empty() {
                deadline = tokio::time::Instant::now() + LINGER;
            }
            batch.push(message);
        }
        batch
    }

    async fn next(&mut self) -> (Raw, Ack) {
        match self {
            Source::Nats(messages) => {
                let m = messages.next().await.expect("end").expect("message");
                let headers = m
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .filter_map(|(n, v)| Some((n.to_string(), v.first()?.as_str().to_owned())));
                (
                    Raw::new(m.payload.to_vec(), headers),
                    Ack::Nats(Box::new(m)),
                )
            }
            Source::Rabbit { consumer, .. } => {
                let d = consumer.next().await.expect("end").expect("delivery");
                let headers = d
                    .properties
                    .headers()
                    .iter()
                    .flat_map(|t| t.inner().iter())
                    .filter_map(|(n, v)| match v {
                        AMQPValue::LongString(s) => Some((
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        _ => None,
                    });
                (Raw::new(d.data, headers), Ack::Rabbit(d.acker))
            }
            Source::Kafka(consumer, _) => {
                let m = consumer.recv().await.expect("kafka message");
                let headers = m
                    .headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .filter_map(|h| {
                        Some((h.key.to_owned(), String::from_utf8(h.value?.to_vec()).ok()?))
                    });
                let raw = Raw::new(m.payload().unwrap_or_default().to_vec(), headers);
                let ack = Ack::Kafka {
                    partition: m.partition(),
                    offset: m.offset(),
                };
                (raw, ack)
            }
        }
    }

    fn acker(&self) -> Acker {
        match self {
            Source::Kafka(consumer, topic) => Acker::Kafka(consumer.clone(), topic.clone()),
            _ => Acker::Other,
        }
    }
}

impl Acker {
    async fn ack(&self, acks: Vec<Ack>) {
        // A batch's RabbitMQ acks go out together: lapin's ack waits for its
        // frame to be written, and one at a time that bounded this loop
        // (RabbitMQ → Kafka 5.0k/s beside the bridge's 11.5k).
        let mut rabbit = Vec::new();
        for ack in acks {
            match (ack, self) {
                (Ack::Nats(m), _) => m.ack().await.expect("nats ack"),
                (Ack::Rabbit(a), _) => rabbit.push(a),
                (Ack::Kafka { partition, offset }, Acker::Kafka(consumer, topic)) => consumer
                    .store_offset(topic, partition, offset)
                    .expect("store offset"),
                (Ack::Kafka { .. }, Acker::Other) => unreachable!("a Kafka ack from Kafka only"),
            }
        }
        let acks = rabbit.iter().map(|a| a.ack(BasicAckOptions::default()));
        for acked in join_all(acks).await {
            acked.expect("rabbitmq ack");
        }
    }
}

#[derive(Clone)]
enum Sink {
    Nats(jetstream::Context, String),
    Rabbit(lapin::Channel, String),
    Kafka(FutureProducer, String),
}

impl Sink {
    async fn connect(addrs: &Addrs, to: Broker, destination: String) -> Sink {
        match to {
            Nats => Sink::Nats(jetstream::new(nats_client(addrs).await), destination),
            Rabbit => {
                let conn = rabbit_connection(addrs).await;
                let channel = conn.create_channel().await.expect("channel");
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .expect("confirms");
                // The channel lives as long as its connection: this one for the sample.
                std::mem::forget(conn);
                Sink::Rabbit(channel, destination)
            }
            Kafka => {
                let producer = kafka_config(addrs)
                    .set("acks", "all")
                    .set("enable.idempotence", "true")
                    .set("compression.type", "snappy")
                    .set("batch.size", "32768")
                    .set("linger.ms", "20")
                    .create()
                    .expect("kafka producer");
                Sink::Kafka(producer, destination)
            }
            other => panic!("no raw loop to {other:?}"),
        }
    }

    /// Publishes the batch and waits for every confirmation.
    async fn publish(&self, messages: &[Raw]) {
        match self {
            Sink::Nats(js, subject) => {
                let mut acks = Vec::with_capacity(messages.len());
                for m in messages {
                    let mut headers = HeaderMap::new();
                    for (n, v) in m.headers_for("ce-") {
                        headers.insert(n.as_str(), v);
                    }
                    if let Some(id) = m.id() {
                        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
                    }
                    let message = PublishMessage::build()
                        .payload(m.payload.clone().into())
                        .headers(headers);
                    let ack = js.send_publish(subject.clone(), message).await;
                    acks.push(ack.expect("publish").into_future());
                }
                for ack in join_all(acks).await {
                    ack.expect("jetstream ack");
                }
            }
            Sink::Rabbit(channel, queue) => {
                let mut confirms = Vec::with_capacity(messages.len());
                for m in messages {
                    let mut headers = FieldTable::default();
                    for (n, v) in m.headers_for("cloudEvents:") {
                        headers.insert(
                            ShortString::from(n),
                            AMQPValue::LongString(LongString::from(v)),
                        );
                    }
                    let mut properties = BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_headers(headers);
                    if let Some(id) = m.id() {
                        properties = properties.with_message_id(ShortString::from(id));
                    }
                    confirms.push(
                        channel
                            .basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                BasicPublishOptions::default(),
                                &m.payload,
                                properties,
                            )
                            .await
                            .expect("publish"),
                    );
                }
                for c in join_all(confirms).await {
                    assert!(c.expect("confirm").is_ack(), "rabbitmq nacked");
                }
            }
            Sink::Kafka(producer, topic) => {
                let sends = messages.iter().map(|m| {
                    let headers = m.headers_for("ce_").fold(OwnedHeaders::new(), |h, (n, v)| {
                        h.insert(KafkaHeader {
                            key: &n,
                            value: Some(v),
                        })
                    });
                    let mut record = FutureRecord::<str, Vec<u8>>::to(topic)
                        .payload(&m.payload)
                        .headers(headers);
                    if let Some(key) = m.key() {
                        record = record.key(key);
                    }
                    producer.send(record, Timeout::Never)
                });
                for sent in join_all(sends).await {
                    sent.expect("kafka delivery");
                }
            }
        }
    }
}

async fn nats_client(addrs: &Addrs) -> async_nats::Client {
    async_nats::connect(&addrs.nats)
        .await
        .expect("nats connect")
}

async fn rabbit_connection(addrs: &Addrs) -> Connection {
    Connection::connect(&addrs.rabbit, ConnectionProperties::default())
        .await
        .expect("rabbitmq connect")
}

fn kafka_config(addrs: &Addrs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &addrs.kafka)
        .set("socket.nagle.disable", "true");
    config
}
