//! The bridge's one TOML file: endpoints, the store, routes, metrics.
//!
//! `${VAR}` (or `${VAR:-default}`) is replaced from the environment before
//! parsing, so secrets stay out of the file. Unknown keys and wrong types
//! are errors that name the file, the line and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where durable routes, dedup state and dead letters are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// The Prometheus and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Brokers by name; each has exactly one table naming its type.
    pub endpoints: BTreeMap<String, EndpointConfig>,
    /// Routes by name.
    pub routes: BTreeMap<String, RouteConfig>,
}

/// One broker endpoint: `[endpoints.NAME.TYPE]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum EndpointConfig {
    /// An in-process broker (tests, the quickstart).
    Memory(MemoryEndpoint),
    /// A source of synthetic FinBank transactions at a fixed rate (the quickstart).
    Generator(GeneratorEndpoint),
    /// Kafka (feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(causeway_kafka::KafkaConfig),
    /// NATS JetStream (feature `nats`).
    #[cfg(feature = "nats")]
    Nats(causeway_nats::NatsConfig),
    /// RabbitMQ (feature `rabbitmq`).
    #[cfg(feature = "rabbitmq")]
    Rabbitmq(causeway_rabbitmq::RabbitConfig),
    /// AWS SQS, standard or FIFO queues (feature `sqs`).
    #[cfg(feature = "sqs")]
    Sqs(causeway_sqs::SqsConfig),
    /// Azure Service Bus queues and topic subscriptions over REST (feature `servicebus`).
    #[cfg(feature = "servicebus")]
    Servicebus(causeway_servicebus::ServiceBusConfig),
}

impl EndpointConfig {
    /// The broker's name, as the config's table names it.
    pub fn kind(&self) -> &'static str {
        match self {
            EndpointConfig::Memory(_) => "memory",
            EndpointConfig::Generator(_) => "generator",
            #[cfg(feature = "kafka")]
            EndpointConfig::Kafka(_) => "kafka",
            #[cfg(feature = "nats")]
            EndpointConfig::Nats(_) => "nats",
            #[cfg(feature = "rabbitmq")]
            EndpointConfig::Rabbitmq(_) => "rabbitmq",
            #[cfg(feature = "sqs")]
            EndpointConfig::Sqs(_) => "sqs",
            #[cfg(feature = "servicebus")]
            EndpointConfig::Servicebus(_) => "servicebus",
        }
    }
}

/// The in-process broker.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryEndpoint {
    /// Topic consumed where this endpoint is a source.
    #[serde(default)]
    pub topic: Option<String>,
    /// Consumer group.
    #[serde(default = "default_group")]
    pub group: String,
}

fn default_group() -> String {
    "causeway".into()
}

/// Synthetic events: FinBank transactions with account keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorEndpoint {
    /// Events per second.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// Distinct account keys.
    #[serde(default = "default_keys")]
    pub keys: u32,
    /// Payload size in bytes.
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
}

fn default_rate() -> u32 {
    200
}
fn default_keys() -> u32 {
    100
}
fn default_payload() -> usize {
    256
}

/// The store: SQLite by default, PostgreSQL for several bridge instances.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// SQLite file (created if missing).
    #[serde(default)]
    pub sqlite: Option<PathBuf>,
    /// PostgreSQL (feature `postgres`): `{ url = "...", schema = "causeway" }`.
    #[serde(default)]
    pub postgres: Option<PostgresStoreConfig>,
    /// SQLite's page cache in MiB, all its connections together: what the
    /// store (a growing dedup table included) may hold in memory; 16 when
    /// unset. Refused beside `postgres`, where it would do nothing.
    #[serde(default)]
    pub sqlite_cache_mib: Option<u64>,
    /// Window in which a re-sent event id is recognised by the store.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Retention, applied periodically; never past a forwarder's cursor,
    /// never to dead letters unless they have their own.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
}

/// How much the store keeps.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete events stored longer ago than this.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Delete the oldest events while a stream holds more payload bytes than this.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// How often retention runs.
    #[serde(
        default = "default_retention_every",
        with = "causeway_core::duration::positive"
    )]
    pub every: Duration,
    /// Dead letters' own retention; without it they are kept. The limits
    /// above never delete a dead letter (its stream has no cursor).
    #[serde(default)]
    pub dead_letters: Option<DeadLetterRetention>,
}

/// How long dead letters are kept (`[store.retention.dead_letters]`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterRetention {
    /// Delete dead letters stored longer ago than this.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Delete the oldest dead letters while a route holds more payload bytes than this.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

fn default_retention_every() -> Duration {
    Duration::from_secs(300)
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            sqlite: None,
            postgres: None,
            sqlite_cache_mib: None,
            dedup_window: default_dedup_window(),
            retention: None,
        }
    }
}

