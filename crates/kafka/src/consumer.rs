use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use causeway_core::{
    AckTracker, Binding, Capabilities, Consumer, Delivery, Error as CoreError, ErrorKind, Event,
    Header, Incoming, InputFormat, Position, Result, Settlement, Settler, Ticket, Value,
    dead_letter,
};
use futures_util::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::config::ConsumerConfig;
use crate::error::Error;
use crate::publisher::{KafkaPublisher, headers_of};

/// A consumer group member. Acks may come in any order: only the
/// contiguous acked watermark of each partition is ever committed.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<Context>>,
    shared: Arc<Shared>,
    settler: Arc<KafkaSettler>,
    capabilities: Capabilities,
    commit_interval: Duration,
    last_commit: Instant,
    max_held_back: usize,
    format: InputFormat,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// A delivered message kept until it is settled.
#[derive(Clone)]
struct Held {
    event: Event,
    /// Why the record is not an event, when it is not (`event` is a stand-in).
    undecodable: Option<String>,
    topic: String,
    partition: i32,
    offset: i64,
    attempt: u32,
}

/// A topic and one of its partitions.
type Partition = (String, i32);

impl Held {
    fn id(&self) -> (String, i32, i64) {
        (self.topic.clone(), self.partition, self.offset)
    }

    fn partition(&self) -> Partition {
        (self.topic.clone(), self.partition)
    }
}

/// Everything the consumer, its settler and the rebalance callback share.
#[derive(Default)]
struct State {
    /// Per topic: delivered and acked offsets, for the watermark.
    trackers: HashMap<String, AckTracker>,
    in_flight: HashMap<u64, Held>,
    /// Nacked, waiting for their delay: (due, sequence) → message.
    retry: BTreeMap<(Instant, u64), Held>,
    /// Released from `parked`, handed out before anything new.
    ready: VecDeque<Held>,
    /// Messages waiting behind a nacked message of their key.
    parked: HashMap<String, VecDeque<Held>>,
    /// How many of `parked` each partition holds, and the partitions
    /// paused because they hold too many.
    held_back: HashMap<Partition, usize>,
    paused: HashSet<Partition>,
    /// Keys with nacked messages not yet acked or rejected, and which.
    held_keys: HashMap<String, HashSet<(String, i32, i64)>>,
    next_tag: u64,
    sequence: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn tracker(&mut self, topic: &str) -> &mut AckTracker {
        self.trackers.entry(topic.to_owned()).or_default()
    }

    /// An ack, or the end of a rejected message: advances the watermark and
    /// lets messages parked behind it go.
    fn done(&mut self, held: &Held) {
        self.tracker(&held.topic)
            .acked(held.partition as u32, held.offset as u64);
        if let Some(key) = &held.event.key
            && let Some(ids) = self.held_keys.get_mut(key)
        {
            ids.remove(&held.id());
            if ids.is_empty() {
                self.held_keys.remove(key);
                self.release(key);
            }
        }
    }

    /// Hands out what waited behind `key`.
    fn release(&mut self, key: &str) {
        let Some(parked) = self.parked.remove(key) else {
            return;
        };
        for held in &parked {
            if let Some(n) = self.held_back.get_mut(&held.partition()) {
                *n = n.saturating_sub(1);
            }
        }
        self.ready.extend(parked);
    }

    fn nack(&mut self, mut held: Held, delay: Duration) {
        if let Some(key) = &held.event.key {
            self.held_keys
                .entry(key.clone())
                .or_default()
                .insert(held.id());
        }
        held.attempt += 1;
        self.sequence += 1;
        self.retry
            .insert((Instant::now() + delay, self.sequence), held);
    }

    /// A message from the broker: handed out, or parked behind its key.
    fn arrive(&mut self, held: Held) -> Option<Held> {
        self.tracker(&held.topic)
            .delivered(held.partition as u32, held.offset as u64);
        match &held.event.key {
            Some(key) if self.held_keys.contains_key(key) => {
                *self.held_back.entry(held.partition()).or_default() += 1;
                self.parked.entry(key.clone()).or_default().push_back(held);
                None
            }
            _ => Some(held),
        }
    }

