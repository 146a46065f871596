use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use backon::{BackoffBuilder, ExponentialBuilder};
use causeway_core::publish::{destination_or_default, unsent_failed};
use causeway_core::{
    Capabilities, Error as CoreError, ErrorKind, Event, Publisher, Receipt, Result, Status,
};
use futures_util::StreamExt;

use crate::config::is_fifo;
use crate::connection::{Shared, capabilities};
use crate::error::Error;
use crate::mapping::{encode, fifo_token};

/// Most messages in one `SendMessageBatch` call.
pub(crate) const SQS_BATCH: usize = 10;

/// Publishes with `SendMessageBatch`, reporting each message's outcome.
pub struct SqsPublisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher").finish_non_exhaustive()
    }
}

/// One message of a publish call: its index among the call's events, and
/// its size as SQS counts it.
struct Entry {
    index: usize,
    size: usize,
    request: SendMessageBatchRequestEntry,
}

type Outcome = Result<(), CoreError>;

impl SqsPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SqsPublisher { shared }
    }

    fn prepare(
        &self,
        capabilities: &Capabilities,
        index: usize,
        event: &Event,
        fifo: bool,
    ) -> Result<Entry> {
        let config = &self.shared.config;
        capabilities.admit(event)?;
        let encoded = encode(event, fifo);
        if let Some(name) = encoded.refused_attribute() {
            return Err(CoreError::invalid_event(
                name,
                "holds a character SQS refuses in attribute values (U+FFFE or U+FFFF)",
            ));
        }
        let size = encoded.size();
        if size > config.max_message_bytes {
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                format!(
                    "event `{}` is {size} bytes as an SQS message; the limit is {}",
                    event.id, config.max_message_bytes
                ),
            ));
        }
        let mut request = SendMessageBatchRequestEntry::builder()
            .id(index.to_string())
            .message_body(encoded.body)
            .set_message_attributes(Some(encoded.attributes));
        if fifo {
            // An event without a key has no order to keep: its own group.
            let group = event.key.as_deref().unwrap_or(&event.id);
            request = request
                .message_group_id(fifo_token(group))
                .message_deduplication_id(event.dedup_id());
        }
        let request = request
            .build()
            .map_err(|e| CoreError::new(ErrorKind::Internal, e.to_string()))?;
        Ok(Entry {
            index,
            size,
            request,
        })
    }

    /// Sends a lane's calls one after another. After a call with a failed
    /// entry the rest of the lane waits for the next round, so the failed
    /// entry is sent again before them (FIFO order).
    async fn send_lane(&self, url: &str, lane: Vec<Vec<Entry>>) -> Vec<(Entry, Outcome)> {
        let mut out = Vec::new();
        let mut calls = lane.into_iter();
        for batch in calls.by_ref() {
            let results = self.send_batch(url, batch).await;
            let failed = results.iter().any(|(_, o)| o.is_err());
            out.extend(results);
            if failed {
                break;
            }
        }
        let held = CoreError::temporary(
            ErrorKind::Unavailable,
            "not sent: an earlier message of its group failed",
        );
        out.extend(calls.flatten().map(|entry| (entry, Err(held.clone()))));
        out
    }

    /// Sends one call; returns each entry's outcome. A call SQS refuses
    /// whole for what one message may cause (too long, a bad value) is split
    /// in halves and sent again, down to the one message at fault: a refused
    /// batch never fails its good neighbours. On FIFO queues what follows a
    /// failed part waits for the next round, as in [`Self::send_lane`].
    async fn send_batch(&self, url: &str, entries: Vec<Entry>) -> Vec<(Entry, Outcome)> {
        let fifo = is_fifo(url);
        let mut out = Vec::with_capacity(entries.len());
        let mut parts = vec![entries];
        while let Some(mut part) = parts.pop() {
            let results = match self.send_call(url, &part).await {
                // Refused whole for what one message may cause (too long, a bad value).
                Err(e) if part.len() > 1 && e.kind().is_event_fault() => {
                    tracing::debug!(error = %e, entries = part.len(), "sqs: batch refused whole; splitting it");
                    let second = part.split_off(part.len() / 2);
                    parts.push(second);
                    parts.push(part);
                    continue;
                }
                Err(e) => part
                    .into_iter()
                    .map(|entry| (entry, Err(e.clone())))
                    .collect(),
                Ok(results) => part.into_iter().zip(results).collect::<Vec<_>>(),
            };
            let failed = results.iter().any(|(_, o)| o.is_err());
            out.extend(results);
            if failed && fifo {
                let held = CoreError::temporary(
                    ErrorKind::Unavailable,
                    "not sent: an earlier message of its group failed",
                );
                out.extend(
                    parts
                        .drain(..)
                        .rev()
                        .flatten()
                        .map(|e| (e, Err(held.clone()))),
                );
            }
        }
        out
    }

    /// One `SendMessageBatch`: each entry's outcome in order, or the error
    /// that refused the whole call.
    async fn send_call(&self, url: &str, entries: &[Entry]) -> Result<Vec<Outcome>, CoreError> {
        let shared = &self.shared;
        let call = async {
            shared
                .sqs
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries.iter().map(|e| e.request.clone()).collect()))
                .send()
                .await
                .map_err(|e| Error::sdk("send message batch", e))
        };
        match Error::bounded("send message batch", shared.config.call_timeout, call).await {
            Ok(out) => Ok({
                let mut failed: Vec<_> = out
                    .failed
                    .iter()
                    .map(|f| {
                        let e = Error::entry(
                            "send message",
                            &f.code,
                            f.message.as_deref(),
                            f.sender_fault,
                        );
                        (f.id.clone(), CoreError::from(e))
                    })
                    .collect();
                entries
                    .iter()
                    .map(|entry| {
                        let id = entry.request.id();
                        if out.successful.iter().any(|s| s.id == id) {
                            Ok(())
                        } else if let Some(i) = failed.iter().position(|(f, _)| f == id) {
                            Err(failed.swap_remove(i).1)
                        } else {
                            Err(CoreError::temporary(
                                ErrorKind::Internal,
                                "SQS reported neither success nor failure for the message",
                            ))
                        }
                    })
                    .collect()
            }),
            Err(e) => Err(e.into()),
        }
    }
}

