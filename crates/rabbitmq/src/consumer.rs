use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use causeway_core::{
    Binding, Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, InputFormat, Result,
    Settlement, Settler, Ticket, Unsettled, dead_letter,
};
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Confirmation};
use tokio::time::Instant;

use crate::config::{QueueConfig, QueueKind, StreamOffset};
use crate::error::{Error, bounded};
use crate::mapping::{ATTEMPT_HEADER, attempt, copy_with, decode};
use crate::session::{Link, Session, delay_bucket};

/// Consumes one queue with manual acks. Reconnects with backoff when the
/// connection is lost; deliveries of the lost channel come back from the
/// broker (they were never acked), and settling them reports that.
pub struct RabbitConsumer {
    session: Arc<Session>,
    consuming: Option<(Arc<Link>, lapin::Consumer)>,
    settler: Arc<RabbitSettler>,
    capabilities: Capabilities,
    backoff: Duration,
    format: InputFormat,
}

impl std::fmt::Debug for RabbitConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConsumer")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// What settling a delivery needs: its acker, and the message itself for
/// the copies that `nack(delay)` and `reject` publish.
struct InFlight {
    acker: Acker,
    link: Arc<Link>,
    properties: BasicProperties,
    payload: Bytes,
    attempt: u32,
    origin: String,
}

struct RabbitSettler {
    session: Arc<Session>,
    in_flight: Unsettled<InFlight>,
    queue: QueueConfig,
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);

impl RabbitConsumer {
    pub(crate) async fn start(
        session: Session,
        capabilities: Capabilities,
    ) -> Result<RabbitConsumer, Error> {
        let queue = session
            .queue
            .clone()
            .ok_or_else(|| Error::config("consumer without a queue"))?;
        let session = Arc::new(session);
        let mut this = RabbitConsumer {
            session: session.clone(),
            consuming: None,
            settler: Arc::new(RabbitSettler {
                session,
                in_flight: Unsettled::default(),
                queue,
            }),
            capabilities,
            backoff: MIN_BACKOFF,
            format: InputFormat::Auto,
        };
        // Fail now on a bad endpoint or topology rather than on the first poll.
        this.consume().await?;
        Ok(this)
    }

    /// Reads deliveries as `format` says (CloudEvents, raw, or by their headers).
    #[must_use]
    pub fn reading(mut self, format: InputFormat) -> Self {
        self.format = format;
        self
    }

    /// Starts consuming on the live link (reconnecting if needed).
    async fn consume(&mut self) -> Result<(), Error> {
        let link = self.session.link().await?;
        let q = &self.settler.queue;
        bounded(
            "qos",
            link.channel
                .basic_qos(q.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut args = FieldTable::default();
        if q.kind == QueueKind::Stream {
            let offset = match q.stream_offset.as_ref().unwrap_or(&StreamOffset::Next) {
                StreamOffset::First => AMQPValue::LongString(LongString::from("first")),
                StreamOffset::Last => AMQPValue::LongString(LongString::from("last")),
                StreamOffset::Next => AMQPValue::LongString(LongString::from("next")),
                StreamOffset::Offset(n) => AMQPValue::LongLongInt(*n as i64),
                StreamOffset::Timestamp(t) => AMQPValue::Timestamp(*t as u64),
            };
            args.insert("x-stream-offset".into(), offset);
        }
        let consumer = bounded(
            "consume",
            link.channel.basic_consume(
                q.name.as_str().into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                args,
            ),
        )
        .await?;
        self.consuming = Some((link, consumer));
        Ok(())
    }

    /// Turns a delivery into one of ours. One that is not a CloudEvent is
    /// handed out too, as undecodable with a stand-in event, for its
    /// consumer to dead-letter.
    fn deliver(&self, link: &Arc<Link>, d: lapin::message::Delivery) -> Delivery {
        let payload = Bytes::from(d.data);
        let attempt = attempt(&d.properties, d.redelivered);
        let origin = format!("rabbitmq://{}#{}", self.settler.queue.name, d.delivery_tag);
        let stand_in = |reason: &CoreError| {
            tracing::warn!(error = %reason, queue = %self.settler.queue.name, "a message that is not a CloudEvent: handed on as undecodable");
            let headers: Vec<(String, Vec<u8>)> = d
                .properties
                .headers()
                .iter()
                .flat_map(|t| t.inner().iter())
                .map(|(name, value)| {
                    let value = match value {
                        AMQPValue::LongString(v) => v.as_bytes().to_vec(),
                        AMQPValue::ShortString(v) => v.as_str().as_bytes().to_vec(),
                        other => format!("{other:?}").into_bytes(),
                    };
                    (name.as_str().to_owned(), value)
                })
                .collect();
            dead_letter::stand_in(
                &format!("rabbitmq://{}", self.settler.queue.name),
                &d.delivery_tag.to_string(),
                payload.clone(),
                None,
                headers.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())),
            )
        };
        let decoded = decode(
            &d.properties,
            payload.clone(),
            format!("rabbitmq://{}", self.settler.queue.name),
            self.format,
        )
        .map_err(|e| (stand_in(&e), e.to_string()));
        let tag = self.settler.in_flight.insert(InFlight {
            acker: d.acker,
            link: link.clone(),
            properties: d.properties,
            payload,
            attempt,
            origin,
        });
        let settler: Arc<dyn Settler> = self.settler.clone();
        let ticket = Ticket::new(settler, tag, None, attempt);
        match decoded {
            Ok(event) => Delivery::new(event, ticket),
            Err((stand_in, reason)) => Delivery::undecodable(stand_in, ticket, reason),
        }
    }
}

