use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::capabilities::{Capabilities, Ordering};
use crate::consume::{Consumer, Delivery, Position, Settlement, Settler, Ticket};
use crate::dead_letter;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::publish::{Publisher, Receipt};

/// An in-process broker: topics, consumer groups that share work, per-key
/// order, redelivery after nack or ack timeout, dead-letter topics and
/// publish-side dedup on the event id.
///
/// A group reads a topic from its beginning. Within a group an event with a
/// key is not delivered while an earlier event with the same key is in
/// flight or waiting for redelivery, like SQS FIFO message groups.
#[derive(Clone, Debug)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    topics: Mutex<HashMap<String, Topic>>,
    /// Woken on publish and settlement so waiting consumers look again.
    changed: Notify,
    next_tag: AtomicU64,
    next_consumer: AtomicU64,
    dedup_window: Duration,
    max_message_bytes: usize,
}

#[derive(Debug, Default)]
struct Topic {
    log: Vec<Event>,
    published: HashMap<String, Instant>,
    groups: HashMap<String, Group>,
}

#[derive(Debug)]
struct Group {
    options: ConsumerOptions,
    /// Log index up to which events have entered `waiting`.
    seen: usize,
    /// Not in flight and not done: log index → when it may be delivered.
    waiting: BTreeMap<usize, Waiting>,
    in_flight: HashMap<u64, InFlight>,
    /// Keys with an event in flight: later events of the key wait.
    busy_keys: HashSet<String>,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    ready_at: Instant,
    deliveries: u32,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    index: usize,
    deadline: Instant,
    deliveries: u32,
    consumer: u64,
}

/// How a consumer group behaves; fixed by the group's first consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerOptions {
    /// An unsettled delivery is redelivered after this long.
    pub ack_timeout: Duration,
    /// After this many deliveries an event is dead-lettered instead; `None` retries forever.
    pub max_deliveries: Option<u32>,
    /// Where rejected events go; `None` means `{topic}.dlq`.
    pub dead_letter_topic: Option<String>,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            ack_timeout: Duration::from_secs(30),
            max_deliveries: None,
            dead_letter_topic: None,
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker with a 2-minute publish dedup window and a 4 MiB message limit.
    pub fn new() -> Self {
        Self::with_limits(Duration::from_secs(120), 4 * 1024 * 1024)
    }

    /// A broker with the given dedup window (zero disables dedup) and message limit.
    pub fn with_limits(dedup_window: Duration, max_message_bytes: usize) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                topics: Mutex::default(),
                changed: Notify::new(),
                next_tag: AtomicU64::new(1),
                next_consumer: AtomicU64::new(1),
                dedup_window,
                max_message_bytes,
            }),
        }
    }

    /// What this broker can do.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            per_message_nack: true,
            delayed_redelivery: true,
            ack_timeout_redelivery: true,
            dead_letter: true,
            native_dedup: !self.inner.dedup_window.is_zero(),
            ordering: Ordering::PerKey,
            // Publishes in order, in memory, failing only an event's own fault.
            ordered_publish: true,
            // A call is stored before `submit` returns: calls land in the
            // order they were submitted.
            pipelined_order: true,
            consumer_groups: true,
            durable_resume: true,
            max_message_bytes: self.inner.max_message_bytes,
            max_batch: 1000,
        }
    }

    /// A publisher to this broker.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher {
            broker: self.clone(),
        }
    }

    /// A consumer of `topic` in `group`; the group is created with `options`
    /// if it does not exist yet.
    pub fn consumer(&self, topic: &str, group: &str, options: ConsumerOptions) -> MemoryConsumer {
        let mut topics = self.inner.lock();
        topics
            .entry(topic.to_owned())
            .or_default()
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Group {
                options,
                seen: 0,
                waiting: BTreeMap::new(),
                in_flight: HashMap::new(),
                busy_keys: HashSet::new(),
            });
        MemoryConsumer {
            settler: Arc::new(MemorySettler {
                broker: self.clone(),
                topic: topic.to_owned(),
                group: group.to_owned(),
            }),
            id: self
                .inner
                .next_consumer
                .fetch_add(1, AtomicOrdering::Relaxed),
            capabilities: self.capabilities(),
        }
    }

    /// Appends `events` to `topic` as a foreign producer would: nothing is
    /// checked, so tests can feed a consumer events no causeway publisher
    /// would send (control characters, empty ids).
    pub fn publish_unchecked(&self, topic: &str, events: &[Event]) {
        let mut topics = self.inner.lock();
        for event in events {
            append(&self.inner, &mut topics, topic, event.clone());
        }
        drop(topics);
        self.inner.changed.notify_waiters();
    }

    /// Number of events ever published to `topic` (dedup-dropped copies excluded).
    pub fn published(&self, topic: &str) -> usize {
        self.inner.lock().get(topic).map_or(0, |t| t.log.len())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Topic>> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn append(
    inner: &Inner,
    topics: &mut HashMap<String, Topic>,
    topic: &str,
    event: Event,
) -> Receipt {
    let now = Instant::now();
    let t = topics.entry(topic.to_owned()).or_default();
    if !inner.dedup_window.is_zero() {
        let key = event.dedup_id();
        if let Some(at) = t.published.get(&key)
            && now.duration_since(*at) < inner.dedup_window
        {
            return Receipt {
                position: None,
                duplicate: true,
            };
        }
        t.published.insert(key, now);
    }
    t.log.push(event);
    Receipt {
        position: Some(Position {
            partition: 0,
            offset: (t.log.len() - 1) as u64,
        }),
        duplicate: false,
    }
}

/// Publishes to a [`MemoryBroker`].
#[derive(Clone, Debug)]
pub struct MemoryPublisher {
    broker: MemoryBroker,
}

#[async_trait]
impl Publisher for MemoryPublisher {
    fn capabilities(&self) -> Capabilities {
        self.broker.capabilities()
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        if destination.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "the memory broker needs a topic name",
            ));
        }
        let inner = &self.broker.inner;
        let capabilities = self.broker.capabilities();
        let mut topics = inner.lock();
        let out = events
            .iter()
            .map(|event| {
                capabilities.admit(event)?;
                Ok(append(inner, &mut topics, destination, event.clone()))
            })
            .collect();
        drop(topics);
        inner.changed.notify_waiters();
        Ok(out)
    }
}

