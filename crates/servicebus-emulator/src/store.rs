//! Entities and their messages: what happens to a message between send and
//! complete, independent of HTTP.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{DEFAULT_LOCK, token};

/// Settings of a queue or a subscription (the parts of Service Bus's
/// `QueueDescription` / `SubscriptionDescription` the emulator models).
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// How long a peek-lock holds a message (`LockDuration`).
    pub lock_duration: Duration,
    /// Deliveries before a message is dead-lettered (`MaxDeliveryCount`).
    pub max_delivery_count: u32,
    /// Duplicate detection window on `MessageId` (queues only; a
    /// subscription inherits its topic's).
    pub duplicate_detection: Option<Duration>,
    /// `DefaultMessageTimeToLive`.
    pub default_ttl: Option<Duration>,
    /// `DeadLetteringOnMessageExpiration`.
    pub dead_letter_on_expiration: bool,
    /// Largest message, and largest send request (256 KiB: the Standard tier).
    pub max_message_bytes: usize,
    /// `RequiresSession`: every message needs a `SessionId`, and only
    /// session receivers (AMQP) can receive.
    pub requires_session: bool,
    /// `EnablePartitioning`: a batch must hold messages of one partition.
    pub partitioned: bool,
    /// `MaxSizeInMegabytes`, in bytes: a send that would pass it is refused
    /// with 403 (quota exceeded) until messages are taken. `None`: no limit.
    pub max_size_bytes: Option<usize>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            lock_duration: DEFAULT_LOCK,
            max_delivery_count: 10,
            duplicate_detection: None,
            default_ttl: None,
            dead_letter_on_expiration: false,
            max_message_bytes: 256 * 1024,
            requires_session: false,
            partitioned: false,
            max_size_bytes: None,
        }
    }
}

/// Settings of a topic.
#[derive(Debug, Clone)]
pub struct TopicOptions {
    /// Duplicate detection window on `MessageId`.
    pub duplicate_detection: Option<Duration>,
    /// Largest message, and largest send request.
    pub max_message_bytes: usize,
    /// `EnablePartitioning`: a batch must hold messages of one partition.
    pub partitioned: bool,
}

impl Default for TopicOptions {
    fn default() -> Self {
        TopicOptions {
            duplicate_detection: None,
            max_message_bytes: 256 * 1024,
            partitioned: false,
        }
    }
}

pub(crate) enum Entity {
    Queue(Queue),
    Topic(Topic),
}

/// What a sender sets on a message (the settable broker properties).
#[derive(Debug, Clone, Default)]
pub(crate) struct Incoming {
    pub message_id: Option<String>,
    pub body: Bytes,
    pub content_type: Option<String>,
    /// Label, CorrelationId, SessionId, PartitionKey, ReplyTo, To: kept and
    /// returned as sent.
    pub properties: Map<String, Value>,
    pub time_to_live: Option<Duration>,
    pub scheduled: Option<DateTime<Utc>>,
    /// Custom (user) properties.
    pub user: Map<String, Value>,
}

impl Incoming {
    /// The partition a partitioned entity puts this message in, by what
    /// Service Bus hashes: `PartitionKey`, else `SessionId`, else (with
    /// duplicate detection) `MessageId`; `None`: any partition.
    pub fn partition(&self, duplicate_detection: bool) -> Option<&str> {
        ["PartitionKey", "SessionId"]
            .iter()
            .find_map(|name| self.properties.get(*name).and_then(Value::as_str))
            .or(if duplicate_detection {
                self.message_id.as_deref()
            } else {
                None
            })
    }

    /// Size as the service counts it: the body and every property, system
    /// ones (message id, content type) included.
    pub fn size(&self) -> usize {
        let props: usize = self
            .user
            .iter()
            .chain(self.properties.iter())
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        let system = [
            ("MessageId", &self.message_id),
            ("ContentType", &self.content_type),
        ]
        .iter()
        .map(|(name, v)| v.as_ref().map_or(0, |v| name.len() + v.len()))
        .sum::<usize>();
        self.body.len() + props + system
    }
}

/// A stored message.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub sequence: i64,
    pub message_id: String,
    pub body: Bytes,
    pub content_type: Option<String>,
    pub properties: Map<String, Value>,
    pub user: Map<String, Value>,
    pub enqueued: DateTime<Utc>,
    pub available: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub time_to_live: Duration,
    pub delivery_count: u32,
    pub lock: Option<Lock>,
}

