//! causeway-rabbitmq: [`Publisher`] and [`Consumer`] on RabbitMQ (lapin, AMQP 0-9-1).
//!
//! - Publishing is persistent and confirmed: a batch is sent, then its
//!   publisher confirms are awaited together, with at most `max_unconfirmed`
//!   outstanding per publisher. Unroutable messages (`mandatory`) are errors.
//! - Consuming uses manual acks with a prefetch. Plain AMQP requeue has no
//!   delay, so `nack(delay)` publishes a copy to a delay queue whose TTL
//!   dead-letters it back, then acks the original; `reject` publishes a copy
//!   with the reason to the dead-letter queue, then acks the original.
//! - Topology (exchange, queue, bindings, dead-letter and delay queues) is
//!   declared from config on every (re)connect. A lost connection is
//!   reconnected with backoff; publishes it interrupts are reported failed
//!   (temporary), never dropped silently.
//!
//! Attributes follow the CloudEvents AMQP binding (`docs/headers.md`).
//!
//! [`Publisher`]: causeway_core::Publisher
//! [`Consumer`]: causeway_core::Consumer

mod client;
mod config;
mod consumer;
mod error;
mod lane;
mod mapping;
mod publisher;
mod session;

pub use client::RabbitClient;
pub use config::{ExchangeKind, PublishConfig, QueueConfig, QueueKind, RabbitConfig, StreamOffset};
pub use consumer::RabbitConsumer;
pub use error::Error;
pub use publisher::RabbitPublisher;