/// Consumes one topic in one group of a [`MemoryBroker`]. Dropping it hands
/// its unsettled deliveries back to the group at once, like a closed channel.
#[derive(Debug)]
pub struct MemoryConsumer {
    settler: Arc<MemorySettler>,
    id: u64,
    capabilities: Capabilities,
}

#[derive(Debug)]
struct MemorySettler {
    broker: MemoryBroker,
    topic: String,
    group: String,
}

impl MemorySettler {
    /// Runs `f` on the group and the topic log; dead letters it returns are
    /// appended afterwards (they go to another topic). Waiting consumers are
    /// woken when `wakes` (something was settled or released) or a dead
    /// letter was written; a poll that only took deliveries wakes no one,
    /// not even its own wait.
    fn with_group<T>(
        &self,
        wakes: bool,
        f: impl FnOnce(&mut Group, &[Event], Instant) -> (T, Vec<(String, Event)>),
    ) -> Result<T> {
        let inner = &self.broker.inner;
        let mut topics = inner.lock();
        let topic = topics.get_mut(&self.topic).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("topic `{}` is gone", self.topic),
            )
        })?;
        let Topic { log, groups, .. } = topic;
        let group = groups.get_mut(&self.group).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("group `{}` is gone", self.group),
            )
        })?;
        let (value, dead) = f(group, log, Instant::now());
        let wakes = wakes || !dead.is_empty();
        for (dlq, event) in dead {
            append(inner, &mut topics, &dlq, event);
        }
        drop(topics);
        if wakes {
            inner.changed.notify_waiters();
        }
        Ok(value)
    }

    fn dead_letter(
        &self,
        group: &Group,
        log: &[Event],
        index: usize,
        reason: &str,
        deliveries: u32,
    ) -> (String, Event) {
        let mut event = log[index].clone();
        let origin = format!("memory://{}/{}#{index}", self.topic, self.group);
        dead_letter::mark(&mut event, reason, deliveries, &origin);
        let dlq = group
            .options
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic));
        (dlq, event)
    }

    /// Hands back deliveries past their deadline (or all of one consumer's).
    fn expire(
        &self,
        group: &mut Group,
        log: &[Event],
        now: Instant,
        consumer: Option<u64>,
    ) -> Vec<(String, Event)> {
        let expired: Vec<u64> = group
            .in_flight
            .iter()
            .filter(|(_, f)| consumer.map_or(f.deadline <= now, |c| f.consumer == c))
            .map(|(tag, _)| *tag)
            .collect();
        let mut dead = Vec::new();
        for tag in expired {
            if let Some(f) = group.in_flight.remove(&tag) {
                free_key(group, log, f.index);
                if group
                    .options
                    .max_deliveries
                    .is_some_and(|m| f.deliveries >= m)
                {
                    dead.push(self.dead_letter(
                        group,
                        log,
                        f.index,
                        "maximum deliveries reached",
                        f.deliveries,
                    ));
                } else {
                    group.waiting.insert(
                        f.index,
                        Waiting {
                            ready_at: now,
                            deliveries: f.deliveries,
                        },
                    );
                }
            }
        }
        dead
    }
}

fn free_key(group: &mut Group, log: &[Event], index: usize) {
    if let Some(key) = &log[index].key {
        group.busy_keys.remove(key);
    }
}

