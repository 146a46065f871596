//! PostgreSQL store throughput, each next to its baseline in the same run:
//! - append of 1 KiB events: the store's group commit (8 concurrent
//!   appenders, batches of 100) vs one row per transaction vs a raw
//!   tokio-postgres batched insert (`unnest`, 1,000 rows a statement) into a
//!   bare table (the ceiling);
//! - replay: reading 1,000,000 stored events in pages of 10,000;
//! - dedup: claim + commit of 100-key batches vs one key at a time.
//!
//! Run with `cargo xtask bench postgres_store` (PostgreSQL from `CAUSEWAY_POSTGRES_URL`).

use std::sync::Arc;
use std::time::Duration;

use causeway_postgres::{PostgresOptions, PostgresStore};
use causeway_testkit::bench::{self, PER_ITER};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;

fn url() -> String {
    causeway_testkit::env::endpoint(
        "CAUSEWAY_POSTGRES_URL",
        "postgres://postgres@127.0.0.1:5432/test",
    )
}

fn open(rt: &Runtime) -> Arc<PostgresStore> {
    let mut options = PostgresOptions::new(url());
    options.schema = causeway_testkit::unique_name("bench").replace('-', "_");
    Arc::new(
        rt.block_on(PostgresStore::connect(options))
            .expect("connect"),
    )
}

fn append(c: &mut Criterion) {
    let rt = bench::runtime();
    let mut group = c.benchmark_group("postgres_append_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    bench::append_group_commit(&mut group, &rt, open(&rt));

    let (client, table) = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let table = causeway_testkit::unique_name("raw").replace('-', "_");
        client
            .batch_execute(&format!(
                "CREATE TABLE {table} (id BIGINT PRIMARY KEY, payload BYTEA NOT NULL)"
            ))
            .await
            .expect("table");
        (client, table)
    });
    let payload = vec![7u8; 1024];
    let mut n = 0i64;

    // Baseline: one row per transaction (autocommit), one fsync each.
    let one = rt
        .block_on(client.prepare(&format!(
            "INSERT INTO {table} (id, payload) VALUES ($1, $2)"
        )))
        .expect("prepare");
    group.throughput(Throughput::Elements(200));
    group.bench_function("raw_one_row_per_transaction", |b| {
        b.to_async(&rt).iter(|| {
            let (client, one, payload) = (&client, &one, &payload);
            let start = n;
            n += 200;
            async move {
                for i in start..start + 200 {
                    client.execute(one, &[&i, payload]).await.expect("insert");
                }
            }
        });
    });

    // Ceiling: raw batched insert, 1,000 rows a statement, one transaction per 10,000.
    let many = rt
        .block_on(client.prepare(&format!(
            "INSERT INTO {table} (id, payload) SELECT * FROM unnest($1::int8[], $2::bytea[])"
        )))
        .expect("prepare");
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("raw_batched_insert_10000", |b| {
        b.to_async(&rt).iter(|| {
            let (client, many, payload) = (&client, &many, &payload);
            let start = n;
            n += PER_ITER as i64;
            async move {
                client.batch_execute("BEGIN").await.expect("begin");
                for chunk in 0..PER_ITER as i64 / 1000 {
                    let ids: Vec<i64> = (0..1000).map(|i| start + chunk * 1000 + i).collect();
                    let payloads: Vec<&[u8]> = vec![&payload[..]; 1000];
                    client
                        .execute(many, &[&ids, &payloads])
                        .await
                        .expect("insert");
                }
                client.batch_execute("COMMIT").await.expect("commit");
            }
        });
    });
    group.finish();
}

fn replay(c: &mut Criterion) {
    let rt = bench::runtime();
    let mut group = c.benchmark_group("postgres_replay_1KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    bench::replay(&mut group, &rt, open(&rt), 1_000_000);
    group.finish();
}

fn dedup(c: &mut Criterion) {
    let rt = bench::runtime();
    let mut group = c.benchmark_group("postgres_dedup_claim_commit");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    bench::dedup_claim_commit(&mut group, &rt, open(&rt));
    group.finish();
}

criterion_group!(benches, append, replay, dedup);
criterion_main!(benches);
