//! Claims live in the process, commits in the file (docs/specs/dedup.md).

use std::time::Duration;

use causeway_core::{Claim, DedupStore, ErrorKind};
use causeway_sqlite::{SqliteOptions, SqliteStore};

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(3600);

fn open(path: &std::path::Path) -> SqliteStore {
    SqliteStore::open(path, SqliteOptions::default()).expect("open")
}

/// What a process's end (a crash included: nothing of a claim is in the
/// file) leaves: the committed key done, the claimed one claimable at once
/// rather than busy for its lease, with a higher fence.
#[tokio::test]
async fn a_claim_ends_with_its_process_and_a_commit_does_not() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("store.db");
    let store = open(&path);
    let Claim::Claimed(held) = store.claim("held", LEASE).await.expect("claim") else {
        panic!("held not claimed");
    };
    let Claim::Claimed(sent) = store.claim("sent", LEASE).await.expect("claim") else {
        panic!("sent not claimed");
    };
    store.commit(&sent, TTL).await.expect("commit");
    drop(store);
    let store = open(&path);
    assert_eq!(
        store.claim("sent", LEASE).await.expect("claim"),
        Claim::Done
    );
    match store.claim("held", LEASE).await.expect("claim") {
        Claim::Claimed(again) => assert!(again.fence > held.fence, "fences only grow"),
        other => panic!("a dead process's claim still holds: {other:?}"),
    }
}

/// A second store claiming in the same file is refused with a conflict
/// that says why.
#[tokio::test]
async fn a_second_claimer_of_the_file_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("store.db");
    let first = open(&path);
    first.claim("k", LEASE).await.expect("claim");
    let second = open(&path);
    let refused = second.claim("k", LEASE).await.expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::Conflict);
    let text = format!("{refused:#}");
    assert!(text.contains("serves one process"), "{text}");
}
