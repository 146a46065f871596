//! Unit tests on librdkafka's in-process mock cluster (no server needed):
//! the watermark commit across a crash, a broker outage, per-key order
//! after a nack, and seeking. Group joins take about 3 s on the mock.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use causeway_core::{Consumer, Publisher, RetryPolicy, RetryingPublisher};
use causeway_kafka::{KafkaClient, KafkaConsumer};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn mock(topic: &str, partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, partitions, 1).expect("topic");
    mock
}

fn consumer(brokers: &str, group: &str, topic: &str) -> KafkaConsumer {
    let mut config = common::config(brokers);
    let mut c = common::consumer(group, topic, false);
    c.commit_interval = Duration::ZERO;
    config.consumer = Some(c);
    KafkaClient::new(config).consumer(None).expect("consumer")
}

async fn publish(brokers: &str, topic: &str, events: &[causeway_core::Event]) {
    let publisher = KafkaClient::new(common::config(brokers))
        .publisher()
        .expect("publisher");
    let out = publisher.publish(topic, events).await.expect("publish");
    assert!(
        out.iter().all(Result::is_ok),
        "{:?}",
        out.iter().find(|o| o.is_err())
    );
}

/// Offsets 0..1000 acked in random order; the consumer "crashes" (dropped
/// without close) at a random point; a new member resumes. Every offset
/// below the committed one was acked, and acked ∪ redelivered is all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_commit_survives_a_crash_with_acks_in_random_order() {
    let topic = "watermark";
    let mock = mock(topic, 1);
    let brokers = mock.bootstrap_servers();
    publish(&brokers, topic, &causeway_testkit::events("wm", 1000, 0)).await;

    let mut first = consumer(&brokers, "wm-group", topic);
    let deliveries = causeway_testkit::collect(&mut first, 1000, Duration::from_secs(60)).await;
    assert_eq!(deliveries.len(), 1000);
    let mut order: Vec<_> = deliveries.into_iter().collect();
    fastrand::shuffle(&mut order);
    let crash_at = fastrand::usize(100..1000);
    let mut acked = BTreeSet::new();
    for (i, d) in order.into_iter().enumerate() {
        if i == crash_at {
            break;
        }
        acked.insert(d.ticket.position().expect("position").offset as i64);
        d.ack().await.expect("ack");
        if i % 25 == 0 {
            // Polling runs the periodic commit (interval zero here).
            first
                .next_batch(1, Duration::from_millis(1))
                .await
                .expect("poll");
        }
    }
    first
        .next_batch(1, Duration::from_millis(1))
        .await
        .expect("poll");
    drop(first); // the crash: no close, no final commit

    let committed = committed_offset(&brokers, "wm-group", topic);
    let unacked_below: Vec<i64> = (0..committed).filter(|o| !acked.contains(o)).collect();
    assert!(
        unacked_below.is_empty(),
        "committed {committed} past unacked offsets {unacked_below:?}"
    );
    assert_eq!(
        committed,
        (0..).find(|o| !acked.contains(o)).unwrap_or(1000),
        "watermark not as far as it can go"
    );

    let mut second = consumer(&brokers, "wm-group", topic);
    let again = causeway_testkit::receive_and_ack(
        &mut second,
        (1000 - committed) as usize,
        Duration::from_secs(60),
    )
    .await;
    let redelivered: HashSet<i64> = again
        .iter()
        .map(|e| e.id.trim_start_matches("wm-").parse::<i64>().expect("id"))
        .collect();
    let lost: Vec<i64> = (0..1000)
        .filter(|o| !acked.contains(o) && !redelivered.contains(o))
        .collect();
    println!(
        "kafka mock: crash after {crash_at} random acks, committed {committed}, {} redelivered after restart",
        redelivered.len()
    );
    assert!(lost.is_empty(), "lost offsets {lost:?}");
    assert!(
        redelivered.iter().all(|o| *o >= committed),
        "redelivered below the committed offset"
    );
}

fn committed_offset(brokers: &str, group: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    match committed.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => 0,
    }
}

