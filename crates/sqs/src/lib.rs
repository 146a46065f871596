//! causeway-sqs: [`Publisher`] and [`Consumer`] on AWS SQS (aws-sdk-sqs),
//! standard and FIFO queues.
//!
//! - Publishing sends `SendMessageBatch` calls of up to 10 messages, many in
//!   flight. Each message's outcome is reported on its own; entries that
//!   failed temporarily are sent again (a few times, with backoff) before
//!   being reported. Size is checked before sending against SQS's own count
//!   (body plus attributes), so an oversize event fails alone, permanently.
//! - FIFO queues (names ending in `.fifo`): `MessageGroupId` is the event's
//!   key (per-key order; an event without a key gets its own group) and
//!   `MessageDeduplicationId` its id, so SQS drops re-sends within its
//!   5-minute window.
//! - Consuming runs several long-poll receives in flight, feeding a bounded
//!   buffer. `ack` deletes (acks waiting together go in one
//!   `DeleteMessageBatch`), `nack(delay)` changes the visibility to the
//!   delay, `reject` sends a copy with the reason to the dead-letter queue
//!   (configured, or the queue's own redrive target) and then deletes. A
//!   visibility extender keeps messages being processed from reappearing, up
//!   to `max_processing`; closing the consumer makes what it still holds
//!   visible again at once.
//!
//! Attributes follow causeway's SQS mapping (`docs/headers.md`).
//!
//! [`Publisher`]: causeway_core::Publisher
//! [`Consumer`]: causeway_core::Consumer

mod client;
mod config;
mod connection;
mod consumer;
mod error;
mod mapping;
mod publisher;

pub use client::SqsClient;
pub use config::{PublishConfig, QueueConfig, SqsConfig, StaticCredentials};
pub use consumer::SqsConsumer;
pub use error::Error;
pub use publisher::SqsPublisher;
