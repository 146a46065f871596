use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Stream as PullStream;
use async_nats::jetstream::message::{AckKind, PublishMessage};
use async_nats::jetstream::{self, Message};
use async_trait::async_trait;
use causeway_core::{
    Binding, Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, Event, Position,
    Result, Settlement, Settler, Ticket, dead_letter,
};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use crate::client::NatsClient;
use crate::config::ConsumerConfig;
use crate::error::Error;

/// A durable JetStream pull consumer. Messages are fetched ahead in the
/// background (`prefetch`); `next_batch` hands out what has arrived.
pub struct NatsConsumer {
    consumer: PullConsumer,
    messages: Option<PullStream>,
    settler: Arc<NatsSettler>,
    capabilities: Capabilities,
    prefetch: usize,
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
    in_flight: Mutex<HashMap<u64, Message>>,
    next_tag: AtomicU64,
    jetstream: jetstream::Context,
    dead_letter_subject: Option<String>,
}

impl NatsConsumer {
    pub(crate) async fn start(
        client: NatsClient,
        config: ConsumerConfig,
        consumer: PullConsumer,
    ) -> Result<Self, Error> {
        let capabilities = client.capabilities();
        let this = NatsConsumer {
            consumer,
            messages: None,
            settler: Arc::new(NatsSettler {
                in_flight: Mutex::default(),
                next_tag: AtomicU64::new(1),
                jetstream: client.jetstream.clone(),
                dead_letter_subject: config.dead_letter_subject.clone(),
            }),
            capabilities,
            prefetch: config.prefetch.max(1),
        };
        Ok(this)
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

    /// Turns a message into a delivery. An undecodable one is handed out
    /// too, as such (a stand-in event and the reason), for its consumer to
    /// dead-letter: settling it here would lose it where no dead-letter
    /// subject is configured.
    fn deliver(&self, message: Message) -> Delivery {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered.max(1) as u32),
            Err(_) => (0, 1),
        };
        let decoded = decode(&message);
        let stand_in = || {
            let headers: Vec<(&[u8], &[u8])> = message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(name, values)| {
                    values.iter().map(move |v| {
                        (AsRef::<str>::as_ref(name).as_bytes(), v.as_str().as_bytes())
                    })
                })
                .collect();
            dead_letter::stand_in(
                &format!("nats://{}", message.subject),
                &sequence.to_string(),
                message.payload.clone(),
                None,
                headers,
            )
        };
        let tag = self.settler.next_tag.fetch_add(1, AtomicOrdering::Relaxed);
        let ticket_of = |message: Message| {
            self.settler.lock().insert(tag, message);
            let settler: Arc<dyn Settler> = self.settler.clone();
            Ticket::new(
                settler,
                tag,
                Some(Position {
                    partition: 0,
                    offset: sequence,
                }),
                delivered,
            )
        };
        match decoded {
            Ok(event) => Delivery::new(event, ticket_of(message)),
            Err(e) => {
                tracing::warn!(sequence, error = %e, "a message that is not a CloudEvent: handed on as undecodable");
                let event = stand_in();
                Delivery::undecodable(event, ticket_of(message), e.to_string())
            }
        }
    }
}

fn decode(message: &Message) -> Result<Event> {
    let empty = HeaderMap::new();
    let headers = message.headers.as_ref().unwrap_or(&empty);
    Binding::Nats.decode(
        headers
            .iter()
            .filter_map(|(name, values)| values.first().map(|v| (name.as_ref(), v.as_ref()))),
        None,
        message.payload.clone(),
    )
}

impl NatsSettler {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Message>> {
        self.in_flight
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
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let messages: Vec<(Option<Message>, Settlement)> = {
            let mut in_flight = self.lock();
            items
                .into_iter()
                .map(|(tag, s)| (in_flight.remove(&tag), s))
                .collect()
        };
        let mut unknown = 0;
        for (message, settlement) in messages {
            let Some(message) = message else {
                unknown += 1;
                continue;
            };
            let acked = match settlement {
                Settlement::Ack => message.ack().await,
                Settlement::Nack { delay } => {
                    message
                        .ack_with(AckKind::Nak((!delay.is_zero()).then_some(delay)))
                        .await
                }
                Settlement::Reject { reason } => {
                    let (delivered, sequence) = message
                        .info()
                        .map_or((1, 0), |i| (i.delivered.max(1) as u32, i.stream_sequence));
                    self.reject(&message, &reason, delivered, sequence).await?;
                    Ok(())
                }
            };
            acked.map_err(|e| CoreError::from(Error::ack(e)))?;
        }
        causeway_core::unknown_tags(unknown)
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
            if self.messages.is_none() {
                self.messages = Some(self.open_stream(max).await?);
            }
            let Some(messages) = self.messages.as_mut() else {
                break;
            };
            // Wait for the first message; then take only what is already here.
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match messages.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(message)) => {
                    out.push(self.deliver(message));
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

    /// Hands back every unsettled and every prefetched message (Nak, no delay).
    async fn close(&mut self) -> Result<()> {
        let mut unsettled: Vec<Message> = self.settler.lock().drain().map(|(_, m)| m).collect();
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
