//! In-memory backends: a broker, an event store and a dedup store. They pass
//! the whole conformance suite, serve the bridge's unit tests and the
//! quickstart's `memory` endpoint. Nothing survives the process.

mod broker;
mod dedup_store;
mod event_store;

pub use broker::{ConsumerOptions, MemoryBroker, MemoryConsumer, MemoryPublisher};
pub use dedup_store::MemoryDedupStore;
pub use event_store::MemoryEventStore;