#[derive(Debug, Clone)]
pub(crate) struct Lock {
    pub token: String,
    pub until: DateTime<Utc>,
}

/// Where sequence numbers start: beyond 32 bits, as on real namespaces.
pub(crate) const FIRST_SEQUENCE: i64 = 1 << 40;

/// A queue of messages in sequence order.
#[derive(Debug, Default)]
pub(crate) struct Store {
    messages: BTreeMap<i64, Message>,
    next_sequence: i64,
}

impl Store {
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Bytes held, bodies and properties, as the entity's size counts them.
    pub fn bytes(&self) -> usize {
        self.messages
            .values()
            .map(|m| {
                m.body.len()
                    + m.user
                        .iter()
                        .chain(&m.properties)
                        .map(|(k, v)| k.len() + v.to_string().len())
                        .sum::<usize>()
            })
            .sum()
    }

    fn push(&mut self, mut m: Message) {
        // Real namespaces number past 32 bits (partitioned entities keep
        // the partition in the top bits): so does the emulator.
        self.next_sequence = self.next_sequence.max(FIRST_SEQUENCE) + 1;
        m.sequence = self.next_sequence;
        self.messages.insert(m.sequence, m);
    }

    /// The message `id` (a sequence number or a message id) locked by `token`
    /// with its lock still valid.
    fn locked(&mut self, id: &str, token: &str, now: DateTime<Utc>) -> Option<&mut Message> {
        let sequence = match id.parse::<i64>() {
            Ok(s) if self.messages.contains_key(&s) => s,
            _ => {
                *self
                    .messages
                    .iter()
                    .find(|(_, m)| {
                        m.lock.as_ref().is_some_and(|l| l.token == token) && m.message_id == id
                    })?
                    .0
            }
        };
        let m = self.messages.get_mut(&sequence)?;
        let valid = m
            .lock
            .as_ref()
            .is_some_and(|l| l.token.eq_ignore_ascii_case(token) && l.until > now);
        valid.then_some(m)
    }
}

/// Duplicate detection: message ids seen within the window.
#[derive(Debug, Default)]
pub(crate) struct Dedup {
    seen: HashMap<String, DateTime<Utc>>,
}

impl Dedup {
    /// Whether `id` was seen within `window`; records it.
    fn seen(&mut self, id: &str, window: Duration, now: DateTime<Utc>) -> bool {
        if self.seen.len() > 100_000 {
            self.seen
                .retain(|_, at| now - *at < chrono_duration(window));
        }
        match self.seen.get(id) {
            Some(at) if now - *at < chrono_duration(window) => true,
            _ => {
                self.seen.insert(id.to_owned(), now);
                false
            }
        }
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A queue or a subscription: its messages and its dead-letter subqueue.
#[derive(Debug)]
pub(crate) struct Queue {
    pub options: QueueOptions,
    pub main: Store,
    pub dead: Store,
    dedup: Dedup,
}

/// Why a message left its queue for the dead-letter subqueue.
const MAX_DELIVERY: &str = "MaxDeliveryCountExceeded";
const EXPIRED: &str = "TTLExpiredException";

/// Applies what time has done to `m`: an ended lock, an expiry. Returns
/// whether the message leaves the queue (and why, for the dead-letter
/// subqueue; `None` reason: it is dropped).
fn due(
    options: &QueueOptions,
    m: &mut Message,
    now: DateTime<Utc>,
) -> Option<Option<&'static str>> {
    if m.lock.as_ref().is_some_and(|l| l.until <= now) {
        m.lock = None;
        if m.delivery_count >= options.max_delivery_count {
            return Some(Some(MAX_DELIVERY));
        }
    }
    if m.lock.is_none() && m.expires.is_some_and(|t| t <= now) {
        return Some(options.dead_letter_on_expiration.then_some(EXPIRED));
    }
    None
}

impl Queue {
    pub fn new(options: QueueOptions) -> Self {
        Queue {
            options,
            main: Store::default(),
            dead: Store::default(),
            dedup: Dedup::default(),
        }
    }

