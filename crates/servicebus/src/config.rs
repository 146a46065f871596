//! Configuration, as it appears in the bridge's TOML under
//! `[endpoints.<name>.servicebus]`. Unknown keys are errors. The SAS key is
//! never in the file: it is read from an environment variable.

use std::time::Duration;

use serde::Deserialize;

/// Environment variable read for the SAS key unless `sas_key_env` names another.
pub const DEFAULT_KEY_ENV: &str = "CAUSEWAY_SERVICEBUS_SAS_KEY";

/// A Service Bus namespace: any number of queues, topics and subscriptions.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceBusConfig {
    /// Namespace name (`finbank-prod`) or host (`finbank-prod.servicebus.windows.net`).
    /// Unset: taken from the connection string.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Shared access policy the key belongs to. Unset: from the connection string.
    #[serde(default)]
    pub sas_policy: Option<String>,
    /// Environment variable holding the policy's key (default
    /// `CAUSEWAY_SERVICEBUS_SAS_KEY`).
    #[serde(default)]
    pub sas_key_env: Option<String>,
    /// Environment variable holding a whole connection string
    /// (`Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=..;SharedAccessKey=..`),
    /// instead of `namespace`, `sas_policy` and the key variable.
    #[serde(default)]
    pub connection_string_env: Option<String>,
    /// The key itself, for programs that hold it already. Never read from
    /// config files and never printed.
    #[serde(skip)]
    pub sas_key: Option<String>,
    /// Where requests go instead of `https://<namespace>.servicebus.windows.net`,
    /// e.g. `http://127.0.0.1:9354` for an emulator or a proxy. Requests are
    /// still signed for the namespace's own URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Publishing settings.
    #[serde(default)]
    pub publish: PublishConfig,
    /// The queue or subscription consumed; needed only where this endpoint is a source.
    #[serde(default)]
    pub receive: Option<ReceiveConfig>,
    /// Largest message and largest send request, in bytes: 256 KiB on the
    /// Standard tier, 1 MiB on Premium over the REST API this adapter
    /// speaks (larger messages are AMQP-only), which is also the most
    /// accepted here.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The entities have duplicate detection on (`RequiresDuplicateDetection`):
    /// a re-sent event id is dropped by Service Bus within its window. The
    /// REST API cannot read entity settings, so this is declared here.
    #[serde(default)]
    pub duplicate_detection: bool,
    /// The entities are partitioned (`EnablePartitioning`): Service Bus
    /// refuses a batch whose messages belong to different partitions (by
    /// `PartitionKey`, else `SessionId`, else `MessageId` where duplicates
    /// are detected), so each request holds one partition's messages.
    /// Declared here, as the REST API cannot read entity settings.
    #[serde(default)]
    pub partitioned: bool,
    /// Longest any one call may take before it is reported as a (temporary)
    /// timeout. Long polls add their wait to this.
    #[serde(
        default = "default_call_timeout",
        with = "causeway_core::duration::positive"
    )]
    pub call_timeout: Duration,
}

// Never print the key.
impl std::fmt::Debug for ServiceBusConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusConfig")
            .field("namespace", &self.namespace)
            .field("sas_policy", &self.sas_policy)
            .field("sas_key_env", &self.sas_key_env)
            .field("connection_string_env", &self.connection_string_env)
            .field("sas_key", &self.sas_key.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .field("publish", &self.publish)
            .field("receive", &self.receive)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("duplicate_detection", &self.duplicate_detection)
            .field("partitioned", &self.partitioned)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}

/// The REST API takes messages (and requests) of at most 1 MiB on any tier.
pub(crate) const REST_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

fn default_max_message_bytes() -> usize {
    256 * 1024
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Which broker property carries the event's key.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyProperty {
    /// Only the `cloudEvents_partitionkey` custom property.
    #[default]
    None,
    /// Also `PartitionKey` (partitioned entities keep a key on one partition).
    PartitionKey,
    /// Also `SessionId` (session-enabled entities).
    SessionId,
}

/// Publishing settings.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Queue or topic used when a route gives no destination.
    #[serde(default)]
    pub default_entity: Option<String>,
    /// Send calls (JSON batches) in flight per publish.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// Times a batch that failed temporarily is sent again within one
    /// publish before its events are reported failed.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Where the event key goes besides its custom property.
    #[serde(default)]
    pub key_property: KeyProperty,
}

fn default_in_flight() -> usize {
    8
}

fn default_retries() -> usize {
    3
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            default_entity: None,
            in_flight: default_in_flight(),
            retries: default_retries(),
            key_property: KeyProperty::None,
        }
    }
}

