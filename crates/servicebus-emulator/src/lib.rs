//! An Azure Service Bus **emulator** speaking the REST data-plane protocol,
//! in process, for tests and demos on machines without Azure (Microsoft's
//! own emulator is a Docker image that speaks AMQP only).
//!
//! It follows Microsoft's published Service Bus REST API: Send Message, Send
//! Message Batch (`application/vnd.microsoft.servicebus.json`), Peek-Lock
//! (with `?timeout=` long polling), Receive and Delete, Unlock, Delete
//! (complete) and Renew-Lock, on queues, topics and subscriptions, and their
//! `$DeadLetterQueue` subqueues. Behind the protocol it models what an
//! adapter must cope with:
//!
//! - SAS authorization: the `SharedAccessSignature` token is verified
//!   (HMAC-SHA256 over the resource URI and expiry with the policy's key, the
//!   resource covering the entity, not expired); anything else is `401`.
//! - Peek-lock with the entity's lock duration, renewal, unlock; an expired
//!   lock makes the message available again with its delivery count kept.
//! - A message whose delivery count reached `MaxDeliveryCount` when its lock
//!   ends (unlock or expiry) moves to the dead-letter subqueue with
//!   `DeadLetterReason: MaxDeliveryCountExceeded`.
//! - Duplicate detection on `MessageId` within the entity's window: a
//!   re-sent message is accepted (`201`) and dropped, as Service Bus does.
//! - Topics copy each message to every subscription.
//! - `ScheduledEnqueueTimeUtc` holds a message back; `TimeToLive` (and the
//!   entity's default) expires it, into the dead-letter subqueue where the
//!   entity says so.
//! - Size limits per message and per request (`403`, as the service), and
//!   the quotas on ids and properties (`400` for the whole request).
//! - Access rights per SAS policy (Send, Listen, Manage): a token of a
//!   policy without the right an operation needs is `401`.
//! - Session-enabled queues (`requires_session`): a message without a
//!   `SessionId` is refused, and REST cannot receive from them (`405`).
//! - A busy namespace ([`ServiceBusEmulator::busy_for`]): sends are answered
//!   `503` for a while, as Service Bus throttles.
//! - An entity's size quota (`max_size_bytes`): a send past it is `403`.
//! - Sequence numbers past 32 bits (from 2^40), as real namespaces have.
//! - Partitioned entities (`partitioned`): a batch whose messages would go
//!   to different partitions is refused (`400`).
//!
//! Not modelled: receiving from sessions, message deferral, forwarding,
//! filters on subscriptions, entity management over HTTP (entities are
//! created through this handle), partitions' own order and quotas, AMQP.

mod auth;
mod http;
mod rest;
mod store;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use rest::{Peeked, Rest};
use store::{Entity, Queue, Topic};
pub use store::{QueueOptions, TopicOptions};

/// Namespace name the emulator answers for unless told otherwise: clients
/// sign `https://{namespace}.servicebus.windows.net/...`.
pub const NAMESPACE: &str = "causeway-emulator";
/// The SAS policy every emulator has, with all rights.
pub const ROOT_POLICY: &str = "RootManageSharedAccessKey";
/// The key the emulator binary uses unless given another: well known, like
/// Azurite's, for local demos only (tests start emulators with random keys).
pub const DEV_KEY: &str = "Y2F1c2V3YXktZW11bGF0b3ItZGV2LWtleS1ub3Qtc2VjcmV0";

/// A running emulator on 127.0.0.1. Stops when dropped.
pub struct ServiceBusEmulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl std::fmt::Debug for ServiceBusEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusEmulator")
            .field("addr", &self.addr)
            .field("namespace", &self.shared.namespace)
            .finish_non_exhaustive()
    }
}

/// An access right of a SAS policy, as Service Bus grants them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Send to queues and topics.
    Send,
    /// Receive and settle from queues and subscriptions.
    Listen,
    /// Everything (implies Send and Listen).
    Manage,
}

