//! Dedup store scenarios: every DedupStore implementation runs all of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use causeway_core::{Claim, ClaimToken, ErrorKind};

use crate::harness::DedupStoreHarness;
use crate::support::unique_name;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

fn claimed(c: Claim) -> ClaimToken {
    match c {
        Claim::Claimed(t) => t,
        other => panic!("expected a claim, got {other:?}"),
    }
}

/// claim → commit makes the key done; claims of a done key say so.
pub async fn claim_commit_done(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let key = unique_name("k");
    let token = claimed(store.claim(&key, LEASE).await.expect("claim"));
    assert_eq!(
        store.claim(&key, LEASE).await.expect("claim"),
        Claim::Busy,
        "{}",
        h.name()
    );
    store.commit(&token, TTL).await.expect("commit");
    assert_eq!(
        store.claim(&key, LEASE).await.expect("claim"),
        Claim::Done,
        "{}",
        h.name()
    );
}

/// A released claim is claimable at once; a release never marks it done.
pub async fn release_makes_claimable(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let key = unique_name("k");
    let token = claimed(store.claim(&key, LEASE).await.expect("claim"));
    store.release(&token).await.expect("release");
    let again = claimed(store.claim(&key, LEASE).await.expect("claim"));
    assert!(
        again.fence > token.fence,
        "{}: fence did not increase",
        h.name()
    );
}

/// A lease that ran out can be taken over; the stale owner can then neither
/// commit nor release, and the new owner commits.
pub async fn expired_lease_is_fenced(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let key = unique_name("k");
    let stale = claimed(
        store
            .claim(&key, Duration::from_millis(200))
            .await
            .expect("claim"),
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = claimed(store.claim(&key, LEASE).await.expect("claim"));
    let err = store
        .commit(&stale, TTL)
        .await
        .expect_err("stale commit accepted");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{}: {err}", h.name());
    let err = store
        .release(&stale)
        .await
        .expect_err("stale release accepted");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{}: {err}", h.name());
    store.commit(&fresh, TTL).await.expect("commit");
    assert_eq!(store.claim(&key, LEASE).await.expect("claim"), Claim::Done);
}

/// A renewed claim outlives its first lease; once another owner took the
/// key over, the old owner's renewal is fenced (a zombie learns it lost).
pub async fn renewal_extends_and_fences(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let short = Duration::from_millis(300);
    let key = unique_name("k");
    let token = claimed(store.claim(&key, short).await.expect("claim"));
    let renewed = store
        .renew_many(std::slice::from_ref(&token), LEASE)
        .await
        .expect("renew");
    assert!(renewed[0].is_ok(), "{}: {renewed:?}", h.name());
    tokio::time::sleep(short * 2).await;
    assert_eq!(
        store.claim(&key, LEASE).await.expect("claim"),
        Claim::Busy,
        "{}: a renewed lease was taken over",
        h.name()
    );
    // The other key: its lease runs out, someone else takes it over.
    let other = unique_name("k");
    let stale = claimed(store.claim(&other, short).await.expect("claim"));
    tokio::time::sleep(short * 2).await;
    let fresh = claimed(store.claim(&other, LEASE).await.expect("claim"));
    let renewed = store
        .renew_many(&[token.clone(), stale.clone()], LEASE)
        .await
        .expect("renew");
    assert!(renewed[0].is_ok(), "{}: {renewed:?}", h.name());
    let err = renewed[1]
        .as_ref()
        .expect_err("a stale renewal was accepted");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{}: {err}", h.name());
    store.commit(&fresh, TTL).await.expect("commit");
    store
        .commit(&token, TTL)
        .await
        .expect("commit after renewal");
}

/// A lease that ran out but was not taken over may still commit.
pub async fn late_commit_without_takeover(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let key = unique_name("k");
    let token = claimed(
        store
            .claim(&key, Duration::from_millis(100))
            .await
            .expect("claim"),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.commit(&token, TTL).await.expect("late commit");
    assert_eq!(
        store.claim(&key, LEASE).await.expect("claim"),
        Claim::Done,
        "{}",
        h.name()
    );
}

/// A committed key is forgotten after its TTL, and purged.
pub async fn committed_keys_expire(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let key = unique_name("k");
    let token = claimed(store.claim(&key, LEASE).await.expect("claim"));
    store
        .commit(&token, Duration::from_millis(200))
        .await
        .expect("commit");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let purged = store.purge_expired().await.expect("purge");
    assert!(purged >= 1, "{}: nothing purged", h.name());
    claimed(store.claim(&key, LEASE).await.expect("claim after ttl"));
}

/// Batch calls agree with single ones.
pub async fn batch_claims(h: &dyn DedupStoreHarness) {
    let store = h.store().await.expect("store");
    let keys: Vec<String> = (0..20).map(|_| unique_name("b")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let claims = store
        .claim_many(&refs[..10], LEASE)
        .await
        .expect("claim_many");
    let tokens: Vec<ClaimToken> = claims.into_iter().map(claimed).collect();
    let commits = store.commit_many(&tokens, TTL).await.expect("commit_many");
    assert!(commits.iter().all(Result::is_ok), "{}", h.name());
    let again = store.claim_many(&refs, LEASE).await.expect("claim_many");
    assert!(
        again[..10].iter().all(|c| *c == Claim::Done),
        "{}",
        h.name()
    );
    assert!(
        again[10..].iter().all(|c| matches!(c, Claim::Claimed(_))),
        "{}",
        h.name()
    );
}

/// Eight workers race claim → commit on the same 500 keys: each key is
/// committed exactly once.
pub async fn concurrent_claims_commit_once(h: &dyn DedupStoreHarness) {
    let store: Arc<dyn causeway_core::DedupStore> = h.store().await.expect("store");
    let prefix = unique_name("race");
    let keys: Arc<Vec<String>> = Arc::new((0..500).map(|i| format!("{prefix}-{i}")).collect());
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                // Each worker walks the keys from a different start.
                for i in 0..keys.len() {
                    let key = &keys[(i + w * 61) % keys.len()];
                    if let Claim::Claimed(token) = store.claim(key, LEASE).await.expect("claim")
                        && store.commit(&token, TTL).await.is_ok()
                    {
                        committed.push(key.clone());
                    }
                }
                committed
            })
        })
        .collect();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for w in workers {
        for key in w.await.expect("worker") {
            *counts.entry(key).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), 500, "{}: some keys never committed", h.name());
    assert!(
        counts.values().all(|&c| c == 1),
        "{}: a key committed twice",
        h.name()
    );
}
