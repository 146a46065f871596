use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::dedup::{Claim, ClaimToken, DedupStore};
use crate::error::{Error, ErrorKind, Result};

/// A [`DedupStore`] in a hash map, for one process.
#[derive(Debug, Default)]
pub struct MemoryDedupStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    keys: HashMap<String, Entry>,
    last_fence: u64,
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    Claimed { fence: u64, until: Instant },
    Done { until: Instant },
}

impl Entry {
    fn fence(&self) -> Option<u64> {
        match self {
            Entry::Claimed { fence, .. } => Some(*fence),
            Entry::Done { .. } => None,
        }
    }
}

impl State {
    fn claim(&mut self, key: &str, now: Instant, lease: Duration) -> Claim {
        match self.keys.get(key) {
            Some(Entry::Done { until }) if *until > now => return Claim::Done,
            Some(Entry::Claimed { until, .. }) if *until > now => return Claim::Busy,
            _ => {}
        }
        self.last_fence += 1;
        let fence = self.last_fence;
        self.keys.insert(
            key.to_owned(),
            Entry::Claimed {
                fence,
                until: now + lease,
            },
        );
        Claim::Claimed(ClaimToken {
            key: key.to_owned(),
            fence,
        })
    }

    fn commit(&mut self, token: &ClaimToken, until: Instant) -> Result<()> {
        match self.keys.get_mut(&token.key) {
            Some(entry @ Entry::Claimed { .. }) if entry.fence() == Some(token.fence) => {
                *entry = Entry::Done { until };
                Ok(())
            }
            _ => Err(fenced(token)),
        }
    }
}

impl MemoryDedupStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written entry.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn fenced(token: &ClaimToken) -> Error {
    Error::new(
        ErrorKind::Fenced,
        format!(
            "claim {} on `{}` was taken over or is gone",
            token.fence, token.key
        ),
    )
}

#[async_trait]
impl DedupStore for MemoryDedupStore {
    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>> {
        let now = Instant::now();
        let mut state = self.lock();
        Ok(keys
            .iter()
            .map(|key| state.claim(key, now, lease))
            .collect())
    }

    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>> {
        let until = Instant::now() + ttl;
        let mut state = self.lock();
        Ok(tokens.iter().map(|t| state.commit(t, until)).collect())
    }

    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>> {
        let mut state = self.lock();
        let until = Instant::now() + lease;
        Ok(tokens
            .iter()
            .map(|token| match state.keys.get_mut(&token.key) {
                Some(Entry::Claimed { fence, until: u }) if *fence == token.fence => {
                    *u = until;
                    Ok(())
                }
                _ => Err(fenced(token)),
            })
            .collect())
    }

    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let mut state = self.lock();
        match state.keys.get(&token.key) {
            Some(Entry::Claimed { fence, .. }) if *fence == token.fence => {
                state.keys.remove(&token.key);
                Ok(())
            }
            _ => Err(fenced(token)),
        }
    }

    async fn purge_expired(&self) -> Result<u64> {
        let now = Instant::now();
        let mut state = self.lock();
        let before = state.keys.len();
        // Claims whose owner vanished go an hour after their lease; until then
        // a late commit without takeover is still allowed.
        let grace = Duration::from_secs(3600);
        state.keys.retain(|_, e| match e {
            Entry::Done { until } => *until > now,
            Entry::Claimed { until, .. } => *until + grace > now,
        });
        Ok((before - state.keys.len()) as u64)
    }
}