impl StoreConfig {
    /// SQLite's page cache in MiB: as set, or 16.
    pub fn sqlite_cache_mib(&self) -> u64 {
        self.sqlite_cache_mib.unwrap_or(16)
    }

    /// With `postgres`, SQLite's settings would be silently unused: they
    /// are refused, naming the line where `text` has one.
    fn validate(&self, origin: &str, text: &str) -> Result<(), ConfigError> {
        if self.postgres.is_none() {
            return Ok(());
        }
        let unused = [
            ("sqlite", self.sqlite.is_some()),
            ("sqlite_cache_mib", self.sqlite_cache_mib.is_some()),
        ];
        for (key, set) in unused {
            if set {
                return Err(ConfigError(format!(
                    "{} store.{key}: a SQLite setting beside store.postgres, where it \
                     would do nothing; the store is PostgreSQL: remove it",
                    at(origin, text, &["store", key])
                )));
            }
        }
        Ok(())
    }
}

/// `origin:line:` of the key at `path` (`["routes", "r", "source"]`) in
/// `text`, however it is written (a table header, a dotted key, an inline
/// table), or of the deepest part of the path that is there; `origin:`
/// alone when `text` has none of it.
fn at(origin: &str, text: &str, path: &[&str]) -> String {
    use toml::de::{DeTable, DeValue};
    let Ok(document) = DeTable::parse(text) else {
        return format!("{origin}:");
    };
    let (mut table, mut found) = (document.get_ref(), None);
    for part in path {
        let Some((key, value)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *part) else {
            break;
        };
        found = Some(key.span().start);
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    match found {
        Some(offset) => format!("{origin}:{}:", text[..offset].matches('\n').count() + 1),
        None => format!("{origin}:"),
    }
}

fn default_dedup_window() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// PostgreSQL store settings. `Debug` hides the URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresStoreConfig {
    /// Connection URL.
    pub url: String,
    /// Schema holding causeway's tables.
    #[serde(default = "default_schema")]
    pub schema: String,
}

impl std::fmt::Debug for PostgresStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStoreConfig")
            .field("url", &causeway_core::redact::url(&self.url))
            .field("schema", &self.schema)
            .finish()
    }
}

fn default_schema() -> String {
    "causeway".into()
}

/// Metrics and health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; none when unset.
    #[serde(default)]
    pub listen: Option<String>,
    /// How often a summary line per route is logged (received, published,
    /// rate, latency, in flight). A route that holds events and finishes
    /// none for two minutes also logs a warning, and another when it moves.
    #[serde(
        default = "default_summary",
        with = "causeway_core::duration::positive"
    )]
    pub summary_every: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            summary_every: default_summary(),
        }
    }
}

fn default_summary() -> Duration {
    Duration::from_secs(5)
}

/// How a route hands events on.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Ack the source after the sink confirmed. Lowest latency.
    #[default]
    Direct,
    /// Ack the source once the event is in the store; a forwarder drains the
    /// store to the sink in order. A sink outage never stops the source.
    Durable,
}

