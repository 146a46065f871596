//! What the matrix, the fault tests and the many-instance tests share: the
//! brokers and their config, reading a sink with its own adapter through a
//! sink-side idempotent handler, the bridge as a child process, and a
//! RabbitMQ node of a test's own to restart.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_bridge::config::{Config, EndpointConfig};
use causeway_core::memory::MemoryDedupStore;
use causeway_core::{Consumer, Event, Handled, IdempotentHandler};
use causeway_servicebus_emulator::{self as servicebus_emulator, QueueOptions, ServiceBusEmulator};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    Kafka,
    Nats,
    Rabbit,
    Sqs,
    ServiceBus,
}

pub use Broker::{Kafka, Nats, Rabbit, ServiceBus, Sqs};

impl Broker {
    /// Its endpoint name in the config.
    pub fn name(self) -> &'static str {
        match self {
            Kafka => "kafka",
            Nats => "nats",
            Rabbit => "rabbit",
            Sqs => "sqs",
            ServiceBus => "sb",
        }
    }

    /// Where the events go in (source) or out (sink), for run `prefix`.
    pub fn destination(self, prefix: &str, dir: &str) -> String {
        match (self, dir) {
            (Nats, _) => format!("{prefix}.{dir}"),
            // FIFO on the way out: order per key and SQS's own dedup.
            (Sqs, "out") => format!("{prefix}-out.fifo"),
            _ => format!("{prefix}-{dir}"),
        }
    }

    /// Whether a consumer of it keeps publish order per key (SQS standard
    /// queues and Service Bus without sessions do not).
    pub fn keeps_order(self) -> bool {
        matches!(self, Kafka | Nats | Rabbit)
    }

    /// Events per route: moto serves about 50 messages a second.
    pub fn events(from: Broker, to: Broker) -> usize {
        if from == Sqs || to == Sqs { 60 } else { 200 }
    }
}

pub fn env(var: &str, default: &str) -> String {
    causeway_testkit::env::endpoint(var, default)
}

