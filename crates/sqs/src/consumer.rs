use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName,
};
use causeway_core::{
    Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, InputFormat, Prefetch, Result,
    Settlement, Settler, Ticket, Unsettled, dead_letter,
};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{QueueConfig, is_fifo};
use crate::connection::{Shared, capabilities};
use crate::error::Error;
use crate::mapping::{Received, decode, fifo_token, with_extensions};
use crate::publisher::SQS_BATCH;

/// Longest visibility SQS allows (12 hours).
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Delete calls in flight at once when many acks wait.
const DELETES_IN_FLIGHT: usize = 8;

/// Consumes one queue: receives run in background tasks into a bounded
/// buffer; `next_batch` takes from it.
pub struct SqsConsumer {
    settler: Arc<SqsSettler>,
    prefetch: Prefetch,
    capabilities: Capabilities,
}

impl std::fmt::Debug for SqsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsConsumer")
            .field("queue", &self.settler.queue.name)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// A received message not yet settled: what settling, extending and
/// dead-lettering it need.
#[derive(Clone)]
struct InFlight {
    receipt_handle: String,
    message_id: String,
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    group_id: Option<String>,
    attempt: u32,
    /// When `next_batch` handed it out; `max_processing` counts from here.
    handed_out: Option<Instant>,
    visible_until: Instant,
    /// Being acked or dead-lettered: kept invisible, and not released by
    /// `close`, until SQS answered the delete (or the dead-letter copy).
    settling: bool,
}

struct SqsSettler {
    shared: Arc<Shared>,
    queue: QueueConfig,
    queue_url: String,
    dead_letter_url: Option<String>,
    in_flight: Unsettled<InFlight>,
    deletes: mpsc::UnboundedSender<DeleteRequest>,
    /// Acks of messages whose visibility had lapsed: see [`SqsConsumer::late_acks`].
    late_acks: AtomicU64,
    format: InputFormat,
}

/// What a settle call sends, copied out of `in_flight` under its lock.
#[derive(Default)]
struct Settling {
    /// The messages being acked or rejected, held until SQS answered.
    tags: Vec<u64>,
    /// Receipt handles to delete.
    acks: Vec<String>,
    /// Receipt handles to make visible again, by delay in seconds.
    nacks: HashMap<i32, Vec<String>>,
    /// Messages to dead-letter, with the reason.
    rejects: Vec<(InFlight, String)>,
    /// Acks after the message's visibility had lapsed.
    late: u64,
    /// Tags not held (settled already, or unknown).
    unknown: usize,
}

/// Receipt handles to delete, and where to report the outcome. Requests
/// waiting together are sent in shared `DeleteMessageBatch` calls.
struct DeleteRequest {
    handles: Vec<String>,
    done: oneshot::Sender<Result<()>>,
}

/// SQS counts visibility in whole seconds.
fn seconds(d: Duration) -> i32 {
    let d = d.min(MAX_VISIBILITY);
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(whole).unwrap_or(i32::MAX)
}

impl SqsConsumer {
    /// How many acks came after their message's visibility had lapsed (the
    /// extender stops at `max_processing`, or could not reach SQS). SQS
    /// answers the delete of such a message with success, yet deletes only
    /// with the latest receipt handle: if another receive took the message
    /// meanwhile, it stays and is delivered again, for dedup to drop.
    pub fn late_acks(&self) -> u64 {
        self.settler.late_acks.load(AtomicOrdering::Relaxed)
    }

