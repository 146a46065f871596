use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Stream as PullStream;
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Message};
use async_trait::async_trait;
use causeway_core::{
    Binding, Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, Event, Header,
    Incoming, InputFormat, Position, Result, Settlement, Settler, Ticket, Value, dead_letter,
    message::{KEY_HEADER, property},
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::config::ConsumerConfig;
use crate::error::Error;

/// A durable JetStream pull consumer. Messages are fetched ahead in the
/// background (`prefetch`); `next_batch` hands out what has arrived.
///
/// While a delivery is held (handed out and not settled, for up to
/// `max_processing`) the server is told it is in progress, so a slow sink
/// does not make `ack_wait` redeliver it. A nack waits out its delay here
/// and is handed out again by this consumer: a server-side Nak would count
/// as a delivery, and `max_deliver` would end a message that was only busy.
pub struct NatsConsumer {
    consumer: PullConsumer,
    messages: Option<PullStream>,
    settler: Arc<NatsSettler>,
    capabilities: Capabilities,
    prefetch: usize,
    format: InputFormat,
}

impl std::fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// Settles deliveries: holds each delivered message under its tag until then.
struct NatsSettler {
    state: Mutex<State>,
    next_tag: AtomicU64,
    jetstream: jetstream::Context,
    dead_letter_subject: Option<String>,
    ack_wait: Duration,
    max_processing: Duration,
}

/// A message this consumer holds: handed out, or nacked and waiting.
struct Held {
    message: Message,
    sequence: u64,
    /// Deliveries so far, this one included (the server's count plus the
    /// nacks this consumer redelivered itself).
    attempt: u32,
    handed_out: Instant,
    /// When the server's `ack_wait` clock last started (delivery or an
    /// in-progress ack).
    refreshed: Instant,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<u64, Held>,
    /// Nacked, waiting for their delay: (due, tag) → message.
    retry: BTreeMap<(Instant, u64), Held>,
}

impl NatsConsumer {
    pub(crate) async fn start(
        jetstream: async_nats::jetstream::Context,
        config: ConsumerConfig,
        consumer: PullConsumer,
        capabilities: Capabilities,
    ) -> Result<Self, Error> {
        let settler = Arc::new(NatsSettler {
            state: Mutex::default(),
            next_tag: AtomicU64::new(1),
            jetstream,
            dead_letter_subject: config.dead_letter_subject.clone(),
            ack_wait: config.ack_wait,
            max_processing: config.max_processing,
        });
        tokio::spawn(progress_loop(Arc::downgrade(&settler)));
        Ok(NatsConsumer {
            consumer,
            messages: None,
            settler,
            capabilities,
            prefetch: config.prefetch.max(1),
            format: InputFormat::Auto,
        })
    }

    /// Reads messages as `format` says (CloudEvents, raw, or by their headers).
    #[must_use]
    pub fn reading(mut self, format: InputFormat) -> Self {
        self.format = format;
        self
    }

    /// Pulls at most `batch` messages ahead: prefetched messages count
    /// against `ack_wait`, so the buffer stays no bigger than what the
    /// caller takes at once (or `prefetch`, if smaller).
    async fn open_stream(&self, batch: usize) -> Result<PullStream, Error> {
        self.consumer
            .stream()
            .max_messages_per_batch(batch.clamp(1, self.prefetch))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| Error::request("pull", e))
    }

    /// Takes a message from the server in. An undecodable one is handed
    /// out too, as such (a stand-in event and the reason), for its consumer
    /// to dead-letter: settling it here would lose it where no dead-letter
    /// subject is configured.
    fn arrive(&self, message: Message) -> Delivery {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => (0, 1),
        };
        let now = Instant::now();
        self.deliver(Held {
            message,
            sequence,
            attempt: delivered,
            handed_out: now,
            refreshed: now,
        })
    }

    /// Decodes a held message and hands it out; one that is not a
    /// CloudEvent goes out as undecodable, with a stand-in event.
    fn deliver(&self, held: Held) -> Delivery {
        let message = &held.message;
        let reason = match decode(message, self.format) {
            Ok(event) => return Delivery::new(event, self.hand_out(held)),
            Err(e) => e.to_string(),
        };
        tracing::warn!(sequence = held.sequence, %reason, "a message that is not a CloudEvent: handed on as undecodable");
        let headers: Vec<(&[u8], &[u8])> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |v| (AsRef::<str>::as_ref(name).as_bytes(), v.as_str().as_bytes()))
            })
            .collect();
        let stand_in = dead_letter::stand_in(
            &format!("nats://{}", message.subject),
            &held.sequence.to_string(),
            message.payload.clone(),
            None,
            headers,
        );
        Delivery::undecodable(stand_in, self.hand_out(held), reason)
    }

    /// Keeps `held` under a fresh tag until its ticket settles it.
    fn hand_out(&self, held: Held) -> Ticket {
        let tag = self.settler.next_tag.fetch_add(1, AtomicOrdering::Relaxed);
        let ticket = Ticket::new(
            self.settler.clone(),
            tag,
            Some(Position {
                partition: 0,
                offset: held.sequence,
            }),
            held.attempt,
        );
        self.settler.lock().in_flight.insert(tag, held);
        ticket
    }

    /// Nacked messages whose delay is over, decoded again and handed out as
    /// their next attempt; and when the next one is due.
    fn take_due(&self, max: usize, out: &mut Vec<Delivery>) -> Option<Instant> {
        let now = Instant::now();
        let due: Vec<Held> = {
            let mut state = self.settler.lock();
            let mut due = Vec::new();
            while due.len() + out.len() < max {
                let Some(entry) = state.retry.first_entry() else {
                    break;
                };
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            due
        };
        for mut held in due {
            held.attempt += 1;
            held.handed_out = now;
            out.push(self.deliver(held));
        }
        self.settler.lock().retry.keys().next().map(|(due, _)| *due)
    }
}

