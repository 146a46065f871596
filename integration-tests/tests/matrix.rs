//! The bridge between every source and every sink among Kafka (Tansu),
//! RabbitMQ, NATS JetStream, SQS (moto, an emulator) and Service Bus
//! (causeway-testkit's REST emulator, in process): 25 routes, each in direct
//! and in durable mode. Each moves events with keys and headers; the sink is
//! read with the sink's own adapter, and every event must arrive once, with
//! every CloudEvents attribute and header intact, in order per key where the
//! source keeps one (SQS standard queues and Service Bus do not: their
//! events get a key each).

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::config::{Config, EndpointConfig};
use causeway_core::{Consumer, Event};
use causeway_testkit::servicebus_emulator::{self, QueueOptions, ServiceBusEmulator};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Kafka,
    Nats,
    Rabbit,
    Sqs,
    ServiceBus,
}

use Broker::{Kafka, Nats, Rabbit, ServiceBus, Sqs};

impl Broker {
    /// Its endpoint name in the config.
    fn name(self) -> &'static str {
        match self {
            Kafka => "kafka",
            Nats => "nats",
            Rabbit => "rabbit",
            Sqs => "sqs",
            ServiceBus => "sb",
        }
    }

    /// Where the events go in (source) or out (sink), for run `prefix`.
    fn destination(self, prefix: &str, dir: &str) -> String {
        match (self, dir) {
            (Nats, _) => format!("{prefix}.{dir}"),
            // FIFO on the way out: order per key and SQS's own dedup.
            (Sqs, "out") => format!("{prefix}-out.fifo"),
            _ => format!("{prefix}-{dir}"),
        }
    }

    /// Whether a consumer of it keeps publish order per key (SQS standard
    /// queues and Service Bus without sessions do not).
    fn keeps_order(self) -> bool {
        matches!(self, Kafka | Nats | Rabbit)
    }

    /// Events per route: moto serves about 50 messages a second.
    fn events(from: Broker, to: Broker) -> usize {
        if from == Sqs || to == Sqs { 60 } else { 200 }
    }
}

fn env(var: &str, default: &str) -> String {
    causeway_testkit::env::endpoint(var, default)
}

/// Every broker twice: as the route's endpoint (consuming `-in`) and as
/// `<name>-check`, the sink's own consumer of `-out`.
fn config(dir: &tempfile::TempDir, prefix: &str, from: Broker, to: Broker, mode: &str) -> Config {
    let text = format!(
        r#"
[store]
sqlite = "{dir}/store.db"
[endpoints.kafka.kafka]
brokers = "{kafka}"
consumer = {{ group = "{prefix}-bridge", topics = ["{prefix}-in"] }}
[endpoints.kafka-check.kafka]
brokers = "{kafka}"
consumer = {{ group = "{prefix}-check", topics = ["{prefix}-out"] }}
[endpoints.nats.nats]
url = "{nats}"
stream = {{ name = "{prefix}-in", subjects = ["{prefix}.in"] }}
consumer = {{ durable = "bridge", filter_subject = "{prefix}.in", ack_wait = "30s" }}
# Out in a stream of its own: JetStream drops a message id it has seen in
# the same stream, and the events keep their ids from `in` to `out`.
[endpoints.nats-check.nats]
url = "{nats}"
stream = {{ name = "{prefix}-out", subjects = ["{prefix}.out"] }}
consumer = {{ durable = "check", filter_subject = "{prefix}.out", ack_wait = "30s" }}
[endpoints.rabbit.rabbitmq]
url = "{rabbit}"
queue = {{ name = "{prefix}-in", prefetch = 500 }}
[endpoints.rabbit-check.rabbitmq]
url = "{rabbit}"
queue = {{ name = "{prefix}-out", prefetch = 500 }}
[endpoints.sqs.sqs]
endpoint = "{sqs}"
region = "us-east-1"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}
create_queues = true
queue = {{ name = "{prefix}-in", long_poll = "1s" }}
[endpoints.sqs-check.sqs]
endpoint = "{sqs}"
region = "us-east-1"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}
create_queues = true
queue = {{ name = "{prefix}-out.fifo", long_poll = "1s" }}
[endpoints.sb.servicebus]
namespace = "{namespace}"
sas_policy = "{policy}"
duplicate_detection = true
publish = {{ key_property = "session_id" }}
receive = {{ entity = "{prefix}-in", long_poll = "1s" }}
[endpoints.sb-check.servicebus]
namespace = "{namespace}"
sas_policy = "{policy}"
receive = {{ entity = "{prefix}-out", long_poll = "1s", receives_in_flight = 1 }}
[routes.r]
source = "{source}"
sink = "{sink}"
destination = "{destination}"
mode = "{mode}"
linger = "20ms"
"#,
        dir = dir.path().display(),
        kafka = env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092"),
        nats = env("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222"),
        rabbit = env(
            "CAUSEWAY_RABBITMQ_URL",
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        ),
        sqs = env("CAUSEWAY_SQS_ENDPOINT", "http://127.0.0.1:4566"),
        namespace = servicebus_emulator::NAMESPACE,
        policy = servicebus_emulator::ROOT_POLICY,
        source = from.name(),
        sink = to.name(),
        destination = to.destination(prefix, "out"),
    );
    Config::parse(&text, "matrix.toml").expect("config")
}

