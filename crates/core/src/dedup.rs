//! Two-phase dedup: claim a key, do the effect, then commit it (or release it).

use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

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
    /// Claims `key` for `lease` unless it is done or claimed by a live lease.
    /// A claim whose lease ran out may be taken over.
    async fn claim(&self, key: &str, lease: Duration) -> Result<Claim>;

    /// Marks the claimed key done for `ttl`. Fails with
    /// [`crate::ErrorKind::Fenced`] if another owner claimed it since.
    async fn commit(&self, token: &ClaimToken, ttl: Duration) -> Result<()>;

    /// Gives the claim up so a retry can claim at once. Fails with
    /// [`crate::ErrorKind::Fenced`] if another owner claimed it since.
    async fn release(&self, token: &ClaimToken) -> Result<()>;

    /// Extends live claims by `lease` from now, one result per token, in
    /// order; a claim another owner took over fails with
    /// [`crate::ErrorKind::Fenced`]. An owner that may have been paused past
    /// its lease renews before it acts, so a zombie learns it lost the key.
    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>>;

    /// Claims many keys; stores override this to use one round trip.
    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.claim(key, lease).await?);
        }
        Ok(out)
    }

    /// Commits many claims; one result per token, in order.
    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>> {
        let mut out = Vec::with_capacity(tokens.len());
        for token in tokens {
            out.push(self.commit(token, ttl).await);
        }
        Ok(out)
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