/// Tells the server that held messages are still in progress, every quarter
/// of `ack_wait`, for those whose clock is half run: handed-out ones for at
/// most `max_processing` (a ticket dropped unsettled, a handler that hangs:
/// the server redelivers it one `ack_wait` later), nacked ones until due.
/// Ends with the settler.
async fn progress_loop(settler: Weak<NatsSettler>) {
    let Some(ack_wait) = settler.upgrade().map(|s| s.ack_wait) else {
        return;
    };
    let tick = (ack_wait / 4).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        let Some(settler) = settler.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<Message> = {
            let mut state = settler.lock();
            let State { in_flight, retry } = &mut *state;
            in_flight
                .values_mut()
                .filter(|h| h.handed_out + settler.max_processing > now)
                .chain(retry.values_mut())
                .filter(|h| h.refreshed + ack_wait / 2 <= now)
                .map(|h| {
                    h.refreshed = now;
                    h.message.clone()
                })
                .collect()
        };
        for m in due {
            // A message settled meanwhile answers nothing; the server ignores it.
            if let Err(e) = m.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %e, "in-progress ack failed");
            }
        }
    }
}

/// Reads a message as `format` says. Every value of a repeated header is
/// kept; `Nats-Msg-Id` is the message id property, not a header (the sink
/// writes its own).
fn decode(message: &Message, format: InputFormat) -> Result<Event> {
    let mut incoming = Incoming {
        origin: format!("nats://{}", message.subject),
        payload: message.payload.clone(),
        ..Incoming::default()
    };
    if let Ok(info) = message.info() {
        incoming.position = Some(format!("{}/{}", info.stream, info.stream_sequence));
    }
    for (name, values) in message.headers.iter().flat_map(|h| h.iter()) {
        let name: &str = name.as_ref();
        for value in values {
            if name.eq_ignore_ascii_case(KEY_HEADER) {
                incoming.key = Some(bytes::Bytes::from(value.as_str().to_owned()));
                continue;
            }
            let value = Value::Text(value.as_str().to_owned());
            if name.eq_ignore_ascii_case(async_nats::header::NATS_MESSAGE_ID.as_ref()) {
                incoming
                    .properties
                    .push(Header::new(property::MESSAGE_ID, value));
            } else {
                incoming.headers.push(Header::new(name, value));
            }
        }
    }
    Binding::Nats.read(format, incoming)
}