/// Points the Service Bus endpoints at `emulator`, with its key (which a
/// deployment reads from the environment).
fn with_emulator(mut config: Config, emulator: &ServiceBusEmulator) -> Config {
    for name in ["sb", "sb-check"] {
        if let Some(EndpointConfig::Servicebus(c)) = config.endpoints.get_mut(name) {
            c.endpoint = Some(emulator.url());
            c.sas_key = emulator
                .key(servicebus_emulator::ROOT_POLICY)
                .map(str::to_owned);
        }
    }
    config
}

async fn create_topics(prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
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

/// Runs route `r` until `n` events were published, then shuts it down.
async fn run_route(bridge: &Bridge, n: u64) {
    let route = bridge.route("r").await.expect("route");
    let source = bridge
        .endpoints
        .consumer(&route.config.source)
        .await
        .expect("source");
    let published = bridge.metrics.route("r").published;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    for _ in 0..2400 {
        if published.get() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    assert_eq!(published.get(), n, "events published by the bridge");
}

/// Reads `n` events and checks that nothing more arrives.
async fn read(sink: &mut dyn Consumer, n: usize, what: &str) -> Vec<Event> {
    let got = causeway_testkit::receive_and_ack(sink, n, Duration::from_secs(90)).await;
    let extra = causeway_testkit::receive_and_ack(sink, 1, Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "{what}: a duplicate reached the sink: {:?}",
        extra[0].id
    );
    got
}

fn check(sent: &[Event], got: &[Event], ordered: bool, what: &str) {
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

async fn route(from: Broker, to: Broker, mode: &str) {
    let what = format!("{} -> {} ({mode})", from.name(), to.name());
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("mx");
    let emulator = ServiceBusEmulator::start()
        .await
        .expect("service bus emulator");
    for dir in ["in", "out"] {
        let queue = ServiceBus.destination(&prefix, dir);
        emulator.create_queue(
            &queue,
            QueueOptions {
                duplicate_detection: Some(Duration::from_secs(600)),
                ..QueueOptions::default()
            },
        );
    }
    if from == Kafka || to == Kafka {
        create_topics(&prefix).await;
    }
    let config = with_emulator(config(&dir, &prefix, from, to, mode), &emulator);
    let bridge = Bridge::new(config).await.expect("bridge");
    // What `causeway check` does: each endpoint answers and has what it names.
    for endpoint in [from.name(), to.name()] {
        bridge
            .endpoints
            .check(endpoint)
            .await
            .unwrap_or_else(|e| panic!("{what}: check {endpoint}: {e:#}"));
    }
    // The sink's own consumer first: it declares what must exist before the
    // bridge publishes (RabbitMQ's queue, SQS's FIFO queue).
    let mut sink = bridge
        .endpoints
        .consumer(&format!("{}-check", to.name()))
        .await
        .unwrap_or_else(|e| {
            panic!("{what}: sink consumer (are the brokers up? `cargo xtask services up`): {e:#}")
        });
    let n = Broker::events(from, to);
    // Every sink keeps a key's order as configured here (SQS FIFO, Service
    // Bus sessions read by one receiver): what decides is the source.
    let ordered = from.keeps_order();
    // Without order at the source, one key per event: nothing to reorder.
    let keys = if from.keeps_order() { 10 } else { n };
    let sent = causeway_testkit::events(&prefix, n, keys);
    let publisher = bridge
        .endpoints
        .publisher(from.name())
        .await
        .unwrap_or_else(|e| panic!("{what}: source publisher: {e:#}"));
    let outcomes = publisher
        .publish(&from.destination(&prefix, "in"), &sent)
        .await
        .unwrap_or_else(|e| panic!("{what}: publish to the source: {e:#}"));
    assert!(outcomes.iter().all(Result::is_ok), "{what}: {outcomes:?}");
    run_route(&bridge, n as u64).await;
    let got = read(sink.as_mut(), n, &what).await;
    sink.close().await.expect("close the sink consumer");
    check(&sent, &got, ordered, &what);
    println!(
        "{what}: {n} of {n}, once each, every field intact{}",
        if ordered { ", in order per key" } else { "" }
    );
}

macro_rules! matrix {
    ($mode:ident: $($test:ident: $from:expr => $to:expr;)*) => {
        mod $mode {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    route($from, $to, stringify!($mode)).await;
                }
            )*
        }
    };
}

macro_rules! both_modes {
    ($($rest:tt)*) => {
        matrix!(direct: $($rest)*);
        matrix!(durable: $($rest)*);
    };
}

both_modes! {
    kafka_to_kafka: Kafka => Kafka;
    kafka_to_nats: Kafka => Nats;
    kafka_to_rabbitmq: Kafka => Rabbit;
    kafka_to_sqs_moto_emulator: Kafka => Sqs;
    kafka_to_servicebus_rest_emulator: Kafka => ServiceBus;
    nats_to_kafka: Nats => Kafka;
    nats_to_nats: Nats => Nats;
    nats_to_rabbitmq: Nats => Rabbit;
    nats_to_sqs_moto_emulator: Nats => Sqs;
    nats_to_servicebus_rest_emulator: Nats => ServiceBus;
    rabbitmq_to_kafka: Rabbit => Kafka;
    rabbitmq_to_nats: Rabbit => Nats;
    rabbitmq_to_rabbitmq: Rabbit => Rabbit;
    rabbitmq_to_sqs_moto_emulator: Rabbit => Sqs;
    rabbitmq_to_servicebus_rest_emulator: Rabbit => ServiceBus;
    sqs_moto_emulator_to_kafka: Sqs => Kafka;
    sqs_moto_emulator_to_nats: Sqs => Nats;
    sqs_moto_emulator_to_rabbitmq: Sqs => Rabbit;
    sqs_moto_emulator_to_sqs_moto_emulator: Sqs => Sqs;
    sqs_moto_emulator_to_servicebus_rest_emulator: Sqs => ServiceBus;
    servicebus_rest_emulator_to_kafka: ServiceBus => Kafka;
    servicebus_rest_emulator_to_nats: ServiceBus => Nats;
    servicebus_rest_emulator_to_rabbitmq: ServiceBus => Rabbit;
    servicebus_rest_emulator_to_sqs_moto_emulator: ServiceBus => Sqs;
    servicebus_rest_emulator_to_servicebus_rest_emulator: ServiceBus => ServiceBus;
}