/// A SAS policy: its key and rights.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub key: String,
    pub rights: Vec<Right>,
}

impl Policy {
    pub fn allows(&self, right: Right) -> bool {
        self.rights.contains(&right) || self.rights.contains(&Right::Manage)
    }
}

pub(crate) struct Shared {
    pub namespace: String,
    /// SAS policy name → key and rights.
    pub policies: Mutex<HashMap<String, Policy>>,
    /// Until when sends are answered "server busy".
    pub busy_until: Mutex<Option<tokio::time::Instant>>,
    /// Batches refused for mixing partitions.
    pub partition_refusals: std::sync::atomic::AtomicUsize,
    pub entities: Mutex<HashMap<String, Entity>>,
    /// Queues that do not exist are created on first use with these options.
    pub auto_create: Mutex<Option<QueueOptions>>,
    /// Woken on every change a waiting receive may care about.
    pub changed: Notify,
}

impl Shared {
    /// The entities; a queue named by `path` is created first where
    /// auto-creation is on.
    pub fn entities_for(&self, path: &str) -> MutexGuard<'_, HashMap<String, Entity>> {
        let mut entities = self.entities();
        let auto = self
            .auto_create
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(options) = auto {
            let name = path
                .trim_matches('/')
                .split('/')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            if !name.is_empty() && !entities.contains_key(&name) {
                entities.insert(name, Entity::Queue(Queue::new(options)));
            }
        }
        entities
    }

    pub fn entities(&self) -> MutexGuard<'_, HashMap<String, Entity>> {
        self.entities
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Whether sends are refused as "server busy" now.
    pub fn busy(&self) -> bool {
        self.busy_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| tokio::time::Instant::now() < until)
    }
}