    pub(crate) async fn start(
        shared: Arc<Shared>,
        queue: QueueConfig,
        format: InputFormat,
    ) -> Result<Self, Error> {
        if queue.visibility_timeout < Duration::from_secs(1) {
            return Err(Error::config(
                "queue.visibility_timeout must be at least 1s",
            ));
        }
        if queue.long_poll > Duration::from_secs(20) {
            return Err(Error::config("queue.long_poll is at most 20s"));
        }
        let queue_url = shared.queue_url(&queue.name).await?;
        let dead_letter_url = match &queue.dead_letter_queue {
            Some(dlq) => Some(shared.queue_url(dlq).await?),
            None => shared.redrive_target(&queue_url).await?,
        };
        let capabilities = capabilities(
            is_fifo(&queue_url),
            dead_letter_url.is_some(),
            &shared.config,
        );
        let (deletes, delete_requests) = mpsc::unbounded_channel();
        let receives = queue.receives_in_flight.max(1);
        let settler = Arc::new(SqsSettler {
            shared: shared.clone(),
            queue,
            queue_url: queue_url.clone(),
            dead_letter_url,
            in_flight: Unsettled::default(),
            deletes,
            late_acks: AtomicU64::new(0),
            format,
        });
        let (tx, buffered) = mpsc::channel(receives * SQS_BATCH);
        // Ends by itself once the settler is gone: tickets outliving the
        // consumer can still be acked.
        tokio::spawn(delete_loop(shared, queue_url, delete_requests));
        let mut tasks = Vec::with_capacity(receives + 1);
        for _ in 0..receives {
            tasks.push(tokio::spawn(receive_loop(settler.clone(), tx.clone())));
        }
        if !settler.queue.max_processing.is_zero() {
            tasks.push(tokio::spawn(extend_loop(settler.clone())));
        }
        Ok(SqsConsumer {
            settler,
            prefetch: Prefetch::new(buffered, tasks),
            capabilities,
        })
    }
}

/// Receives into the buffer, waiting for room for a whole receive first so
/// no message is received that cannot be buffered.
async fn receive_loop(settler: Arc<SqsSettler>, tx: mpsc::Sender<(u64, Delivery)>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Ok(mut permits) = tx.reserve_many(SQS_BATCH).await else {
            return;
        };
        // SQS starts the visibility clock when it answers; counting from
        // before the request keeps our view on the safe side.
        let asked = Instant::now();
        match settler.receive().await {
            Ok(messages) => {
                backoff = MIN_BACKOFF;
                // At most 10 per receive, and 10 permits were reserved.
                for (delivery, permit) in settler
                    .admit(messages, asked)
                    .into_iter()
                    .zip(permits.by_ref())
                {
                    permit.send(delivery);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = %settler.queue.name, ?backoff, "sqs receive failed");
                drop(permits);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Keeps messages still held invisible: buffered ones until they are handed
/// out (or the consumer closes), handed-out ones for at most `max_processing`.
async fn extend_loop(settler: Arc<SqsSettler>) {
    let visibility = settler.queue.visibility_timeout;
    let tick = (visibility / 3).max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let due: Vec<(u64, String)> = settler
            .in_flight
            .lock()
            .iter()
            .filter(|(_, m)| {
                m.visible_until.saturating_duration_since(now) <= visibility / 2
                    && (m.settling
                        || m.handed_out
                            .is_none_or(|at| at + settler.queue.max_processing > now))
            })
            .map(|(tag, m)| (*tag, m.receipt_handle.clone()))
            .collect();
        if due.is_empty() {
            continue;
        }
        let handles: Vec<String> = due.iter().map(|(_, h)| h.clone()).collect();
        match settler.change_visibility(&handles, visibility).await {
            Ok(()) => {
                let mut in_flight = settler.in_flight.lock();
                for (tag, _) in &due {
                    if let Some(m) = in_flight.get_mut(tag) {
                        m.visible_until = now + visibility;
                    }
                }
            }
            // Typically a message settled meanwhile; the next tick tries the rest again.
            Err(e) => tracing::debug!(error = %e, "sqs visibility extension failed"),
        }
    }
}

/// Sends waiting deletes together, 10 per call, several calls in flight.
async fn delete_loop(
    shared: Arc<Shared>,
    queue_url: String,
    mut requests: mpsc::UnboundedReceiver<DeleteRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiting.push(more);
        }
        // Entry ids are positions in the flattened list of handles.
        let handles: Vec<(usize, String)> = waiting
            .iter()
            .flat_map(|r| r.handles.iter().cloned())
            .enumerate()
            .collect();
        let chunks: Vec<Vec<(usize, String)>> =
            handles.chunks(SQS_BATCH).map(<[_]>::to_vec).collect();
        let results: Vec<Vec<(usize, CoreError)>> = futures_util::stream::iter(chunks)
            .map(|chunk| {
                let (shared, queue_url) = (shared.clone(), queue_url.clone());
                async move { delete_batch(&shared, &queue_url, &chunk).await }
            })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .collect()
            .await;
        let failures: Vec<(usize, CoreError)> = results.into_iter().flatten().collect();
        let mut start = 0;
        for request in waiting {
            let end = start + request.handles.len();
            let failed = failures.iter().find(|(i, _)| (start..end).contains(i));
            let _ = request.done.send(match failed {
                Some((_, e)) => Err(e.clone()),
                None => Ok(()),
            });
            start = end;
        }
    }
}