impl NatsSettler {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Publishes a copy to the dead-letter subject (awaiting its PubAck), then
    /// terminates the original. Without a dead-letter subject, only terminates.
    async fn reject(
        &self,
        message: &Message,
        reason: &str,
        attempts: u32,
        sequence: u64,
    ) -> Result<()> {
        match &self.dead_letter_subject {
            Some(subject) => {
                let mut headers = HeaderMap::new();
                if let Some(original) = &message.headers {
                    for (name, values) in original.iter() {
                        // The copy is a new message: the original's dedup id would drop it.
                        let name: &str = name.as_ref();
                        if name.eq_ignore_ascii_case(async_nats::header::NATS_MESSAGE_ID.as_ref()) {
                            continue;
                        }
                        for v in values {
                            headers.append(name, v.clone());
                        }
                    }
                }
                let origin = format!("nats://{}#{sequence}", message.subject);
                for (ext, value) in [
                    (dead_letter::REASON, reason.to_owned()),
                    (dead_letter::ATTEMPTS, attempts.to_string()),
                    (dead_letter::ORIGIN, origin),
                ] {
                    let (name, value) = Binding::Nats.extension_header(ext, &value);
                    headers.insert(name.as_str(), value.as_str());
                }
                let copy = PublishMessage::build()
                    .payload(message.payload.clone())
                    .headers(headers);
                self.jetstream
                    .send_publish(subject.clone(), copy)
                    .await
                    .map_err(Error::publish)?
                    .await
                    .map_err(Error::publish)?;
            }
            None => tracing::warn!(
                sequence,
                reason,
                "rejected with no dead_letter_subject configured: terminated"
            ),
        }
        message.ack_with(AckKind::Term).await.map_err(|e| {
            CoreError::new(ErrorKind::Connection, "terminate after dead-lettering")
                .with_source(Error::ack(e))
        })
    }
}

#[async_trait]
impl Settler for NatsSettler {
    /// Settles every item even after one fails; a failed ack or reject
    /// leaves its message to the server, which redelivers it after `ack_wait`.
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let mut taken = Vec::with_capacity(items.len());
        let mut unknown = 0;
        {
            let mut state = self.lock();
            let now = Instant::now();
            for (tag, settlement) in items {
                let Some(held) = state.in_flight.remove(&tag) else {
                    unknown += 1;
                    continue;
                };
                match settlement {
                    // Waits here, not on the server (see `NatsConsumer`).
                    Settlement::Nack { delay } => {
                        state.retry.insert((now + delay, tag), held);
                    }
                    other => taken.push((held, other)),
                }
            }
        }
        let mut first_error = None;
        for (held, settlement) in taken {
            let settled = match settlement {
                Settlement::Reject { reason } => {
                    self.reject(&held.message, &reason, held.attempt, held.sequence)
                        .await
                }
                _ => held
                    .message
                    .ack()
                    .await
                    .map_err(|e| CoreError::from(Error::ack(e))),
            };
            if let Err(e) = settled {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => causeway_core::unknown_tags(unknown),
        }
    }
}

#[async_trait]
impl Consumer for NatsConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            let next_retry = self.take_due(max, &mut out);
            if out.len() >= max {
                break;
            }
            if self.messages.is_none() {
                self.messages = Some(self.open_stream(max).await?);
            }
            let Some(messages) = self.messages.as_mut() else {
                break;
            };
            // Wait for the first message; then take only what is already here.
            let next = if out.is_empty() {
                let until = next_retry.map_or(deadline, |r| r.min(deadline));
                match tokio::time::timeout_at(until, messages.next()).await {
                    Ok(next) => next,
                    Err(_) if Instant::now() >= deadline => break,
                    Err(_) => continue, // a nacked message is due
                }
            } else {
                match messages.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(message)) => {
                    out.push(self.arrive(message));
                }
                Some(Err(e)) => {
                    // Missed heartbeats, a lost connection: pull anew.
                    tracing::warn!(error = %e, "JetStream pull failed; pulling again");
                    self.messages = None;
                    if out.is_empty() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    break;
                }
                None => {
                    self.messages = None;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Hands back every unsettled, nacked and prefetched message (Nak, no delay).
    async fn close(&mut self) -> Result<()> {
        let mut unsettled: Vec<Message> = {
            let mut state = self.settler.lock();
            let state = std::mem::take(&mut *state);
            state
                .in_flight
                .into_values()
                .chain(state.retry.into_values())
                .map(|h| h.message)
                .collect()
        };
        if let Some(mut messages) = self.messages.take() {
            while let Some(Some(Ok(m))) = messages.next().now_or_never() {
                unsettled.push(m);
            }
        }
        for m in unsettled {
            if let Err(e) = m.ack_with(AckKind::Nak(None)).await {
                tracing::warn!(error = %e, "could not hand a message back; it returns after ack_wait");
            }
        }
        Ok(())
    }
}