/// A `[store]` body on the PostgreSQL server (`cargo xtask services up
/// postgres`), in a schema of its own named after run `prefix`.
pub fn postgres_store(prefix: &str) -> String {
    let url = env(
        "CAUSEWAY_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    );
    let schema = prefix.replace('-', "_");
    format!("postgres = {{ url = \"{url}\", schema = \"{schema}\" }}")
}

/// Where each broker is; a test puts a fault proxy in front of one.
#[derive(Debug, Clone)]
pub struct Addrs {
    pub kafka: String,
    pub nats: String,
    pub rabbit: String,
    pub sqs: String,
    /// The Service Bus emulator's URL (none: the endpoint's default).
    pub servicebus: Option<String>,
}

impl Addrs {
    /// The brokers `cargo xtask services up` starts (or the environment names).
    pub fn local() -> Addrs {
        Addrs {
            kafka: env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092"),
            nats: env("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222"),
            rabbit: env(
                "CAUSEWAY_RABBITMQ_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            sqs: env("CAUSEWAY_SQS_ENDPOINT", "http://127.0.0.1:4566"),
            servicebus: None,
        }
    }

    pub fn with_servicebus(mut self, emulator: &ServiceBusEmulator) -> Addrs {
        self.servicebus = Some(emulator.url());
        self
    }
}

/// One route `r` from `from` to `to`, and every broker's `-check` endpoint.
#[derive(Debug, Clone)]
pub struct Setup {
    pub prefix: String,
    pub from: Broker,
    pub to: Broker,
    pub mode: &'static str,
    /// The `[store]` table's body.
    pub store: String,
    /// Where the route's endpoints connect.
    pub route: Addrs,
    /// Where the `-check` endpoints (the sink's own reader) connect.
    pub check: Addrs,
    /// The route's destination; the sink's `out` by default.
    pub destination: Option<String>,
    /// More keys of `[routes.r]`.
    pub route_extra: String,
    /// A second sink: the route then has sinks `a` (`to`) and `b` (this
    /// broker's `-check` endpoint, its `out`), its routes `r/a` and `r/b`.
    pub also_to: Option<Broker>,
    /// `[metrics] listen`, for a bridge process.
    pub metrics: Option<String>,
    /// More keys of the route's RabbitMQ queue table, each with a leading `, `.
    pub rabbit_queue_extra: String,
}

impl Setup {
    pub fn new(dir: &Path, prefix: &str, from: Broker, to: Broker, mode: &'static str) -> Setup {
        Setup {
            prefix: prefix.to_owned(),
            from,
            to,
            mode,
            store: format!("sqlite = \"{}/store.db\"", dir.display()),
            route: Addrs::local(),
            check: Addrs::local(),
            destination: None,
            route_extra: String::new(),
            also_to: None,
            metrics: None,
            rabbit_queue_extra: String::new(),
        }
    }

    pub fn with_servicebus(mut self, emulator: &ServiceBusEmulator) -> Setup {
        self.route = self.route.with_servicebus(emulator);
        self.check = self.check.with_servicebus(emulator);
        self
    }

    /// The configuration text: every broker twice, as the route's endpoint
    /// (consuming `-in`) and as `<name>-check`, the sink's reader of `-out`.
    pub fn toml(&self) -> String {
        let p = &self.prefix;
        let mut text = format!("[store]\n{}\n", self.store);
        if let Some(listen) = &self.metrics {
            text += &format!("[metrics]\nlisten = \"{listen}\"\nsummary_every = \"2s\"\n");
        }
        for (suffix, dir, a) in [("", "in", &self.route), ("-check", "out", &self.check)] {
            let role = if suffix.is_empty() { "bridge" } else { "check" };
            let sb_endpoint = a
                .servicebus
                .as_ref()
                .map(|u| format!("endpoint = \"{u}\"\n"))
                .unwrap_or_default();
            let sqs_queue = Sqs.destination(p, dir);
            let rabbit_queue = if suffix.is_empty() {
                self.rabbit_queue_extra.as_str()
            } else {
                ""
            };
            let sb_receive = if suffix.is_empty() {
                ""
            } else {
                ", receives_in_flight = 1"
            };
            text += &format!(
                r#"
[endpoints.kafka{suffix}.kafka]
brokers = "{kafka}"
# A killed member's partitions move within seconds, not librdkafka's 45.
librdkafka = {{ "session.timeout.ms" = "6000", "heartbeat.interval.ms" = "1000" }}
consumer = {{ group = "{p}-{role}", topics = ["{p}-{dir}"] }}
# `in` and `out` in streams of their own: JetStream drops a message id it
# has seen in the same stream, and the events keep their ids.
[endpoints.nats{suffix}.nats]
url = "{nats}"
stream = {{ name = "{p}-{dir}", subjects = ["{p}.{dir}"] }}
consumer = {{ durable = "{role}", filter_subject = "{p}.{dir}", ack_wait = "5s" }}
[endpoints.rabbit{suffix}.rabbitmq]
url = "{rabbit}"
queue = {{ name = "{p}-{dir}", prefetch = 500{rabbit_queue} }}
[endpoints.sqs{suffix}.sqs]
endpoint = "{sqs}"
region = "us-east-1"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}
create_queues = true
queue = {{ name = "{sqs_queue}", long_poll = "1s" }}
[endpoints.sb{suffix}.servicebus]
namespace = "{namespace}"
sas_policy = "{policy}"
duplicate_detection = true
publish = {{ key_property = "session_id" }}
receive = {{ entity = "{p}-{dir}", long_poll = "1s"{sb_receive} }}
{sb_endpoint}"#,
                kafka = a.kafka,
                nats = a.nats,
                rabbit = a.rabbit,
                sqs = a.sqs,
                namespace = servicebus_emulator::NAMESPACE,
                policy = servicebus_emulator::ROOT_POLICY,
            );
        }
        let destination = self
            .destination
            .clone()
            .unwrap_or_else(|| self.to.destination(p, "out"));
        let (sink, sinks) = match self.also_to {
            None => (
                format!(
                    "sink = \"{}\"\ndestination = \"{destination}\"",
                    self.to.name()
                ),
                String::new(),
            ),
            Some(b) => (
                String::new(),
                format!(
                    "[routes.r.sinks.a]\nendpoint = \"{}\"\ndestination = \"{destination}\"\n\
                     [routes.r.sinks.b]\nendpoint = \"{}-check\"\ndestination = \"{}\"\n",
                    self.to.name(),
                    b.name(),
                    b.destination(p, "out")
                ),
            ),
        };
        text += &format!(
            r#"
[routes.r]
source = "{source}"
{sink}
mode = "{mode}"
linger = "20ms"
{extra}
{sinks}"#,
            source = self.from.name(),
            mode = self.mode,
            extra = self.route_extra,
        );
        text
    }

    /// The parsed configuration, with the emulator's key (which a
    /// deployment reads from the environment) where there is an emulator.
    pub fn config(&self, emulator: &ServiceBusEmulator) -> Config {
        let mut config = Config::parse(&self.toml(), "test.toml").expect("config");
        for name in ["sb", "sb-check"] {
            if let Some(EndpointConfig::Servicebus(c)) = config.endpoints.get_mut(name) {
                c.sas_key = emulator.key(servicebus_emulator::ROOT_POLICY);
            }
        }
        config
    }
}

/// What a route needs on the brokers: Kafka topics (3 partitions) and
/// Service Bus queues with duplicate detection, in an emulator of its own.
pub async fn prepare(prefix: &str, from: Broker, to: Broker) -> ServiceBusEmulator {
    let emulator = ServiceBusEmulator::start()
        .await
        .expect("service bus emulator");
    for dir in ["in", "out"] {
        emulator.create_queue(
            &ServiceBus.destination(prefix, dir),
            QueueOptions {
                duplicate_detection: Some(Duration::from_secs(600)),
                ..QueueOptions::default()
            },
        );
    }
    if from == Kafka || to == Kafka {
        create_topics(prefix).await;
    }
    emulator
}

/// Deletes what a run under `prefix` left in RabbitMQ, NATS and Kafka (its
/// `in` and `out` queues, streams and topics), best effort: a bench's
/// samples would otherwise pile up in the brokers (gigabytes of RabbitMQ
/// queues over a full run) and slow every later sample.
pub async fn remove_destinations(prefix: &str) {
    let names = [format!("{prefix}-in"), format!("{prefix}-out")];
    let rabbit = env(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    if let Ok(conn) =
        lapin::Connection::connect(&rabbit, lapin::ConnectionProperties::default()).await
    {
        for name in &names {
            // A missing queue closes its channel: one channel per delete.
            if let Ok(channel) = conn.create_channel().await {
                let _ = channel
                    .queue_delete(
                        name.as_str().into(),
                        lapin::options::QueueDeleteOptions::default(),
                    )
                    .await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
    }
    let nats = env("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222");
    if let Ok(client) = async_nats::connect(&nats).await {
        let js = async_nats::jetstream::new(client);
        for name in &names {
            let _ = js.delete_stream(name).await;
        }
    }
    if let (_, Ok(admin)) = kafka_admin() {
        let topics: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = admin
            .delete_topics(
                &topics,
                &rdkafka::admin::AdminOptions::new()
                    .operation_timeout(Some(Duration::from_secs(10))),
            )
            .await;
    }
}

type KafkaAdmin = rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>;

/// An admin client of the test Kafka, and the brokers it was made for.
fn kafka_admin() -> (String, rdkafka::error::KafkaResult<KafkaAdmin>) {
    let brokers = env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let admin = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create();
    (brokers, admin)
}

async fn create_topics(prefix: &str) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let (brokers, admin) = kafka_admin();
    let admin = admin.expect("admin client");
    let (topic_in, topic_out) = (format!("{prefix}-in"), format!("{prefix}-out"));
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&topic_in, 3, TopicReplication::Fixed(1)),
                NewTopic::new(&topic_out, 3, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await;
    if let Err(e) = created.map(|r| r.into_iter().collect::<Result<Vec<_>, _>>()) {
        causeway_testkit::env::unreachable("kafka", "CAUSEWAY_KAFKA_BROKERS", &brokers, e);
    }
}

/// `check` on both endpoints of the route, then the sink's own reader
/// (which declares what must exist before the bridge publishes: RabbitMQ's
/// queue, SQS's FIFO queue).
pub async fn sink_reader(bridge: &Bridge, from: Broker, to: Broker) -> Box<dyn Consumer> {
    for endpoint in [from.name(), to.name()] {
        bridge
            .endpoints
            .check(endpoint)
            .await
            .unwrap_or_else(|e| panic!("check {endpoint}: {e:#}"));
    }
    bridge
        .endpoints
        .consumer(&format!("{}-check", to.name()))
        .await
        .unwrap_or_else(|e| {
            panic!("sink consumer (are the brokers up? `cargo xtask services up`): {e:#}")
        })
}

/// Publishes `events` to the route's source with the source's adapter.
pub async fn publish_to_source(bridge: &Bridge, from: Broker, prefix: &str, events: &[Event]) {
    let publisher = bridge
        .endpoints
        .publisher(from.name())
        .await
        .unwrap_or_else(|e| panic!("source publisher: {e:#}"));
    let outcomes = publisher
        .publish(&from.destination(prefix, "in"), events)
        .await
        .unwrap_or_else(|e| panic!("publish to the source: {e:#}"));
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
}

/// A route running in the test process until `shutdown`.
pub struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_route(bridge: &Bridge) -> Running {
    let mut sinks = bridge.sinks("r").await.expect("route");
    let config = sinks[0].config.clone();
    let source = bridge
        .endpoints
        .consumer_reading(&config.source, config.format)
        .await
        .expect("source");
    let shutdown = CancellationToken::new();
    let task = if sinks.len() == 1 {
        tokio::spawn(sinks.remove(0).run(source, shutdown.clone()))
    } else {
        tokio::spawn(causeway_bridge::pipeline::run_fanout(
            sinks,
            source,
            shutdown.clone(),
        ))
    };
    Running { shutdown, task }
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("task").expect("clean stop");
    }
}

/// Runs route `r` in process until `n` events were published, then shuts it down.
pub async fn run_route(bridge: &Bridge, n: u64) {
    let published = bridge.metrics.route("r").published;
    let running = start_route(bridge).await;
    for _ in 0..2400 {
        if published.get() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(published.get(), n, "events published by the bridge");
}

/// Reads `n` events and checks that nothing more arrives.
pub async fn read(sink: &mut dyn Consumer, n: usize, what: &str) -> Vec<Event> {
    let got = causeway_testkit::receive_and_ack(sink, n, Duration::from_secs(90)).await;
    let extra = causeway_testkit::receive_and_ack(sink, 1, Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "{what}: a duplicate reached the sink: {:?}",
        extra[0].id
    );
    got
}

/// Every sent event arrived once, unchanged, in order per key if `ordered`.
pub fn check(sent: &[Event], got: &[Event], ordered: bool, what: &str) {
    let by_id: BTreeMap<&str, &Event> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut seen = BTreeMap::new();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for e in got {
        assert_eq!(
            by_id.get(e.id.as_str()),
            Some(&e),
            "{what}: event changed or unknown"
        );
        assert!(
            seen.insert(e.id.as_str(), ()).is_none(),
            "{what}: {} twice",
            e.id
        );
        let seq: usize = e.header("seq").expect("seq").parse().expect("seq");
        if let (true, Some(prev)) = (ordered, last.insert(e.key.as_deref().expect("key"), seq)) {
            assert!(prev < seq, "{what}: order per key broken at {}", e.id);
        }
    }
    let missing: Vec<&str> = by_id
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: lost {} of {}, e.g. {:?}",
        missing.len(),
        sent.len(),
        &missing[..missing.len().min(5)]
    );
}

/// `n` plain messages for run `prefix`: a JSON payload (with non-ASCII
/// text), a key out of `keys`, headers `seq` and `x-origin`; no
/// CloudEvents attribute. The id is only the source adapter's: a route
/// reading them raw gives them its own.
pub fn raw_messages(prefix: &str, n: usize, keys: usize) -> Vec<Event> {
    use causeway_core::{Format, Header};
    causeway_testkit::events(prefix, n, keys)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.format = Format::Raw;
            e.kind.clear();
            e.time = None;
            e.headers.clear();
            e.payload =
                format!("{{\"run\":\"{prefix}\",\"seq\":{i},\"note\":\"Zürich ✓\"}}").into();
            e.native.key = e.key.clone().map(Into::into);
            e.native.headers = vec![
                Header::text("seq", i.to_string()),
                Header::text("x-origin", "core-banking"),
            ];
            e
        })
        .collect()
}

