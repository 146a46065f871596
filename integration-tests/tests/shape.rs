//! What a route makes of a message, on real brokers, read at the sink with
//! the sink's own client (lapin): raw Kafka messages wrapped into
//! CloudEvents and known by their producer's idempotency header (a
//! producer's retry is dropped), and CloudEvents unwrapped into plain
//! messages.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use causeway_bridge::Bridge;
use causeway_core::{Event, Header};
use common::{Kafka, Rabbit, Setup};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

const TRANSACTIONS: usize = 20;
const RETRIES: usize = 5;

/// A message as lapin reads it: headers as text, the payload.
#[derive(Debug)]
struct Plain {
    headers: BTreeMap<String, String>,
    content_type: Option<String>,
    payload: Vec<u8>,
}

/// Takes every message from `queue` with lapin until `n` arrived, then
/// waits 3 s more for any extra one (which the caller counts).
async fn read_amqp(queue: &str, n: usize) -> Vec<Plain> {
    let url = common::env(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("lapin connect");
    let channel = connection.create_channel().await.expect("channel");
    let mut got = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        let message = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get");
        let Some(message) = message else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let properties = &message.delivery.properties;
        let headers = properties
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .map(|(k, v)| (k.to_string(), text(v)))
                    .collect()
            })
            .unwrap_or_default();
        got.push(Plain {
            headers,
            content_type: properties.content_type().as_ref().map(|c| c.to_string()),
            payload: message.delivery.data.clone(),
        });
        if got.len() == n {
            deadline = Instant::now() + Duration::from_secs(3);
        }
    }
    let _ = connection.close(200, "done".into()).await;
    got
}

fn text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        other => format!("{other:?}"),
    }
}

/// Runs route `r` until it has received `received` messages and published
/// `published`, then stops it.
async fn run_until(bridge: &Bridge, received: u64, published: u64) {
    let metrics = bridge.metrics.route("r");
    let running = common::start_route(bridge).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while (metrics.received.get() < received || metrics.published.get() < published)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(
        (metrics.received.get(), metrics.published.get()),
        (received, published),
        "received and published by the route"
    );
}

/// A transaction as a plain producer writes it: its idempotency key in
/// `tx-id`, its kind in `kind`, no CloudEvents attribute.
fn transaction(p: &str, tx: usize) -> Event {
    let mut e = common::raw_messages(p, 1, 1).remove(0);
    e.payload = format!(r#"{{"TxId":{tx},"Amount":{}.50}}"#, tx * 7).into();
    e.key = Some(format!("acct-{}", tx % 4));
    e.native.key = e.key.clone().map(Into::into);
    e.native.headers = vec![
        Header::text("tx-id", format!("T-{tx}")),
        Header::text("kind", kind(tx)),
    ];
    e
}

fn kind(tx: usize) -> &'static str {
    if tx.is_multiple_of(2) {
        "debit"
    } else {
        "credit"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_kafka_messages_are_wrapped_into_cloudevents_known_by_their_idempotency_header() {
    let dir = tempfile::tempdir().expect("dir");
    let p = causeway_testkit::unique_name("wrap");
    let emulator = common::prepare(&p, Kafka, Rabbit).await;
    let mut setup = Setup::new(dir.path(), &p, Kafka, Rabbit, "direct");
    setup.route_extra = r#"format = "raw"
identity = "header:tx-id"
[routes.r.wrap]
type = "finbank.transaction.{header.kind}"
source = "finbank://ledger"
"#
    .to_owned();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    drop(common::sink_reader(&bridge, Kafka, Rabbit).await);
    // Every transaction, then a producer's retries of the first five: the
    // same tx-id, sent again.
    let sent: Vec<Event> = (0..TRANSACTIONS)
        .chain(0..RETRIES)
        .map(|tx| transaction(&p, tx))
        .collect();
    common::publish_to_source(&bridge, Kafka, &p, &sent).await;
    run_until(
        &bridge,
        (TRANSACTIONS + RETRIES) as u64,
        TRANSACTIONS as u64,
    )
    .await;
    let got = read_amqp(&Rabbit.destination(&p, "out"), TRANSACTIONS).await;
    assert_eq!(
        got.len(),
        TRANSACTIONS,
        "each transaction once at RabbitMQ, retries dropped"
    );
    let mut ids: Vec<String> = Vec::new();
    for m in &got {
        let h = |name: &str| m.headers.get(name).map(String::as_str);
        let id = h("cloudEvents:id").expect("a CloudEvents id").to_owned();
        let tx: usize = id.trim_start_matches("T-").parse().expect("T-n");
        let sent = transaction(&p, tx);
        assert_eq!(m.payload, sent.payload.as_ref(), "{id}: payload changed");
        assert_eq!(h("cloudEvents:specversion"), Some("1.0"), "{id}");
        assert_eq!(h("cloudEvents:source"), Some("finbank://ledger"), "{id}");
        assert_eq!(
            h("cloudEvents:type"),
            Some(format!("finbank.transaction.{}", kind(tx)).as_str()),
            "{id}"
        );
        let key = format!("acct-{}", tx % 4);
        assert_eq!(h("cloudEvents:partitionkey"), Some(key.as_str()), "{id}");
        assert_eq!(h("tx-id"), Some(id.as_str()), "{id}: its own headers stay");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), TRANSACTIONS, "a transaction twice: {ids:?}");
    println!(
        "wrap: {} raw Kafka messages ({RETRIES} of them retries) reached RabbitMQ as {TRANSACTIONS} CloudEvents, id from tx-id, type from kind",
        TRANSACTIONS + RETRIES
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_are_unwrapped_into_plain_messages() {
    let dir = tempfile::tempdir().expect("dir");
    let p = causeway_testkit::unique_name("unwrap");
    let emulator = common::prepare(&p, Kafka, Rabbit).await;
    let mut setup = Setup::new(dir.path(), &p, Kafka, Rabbit, "direct");
    setup.route_extra = "unwrap = true".to_owned();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    drop(common::sink_reader(&bridge, Kafka, Rabbit).await);
    let sent: Vec<Event> = causeway_testkit::events(&p, TRANSACTIONS, 4)
        .into_iter()
        .map(|e| e.with_content_type("application/json"))
        .collect();
    common::publish_to_source(&bridge, Kafka, &p, &sent).await;
    run_until(&bridge, TRANSACTIONS as u64, TRANSACTIONS as u64).await;
    let got = read_amqp(&Rabbit.destination(&p, "out"), TRANSACTIONS).await;
    assert_eq!(got.len(), TRANSACTIONS, "each event once at RabbitMQ");
    let by_payload: BTreeMap<&[u8], &Event> =
        sent.iter().map(|e| (e.payload.as_ref(), e)).collect();
    for m in &got {
        let e = by_payload
            .get(m.payload.as_slice())
            .unwrap_or_else(|| panic!("payload changed or unknown: {:?}", m.payload));
        let attributes: Vec<&String> = m
            .headers
            .keys()
            .filter(|k| k.to_ascii_lowercase().starts_with("cloudevents"))
            .collect();
        assert!(
            attributes.is_empty(),
            "{}: a plain message carries no CloudEvents attribute: {attributes:?}",
            e.id
        );
        assert_eq!(
            m.content_type.as_deref(),
            Some("application/json"),
            "{}",
            e.id
        );
        assert_eq!(
            m.headers.get(causeway_core::message::KEY_HEADER),
            e.key.as_ref(),
            "{}: the key travels as docs/headers.md says",
            e.id
        );
    }
    println!("unwrap: {TRANSACTIONS} CloudEvents from Kafka reached RabbitMQ as plain messages");
}
