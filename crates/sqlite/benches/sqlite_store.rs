//! SQLite store throughput, each next to its baseline in the same run:
//! - append of 1 KiB events: the store's group commit (8 concurrent
//!   appenders, batches of 100) vs one row per transaction vs a raw rusqlite
//!   batched insert into a bare table (the ceiling);
//! - replay: reading 1,000,000 stored events in pages of 10,000;
//! - dedup: claim + commit of 100-key batches vs one key at a time.
//!
//! Run with `cargo xtask bench sqlite_store`.

use std::time::Duration;

use causeway_core::{Claim, DedupStore, Event, EventStore, ReadFrom, ReadQuery};
use causeway_sqlite::{SqliteOptions, SqliteStore};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

const APPENDERS: usize = 8;
const BATCH: usize = 100;
const PER_ITER: usize = 10_000;

fn events(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event::new(format!("{prefix}-{i}"), "causeway://bench", "bench").with_payload(vec![7u8; 1024]))
        .collect()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn open(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(dir.path().join(name), SqliteOptions::default()).expect("open")
}

fn append(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let mut group = c.benchmark_group("sqlite_append_1KiB");
    group.sample_size(10).measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::Elements(PER_ITER as u64));
    let store = open(&dir, "group.db");
    let mut round = 0u64;
    group.bench_function("store_group_commit_8x100", |b| {
        b.to_async(&rt).iter(|| {
            round += 1;
            let store = store.clone();
            async move {
                let tasks: Vec<_> = (0..APPENDERS)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let all = events(&format!("r{round}-t{t}"), PER_ITER / APPENDERS);
                            for chunk in all.chunks(BATCH) {
                                store.append("bench", chunk).await.expect("append");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
            }
        });
    });

    // Baseline: what a naive store does, one fsync per event.
    group.throughput(Throughput::Elements(200));
    let conn = raw_connection(&dir, "rowwise.db");
    let payload = vec![7u8; 1024];
    let mut n = 0i64;
    group.bench_function("raw_one_row_per_transaction", |b| {
        b.iter(|| {
            for _ in 0..200 {
                n += 1;
                conn.execute("INSERT INTO t (id, payload) VALUES (?1, ?2)", rusqlite::params![n, payload])
                    .expect("insert");
            }
        });
    });

    // Ceiling: a raw batched insert into a bare table, one transaction per 10,000.
    group.throughput(Throughput::Elements(PER_ITER as u64));
    let mut conn = raw_connection(&dir, "raw.db");
    group.bench_function("raw_batched_insert_10000", |b| {
        b.iter(|| {
            let tx = conn.transaction().expect("tx");
            {
                let mut stmt = tx.prepare_cached("INSERT INTO t (id, payload) VALUES (?1, ?2)").expect("prepare");
                for _ in 0..PER_ITER {
                    n += 1;
                    stmt.execute(rusqlite::params![n, payload]).expect("insert");
                }
            }
            tx.commit().expect("commit");
        });
    });
    group.finish();
}

fn raw_connection(dir: &tempfile::TempDir, name: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.path().join(name)).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL").expect("wal");
    conn.pragma_update(None, "synchronous", "FULL").expect("sync");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)").expect("table");
    conn
}

fn replay(c: &mut Criterion) {
    const TOTAL: usize = 1_000_000;
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir, "replay.db");
    rt.block_on(async {
        for chunk in 0..TOTAL / PER_ITER {
            let batch = events(&format!("c{chunk}"), PER_ITER);
            for part in batch.chunks(1000) {
                store.append("replay", part).await.expect("append");
            }
        }
    });
    let mut group = c.benchmark_group("sqlite_replay_1KiB");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TOTAL as u64));
    group.bench_function("read_1000000_in_pages_of_10000", |b| {
        b.to_async(&rt).iter(|| async {
            let mut from = 0;
            let mut seen = 0;
            loop {
                let page = store
                    .read(&ReadQuery::new("replay", ReadFrom::Position(from), 10_000))
                    .await
                    .expect("read");
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                seen += page.len();
            }
            assert_eq!(seen, TOTAL);
        });
    });
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir, "dedup.db");
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(3600);
    let mut group = c.benchmark_group("sqlite_dedup_claim_commit");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    let mut round = 0u64;

    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("batches_of_100_8_tasks", |b| {
        b.to_async(&rt).iter(|| {
            round += 1;
            let store = store.clone();
            async move {
                let tasks: Vec<_> = (0..8)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for chunk in 0..PER_ITER / 800 {
                                let keys: Vec<String> = (0..100).map(|i| format!("r{round}-t{t}-c{chunk}-{i}")).collect();
                                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                                let tokens: Vec<_> = store
                                    .claim_many(&refs, lease)
                                    .await
                                    .expect("claim")
                                    .into_iter()
                                    .filter_map(|c| match c {
                                        Claim::Claimed(t) => Some(t),
                                        _ => None,
                                    })
                                    .collect();
                                store.commit_many(&tokens, ttl).await.expect("commit");
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.expect("task");
                }
            }
        });
    });

    group.throughput(Throughput::Elements(200));
    group.bench_function("one_key_at_a_time", |b| {
        b.to_async(&rt).iter(|| {
            round += 1;
            let store = store.clone();
            async move {
                for i in 0..200 {
                    let key = format!("single-r{round}-{i}");
                    if let Claim::Claimed(t) = store.claim(&key, lease).await.expect("claim") {
                        store.commit(&t, ttl).await.expect("commit");
                    }
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, append, replay, dedup);
criterion_main!(benches);
