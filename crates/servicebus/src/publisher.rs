use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_messaging_servicebus::service_bus::SendMessageOptions;
use backon::{BackoffBuilder, ExponentialBuilder};
use causeway_core::publish::{destination_or_default, unsent_failed};
use causeway_core::{
    Capabilities, Error as CoreError, ErrorKind, Event, Publisher, Receipt, Result, Status,
};
use futures_util::StreamExt;

use crate::config::KeyProperty;
use crate::connection::{BATCH_CONTENT_TYPE, Shared, capabilities};
use crate::error::Error;
use crate::mapping::{BatchMessage, encode};

/// Most messages in one batch request.
const MAX_MESSAGES: usize = 100;

/// Publishes with Send Message Batch requests (JSON), several in flight.
/// A request is stored whole or not at all, so each event's outcome is its
/// request's.
pub struct ServiceBusPublisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceBusPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusPublisher")
            .finish_non_exhaustive()
    }
}

/// The most custom properties a message may carry: a peek-lock returns
/// them as HTTP response headers, beside about a dozen of HTTP's and the
/// protocol's own, and hyper (under reqwest) refuses a response with more
/// than 100 headers. A message with more could be sent but never received.
const MAX_PROPERTIES: usize = 80;

/// Service Bus quotas: any one property at most 32 KB, all of them (system
/// ones included) at most 64 KB. One message over them fails its whole
/// request on the service, so it is refused here, alone.
const MAX_PROPERTY_BYTES: usize = 32 * 1024;
const MAX_PROPERTIES_BYTES: usize = 64 * 1024;

/// Refuses `event` as too large when one of `message`'s properties, or all
/// of them together, pass the service's quotas.
fn check_property_sizes(event: &Event, message: &BatchMessage) -> Result<()> {
    let mut total = 0;
    for (name, value) in message
        .broker_properties
        .iter()
        .chain(&message.user_properties)
    {
        let size = name.len()
            + value
                .as_str()
                .map_or_else(|| value.to_string().len(), str::len);
        if size > MAX_PROPERTY_BYTES {
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                format!(
                    "event `{}`: property `{name}` is {size} bytes as a Service Bus message; a property may be {MAX_PROPERTY_BYTES}",
                    event.id
                ),
            ));
        }
        total += size;
    }
    if total > MAX_PROPERTIES_BYTES {
        return Err(CoreError::new(
            ErrorKind::TooLarge,
            format!(
                "event `{}`: its properties are {total} bytes as a Service Bus message; all of them may be {MAX_PROPERTIES_BYTES}",
                event.id
            ),
        ));
    }
    Ok(())
}

/// An event ready to send: its index, its JSON, the hash of its key (for
/// lanes) and, on partitioned entities, the partition it goes to.
struct Ready {
    index: usize,
    json: String,
    key: Option<u64>,
    partition: Option<String>,
}

/// One request: its events' indexes and JSON, in order.
struct Call {
    parts: Vec<(usize, String)>,
}

impl Call {
    fn indexes(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().map(|(i, _)| *i)
    }

    /// The request's body: a JSON array of its messages.
    fn body(&self) -> String {
        let mut body =
            String::with_capacity(self.parts.iter().map(|(_, j)| j.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (n, (_, json)) in self.parts.iter().enumerate() {
            if n > 0 {
                body.push(',');
            }
            body.push_str(json);
        }
        body.push(']');
        body
    }

    /// Two requests of half the messages each, in order.
    fn halves(mut self) -> (Call, Call) {
        let second = self.parts.split_off(self.parts.len() / 2);
        (self, Call { parts: second })
    }
}

/// The smallest message limit of any tier (Standard: 256 KiB). A request of
/// one message under it that is refused with 403 cannot be too large: the
/// entity's quota is exceeded, which waiting cures (docs/headers.md).
const SMALLEST_LIMIT: usize = 256 * 1024;

/// Least wait before sending again after the service said it is busy or
/// throttling: Standard namespaces ask clients to back off about 2 s.
const BUSY_WAIT: Duration = Duration::from_secs(2);

impl ServiceBusPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        ServiceBusPublisher { shared }
    }

