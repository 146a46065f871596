//! Configuration, as it appears in the bridge's TOML under
//! `[endpoints.<name>.rabbitmq]`. Unknown keys are errors.

use std::time::Duration;

use serde::Deserialize;

/// A RabbitMQ endpoint.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// `amqp://user:password@host:5672/vhost`, or `amqps://` for TLS (the
    /// built-in web PKI roots). Put the password in through `${ENV}`.
    pub url: String,
    /// Exchange events are published to; `""` is the default exchange, where
    /// the routing key names the queue.
    #[serde(default)]
    pub exchange: String,
    /// Type of `exchange`, declared durable when it is not the default one.
    #[serde(default)]
    pub exchange_kind: ExchangeKind,
    /// Publishing settings.
    #[serde(default)]
    pub publish: PublishConfig,
    /// The queue consumed from; needed only where this endpoint is a source.
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    /// Largest event accepted, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest wait between reconnection attempts.
    #[serde(
        default = "default_max_reconnect_delay",
        with = "causeway_core::duration::positive"
    )]
    pub max_reconnect_delay: Duration,
}

// The URL's password never reaches a log line or a panic.
impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("url", &causeway_core::redact::url(&self.url))
            .field("exchange", &self.exchange)
            .field("exchange_kind", &self.exchange_kind)
            .field("publish", &self.publish)
            .field("queue", &self.queue)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .finish()
    }
}

fn default_max_message_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_max_reconnect_delay() -> Duration {
    Duration::from_secs(5)
}

/// Exchange types.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeKind {
    /// Routing key equals binding key.
    Direct,
    /// Routing key matches a binding pattern (`transactions.#`).
    #[default]
    Topic,
    /// Every bound queue.
    Fanout,
}

/// Publishing settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Routing key used when a route gives no destination.
    #[serde(default)]
    pub default_routing_key: Option<String>,
    /// Most messages sent and not yet confirmed, per publisher.
    #[serde(default = "default_max_unconfirmed")]
    pub max_unconfirmed: usize,
    /// How long to wait for a publisher confirm before reporting the
    /// message failed (temporary): a confirm lost with its connection must
    /// not hang the publisher.
    #[serde(
        default = "default_confirm_timeout",
        with = "causeway_core::duration::positive"
    )]
    pub confirm_timeout: Duration,
}

fn default_confirm_timeout() -> Duration {
    Duration::from_secs(30)
}

// Across a 90 ms link a direct route's shards keep thousands of messages
// unconfirmed: 1,024 held NATS → RabbitMQ with 10,000 keys to 3.2k/s,
// 8,192 to 3.7k/s (docs/benchmarks.md).
fn default_max_unconfirmed() -> usize {
    8192
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            default_routing_key: None,
            max_unconfirmed: default_max_unconfirmed(),
            confirm_timeout: default_confirm_timeout(),
        }
    }
}

/// The queue a consumer reads, declared durable with its bindings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name; consumers of one queue share its messages.
    pub name: String,
    /// Classic, quorum or stream.
    #[serde(default)]
    pub kind: QueueKind,
    /// Routing keys (patterns for a topic exchange) binding it to `exchange`.
    #[serde(default)]
    pub bindings: Vec<String>,
    /// Unacked deliveries the broker sends ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Where `reject` (and the broker's own dead-lettering) sends messages;
    /// declared as a durable queue.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
    /// Quorum queues: deliveries before the broker dead-letters a message.
    #[serde(default)]
    pub delivery_limit: Option<u32>,
    /// Stream queues: where a new consumer starts.
    #[serde(default)]
    pub stream_offset: Option<StreamOffset>,
    /// How long an unused delay queue outlives its TTL before RabbitMQ
    /// deletes it (`x-expires` = TTL + this). A link redeclares a delay
    /// queue it publishes to well within this, so a message in one never
    /// outlives its queue.
    #[serde(
        default = "default_delay_queue_idle",
        with = "causeway_core::duration::positive"
    )]
    pub delay_queue_idle: Duration,
}

fn default_prefetch() -> u16 {
    256
}

fn default_delay_queue_idle() -> Duration {
    Duration::from_secs(60)
}

/// Queue types.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// A classic durable queue.
    #[default]
    Classic,
    /// A replicated quorum queue (counts deliveries, supports a delivery limit).
    Quorum,
    /// An append-only stream: consumers read from an offset, nothing is removed by acks.
    Stream,
}

/// Where a stream consumer starts (`x-stream-offset`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamOffset {
    /// The first message kept.
    First,
    /// The last chunk written.
    Last,
    /// Only new messages.
    Next,
    /// This offset.
    Offset(u64),
    /// Messages stored at or after this many seconds since the Unix epoch.
    Timestamp(i64),
}