/// The only broker goes down for 2 s in the middle of 2,000 events: the
/// retrying publisher and the consumer carry on after it returns, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_mid_stream_loses_nothing() {
    let topic = "outage";
    let mock = mock(topic, 4);
    let brokers = mock.bootstrap_servers();
    let sent = causeway_testkit::events("out", 2000, 20);
    let publisher = RetryingPublisher::new(
        KafkaClient::new(common::config(&brokers))
            .publisher()
            .expect("publisher"),
        RetryPolicy {
            max_attempts: 30,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
    );
    let mut c = consumer(&brokers, "outage-group", topic);
    assert!(
        publisher
            .publish(topic, &sent[..1000])
            .await
            .expect("publish")
            .iter()
            .all(Result::is_ok)
    );
    let mut seen: HashSet<String> =
        causeway_testkit::receive_and_ack(&mut c, 500, Duration::from_secs(30))
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
    mock.broker_down(1).expect("down");
    // The mock cluster stays on this task (it is not Send); the publishing moves.
    let rest = sent[1000..].to_vec();
    let publishing = tokio::spawn(async move { publisher.publish(topic, &rest).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_up(1).expect("up");
    let out = publishing
        .await
        .expect("task")
        .expect("publish during outage");
    assert!(
        out.iter().all(Result::is_ok),
        "{:?}",
        out.iter().find(|o| o.is_err())
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < sent.len() && Instant::now() < deadline {
        for e in causeway_testkit::receive_and_ack(
            &mut c,
            sent.len() - seen.len(),
            Duration::from_secs(2),
        )
        .await
        {
            seen.insert(e.id);
        }
    }
    assert_eq!(seen.len(), sent.len(), "events lost across the outage");
}

/// After a nack, later events of the same key wait behind the nacked one;
/// other keys go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_event_holds_back_its_key_only() {
    let topic = "hold";
    let mock = mock(topic, 1);
    let brokers = mock.bootstrap_servers();
    let mut c = consumer(&brokers, "hold-group", topic);
    let ev =
        |id: &str, key: &str| causeway_core::Event::new(id, "causeway://test", "t").with_key(key);
    publish(&brokers, topic, &[ev("k1", "K")]).await;
    let first = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    first
        .into_iter()
        .next()
        .expect("k1")
        .nack(Duration::from_secs(5))
        .await
        .expect("nack");
    publish(&brokers, topic, &[ev("k2", "K"), ev("l1", "L")]).await;
    let next = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    let ids: Vec<&str> = next.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(ids, ["l1"], "only the other key may pass the nacked one");
    for d in next {
        d.ack().await.expect("ack");
    }
    let retried = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    assert_eq!(retried[0].event.id, "k1");
    assert_eq!(retried[0].ticket.attempt(), 2);
    for d in retried {
        d.ack().await.expect("ack");
    }
    let released = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    assert_eq!(
        released[0].event.id, "k2",
        "the held event follows once the nacked one is acked"
    );
}

/// Seeking an assigned partition back replays from that offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_replays_from_an_offset() {
    let topic = "seek";
    let mock = mock(topic, 1);
    let brokers = mock.bootstrap_servers();
    publish(&brokers, topic, &causeway_testkit::events("sk", 50, 0)).await;
    let mut c = consumer(&brokers, "seek-group", topic);
    let all = causeway_testkit::receive_and_ack(&mut c, 50, Duration::from_secs(30)).await;
    assert_eq!(all.len(), 50);
    c.seek(topic, 0, 40).expect("seek");
    let again = causeway_testkit::receive_and_ack(&mut c, 10, Duration::from_secs(30)).await;
    let ids: Vec<&str> = again.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.first().copied(), Some("sk-40"));
    assert_eq!(ids.len(), 10);
}

/// A consumer like `consumer`, with `max_held_back` and the periodic commit
/// left to the test (`commit_interval` an hour).
fn quiet_consumer(brokers: &str, group: &str, topic: &str, max_held_back: usize) -> KafkaConsumer {
    let mut config = common::config(brokers);
    let mut c = common::consumer(group, topic, true);
    c.commit_interval = Duration::from_secs(3600);
    c.max_held_back = max_held_back;
    config.consumer = Some(c);
    KafkaClient::new(config).consumer(None).expect("consumer")
}