    /// The event ready for a batch, once it is admitted and fits.
    fn prepare(&self, capabilities: &Capabilities, index: usize, event: &Event) -> Result<Ready> {
        let config = &self.shared.config;
        capabilities.admit(event)?;
        let message = encode(event, config.publish.key_property)?;
        check_property_sizes(event, &message)?;
        let properties = message.user_properties.len();
        if properties > MAX_PROPERTIES {
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                format!(
                    "event `{}` has {properties} properties as a Service Bus message; at most {MAX_PROPERTIES} can be received back: the REST API returns each as an HTTP header, and HTTP clients read at most 100 headers",
                    event.id
                ),
            ));
        }
        // What a partitioned entity hashes: PartitionKey, else SessionId,
        // else the MessageId where duplicates are detected.
        let partition = config.partitioned.then(|| {
            let property = |name: &str| message.broker_properties.get(name)?.as_str();
            property("PartitionKey")
                .or_else(|| property("SessionId"))
                .or_else(|| {
                    config
                        .duplicate_detection
                        .then(|| property("MessageId"))
                        .flatten()
                })
                .map(str::to_owned)
        });
        let json = serde_json::to_string(&message)
            .map_err(|e| CoreError::new(ErrorKind::Internal, e.to_string()))?;
        let size = json.len();
        if size > config.max_message_bytes {
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                format!(
                    "event `{}` is {size} bytes as a Service Bus message; the limit is {}",
                    event.id, config.max_message_bytes
                ),
            ));
        }
        let key = event
            .key
            .as_deref()
            .map(|k| causeway_core::template::key_hash(k.as_bytes()));
        Ok(Ready {
            index,
            json,
            key,
            partition: partition.flatten(),
        })
    }

    /// Splits messages into lanes of requests. Lanes run concurrently, a
    /// lane's requests in order. Where the key goes into `PartitionKey` or
    /// `SessionId` a key's messages stay in one lane, so they reach Service
    /// Bus in order; otherwise each request is its own lane.
    fn lanes(&self, messages: Vec<Ready>) -> Vec<Vec<Call>> {
        let config = &self.shared.config;
        if config.publish.key_property == KeyProperty::None {
            return self.calls(messages).into_iter().map(|c| vec![c]).collect();
        }
        let lanes = config.publish.in_flight.max(1);
        let mut by_lane: Vec<Vec<Ready>> = (0..lanes).map(|_| Vec::new()).collect();
        for ready in messages {
            // No key, no order to keep: spread by position.
            let lane = ready.key.unwrap_or(ready.index as u64) as usize % lanes;
            by_lane[lane].push(ready);
        }
        by_lane
            .into_iter()
            .filter(|lane| !lane.is_empty())
            .map(|lane| self.calls(lane))
            .collect()
    }

    /// Sends a lane's requests one after another; after a failed one the
    /// rest wait for the next round, so order within a key holds. A request
    /// refused whole for what one message may cause (too large, a bad
    /// value) is split in halves and sent again, down to the message at
    /// fault, so a bad event never fails its neighbours.
    async fn send_lane(&self, entity: &str, lane: Vec<Call>) -> Vec<(Call, Result<(), Error>)> {
        let mut out = Vec::with_capacity(lane.len());
        let mut calls: std::collections::VecDeque<Call> = lane.into();
        while let Some(call) = calls.pop_front() {
            let result = self.send(entity, &call).await;
            match result {
                Err(e) if call.parts.len() > 1 && e.kind().is_event_fault() => {
                    tracing::debug!(error = %e, messages = call.parts.len(), "servicebus: request refused whole; splitting it");
                    let (first, second) = call.halves();
                    calls.push_front(second);
                    calls.push_front(first);
                }
                Err(e) => {
                    out.push((call, Err(e)));
                    break;
                }
                Ok(()) => out.push((call, Ok(()))),
            }
        }
        out.extend(calls.into_iter().map(|call| {
            // Temporary, and not the service's busy signal: no long wait for it.
            let held = Error::new(
                "send message batch",
                ErrorKind::Conflict,
                "not sent: an earlier request of its lane failed",
            )
            .with_status(Status::Temporary);
            (call, Err(held))
        }));
        out
    }

    /// Packs messages into requests no larger than the size limit. On
    /// partitioned entities a request holds one partition's messages:
    /// grouped by partition first, stably, so each key keeps its order.
    fn calls(&self, mut messages: Vec<Ready>) -> Vec<Call> {
        let limit = self.shared.config.max_message_bytes;
        if self.shared.config.partitioned {
            messages.sort_by(|a, b| a.partition.cmp(&b.partition));
        }
        let mut calls: Vec<Call> = Vec::new();
        let mut partition = None;
        let mut size = 2;
        for ready in messages {
            let full = calls.last().is_none_or(|call| {
                size + ready.json.len() + 1 > limit
                    || call.parts.len() == MAX_MESSAGES
                    || ready.partition != partition
            });
            if full {
                calls.push(Call { parts: Vec::new() });
                size = 2;
                partition.clone_from(&ready.partition);
            }
            size += ready.json.len() + 1;
            let call = calls.last_mut().expect("a call was just pushed");
            call.parts.push((ready.index, ready.json));
        }
        calls
    }

    async fn send(&self, entity: &str, call: &Call) -> Result<(), Error> {
        let sender = self.shared.sender(entity)?;
        let options = SendMessageOptions {
            content_type: Some(BATCH_CONTENT_TYPE.to_owned()),
            ..SendMessageOptions::default()
        };
        let request = async {
            sender
                .send_message(&call.body(), Some(options))
                .await
                .map_err(|e| match forbidden(&e, call) {
                    Some(refused) => refused,
                    None => Error::azure("send message batch", e),
                })
        };
        Error::bounded(
            "send message batch",
            self.shared.config.call_timeout,
            request,
        )
        .await
    }
}