/// Every sent raw message arrived once (known by its payload), raw, with
/// its payload byte for byte, its key and its headers' values, in order
/// per key if `ordered`. Headers a sink adds (a broker's message id) may
/// be there as well.
pub fn check_raw(sent: &[Event], got: &[Event], ordered: bool, what: &str) {
    let by_payload: BTreeMap<&[u8], &Event> =
        sent.iter().map(|e| (e.payload.as_ref(), e)).collect();
    let mut seen = BTreeMap::new();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for e in got {
        assert!(e.is_raw(), "{what}: read back as a CloudEvent: {e:?}");
        let Some(s) = by_payload.get(e.payload.as_ref()) else {
            panic!("{what}: payload changed or unknown: {:?}", e.payload);
        };
        assert!(
            seen.insert(e.payload.as_ref(), ()).is_none(),
            "{what}: {:?} twice",
            e.payload
        );
        assert_eq!(e.key, s.key, "{what}: key of {:?}", e.payload);
        for h in &s.native.headers {
            let value = e.native.header(&h.name).map(|v| v.to_bytes().into_owned());
            assert_eq!(
                value.as_deref(),
                Some(h.value.to_bytes().as_ref()),
                "{what}: header `{}` of {:?}",
                h.name,
                e.native.headers
            );
        }
        let seq = s
            .native
            .header("seq")
            .and_then(|v| v.to_text())
            .expect("seq");
        let seq: usize = seq.parse().expect("seq");
        if let (true, Some(prev)) = (ordered, last.insert(s.key.as_deref().expect("key"), seq)) {
            assert!(prev < seq, "{what}: order per key broken at seq {seq}");
        }
    }
    assert_eq!(
        seen.len(),
        sent.len(),
        "{what}: lost {} of {}",
        sent.len() - seen.len(),
        sent.len()
    );
}

