//! Several processes on one PostgreSQL: two processes race claim → commit on
//! the same 10,000 keys and each key is committed exactly once; a paused
//! instance whose lease ran out is fenced.
//!
//! The test runs its own binary again as the racing children (selected by an
//! environment variable), so no helper binary exists.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use causeway_core::{Claim, DedupStore, ErrorKind};

const CHILD: &str = "CAUSEWAY_POSTGRES_RACE_CHILD";
const KEYS: usize = 10_000;
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

/// A child: claim and commit every key in batches of 100, walking the keys
/// from its own offset so the two children collide all the way; print each
/// key it committed.
async fn child(spec: &str) {
    let (schema, who) = spec.split_once(':').expect("schema:child");
    let store = common::store_in(schema).await;
    let offset = if who == "0" { 0 } else { KEYS / 2 };
    let keys: Vec<String> = (0..KEYS)
        .map(|i| format!("k{}", (i + offset) % KEYS))
        .collect();
    for chunk in keys.chunks(100) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let tokens: Vec<_> = store
            .claim_many(&refs, LEASE)
            .await
            .expect("claim")
            .into_iter()
            .filter_map(|c| match c {
                Claim::Claimed(t) => Some(t),
                Claim::Done | Claim::Busy => None,
            })
            .collect();
        let results = store.commit_many(&tokens, TTL).await.expect("commit");
        for (t, r) in tokens.iter().zip(results) {
            if r.is_ok() {
                println!("committed {}", t.key);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_on_10000_keys_and_each_commits_once() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec).await;
    }
    let schema = common::fresh_schema();
    // Migrate once up front so the children race on claims, not on DDL.
    drop(common::store_in(&schema).await);
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "two_processes_race_on_10000_keys_and_each_commits_once",
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD, format!("{schema}:{i}"))
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut per_child = Vec::new();
    for mut c in children {
        let out = c.stdout.take().expect("stdout");
        let mut n = 0;
        for line in BufReader::new(out).lines() {
            if let Some(key) = line.expect("line").strip_prefix("committed ") {
                *counts.entry(key.to_owned()).or_default() += 1;
                n += 1;
            }
        }
        assert!(c.wait().expect("child").success(), "a racing child failed");
        per_child.push(n);
    }
    println!("postgres race: children committed {per_child:?} of {KEYS} keys");
    assert_eq!(counts.len(), KEYS, "some keys were never committed");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "keys committed by both processes: {twice:?}"
    );
    assert!(
        per_child.iter().all(|n| *n > 0),
        "no race happened: {per_child:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_whose_lease_expired_is_fenced() {
    let schema = common::fresh_schema();
    // Two store instances with their own pools: two bridge processes.
    let zombie = common::store_in(&schema).await;
    let live = common::store_in(&schema).await;
    let Claim::Claimed(stale) = zombie
        .claim("tx-1", Duration::from_millis(300))
        .await
        .expect("claim")
    else {
        panic!("first claim must succeed");
    };
    assert_eq!(live.claim("tx-1", LEASE).await.expect("claim"), Claim::Busy);
    // The zombie pauses (GC, network partition) past its lease.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let Claim::Claimed(fresh) = live.claim("tx-1", LEASE).await.expect("claim") else {
        panic!("takeover after the lease must succeed");
    };
    let err = zombie
        .commit(&stale, TTL)
        .await
        .expect_err("zombie committed");
    assert_eq!(err.kind(), ErrorKind::Fenced);
    live.commit(&fresh, TTL).await.expect("live commit");
    assert_eq!(
        zombie.claim("tx-1", LEASE).await.expect("claim"),
        Claim::Done
    );
}
