//! causeway-servicebus: [`Publisher`] and [`Consumer`] on Azure Service Bus
//! through its REST API (`azure_messaging_servicebus`), for queues and
//! topic subscriptions.
//!
//! - Publishing sends Send Message Batch requests (JSON, up to the size
//!   limit each), several in flight; `MessageId` is the event id, so
//!   entities with duplicate detection drop re-sends. A request is stored
//!   whole or not at all; temporary failures are sent again a few times.
//! - Consuming uses peek-lock only (receive-and-delete loses the broker
//!   properties and the message on a crash): several long-polling requests
//!   feed a bounded buffer. `ack` completes, `nack` unlocks (after holding
//!   the lock for the delay), `reject` sends a copy with the reason to the
//!   configured dead-letter entity and then completes. Locks are renewed
//!   while a message is buffered or processed, up to `max_processing`;
//!   closing unlocks what is still held.
//! - Service Bus does not say when duplicate detection dropped a message:
//!   receipts never report `duplicate`.
//! - Every request goes through a wrapper HTTP client that can send to an
//!   endpoint override (an emulator, a proxy) while signing for the
//!   namespace's own URL. The SAS key comes from the environment and is
//!   never logged.
//!
//! Properties follow causeway's Service Bus mapping (`docs/headers.md`).
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

pub use client::ServiceBusClient;
pub use config::{DEFAULT_KEY_ENV, KeyProperty, PublishConfig, ReceiveConfig, ServiceBusConfig};
pub use consumer::ServiceBusConsumer;
pub use error::Error;
pub use publisher::ServiceBusPublisher;
