//! A circuit breaker per sink: after `failures` consecutive failed publishes
//! it opens and fails fast for `cooldown`, then lets one probe through.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Error, ErrorKind, Event, Publisher, Receipt, Result};
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

#[async_trait]
impl<P: Publisher> Publisher for Breaking<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        if !self.breaker.allow() {
            return Err(Error::temporary(
                ErrorKind::Unavailable,
                "circuit open: the sink failed repeatedly",
            ));
        }
        let result = self.inner.publish(destination, events).await;
        let ok = match &result {
            Ok(outcomes) => !outcomes
                .iter()
                .any(|o| o.as_ref().is_err_and(Error::is_temporary)),
            Err(e) => !e.is_temporary(),
        };
        self.breaker.record(ok);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
