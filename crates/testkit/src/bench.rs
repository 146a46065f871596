//! Store benchmarks shared by every EventStore/DedupStore: each crate adds
//! its raw-driver baselines next to these in the same criterion run.

use std::sync::Arc;
use std::time::Duration;

use causeway_core::{Claim, DedupStore, Event, EventStore, ReadFrom, ReadQuery};
use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Throughput};
use tokio::runtime::Runtime;

/// Events per measured iteration of the batched benches.
pub const PER_ITER: usize = 10_000;

/// `n` events of 1 KiB payload with ids `{prefix}-{i}`.
pub fn events_1kib(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(format!("{prefix}-{i}"), "causeway://bench", "bench")
                .with_payload(vec![7u8; 1024])
        })
        .collect()
}

/// A two-worker runtime, like the machines the project runs on.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// 8 concurrent appenders, batches of 100 events of 1 KiB: what group commit is for.
pub fn append_group_commit(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    store: Arc<dyn EventStore>,
) {
    group.throughput(Throughput::Elements(PER_ITER as u64));
    let mut round = 0u64;
    group.bench_function("store_group_commit_8x100", |b| {
        // Events are built in the untimed setup: only appending is measured.
        b.to_async(rt).iter_batched(
            || {
                round += 1;
                (0..8)
                    .map(|t| events_1kib(&format!("r{round}-t{t}"), PER_ITER / 8))
                    .collect::<Vec<_>>()
            },
            |per_task| {
                let store = store.clone();
                async move {
                    let tasks: Vec<_> = per_task
                        .into_iter()
                        .map(|events| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                for chunk in events.chunks(100) {
                                    store.append("bench", chunk).await.expect("append");
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task");
                    }
                }
            },
            BatchSize::PerIteration,
        );
    });
}

/// Stores `total` events, then measures reading them all in pages of 10,000.
pub fn replay(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    store: Arc<dyn EventStore>,
    total: usize,
) {
    rt.block_on(async {
        for chunk in 0..total / PER_ITER {
            let batch = events_1kib(&format!("c{chunk}"), PER_ITER);
            for part in batch.chunks(1000) {
                store.append("replay", part).await.expect("append");
            }
        }
    });
    group.throughput(Throughput::Elements(total as u64));
    group.bench_function(format!("read_{total}_in_pages_of_10000"), |b| {
        b.to_async(rt).iter(|| async {
            let (mut from, mut seen) = (0, 0);
            loop {
                let page = store
                    .read(&ReadQuery::new("replay", ReadFrom::Position(from), 10_000))
                    .await
                    .expect("read");
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                seen += page.len();
            }
            assert_eq!(seen, total);
        });
    });
}

/// claim + commit: 8 tasks with batches of 100 keys, and one key at a time.
pub fn dedup_claim_commit(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    store: Arc<dyn DedupStore>,
) {
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(3600);
    let mut round = 0u64;
    group.throughput(Throughput::Elements(PER_ITER as u64));
    group.bench_function("batches_of_100_8_tasks", |b| {
        b.to_async(rt).iter(|| {
            round += 1;
            let store = store.clone();
            async move {
                let tasks: Vec<_> = (0..8)
                    .map(|t| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            for chunk in 0..PER_ITER / 800 {
                                let keys: Vec<String> = (0..100)
                                    .map(|i| format!("r{round}-t{t}-c{chunk}-{i}"))
                                    .collect();
                                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                                let tokens: Vec<_> = store
                                    .claim_many(&refs, lease)
                                    .await
                                    .expect("claim")
                                    .into_iter()
                                    .filter_map(|c| match c {
                                        Claim::Claimed(t) => Some(t),
                                        Claim::Done | Claim::Busy => None,
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
        b.to_async(rt).iter(|| {
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
}

/// Receives until `n` deliveries arrived, acking each batch of up to `max`
/// as it comes: the consume loop every adapter's bench times. Returns how
/// many arrived (at least `n`).
pub async fn consume_and_ack(
    consumer: &mut dyn causeway_core::Consumer,
    n: usize,
    max: usize,
) -> usize {
    use causeway_core::{Settlement, settle_all};
    let mut got = 0;
    while got < n {
        let batch = consumer
            .next_batch(max, std::time::Duration::from_secs(5))
            .await
            .expect("next_batch");
        got += batch.len();
        settle_all(batch.into_iter().map(|d| (d.ticket, Settlement::Ack)))
            .await
            .expect("ack");
    }
    got
}