impl RabbitSettler {
    /// Publishes a copy on the delivery's channel and waits for its confirm.
    async fn publish_copy(
        &self,
        m: &InFlight,
        routing_key: &str,
        properties: BasicProperties,
    ) -> Result<()> {
        let sent = bounded(
            "publish copy",
            m.link.channel.basic_publish(
                "".into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &m.payload,
                properties,
            ),
        )
        .await?;
        let confirm = bounded("confirm copy", sent).await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(CoreError::new(
                ErrorKind::NotFound,
                format!("queue `{routing_key}` is missing"),
            )),
            Confirmation::Nack(_) => Err(CoreError::temporary(
                ErrorKind::Unavailable,
                "the broker nacked the copy",
            )),
        }
    }

    async fn ack(m: &InFlight) -> Result<()> {
        answered(bounded("ack", m.acker.ack(BasicAckOptions::default())).await)
    }

    /// A copy with the reason goes to the dead-letter queue, then the
    /// original is acked; without a dead-letter queue the broker rejects it.
    async fn reject(&self, m: InFlight, reason: &str) -> Result<()> {
        let Some(dlq) = &self.queue.dead_letter_queue else {
            tracing::warn!(reason, queue = %self.queue.name, "rejected with no dead_letter_queue configured");
            return answered(
                bounded(
                    "reject",
                    m.acker.reject(BasicRejectOptions { requeue: false }),
                )
                .await,
            );
        };
        let extra: Vec<(String, AMQPValue)> = [
            (dead_letter::REASON, reason.to_owned()),
            (dead_letter::ATTEMPTS, m.attempt.to_string()),
            (dead_letter::ORIGIN, m.origin.clone()),
        ]
        .into_iter()
        .map(|(ext, value)| {
            let (name, value) = Binding::Amqp.extension_header(ext, &value);
            (name, AMQPValue::LongString(LongString::from(value)))
        })
        .collect();
        let extra: Vec<(&str, AMQPValue)> =
            extra.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        self.publish_copy(&m, dlq, copy_with(&m.properties, &extra))
            .await?;
        Self::ack(&m).await
    }

    /// Plain AMQP requeue has no delay: a copy goes to the delay queue of
    /// the delay's bucket, whose TTL sends it back, then the original is acked.
    async fn nack_later(&self, m: InFlight, delay: Duration) -> Result<()> {
        if self.queue.kind == QueueKind::Stream {
            return Err(CoreError::new(
                ErrorKind::Unsupported,
                "a stream queue cannot redeliver one message",
            ));
        }
        let bucket = delay_bucket(delay);
        let delay_queue = m
            .link
            .delay_queue(&self.queue.name, bucket, self.queue.delay_queue_idle)
            .await?;
        let next = AMQPValue::LongLongInt(i64::from(m.attempt) + 1);
        self.publish_copy(
            &m,
            &delay_queue,
            copy_with(&m.properties, &[(ATTEMPT_HEADER, next)]),
        )
        .await?;
        Self::ack(&m).await
    }
}