/// One source → one sink (`sink`, `destination`) or several (`sinks`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Source endpoint name.
    pub source: String,
    /// Sink endpoint name (a route with one sink).
    #[serde(default)]
    pub sink: Option<String>,
    /// Destination template at the sink, e.g. `transactions-{key_hash % 10}`
    /// (a route with one sink).
    #[serde(default)]
    pub destination: Option<String>,
    /// Which events the sink takes (a route with one sink).
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    /// How fast the sink is sent to (a route with one sink).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The sinks of a route with several, by name: one source read, one
    /// store append, and per sink its own dedup, forwarder cursor, breaker,
    /// dead letters and metrics (`route/sink`).
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Direct or durable.
    #[serde(default)]
    pub mode: Mode,
    /// Most events taken from the source at once.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// How long a poll waits for the first event.
    #[serde(default = "default_linger", with = "causeway_core::duration::positive")]
    pub linger: Duration,
    /// Key shards publishing in parallel (direct mode): same key, same shard, source order.
    #[serde(default = "default_shards")]
    pub shards: usize,
    /// Batches queued per shard, and calls a shard has at the sink at once
    /// (each for keys with nothing else unconfirmed, unless the sink is
    /// pipelined): the in-flight window is about `in_flight` polls
    /// (`in_flight × batch_size` events). In durable mode, the pages a
    /// forwarder has at a pipelined sink at once.
    #[serde(default = "default_in_flight")]
    pub in_flight: usize,
    /// How long a claim lasts unrenewed: an instance's claim on an event
    /// (direct mode dedup) and, with a shared store, on forwarding the route
    /// (durable mode). After a crash another instance takes over within it;
    /// an instance paused past it finds itself fenced and stands down.
    #[serde(
        default = "default_claim_lease",
        with = "causeway_core::duration::positive"
    )]
    pub claim_lease: Duration,
    /// How long a handled event id is remembered (direct mode dedup).
    #[serde(
        default = "default_dedup_ttl",
        with = "causeway_core::duration::positive"
    )]
    pub dedup_ttl: Duration,
    /// Whether to deduplicate at all.
    #[serde(default = "yes")]
    pub dedup: bool,
    /// Sends a key's events one per round trip even to a sink that keeps a
    /// call's order (`ordered_publish`), so that not even a sink failing one
    /// message and taking the next of its key can reorder the key. Off by
    /// default: such a sink takes a key's events together, and the rare
    /// break is counted (`causeway_order_breaks`).
    #[serde(default)]
    pub strict_order: bool,
    /// Lets a key have several calls at the sink at once where the sink
    /// keeps the order of calls submitted one after another
    /// (`pipelined_order`: NATS, Kafka, RabbitMQ): across clouds a key then moves
    /// several calls per round trip instead of one. `false` keeps one call
    /// per key at the sink. A sink that fails one call's event and takes a
    /// later call's event of its key breaks the key's order: counted
    /// (`causeway_order_breaks`); `strict_order` rules it out.
    #[serde(default = "yes")]
    pub pipeline: bool,
    /// Retrying temporary failures.
    #[serde(default)]
    pub retry: RetryConfig,
    /// The sink's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Where poison events and permanent failures go.
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Which messages are read as CloudEvents: `auto` (those that are
    /// one), `cloudevents` (others are dead letters) or `raw` (none: every
    /// message carried byte for byte).
    #[serde(default)]
    pub format: causeway_core::InputFormat,
    /// How a raw message is known for dedup and the sink's own dedup:
    /// `auto`, `position`, `message-id`, `content` or `header:<name>`
    /// (docs/headers.md says what each guarantees).
    #[serde(default)]
    pub identity: causeway_core::Identity,
    /// Turns raw messages into CloudEvents on the way to the sink.
    #[serde(default)]
    pub wrap: Option<WrapConfig>,
    /// Writes CloudEvents to the sink as plain messages: payload, key and
    /// headers, no CloudEvents attribute.
    #[serde(default)]
    pub unwrap: bool,
}

/// One sink of a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Sink endpoint name.
    pub endpoint: String,
    /// Destination template at the sink.
    pub destination: String,
    /// Which events this sink takes; the others are counted as filtered.
    #[serde(default)]
    pub filter: Option<FilterConfig>,
    /// How fast this sink is sent to.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
}

/// Which events a sink takes: every condition of `all` and at least one
/// of `any` (an empty list asks nothing). No scripting: each condition
/// compares one field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Conditions that must all hold.
    #[serde(default)]
    pub all: Vec<ConditionConfig>,
    /// Conditions of which one must hold.
    #[serde(default)]
    pub any: Vec<ConditionConfig>,
}

/// One condition: a field and exactly one of `equals`, `prefix`, `glob`,
/// `regex`. A field the event does not have matches nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// `type`, `source`, `subject`, `key`, `id` or `header.NAME` (an
    /// extension attribute, else a native header).
    pub field: String,
    /// The value is exactly this.
    #[serde(default)]
    pub equals: Option<String>,
    /// The value starts with this.
    #[serde(default)]
    pub prefix: Option<String>,
    /// The value matches this glob (`*`, `?`, `[a-z]`, `{a,b}`).
    #[serde(default)]
    pub glob: Option<String>,
    /// The value matches this regular expression (unanchored).
    #[serde(default)]
    pub regex: Option<String>,
}

/// A sink's rate limit: a token bucket of events and one of bytes
/// (payloads), each refilled at its rate per second, holding a burst.
/// Waiting for tokens holds the route back; nothing is dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Events per second.
    #[serde(default)]
    pub events_per_second: Option<u32>,
    /// Payload bytes per second.
    #[serde(default)]
    pub bytes_per_second: Option<u32>,
    /// Events (and `burst × the average payload` of bytes) sent at once
    /// after a quiet time; the rate when unset.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A sink of a route, as the pipeline runs it.
#[derive(Debug, Clone)]
pub struct Leg {
    /// Its name in metrics, logs, dedup and dead letters: the route's for a
    /// route with one sink, `route/sink` otherwise.
    pub name: String,
    /// The sink.
    pub sink: SinkConfig,
    /// Its cursor and lease in the route's store stream (durable mode).
    pub forwarder: String,
}

