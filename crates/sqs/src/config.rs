//! Configuration, as it appears in the bridge's TOML under
//! `[endpoints.<name>.sqs]`. Unknown keys are errors.

use std::time::Duration;

use serde::Deserialize;

/// An SQS endpoint: one account and region, any number of queues.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    /// AWS region, e.g. `eu-west-1`. Unset: the standard chain (`AWS_REGION`,
    /// the profile).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override, e.g. `http://127.0.0.1:4566` for an emulator or a
    /// VPC endpoint. Unset: the region's public endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Explicit credentials. Unset: the standard AWS chain (environment,
    /// profile, web identity, container and instance metadata).
    #[serde(default)]
    pub credentials: Option<StaticCredentials>,
    /// Publishing settings.
    #[serde(default)]
    pub publish: PublishConfig,
    /// The queue consumed from; needed only where this endpoint is a source.
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    /// Largest message sent, in bytes as SQS counts them (body plus
    /// attribute names, types and values). 256 KiB is the default
    /// `MaximumMessageSize` of a queue; AWS allows up to 1 MiB where the
    /// queue is configured for it.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Create queues that do not exist (with the FIFO attributes where the
    /// name ends in `.fifo`) instead of failing. Meant for tests and demos;
    /// production queues are infrastructure.
    #[serde(default)]
    pub create_queues: bool,
    /// Longest any one SQS call may take before it is reported as a
    /// (temporary) timeout. Long polls add their wait to this.
    #[serde(
        default = "default_call_timeout",
        with = "causeway_core::duration::positive"
    )]
    pub call_timeout: Duration,
}

/// Credentials given in config (put the secret in through `${ENV}`).
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
}

// Never print the secret.
impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn default_max_message_bytes() -> usize {
    256 * 1024
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Publishing settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Queue (name or URL) used when a route gives no destination.
    #[serde(default)]
    pub default_queue: Option<String>,
    /// `SendMessageBatch` calls (of up to 10 messages) in flight per publish.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// Times an entry that failed temporarily (throttled, internal error) is
    /// sent again within one publish before it is reported failed.
    #[serde(default = "default_entry_retries")]
    pub entry_retries: usize,
}

fn default_in_flight() -> usize {
    16
}

fn default_entry_retries() -> usize {
    3
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            default_queue: None,
            in_flight: default_in_flight(),
            entry_retries: default_entry_retries(),
        }
    }
}

/// The queue a consumer reads.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name or URL. A name ending in `.fifo` is a FIFO queue.
    pub name: String,
    /// Long-poll wait of one receive (`WaitTimeSeconds`, at most 20 s).
    #[serde(
        default = "default_long_poll",
        with = "causeway_core::duration::positive"
    )]
    pub long_poll: Duration,
    /// Receives (of up to 10 messages each) in flight at once.
    #[serde(default = "default_receives")]
    pub receives_in_flight: usize,
    /// Visibility timeout asked for on receive and on each extension.
    #[serde(
        default = "default_visibility",
        with = "causeway_core::duration::positive"
    )]
    pub visibility_timeout: Duration,
    /// How long a delivery handed out by `next_batch` is kept invisible by
    /// extending its visibility while it is being processed. After this
    /// (a handler that hangs, a ticket dropped unsettled) SQS makes it
    /// visible again one `visibility_timeout` later. Messages still in the
    /// consumer's buffer are extended until handed out, and made visible at
    /// once when the consumer closes. Zero turns the extender off.
    #[serde(default = "default_max_processing", with = "humantime_serde")]
    pub max_processing: Duration,
    /// Queue (name or URL) `reject` sends a copy to, with the reason. Unset:
    /// the queue's own redrive policy's dead-letter queue, if it has one.
    #[serde(default)]
    pub dead_letter_queue: Option<String>,
}

fn default_long_poll() -> Duration {
    Duration::from_secs(20)
}

fn default_receives() -> usize {
    4
}

fn default_visibility() -> Duration {
    Duration::from_secs(30)
}

fn default_max_processing() -> Duration {
    Duration::from_secs(15 * 60)
}

impl QueueConfig {
    /// A queue with the default settings.
    pub fn named(name: impl Into<String>) -> Self {
        QueueConfig {
            name: name.into(),
            long_poll: default_long_poll(),
            receives_in_flight: default_receives(),
            visibility_timeout: default_visibility(),
            max_processing: default_max_processing(),
            dead_letter_queue: None,
        }
    }
}

impl SqsConfig {
    /// A config for `region` with every other setting at its default.
    pub fn new(region: impl Into<String>) -> Self {
        SqsConfig {
            region: Some(region.into()),
            endpoint: None,
            credentials: None,
            publish: PublishConfig::default(),
            queue: None,
            max_message_bytes: default_max_message_bytes(),
            create_queues: false,
            call_timeout: default_call_timeout(),
        }
    }
}

/// Whether a queue name or URL names a FIFO queue.
pub(crate) fn is_fifo(name_or_url: &str) -> bool {
    name_or_url.ends_with(".fifo")
}