/// Records behind a nacked key are held in memory only up to
/// `max_held_back`: past it the partition is paused, its records stay in
/// Kafka, and once the key drains they follow in order, none lost or
/// repeated. Before the fix every record of the partition was parked in
/// memory, without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_held_behind_a_nacked_key_are_bounded_by_pausing_the_partition() {
    let topic = "held-bound";
    let mock = mock(topic, 1);
    let brokers = mock.bootstrap_servers();
    let mut c = quiet_consumer(&brokers, "held-bound-group", topic, 10);
    let ev = |i: usize| {
        causeway_core::Event::new(format!("h-{i}"), "causeway://test", "t").with_key("K")
    };
    publish(&brokers, topic, &[ev(0)]).await;
    let first = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    for d in first {
        d.nack(Duration::from_secs(3)).await.expect("nack");
    }
    let rest: Vec<_> = (1..=200).map(ev).collect();
    publish(&brokers, topic, &rest).await;
    // Everything behind h-0 waits; poll until the retry is due.
    let mut retried = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while retried.is_empty() && Instant::now() < deadline {
        retried = c
            .next_batch(500, Duration::from_millis(200))
            .await
            .expect("poll");
        assert!(
            c.held_back() <= 20,
            "{} records held in memory behind the nacked key (limit 10)",
            c.held_back()
        );
    }
    let ids: Vec<&str> = retried.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(ids, ["h-0"], "only the nacked record comes first");
    for d in retried {
        d.ack().await.expect("ack");
    }
    let after = causeway_testkit::collect(&mut c, 200, Duration::from_secs(60)).await;
    let ids: Vec<String> = after.iter().map(|d| d.event.id.clone()).collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("h-{i}")).collect();
    assert_eq!(ids, expected, "held records follow in order once resumed");
}

/// A dead letter that cannot be produced (here the broker refuses the
/// produce) does not settle its record: it comes back, and once its dead
/// letter is produced the partition's commit moves past it. Before the fix
/// the record was forgotten unsettled: never redelivered, and the commit
/// offset stuck below it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_whose_dead_letter_fails_comes_back() {
    use rdkafka::consumer::CommitMode;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let topic = "reject-fails";
    let mock = mock(topic, 1);
    mock.create_topic(&format!("{topic}.dlq"), 1, 1)
        .expect("dlq");
    let brokers = mock.bootstrap_servers();
    publish(&brokers, topic, &causeway_testkit::events("rj", 1, 0)).await;
    let mut c = quiet_consumer(&brokers, "reject-group", topic, 1_000);
    let first = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
    );
    for d in first {
        let refused = d.ticket.reject("poison").await;
        assert!(refused.is_err(), "the dead letter's produce was refused");
    }
    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let again = causeway_testkit::collect(&mut c, 1, Duration::from_secs(30)).await;
    assert_eq!(
        again.len(),
        1,
        "the record whose dead letter failed came back"
    );
    assert_eq!(again[0].ticket.attempt(), 2);
    for d in again {
        d.ticket.reject("poison").await.expect("reject");
    }
    c.commit(CommitMode::Sync).expect("commit");
    assert_eq!(
        committed_offset(&brokers, "reject-group", topic),
        1,
        "the commit moved past the dead-lettered record"
    );
}

/// A commit that fails is sent again by the next one, though no ack moved
/// the partition since. Before the fix the offsets counted as committed
/// the moment they were handed to librdkafka: an idle partition kept its
/// old commit, and a restart repeated everything after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_sent_again() {
    use rdkafka::consumer::CommitMode;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let topic = "commit-fails";
    let mock = mock(topic, 1);
    let brokers = mock.bootstrap_servers();
    publish(&brokers, topic, &causeway_testkit::events("cf", 5, 0)).await;
    let mut c = quiet_consumer(&brokers, "commit-group", topic, 1_000);
    let got = causeway_testkit::receive_and_ack(&mut c, 5, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 5);
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE],
    );
    assert!(
        c.commit(CommitMode::Sync).is_err(),
        "the broker refused the commit"
    );
    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    c.commit(CommitMode::Sync).expect("commit");
    assert_eq!(committed_offset(&brokers, "commit-group", topic), 5);
}
