//! Messages nobody planned for, written into a real Kafka (Tansu) with
//! rdkafka itself, as any producer would, and bridged to NATS JetStream in
//! direct and durable mode: plain records with no CloudEvents headers, a
//! CloudEvent whose id carries CR/LF (which NATS cannot put in a header), one
//! whose key is not UTF-8, among well-formed events. (A header name that is
//! not UTF-8 cannot be written from safe Rust: rdkafka takes names as `&str`.
//! The consumer's guard against rdkafka's panic on reading one is untested
//! here.)
//!
//! Each bad message must become exactly one dead letter in the route's
//! store, with its reason; every good event must arrive once; the route
//! keeps running and stops cleanly. Before the fixes the plain records were
//! acked and gone without a dead letter, the CR/LF id panicked the shard
//! (and the events behind it were never delivered), the key was dropped.

mod common;

use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::pipeline::dead_letter_stream;
use causeway_core::{ReadFrom, ReadQuery, dead_letter};
use common::{Broker, Kafka, Nats, Setup};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A record as a foreign producer writes it.
struct Raw {
    key: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
    /// What the dead letter's reason must mention.
    reason: &'static str,
}

fn ce_headers(id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("ce_specversion", "1.0".to_owned()),
        ("ce_id", id.to_owned()),
        ("ce_source", "kafka://legacy/ledger".to_owned()),
        ("ce_type", "finbank.transaction.created".to_owned()),
    ]
}

/// The bad records: 30 plain ones and two hostile CloudEvents.
fn hostile() -> Vec<Raw> {
    let mut raws: Vec<Raw> = (0..30)
        .map(|i| Raw {
            key: Some(format!("acct-{}", i % 10).into_bytes()),
            headers: Vec::new(),
            payload: format!("{{\"accountId\": {i}, \"amount\": 12.5}}").into_bytes(),
            reason: "undecodable",
        })
        .collect();
    raws.push(Raw {
        key: None,
        headers: ce_headers("tx-crlf\r\nNats-Msg-Id: forged"),
        payload: b"crlf".to_vec(),
        reason: "control character",
    });
    raws.push(Raw {
        key: Some(vec![0xc3, 0x28]),
        headers: ce_headers("tx-bad-key"),
        payload: b"bad key".to_vec(),
        reason: "key is not UTF-8",
    });
    raws
}

async fn write_raw(topic: &str, raws: &[Raw]) {
    let brokers = common::env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    for raw in raws {
        let mut headers = OwnedHeaders::new();
        for (name, value) in &raw.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&raw.payload)
            .headers(headers);
        if let Some(key) = &raw.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("raw produce");
    }
}

async fn hostile_kafka_to_nats(mode: &'static str) {
    let what = format!("kafka -> nats ({mode}), hostile records");
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("hostile");
    let emulator = common::prepare(&prefix, Kafka, Nats).await;
    let setup = Setup::new(dir.path(), &prefix, Kafka, Nats, mode).with_servicebus(&emulator);
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&bridge, Kafka, Nats).await;
    let good = causeway_testkit::events(&prefix, 46, 10);
    let bad = hostile();
    // Good events first and last, the bad ones in between.
    common::publish_to_source(&bridge, Kafka, &prefix, &good[..20]).await;
    write_raw(&Broker::destination(Kafka, &prefix, "in"), &bad).await;
    common::publish_to_source(&bridge, Kafka, &prefix, &good[20..]).await;

    let metrics = bridge.metrics.route("r");
    let running = common::start_route(&bridge).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while (metrics.published.get() < good.len() as u64
        || metrics.dead_lettered.get() < bad.len() as u64)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    let got = common::read(sink.as_mut(), good.len(), &what).await;
    sink.close().await.expect("close");
    common::check(&good, &got, true, &what);

    let dead = bridge
        .store
        .read(&ReadQuery::new(
            dead_letter_stream("r"),
            ReadFrom::Position(0),
            1000,
        ))
        .await
        .expect("dead letters");
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| {
            d.event
                .header(dead_letter::REASON)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        dead.len(),
        bad.len(),
        "{what}: one dead letter per bad record: {reasons:#?}"
    );
    for raw in &bad {
        let hit = dead
            .iter()
            .find(|d| d.event.payload.as_ref() == raw.payload.as_slice())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: no dead letter with payload {:?}",
                    String::from_utf8_lossy(&raw.payload)
                )
            });
        let reason = hit.event.header(dead_letter::REASON).unwrap_or_default();
        assert!(
            reason.contains(raw.reason),
            "{what}: the dead letter of {:?} says {reason:?}, not {:?}",
            String::from_utf8_lossy(&raw.payload),
            raw.reason
        );
        hit.event
            .validate()
            .expect("a dead letter is a valid event");
    }
    println!(
        "{what}: {} good events delivered once each, {} bad records dead-lettered once each with their reason",
        good.len(),
        bad.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_dead_lettered_alone_direct() {
    hostile_kafka_to_nats("direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_dead_lettered_alone_durable() {
    hostile_kafka_to_nats("durable").await;
}
