//! A circuit breaker per sink: after `failures` consecutive failed publishes
//! it opens and fails fast for `cooldown`, then lets one probe through.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Confirms, Error, ErrorKind, Event, Publisher, Receipt, Result};
use tokio::time::Instant;

/// Breaker state shared by a route's publishing tasks.
#[derive(Debug)]
pub struct Breaker {
    failures_to_open: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(failures_to_open: u32, cooldown: Duration) -> Self {
        Breaker {
            failures_to_open: failures_to_open.max(1),
            cooldown,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a publish may go out now: closed, or the one half-open probe.
    pub fn allow(&self) -> bool {
        let mut s = self.lock();
        match s.open_until {
            None => true,
            Some(until) if Instant::now() >= until && !s.probing => {
                s.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// Records how a publish went.
    pub fn record(&self, ok: bool) {
        let mut s = self.lock();
        if ok {
            *s = State::default();
            return;
        }
        s.consecutive += 1;
        if s.probing || s.consecutive >= self.failures_to_open {
            s.open_until = Some(Instant::now() + self.cooldown);
            s.probing = false;
        }
    }

    /// Whether the breaker is open (failing fast) right now.
    pub fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }
}

/// A publisher behind a breaker: while open, publishes fail at once with a
/// temporary `Unavailable` error instead of reaching the sink.
pub struct Breaking<P> {
    /// The sink.
    pub inner: P,
    /// Its breaker.
    pub breaker: std::sync::Arc<Breaker>,
}

impl<P> std::fmt::Debug for Breaking<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaking")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<P: Publisher> Publisher for Breaking<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// Not counted by the breaker: only publishes are.
    async fn connect(&self) -> Result<()> {
        self.inner.connect().await
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let pending = self.admit()?;
        let result = self.inner.publish(destination, events).await;
        pending.record(result)
    }

    /// Counted once its confirmations are in, like a publish.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        let pending = match self.admit() {
            Ok(pending) => pending,
            Err(open) => return Box::pin(std::future::ready(Err(open))),
        };
        let confirms = self.inner.submit(destination, events).await;
        Box::pin(async move { pending.record(confirms.await) })
    }
}

impl<P> Breaking<P> {
    /// A call may go unless the circuit is open.
    fn admit(&self) -> Result<Pending> {
        if !self.breaker.allow() {
            return Err(Error::temporary(
                ErrorKind::Unavailable,
                "circuit open: the sink failed repeatedly",
            ));
        }
        Ok(Pending {
            breaker: self.breaker.clone(),
            recorded: false,
        })
    }
}

/// A publish under way. A publish dropped before it finished (a shutdown,
/// a timeout around it) counts as failed: a probe that never reported
/// would leave the breaker half-open, refusing everything, for good.
struct Pending {
    breaker: std::sync::Arc<Breaker>,
    recorded: bool,
}

impl Pending {
    /// Records the publish's result and passes it on. A failure is the
    /// sink's: temporary, or permanent but not the event's own fault
    /// (credentials, a missing entity, a quota).
    fn record(mut self, result: Result<Vec<Result<Receipt>>>) -> Result<Vec<Result<Receipt>>> {
        let sink_failed = |e: &Error| e.is_temporary() || !e.kind().is_event_fault();
        let ok = match &result {
            Ok(outcomes) => !outcomes.iter().any(|o| o.as_ref().is_err_and(sink_failed)),
            Err(e) => !sink_failed(e),
        };
        self.recorded = true;
        self.breaker.record(ok);
        result
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that never answers.
    struct Hanging;

    #[async_trait]
    impl Publisher for Hanging {
        fn capabilities(&self) -> Capabilities {
            causeway_core::memory::MemoryBroker::new().capabilities()
        }
        async fn publish(&self, _: &str, _: &[Event]) -> Result<Vec<Result<Receipt>>> {
            std::future::pending().await
        }
    }

    /// Before the fix a probe dropped unfinished left the breaker
    /// half-open for good: every later publish failed fast.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_lets_the_next_probe_through() {
        let breaker = std::sync::Arc::new(Breaker::new(1, Duration::from_secs(10)));
        breaker.record(false);
        assert!(breaker.is_open());
        tokio::time::advance(Duration::from_secs(11)).await;
        let sink = Breaking {
            inner: Hanging,
            breaker: breaker.clone(),
        };
        let probe = sink.publish("t", &[]);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), probe)
                .await
                .is_err(),
            "the probe hangs"
        );
        // Dropped: counted as failed, so the breaker opened again for a
        // cooldown, after which another probe goes out.
        assert!(!breaker.allow(), "still cooling down");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(breaker.allow(), "a new probe after the cooldown");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_n_failures_and_probes_after_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert!(b.allow());
            b.record(false);
        }
        assert!(!b.is_open());
        b.record(false);
        assert!(b.is_open() && !b.allow());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        b.record(false);
        assert!(!b.allow(), "a failed probe reopens");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(b.allow());
        b.record(true);
        assert!(!b.is_open() && b.allow());
    }
}