#[async_trait]
impl Settler for RabbitSettler {
    /// Settles every item, even after one fails: a delivery taken out of
    /// the in-flight table and left unsettled would stay unacked on a live
    /// channel, holding a prefetch slot until the channel closes, and after
    /// `prefetch` of them consumption stops. A failed settlement gives its
    /// message back instead (see `give_back`); the first error is returned.
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let (taken, unknown) = self.in_flight.take(items);
        let mut first_error = None;
        for (m, settlement) in taken {
            if !m.link.channel.status().connected() {
                // Its channel is gone: the broker already requeued the message.
                first_error.get_or_insert_with(|| {
                    CoreError::new(
                        ErrorKind::Connection,
                        "the delivery's channel was lost; the broker redelivers the message",
                    )
                });
                continue;
            }
            let acker = m.acker.clone();
            let link = m.link.clone();
            let settled = match settlement {
                Settlement::Ack => Self::ack(&m).await,
                Settlement::Nack { delay } if delay.is_zero() => requeue(&acker).await,
                Settlement::Nack { delay } => self.nack_later(m, delay).await,
                Settlement::Reject { reason } => self.reject(m, &reason).await,
            };
            if let Err(e) = settled {
                self.give_back(&acker, &link, &e).await;
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => causeway_core::unknown_tags(unknown),
        }
    }
}

impl RabbitSettler {
    /// After a failed settlement: requeue the message, or, if even that
    /// fails, drop the link, whose closing channel requeues everything it
    /// holds. Either way the broker delivers it again; a copy that did
    /// reach its queue before the failure makes that a duplicate, never a loss.
    async fn give_back(&self, acker: &Acker, link: &Arc<Link>, cause: &CoreError) {
        match requeue(acker).await {
            Ok(()) => {
                tracing::warn!(error = %cause, queue = %self.queue.name, "settling failed; the message is requeued");
            }
            Err(e) => {
                tracing::warn!(error = %cause, requeue_error = %e, queue = %self.queue.name, "settling and requeueing failed; the channel is dropped so the broker requeues its messages");
                self.session.invalidate(link).await;
            }
        }
    }
}

/// Gives a delivery back to its queue at once (plain AMQP requeue).
async fn requeue(acker: &Acker) -> Result<()> {
    answered(
        bounded(
            "nack",
            acker.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            }),
        )
        .await,
    )
}

/// lapin answers `Ok(false)` for an acker already used (an earlier attempt
/// that failed half-way) or whose channel has closed: the broker will
/// redeliver that message, so it is not settled.
fn answered(sent: Result<bool, Error>) -> Result<()> {
    match sent {
        Ok(true) => Ok(()),
        Ok(false) => Err(CoreError::new(
            ErrorKind::Connection,
            "the delivery was already settled or its channel closed; the broker redelivers it",
        )),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Consumer for RabbitConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while out.len() < max {
            if self.consuming.is_none() {
                match self.consume().await {
                    Ok(()) => self.backoff = MIN_BACKOFF,
                    Err(e) => {
                        tracing::warn!(error = %e, backoff = ?self.backoff, "rabbitmq consumer reconnecting");
                        let pause = self
                            .backoff
                            .min(deadline.saturating_duration_since(Instant::now()));
                        self.backoff =
                            (self.backoff * 2).min(self.session.config.max_reconnect_delay);
                        tokio::time::sleep(pause).await;
                        if Instant::now() >= deadline {
                            break;
                        }
                        continue;
                    }
                }
            }
            let Some((link, consumer)) = self.consuming.as_mut() else {
                break;
            };
            let next = if out.is_empty() {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match consumer.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            match next {
                Some(Ok(d)) => {
                    let link = link.clone();
                    out.push(self.deliver(&link, d));
                }
                lost => {
                    if let Some(Err(e)) = lost {
                        tracing::warn!(error = %e, "rabbitmq consumer lost its channel");
                    }
                    // Reconnect on the next turn; what was received so far is handed out.
                    if let Some((link, _)) = self.consuming.take() {
                        self.session.invalidate(&link).await;
                    }
                    if !out.is_empty() {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Closes the channel: the broker requeues every unacked delivery.
    async fn close(&mut self) -> Result<()> {
        self.consuming = None;
        self.settler.in_flight.lock().clear();
        self.session.close().await;
        Ok(())
    }
}
