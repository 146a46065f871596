//! Publishing: batches in, one durable confirmation per event out.

use std::sync::Arc;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::consume::Position;
use crate::error::Result;
use crate::event::Event;

/// The destination a publish goes to: `destination`, or where it is empty
/// (a route that names none), the endpoint's configured `default`; with
/// neither, a `Config` error naming the `setting` that would give one.
pub fn destination_or_default<'a>(
    destination: &'a str,
    default: Option<&'a str>,
    setting: &str,
) -> Result<&'a str> {
    match (destination, default) {
        ("", Some(default)) => Ok(default),
        ("", None) => Err(crate::Error::new(
            crate::ErrorKind::Config,
            format!("no destination given and no {setting}"),
        )),
        (destination, _) => Ok(destination),
    }
}

/// The outcomes of a publish that sends in parts: where a part never went
/// out (a bug, a loop cut short), the event failed — never a silent success.
pub fn unsent_failed(outcomes: Vec<Option<Result<Receipt>>>) -> Vec<Result<Receipt>> {
    outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| {
                Err(crate::Error::new(
                    crate::ErrorKind::Internal,
                    "message was never sent",
                ))
            })
        })
        .collect()
}

/// The broker's confirmation that one event is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    /// Where the broker put it, where it says (Kafka partition/offset, JetStream sequence).
    pub position: Option<Position>,
    /// The broker recognised the event id and dropped this copy (native dedup).
    pub duplicate: bool,
}

/// Sends events to a broker.
///
/// `publish` resolves only once the broker confirmed every event durably
/// (Kafka acks=all, RabbitMQ publisher confirms, JetStream PubAck, an SQS or
/// Service Bus response). The outer `Err` means nothing in the batch is known
/// to be stored; otherwise the result holds one entry per event, in order, so
/// partial failures are reported per message. Adapters carry the event id into
/// the broker's own dedup where it has one.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// What this publisher's backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Publishes `events` to `destination` (topic, queue, subject; an empty
    /// string means the adapter's configured default).
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>>;

    /// Opens now what the first publish would otherwise open (a
    /// connection, a channel), so that a route's first batch does not pay
    /// for it: across clouds a handshake is several round trips. A failure
    /// here is not final; `publish` opens again. The default has nothing
    /// to open.
    async fn connect(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Arc<P> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        (**self).publish(destination, events).await
    }
    async fn connect(&self) -> Result<()> {
        (**self).connect().await
    }
}

#[async_trait]
impl<P: Publisher + ?Sized> Publisher for Box<P> {
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        (**self).publish(destination, events).await
    }
    async fn connect(&self) -> Result<()> {
        (**self).connect().await
    }
}
