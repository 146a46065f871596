//! librdkafka configuration from [`KafkaConfig`], and the entry point.

use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Connect, Consumer, Endpoint, InputFormat, Ordering, Publisher};
use rdkafka::ClientConfig;

use crate::config::{ConsumerConfig, KafkaConfig, StartFrom};
use crate::consumer::KafkaConsumer;
use crate::error::Error;
use crate::publisher::KafkaPublisher;

/// What the consumer fetches ahead of the application, in KiB
/// (`queued.max.messages.kbytes`; the `librdkafka` table can override it).
const PREFETCH_KIB: u32 = 16 * 1024;

/// How long `ping` waits for the cluster's metadata.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A Kafka endpoint: makes publishers and consumers.
#[derive(Clone, Debug)]
pub struct KafkaClient {
    pub(crate) config: KafkaConfig,
}

impl KafkaClient {
    /// An endpoint for `config`. Connections are made by the publishers and
    /// consumers it creates.
    pub fn new(config: KafkaConfig) -> Self {
        KafkaClient { config }
    }

    /// What this endpoint can do.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            per_message_nack: true,
            delayed_redelivery: true,
            // Unacked offsets hold the watermark; they come back after a
            // restart or rebalance, not after a timeout.
            ack_timeout_redelivery: false,
            dead_letter: self
                .config
                .consumer
                .as_ref()
                .is_some_and(|c| c.dead_letter_topic.is_some()),
            // The idempotent producer drops its own retries, not a second send of an id.
            native_dedup: false,
            ordering: Ordering::PerKey,
            // The idempotent producer writes a partition's messages in order
            // and retries them in order; a call stops enqueueing at the first
            // refusal. A message timing out (`delivery_timeout`) can still
            // leave a gap that later messages pass.
            ordered_publish: true,
            // One producer: librdkafka sends a partition's messages in the
            // order enqueued, across calls, and with idempotence (at most 5
            // requests in flight) retries them in that order. The same
            // `delivery_timeout` gap applies.
            pipelined_order: true,
            consumer_groups: true,
            durable_resume: true,
            max_message_bytes: self.config.max_message_bytes,
            max_batch: 10_000,
        }
    }

    /// An idempotent, `acks=all` producer with the configured tuning.
    pub fn publisher(&self) -> Result<KafkaPublisher, Error> {
        KafkaPublisher::new(
            self.producer_config(),
            self.capabilities(),
            self.config.producer.default_topic.clone(),
        )
    }

    /// A consumer as configured in `consumer` (the config's own when `None`).
    pub fn consumer(&self, consumer: Option<&ConsumerConfig>) -> Result<KafkaConsumer, Error> {
        let c = consumer
            .or(self.config.consumer.as_ref())
            .ok_or_else(|| Error::config("no [consumer] configured for this Kafka endpoint"))?
            .clone();
        let cc = self.consumer_config(&c);
        let dead_letters = match &c.dead_letter_topic {
            Some(topic) => Some((self.publisher()?, topic.clone())),
            None => None,
        };
        KafkaConsumer::new(cc, c, self.capabilities(), dead_letters)
    }

    fn consumer_config(&self, c: &ConsumerConfig) -> ClientConfig {
        let mut cc = self.common();
        cc.set("group.id", &c.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match c.start {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set("enable.partition.eof", "false")
            // librdkafka prefetches up to 64 MiB by default, most of a
            // process's memory at full speed; 16 MiB (16,000 events of
            // 1 KiB) still covers a 100 ms round trip at 100k events/s.
            .set("queued.max.messages.kbytes", PREFETCH_KIB.to_string());
        self.passthrough(&mut cc);
        cc
    }

    pub(crate) fn producer_config(&self) -> ClientConfig {
        let p = &self.config.producer;
        let mut cc = self.common();
        cc.set("acks", "all")
            .set("enable.idempotence", "true")
            .set("compression.type", &p.compression)
            .set("batch.size", p.batch_size.to_string())
            .set("linger.ms", p.linger.as_millis().to_string())
            .set(
                "delivery.timeout.ms",
                p.delivery_timeout.as_millis().to_string(),
            )
            .set(
                "message.max.bytes",
                (self.config.max_message_bytes + 64 * 1024).to_string(),
            );
        self.passthrough(&mut cc);
        cc
    }

    fn common(&self) -> ClientConfig {
        let mut cc = ClientConfig::new();
        let s = &self.config.security;
        cc.set("bootstrap.servers", &self.config.brokers)
            .set("client.id", "causeway")
            .set(
                "socket.nagle.disable",
                self.config.producer.nagle_disabled.to_string(),
            )
            .set(
                "socket.timeout.ms",
                self.config.producer.socket_timeout.as_millis().to_string(),
            )
            .set("security.protocol", &s.protocol);
        if let Some(m) = &s.sasl_mechanism {
            cc.set("sasl.mechanism", m);
        }
        if let Some(u) = &s.username {
            cc.set("sasl.username", u);
        }
        if let Some(p) = &s.password {
            cc.set("sasl.password", p);
        }
        if let Some(ca) = &s.ca_file {
            cc.set("ssl.ca.location", ca.to_string_lossy());
        }
        cc
    }

    /// librdkafka's own settings, last: they win over causeway's.
    fn passthrough(&self, cc: &mut ClientConfig) {
        for (k, v) in &self.config.librdkafka {
            cc.set(k, v);
        }
    }
}

#[async_trait]
impl Endpoint for KafkaClient {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        KafkaClient::capabilities(self)
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(KafkaClient::publisher(self)?))
    }

    async fn consumer(&self, format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(KafkaClient::consumer(self, None)?.reading(format)))
    }

    /// Creating a producer contacts no broker: this asks for metadata.
    async fn ping(&self) -> causeway_core::Result<()> {
        KafkaClient::publisher(self)?.ping(PING_TIMEOUT).await?;
        Ok(())
    }
}

#[async_trait]
impl Connect for KafkaClient {
    type Config = KafkaConfig;

    /// [`KafkaClient::new`]: nothing connects until a publisher or consumer does.
    async fn connect(config: KafkaConfig) -> causeway_core::Result<Self> {
        Ok(KafkaClient::new(config))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;

    fn client(librdkafka: &[(&str, &str)]) -> KafkaClient {
        KafkaClient {
            config: KafkaConfig {
                brokers: "127.0.0.1:9092".into(),
                security: Default::default(),
                producer: Default::default(),
                consumer: None,
                librdkafka: librdkafka
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
                max_message_bytes: 1024 * 1024,
            },
        }
    }

    fn consumer() -> ConsumerConfig {
        ConsumerConfig {
            group: "g".into(),
            topics: vec!["t".into()],
            dead_letter_topic: None,
            commit_interval: Duration::from_secs(1),
            start: StartFrom::default(),
            max_held_back: 1000,
        }
    }

    #[test]
    fn the_consumer_prefetches_16_mib_not_librdkafkas_64() {
        let cc = client(&[]).consumer_config(&consumer());
        assert_eq!(cc.get("queued.max.messages.kbytes"), Some("16384"));
    }

    #[test]
    fn the_librdkafka_table_overrides_the_prefetch_bound() {
        let cc = client(&[("queued.max.messages.kbytes", "65536")]).consumer_config(&consumer());
        assert_eq!(cc.get("queued.max.messages.kbytes"), Some("65536"));
    }
}