/// The queue or subscription a consumer reads, with peek-lock.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiveConfig {
    /// Queue, or topic when `subscription` is set.
    pub entity: String,
    /// Subscription of the topic `entity`.
    #[serde(default)]
    pub subscription: Option<String>,
    /// Peek-lock requests in flight at once (each returns one message).
    #[serde(default = "default_receives")]
    pub receives_in_flight: usize,
    /// Long-poll wait of one peek-lock request.
    #[serde(
        default = "default_long_poll",
        with = "causeway_core::duration::positive"
    )]
    pub long_poll: Duration,
    /// How long a delivery handed out by `next_batch` keeps its lock renewed
    /// while it is processed. After this (a handler that hangs, a ticket
    /// dropped unsettled) the lock runs out and Service Bus delivers the
    /// message again. Messages still buffered are renewed until handed out,
    /// and unlocked at once when the consumer closes. Zero: no renewal.
    #[serde(default = "default_max_processing", with = "humantime_serde")]
    pub max_processing: Duration,
    /// Queue or topic `reject` sends a copy to, with the reason, before
    /// completing the original. Unset: `reject` is unsupported (the REST API
    /// cannot dead-letter), and a message that keeps failing reaches the
    /// entity's own `$DeadLetterQueue` after `MaxDeliveryCount` deliveries.
    #[serde(default)]
    pub dead_letter_entity: Option<String>,
}

fn default_receives() -> usize {
    8
}

fn default_long_poll() -> Duration {
    Duration::from_secs(30)
}

fn default_max_processing() -> Duration {
    Duration::from_secs(15 * 60)
}

impl ReceiveConfig {
    /// A queue (or, with [`Self::subscription`], a topic) with default settings.
    pub fn entity(entity: impl Into<String>) -> Self {
        ReceiveConfig {
            entity: entity.into(),
            subscription: None,
            receives_in_flight: default_receives(),
            long_poll: default_long_poll(),
            max_processing: default_max_processing(),
            dead_letter_entity: None,
        }
    }

    /// The entity path received from: `queue` or `topic/subscriptions/sub`.
    pub fn path(&self) -> String {
        match &self.subscription {
            Some(sub) => format!("{}/subscriptions/{sub}", self.entity),
            None => self.entity.clone(),
        }
    }
}

impl ServiceBusConfig {
    /// A config for `namespace` and `sas_policy` with every other setting at
    /// its default (the key from `CAUSEWAY_SERVICEBUS_SAS_KEY`).
    pub fn new(namespace: impl Into<String>, sas_policy: impl Into<String>) -> Self {
        ServiceBusConfig {
            namespace: Some(namespace.into()),
            sas_policy: Some(sas_policy.into()),
            sas_key_env: None,
            connection_string_env: None,
            sas_key: None,
            endpoint: None,
            publish: PublishConfig::default(),
            receive: None,
            max_message_bytes: default_max_message_bytes(),
            duplicate_detection: false,
            partitioned: false,
            call_timeout: default_call_timeout(),
        }
    }
}

impl ServiceBusConfig {
    /// A config that sends to `endpoint` (an emulator or a proxy) for
    /// `namespace`, with the policy's key given directly.
    pub fn at_endpoint(
        namespace: impl Into<String>,
        sas_policy: impl Into<String>,
        sas_key: impl Into<String>,
        endpoint: impl Into<String>,
    ) -> Self {
        ServiceBusConfig {
            sas_key: Some(sas_key.into()),
            endpoint: Some(endpoint.into()),
            ..ServiceBusConfig::new(namespace, sas_policy)
        }
    }
}

/// The parts of a connection string causeway uses.
#[derive(PartialEq, Eq)]
pub(crate) struct ConnectionString {
    pub namespace: String,
    pub policy: String,
    pub key: String,
}

impl ConnectionString {
    /// Parses `Endpoint=sb://<ns>.servicebus.windows.net/;SharedAccessKeyName=..;SharedAccessKey=..`.
    /// The error names the missing part, never the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (mut endpoint, mut policy, mut key) = (None, None, None);
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            match name.to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value),
                "sharedaccesskeyname" => policy = Some(value),
                "sharedaccesskey" => key = Some(value),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("the connection string has no Endpoint")?;
        let host = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest)
            .trim_end_matches('/');
        Ok(ConnectionString {
            namespace: namespace_of(host),
            policy: policy
                .ok_or("the connection string has no SharedAccessKeyName")?
                .to_owned(),
            key: key
                .ok_or("the connection string has no SharedAccessKey")?
                .to_owned(),
        })
    }
}

/// `ns` from `ns` or `ns.servicebus.windows.net`.
pub(crate) fn namespace_of(name_or_host: &str) -> String {
    name_or_host
        .split('.')
        .next()
        .unwrap_or(name_or_host)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_parse_and_never_show_the_key() {
        let c = ConnectionString::parse(
            "Endpoint=sb://finbank.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=abc=",
        )
        .expect("parses");
        assert_eq!(
            (c.namespace.as_str(), c.policy.as_str(), c.key.as_str()),
            ("finbank", "send", "abc=")
        );
        let err = ConnectionString::parse("Endpoint=sb://x/;SharedAccessKeyName=p")
            .err()
            .expect("no key");
        assert!(err.contains("SharedAccessKey"), "{err}");
        let mut config = ServiceBusConfig::new("ns", "p");
        config.sas_key = Some("very-secret".into());
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