/// One `DeleteMessageBatch`; returns the entries that failed.
async fn delete_batch(
    shared: &Shared,
    queue_url: &str,
    chunk: &[(usize, String)],
) -> Vec<(usize, CoreError)> {
    let entries = chunk
        .iter()
        .filter_map(|(i, handle)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
                .ok()
        })
        .collect();
    let call = async {
        shared
            .sqs
            .delete_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| Error::sdk("delete message batch", e))
    };
    match Error::bounded("delete message batch", shared.config.call_timeout, call).await {
        Ok(out) => out
            .failed
            .iter()
            .filter_map(|f| {
                let i = f.id.parse().ok()?;
                let e = Error::entry(
                    "delete message",
                    &f.code,
                    f.message.as_deref(),
                    f.sender_fault,
                );
                Some((i, e.into()))
            })
            .collect(),
        Err(e) => {
            let e = CoreError::from(e);
            chunk.iter().map(|(i, _)| (*i, e.clone())).collect()
        }
    }
}

impl SqsSettler {
    async fn receive(&self) -> Result<Vec<Message>, Error> {
        let q = &self.queue;
        let call = async {
            self.shared
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(SQS_BATCH as i32)
                .wait_time_seconds(seconds(q.long_poll))
                .visibility_timeout(seconds(q.visibility_timeout))
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .send()
                .await
                .map_err(|e| Error::sdk("receive message", e))
        };
        let limit = self.shared.config.call_timeout + q.long_poll;
        let out = Error::bounded("receive message", limit, call).await?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Tracks one receive's messages (one lock for all) and turns them into
    /// deliveries; a message that is not a CloudEvent is handed out as
    /// undecodable, with a stand-in event, for its consumer to dead-letter.
    fn admit(self: &Arc<Self>, messages: Vec<Message>, asked: Instant) -> Vec<(u64, Delivery)> {
        let mut tracked = Vec::with_capacity(messages.len());
        for m in messages {
            let (Some(receipt_handle), Some(message_id)) = (m.receipt_handle, m.message_id) else {
                tracing::warn!(queue = %self.queue.name, "sqs returned a message without a receipt handle or id");
                continue;
            };
            let system = m.attributes.unwrap_or_default();
            let attempt = system
                .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            let body = m.body.unwrap_or_default();
            let attributes = m.message_attributes.unwrap_or_default();
            let group_id = system.get(&MessageSystemAttributeName::MessageGroupId);
            let received = Received {
                origin: format!("sqs://{}", self.queue.name),
                message_id: Some(&message_id),
                group_id: group_id.map(String::as_str),
            };
            let decoded = decode(Some(&body), Some(&attributes), received, self.format).map_err(|e| {
                tracing::warn!(error = %e, queue = %self.queue.name, "a message that is not a CloudEvent: handed on as undecodable");
                let values: Vec<(&str, Vec<u8>)> = attributes
                    .iter()
                    .map(|(name, v)| {
                        let value = v
                            .string_value()
                            .map(|s| s.as_bytes().to_vec())
                            .or_else(|| v.binary_value().map(|b| b.as_ref().to_vec()))
                            .unwrap_or_default();
                        (name.as_str(), value)
                    })
                    .collect();
                let stand_in = dead_letter::stand_in(
                    &format!("sqs://{}", self.queue.name),
                    &message_id,
                    bytes::Bytes::from(body.clone().into_bytes()),
                    None,
                    values.iter().map(|(n, v)| (n.as_bytes(), v.as_slice())),
                );
                (stand_in, e.to_string())
            });
            let tag = self.in_flight.next_tag();
            let in_flight = InFlight {
                receipt_handle,
                message_id,
                body,
                attributes,
                group_id: system
                    .get(&MessageSystemAttributeName::MessageGroupId)
                    .cloned(),
                attempt,
                handed_out: None,
                visible_until: asked + self.queue.visibility_timeout,
                settling: false,
            };
            tracked.push((tag, in_flight, decoded));
        }
        let mut out = Vec::with_capacity(tracked.len());
        let mut in_flight = self.in_flight.lock();
        for (tag, m, decoded) in tracked {
            let attempt = m.attempt;
            in_flight.insert(tag, m);
            let settler: Arc<dyn Settler> = self.clone();
            let ticket = Ticket::new(settler, tag, None, attempt);
            out.push((
                tag,
                match decoded {
                    Ok(event) => Delivery::new(event, ticket),
                    Err((stand_in, reason)) => Delivery::undecodable(stand_in, ticket, reason),
                },
            ));
        }
        out
    }

    async fn delete(&self, handles: Vec<String>) -> Result<()> {
        if handles.is_empty() {
            return Ok(());
        }
        let (done, outcome) = oneshot::channel();
        self.deletes
            .send(DeleteRequest { handles, done })
            .map_err(|_| CoreError::new(ErrorKind::Closed, "the consumer is closed"))?;
        outcome
            .await
            .map_err(|_| CoreError::new(ErrorKind::Closed, "the consumer is closed"))?
    }

    async fn change_visibility(&self, handles: &[String], to: Duration) -> Result<()> {
        let calls = handles.chunks(SQS_BATCH).map(|chunk| async move {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, handle)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(seconds(to))
                        .build()
                        .ok()
                })
                .collect();
            let call = async {
                self.shared
                    .sqs
                    .change_message_visibility_batch()
                    .queue_url(&self.queue_url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| Error::sdk("change message visibility batch", e))
            };
            let out = Error::bounded(
                "change message visibility",
                self.shared.config.call_timeout,
                call,
            )
            .await?;
            match out.failed.first() {
                Some(f) => Err(Error::entry(
                    "change message visibility",
                    &f.code,
                    f.message.as_deref(),
                    f.sender_fault,
                )),
                None => Ok(()),
            }
        });
        let results: Vec<Result<(), Error>> = futures_util::future::join_all(calls).await;
        results
            .into_iter()
            .collect::<Result<(), Error>>()
            .map_err(Into::into)
    }

    /// A copy with the reason goes to the dead-letter queue, then the
    /// original is deleted.
    async fn dead_letter(&self, m: &InFlight, reason: &str) -> Result<()> {
        let Some(dlq) = &self.dead_letter_url else {
            return Err(CoreError::new(
                ErrorKind::Unsupported,
                format!(
                    "queue `{}` has no dead-letter queue: set dead_letter_queue or give the queue a redrive policy",
                    self.queue.name
                ),
            ));
        };
        let origin = format!("sqs://{}#{}", self.queue.name, m.message_id);
        let attributes = with_extensions(
            &m.attributes,
            &[
                (dead_letter::REASON, reason.to_owned()),
                (dead_letter::ATTEMPTS, m.attempt.to_string()),
                (dead_letter::ORIGIN, origin),
            ],
        );
        let mut request = self
            .shared
            .sqs
            .send_message()
            .queue_url(dlq)
            .message_body(&m.body)
            .set_message_attributes(Some(attributes));
        if is_fifo(dlq) {
            // The SQS message id makes the copy idempotent if it is sent twice.
            request = request
                .message_group_id(m.group_id.clone().unwrap_or_else(|| m.message_id.clone()))
                .message_deduplication_id(fifo_token(&m.message_id));
        }
        let call = async {
            request
                .send()
                .await
                .map_err(|e| Error::sdk("send dead letter", e))
        };
        Error::bounded("send dead letter", self.shared.config.call_timeout, call).await?;
        self.delete(vec![m.receipt_handle.clone()]).await
    }

    /// Makes every message still held visible again: closing hands them
    /// back. Those being settled stay with their settlement.
    async fn release_all(&self) -> Result<()> {
        let handles: Vec<String> = self
            .in_flight
            .lock()
            .extract_if(|_, m| !m.settling)
            .map(|(_, m)| m.receipt_handle)
            .collect();
        self.change_visibility(&handles, Duration::ZERO).await
    }

    /// Marks the messages of `items` acked or rejected as being settled and
    /// copies out what their settlements send. They stay in `in_flight`,
    /// extended, until [`Settler::settle`] has SQS's answer: taken out
    /// before, a message whose delete answered slowly became visible again
    /// and was delivered twice. Nacked ones are taken out (they are to come
    /// back). A tag unknown or already being settled is counted.
    fn start_settling(&self, items: Vec<(u64, Settlement)>) -> Settling {
        let now = Instant::now();
        let mut out = Settling::default();
        let mut held = self.in_flight.lock();
        for (tag, settlement) in items {
            let Some(m) = held.get_mut(&tag).filter(|m| !m.settling) else {
                out.unknown += 1;
                continue;
            };
            match settlement {
                Settlement::Ack => {
                    out.late += u64::from(m.visible_until <= now);
                    out.acks.push(m.receipt_handle.clone());
                }
                Settlement::Nack { delay } => {
                    // Out at once: an extension must not undo its delay.
                    if let Some(m) = held.remove(&tag) {
                        out.nacks
                            .entry(seconds(delay))
                            .or_default()
                            .push(m.receipt_handle);
                    }
                    continue;
                }
                Settlement::Reject { reason } => out.rejects.push((m.clone(), reason)),
            }
            m.settling = true;
            out.tags.push(tag);
        }
        out
    }
}

