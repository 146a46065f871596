//! causeway-nats: [`Publisher`] and [`Consumer`] on NATS JetStream (async-nats).
//!
//! - Publishing is pipelined: every message of a batch is sent before any
//!   PubAck is awaited. The event id travels as `Nats-Msg-Id`, so the
//!   stream's duplicate window drops re-sends.
//! - Consuming uses a durable pull consumer with explicit acks, prefetching
//!   in the background; `nack(delay)` is a Nak with delay, `reject` publishes
//!   to the dead-letter subject with the reason and then terminates the message.
//! - The stream and consumer are created when missing and verified when
//!   present: an existing one whose settings conflict with the config is an error.
//!
//! Attributes follow the CloudEvents NATS binding (`docs/headers.md`).
//!
//! [`Publisher`]: causeway_core::Publisher
//! [`Consumer`]: causeway_core::Consumer

mod client;
mod config;
mod consumer;
mod error;
mod publisher;

pub use client::NatsClient;
pub use config::{Auth, ConsumerConfig, NatsConfig, PublishConfig, Start, StreamConfig, Tls};
pub use consumer::NatsConsumer;
pub use error::Error;
pub use publisher::NatsPublisher;
