//! Two-phase dedup: claim a key, do the effect, then commit it (or release it).

use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;

/// The dedup key of `event` within `scope` (a route, a handler): the
/// event's (source, id), the pair CloudEvents makes unique. Unit separators
/// keep ("a", "b:c") and ("a:b", "c") apart.
pub fn key(scope: &str, event: &Event) -> String {
    format!("{scope}\u{1f}{}\u{1f}{}", event.source, event.id)
}

/// Proof of a claim. The fence increases with every claim of a key, so a
/// stale owner (whose lease ran out and was taken over) cannot commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClaimToken {
    /// The claimed key.
    pub key: String,
    /// Fencing token of this claim.
    pub fence: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Yours until the lease runs out: do the effect, then commit or release.
    Claimed(ClaimToken),
    /// The effect was already done and committed: skip it.
    Done,
    /// Someone else holds a live lease: try again later.
    Busy,
}

/// Dedup state shared by every instance of a route.
///
/// A failed attempt never hides its retry: only `commit` marks a key done,
/// and only the current owner can commit.
#[async_trait]
pub trait DedupStore: Send + Sync {
    /// Claims each key for `lease` unless it is done or claimed by a live
    /// lease, one answer per key, in order; a key twice in `keys` is
    /// [`Claim::Busy`] the second time. A claim whose lease ran out may be
    /// taken over. This is what a store implements, in one round trip.
    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>>;

    /// Marks each claimed key done for `ttl`, one result per token, in
    /// order: a token fails with [`crate::ErrorKind::Fenced`] if another
    /// owner claimed its key since.
    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>>;

    /// Gives the claim up so a retry can claim at once. Fails with
    /// [`crate::ErrorKind::Fenced`] if another owner claimed it since.
    async fn release(&self, token: &ClaimToken) -> Result<()>;

    /// Extends live claims by `lease` from now, one result per token, in
    /// order; a claim another owner took over fails with
    /// [`crate::ErrorKind::Fenced`]. An owner that may have been paused past
    /// its lease renews before it acts, so a zombie learns it lost the key.
    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>>;

    /// Claims one key: [`DedupStore::claim_many`] with one key.
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        self.claim_many(&[key], lease).await?.pop().ok_or_else(|| {
            Error::temporary(ErrorKind::Internal, "the dedup store answered no claim")
        })
    }

    /// Commits one claim: [`DedupStore::commit_many`] with one token.
    async fn commit(&self, token: &ClaimToken, ttl: Duration) -> Result<()> {
        self.commit_many(std::slice::from_ref(token), ttl)
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(Error::temporary(
                    ErrorKind::Internal,
                    "the dedup store answered no commit",
                ))
            })
    }

    /// Deletes done keys whose TTL ran out; returns how many.
    async fn purge_expired(&self) -> Result<u64> {
        Ok(0)
    }
}

/// A shared store is a store: handlers and routes can hold the same one.
#[async_trait]
impl<D: DedupStore + ?Sized> DedupStore for std::sync::Arc<D> {
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim> {
        (**self).claim(key, lease).await
    }
    async fn commit(&self, token: &ClaimToken, ttl: Duration) -> Result<()> {
        (**self).commit(token, ttl).await
    }
    async fn release(&self, token: &ClaimToken) -> Result<()> {
        (**self).release(token).await
    }
    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>> {
        (**self).renew_many(tokens, lease).await
    }
    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>> {
        (**self).claim_many(keys, lease).await
    }
    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>> {
        (**self).commit_many(tokens, ttl).await
    }
    async fn purge_expired(&self) -> Result<u64> {
        (**self).purge_expired().await
    }
}
