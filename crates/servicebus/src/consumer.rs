use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::{Method, Url};
use azure_messaging_servicebus::service_bus::SendMessageOptions;
use bytes::Bytes;
use causeway_core::{
    Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, InputFormat, Prefetch, Result,
    Settlement, Settler, Ticket, Unsettled, dead_letter,
};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::ReceiveConfig;
use crate::connection::{BATCH_CONTENT_TYPE, Reply, Shared, capabilities};
use crate::error::Error;
use crate::mapping::{Received, custom_properties, dead_letter_copy, decode, property_text};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often held locks are looked at for renewal and delayed unlocks.
const TICK: Duration = Duration::from_millis(250);
/// Completions, unlocks and renewals in flight at once (one request each).
const SETTLES_IN_FLIGHT: usize = 16;
/// The lock's length where the service did not say (its default is 1 minute).
const LOCK_FALLBACK: Duration = Duration::from_secs(30);

/// Consumes one queue or subscription with peek-lock: several long-polling
/// requests run in background tasks into a bounded buffer; `next_batch`
/// takes from it.
pub struct ServiceBusConsumer {
    settler: Arc<ServiceBusSettler>,
    prefetch: Prefetch,
    capabilities: Capabilities,
}

impl std::fmt::Debug for ServiceBusConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusConsumer")
            .field("entity", &self.settler.path)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// A locked message not yet settled.
#[derive(Clone)]
struct Held {
    /// Where the message is settled: completed (DELETE), unlocked (PUT)
    /// and renewed (POST).
    lock: Arc<Url>,
    message_id: String,
    sequence: i64,
    body: Bytes,
    properties: Vec<(String, Value)>,
    attempt: u32,
    /// The lock duration the service granted.
    span: Duration,
    renew_at: Instant,
    /// When `next_batch` handed it out; `max_processing` counts from here.
    handed_out: Option<Instant>,
    /// Nacked with a delay: the lock is kept until then, then released.
    release_at: Option<Instant>,
    /// Being completed or dead-lettered: its lock is renewed, and `close`
    /// leaves it, until the service answered.
    settling: bool,
}

struct ServiceBusSettler {
    shared: Arc<Shared>,
    receive: ReceiveConfig,
    path: String,
    held: Unsettled<Held>,
    /// False once the consumer is closed or dropped: buffered messages are
    /// no longer renewed (their deliveries are gone); handed-out ones and
    /// delayed nacks still are, as their tickets may outlive the consumer.
    open: AtomicBool,
    /// Why receiving stopped for good, for `next_batch` to report.
    failed: Mutex<Option<CoreError>>,
    format: InputFormat,
}

impl ServiceBusConsumer {
    pub(crate) fn start(
        shared: Arc<Shared>,
        receive: ReceiveConfig,
        format: InputFormat,
    ) -> Result<Self, Error> {
        if receive.long_poll < Duration::from_secs(1) {
            return Err(Error::config("receive.long_poll must be at least 1s"));
        }
        let head = shared.url(&format!(
            "{}/messages/head?timeout={}",
            receive.path(),
            receive.long_poll.as_secs()
        ))?;
        let capabilities = capabilities(&shared.config, receive.dead_letter_entity.is_some());
        let receives = receive.receives_in_flight.max(1);
        let settler = Arc::new(ServiceBusSettler {
            shared,
            path: receive.path(),
            receive,
            held: Unsettled::default(),
            open: AtomicBool::new(true),
            failed: Mutex::default(),
            format,
        });
        let (tx, buffered) = mpsc::channel(receives * 2);
        let mut tasks = Vec::with_capacity(receives + 1);
        for _ in 0..receives {
            tasks.push(tokio::spawn(receive_loop(
                settler.clone(),
                head.clone(),
                tx.clone(),
            )));
        }
        // Ends by itself once the settler is gone, so tickets and delayed
        // nacks outliving the consumer keep their locks.
        tokio::spawn(lock_loop(Arc::downgrade(&settler)));
        Ok(ServiceBusConsumer {
            settler,
            prefetch: Prefetch::new(buffered, tasks),
            capabilities,
        })
    }
}