    /// Forgets a revoked partition; returns the offset to commit for it.
    /// Its unsettled messages go to the partition's next owner.
    fn revoke(&mut self, topic: &str, partition: i32) -> Option<i64> {
        let mine = |h: &Held| h.topic == topic && h.partition == partition;
        self.in_flight.retain(|_, h| !mine(h));
        self.retry.retain(|_, h| !mine(h));
        self.ready.retain(|h| !mine(h));
        for q in self.parked.values_mut() {
            q.retain(|h| !mine(h));
        }
        for ids in self.held_keys.values_mut() {
            ids.retain(|(t, p, _)| !(t == topic && *p == partition));
        }
        let released: Vec<String> = self
            .held_keys
            .iter()
            .filter(|(_, ids)| ids.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in released {
            self.held_keys.remove(&key);
            self.release(&key);
        }
        let partition = (topic.to_owned(), partition);
        self.held_back.remove(&partition);
        self.trackers
            .get_mut(topic)?
            .revoke(partition.1 as u32)
            .map(|o| o as i64)
    }

    /// Partitions that hold `max` messages back and are not paused yet;
    /// they count as paused from here on.
    fn pause_full(&mut self, max: usize) -> Vec<Partition> {
        let full: Vec<Partition> = self
            .held_back
            .iter()
            .filter(|(p, n)| **n >= max && !self.paused.contains(*p))
            .map(|(p, _)| p.clone())
            .collect();
        self.paused.extend(full.iter().cloned());
        full
    }

    /// Paused partitions that drained to half of `max`; no longer paused.
    fn resume_drained(&mut self, max: usize) -> Vec<Partition> {
        let drained: Vec<Partition> = self
            .paused
            .iter()
            .filter(|p| self.held_back.get(*p).copied().unwrap_or(0) <= max / 2)
            .cloned()
            .collect();
        for p in &drained {
            self.paused.remove(p);
        }
        drained
    }

    /// A commit of these offsets failed: they are committed again next time.
    fn commit_failed(&mut self, offsets: &TopicPartitionList) {
        for e in offsets.elements() {
            if let Some(tracker) = self.trackers.get_mut(e.topic()) {
                tracker.commit_failed(e.partition() as u32);
            }
        }
    }

    fn commits(&mut self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for (topic, tracker) in &mut self.trackers {
            for (partition, offset) in tracker.take_commits() {
                let _ = tpl.add_partition_offset(
                    topic,
                    partition as i32,
                    Offset::Offset(offset as i64),
                );
            }
        }
        tpl
    }
}

/// Commits the watermark of partitions before they are given up in a rebalance.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        let mut unpause = TopicPartitionList::new();
        {
            let mut state = self.shared.lock();
            for tp in revoked.elements() {
                if state
                    .paused
                    .remove(&(tp.topic().to_owned(), tp.partition()))
                {
                    unpause.add_partition(tp.topic(), tp.partition());
                }
                if let Some(offset) = state.revoke(tp.topic(), tp.partition()) {
                    let _ = commit.add_partition_offset(
                        tp.topic(),
                        tp.partition(),
                        Offset::Offset(offset),
                    );
                }
            }
        }
        if commit.count() > 0
            && let Err(e) = consumer.commit(&commit, CommitMode::Sync)
        {
            tracing::warn!(error = %e, "commit before revocation failed; the new owner repeats from the last commit");
        }
        // librdkafka keeps a partition paused across a rebalance: were it
        // assigned here again, nothing would ever resume it.
        if unpause.count() > 0
            && let Err(e) = consumer.resume(&unpause)
        {
            tracing::warn!(error = %e, "resuming revoked partitions failed");
        }
    }

    /// A failed commit (periodic ones are asynchronous) is sent again on
    /// the next commit, even if no ack moved its partition.
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        let failed = match &result {
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; it is sent again");
                offsets.clone()
            }
            Ok(()) => {
                let mut failed = TopicPartitionList::new();
                for e in offsets.elements().iter().filter(|e| e.error().is_err()) {
                    failed.add_partition(e.topic(), e.partition());
                }
                failed
            }
        };
        if failed.count() > 0 {
            self.shared.lock().commit_failed(&failed);
        }
    }
}