#[async_trait]
impl Settler for MemorySettler {
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        self.with_group(true, |group, log, now| {
            let mut dead = Vec::new();
            let mut unknown = 0;
            for (tag, settlement) in items {
                let Some(f) = group.in_flight.remove(&tag) else {
                    unknown += 1;
                    continue;
                };
                free_key(group, log, f.index);
                match settlement {
                    Settlement::Ack => {}
                    Settlement::Nack { delay } => {
                        group.waiting.insert(
                            f.index,
                            Waiting {
                                ready_at: now + delay,
                                deliveries: f.deliveries,
                            },
                        );
                    }
                    Settlement::Reject { reason } => {
                        dead.push(self.dead_letter(group, log, f.index, &reason, f.deliveries));
                    }
                }
            }
            let result = if unknown == 0 {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!("{unknown} deliveries were already settled or timed out; they will be redelivered"),
                ))
            };
            (result, dead)
        })?
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let give_up = Instant::now() + wait;
        let inner = self.settler.broker.inner.clone();
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (batch, wake) = self.settler.with_group(false, |group, log, now| {
                let dead = self.settler.expire(group, log, now, None);
                let (batch, wake) = take_ready(group, log, now, max, &inner, self.id);
                ((batch, wake), dead)
            })?;
            if !batch.is_empty() {
                let settler: Arc<dyn Settler> = self.settler.clone();
                return Ok(batch
                    .into_iter()
                    .map(|(tag, index, deliveries, event)| {
                        let ticket = Ticket::new(
                            settler.clone(),
                            tag,
                            Some(Position {
                                partition: 0,
                                offset: index as u64,
                            }),
                            deliveries,
                        );
                        Delivery::new(event, ticket)
                    })
                    .collect());
            }
            let now = Instant::now();
            if now >= give_up {
                return Ok(Vec::new());
            }
            let until = wake.map_or(give_up, |w| w.min(give_up));
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn close(&mut self) -> Result<()> {
        self.release_in_flight()
    }
}

impl MemoryConsumer {
    fn release_in_flight(&self) -> Result<()> {
        self.settler.with_group(true, |group, log, now| {
            let dead = self.settler.expire(group, log, now, Some(self.id));
            ((), dead)
        })
    }
}

impl Drop for MemoryConsumer {
    fn drop(&mut self) {
        // The topic may be gone in a test's teardown; nothing to hand back then.
        let _ = self.release_in_flight();
    }
}

type Taken = (u64, usize, u32, Event);

/// Picks up to `max` deliverable events in log order, respecting per-key
/// order; returns them and when the next waiting event becomes ready.
fn take_ready(
    group: &mut Group,
    log: &[Event],
    now: Instant,
    max: usize,
    inner: &Inner,
    consumer: u64,
) -> (Vec<Taken>, Option<Instant>) {
    for index in group.seen..log.len() {
        group.waiting.insert(
            index,
            Waiting {
                ready_at: now,
                deliveries: 0,
            },
        );
    }
    group.seen = log.len();

    let mut wake = group.in_flight.values().map(|f| f.deadline).min();
    let mut blocked: HashSet<&str> = HashSet::new();
    let mut picked = Vec::new();
    for (&index, w) in &group.waiting {
        if picked.len() >= max {
            break;
        }
        let key = log[index].key.as_deref();
        if let Some(k) = key
            && (group.busy_keys.contains(k) || !blocked.insert(k))
        {
            continue;
        }
        if w.ready_at > now {
            wake = Some(wake.map_or(w.ready_at, |x| x.min(w.ready_at)));
            continue;
        }
        picked.push(index);
    }
    let deadline = now + group.options.ack_timeout;
    let batch = picked
        .into_iter()
        .filter_map(|index| {
            let w = group.waiting.remove(&index)?;
            let deliveries = w.deliveries + 1;
            let tag = inner.next_tag.fetch_add(1, AtomicOrdering::Relaxed);
            if let Some(k) = &log[index].key {
                group.busy_keys.insert(k.clone());
            }
            group.in_flight.insert(
                tag,
                InFlight {
                    index,
                    deadline,
                    deliveries,
                    consumer,
                },
            );
            Some((tag, index, deliveries, log[index].clone()))
        })
        .collect();
    (batch, wake)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waiting on an empty topic is a wait, not a loop: with tokio's clock
    /// paused, time only moves while every task sleeps, so a `next_batch`
    /// that keeps waking itself never sees its deadline. Before the fix
    /// each poll notified its own waiter (the settler's lock-and-notify):
    /// in-memory consumers spun a core while idle.
    #[test]
    fn an_idle_next_batch_sleeps_until_its_deadline() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let broker = MemoryBroker::new();
                let mut consumer = broker.consumer("t", "g", ConsumerOptions::default());
                let batch = consumer
                    .next_batch(10, Duration::from_secs(5))
                    .await
                    .expect("next_batch");
                assert!(batch.is_empty());
            });
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(10)).is_ok(),
            "next_batch on an empty topic kept waking itself: 5 s of paused time never passed in 10 s"
        );
    }
}