/// Splits entries into lanes of calls. Lanes run concurrently, a lane's
/// calls in order. Standard queues: each call is its own lane. FIFO queues:
/// a group's messages stay in one lane, so they reach SQS in order.
fn lanes(entries: Vec<Entry>, fifo: bool, lanes: usize, max_bytes: usize) -> Vec<Vec<Vec<Entry>>> {
    if !fifo {
        return calls(entries, false, max_bytes)
            .into_iter()
            .map(|call| vec![call])
            .collect();
    }
    let mut by_lane: Vec<Vec<Entry>> = (0..lanes.max(1)).map(|_| Vec::new()).collect();
    for entry in entries {
        let group = entry.request.message_group_id().unwrap_or("");
        let lane = causeway_core::template::key_hash(group.as_bytes()) as usize % by_lane.len();
        by_lane[lane].push(entry);
    }
    by_lane
        .into_iter()
        .filter(|lane| !lane.is_empty())
        .map(|lane| calls(lane, true, max_bytes))
        .collect()
}

/// Packs entries, in order, into calls SQS takes: at most 10 messages and
/// `max_bytes` in all (SQS caps a batch's total, attributes included, at
/// the message size limit). On FIFO queues a call holds at most one message
/// per group: when one entry of a call fails, SQS may still store the
/// entries after it, and a later message of the group would overtake it.
fn calls(entries: Vec<Entry>, fifo: bool, max_bytes: usize) -> Vec<Vec<Entry>> {
    let mut out: Vec<Vec<Entry>> = Vec::new();
    let mut size = 0;
    for entry in entries {
        let group = |e: &Entry| e.request.message_group_id().map(str::to_owned);
        let full = out.last().is_none_or(|call| {
            call.len() == SQS_BATCH
                || size + entry.size > max_bytes
                || (fifo && call.iter().any(|e| group(e) == group(&entry)))
        });
        if full {
            out.push(Vec::new());
            size = 0;
        }
        size += entry.size;
        out.last_mut().expect("a call was just pushed").push(entry);
    }
    out
}

#[async_trait]
impl Publisher for SqsPublisher {
    fn capabilities(&self) -> Capabilities {
        let config = &self.shared.config;
        let fifo = config.publish.default_queue.as_deref().is_some_and(is_fifo);
        capabilities(fifo, false, config)
    }

    /// Looks up the default queue's URL now (creating the queue where
    /// configured): a round trip the first publish would otherwise pay.
    async fn connect(&self) -> Result<()> {
        if let Some(queue) = self.shared.config.publish.default_queue.as_deref() {
            self.shared.queue_url(queue).await?;
        }
        Ok(())
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let config = &self.shared.config;
        let queue = destination_or_default(
            destination,
            config.publish.default_queue.as_deref(),
            "publish.default_queue",
        )?;
        let url = self.shared.queue_url(queue).await?;
        let fifo = is_fifo(&url);
        let mut outcomes: Vec<Option<Result<Receipt>>> = (0..events.len()).map(|_| None).collect();
        let mut pending = Vec::with_capacity(events.len());
        let capabilities = self.capabilities();
        for (index, event) in events.iter().enumerate() {
            match self.prepare(&capabilities, index, event, fifo) {
                Ok(entry) => pending.push(entry),
                Err(e) => outcomes[index] = Some(Err(e)),
            }
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(config.publish.entry_retries)
            .with_jitter()
            .build();
        while !pending.is_empty() {
            pending.sort_by_key(|e| e.index);
            let results: Vec<Vec<(Entry, Outcome)>> = futures_util::stream::iter(lanes(
                pending,
                fifo,
                config.publish.in_flight,
                config.max_message_bytes,
            ))
            .map(|lane| self.send_lane(&url, lane))
            .buffer_unordered(config.publish.in_flight)
            .collect()
            .await;
            let delay = delays.next();
            pending = Vec::new();
            for (entry, outcome) in results.into_iter().flatten() {
                match outcome {
                    Ok(()) => outcomes[entry.index] = Some(Ok(Receipt::default())),
                    Err(e) if e.status() == Status::Temporary && delay.is_some() => {
                        pending.push(entry);
                    }
                    Err(e) => outcomes[entry.index] = Some(Err(e)),
                }
            }
            if let (Some(delay), false) = (delay, pending.is_empty()) {
                tracing::debug!(
                    retrying = pending.len(),
                    ?delay,
                    "sqs: sending failed entries again"
                );
                tokio::time::sleep(delay).await;
            }
        }
        Ok(unsent_failed(outcomes))
    }
}
