//! SQLite store throughput, each next to its baseline in the same run:
//! - append of 1 KiB events: the store's group commit (8 concurrent
//!   appenders, batches of 100) vs one row per transaction vs a raw rusqlite
//!   batched insert into a bare table (the ceiling);
//! - replay: reading 1,000,000 stored events in pages of 10,000;
//! - dedup: claim + commit of 100-key batches vs one key at a time.
//!
//! Run with `cargo xtask bench sqlite_store`.

use std::sync::Arc;
use std::time::Duration;

use causeway_sqlite::{SqliteOptions, SqliteStore};
use causeway_testkit::bench::{self, PER_ITER};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn open(dir: &tempfile::TempDir, name: &str) -> Arc<SqliteStore> {
    Arc::new(SqliteStore::open(dir.path().join(name), SqliteOptions::default()).expect("open"))
}

fn raw_connection(dir: &tempfile::TempDir, name: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(dir.path().join(name)).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "FULL")
        .expect("sync");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
        .expect("table");
    conn
}

fn append(c: &mut Criterion) {
    let rt = bench::runtime();
    let dir = tempfile::tempdir().expect("dir");
    let mut group = c.benchmark_group("sqlite_append_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    bench::append_group_commit(&mut group, &rt, open(&dir, "group.db"));

    // Baseline: what a naive store does, one fsync per event.
    let payload = vec![7u8; 1024];
    let mut n = 0i64;
    let conn = raw_connection(&dir, "rowwise.db");
    group.throughput(Throughput::Elements(200));
    group.bench_function("raw_one_row_per_transaction", |b| {
        b.iter(|| {
            for _ in 0..200 {
                n += 1;
                conn.execute(
                    "INSERT INTO t (id, payload) VALUES (?1, ?2)",
                    rusqlite::params![n, payload],
                )
                .expect("insert");
            }
        });
    });

    // Ceiling: a raw batched insert into a bare table, one transaction per 10,000.
    let mut conn = raw_connection(&dir, "raw.db");
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("raw_batched_insert_10000", |b| {
        b.iter(|| {
            let tx = conn.transaction().expect("tx");
            {
                let mut stmt = tx
                    .prepare_cached("INSERT INTO t (id, payload) VALUES (?1, ?2)")
                    .expect("prepare");
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

fn replay(c: &mut Criterion) {
    let rt = bench::runtime();
    let dir = tempfile::tempdir().expect("dir");
    let mut group = c.benchmark_group("sqlite_replay_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    bench::replay(&mut group, &rt, open(&dir, "replay.db"), 1_000_000);
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let rt = bench::runtime();
    let dir = tempfile::tempdir().expect("dir");
    let mut group = c.benchmark_group("sqlite_dedup_claim_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    bench::dedup_claim_commit(&mut group, &rt, open(&dir, "dedup.db"));
    group.finish();
}

criterion_group!(benches, append, replay, dedup);
criterion_main!(benches);