/// Service Bus answers 403 for "quota exceeded or message too large" and the
/// REST client keeps only the status. Which one it was follows from the
/// request: several messages, split it and see; one message over the
/// smallest tier's limit, too large (permanent); one under it, the entity's
/// quota (temporary: the route waits, nothing is dead-lettered).
fn forbidden(e: &azure_core::Error, call: &Call) -> Option<Error> {
    let azure_core::error::ErrorKind::HttpResponse { status, .. } = e.kind() else {
        return None;
    };
    if u16::from(*status) != 403 {
        return None;
    }
    let size: usize = call.parts.iter().map(|(_, json)| json.len()).sum();
    let (kind, why) = match call.parts.as_slice() {
        [_] if size <= SMALLEST_LIMIT => (
            ErrorKind::Unavailable,
            format!("a message of {size} bytes fits every tier: the entity's quota is exceeded"),
        ),
        [_] => (
            ErrorKind::TooLarge,
            format!("a message of {size} bytes is over the entity's limit"),
        ),
        parts => (
            ErrorKind::TooLarge,
            format!(
                "a request of {} messages ({size} bytes) is too large or over quota",
                parts.len()
            ),
        ),
    };
    Some(Error::new(
        "send message batch",
        kind,
        format!("HTTP 403: {why}"),
    ))
}

#[async_trait]
impl Publisher for ServiceBusPublisher {
    fn capabilities(&self) -> Capabilities {
        capabilities(&self.shared.config, false)
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let config = &self.shared.config;
        let entity = destination_or_default(
            destination,
            config.publish.default_entity.as_deref(),
            "publish.default_entity",
        )?;
        let capabilities = self.capabilities();
        let mut outcomes: Vec<Option<Result<Receipt>>> = (0..events.len()).map(|_| None).collect();
        let mut ready = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.prepare(&capabilities, index, event) {
                Ok(one) => ready.push(one),
                Err(e) => outcomes[index] = Some(Err(e)),
            }
        }
        let mut pending = self.lanes(ready);
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(config.publish.retries)
            .with_jitter()
            .build();
        while !pending.is_empty() {
            let results: Vec<Vec<(Call, Result<(), Error>)>> = futures_util::stream::iter(pending)
                .map(|lane| self.send_lane(entity, lane))
                .buffer_unordered(config.publish.in_flight)
                .collect()
                .await;
            let mut delay = delays.next();
            let mut retry: Vec<Call> = Vec::new();
            for (call, result) in results.into_iter().flatten() {
                match result {
                    Ok(()) => {
                        for i in call.indexes() {
                            outcomes[i] = Some(Ok(Receipt::default()));
                        }
                    }
                    // Sent again whole: with duplicate detection, a request that
                    // was stored although its answer was lost is dropped.
                    Err(e) if e.status() == Status::Temporary && delay.is_some() => {
                        tracing::debug!(error = %e, "servicebus: sending a batch again");
                        // Busy, throttled or over quota: the service asks for patience.
                        if e.kind() == ErrorKind::Unavailable {
                            delay = delay.map(|d| d.max(BUSY_WAIT));
                        }
                        retry.push(call);
                    }
                    Err(e) => {
                        let e = CoreError::from(e);
                        for i in call.indexes() {
                            outcomes[i] = Some(Err(e.clone()));
                        }
                    }
                }
            }
            // Requests to send again, in their first event's order: one lane
            // keeps a key's order; a lane per request where there is none to keep.
            retry.sort_by_key(|c| c.indexes().next());
            pending = if config.publish.key_property == KeyProperty::None {
                retry.into_iter().map(|c| vec![c]).collect()
            } else if retry.is_empty() {
                Vec::new()
            } else {
                vec![retry]
            };
            if let (Some(delay), false) = (delay, pending.is_empty()) {
                tokio::time::sleep(delay).await;
            }
        }
        Ok(unsent_failed(outcomes))
    }
}
