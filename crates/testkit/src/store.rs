//! Event store scenarios: every EventStore implementation runs all of them.

use std::sync::Arc;
use std::time::Duration;

use causeway_core::{AppendOutcome, EventStore, ReadFrom, ReadQuery, Retention};

use crate::harness::EventStoreHarness;
use crate::support::events;

const WINDOW: Duration = Duration::from_secs(3600);

async fn fresh(h: &dyn EventStoreHarness) -> Arc<dyn EventStore> {
    h.store(WINDOW).await.expect("store")
}

fn stored(outcomes: &[AppendOutcome]) -> Vec<u64> {
    outcomes
        .iter()
        .map(|o| match o {
            AppendOutcome::Stored(p) => *p,
            AppendOutcome::Duplicate(p) => panic!("unexpected duplicate at {p}"),
        })
        .collect()
}

/// Appends return increasing positions per stream, and reads give the events back intact.
pub async fn append_and_read_back(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let batch = events("ev", 50, 5);
    let first = stored(&store.append("s1", &batch[..20]).await.expect("append"));
    let second = stored(&store.append("s1", &batch[20..]).await.expect("append"));
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{}: positions not increasing: {all:?}",
        h.name()
    );
    let other = stored(&store.append("s2", &batch[..1]).await.expect("append"));
    assert_eq!(other.len(), 1);

    let read = store
        .read(&ReadQuery::new("s1", ReadFrom::Position(0), 1000))
        .await
        .expect("read");
    assert_eq!(read.len(), 50, "{}", h.name());
    for (got, sent) in read.iter().zip(&batch) {
        assert_eq!(&got.event, sent, "{}: event changed in the store", h.name());
    }
    assert_eq!(read.iter().map(|s| s.position).collect::<Vec<_>>(), all);
}

/// A (source, id) already stored in the dedup window is reported as a
/// duplicate with the first copy's position, also within one batch.
pub async fn duplicates_are_refused(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let batch = events("dup", 3, 0);
    let first = stored(&store.append("s", &batch).await.expect("append"));
    let again = store
        .append("s", &[batch[1].clone(), batch[1].clone()])
        .await
        .expect("append");
    assert_eq!(
        again,
        vec![AppendOutcome::Duplicate(first[1]); 2],
        "{}",
        h.name()
    );
    let mut other_source = batch[1].clone();
    other_source.source = "causeway://elsewhere".into();
    let out = store.append("s", &[other_source]).await.expect("append");
    assert!(
        matches!(out[0], AppendOutcome::Stored(_)),
        "{}: same id from another source is another event",
        h.name()
    );
    let stats = store.stats(Some("s")).await.expect("stats");
    assert_eq!(stats.events, 4, "{}", h.name());

    let short = h.store(Duration::from_millis(200)).await.expect("store");
    short.append("s", &batch[..1]).await.expect("append");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let out = short.append("s", &batch[..1]).await.expect("append");
    assert!(
        matches!(out[0], AppendOutcome::Stored(_)),
        "{}: dedup window did not expire",
        h.name()
    );
}

