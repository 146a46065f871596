//! causeway-kafka: [`Publisher`] and [`Consumer`] on Kafka (rdkafka / librdkafka).
//!
//! - The producer is idempotent with `acks=all`; a batch is enqueued whole,
//!   then its delivery reports are awaited together. The seed's latency
//!   tuning is the default ([`ProducerConfig`]) and any librdkafka key can
//!   be passed through.
//! - Kafka has no per-message ack. The consumer tracks delivered and acked
//!   offsets with core's [`AckTracker`] and commits only the contiguous
//!   acked watermark per partition: on an interval, when partitions are
//!   revoked (before giving them up), and on close. Out-of-order acks never
//!   commit past an unacked message.
//! - `nack(delay)` redelivers that message from memory after the delay;
//!   later messages of the same key wait behind it (per-key order), other
//!   keys go on. `reject` produces a copy with the reason to the dead-letter
//!   topic, then counts as acked.
//!
//! Attributes follow the CloudEvents Kafka binding (`docs/headers.md`).
//!
//! [`Publisher`]: causeway_core::Publisher
//! [`Consumer`]: causeway_core::Consumer
//! [`AckTracker`]: causeway_core::AckTracker

mod client;
mod config;
mod consumer;
mod error;
mod publisher;

pub use client::KafkaClient;
pub use config::{ConsumerConfig, KafkaConfig, ProducerConfig, Security, StartFrom};
pub use consumer::KafkaConsumer;
pub use error::Error;
pub use publisher::KafkaPublisher;