impl RouteConfig {
    /// The route's sinks: the one of `sink`/`destination`, named as the
    /// route and forwarding with the `forwarder` cursor (as before sinks
    /// had names), or each of `sinks`, named `route/sink`.
    pub fn legs(&self, route: &str) -> Vec<Leg> {
        if let (Some(sink), Some(destination)) = (&self.sink, &self.destination) {
            return vec![Leg {
                name: route.to_owned(),
                sink: SinkConfig {
                    endpoint: sink.clone(),
                    destination: destination.clone(),
                    filter: self.filter.clone(),
                    rate_limit: self.rate_limit.clone(),
                },
                forwarder: "forwarder".to_owned(),
            }];
        }
        self.sinks
            .iter()
            .map(|(name, sink)| Leg {
                name: format!("{route}/{name}"),
                sink: sink.clone(),
                forwarder: format!("forwarder:{name}"),
            })
            .collect()
    }
}

/// How raw messages become CloudEvents: templates over the message (the
/// destination template's placeholders, `{header.NAME}` reading its headers).
/// The id is the message's identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapConfig {
    /// The CloudEvents `type`, e.g. `finbank.transaction`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The CloudEvents `source`; the message's origin (`kafka://topic`) when unset.
    #[serde(default)]
    pub source: Option<String>,
}

fn default_batch() -> usize {
    500
}
fn default_linger() -> Duration {
    Duration::from_millis(50)
}
fn default_shards() -> usize {
    8
}
// A window of 8 polls, the raw client loop's 8 batches of the benches:
// across a 90 ms link NATS → RabbitMQ moved 5.7k events/s with 4 and
// 7.1k with 8 (docs/benchmarks.md, 2026-12-02); a key's events still wait
// for its call, so about half the window is at the sink.
fn default_in_flight() -> usize {
    8
}
fn default_claim_lease() -> Duration {
    Duration::from_secs(30)
}
fn default_dedup_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn yes() -> bool {
    true
}

/// Exponential backoff with jitter, for temporary failures only.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First delay.
    #[serde(
        default = "default_initial",
        with = "causeway_core::duration::positive"
    )]
    pub initial_delay: Duration,
    /// Largest delay.
    #[serde(
        default = "default_max_delay",
        with = "causeway_core::duration::positive"
    )]
    pub max_delay: Duration,
}

fn default_attempts() -> u32 {
    5
}
fn default_initial() -> Duration {
    Duration::from_millis(100)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(10)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: default_attempts(),
            initial_delay: default_initial(),
            max_delay: default_max_delay(),
        }
    }
}

/// Open after `failures` consecutive failed publishes; probe again after `cooldown`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before a probe.
    #[serde(
        default = "default_cooldown",
        with = "causeway_core::duration::positive"
    )]
    pub cooldown: Duration,
}

fn default_failures() -> u32 {
    5
}
fn default_cooldown() -> Duration {
    Duration::from_secs(10)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            cooldown: default_cooldown(),
        }
    }
}

/// A dead-letter destination.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Endpoint name.
    pub endpoint: String,
    /// Destination at that endpoint.
    pub destination: String,
}

/// A configuration error, naming the file, and the line and key where known.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The quickstart: generated FinBank transactions, durably stored in SQLite
/// and forwarded to an in-process broker.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../examples/quickstart.toml");