    /// Enqueues a message (after this queue's duplicate detection where
    /// `dedup` says it applies here). Returns false when it was a duplicate.
    pub fn enqueue(&mut self, incoming: &Incoming, dedup: bool, now: DateTime<Utc>) -> bool {
        let message_id = incoming.message_id.clone().unwrap_or_else(token);
        if let (true, Some(window)) = (dedup, self.options.duplicate_detection)
            && self.dedup.seen(&message_id, window, now)
        {
            return false;
        }
        let ttl = match (incoming.time_to_live, self.options.default_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let available = incoming.scheduled.filter(|t| *t > now).unwrap_or(now);
        self.main.push(Message {
            sequence: 0,
            message_id,
            body: incoming.body.clone(),
            content_type: incoming.content_type.clone(),
            properties: incoming.properties.clone(),
            user: incoming.user.clone(),
            enqueued: now,
            available,
            expires: ttl.map(|t| available + chrono_duration(t)),
            time_to_live: ttl.unwrap_or(Duration::from_secs(10_675_199 * 86_400)),
            delivery_count: 0,
            lock: None,
        });
        true
    }

    fn dead_letter(&mut self, mut m: Message, reason: &str, description: &str) {
        m.lock = None;
        m.expires = None;
        m.user
            .insert("DeadLetterReason".into(), Value::String(reason.to_owned()));
        m.user.insert(
            "DeadLetterErrorDescription".into(),
            Value::String(description.to_owned()),
        );
        self.dead.push(m);
    }

    fn leave(&mut self, sequence: i64, reason: Option<&str>) {
        if let Some(m) = self.main.messages.remove(&sequence)
            && let Some(reason) = reason
        {
            let description = match reason {
                MAX_DELIVERY => format!(
                    "Message could not be consumed after {} delivery attempts.",
                    self.options.max_delivery_count
                ),
                _ => "The message expired and was dead lettered.".to_owned(),
            };
            self.dead_letter(m, reason, &description);
        }
    }

    /// Applies time to every message (for counts).
    pub fn sweep(&mut self, now: DateTime<Utc>) {
        let options = &self.options;
        let leaving: Vec<(i64, Option<&'static str>)> = self
            .main
            .messages
            .values_mut()
            .filter_map(|m| due(options, m, now).map(|reason| (m.sequence, reason)))
            .collect();
        for (s, reason) in leaving {
            self.leave(s, reason);
        }
    }

    /// Locks the first available message of the main queue or the
    /// dead-letter subqueue, counting a delivery.
    pub fn peek_lock(&mut self, dead: bool, now: DateTime<Utc>) -> Option<Message> {
        let lock_for = chrono_duration(self.options.lock_duration);
        if dead {
            // Dead letters are never dead-lettered again or expired.
            let m = self
                .dead
                .messages
                .values_mut()
                .find(|m| m.lock.as_ref().is_none_or(|l| l.until <= now))?;
            m.delivery_count += 1;
            m.lock = Some(Lock {
                token: token(),
                until: now + lock_for,
            });
            return Some(m.clone());
        }
        let mut leaving = Vec::new();
        let mut found = None;
        // Walks from the head, stopping at the first free message.
        let options = &self.options;
        for m in self.main.messages.values_mut() {
            match due(options, m, now) {
                Some(reason) => leaving.push((m.sequence, reason)),
                None if m.lock.is_none() && m.available <= now => {
                    found = Some(m.sequence);
                    break;
                }
                None => {}
            }
        }
        for (s, reason) in leaving {
            self.leave(s, reason);
        }
        let m = self.main.messages.get_mut(&found?)?;
        m.delivery_count += 1;
        m.lock = Some(Lock {
            token: token(),
            until: now + lock_for,
        });
        Some(m.clone())
    }

    /// Removes the first available message (Receive and Delete).
    pub fn receive_and_delete(&mut self, dead: bool, now: DateTime<Utc>) -> Option<Message> {
        let m = self.peek_lock(dead, now)?;
        let store = if dead { &mut self.dead } else { &mut self.main };
        store.messages.remove(&m.sequence)
    }

    fn store(&mut self, dead: bool) -> &mut Store {
        if dead { &mut self.dead } else { &mut self.main }
    }

    /// Completes a locked message. False: no such message under that lock.
    pub fn complete(&mut self, dead: bool, id: &str, lock: &str, now: DateTime<Utc>) -> bool {
        let store = self.store(dead);
        let Some(sequence) = store.locked(id, lock, now).map(|m| m.sequence) else {
            return false;
        };
        store.messages.remove(&sequence);
        true
    }

    /// Unlocks a locked message; it is dead-lettered if it used up its deliveries.
    pub fn unlock(&mut self, dead: bool, id: &str, lock: &str, now: DateTime<Utc>) -> bool {
        let max = self.options.max_delivery_count;
        let store = self.store(dead);
        let Some(m) = store.locked(id, lock, now) else {
            return false;
        };
        m.lock = None;
        let (sequence, exhausted) = (m.sequence, m.delivery_count >= max);
        if exhausted && !dead {
            self.leave(sequence, Some(MAX_DELIVERY));
        }
        true
    }

    /// Renews a lock for another lock duration; returns the new expiry.
    pub fn renew(
        &mut self,
        dead: bool,
        id: &str,
        lock: &str,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let until = now + chrono_duration(self.options.lock_duration);
        let m = self.store(dead).locked(id, lock, now)?;
        if let Some(l) = m.lock.as_mut() {
            l.until = until;
        }
        Some(until)
    }
}

/// A topic: duplicate detection at the topic, a copy per subscription.
#[derive(Debug)]
pub(crate) struct Topic {
    pub options: TopicOptions,
    pub subscriptions: HashMap<String, Queue>,
    dedup: Dedup,
}

impl Topic {
    pub fn new(options: TopicOptions) -> Self {
        Topic {
            options,
            subscriptions: HashMap::new(),
            dedup: Dedup::default(),
        }
    }

    /// Copies the message to every subscription, unless it is a duplicate.
    pub fn publish(&mut self, incoming: &Incoming, now: DateTime<Utc>) {
        if let (Some(window), Some(id)) = (self.options.duplicate_detection, &incoming.message_id)
            && self.dedup.seen(id, window, now)
        {
            return;
        }
        for sub in self.subscriptions.values_mut() {
            sub.enqueue(incoming, false, now);
        }
    }
}

/// Where a request goes.
pub(crate) enum Target<'a> {
    /// A queue or subscription (`dead`: its dead-letter subqueue).
    Receiver(&'a mut Queue, bool),
    /// A topic: send only.
    Topic(&'a mut Topic),
}

/// Why a path names nothing.
pub(crate) enum Missing {
    /// No such entity.
    Gone,
    /// The entity cannot do that (receiving from a topic, sending to a subqueue).
    Invalid,
}

/// The queue (or subscription) and subqueue an entity path names.
pub(crate) fn resolve<'a>(
    entities: &'a mut HashMap<String, Entity>,
    path: &str,
) -> Result<(&'a mut Queue, bool), Missing> {
    match target(entities, path)? {
        Target::Receiver(q, dead) => Ok((q, dead)),
        Target::Topic(_) => Err(Missing::Invalid),
    }
}

/// What an entity path (`q`, `q/$DeadLetterQueue`, `t`,
/// `t/subscriptions/s`, `t/subscriptions/s/$DeadLetterQueue`) names.
/// Service Bus names are case-insensitive.
pub(crate) fn target<'a>(
    entities: &'a mut HashMap<String, Entity>,
    path: &str,
) -> Result<Target<'a>, Missing> {
    let path = path.trim_matches('/').to_ascii_lowercase();
    let mut parts: Vec<&str> = path.split('/').collect();
    let dead = parts.last() == Some(&"$deadletterqueue");
    if dead {
        parts.pop();
    }
    let Some(entity) = entities.get_mut(parts[0]) else {
        return Err(Missing::Gone);
    };
    match (parts.as_slice(), entity) {
        ([_], Entity::Queue(q)) => Ok(Target::Receiver(q, dead)),
        ([_], Entity::Topic(t)) => {
            if dead {
                Err(Missing::Invalid)
            } else {
                Ok(Target::Topic(t))
            }
        }
        ([_, "subscriptions", sub], Entity::Topic(t)) => t
            .subscriptions
            .get_mut(*sub)
            .map(|q| Target::Receiver(q, dead))
            .ok_or(Missing::Gone),
        _ => Err(Missing::Invalid),
    }
}
