//! Configuration, as it appears in the bridge's TOML under
//! `[endpoints.<name>.kafka]`. Unknown keys are errors.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A Kafka cluster endpoint. `Debug` hides secrets in `librdkafka`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: `host:port[,host:port…]`.
    pub brokers: String,
    /// TLS and SASL.
    #[serde(default)]
    pub security: Security,
    /// Producer settings.
    #[serde(default)]
    pub producer: ProducerConfig,
    /// Consumer settings; needed only where this endpoint is a source.
    #[serde(default)]
    pub consumer: Option<ConsumerConfig>,
    /// Any librdkafka property, applied last (it wins over everything above).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
    /// Largest event accepted, in bytes (the broker's `message.max.bytes`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    1_000_000
}

/// `security.protocol` and its settings. Secrets come in through `${ENV}`;
/// `Debug` hides the password.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user.
    #[serde(default)]
    pub username: Option<String>,
    /// SASL password.
    #[serde(default)]
    pub password: Option<String>,
    /// CA certificates (PEM) to trust for TLS.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let librdkafka: BTreeMap<&str, &str> = self
            .librdkafka
            .iter()
            .map(|(k, v)| {
                let v = if causeway_core::redact::is_secret_key(k) {
                    causeway_core::redact::REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("security", &self.security)
            .field("producer", &self.producer)
            .field("consumer", &self.consumer)
            .field("librdkafka", &librdkafka)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish()
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("protocol", &self.protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("username", &self.username)
            .field(
                "password",
                &self
                    .password
                    .as_ref()
                    .map(|_| causeway_core::redact::REDACTED),
            )
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

fn default_protocol() -> String {
    "plaintext".into()
}

impl Default for Security {
    fn default() -> Self {
        Security {
            protocol: default_protocol(),
            sasl_mechanism: None,
            username: None,
            password: None,
            ca_file: None,
        }
    }
}

/// Producer tuning. The defaults are the seed's settings for latency across
/// clouds: batches of 32 KiB lingering 20 ms, snappy, Nagle off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// Topic used when a route gives no destination.
    #[serde(default)]
    pub default_topic: Option<String>,
    /// `compression.type`: `snappy`, `zstd`, `lz4`, `gzip` or `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// `batch.size` in bytes.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// `linger.ms`.
    #[serde(default = "default_linger", with = "humantime_serde")]
    pub linger: Duration,
    /// `socket.nagle.disable`.
    #[serde(default = "yes")]
    pub nagle_disabled: bool,
    /// `socket.timeout.ms`.
    #[serde(default = "thirty_seconds", with = "causeway_core::duration::positive")]
    pub socket_timeout: Duration,
    /// `delivery.timeout.ms`: how long a message may take, retries included.
    #[serde(default = "thirty_seconds", with = "causeway_core::duration::positive")]
    pub delivery_timeout: Duration,
}

fn default_compression() -> String {
    "snappy".into()
}
fn default_batch_size() -> usize {
    32 * 1024
}
fn default_linger() -> Duration {
    Duration::from_millis(20)
}
fn yes() -> bool {
    true
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            default_topic: None,
            compression: default_compression(),
            batch_size: default_batch_size(),
            linger: default_linger(),
            nagle_disabled: true,
            socket_timeout: thirty_seconds(),
            delivery_timeout: thirty_seconds(),
        }
    }
}

/// A consumer group member.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// `group.id`: members share the partitions.
    pub group: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Where `reject` produces copies, with the reason and origin in headers.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// How often the acked watermark is committed.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Where a group without committed offsets starts.
    #[serde(default)]
    pub start: StartFrom,
    /// Messages of one partition that may wait behind nacked messages of
    /// their key; past it the partition is paused (its unread records stay
    /// in Kafka) until the held keys drain to half of it.
    #[serde(default = "default_max_held_back")]
    pub max_held_back: usize,
}

fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_max_held_back() -> usize {
    1_000
}

/// `auto.offset.reset`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message kept.
    #[default]
    Earliest,
    /// Only new messages.
    Latest,
}
