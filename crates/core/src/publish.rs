//! Publishing: batches in, one durable confirmation per event out.

use std::future::Future;
use std::pin::Pin;
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

/// How a publish call keeps its order ([`Capabilities::ordered_publish`]):
/// once an event fails to go out for a reason other than its own fault,
/// nothing after it in the call goes, so no later event of its key passes it.
#[derive(Debug, Default)]
pub struct StopAtFailure(Option<crate::Error>);

impl StopAtFailure {
    /// Whether the next event may go: after a failure, a temporary error
    /// naming it.
    pub fn check(&self) -> Result<()> {
        self.0.as_ref().map_or(Ok(()), |e| Err(e.clone()))
    }

    /// Notes an event's failure to go out; the first one that is not the
    /// event's own fault stops the call.
    pub fn note(&mut self, e: &crate::Error) {
        if self.0.is_none() && !e.kind().is_event_fault() {
            self.0 = Some(crate::Error::temporary(
                crate::ErrorKind::Unavailable,
                format!("not sent: an earlier event of this call failed ({e})"),
            ));
        }
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

/// The broker's answers to a call handed over with [`Publisher::submit`],
/// still to come: what [`Publisher::publish`] would have returned.
pub type Confirms = Pin<Box<dyn Future<Output = Result<Vec<Result<Receipt>>>> + Send + 'static>>;

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

    /// Hands `events` over to be sent, in order, and returns their
    /// confirmations to be awaited: where the backend declares
    /// [`Capabilities::pipelined_order`] it returns once they are on its
    /// ordered lane, without a round trip, so that the next call can be
    /// submitted behind them while they are confirmed. The default
    /// publishes the whole call and returns its answer ready.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        let answer = self.publish(destination, events).await;
        Box::pin(std::future::ready(answer))
    }

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
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        (**self).submit(destination, events).await
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
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        (**self).submit(destination, events).await
    }
    async fn connect(&self) -> Result<()> {
        (**self).connect().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    #[test]
    fn a_call_stops_at_its_first_failure_not_at_an_events_own_fault() {
        let mut stop = StopAtFailure::default();
        stop.note(&Error::new(ErrorKind::TooLarge, "one event too big"));
        assert!(stop.check().is_ok(), "an event's own fault stops nothing");
        stop.note(&Error::new(ErrorKind::Connection, "channel closed"));
        stop.note(&Error::new(ErrorKind::Timeout, "later"));
        let held = stop.check().expect_err("stopped");
        assert!(held.is_temporary());
        assert!(held.to_string().contains("channel closed"), "{held}");
    }
}
