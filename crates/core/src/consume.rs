//! Consuming: batches of deliveries, each settled exactly once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::error::Result;
use crate::event::Event;

/// A position in a partitioned log (Kafka partition/offset, JetStream
/// sequence with partition 0, RabbitMQ stream offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Partition, 0 where the backend has one log.
    pub partition: u32,
    /// Offset or sequence within the partition.
    pub offset: u64,
}

/// How a delivery ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Done: the broker may forget it.
    Ack,
    /// Redeliver after `delay` (as soon as possible where delays are unsupported).
    Nack {
        /// How long to wait before redelivering.
        delay: Duration,
    },
    /// Never redeliver: move to the dead-letter destination with `reason`.
    Reject {
        /// Why, recorded in the dead letter's headers.
        reason: String,
    },
}

/// The adapter side of settlement. Tags are chosen by the adapter (a delivery
/// tag, an index into its own table of receipt handles); settling in batches
/// lets it send one call for many messages.
#[async_trait]
pub trait Settler: Send + Sync {
    /// Settles each tag once. A tag settled twice or unknown is an error.
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()>;
}

/// For settlers: the error for `count` tags that were unknown (settled
/// already, or dropped with a lost connection), or `Ok` when there were none.
pub fn unknown_tags(count: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    Err(crate::Error::new(
        crate::ErrorKind::Conflict,
        format!("{count} deliveries were already settled"),
    ))
}

/// What a settler holds for each delivery handed out and not settled yet,
/// by tag: the tag counter, the table, and taking entries out to settle
/// them (counting tags no longer known). The lock recovers from poisoning:
/// an entry is inserted or removed whole, so a panic cannot leave half of one.
#[derive(Debug)]
pub struct Unsettled<T> {
    next_tag: std::sync::atomic::AtomicU64,
    held: std::sync::Mutex<std::collections::HashMap<u64, T>>,
}

impl<T> Default for Unsettled<T> {
    fn default() -> Self {
        Unsettled {
            next_tag: std::sync::atomic::AtomicU64::new(1),
            held: std::sync::Mutex::default(),
        }
    }
}

impl<T> Unsettled<T> {
    /// A tag no delivery of this table had.
    pub fn next_tag(&self) -> u64 {
        self.next_tag
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Holds `item` under a new tag, returned.
    pub fn insert(&self, item: T) -> u64 {
        let tag = self.next_tag();
        self.lock().insert(tag, item);
        tag
    }

    /// Applies `f` to the entries of `tags` still held (to note when each
    /// was handed out, say).
    pub fn update(&self, tags: impl IntoIterator<Item = u64>, mut f: impl FnMut(&mut T)) {
        let mut held = self.lock();
        for tag in tags {
            if let Some(item) = held.get_mut(&tag) {
                f(item);
            }
        }
    }

    /// The table, for what settling does not cover (renewals, close).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, T>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes out the entries of `items`' tags, each with what goes with it
    /// (a settlement), and how many tags were unknown (see [`unknown_tags`]).
    pub fn take<S>(&self, items: impl IntoIterator<Item = (u64, S)>) -> (Vec<(T, S)>, usize) {
        let mut held = self.lock();
        let mut taken = Vec::new();
        let mut unknown = 0;
        for (tag, s) in items {
            match held.remove(&tag) {
                Some(item) => taken.push((item, s)),
                None => unknown += 1,
            }
        }
        (taken, unknown)
    }
}

/// The right to settle one delivery, consumed on use.
///
/// Dropping a ticket unsettled is allowed: the broker redelivers the message
/// (after its ack timeout, or when the consumer closes).
#[must_use = "an unsettled delivery is redelivered later"]
pub struct Ticket {
    settler: Arc<dyn Settler>,
    tag: u64,
    position: Option<Position>,
    attempt: u32,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("tag", &self.tag)
            .field("position", &self.position)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// For adapters: a ticket settled through `settler` under `tag`.
    /// `attempt` counts deliveries of this message, starting at 1.
    pub fn new(
        settler: Arc<dyn Settler>,
        tag: u64,
        position: Option<Position>,
        attempt: u32,
    ) -> Self {
        Ticket {
            settler,
            tag,
            position,
            attempt,
        }
    }

    /// Where the message sits in its source, where the backend has positions.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// How many times this message has been delivered, this time included.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Settles this one delivery. To settle many, use [`settle_all`].
    pub async fn settle(self, settlement: Settlement) -> Result<()> {
        self.settler.settle(vec![(self.tag, settlement)]).await
    }

    /// Acknowledges: the effect is durable, the broker may forget the message.
    pub async fn ack(self) -> Result<()> {
        self.settle(Settlement::Ack).await
    }

    /// Asks for redelivery after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        self.settle(Settlement::Nack { delay }).await
    }

    /// Dead-letters the message with `reason`.
    pub async fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.settle(Settlement::Reject {
            reason: reason.into(),
        })
        .await
    }
}