/// What reached a sink, through the sink-side idempotent handler a
/// consumer without native dedup runs (causeway-core's, on an in-memory store).
#[derive(Debug, Default)]
pub struct Tally {
    /// Events the handler let through, in arrival order.
    pub handled: Vec<Event>,
    /// Copies the handler dropped: duplicates that reached the sink.
    pub duplicates_at_sink: usize,
}

impl Tally {
    /// Ids of `expected` that never arrived.
    pub fn lost<'a>(&self, expected: &'a [Event]) -> Vec<&'a str> {
        let seen: std::collections::HashSet<&str> =
            self.handled.iter().map(|e| e.id.as_str()).collect();
        expected
            .iter()
            .map(|e| e.id.as_str())
            .filter(|id| !seen.contains(id))
            .collect()
    }

    /// Events the handler let through more than once (must be none).
    pub fn duplicates_after_dedup(&self) -> usize {
        let unique: std::collections::HashSet<&str> =
            self.handled.iter().map(|e| e.id.as_str()).collect();
        self.handled.len() - unique.len()
    }

    /// Asserts lost = 0 and duplicates after dedup = 0 (and events intact),
    /// and prints the counts.
    pub fn assert_exact(&self, expected: &[Event], what: &str) {
        let lost = self.lost(expected);
        println!(
            "{what}: {} expected, lost = {}, duplicates at the sink = {}, duplicates after dedup = {}",
            expected.len(),
            lost.len(),
            self.duplicates_at_sink,
            self.duplicates_after_dedup()
        );
        assert!(
            lost.is_empty(),
            "{what}: lost {}, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
        assert_eq!(self.duplicates_after_dedup(), 0, "{what}");
        check(expected, &self.handled, false, what);
    }
}