impl Config {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses `text`, naming it `origin` in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, origin, &|var| std::env::var(var).ok())
    }

    /// `parse`, reading `${VAR}` from `env`.
    fn parse_with_env(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = substitute_env(text, origin, env)?;
        let config: Config =
            toml::from_str(&file.text).map_err(|e| ConfigError(describe(origin, &file, &e)))?;
        config.store.validate(origin, file.original)?;
        config.validate(origin, file.original)?;
        Ok(config)
    }

    /// Cross-references: every route's endpoints exist, templates parse, no
    /// two routes consume one endpoint (they would share its consumer group
    /// and split its events between them).
    fn validate(&self, origin: &str, text: &str) -> Result<(), ConfigError> {
        let mut sources: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, r) in &self.routes {
            // `file:line:` of `routes.<name>.<key>` (dotted), for the errors.
            let line = |key: &str| {
                let mut path = vec!["routes", name.as_str()];
                path.extend(key.split('.').filter(|k| !k.is_empty()));
                at(origin, text, &path)
            };
            if let Some(other) = sources.insert(&r.source, name) {
                return Err(ConfigError(format!(
                    "{} routes.{name}.source: endpoint `{}` is already the source of route \
                     `{other}`; routes sharing a source split its events. Give each route its own \
                     endpoint (its own consumer group)",
                    line("source"),
                    r.source
                )));
            }
            let one = r.sink.is_some() || r.destination.is_some();
            if one != r.sinks.is_empty() || r.sink.is_some() != r.destination.is_some() {
                return Err(ConfigError(format!(
                    "{} routes.{name}: give either `sink` and `destination`, or a \
                     `[routes.{name}.sinks.<sink>]` table per sink",
                    line("")
                )));
            }
            if !r.sinks.is_empty() && (r.filter.is_some() || r.rate_limit.is_some()) {
                return Err(ConfigError(format!(
                    "{} routes.{name}: with `sinks`, `filter` and `rate_limit` go in each sink's table",
                    line(if r.filter.is_some() {
                        "filter"
                    } else {
                        "rate_limit"
                    })
                )));
            }
            let legs = r.legs(name);
            let sink_endpoints = legs.iter().map(|l| {
                let key = match l.name.split_once('/') {
                    Some((_, sink)) => format!("sinks.{sink}.endpoint"),
                    None => "sink".to_owned(),
                };
                (key, &l.sink.endpoint)
            });
            for (key, endpoint) in
                std::iter::once(("source".to_owned(), &r.source)).chain(sink_endpoints)
            {
                if !self.endpoints.contains_key(endpoint) {
                    return Err(ConfigError(format!(
                        "{} routes.{name}.{key}: no endpoint `{endpoint}` (known: {})",
                        line(&key),
                        self.endpoints
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            if let Some(dl) = &r.dead_letter
                && !self.endpoints.contains_key(&dl.endpoint)
            {
                return Err(ConfigError(format!(
                    "{} routes.{name}.dead_letter.endpoint: no endpoint `{}`",
                    line("dead_letter.endpoint"),
                    dl.endpoint
                )));
            }
            for leg in &legs {
                let sink = match leg.name.split_once('/') {
                    Some((_, sink)) => format!("sinks.{sink}."),
                    None => String::new(),
                };
                causeway_core::Template::parse(&leg.sink.destination).map_err(|e| {
                    ConfigError(format!(
                        "{} routes.{name}.{sink}destination: {}",
                        line(&format!("{sink}destination")),
                        e.message()
                    ))
                })?;
                if let Some(filter) = &leg.sink.filter {
                    crate::filter::Filter::new(filter).map_err(|e| {
                        ConfigError(format!(
                            "{} routes.{name}.{sink}filter: {e}",
                            line(&format!("{sink}filter"))
                        ))
                    })?;
                }
                if let Some(limit) = &leg.sink.rate_limit
                    && limit.events_per_second.is_none()
                    && limit.bytes_per_second.is_none()
                {
                    return Err(ConfigError(format!(
                        "{} routes.{name}.{sink}rate_limit: set events_per_second, bytes_per_second or both",
                        line(&format!("{sink}rate_limit"))
                    )));
                }
            }
            let templates = r.wrap.iter().flat_map(|w| {
                [
                    ("wrap.type", Some(&w.kind)),
                    ("wrap.source", w.source.as_ref()),
                ]
            });
            for (key, template) in templates {
                if let Some(template) = template {
                    causeway_core::Template::parse(template).map_err(|e| {
                        ConfigError(format!(
                            "{} routes.{name}.{key}: {}",
                            line(key),
                            e.message()
                        ))
                    })?;
                }
            }
            if r.wrap.is_some() && r.unwrap {
                return Err(ConfigError(format!(
                    "{} routes.{name}: `wrap` and `unwrap` together would undo each other",
                    line("unwrap")
                )));
            }
            if r.batch_size == 0 || r.shards == 0 || r.in_flight == 0 {
                return Err(ConfigError(format!(
                    "{} routes.{name}: batch_size, shards and in_flight must be at least 1",
                    line(if r.batch_size == 0 {
                        "batch_size"
                    } else if r.shards == 0 {
                        "shards"
                    } else {
                        "in_flight"
                    })
                )));
            }
        }
        Ok(())
    }
}

/// `file:line:column: message` from a TOML error (the message names the
/// key). The line shown is the file's own, before substitution, and any
/// substituted value in the message is put back as its `${VAR}`: an error
/// never prints what came from the environment.
fn describe(origin: &str, file: &Substituted<'_>, e: &toml::de::Error) -> String {
    let message = file.redact(e.message().trim());
    match e.span() {
        Some(span) => {
            let text = &file.text;
            let line = text[..span.start].matches('\n').count() + 1;
            let column = span.start - text[..span.start].rfind('\n').map_or(0, |i| i + 1) + 1;
            let source_line = file
                .original
                .lines()
                .nth(line - 1)
                .unwrap_or_default()
                .trim();
            format!("{origin}:{line}:{column}: {message}\n    {source_line}")
        }
        None => format!("{origin}: {message}"),
    }
}

/// A config file after `${VAR}` substitution, with what it was before.
struct Substituted<'a> {
    original: &'a str,
    text: String,
    /// Each substitution: the placeholder as written and the value put in.
    values: Vec<(String, String)>,
}

impl Substituted<'_> {
    /// `message` with each substituted value replaced by its placeholder.
    fn redact(&self, message: &str) -> String {
        let mut values: Vec<&(String, String)> =
            self.values.iter().filter(|(_, v)| !v.is_empty()).collect();
        values.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        let mut out = message.to_owned();
        for (placeholder, value) in values {
            for form in [value.clone(), value.escape_debug().to_string()] {
                out = out.replace(&form, placeholder);
            }
        }
        out
    }
}

/// Where the scanner is in the TOML text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lexical {
    Code,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

/// Replaces `${VAR}` and `${VAR:-default}` inside quoted strings, escaped
/// so that a value is only ever part of that string: an environment value
/// cannot close the string and add keys. A placeholder outside a string is
/// an error, and so is an unset variable without a default; both name the
/// line. Placeholders in comments are left alone.
fn substitute_env<'a>(
    text: &'a str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Substituted<'a>, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut values = Vec::new();
    let mut state = Lexical::Code;
    let mut rest = text;
    let line_of = |rest: &str| text[..text.len() - rest.len()].matches('\n').count() + 1;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("${") && state != Lexical::Comment {
            let line = line_of(rest);
            let Some(end) = rest.find('}') else {
                return Err(ConfigError(format!("{origin}:{line}: unclosed `${{`")));
            };
            let placeholder = &rest[..=end];
            let inner = &rest[2..end];
            let (var, default) = match inner.split_once(":-") {
                Some((v, d)) => (v, Some(d)),
                None => (inner, None),
            };
            let value = match (env(var), default) {
                (Some(v), _) => v,
                (None, Some(d)) => d.to_owned(),
                (None, None) => {
                    return Err(ConfigError(format!(
                        "{origin}:{line}: environment variable `{var}` is not set (use `${{{var}:-default}}` for a default)"
                    )));
                }
            };
            let escaped = match state {
                Lexical::Basic | Lexical::MultiBasic => escape_basic(&value),
                Lexical::Literal | Lexical::MultiLiteral
                    if !value.contains(['\'', '\n', '\r']) && !value.contains(char::is_control) =>
                {
                    value.clone()
                }
                Lexical::Literal | Lexical::MultiLiteral => {
                    return Err(ConfigError(format!(
                        "{origin}:{line}: the value of `{var}` cannot go into a '...' string \
                         (it has a quote or a control character); use \"...\""
                    )));
                }
                Lexical::Code | Lexical::Comment => {
                    return Err(ConfigError(format!(
                        "{origin}:{line}: `{placeholder}` must be inside a quoted string: \
                         an environment value is only ever a string"
                    )));
                }
            };
            out.push_str(&escaped);
            values.push((placeholder.to_owned(), value));
            rest = &rest[end + 1..];
            continue;
        }
        // One step: a token that may change the state, or one character.
        let (len, next) = match state {
            Lexical::Code if c == '#' => (1, Lexical::Comment),
            Lexical::Code if rest.starts_with("\"\"\"") => (3, Lexical::MultiBasic),
            Lexical::Code if rest.starts_with("'''") => (3, Lexical::MultiLiteral),
            Lexical::Code if c == '"' => (1, Lexical::Basic),
            Lexical::Code if c == '\'' => (1, Lexical::Literal),
            Lexical::Comment if c == '\n' => (1, Lexical::Code),
            // An escape: the backslash and the character it escapes, together.
            Lexical::Basic | Lexical::MultiBasic if c == '\\' => (
                1 + rest[1..].chars().next().map_or(0, char::len_utf8),
                state,
            ),
            Lexical::Basic if c == '"' || c == '\n' => (1, Lexical::Code),
            Lexical::Literal if c == '\'' || c == '\n' => (1, Lexical::Code),
            Lexical::MultiBasic if rest.starts_with("\"\"\"") => (3, Lexical::Code),
            Lexical::MultiLiteral if rest.starts_with("'''") => (3, Lexical::Code),
            _ => (c.len_utf8(), state),
        };
        out.push_str(&rest[..len]);
        rest = &rest[len..];
        state = next;
    }
    Ok(Substituted {
        original: text,
        text: out,
        values,
    })
}

