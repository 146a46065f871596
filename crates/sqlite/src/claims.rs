//! Dedup claims, held in this process's memory: only commits reach the
//! file. docs/specs/dedup.md argues why a crash at any point loses nothing
//! and lets through no more duplicates than durable claims did; in short,
//! a claim only arbitrates between live holders, and after a crash there
//! are none. That holds while one process claims in a file, so the first
//! claim takes an exclusive lock on `<file>-claims.lock`, released when the
//! process ends, however it ends.
//!
//! The writer thread owns this (no lock of its own). A commit or release
//! is applied here only once its transaction is durable ([`Claims::settle`]):
//! until then the claim stays held, so a redelivery meanwhile is busy, not
//! claimable again.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use causeway_core::ClaimToken;

use crate::error::Error;

/// A claim whose lease ran out this long ago is forgotten by the purge (its
/// owner is gone; a late commit is allowed until then).
pub(crate) const STALE_CLAIM_GRACE_MS: i64 = 3600 * 1000;

/// Fences reserved in the file at a time: one write per this many claims.
pub(crate) const FENCE_BLOCK: u64 = 1 << 32;

/// How long the first claim waits for the file's claims lock.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The live claims of this process.
#[derive(Debug)]
pub(crate) struct Claims {
    held: HashMap<String, Held>,
    /// The last fence handed out, and the end of the block reserved in the
    /// file (`reserve`): fences only grow, across processes too.
    last_fence: u64,
    fence_limit: u64,
    lock_path: PathBuf,
    lock: Option<File>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    fence: u64,
    /// Lease end, unix milliseconds.
    until: i64,
}

impl Claims {
    /// No claims yet, for the store file `db`; fences after `base` (see
    /// [`Claims::reserve`]).
    pub(crate) fn new(db: &Path, base: u64) -> Self {
        let mut lock_path = db.as_os_str().to_owned();
        lock_path.push("-claims.lock");
        Claims {
            held: HashMap::new(),
            last_fence: base,
            fence_limit: base.saturating_add(FENCE_BLOCK),
            lock_path: lock_path.into(),
            lock: None,
        }
    }

    /// Whether `n` more claims need fences beyond the reserved block.
    pub(crate) fn needs_fences(&self, n: usize) -> bool {
        self.last_fence.saturating_add(n as u64) > self.fence_limit
    }

    /// Hands out the fences after `base` up to `base + FENCE_BLOCK`, a block
    /// the file recorded as taken: the next process starts after it.
    pub(crate) fn reserve(&mut self, base: u64) {
        self.last_fence = base;
        self.fence_limit = base.saturating_add(FENCE_BLOCK);
    }

    /// Makes sure this process alone claims in the file: the first call
    /// takes the lock, which a second process (or a second store on the
    /// same file) cannot.
    pub(crate) fn lock(&mut self) -> Result<(), Error> {
        if self.lock.is_some() {
            return Ok(());
        }
        let in_use = |why: String| {
            Error::InUse(format!(
                "cannot claim in {}: {why}; a SQLite store serves one process (share a store with PostgreSQL)",
                self.lock_path.display()
            ))
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| in_use(e.to_string()))?;
        // A store just dropped in this process lets go when its writer
        // thread ends, a moment later: a reopen waits that long, no more.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    self.lock = Some(file);
                    return Ok(());
                }
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(in_use("another process claims in it".into()));
                }
                Err(TryLockError::Error(e)) => return Err(in_use(e.to_string())),
            }
        }
    }

    /// Whether a live claim holds `key` at `now`.
    pub(crate) fn busy(&self, key: &str, now: i64) -> bool {
        self.held.get(key).is_some_and(|h| h.until > now)
    }

    /// Claims `key` until `until` (replacing a claim whose lease ran out).
    pub(crate) fn take(&mut self, key: String, until: i64) -> ClaimToken {
        self.last_fence += 1;
        let fence = self.last_fence;
        self.held.insert(key.clone(), Held { fence, until });
        ClaimToken { key, fence }
    }

    /// Whether `token` is still the claim on its key (its lease may have
    /// run out: without a takeover it may still commit).
    pub(crate) fn holds(&self, token: &ClaimToken) -> bool {
        self.held
            .get(&token.key)
            .is_some_and(|h| h.fence == token.fence)
    }

    /// Extends `token`'s lease to `until`, if it is still the claim.
    pub(crate) fn renew(&mut self, token: &ClaimToken, until: i64) -> bool {
        match self.held.get_mut(&token.key) {
            Some(h) if h.fence == token.fence => {
                h.until = until;
                true
            }
            _ => false,
        }
    }

    /// Forgets `token`'s claim (committed durably, or released), if it is
    /// still the claim: a takeover since is left alone.
    pub(crate) fn settle(&mut self, token: &ClaimToken) {
        if self.holds(token) {
            self.held.remove(&token.key);
        }
    }

    /// Forgets claims whose lease ran out more than the grace ago.
    pub(crate) fn purge(&mut self, now: i64) -> u64 {
        let before = self.held.len();
        self.held
            .retain(|_, h| h.until > now - STALE_CLAIM_GRACE_MS);
        (before - self.held.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_busy_until_its_lease_ends_and_fences_only_grow() {
        let dir = tempfile::tempdir().expect("dir");
        let mut claims = Claims::new(&dir.path().join("s.db"), 41);
        assert!(!claims.needs_fences(1));
        assert!(claims.needs_fences(FENCE_BLOCK as usize + 1));
        let first = claims.take("k".into(), 100);
        assert_eq!(first.fence, 42);
        assert!(claims.busy("k", 99));
        assert!(!claims.busy("k", 100));
        let second = claims.take("k".into(), 300);
        assert!(second.fence > first.fence);
        assert!(!claims.holds(&first), "taken over");
        assert!(!claims.renew(&first, 500));
        claims.settle(&first);
        assert!(
            claims.holds(&second),
            "a stale settle leaves the takeover alone"
        );
        assert!(claims.renew(&second, 500));
        claims.settle(&second);
        assert!(!claims.busy("k", 0));
    }

    #[test]
    fn stale_claims_are_purged_after_the_grace() {
        let dir = tempfile::tempdir().expect("dir");
        let mut claims = Claims::new(&dir.path().join("s.db"), 0);
        claims.take("old".into(), 1_000);
        claims.take("new".into(), 1_000 + STALE_CLAIM_GRACE_MS);
        assert_eq!(claims.purge(1_000 + STALE_CLAIM_GRACE_MS), 1);
        assert!(claims.busy("new", 1_000));
    }

    #[test]
    fn a_second_claimer_of_the_same_file_is_refused_saying_why() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("s.db");
        let mut first = Claims::new(&db, 0);
        first.lock().expect("first lock");
        first.lock().expect("taken once, kept");
        let mut second = Claims::new(&db, 0);
        let refused = second.lock().expect_err("a second claimer");
        assert!(
            refused.to_string().contains("another process claims in it"),
            "{refused}"
        );
        drop(first);
        second.lock().expect("free once the first is gone");
    }
}
