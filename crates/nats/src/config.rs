//! Configuration, as it appears in the bridge's TOML under
//! `[endpoints.<name>.nats]`. Unknown keys are errors.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A JetStream endpoint: where the server is, the stream, and how to
/// publish and consume. `Debug` hides passwords and tokens.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// How to authenticate; none by default.
    #[serde(default)]
    pub auth: Auth,
    /// TLS settings; plain TCP unless set.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// The stream events are published to and consumed from.
    pub stream: StreamConfig,
    /// Publishing settings.
    #[serde(default)]
    pub publish: PublishConfig,
    /// Consuming settings; needed only where this endpoint is a source.
    #[serde(default)]
    pub consumer: Option<ConsumerConfig>,
}

/// Authentication. Secrets come from `${ENV}` substitution in the bridge's
/// config, never from a literal in a committed file; `Debug` hides them.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "method")]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// A token.
    Token {
        /// The token.
        token: String,
    },
    /// User and password.
    UserPassword {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// An NKey seed.
    Nkey {
        /// The seed (starts with `SU`).
        seed: String,
    },
    /// A `.creds` file (JWT and NKey).
    Credentials {
        /// Path of the file.
        path: PathBuf,
    },
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &causeway_core::redact::url(&self.url))
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("stream", &self.stream)
            .field("publish", &self.publish)
            .field("consumer", &self.consumer)
            .finish()
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use causeway_core::redact::REDACTED;
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token { .. } => f.debug_struct("Token").field("token", &REDACTED).finish(),
            Auth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &REDACTED)
                .finish(),
            Auth::Nkey { .. } => f.debug_struct("Nkey").field("seed", &REDACTED).finish(),
            Auth::Credentials { path } => {
                f.debug_struct("Credentials").field("path", path).finish()
            }
        }
    }
}

/// TLS to the server.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of CA certificates to trust, beside the built-in roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// The JetStream stream. Created with these settings when missing; when it
/// exists, its subjects must include these and its duplicate window must match.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream name.
    pub name: String,
    /// Subjects the stream captures, e.g. `["transactions.>"]`. Include the
    /// dead-letter subject if it should be kept in the same stream.
    pub subjects: Vec<String>,
    /// Window in which a re-sent `Nats-Msg-Id` is dropped.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long messages are kept; zero keeps them until limits say otherwise.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Duration,
    /// Keep messages in memory instead of files (tests only: not durable).
    #[serde(default)]
    pub memory_storage: bool,
}

fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

/// Publishing settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Subject used when a route gives no destination.
    #[serde(default)]
    pub default_subject: Option<String>,
    /// How long to wait for a PubAck (and for a JetStream API reply).
    #[serde(
        default = "default_ack_timeout",
        with = "causeway_core::duration::positive"
    )]
    pub ack_timeout: Duration,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            default_subject: None,
            ack_timeout: default_ack_timeout(),
        }
    }
}

/// A durable pull consumer.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Durable name: instances with the same name share the work.
    pub durable: String,
    /// Only messages on this subject (wildcards allowed); all of the stream when unset.
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// An unacked delivery is redelivered after this long.
    #[serde(
        default = "default_ack_wait",
        with = "causeway_core::duration::positive"
    )]
    pub ack_wait: Duration,
    /// Deliveries before the server gives up on a message; -1 for no limit.
    #[serde(default = "default_max_deliver")]
    pub max_deliver: i64,
    /// Where `reject` sends messages, with the reason in headers.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
    /// Where a new consumer starts; ignored when it exists (the server keeps its position).
    #[serde(default)]
    pub start: Start,
    /// Most messages fetched ahead of `next_batch` (also bounded by the
    /// batch size asked for: prefetched messages count against `ack_wait`).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// How long a delivery handed out and not settled is kept from
    /// redelivery with in-progress acks. After this (a handler that hangs,
    /// a ticket dropped unsettled) the server redelivers it one `ack_wait`
    /// later. Zero: no in-progress acks.
    #[serde(default = "default_max_processing", with = "humantime_serde")]
    pub max_processing: Duration,
}

fn default_max_processing() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_max_deliver() -> i64 {
    -1
}

fn default_prefetch() -> usize {
    512
}

/// Where a new consumer starts reading, for replay.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Start {
    /// The first message in the stream.
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
    /// From this stream sequence.
    Sequence(u64),
    /// From the first message published at or after this RFC 3339 time.
    Time(String),
}