#[async_trait]
impl Settler for SqsSettler {
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let Settling {
            tags,
            acks,
            nacks,
            rejects,
            late,
            unknown,
        } = self.start_settling(items);
        if late > 0 {
            let total = self.late_acks.fetch_add(late, AtomicOrdering::Relaxed) + late;
            tracing::warn!(
                queue = %self.queue.name,
                late,
                total,
                "sqs: acked after the message's visibility lapsed; SQS answers such a delete with success but may not delete, so the message can be delivered again (raise queue.max_processing or visibility_timeout)"
            );
        }
        let mut first_error = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        note(self.delete(acks).await);
        for (secs, handles) in nacks {
            let delay = Duration::from_secs(u64::try_from(secs).unwrap_or(0));
            note(self.change_visibility(&handles, delay).await);
        }
        for (m, reason) in rejects {
            note(self.dead_letter(&m, &reason).await);
        }
        // Settled or failed, they are no longer this consumer's to extend:
        // a failed one comes back when its visibility lapses.
        self.in_flight.take(tags.into_iter().map(|tag| (tag, ())));
        if let Some(e) = first_error {
            return Err(e);
        }
        causeway_core::unknown_tags(unknown)
    }
}

#[async_trait]
impl Consumer for SqsConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let batch = self.prefetch.next(max, wait).await?;
        let now = Instant::now();
        let tags = batch.iter().map(|(tag, _)| *tag);
        self.settler
            .in_flight
            .update(tags, |m| m.handed_out = Some(now));
        Ok(batch.into_iter().map(|(_, delivery)| delivery).collect())
    }

    /// Stops receiving and makes every message not yet settled visible
    /// again, so another consumer gets it at once.
    async fn close(&mut self) -> Result<()> {
        self.prefetch.stop();
        self.settler.release_all().await
    }
}