/// Settles many tickets, one call per settler (consecutive tickets of one
/// consumer share a call). A failing call does not stop the rest: every
/// call is made, and the first error is returned.
pub async fn settle_all(items: impl IntoIterator<Item = (Ticket, Settlement)>) -> Result<()> {
    type Run = (Arc<dyn Settler>, Vec<(u64, Settlement)>);
    let mut runs: Vec<Run> = Vec::new();
    for (ticket, settlement) in items {
        match runs.last_mut() {
            Some((settler, batch)) if Arc::ptr_eq(settler, &ticket.settler) => {
                batch.push((ticket.tag, settlement));
            }
            _ => runs.push((ticket.settler, vec![(ticket.tag, settlement)])),
        }
    }
    let mut first_error = None;
    for (settler, batch) in runs {
        if let Err(e) = settler.settle(batch).await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// For adapters whose receives run in background tasks into a bounded
/// channel of (tag, delivery): up to `max` deliveries, waiting at most `wait`
/// for the first, with their tags (to note when each was handed out). An
/// empty batch after `wait` is normal; a closed channel is `Closed`.
pub async fn next_buffered(
    buffered: &mut tokio::sync::mpsc::Receiver<(u64, Delivery)>,
    max: usize,
    wait: Duration,
) -> Result<Vec<(u64, Delivery)>> {
    let first = match tokio::time::timeout(wait, buffered.recv()).await {
        Ok(Some(first)) => first,
        Ok(None) => {
            return Err(crate::Error::new(
                crate::ErrorKind::Closed,
                "the consumer is closed",
            ));
        }
        Err(_) => return Ok(Vec::new()),
    };
    let mut out = vec![first];
    while out.len() < max {
        match buffered.try_recv() {
            Ok(next) => out.push(next),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// Deliveries received ahead by background tasks (receives in flight) into
/// a bounded channel of (tag, delivery), for a consumer to hand out. The
/// tasks stop when it is stopped or dropped.
#[derive(Debug)]
pub struct Prefetch {
    buffered: tokio::sync::mpsc::Receiver<(u64, Delivery)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Prefetch {
    /// The receiving end of `tasks`' channel.
    pub fn new(
        buffered: tokio::sync::mpsc::Receiver<(u64, Delivery)>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) -> Self {
        Prefetch { buffered, tasks }
    }

    /// Up to `max` deliveries, with their tags ([`next_buffered`]).
    pub async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<(u64, Delivery)>> {
        next_buffered(&mut self.buffered, max, wait).await
    }

    /// Stops the tasks and drops what they received and nobody took: the
    /// caller releases those messages at the broker (they are still in its
    /// settler's table).
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.buffered.close();
        while self.buffered.try_recv().is_ok() {}
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One received event and the ticket to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// The event as the broker delivered it; for an undecodable message, a
    /// stand-in ([`crate::dead_letter::stand_in`]).
    pub event: Event,
    /// Settles the delivery; moved out when the event goes its own way.
    pub ticket: Ticket,
    /// Why the message could not be read as an event, when it could not.
    /// Such a delivery is never handled as an event: the bridge
    /// dead-letters it (in its store, and at the route's dead-letter
    /// destination), an application rejects it. Adapters hand these out
    /// rather than settle them on their own, so nothing vanishes unseen.
    pub undecodable: Option<String>,
}

impl Delivery {
    /// A delivery of a decoded event.
    pub fn new(event: Event, ticket: Ticket) -> Self {
        Delivery {
            event,
            ticket,
            undecodable: None,
        }
    }

    /// A delivery of a message that could not be decoded, for `reason`;
    /// `stand_in` carries what could be read of it.
    pub fn undecodable(stand_in: Event, ticket: Ticket, reason: impl Into<String>) -> Self {
        Delivery {
            event: stand_in,
            ticket,
            undecodable: Some(reason.into()),
        }
    }

    /// Acknowledges the delivery.
    pub async fn ack(self) -> Result<()> {
        self.ticket.ack().await
    }

    /// Asks for redelivery after `delay`.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        self.ticket.nack(delay).await
    }

    /// Dead-letters the delivery with `reason`.
    pub async fn reject(self, reason: impl Into<String>) -> Result<()> {
        self.ticket.reject(reason).await
    }
}

/// Receives events from a broker.
#[async_trait]
pub trait Consumer: Send {
    /// What this consumer's backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Up to `max` deliveries, waiting at most `wait` for the first one. An
    /// empty batch after `wait` is normal.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Stops consuming: commits what was acked and hands unsettled messages
    /// back for redelivery. Called on shutdown; dropping without it is a crash.
    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::{Error, ErrorKind};

    /// Records what it settles; fails every call when `fails`.
    struct Recording {
        settled: Mutex<Vec<u64>>,
        fails: bool,
    }

    #[async_trait]
    impl Settler for Recording {
        async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
            let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
            settled.extend(items.iter().map(|(tag, _)| *tag));
            if self.fails {
                return Err(Error::new(ErrorKind::Connection, "settling failed"));
            }
            Ok(())
        }
    }

    /// Before, the first failing settler's error returned at once and the
    /// tickets of the settlers after it were dropped unsettled.
    #[tokio::test]
    async fn a_failing_settler_does_not_stop_the_others() {
        let failing = Arc::new(Recording {
            settled: Mutex::default(),
            fails: true,
        });
        let working = Arc::new(Recording {
            settled: Mutex::default(),
            fails: false,
        });
        let ticket = |s: &Arc<Recording>, tag| {
            let settler: Arc<dyn Settler> = s.clone();
            (Ticket::new(settler, tag, None, 1), Settlement::Ack)
        };
        let result = settle_all([
            ticket(&failing, 1),
            ticket(&failing, 2),
            ticket(&working, 3),
        ])
        .await;
        assert!(result.is_err(), "the failure is returned");
        assert_eq!(
            *failing.settled.lock().unwrap_or_else(|e| e.into_inner()),
            [1, 2]
        );
        assert_eq!(
            *working.settled.lock().unwrap_or_else(|e| e.into_inner()),
            [3]
        );
    }
}