/// `value` as the inside of a TOML basic string.
fn escape_basic(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[store]
sqlite = "x.db"

[endpoints.gen.generator]
rate = 10

[endpoints.local.memory]
topic = "t"

[routes.r]
source = "gen"
sink = "local"
destination = "transactions-{key_hash % 10}"
mode = "durable"
"#;

    #[test]
    fn the_embedded_default_and_a_good_file_parse() {
        Config::parse(EMBEDDED_DEFAULT, "embedded").unwrap();
        let c = Config::parse(GOOD, "good.toml").unwrap();
        assert_eq!(c.routes["r"].mode, Mode::Durable);
        assert_eq!(c.routes["r"].batch_size, 500);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let bad = GOOD.replace("rate = 10", "rate = 10\nrat = 5");
        let e = Config::parse(&bad, "bridge.toml").unwrap_err().to_string();
        assert!(e.starts_with("bridge.toml:7:"), "{e}");
        assert!(e.contains("rat"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_file_line_and_key() {
        let bad = GOOD.replace("rate = 10", "rate = \"fast\"");
        let e = Config::parse(&bad, "bridge.toml").unwrap_err().to_string();
        assert!(e.starts_with("bridge.toml:6:"), "{e}");
    }

    #[test]
    fn env_substitution_with_defaults_and_missing_variables() {
        let text = GOOD.replace("x.db", "${CAUSEWAY_TEST_DB:-fallback.db}");
        let c = Config::parse(&text, "f").unwrap();
        assert_eq!(c.store.sqlite.as_deref(), Some(Path::new("fallback.db")));
        let text = GOOD.replace("x.db", "${CAUSEWAY_TEST_SURELY_UNSET}");
        let e = Config::parse(&text, "f.toml").unwrap_err().to_string();
        assert!(
            e.contains("f.toml:3") && e.contains("CAUSEWAY_TEST_SURELY_UNSET"),
            "{e}"
        );
    }

    #[test]
    fn zero_durations_are_refused_naming_file_line_and_key() {
        let in_route = |key: &str| {
            GOOD.replace(
                "mode = \"durable\"",
                &format!("mode = \"durable\"\n{key} = \"0s\""),
            )
        };
        let in_table = |key: &str, table: &str| format!("{GOOD}\n{table}\n{key} = \"0s\"\n");
        for (key, text) in [
            ("linger", in_route("linger")),
            ("claim_lease", in_route("claim_lease")),
            ("summary_every", in_table("summary_every", "[metrics]")),
            ("every", in_table("every", "[store.retention]")),
            ("cooldown", in_table("cooldown", "[routes.r.breaker]")),
            (
                "initial_delay",
                in_table("initial_delay", "[routes.r.retry]"),
            ),
        ] {
            let line = 1 + text
                .lines()
                .position(|l| l.starts_with(&format!("{key} =")))
                .expect("key line");
            let e = Config::parse(&text, "b.toml").unwrap_err().to_string();
            assert!(e.starts_with(&format!("b.toml:{line}:")), "{key}: {e}");
            assert!(
                e.contains("longer than zero") && e.contains(key),
                "{key}: {e}"
            );
        }
        let text = GOOD.replace("mode = \"durable\"", "mode = \"durable\"\nlinger = \"-5s\"");
        assert!(Config::parse(&text, "b.toml").is_err());
    }

    /// Adapter timeouts and intervals too: a zero confirm or call timeout
    /// fails every call at once, a zero reconnect delay or poll spins.
    #[test]
    fn zero_adapter_durations_are_refused_naming_file_line_and_key() {
        let cases: &[(&str, &str)] = &[
            ("[endpoints.k.kafka.producer]", "delivery_timeout"),
            ("[endpoints.k.kafka.producer]", "socket_timeout"),
            ("[endpoints.n.nats.publish]", "ack_timeout"),
            ("[endpoints.n.nats.consumer]", "ack_wait"),
            ("[endpoints.q.rabbitmq]", "max_reconnect_delay"),
            ("[endpoints.q.rabbitmq.publish]", "confirm_timeout"),
            ("[endpoints.q.rabbitmq.queue]", "delay_queue_idle"),
            ("[endpoints.s.sqs]", "call_timeout"),
            ("[endpoints.s.sqs.queue]", "long_poll"),
            ("[endpoints.s.sqs.queue]", "visibility_timeout"),
            ("[endpoints.b.servicebus]", "call_timeout"),
            ("[endpoints.b.servicebus.receive]", "long_poll"),
        ];
        for (table, key) in cases {
            let text = format!("{GOOD}\n{table}\n{key} = \"0s\"\n");
            let line = text.lines().count();
            let e = Config::parse(&text, "a.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("a.toml:{line}:")),
                "{table} {key}: {e}"
            );
            assert!(
                e.contains("longer than zero") && e.contains(key),
                "{table} {key}: {e}"
            );
        }
    }

    #[test]
    fn environment_values_stay_inside_their_string_and_out_of_errors() {
        // A value that tries to close its string and add a key.
        let env = |var: &str| match var {
            "INJECT" => Some("x.db\"\nmax_bytes = 1\n".to_owned()),
            "SECRET" => Some("hunter2-s3cr3t".to_owned()),
            _ => None,
        };
        let text = GOOD.replace("x.db", "${INJECT}");
        let c = Config::parse_with_env(&text, "f.toml", &env).unwrap();
        assert_eq!(
            c.store.sqlite.as_deref(),
            Some(Path::new("x.db\"\nmax_bytes = 1\n"))
        );
        // A wrong type: the error shows the file's own line and no value.
        let text = GOOD.replace("rate = 10", "rate = \"${SECRET}\"");
        let e = Config::parse_with_env(&text, "f.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("f.toml:6:"), "{e}");
        assert!(e.contains("${SECRET}"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        // Outside a string a value could be anything: refused.
        let text = GOOD.replace("rate = 10", "rate = ${SECRET}");
        let e = Config::parse_with_env(&text, "f.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.toml:6") && e.contains("inside a quoted string"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        // Comments are not substituted.
        let text = format!("# see ${{CAUSEWAY_TEST_SURELY_UNSET}}\n{GOOD}");
        Config::parse(&text, "f.toml").unwrap();
    }

    #[test]
    fn dangling_endpoint_names_and_bad_templates_are_errors() {
        let e = Config::parse(&GOOD.replace("sink = \"local\"", "sink = \"nowhere\""), "f")
            .unwrap_err();
        assert!(e.to_string().contains("routes.r.sink"), "{e}");
        let e = Config::parse(&GOOD.replace("{key_hash % 10}", "{bogus}"), "f").unwrap_err();
        assert!(e.to_string().contains("routes.r.destination"), "{e}");
    }

    /// Errors found after parsing (a missing endpoint, a bad template, a
    /// setting that would do nothing) name the line of their key however
    /// it is written: a key in a table, a dotted key, an inline table.
    /// Before, only the store's errors had a line, and only for a key
    /// written at the start of its own line.
    #[test]
    fn cross_reference_errors_name_file_line_and_key() {
        let cases = [
            // (the file, the line the error must name, the key it must name)
            (GOOD.replace("sink = \"local\"", "sink = \"nowhere\""), 13, "routes.r.sink:"),
            (GOOD.replace("{key_hash % 10}", "{bogus}"), 14, "routes.r.destination:"),
            (
                GOOD.replace("source = \"gen\"", "source = \"gen\"\ndead_letter = { endpoint = \"gone\", destination = \"dl\" }"),
                13,
                "routes.r.dead_letter.endpoint:",
            ),
            (
                GOOD.replace(
                    "[store]\nsqlite = \"x.db\"\n",
                    "store = { postgres = { url = \"postgres://db/c\" },\n  sqlite_cache_mib = 64 }\n",
                ),
                3,
                "store.sqlite_cache_mib:",
            ),
            (GOOD.replace("mode = \"durable\"", "mode = \"durable\"\nshards = 0"), 16, "routes.r:"),
        ];
        for (text, line, key) in cases {
            let e = Config::parse(&text, "f.toml").unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("f.toml:{line}: {key}")),
                "{e}\n{text}"
            );
        }
    }

    #[test]
    fn sqlite_settings_beside_postgres_are_refused_with_their_line() {
        let sqlite = "[store]\nsqlite = \"x.db\"\n";
        assert!(GOOD.contains(sqlite), "the good file's store is SQLite");
        let pg = "[store]\npostgres = { url = \"postgres://db/causeway\" }\n";
        let with = |extra: &str| GOOD.replacen(sqlite, &format!("{pg}{extra}"), 1);
        Config::parse(&with(""), "f.toml").expect("PostgreSQL alone");
        let e = Config::parse(&with("sqlite_cache_mib = 64\n"), "f.toml").unwrap_err();
        let line = with("sqlite_cache_mib = 64\n")
            .lines()
            .position(|l| l.starts_with("sqlite_cache_mib"))
            .expect("line")
            + 1;
        assert!(
            e.to_string()
                .starts_with(&format!("f.toml:{line}: store.sqlite_cache_mib")),
            "{e}"
        );
        let e = Config::parse(&with("sqlite = \"x.db\"\n"), "f.toml").unwrap_err();
        assert!(e.to_string().contains("store.sqlite:"), "{e}");
        let sqlite_only = GOOD.replacen(sqlite, &format!("{sqlite}sqlite_cache_mib = 64\n"), 1);
        let c = Config::parse(&sqlite_only, "f.toml").expect("SQLite with its cache");
        assert_eq!(c.store.sqlite_cache_mib(), 64);
    }

    #[test]
    fn two_routes_from_one_source_are_an_error() {
        let second = GOOD.replace("[routes.r]", "[routes.s]");
        let routes = &second[second.find("[routes.s]").expect("route")..];
        let text = format!("{GOOD}\n{routes}");
        let e = Config::parse(&text, "f").unwrap_err();
        assert!(
            e.to_string().contains("already the source of route `r`"),
            "{e}"
        );
    }
}
