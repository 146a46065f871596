//! Harnesses for causeway-core's in-memory backends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::memory::{ConsumerOptions, MemoryBroker, MemoryDedupStore, MemoryEventStore};
use causeway_core::{
    Capabilities, Consumer, DedupStore, EventStore, InputFormat, Publisher, Result, Value,
};

use crate::harness::{
    BrokerHarness, DedupStoreHarness, EventStoreHarness, Foreign, ForeignMessage,
};

/// Runs the broker scenarios on [`MemoryBroker`].
#[derive(Debug, Default)]
pub struct MemoryBrokerHarness {
    broker: MemoryBroker,
}

impl MemoryBrokerHarness {
    /// A harness over a new broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn options() -> ConsumerOptions {
        ConsumerOptions {
            ack_timeout: Duration::from_secs(1),
            ..ConsumerOptions::default()
        }
    }
}

#[async_trait]
impl BrokerHarness for MemoryBrokerHarness {
    fn name(&self) -> String {
        "memory".into()
    }

    fn capabilities(&self) -> Capabilities {
        self.broker.capabilities()
    }

    fn ack_timeout(&self) -> Duration {
        Self::options().ack_timeout
    }

    async fn destination(&self, scenario: &str) -> Result<String> {
        Ok(crate::unique_name(scenario))
    }

    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.broker.publisher()))
    }

    /// The in-process broker carries events as they are: there is nothing to read.
    async fn consumer_reading(
        &self,
        destination: &str,
        group: &str,
        _format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        Ok(Box::new(self.broker.consumer(
            destination,
            group,
            Self::options(),
        )))
    }

    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let dlq = format!("{destination}.dlq");
        Ok(Box::new(self.broker.consumer(
            &dlq,
            "dead-letters",
            Self::options(),
        )))
    }

    async fn publish_foreign(&self, _destination: &str, _message: Foreign<'_>) -> Result<bool> {
        // Every message in the in-memory broker is an event.
        Ok(false)
    }
    async fn read_foreign(
        &self,
        _destination: &str,
        _timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        Ok(None)
    }
    fn foreign_type(&self, written: &Value) -> &'static str {
        written.type_name()
    }
    fn can_cut(&self) -> bool {
        false
    }
    async fn cut_connections(&self, _outage: Duration) -> bool {
        false
    }
}

/// Runs the store scenarios on [`MemoryEventStore`].
#[derive(Debug, Default)]
pub struct MemoryEventStoreHarness;

#[async_trait]
impl EventStoreHarness for MemoryEventStoreHarness {
    fn name(&self) -> String {
        "memory".into()
    }

    async fn store(&self, dedup_window: Duration) -> Result<Arc<dyn EventStore>> {
        Ok(Arc::new(MemoryEventStore::new(dedup_window)))
    }
}

/// Runs the dedup scenarios on [`MemoryDedupStore`].
#[derive(Debug, Default)]
pub struct MemoryDedupStoreHarness;

#[async_trait]
impl DedupStoreHarness for MemoryDedupStoreHarness {
    fn name(&self) -> String {
        "memory".into()
    }

    async fn store(&self) -> Result<Arc<dyn DedupStore>> {
        Ok(Arc::new(MemoryDedupStore::new()))
    }
}