/// Reads start at a position or a time, stop at `until`, filter by source
/// and key, and honour the limit.
pub async fn read_by_position_time_and_filter(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let early = events("early", 10, 2);
    let positions = stored(&store.append("s", &early).await.expect("append"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cut = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut late = events("late", 10, 2);
    late[0].source = "causeway://other".into();
    store.append("s", &late).await.expect("append");

    let from_pos = store
        .read(&ReadQuery::new("s", ReadFrom::Position(positions[5]), 100))
        .await
        .expect("read");
    assert_eq!(from_pos.len(), 15, "{}", h.name());
    assert_eq!(from_pos[0].event.id, "early-5");

    let from_time = store
        .read(&ReadQuery::new("s", ReadFrom::Time(cut), 100))
        .await
        .expect("read");
    assert_eq!(from_time.len(), 10, "{}: from time", h.name());
    assert!(from_time.iter().all(|s| s.event.id.starts_with("late")));

    let mut until = ReadQuery::new("s", ReadFrom::Position(0), 100);
    until.until = Some(cut);
    let before = store.read(&until).await.expect("read");
    assert_eq!(before.len(), 10, "{}: until", h.name());

    let mut by_key = ReadQuery::new("s", ReadFrom::Position(0), 100);
    by_key.key = Some("key-1".into());
    let keyed = store.read(&by_key).await.expect("read");
    assert_eq!(keyed.len(), 10, "{}: key filter", h.name());
    assert!(
        keyed
            .iter()
            .all(|s| s.event.key.as_deref() == Some("key-1"))
    );

    let mut by_source = ReadQuery::new("s", ReadFrom::Position(0), 100);
    by_source.source = Some("causeway://other".into());
    let sourced = store.read(&by_source).await.expect("read");
    assert_eq!(sourced.len(), 1, "{}: source filter", h.name());

    let limited = store
        .read(&ReadQuery::new("s", ReadFrom::Position(0), 7))
        .await
        .expect("read");
    assert_eq!(limited.len(), 7, "{}: limit", h.name());
    let none = store
        .read(&ReadQuery::new("nope", ReadFrom::Position(0), 7))
        .await
        .expect("read");
    assert!(none.is_empty());
}

/// Named cursors are per stream, keep the highest position set, and never move back.
pub async fn cursors(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    assert_eq!(store.cursor("s", "sqs").await.expect("cursor"), None);
    store.set_cursor("s", "sqs", 10).await.expect("set");
    store.set_cursor("s", "sqs", 12).await.expect("set");
    // A stale writer cannot move it back.
    store.set_cursor("s", "sqs", 5).await.expect("set");
    store.set_cursor("s", "servicebus", 3).await.expect("set");
    store.set_cursor("t", "sqs", 99).await.expect("set");
    assert_eq!(
        store.cursor("s", "sqs").await.expect("cursor"),
        Some(12),
        "{}",
        h.name()
    );
    assert_eq!(
        store.cursor("s", "servicebus").await.expect("cursor"),
        Some(3)
    );
    assert_eq!(store.cursor("t", "sqs").await.expect("cursor"), Some(99));
}

/// Retention by size and age deletes the oldest events, but never one the
/// slowest cursor has not passed, unless told to.
pub async fn retention_respects_cursors(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let batch = events("ret", 20, 0);
    let positions = stored(&store.append("s", &batch).await.expect("append"));
    let bytes = store.stats(Some("s")).await.expect("stats").bytes;
    store
        .set_cursor("s", "fast", positions[15])
        .await
        .expect("cursor");
    store
        .set_cursor("s", "slow", positions[4])
        .await
        .expect("cursor");

    let by_size = Retention {
        max_bytes: Some(0),
        ..Retention::default()
    };
    let deleted = store.apply_retention(&by_size).await.expect("retention");
    assert_eq!(deleted, 5, "{}: deleted past the slowest cursor", h.name());
    let left = store.stats(Some("s")).await.expect("stats");
    assert_eq!(left.events, 15);
    assert_eq!(left.first_position, Some(positions[5]));
    assert!(left.bytes < bytes);

    store
        .set_cursor("s", "slow", positions[9])
        .await
        .expect("cursor");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let by_age = Retention {
        max_age: Some(Duration::from_millis(1)),
        ..Retention::default()
    };
    assert_eq!(
        store.apply_retention(&by_age).await.expect("retention"),
        5,
        "{}",
        h.name()
    );

    let forced = Retention {
        max_age: Some(Duration::from_millis(1)),
        ignore_cursors: true,
        ..Retention::default()
    };
    assert_eq!(store.apply_retention(&forced).await.expect("retention"), 10);
    assert_eq!(store.stats(Some("s")).await.expect("stats").events, 0);
    // Deleted events still count for dedup within the window.
    let again = store.append("s", &batch[..1]).await.expect("append");
    assert!(
        matches!(again[0], AppendOutcome::Duplicate(_)),
        "{}: retention forgot dedup ids",
        h.name()
    );
}

/// A stream with no cursor has passed nothing: retention keeps all of it
/// (a durable route whose sink never confirmed anything, a stream of dead
/// letters). Only `ignore_cursors` deletes there, and `stream_prefix`
/// limits a policy to the streams it names.
pub async fn retention_keeps_streams_without_a_cursor(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let batch = events("nocur", 10, 0);
    store.append("route", &batch).await.expect("append");
    store.append("dlq.route", &batch).await.expect("append");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let everything = Retention {
        max_age: Some(Duration::from_millis(1)),
        max_bytes: Some(0),
        ..Retention::default()
    };
    assert_eq!(
        store.apply_retention(&everything).await.expect("retention"),
        0,
        "{}: deleted events no cursor had passed",
        h.name()
    );
    assert_eq!(store.stats(Some("route")).await.expect("stats").events, 10);
    let dead_letters_only = Retention {
        max_age: Some(Duration::from_millis(1)),
        ignore_cursors: true,
        stream_prefix: Some("dlq.".into()),
        ..Retention::default()
    };
    assert_eq!(
        store
            .apply_retention(&dead_letters_only)
            .await
            .expect("retention"),
        10,
        "{}",
        h.name()
    );
    assert_eq!(
        store.stats(Some("dlq.route")).await.expect("stats").events,
        0
    );
    assert_eq!(store.stats(Some("route")).await.expect("stats").events, 10);
}

/// Reading from a position past any a stream can have returns nothing,
/// and never another stream's events.
pub async fn read_past_the_end_is_empty(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    store
        .append("a", &events("pa", 3, 0))
        .await
        .expect("append");
    store
        .append("b", &events("pb", 3, 0))
        .await
        .expect("append");
    for from in [1 << 40, 1 << 62, 1 << 63, u64::MAX] {
        let got = store
            .read(&ReadQuery::new("b", ReadFrom::Position(from), 10))
            .await
            .expect("read");
        assert!(
            got.is_empty(),
            "{}: reading `b` from {from} gave {:?}",
            h.name(),
            got.iter().map(|s| &s.event.id).collect::<Vec<_>>()
        );
    }
}

/// Stats count events, bytes and the time range.
pub async fn stats(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    assert_eq!(store.stats(None).await.expect("stats").events, 0);
    let batch = events("st", 10, 0);
    let payload: u64 = batch.iter().map(|e| e.payload.len() as u64).sum();
    store.append("a", &batch[..4]).await.expect("append");
    store.append("b", &batch[4..]).await.expect("append");
    let all = store.stats(None).await.expect("stats");
    assert_eq!(all.events, 10, "{}", h.name());
    assert_eq!(all.bytes, payload, "{}", h.name());
    assert!(all.oldest.is_some() && all.oldest <= all.newest);
    assert_eq!(store.stats(Some("a")).await.expect("stats").events, 4);
}

/// Concurrent appends from many tasks: every event stored once, positions unique.
pub async fn concurrent_appends(h: &dyn EventStoreHarness) {
    let store = fresh(h).await;
    let tasks: Vec<_> = (0..10)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut positions = Vec::new();
                for chunk in events(&format!("task{t}"), 100, 0).chunks(10) {
                    positions.extend(
                        store
                            .append("s", chunk)
                            .await
                            .expect("append")
                            .into_iter()
                            .map(|o| o.position()),
                    );
                }
                positions
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 1000, "{}: positions not unique", h.name());
    assert_eq!(store.stats(Some("s")).await.expect("stats").events, 1000);
}
