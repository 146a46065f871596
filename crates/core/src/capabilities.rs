//! What a backend can do. The conformance suite reads these to choose the
//! scenarios that apply, instead of matching on adapter names; publishers
//! enforce the sizes ([`Capabilities::admit`]); `causeway check` prints
//! them. The bridge's pipeline reads one: [`Capabilities::ordered_publish`]
//! lets it send a key's events in one call instead of one per round trip,
//! and [`Capabilities::pipelined_order`] lets it keep several such calls at
//! the sink at once.

/// Ordering a backend guarantees to consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// No ordering promise.
    None,
    /// Events with the same key are delivered in publish order, including
    /// across redeliveries (a key waits while one of its events is in flight).
    PerKey,
}

/// The declared abilities of a publisher/consumer pair on one backend.
///
/// Construct with struct update syntax from [`Capabilities::default`], which
/// promises nothing beyond at-least-once delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// `nack` affects only that message (no head-of-line blocking of others).
    pub per_message_nack: bool,
    /// `nack(delay)` waits at least `delay` before redelivering.
    pub delayed_redelivery: bool,
    /// A delivery neither acked nor nacked is redelivered after the ack timeout.
    pub ack_timeout_redelivery: bool,
    /// `reject` moves the message to a dead-letter destination with the reason.
    pub dead_letter: bool,
    /// The broker drops a re-published event id within its dedup window.
    pub native_dedup: bool,
    /// The ordering promise.
    pub ordering: Ordering,
    /// A publish call writes its events for one destination in the order
    /// given, over one ordered lane (a channel, a connection, a partition's
    /// idempotent producer, a group's sequence of requests), and stops
    /// writing a key once one of its events fails. The bridge then sends a
    /// key's events together instead of one per round trip (across clouds,
    /// the difference between a key moving one event and a whole batch per
    /// round trip). Where a broker can still fail one message and take the
    /// next of its key (a nack), the adapter says so beside its
    /// declaration; the bridge counts each such event as an order break.
    pub ordered_publish: bool,
    /// Calls handed over with [`crate::Publisher::submit`] one after
    /// another, each before the last is confirmed, reach the broker in the
    /// order they were submitted (one ordered lane: a channel, a
    /// connection, an idempotent producer), so a key's events in several
    /// calls at once keep their order. The bridge then keeps several calls
    /// of a key at the sink instead of waiting a round trip for each. As
    /// with `ordered_publish`, where the broker can fail one call's event
    /// and take a later call's event of its key, the adapter says so beside
    /// its declaration and the bridge counts each such event as an order
    /// break.
    pub pipelined_order: bool,
    /// Consumers in one group share the work, each message to one member.
    pub consumer_groups: bool,
    /// A consumer that restarts with the same group resumes where the group left off.
    pub durable_resume: bool,
    /// Largest event ([`crate::Event::encoded_len`]) the backend accepts.
    pub max_message_bytes: usize,
    /// Largest number of events worth sending in one publish call.
    pub max_batch: usize,
}

impl Capabilities {
    /// Whether a publisher of this backend may send `event`: valid, and no
    /// larger than `max_message_bytes`. Every adapter calls this before
    /// sending, so a bad event fails alone with a permanent error.
    pub fn admit(&self, event: &crate::Event) -> crate::Result<()> {
        event.validate()?;
        let len = event.encoded_len();
        if len > self.max_message_bytes {
            return Err(crate::Error::new(
                crate::ErrorKind::TooLarge,
                format!(
                    "event `{}` is {len} bytes; the limit is {}",
                    event.id, self.max_message_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            per_message_nack: false,
            delayed_redelivery: false,
            ack_timeout_redelivery: false,
            dead_letter: false,
            native_dedup: false,
            ordering: Ordering::None,
            ordered_publish: false,
            pipelined_order: false,
            consumer_groups: false,
            durable_resume: false,
            max_message_bytes: 256 * 1024,
            max_batch: 100,
        }
    }
}