impl ServiceBusEmulator {
    /// Starts an emulator for namespace [`NAMESPACE`] with policy
    /// [`ROOT_POLICY`] and a random key, on an ephemeral port.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(NAMESPACE, &[(ROOT_POLICY, &random_key())], 0).await
    }

    /// Starts an emulator for `namespace` with the given SAS policies
    /// (name, key) on `port` of 127.0.0.1 (0: any free port).
    pub async fn start_with(
        namespace: &str,
        policies: &[(&str, &str)],
        port: u16,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            namespace: namespace.to_ascii_lowercase(),
            policies: Mutex::new(
                policies
                    .iter()
                    .map(|(n, k)| {
                        let policy = Policy {
                            key: (*k).to_owned(),
                            rights: vec![Right::Manage],
                        };
                        ((*n).to_owned(), policy)
                    })
                    .collect(),
            ),
            busy_until: Mutex::default(),
            partition_refusals: std::sync::atomic::AtomicUsize::new(0),
            entities: Mutex::default(),
            auto_create: Mutex::default(),
            changed: Notify::new(),
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let app = http::router(shared.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "service bus emulator stopped");
            }
        });
        Ok(ServiceBusEmulator {
            addr,
            shared,
            server,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`: the endpoint override clients use.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The namespace it answers for.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// A SAS token of policy `name` for the whole namespace, valid for an
    /// hour, as any REST client signs one: for raw sends in tests, without
    /// a Service Bus client library.
    pub fn sas_token(&self, policy: &str) -> Option<String> {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let key = self.key(policy)?;
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let sr = encode(&format!(
            "https://{}.servicebus.windows.net/",
            self.shared.namespace
        ));
        let se = chrono::Utc::now().timestamp() + 3600;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).ok()?;
        mac.update(format!("{sr}\n{se}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        Some(format!(
            "SharedAccessSignature sr={sr}&sig={}&se={se}&skn={policy}",
            encode(&sig)
        ))
    }

    /// The key of SAS policy `name`, if the emulator has it.
    pub fn key(&self, policy: &str) -> Option<String> {
        self.shared.policy(policy).map(|p| p.key)
    }

    /// Adds SAS policy `name` with only `rights` (a random key, returned):
    /// a Send-only key, as least privilege gives a publisher.
    pub fn add_policy(&self, name: &str, rights: &[Right]) -> String {
        let key = random_key();
        let policy = Policy {
            key: key.clone(),
            rights: rights.to_vec(),
        };
        self.shared
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), policy);
        key
    }

    /// Replaces policy `name`'s key, as regenerating it in the portal does:
    /// tokens signed with any other key are refused (401) from then on.
    /// False when there is no such policy.
    pub fn set_key(&self, name: &str, key: &str) -> bool {
        let mut policies = self
            .shared
            .policies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match policies.get_mut(name) {
            Some(policy) => {
                key.clone_into(&mut policy.key);
                true
            }
            None => false,
        }
    }

    /// How many batches a partitioned entity refused for mixing partitions.
    pub fn partition_refusals(&self) -> usize {
        self.shared
            .partition_refusals
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers sends with `503 Server Busy` for `period`, as a throttled
    /// namespace does.
    pub fn busy_for(&self, period: Duration) {
        *self
            .shared
            .busy_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(tokio::time::Instant::now() + period);
    }

    /// A connection string for the root policy, as the Azure portal shows
    /// one (the `Endpoint` names the namespace; clients still need the
    /// emulator's URL as their endpoint override).
    pub fn connection_string(&self) -> String {
        format!(
            "Endpoint=sb://{}.servicebus.windows.net/;SharedAccessKeyName={ROOT_POLICY};SharedAccessKey={}",
            self.shared.namespace,
            self.key(ROOT_POLICY).unwrap_or_default()
        )
    }

    /// Creates a queue with `options` whenever a request names one that does
    /// not exist (for demos; Service Bus answers 410 instead).
    pub fn auto_create_queues(&self, options: QueueOptions) {
        *self
            .shared
            .auto_create
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(options);
    }

    /// Creates (or replaces) queue `name`.
    pub fn create_queue(&self, name: &str, options: QueueOptions) {
        self.shared.entities().insert(
            name.to_ascii_lowercase(),
            Entity::Queue(Queue::new(options)),
        );
    }

    /// Creates (or replaces) topic `name` with subscriptions (name, options).
    pub fn create_topic(
        &self,
        name: &str,
        options: TopicOptions,
        subscriptions: &[(&str, QueueOptions)],
    ) {
        let mut topic = Topic::new(options);
        for (sub, opts) in subscriptions {
            topic
                .subscriptions
                .insert(sub.to_ascii_lowercase(), Queue::new(opts.clone()));
        }
        self.shared
            .entities()
            .insert(name.to_ascii_lowercase(), Entity::Topic(topic));
    }

    /// Messages in an entity path (`queue`, `queue/$DeadLetterQueue`,
    /// `topic/subscriptions/sub`, ...) that are available or locked, after
    /// expiring what is due; `None` for an unknown path.
    pub fn message_count(&self, path: &str) -> Option<usize> {
        let mut entities = self.shared.entities();
        let (queue, dead) = store::resolve(&mut entities, path).ok()?;
        let now = chrono::Utc::now();
        queue.sweep(now);
        Some(if dead {
            queue.dead.len()
        } else {
            queue.main.len()
        })
    }
}

impl Drop for ServiceBusEmulator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A random 32-byte key, base64, as Azure generates SAS keys.
pub fn random_key() -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..32).map(|_| fastrand::u8(..)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Lock tokens and generated message ids: UUID-shaped, random.
fn token() -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u16(..0x1000),
        fastrand::u16(0x8000..0xc000),
        fastrand::u64(..1 << 48)
    )
}

/// Default lock duration of a new entity, as Service Bus's (1 minute).
pub(crate) const DEFAULT_LOCK: Duration = Duration::from_secs(60);