/// Reads the sink until every id of `expected` went through the idempotent
/// handler or `timeout` passed, then for `quiet` more for late copies.
pub async fn read_through_dedup(
    sink: &mut dyn Consumer,
    expected: &[Event],
    timeout: Duration,
    quiet: Duration,
) -> Tally {
    let handled = Arc::new(Mutex::new(Vec::new()));
    let into = handled.clone();
    let handler = IdempotentHandler::new(MemoryDedupStore::new(), "sink", move |e: Event| {
        let into = into.clone();
        async move {
            into.lock().expect("lock").push(e);
            Ok(())
        }
    });
    let wanted: std::collections::HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut duplicates = 0;
    let deadline = Instant::now() + timeout;
    let mut quiet_until = None;
    loop {
        let now = Instant::now();
        let until = quiet_until.unwrap_or(deadline);
        if now >= until {
            break;
        }
        let batch = sink
            .next_batch(500, (until - now).min(Duration::from_secs(1)))
            .await
            .expect("read the sink");
        let mut tickets = Vec::new();
        for d in batch {
            let id = d.event.id.clone();
            match handler.handle(d.event).await.expect("sink handler") {
                Handled::Ran(()) => {
                    if wanted.contains(id.as_str()) {
                        seen.insert(id);
                    }
                }
                Handled::AlreadyDone | Handled::Busy => duplicates += 1,
            }
            tickets.push((d.ticket, causeway_core::Settlement::Ack));
        }
        causeway_core::settle_all(tickets).await.expect("ack");
        if quiet_until.is_none() && seen.len() == wanted.len() {
            quiet_until = Some(Instant::now() + quiet);
        }
    }
    let handled = std::mem::take(&mut *handled.lock().expect("lock"));
    Tally {
        handled,
        duplicates_at_sink: duplicates,
    }
}