/// How long a message whose dead letter could not be produced waits before
/// it is handed out again.
const REJECT_RETRY: Duration = Duration::from_secs(1);

struct KafkaSettler {
    shared: Arc<Shared>,
    dead_letters: Option<(KafkaPublisher, String)>,
}

impl KafkaSettler {
    /// Produces a copy with the reason to the dead-letter topic (or, without
    /// one, only logs).
    async fn reject(&self, held: &Held, reason: &str) -> Result<()> {
        match &self.dead_letters {
            Some((producer, topic)) => {
                let mut copy = held.event.clone();
                let origin = format!("kafka://{}/{}@{}", held.topic, held.partition, held.offset);
                dead_letter::mark(&mut copy, reason, held.attempt, &origin);
                producer
                    .produce_raw(
                        topic,
                        copy.key.as_deref().map(str::as_bytes),
                        &copy.payload,
                        headers_of(&copy),
                    )
                    .await?;
            }
            None => {
                tracing::warn!(reason, topic = %held.topic, offset = held.offset, "rejected with no dead_letter_topic: skipped")
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Settler for KafkaSettler {
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> Result<()> {
        let mut rejects = Vec::new();
        let mut unknown = 0;
        {
            let mut state = self.shared.lock();
            for (tag, settlement) in items {
                let Some(held) = state.in_flight.remove(&tag) else {
                    unknown += 1;
                    continue;
                };
                match settlement {
                    Settlement::Ack => state.done(&held),
                    Settlement::Nack { delay } => state.nack(held, delay),
                    Settlement::Reject { reason } => rejects.push((held, reason)),
                }
            }
        }
        // A reject whose copy cannot be produced comes back later, as a nack
        // would: left undone it would hold the partition's commit forever.
        let mut first_error = None;
        for (held, reason) in rejects {
            let rejected = self.reject(&held, &reason).await;
            let mut state = self.shared.lock();
            match rejected {
                Ok(()) => state.done(&held),
                Err(e) => {
                    tracing::warn!(error = %e, topic = %held.topic, offset = held.offset, "producing a dead letter failed; the message comes back");
                    state.nack(held, REJECT_RETRY);
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if unknown > 0 {
            return Err(CoreError::new(
                ErrorKind::Conflict,
                format!(
                    "{unknown} deliveries were already settled or their partition was revoked (its new owner gets them)"
                ),
            ));
        }
        Ok(())
    }
}

impl KafkaConsumer {
    /// A consumer subscribed as `c` says; dead letters go through
    /// `dead_letters` (a publisher and its topic) when `c` names a topic.
    pub(crate) fn new(
        config: ClientConfig,
        c: ConsumerConfig,
        mut capabilities: Capabilities,
        dead_letters: Option<(KafkaPublisher, String)>,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared::default());
        let consumer: StreamConsumer<Context> = config
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| Error::kafka("create consumer", e))?;
        let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| Error::kafka("subscribe", e))?;
        capabilities.dead_letter = dead_letters.is_some();
        Ok(KafkaConsumer {
            consumer: Arc::new(consumer),
            settler: Arc::new(KafkaSettler {
                shared: shared.clone(),
                dead_letters,
            }),
            shared,
            capabilities,
            commit_interval: c.commit_interval,
            last_commit: Instant::now(),
            max_held_back: c.max_held_back.max(1),
            format: InputFormat::Auto,
        })
    }

    /// Reads records as `format` says (CloudEvents, raw, or by their headers).
    #[must_use]
    pub fn reading(mut self, format: InputFormat) -> Self {
        self.format = format;
        self
    }

    /// Commits the acked watermark of every partition that moved.
    pub fn commit(&mut self, mode: CommitMode) -> Result<()> {
        self.last_commit = Instant::now();
        let tpl = self.shared.lock().commits();
        if tpl.count() == 0 {
            return Ok(());
        }
        self.consumer.commit(&tpl, mode).map_err(|e| {
            // Taken as committed by `commits`: not so, send it again next time.
            self.shared.lock().commit_failed(&tpl);
            Error::kafka("commit", e).into()
        })
    }

    /// Messages held back behind nacked messages of their key, waiting.
    pub fn held_back(&self) -> usize {
        self.shared.lock().held_back.values().sum()
    }

    /// Pauses partitions that hold too many messages back, resumes those
    /// that drained. A paused partition's records stay in Kafka: librdkafka
    /// drops what it prefetched and fetches again from the next unread offset.
    fn pace(&self, state: &mut State) {
        let pause = state.pause_full(self.max_held_back);
        let resume = state.resume_drained(self.max_held_back);
        for (partitions, pausing) in [(pause, true), (resume, false)] {
            if partitions.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for (topic, partition) in &partitions {
                tpl.add_partition(topic, *partition);
            }
            let done = if pausing {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            };
            match done {
                Ok(()) => tracing::info!(
                    ?partitions,
                    pausing,
                    held_back_limit = self.max_held_back,
                    "partitions paused for messages held back behind nacked keys, or resumed"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, ?partitions, pausing, "pausing or resuming partitions failed")
                }
            }
        }
    }

    /// Moves an assigned partition's position to `offset`, for replay.
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        self.consumer
            .seek(
                topic,
                partition,
                Offset::Offset(offset),
                Duration::from_secs(10),
            )
            .map_err(|e| Error::kafka("seek", e).into())
    }

    /// The first offset of each partition of `topic` at or after `unix_ms`, for replay.
    pub fn offsets_for_time(
        &self,
        topic: &str,
        partitions: &[i32],
        unix_ms: i64,
    ) -> Result<Vec<(i32, Option<i64>)>> {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(topic, *p, Offset::Offset(unix_ms))
                .map_err(|e| Error::kafka("offsets for time", e))?;
        }
        let found = self
            .consumer
            .offsets_for_times(tpl, Duration::from_secs(10))
            .map_err(|e| Error::kafka("offsets for time", e))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    }

    /// Hands out a held message under a fresh tag.
    fn hand_out(&self, state: &mut State, held: Held) -> Delivery {
        state.next_tag += 1;
        let tag = state.next_tag;
        let settler: Arc<dyn Settler> = self.settler.clone();
        let ticket = Ticket::new(
            settler,
            tag,
            Some(Position {
                partition: held.partition as u32,
                offset: held.offset as u64,
            }),
            held.attempt,
        );
        let event = held.event.clone();
        let undecodable = held.undecodable.clone();
        state.in_flight.insert(tag, held);
        match undecodable {
            None => Delivery::new(event, ticket),
            Some(reason) => Delivery::undecodable(event, ticket, reason),
        }
    }

    /// Retries that are due and messages released from parking.
    fn take_waiting(&self, max: usize, out: &mut Vec<Delivery>) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        while out.len() < max {
            let Some((&(due, seq), _)) = state.retry.iter().next() else {
                break;
            };
            if due > now {
                break;
            }
            if let Some(held) = state.retry.remove(&(due, seq)) {
                let d = self.hand_out(&mut state, held);
                out.push(d);
            }
        }
        while out.len() < max {
            let Some(held) = state.ready.pop_front() else {
                break;
            };
            let d = self.hand_out(&mut state, held);
            out.push(d);
        }
        self.pace(&mut state);
        state.retry.keys().next().map(|(due, _)| *due)
    }

