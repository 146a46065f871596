//! The traffic that exists: the seed's own producer shape, an ordinary
//! Kafka producer writing plain JSON transactions keyed by account into
//! `transactions-{AccountId % 10}` (no CloudEvents header), bridged to SQS
//! FIFO (moto, an emulator) and Service Bus (causeway's REST emulator).
//! Before raw messages every one was refused as undecodable (0 of 30
//! arrived); now every message must arrive once per sink, payload byte for
//! byte, key kept, in order per account, through one route: one consumer
//! group on the ten topics feeding both sinks.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::config::{Config, EndpointConfig};
use causeway_core::Event;
use causeway_servicebus_emulator::{self as servicebus_emulator, QueueOptions, ServiceBusEmulator};
use tokio_util::sync::CancellationToken;

/// Transactions in all: 7 accounts over the 10 topics.
const TRANSACTIONS: usize = 120;
const ACCOUNTS: usize = 7;

fn config(dir: &std::path::Path, p: &str, emulator: &ServiceBusEmulator) -> Config {
    let kafka = common::env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let sqs = common::env("CAUSEWAY_SQS_ENDPOINT", "http://127.0.0.1:4566");
    let topics = (0..10)
        .map(|i| format!("\"{p}-transactions-{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        r#"
[store]
sqlite = "{dir}/store.db"

[endpoints.onprem.kafka]
brokers = "{kafka}"
consumer = {{ group = "{p}-bridge", topics = [{topics}] }}

[endpoints.aws.sqs]
endpoint = "{sqs}"
region = "us-east-1"
credentials = {{ access_key_id = "test", secret_access_key = "test" }}
create_queues = true
queue = {{ name = "{p}-tx.fifo", long_poll = "1s" }}

[endpoints.azure.servicebus]
namespace = "{namespace}"
sas_policy = "{policy}"
endpoint = "{sb}"
duplicate_detection = true
publish = {{ key_property = "session_id" }}
receive = {{ entity = "{p}-tx", long_poll = "1s", receives_in_flight = 1 }}

[routes.transactions]
source = "onprem"
linger = "20ms"
[routes.transactions.sinks.aws]
endpoint = "aws"
destination = "{p}-tx.fifo"
[routes.transactions.sinks.azure]
endpoint = "azure"
destination = "{p}-tx"
"#,
        dir = dir.display(),
        namespace = servicebus_emulator::NAMESPACE,
        policy = servicebus_emulator::ROOT_POLICY,
        sb = emulator.url(),
    );
    let mut config = Config::parse(&text, "plain.toml").expect("config");
    if let Some(EndpointConfig::Servicebus(c)) = config.endpoints.get_mut("azure") {
        c.sas_key = emulator.key(servicebus_emulator::ROOT_POLICY);
    }
    config
}

/// The seed's `ProduceAsync(topic, value, key)`: rdkafka, a key and a
/// value, nothing else. Returns each transaction's payload and account.
async fn produce(p: &str) -> Vec<(Vec<u8>, String)> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = common::env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let names: Vec<String> = (0..10).map(|i| format!("{p}-transactions-{i}")).collect();
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| NewTopic::new(n, 1, TopicReplication::Fixed(1)))
        .collect();
    let created = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await;
    if let Err(e) = created.map(|r| r.into_iter().collect::<Result<Vec<_>, _>>()) {
        causeway_testkit::env::unreachable("kafka", "CAUSEWAY_KAFKA_BROKERS", &brokers, e);
    }
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let mut sent = Vec::with_capacity(TRANSACTIONS);
    for tx in 0..TRANSACTIONS {
        let account = 1000 + tx % ACCOUNTS;
        let value = format!(
            r#"{{"TxId":{tx},"AccountId":{account},"Amount":{}.{:02},"Memo":"Überweisung ✓"}}"#,
            tx * 3,
            tx % 100
        );
        let key = account.to_string();
        producer
            .send(
                FutureRecord::to(&format!("{p}-transactions-{}", account % 10))
                    .key(&key)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        sent.push((value.into_bytes(), key));
    }
    sent
}

/// Every transaction once, payload byte for byte, key = the account, in
/// order per account (`TxId` rises).
fn check(sent: &[(Vec<u8>, String)], got: &[Event], what: &str) {
    let by_payload: BTreeMap<&[u8], &str> = sent
        .iter()
        .map(|(v, k)| (v.as_slice(), k.as_str()))
        .collect();
    let mut seen = BTreeMap::new();
    let mut last: BTreeMap<String, usize> = BTreeMap::new();
    for e in got {
        assert!(e.is_raw(), "{what}: read back as a CloudEvent");
        let key = by_payload
            .get(e.payload.as_ref())
            .unwrap_or_else(|| panic!("{what}: payload changed or unknown: {:?}", e.payload));
        assert!(
            seen.insert(e.payload.as_ref(), ()).is_none(),
            "{what}: a transaction twice"
        );
        assert_eq!(e.key.as_deref(), Some(*key), "{what}: key");
        let text = std::str::from_utf8(&e.payload).expect("utf-8");
        let tx: usize = text["{\"TxId\":".len()..]
            .split(',')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("TxId");
        if let Some(prev) = last.insert((*key).to_owned(), tx) {
            assert!(
                prev < tx,
                "{what}: order of account {key} broken at TxId {tx}"
            );
        }
    }
    assert_eq!(
        seen.len(),
        sent.len(),
        "{what}: {} of {} arrived",
        seen.len(),
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_plain_kafka_transactions_reach_sqs_fifo_and_servicebus_emulators_through_one_group()
 {
    let dir = tempfile::tempdir().expect("dir");
    let p = causeway_testkit::unique_name("seed");
    let emulator = ServiceBusEmulator::start().await.expect("emulator");
    emulator.create_queue(
        &format!("{p}-tx"),
        QueueOptions {
            duplicate_detection: Some(Duration::from_secs(600)),
            ..QueueOptions::default()
        },
    );
    let sent = produce(&p).await;
    let bridge = std::sync::Arc::new(
        Bridge::new(config(dir.path(), &p, &emulator))
            .await
            .expect("bridge"),
    );
    // The sinks' own readers first: SQS creates the FIFO queue.
    let mut aws = bridge.endpoints.consumer("aws").await.expect("sqs reader");
    let mut azure = bridge
        .endpoints
        .consumer("azure")
        .await
        .expect("service bus reader");
    let shutdown = CancellationToken::new();
    let running = {
        let bridge = bridge.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { bridge.run(shutdown).await })
    };
    let got_aws = common::read(aws.as_mut(), TRANSACTIONS, "kafka -> sqs fifo").await;
    let got_azure = common::read(azure.as_mut(), TRANSACTIONS, "kafka -> service bus").await;
    shutdown.cancel();
    running
        .await
        .expect("task")
        .expect("bridge stopped cleanly");
    check(&sent, &got_aws, "kafka -> sqs fifo (moto emulator)");
    check(&sent, &got_azure, "kafka -> service bus (REST emulator)");
    println!(
        "plain Kafka transactions: {TRANSACTIONS} of {TRANSACTIONS} at SQS FIFO and at Service Bus through one consumer group, once each, payload and key intact, in order per account"
    );
}