/// The `causeway` program, built by this package from the bridge's CLI
/// module so that it is always the current code.
pub fn causeway_binary() -> &'static str {
    env!("CARGO_BIN_EXE_causeway-under-test")
}

/// A free port on 127.0.0.1 (for a bridge process's metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `causeway run` as a child process, logging to a file.
pub struct BridgeProcess {
    child: tokio::process::Child,
    metrics: String,
    pub log: PathBuf,
}

impl BridgeProcess {
    /// Writes `setup`'s config (with a metrics port of its own) to `dir`
    /// and starts `causeway run` on it; `name` tells instances apart.
    pub async fn start(
        dir: &Path,
        name: &str,
        setup: &Setup,
        emulator: &ServiceBusEmulator,
    ) -> BridgeProcess {
        let mut setup = setup.clone();
        let listen = format!("127.0.0.1:{}", free_port());
        setup.metrics = Some(listen.clone());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, setup.toml()).expect("write config");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = tokio::process::Command::new(causeway_binary())
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env(
                "CAUSEWAY_SERVICEBUS_SAS_KEY",
                emulator
                    .key(servicebus_emulator::ROOT_POLICY)
                    .unwrap_or_default(),
            )
            .env("CAUSEWAY_LOG", "info")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("start causeway");
        let process = BridgeProcess {
            child,
            metrics: format!("http://{listen}/metrics"),
            log,
        };
        process.wait_ready().await;
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    async fn wait_ready(&self) {
        let ready = self.metrics.replace("/metrics", "/readyz");
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(&ready).await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("causeway did not become ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A counter or gauge of route `r`, e.g. `events_published`, summed over
    /// its sinks `r/<sink>` when it has several.
    pub async fn metric(&self, name: &str) -> u64 {
        let Ok(text) = reqwest::get(&self.metrics)
            .await
            .and_then(|r| r.error_for_status())
        else {
            return 0;
        };
        let text = text.text().await.unwrap_or_default();
        let (plain, total) = (format!("causeway_{name}"), format!("causeway_{name}_total"));
        // Route `r`, or the sum over its sinks `r/<sink>`.
        text.lines()
            .filter(|l| {
                l.split_once('{').is_some_and(|(metric, labels)| {
                    (metric == plain || metric == total)
                        && (labels.contains("route=\"r\"") || labels.contains("route=\"r/"))
                })
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    /// Waits until the process published at least `n` events.
    pub async fn wait_published(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.metric("events_published").await < n {
            assert!(
                Instant::now() < deadline,
                "causeway published fewer than {n} events in {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no shutdown, no flush, nothing finished.
    pub async fn kill_9(mut self) {
        self.child.start_kill().expect("kill -9");
        self.child.wait().await.expect("reap");
    }

    /// SIGSTOP / SIGCONT: a paused process (a "zombie" once its leases ran out).
    pub fn pause(&self, paused: bool) {
        let signal = if paused { "-STOP" } else { "-CONT" };
        let ok = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {signal} failed");
    }

    /// SIGTERM, and the exit status must be success (in-flight work finished).
    pub async fn stop(mut self) {
        let ok = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -TERM failed");
        let Ok(status) = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await
        else {
            panic!(
                "causeway did not stop within 60 s of SIGTERM; log:\n{}",
                self.log_text()
            );
        };
        let status = status.expect("wait");
        assert!(
            status.success(),
            "causeway exited with {status}; log:\n{}",
            self.log_text()
        );
    }
}

/// A RabbitMQ node of a test's own (its own port, data and logs), so a
/// test can restart it without disturbing the shared broker.
pub struct RabbitNode {
    dir: PathBuf,
    pub port: u16,
}

impl RabbitNode {
    /// Starts node `causeway-<port>@localhost` on a free port; `rabbitmq-server`
    /// must be installed (`cargo xtask services up rabbitmq` installs it).
    pub async fn start() -> RabbitNode {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("causeway-rabbit-{port}"));
        std::fs::create_dir_all(dir.join("mnesia")).expect("node dir");
        std::fs::create_dir_all(dir.join("log")).expect("node dir");
        let d = dir.display();
        std::fs::write(
            dir.join("env.conf"),
            format!(
                "NODENAME=causeway-{port}@localhost\nNODE_IP_ADDRESS=127.0.0.1\nNODE_PORT={port}\n\
                 DIST_PORT={dist}\nMNESIA_BASE={d}/mnesia\nLOG_BASE={d}/log\nPID_FILE={d}/pid\n\
                 ENABLED_PLUGINS_FILE={d}/plugins\nFEATURE_FLAGS_FILE={d}/feature_flags\n\
                 CONFIG_FILE={d}/rabbitmq.conf\n",
                dist = free_port(),
            ),
        )
        .expect("env.conf");
        std::fs::write(dir.join("plugins"), "[].\n").expect("plugins");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\n"),
        )
        .expect("rabbitmq.conf");
        // rabbitmq-server drops to the `rabbitmq` user when started as root.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = RabbitNode { dir, port };
        node.up().await;
        node
    }

    fn ctl(&self, program: &str, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(program);
        c.args(args)
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("env.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Starts the node and waits until it accepts connections.
    pub async fn up(&self) {
        let started = self.ctl("rabbitmq-server", &["-detached"]).status();
        assert!(
            started.is_ok_and(|s| s.success()),
            "cannot start rabbitmq-server (install it: `cargo xtask services up rabbitmq`)"
        );
        for _ in 0..240 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // The CLI answers once the node finished booting.
                self.rabbitmqctl(&["await_startup"]).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "the test's RabbitMQ node on port {} did not start; logs in {}",
            self.port,
            self.dir.display()
        );
    }

    /// Stops the node (`rabbitmqctl stop`: the broker's own shutdown).
    pub fn down(&self) {
        let _ = self.ctl("rabbitmqctl", &["-q", "stop"]).status();
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl args` against this node, without blocking the
    /// runtime (the CLI takes about a second, and the bridge under test
    /// runs on the same threads); panics, with its error output, if it
    /// still fails after a few tries: a node whose AMQP port just opened
    /// may not answer the CLI yet (seen once in CI). A try that did its work
    /// but answered late makes the next say the thing "already exists":
    /// done, then.
    pub async fn rabbitmqctl(&self, args: &[&str]) {
        let mut all = vec!["-q"];
        all.extend_from_slice(args);
        let mut last = String::new();
        for _ in 0..20 {
            let mut command = tokio::process::Command::from(self.ctl("rabbitmqctl", &all));
            match command.stderr(Stdio::piped()).output().await {
                Ok(out) if out.status.success() => return,
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => last = e.to_string(),
            }
            if last.contains("already exists") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "rabbitmqctl {} failed on the test's node (logs in {}): {last}",
            args.first().copied().unwrap_or_default(),
            self.dir.display()
        );
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.down();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