    /// Takes a record in. One that cannot be read (a header name that is
    /// not UTF-8; under `format = "cloudevents"`, a record that is not a
    /// CloudEvent) is handed out as undecodable, with a stand-in event,
    /// through the same per-key order and offset tracking: its consumer
    /// dead-letters it, and only its ack commits it.
    fn arrive<M: Message>(&self, message: &M, out: &mut Vec<Delivery>) {
        // Read from librdkafka's buffer: the payload, the key and each
        // header are copied once, into the event.
        let (headers, bad_header) = read_headers(message);
        let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
        let topic = message.topic();
        let decoded = match bad_header {
            Some(reason) => Err(reason),
            None => {
                let incoming = Incoming {
                    origin: format!("kafka://{topic}"),
                    headers,
                    properties: Vec::new(),
                    key: message.key().map(Bytes::copy_from_slice),
                    derived_key: false,
                    content_type: None,
                    position: Some(format!(
                        "{topic}/{}/{}",
                        message.partition(),
                        message.offset()
                    )),
                    payload: payload.clone(),
                };
                Binding::Kafka
                    .read(self.format, incoming)
                    .map_err(|e| e.to_string())
            }
        };
        let (event, undecodable) = match decoded {
            Ok(event) => (event, None),
            Err(reason) => {
                tracing::warn!(topic, partition = message.partition(), offset = message.offset(), %reason, "a record that is not an event: handed on as undecodable");
                // Rare: the headers are read again for the stand-in.
                let (headers, _) = read_headers(message);
                let stand_in = dead_letter::stand_in(
                    &format!("kafka://{topic}"),
                    &format!("{}@{}", message.partition(), message.offset()),
                    payload,
                    message.key(),
                    headers.iter().filter_map(|h| match &h.value {
                        Value::Bytes(b) => Some((h.name.as_bytes(), b.as_ref())),
                        _ => None,
                    }),
                );
                (stand_in, Some(reason))
            }
        };
        let held = Held {
            event,
            undecodable,
            topic: topic.to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            attempt: 1,
        };
        let mut state = self.shared.lock();
        match state.arrive(held) {
            Some(held) => {
                let d = self.hand_out(&mut state, held);
                out.push(d);
            }
            None => self.pace(&mut state),
        }
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if self.last_commit.elapsed() >= self.commit_interval
            && let Err(e) = self.commit(CommitMode::Async)
        {
            tracing::warn!(error = %e, "periodic commit failed; the next one catches up");
        }
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        let consumer = self.consumer.clone();
        while out.len() < max {
            let next_retry = self.take_waiting(max, &mut out);
            if out.len() >= max {
                break;
            }
            let received = if out.is_empty() {
                let until = next_retry.map_or(deadline, |r| r.min(deadline));
                match tokio::time::timeout_at(until, consumer.recv()).await {
                    Ok(r) => Some(r),
                    Err(_) if Instant::now() >= deadline => break,
                    Err(_) => continue, // a retry is due
                }
            } else {
                consumer.recv().now_or_never()
            };
            // The borrowed message is read and dropped here, before any await.
            let failed = match received {
                Some(Ok(message)) => {
                    self.arrive(&message, &mut out);
                    None
                }
                Some(Err(e)) => Some(e),
                None => break,
            };
            match failed {
                None => {}
                Some(e) => {
                    let e = Error::kafka("receive", e);
                    if e.status() == causeway_core::Status::Permanent {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, "kafka receive failed; retrying");
                    if !out.is_empty() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Ok(out)
    }

    /// Commits the acked watermark and leaves the group; unacked messages
    /// are read again by whoever gets the partitions.
    async fn close(&mut self) -> Result<()> {
        let result = self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
        result
    }
}

/// A record's headers, each value copied once as bytes, and a reason if
/// one cannot be read. rdkafka panics (unwrap on a `Utf8Error`) on a header
/// name that is not UTF-8, before the caller can refuse it; that panic is
/// caught here, per header, so one such record fails alone instead of the
/// consumer task.
fn read_headers<M: Message>(message: &M) -> (Vec<Header>, Option<String>) {
    let Some(headers) = message.headers() else {
        return (Vec::new(), None);
    };
    let mut out = Vec::with_capacity(headers.count());
    let mut bad = None;
    for idx in 0..headers.count() {
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            headers.try_get(idx).and_then(|h| {
                let value = Value::Bytes(Bytes::copy_from_slice(h.value?));
                Some(Header::new(h.key, value))
            })
        }));
        match read {
            Ok(Some(header)) => out.push(header),
            Ok(None) => {}
            Err(_) => {
                bad.get_or_insert_with(|| format!("header {idx}: its name is not UTF-8"));
            }
        }
    }
    (out, bad)
}
