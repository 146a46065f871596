//! The bridge between real brokers: NATS JetStream → RabbitMQ (direct mode)
//! and back, RabbitMQ → NATS (durable mode); Kafka (Tansu) → SQS FIFO
//! (durable, the FinBank route) and SQS → RabbitMQ (direct), SQS being moto,
//! an emulator; Kafka → Service Bus (durable, the FinBank Azure route) and
//! Service Bus → RabbitMQ (direct), Service Bus being causeway-testkit's REST
//! emulator, in process. Every event arrives once, in order per key, every
//! field intact, checked with the sink's own client. The 5 × 5 matrix and
//! the fault tests are issue 9's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::config::Config;
use causeway_core::{Consumer, Event, Publisher};
use causeway_testkit::servicebus_emulator::{self, QueueOptions, ServiceBusEmulator};
use tokio_util::sync::CancellationToken;

fn nats_url() -> String {
    causeway_testkit::env::endpoint("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222")
}

fn rabbit_url() -> String {
    causeway_testkit::env::endpoint(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn kafka_brokers() -> String {
    causeway_testkit::env::endpoint("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092")
}

fn sqs_endpoint() -> String {
    causeway_testkit::env::endpoint("CAUSEWAY_SQS_ENDPOINT", "http://127.0.0.1:4566")
}

fn config(
    dir: &tempfile::TempDir,
    prefix: &str,
    from: &str,
    to: &str,
    destination: &str,
    mode: &str,
) -> Config {
    let text = format!(
        r#"
[store]
sqlite = "{dir}/store.db"
[endpoints.nats.nats]
url = "{nats}"
stream = {{ name = "{prefix}", subjects = ["{prefix}.>"] }}
consumer = {{ durable = "bridge", filter_subject = "{prefix}.in", ack_wait = "30s" }}
[endpoints.rabbit.rabbitmq]
url = "{rabbit}"
queue = {{ name = "{prefix}-in", prefetch = 500 }}
[endpoints.kafka.kafka]
brokers = "{kafka}"
consumer = {{ group = "bridge", topics = ["{prefix}-in"] }}
[endpoints.sqs.sqs]
endpoint = "{sqs}"
region = "us-east-1"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}
create_queues = true
queue = {{ name = "{prefix}-in", long_poll = "1s" }}
[endpoints.sb.servicebus]
namespace = "{namespace}"
sas_policy = "{policy}"
endpoint = "{servicebus}"
duplicate_detection = true
publish = {{ key_property = "session_id" }}
receive = {{ entity = "{prefix}-in", long_poll = "1s" }}
[routes.r]
source = "{from}"
sink = "{to}"
destination = "{destination}"
mode = "{mode}"
linger = "20ms"
"#,
        dir = dir.path().display(),
        nats = nats_url(),
        rabbit = rabbit_url(),
        kafka = kafka_brokers(),
        sqs = sqs_endpoint(),
        namespace = servicebus_emulator::NAMESPACE,
        policy = servicebus_emulator::ROOT_POLICY,
        servicebus = "http://127.0.0.1:9",
    );
    Config::parse(&text, "real_brokers.toml").expect("config")
}

/// The config of `config`, its Service Bus endpoint pointed at `emulator`
/// with the emulator's key (which a deployment reads from the environment).
fn with_emulator(mut config: Config, emulator: &ServiceBusEmulator) -> Config {
    if let Some(causeway_bridge::config::EndpointConfig::Servicebus(c)) =
        config.endpoints.get_mut("sb")
    {
        c.endpoint = Some(emulator.url());
        c.sas_key = emulator
            .key(servicebus_emulator::ROOT_POLICY)
            .map(str::to_owned);
    }
    config
}

fn servicebus_queue(emulator: &ServiceBusEmulator, name: &str) {
    emulator.create_queue(
        name,
        QueueOptions {
            duplicate_detection: Some(Duration::from_secs(600)),
            ..QueueOptions::default()
        },
    );
}

/// Runs route `r` until `n` events were published, then shuts it down.
async fn run_route(bridge: &Bridge, n: u64) {
    let route = bridge
        .route("r")
        .await
        .expect("route (are the brokers up? `cargo xtask services up nats rabbitmq`)");
    let source = bridge
        .endpoints
        .consumer(&route.config.source)
        .await
        .expect("source");
    let published = bridge.metrics.route("r").published;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(route.run(source, shutdown.clone()));
    for _ in 0..1800 {
        if published.get() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    task.await.expect("task").expect("clean stop");
    assert_eq!(published.get(), n, "events published by the bridge");
}

fn check(sent: &[Event], got: &[Event]) {
    assert_eq!(got.len(), sent.len(), "every event once");
    let by_id: BTreeMap<&str, &Event> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut last: BTreeMap<&str, usize> = BTreeMap::new();
    for e in got {
        assert_eq!(
            by_id.get(e.id.as_str()),
            Some(&e),
            "event changed or unknown"
        );
        let seq: usize = e.header("seq").expect("seq").parse().expect("seq");
        if let Some(prev) = last.insert(e.key.as_deref().expect("key"), seq) {
            assert!(prev < seq, "order per key broken");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_to_rabbitmq_direct() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let queue = format!("{prefix}-out");
    let mut bridge = Bridge::new(config(&dir, &prefix, "nats", "rabbit", &queue, "direct"))
        .await
        .expect("bridge");
    // The sink queue must exist before the bridge publishes to it (mandatory publishes).
    let sink_client = rabbit_client(&queue).await;
    bridge.config.routes.get_mut("r").expect("route").shards = 4;
    let sent = causeway_testkit::events(&prefix, 1000, 20);
    let nats = bridge
        .endpoints
        .publisher("nats")
        .await
        .expect("nats publisher");
    assert!(
        nats.publish(&format!("{prefix}.in"), &sent)
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 1000).await;
    let mut sink = sink_client.consumer(None).await.expect("rabbit consumer");
    let got = causeway_testkit::receive_and_ack(&mut sink, 1000, Duration::from_secs(30)).await;
    let extra = causeway_testkit::receive_and_ack(&mut sink, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "a duplicate reached the sink");
    check(&sent, &got);
}

async fn rabbit_client(queue: &str) -> causeway_rabbitmq::RabbitClient {
    causeway_rabbitmq::RabbitClient::connect(causeway_rabbitmq::RabbitConfig {
        url: rabbit_url(),
        exchange: String::new(),
        exchange_kind: causeway_rabbitmq::ExchangeKind::Direct,
        publish: Default::default(),
        queue: Some(causeway_rabbitmq::QueueConfig {
            name: queue.to_owned(),
            kind: causeway_rabbitmq::QueueKind::Classic,
            bindings: Vec::new(),
            prefetch: 500,
            dead_letter_queue: None,
            delivery_limit: None,
            stream_offset: None,
        }),
        max_message_bytes: 16 * 1024 * 1024,
        max_reconnect_delay: Duration::from_secs(1),
    })
    .await
    .unwrap_or_else(|e| {
        causeway_testkit::env::unreachable("rabbitmq", "CAUSEWAY_RABBITMQ_URL", &rabbit_url(), e)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_nats_durable() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let bridge = Bridge::new(config(
        &dir,
        &prefix,
        "rabbit",
        "nats",
        &format!("{prefix}.out"),
        "durable",
    ))
    .await
    .expect("bridge");
    let source_client = rabbit_client(&format!("{prefix}-in")).await;
    let sent = causeway_testkit::events(&prefix, 1000, 20);
    let rabbit: Arc<dyn Publisher> = Arc::new(source_client.publisher());
    assert!(
        rabbit
            .publish(&format!("{prefix}-in"), &sent)
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 1000).await;
    // Read the sink with NATS's own consumer.
    let nats = match &bridge.config.endpoints["nats"] {
        causeway_bridge::config::EndpointConfig::Nats(c) => c.clone(),
        _ => unreachable!("the config above"),
    };
    let client = causeway_nats::NatsClient::connect(nats)
        .await
        .expect("nats");
    let mut sink: Box<dyn Consumer> = Box::new(
        client
            .consumer(Some(&causeway_nats::ConsumerConfig {
                durable: "check".into(),
                filter_subject: Some(format!("{prefix}.out")),
                ack_wait: Duration::from_secs(30),
                max_deliver: -1,
                dead_letter_subject: None,
                start: causeway_nats::Start::All,
                prefetch: 500,
            }))
            .await
            .expect("nats consumer"),
    );
    let got = causeway_testkit::receive_and_ack(sink.as_mut(), 1000, Duration::from_secs(30)).await;
    let extra = causeway_testkit::receive_and_ack(sink.as_mut(), 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "a duplicate reached the sink");
    check(&sent, &got);
}

/// The FinBank route: the on-prem Kafka to an SQS FIFO queue, durable mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_sqs_fifo_durable_moto_emulator() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let out = format!("{prefix}-out.fifo");
    let bridge = Bridge::new(config(&dir, &prefix, "kafka", "sqs", &out, "durable"))
        .await
        .expect("bridge");
    create_topic(&format!("{prefix}-in"), 3).await;
    let sent = causeway_testkit::events(&prefix, 300, 15);
    let kafka = bridge
        .endpoints
        .publisher("kafka")
        .await
        .expect("kafka publisher");
    assert!(
        kafka
            .publish(&format!("{prefix}-in"), &sent)
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 300).await;
    let got = read_sqs(&bridge, &out, 300).await;
    check(&sent, &got);
    println!("kafka -> sqs fifo (moto emulator): 300 of 300, once each, in order per key");
}

/// SQS (standard queue) as a source, RabbitMQ as the sink, direct mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_to_rabbitmq_direct_moto_emulator() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let queue = format!("{prefix}-out");
    let bridge = Bridge::new(config(&dir, &prefix, "sqs", "rabbit", &queue, "direct"))
        .await
        .expect("bridge");
    let sink_client = rabbit_client(&queue).await;
    // Standard queues do not keep order: send one key's events one by one.
    let sent = causeway_testkit::events(&prefix, 200, 200);
    let sqs = bridge
        .endpoints
        .publisher("sqs")
        .await
        .expect("sqs publisher");
    assert!(
        sqs.publish(&format!("{prefix}-in"), &sent)
            .await
            .expect("publish (is moto up? `cargo xtask services up sqs`)")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 200).await;
    let mut sink = sink_client.consumer(None).await.expect("rabbit consumer");
    let got = causeway_testkit::receive_and_ack(&mut sink, 200, Duration::from_secs(30)).await;
    let extra = causeway_testkit::receive_and_ack(&mut sink, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "a duplicate reached the sink");
    check(&sent, &got);
}

async fn create_topic(topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let brokers = kafka_brokers();
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await;
    if let Err(e) = created.map(|r| r.into_iter().collect::<Result<Vec<_>, _>>()) {
        causeway_testkit::env::unreachable("kafka", "CAUSEWAY_KAFKA_BROKERS", &brokers, e);
    }
}

/// Reads `n` events from an SQS queue with the SQS adapter's own consumer,
/// and checks nothing more arrives.
async fn read_sqs(bridge: &Bridge, queue: &str, n: usize) -> Vec<Event> {
    let causeway_bridge::config::EndpointConfig::Sqs(c) = &bridge.config.endpoints["sqs"] else {
        unreachable!("the config above")
    };
    let client = causeway_sqs::SqsClient::connect(c.clone())
        .await
        .expect("sqs");
    let mut sink = client
        .consumer(Some(&causeway_sqs::QueueConfig {
            long_poll: Duration::from_secs(1),
            ..causeway_sqs::QueueConfig::named(queue)
        }))
        .await
        .expect("sqs consumer");
    let got = causeway_testkit::receive_and_ack(&mut sink, n, Duration::from_secs(60)).await;
    let extra = causeway_testkit::receive_and_ack(&mut sink, 1, Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "a duplicate reached the sink: {:?}",
        extra[0].id
    );
    sink.close().await.expect("close");
    got
}

/// The FinBank Azure route: the on-prem Kafka to a Service Bus queue with
/// duplicate detection, durable mode, the key as `SessionId`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_servicebus_durable_rest_emulator() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let out = format!("{prefix}-out");
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    servicebus_queue(&emulator, &out);
    // The endpoint's receive entity, which `check` probes too.
    servicebus_queue(&emulator, &format!("{prefix}-in"));
    let config = config(&dir, &prefix, "kafka", "sb", &out, "durable");
    let bridge = Bridge::new(with_emulator(config, &emulator))
        .await
        .expect("bridge");
    bridge
        .endpoints
        .check("sb")
        .await
        .expect("check: key and entities");
    create_topic(&format!("{prefix}-in"), 3).await;
    let sent = causeway_testkit::events(&prefix, 500, 20);
    let kafka = bridge
        .endpoints
        .publisher("kafka")
        .await
        .expect("kafka publisher");
    assert!(
        kafka
            .publish(&format!("{prefix}-in"), &sent)
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 500).await;
    let got = read_servicebus(&bridge, &out, 500).await;
    check(&sent, &got);
    println!("kafka -> servicebus (REST emulator): 500 of 500, once each, in order per key");
}

/// Service Bus as a source (peek-lock), RabbitMQ as the sink, direct mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servicebus_to_rabbitmq_direct_rest_emulator() {
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("br");
    let queue = format!("{prefix}-out");
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    servicebus_queue(&emulator, &format!("{prefix}-in"));
    let config = config(&dir, &prefix, "sb", "rabbit", &queue, "direct");
    let mut bridge = Bridge::new(with_emulator(config, &emulator))
        .await
        .expect("bridge");
    // Competing peek-locks do not keep order: one key per event.
    bridge.config.routes.get_mut("r").expect("route").shards = 4;
    let sink_client = rabbit_client(&queue).await;
    let sent = causeway_testkit::events(&prefix, 500, 500);
    let sb = bridge
        .endpoints
        .publisher("sb")
        .await
        .expect("sb publisher");
    assert!(
        sb.publish(&format!("{prefix}-in"), &sent)
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    run_route(&bridge, 500).await;
    let mut sink = sink_client.consumer(None).await.expect("rabbit consumer");
    let got = causeway_testkit::receive_and_ack(&mut sink, 500, Duration::from_secs(30)).await;
    let extra = causeway_testkit::receive_and_ack(&mut sink, 1, Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "a duplicate reached the sink");
    check(&sent, &got);
    assert_eq!(
        emulator.message_count(&format!("{prefix}-in")),
        Some(0),
        "every source message completed"
    );
}

/// Reads `n` events from a Service Bus queue with the adapter's own
/// consumer (one peek-lock at a time, so the queue's order shows), and
/// checks nothing more arrives.
async fn read_servicebus(bridge: &Bridge, queue: &str, n: usize) -> Vec<Event> {
    let causeway_bridge::config::EndpointConfig::Servicebus(c) = &bridge.config.endpoints["sb"]
    else {
        unreachable!("the config above")
    };
    let client = causeway_servicebus::ServiceBusClient::connect(c.clone()).expect("servicebus");
    let mut sink = client
        .consumer(Some(&causeway_servicebus::ReceiveConfig {
            receives_in_flight: 1,
            long_poll: Duration::from_secs(1),
            ..causeway_servicebus::ReceiveConfig::entity(queue)
        }))
        .expect("servicebus consumer");
    let got = causeway_testkit::receive_and_ack(&mut sink, n, Duration::from_secs(60)).await;
    let extra = causeway_testkit::receive_and_ack(&mut sink, 1, Duration::from_secs(3)).await;
    assert!(
        extra.is_empty(),
        "a duplicate reached the sink: {:?}",
        extra[0].id
    );
    sink.close().await.expect("close");
    got
}