/// Peek-locks one message at a time into the buffer, reserving room first
/// so no message is locked that cannot be buffered.
async fn receive_loop(
    settler: Arc<ServiceBusSettler>,
    head: Url,
    tx: mpsc::Sender<(u64, Delivery)>,
) {
    let mut backoff = MIN_BACKOFF;
    let config = &settler.shared.config;
    let wait = settler.receive.long_poll;
    loop {
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        let asked = Instant::now();
        let call = settler
            .shared
            .request("peek-lock", Method::Post, &head, None);
        let outcome = match Error::bounded("peek-lock", config.call_timeout + wait, call).await {
            Ok(reply) => match reply.status {
                201 => Ok(Some(reply)),
                204 => Ok(None),
                status => Err(Error::http("peek-lock", status, &reply.text())),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Some(response)) => {
                backoff = MIN_BACKOFF;
                if let Some(delivery) = settler.admit(response, asked) {
                    permit.send(delivery);
                }
            }
            Ok(None) => backoff = MIN_BACKOFF,
            // The entity cannot be received from (it requires sessions):
            // no retry can help; next_batch reports it.
            Err(e) if e.kind() == ErrorKind::Config => {
                tracing::error!(error = %e, entity = %settler.path, "servicebus: cannot receive");
                settler.fail(e.into());
                return;
            }
            Err(e) => {
                // hyper (under reqwest) reads at most 100 response headers:
                // a message with more custom properties cannot be received
                // over REST, and goes to $DeadLetterQueue after MaxDeliveryCount.
                let hint = if e.to_string().contains("too large") {
                    "a message with more properties than an HTTP response can carry (100 headers) cannot be received over REST; Service Bus dead-letters it after MaxDeliveryCount"
                } else {
                    ""
                };
                tracing::warn!(error = %e, entity = %settler.path, ?backoff, hint, "servicebus receive failed");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Renews the locks of held messages (buffered ones until handed out,
/// handed-out ones for at most `max_processing`, delayed nacks until their
/// time) and releases delayed nacks when due.
async fn lock_loop(settler: std::sync::Weak<ServiceBusSettler>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(settler) = settler.upgrade() else {
            return;
        };
        let now = Instant::now();
        let max_processing = settler.receive.max_processing;
        let open = settler.open.load(AtomicOrdering::Relaxed);
        let mut release = Vec::new();
        let mut renew = Vec::new();
        {
            let mut held = settler.held.lock();
            let due: Vec<u64> = held
                .iter()
                .filter(|(_, m)| m.release_at.is_some_and(|at| at <= now))
                .map(|(tag, _)| *tag)
                .collect();
            release.extend(
                due.iter()
                    .filter_map(|tag| held.remove(tag))
                    .map(|m| m.lock),
            );
            for (tag, m) in held.iter() {
                let wanted = m.release_at.is_some()
                    || m.settling
                    || (!max_processing.is_zero()
                        && match m.handed_out {
                            None => open,
                            Some(at) => at + max_processing > now,
                        });
                if wanted && m.renew_at <= now {
                    renew.push((*tag, m.lock.clone()));
                }
            }
        }
        if let Err(e) = settler.unlock(release).await {
            tracing::debug!(error = %e, "servicebus: releasing a delayed nack failed; its lock runs out instead");
        }
        let renewed: Vec<(u64, std::result::Result<(), Error>)> = futures_util::stream::iter(renew)
            .map(|(tag, lock)| {
                let settler = settler.clone();
                async move { (tag, settler.renew(&lock).await) }
            })
            .buffer_unordered(SETTLES_IN_FLIGHT)
            .collect()
            .await;
        let mut held = settler.held.lock();
        for (tag, result) in renewed {
            match result {
                Ok(()) => {
                    if let Some(m) = held.get_mut(&tag) {
                        m.renew_at = now + m.span / 2;
                    }
                }
                // Typically settled meanwhile, or the lock was lost already.
                Err(e) => tracing::debug!(error = %e, "servicebus lock renewal failed"),
            }
        }
    }
}

impl ServiceBusSettler {
    fn failed(&self) -> MutexGuard<'_, Option<CoreError>> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fail(&self, e: CoreError) {
        self.failed().get_or_insert(e);
    }

    fn failure(&self) -> Option<CoreError> {
        self.failed().clone()
    }

    /// Tracks a locked message and makes its delivery; a message that is
    /// not a CloudEvent, or that causeway cannot read (a body that is not
    /// UTF-8, broker properties it cannot parse), is handed out as
    /// undecodable, to be dead-lettered with the reason.
    fn admit(self: &Arc<Self>, reply: Reply, asked: Instant) -> Option<(u64, Delivery)> {
        let broker: Map<String, Value> = reply
            .header("brokerproperties")
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or_default();
        let text = |name: &str| broker.get(name).and_then(Value::as_str);
        let sequence = broker
            .get("SequenceNumber")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        // The lock URL: the Location header, else built from the lock token.
        let lock = reply
            .header("location")
            .and_then(|l| Url::parse(l).ok())
            .or_else(|| {
                let token = text("LockToken")?;
                self.shared
                    .url(&format!("{}/messages/{sequence}/{token}", self.path))
                    .ok()
            });
        let Some(lock) = lock else {
            tracing::error!(entity = %self.path, "servicebus returned a message without a lock: it cannot be settled and comes back when its lock runs out");
            return None;
        };
        // The lock's length by the service's clock: LockedUntilUtc - Date.
        let parse = |d: &str| {
            azure_core::date::parse_rfc1123(d)
                .ok()
                .map(|t| t.unix_timestamp())
        };
        let server_now = reply.header("date").and_then(parse).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        });
        let span = text("LockedUntilUtc")
            .and_then(parse)
            .map_or(LOCK_FALLBACK, |until| {
                Duration::from_secs(u64::try_from(until - server_now).unwrap_or(0).max(1))
            });
        let message_id = text("MessageId").unwrap_or_default().to_owned();
        let properties =
            custom_properties(reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let content_type = reply.header("content-type").map(str::to_owned);
        let body = reply.body;
        let decoded = if broker.is_empty() {
            Err(causeway_core::Error::invalid_event(
                "BrokerProperties",
                "missing or not a JSON object",
            ))
        } else {
            decode(
                &body,
                &properties,
                Received {
                    origin: format!("servicebus://{}", self.path),
                    broker: Some(&broker),
                    key: Some(self.shared.config.publish.key_property),
                    content_type: content_type.as_deref(),
                },
                self.format,
            )
        }
        .map_err(|e| {
            tracing::warn!(error = %e, entity = %self.path, "a message that is not a CloudEvent: handed on as undecodable");
            let stand_in = dead_letter::stand_in(
                &format!("servicebus://{}", self.path),
                &message_id,
                body.clone(),
                None,
                properties
                    .iter()
                    .map(|(n, v)| (n.as_bytes(), property_text(v)))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(n, v)| (*n, v.as_bytes())),
            );
            (stand_in, e.to_string())
        });
        let attempt = broker
            .get("DeliveryCount")
            .and_then(Value::as_u64)
            .map_or(1, |n| u32::try_from(n).unwrap_or(u32::MAX).max(1));
        let tag = self.held.insert(Held {
            lock: Arc::new(lock),
            message_id,
            sequence,
            body,
            properties,
            attempt,
            span,
            renew_at: asked + span / 2,
            handed_out: None,
            release_at: None,
            settling: false,
        });
        let settler: Arc<dyn Settler> = self.clone();
        let ticket = Ticket::new(settler, tag, None, attempt);
        Some((
            tag,
            match decoded {
                Ok(event) => Delivery::new(event, ticket),
                Err((stand_in, reason)) => Delivery::undecodable(stand_in, ticket, reason),
            },
        ))
    }

    async fn renew(&self, lock: &Url) -> std::result::Result<(), Error> {
        self.at_lock("renew lock", Method::Post, lock).await
    }

    /// One request to a message's lock URL; 200 is done, 404 the lock is
    /// lost (the message was settled, or its lock ran out).
    async fn at_lock(
        &self,
        operation: &'static str,
        method: Method,
        lock: &Url,
    ) -> std::result::Result<(), Error> {
        let call = self.shared.request(operation, method, lock, None);
        let reply = Error::bounded(operation, self.shared.config.call_timeout, call).await?;
        match reply.status {
            200..=299 => Ok(()),
            status => Err(Error::http(operation, status, &reply.text())),
        }
    }

    /// Sends `method` to each lock, `SETTLES_IN_FLIGHT` at a time (the REST
    /// API settles one message per request); the first failure is returned.
    async fn each(
        &self,
        operation: &'static str,
        method: Method,
        locks: Vec<Arc<Url>>,
    ) -> Result<()> {
        let results: Vec<std::result::Result<(), Error>> = futures_util::stream::iter(locks)
            .map(|lock| async move { self.at_lock(operation, method, &lock).await })
            .buffer_unordered(SETTLES_IN_FLIGHT)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<std::result::Result<(), Error>>()
            .map_err(Into::into)
    }

    /// Completes: the messages are gone.
    async fn complete(&self, locks: Vec<Arc<Url>>) -> Result<()> {
        self.each("complete", Method::Delete, locks).await
    }

    /// Unlocks (abandons): the messages are available again at once.
    async fn unlock(&self, locks: Vec<Arc<Url>>) -> Result<()> {
        self.each("unlock", Method::Put, locks).await
    }

    /// A copy with the reason goes to the dead-letter entity, then the
    /// original is completed.
    async fn dead_letter(&self, m: Held, reason: &str) -> Result<()> {
        let Some(entity) = &self.receive.dead_letter_entity else {
            // Hand it back: after MaxDeliveryCount Service Bus dead-letters it itself.
            let _ = self.unlock(vec![m.lock]).await;
            return Err(CoreError::new(
                ErrorKind::Unsupported,
                format!(
                    "`{}` has no dead_letter_entity configured; the message was unlocked and reaches its $DeadLetterQueue after MaxDeliveryCount deliveries",
                    self.path
                ),
            ));
        };
        let origin = format!(
            "servicebus://{}/{}#{}",
            self.shared.namespace, self.path, m.sequence
        );
        let copy = dead_letter_copy(
            &m.message_id,
            &m.body,
            &m.properties,
            &[
                (dead_letter::REASON, reason.to_owned()),
                (dead_letter::ATTEMPTS, m.attempt.to_string()),
                (dead_letter::ORIGIN, origin),
            ],
        );
        let body = serde_json::to_string(&[copy])
            .map_err(|e| CoreError::new(ErrorKind::Internal, e.to_string()))?;
        let sender = self.shared.sender(entity)?;
        let options = SendMessageOptions {
            content_type: Some(BATCH_CONTENT_TYPE.to_owned()),
            ..SendMessageOptions::default()
        };
        let call = async {
            sender
                .send_message(&body, Some(options))
                .await
                .map_err(|e| Error::azure("send dead letter", e))
        };
        Error::bounded("send dead letter", self.shared.config.call_timeout, call).await?;
        self.complete(vec![m.lock]).await
    }

    /// Unlocks every message still held, delayed nacks included: closing
    /// hands them back.
    async fn release_all(&self) -> Result<()> {
        let locks: Vec<Arc<Url>> = self
            .held
            .lock()
            .extract_if(|_, m| !m.settling)
            .map(|(_, m)| m.lock)
            .collect();
        self.unlock(locks).await
    }
}

#[async_trait]
impl Settler for ServiceBusSettler {
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let mut acks = Vec::new();
        let mut unlocks = Vec::new();
        let mut rejects = Vec::new();
        // Completed and dead-lettered messages stay held, their locks
        // renewed, until the service answered: taken out before, a slow
        // completion let the lock run out and the message come back.
        let mut settling = Vec::new();
        let mut unknown = 0;
        {
            let mut held = self.held.lock();
            let now = Instant::now();
            for (tag, settlement) in items {
                // A delayed nack is settled already, though still held.
                let Some(m) = held
                    .get_mut(&tag)
                    .filter(|m| m.release_at.is_none() && !m.settling)
                else {
                    unknown += 1;
                    continue;
                };
                match settlement {
                    Settlement::Nack { delay } if !delay.is_zero() => {
                        m.release_at = Some(now + delay);
                    }
                    Settlement::Nack { .. } => {
                        if let Some(m) = held.remove(&tag) {
                            unlocks.push(m.lock);
                        }
                    }
                    Settlement::Ack => {
                        m.settling = true;
                        settling.push(tag);
                        acks.push(m.lock.clone());
                    }
                    Settlement::Reject { reason } => {
                        m.settling = true;
                        settling.push(tag);
                        rejects.push((m.clone(), reason));
                    }
                }
            }
        }
        let mut first_error = None;
        let mut note = |r: Result<()>| {
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        };
        note(self.complete(acks).await);
        note(self.unlock(unlocks).await);
        for (m, reason) in rejects {
            note(self.dead_letter(m, &reason).await);
        }
        // Settled or failed: a failed one comes back when its lock runs out.
        self.held.take(settling.into_iter().map(|tag| (tag, ())));
        if let Some(e) = first_error {
            return Err(e);
        }
        causeway_core::unknown_tags(unknown)
    }
}

#[async_trait]
impl Consumer for ServiceBusConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        // Once receiving has stopped for good, say why instead of "closed" or nothing.
        let batch = self
            .prefetch
            .next(max, wait)
            .await
            .map_err(|e| self.settler.failure().unwrap_or(e))?;
        if let (true, Some(e)) = (batch.is_empty(), self.settler.failure()) {
            return Err(e);
        }
        let now = Instant::now();
        let tags = batch.iter().map(|(tag, _)| *tag);
        self.settler.held.update(tags, |m| m.handed_out = Some(now));
        Ok(batch.into_iter().map(|(_, delivery)| delivery).collect())
    }

    /// Stops receiving and unlocks every message not yet settled, so another
    /// consumer gets it at once.
    async fn close(&mut self) -> Result<()> {
        self.settler.open.store(false, AtomicOrdering::Relaxed);
        self.prefetch.stop();
        self.settler.release_all().await
    }
}

impl Drop for ServiceBusConsumer {
    fn drop(&mut self) {
        // The prefetch's tasks stop with it; renewals of buffered messages too.
        self.settler.open.store(false, AtomicOrdering::Relaxed);
    }
}
