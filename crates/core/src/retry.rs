//! Retrying temporary failures with exponential backoff and jitter, as a
//! wrapper around any [`Publisher`] rather than code inside each adapter.

use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};

use crate::capabilities::Capabilities;
use crate::error::{Error, Result, Status};
use crate::event::Event;
use crate::publish::{Confirms, Publisher, Receipt};

/// How to retry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Upper bound of any delay.
    pub max_delay: Duration,
    /// Growth per retry.
    pub factor: f32,
    /// Randomise each delay so that many instances don't retry in step.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delays between attempts: `max_attempts - 1` of them.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize);
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }
}

/// A publisher that retries what failed temporarily: the whole batch after a
/// batch-level error, only the failed events after partial failures. Permanent
/// errors are returned at once.
#[derive(Debug, Clone)]
pub struct RetryingPublisher<P> {
    inner: P,
    policy: RetryPolicy,
}

impl<P> RetryingPublisher<P> {
    /// Wraps `inner`.
    pub fn new(inner: P, policy: RetryPolicy) -> Self {
        RetryingPublisher { inner, policy }
    }

    /// The wrapped publisher.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

#[async_trait]
impl<P: Publisher> Publisher for RetryingPublisher<P> {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn connect(&self) -> Result<()> {
        self.inner.connect().await
    }

    /// Not retried here: a retry would go out behind the calls submitted
    /// after this one and pass them. What fails comes back to the caller,
    /// which sends it again ahead of its key's later events.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        self.inner.submit(destination, events).await
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let mut delays = self.policy.delays();
        // First attempt on the caller's slice; later ones only on what failed.
        let mut outcomes = loop {
            match self.inner.publish(destination, events).await {
                Ok(outcomes) => break outcomes,
                Err(e) if e.is_temporary() => match delays.next() {
                    Some(delay) => {
                        tracing::warn!(error = %e, ?delay, destination, "publish failed, retrying batch");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(exhausted(e, destination)),
                },
                Err(e) => return Err(e),
            }
        };
        loop {
            let retry: Vec<usize> = outcomes
                .iter()
                .enumerate()
                .filter(|(_, o)| o.as_ref().is_err_and(|e| e.is_temporary()))
                .map(|(i, _)| i)
                .collect();
            if retry.is_empty() {
                return Ok(outcomes);
            }
            let Some(delay) = delays.next() else {
                for i in retry {
                    if let Err(e) = &mut outcomes[i] {
                        *e = exhausted(e.clone(), destination);
                    }
                }
                return Ok(outcomes);
            };
            tracing::warn!(
                failed = retry.len(),
                ?delay,
                destination,
                "some events failed, retrying them"
            );
            tokio::time::sleep(delay).await;
            let subset: Vec<Event> = retry.iter().map(|&i| events[i].clone()).collect();
            match self.inner.publish(destination, &subset).await {
                Ok(again) => {
                    for (i, outcome) in retry.into_iter().zip(again) {
                        outcomes[i] = outcome;
                    }
                }
                // A batch-level failure keeps the per-event errors; a permanent one ends it.
                Err(e) => {
                    for i in retry {
                        outcomes[i] = Err(e.clone());
                    }
                    if !e.is_temporary() {
                        return Ok(outcomes);
                    }
                }
            }
        }
    }
}

/// A temporary error the policy gave up on: [`Status::Persistent`], with
/// the destination it was publishing to.
fn exhausted(e: Error, destination: &str) -> Error {
    e.with_status(Status::Persistent)
        .with_context("destination", destination)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::ErrorKind;

    /// Fails each event's first `fail_times` attempts with the given error.
    struct Flaky {
        fail_times: u32,
        error: Error,
        seen: Mutex<Vec<String>>,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Publisher for Flaky {
        fn capabilities(&self) -> Capabilities {
            Capabilities::default()
        }
        async fn publish(&self, _: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut seen = self.seen.lock().unwrap();
            Ok(events
                .iter()
                .map(|e| {
                    seen.push(e.id.clone());
                    let tries = seen.iter().filter(|s| **s == e.id).count() as u32;
                    // Only odd ids are flaky, so partial failures happen.
                    let flaky = e.id.parse::<u32>().unwrap() % 2 == 1;
                    if flaky && tries <= self.fail_times {
                        Err(self.error.clone())
                    } else {
                        Ok(Receipt::default())
                    }
                })
                .collect())
        }
    }

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            ..RetryPolicy::default()
        }
    }

    fn events(n: u32) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new(i.to_string(), "s", "t"))
            .collect()
    }

    #[tokio::test]
    async fn retries_only_the_events_that_failed_temporarily() {
        let flaky = Flaky {
            fail_times: 2,
            error: Error::new(ErrorKind::Connection, "blip"),
            seen: Mutex::default(),
            calls: AtomicU32::new(0),
        };
        let p = RetryingPublisher::new(flaky, quick(5));
        let out = p.publish("t", &events(4)).await.unwrap();
        assert!(out.iter().all(Result::is_ok));
        assert_eq!(p.inner().calls.load(Ordering::SeqCst), 3);
        // 4 on the first call, then the two odd ones twice.
        assert_eq!(p.inner().seen.lock().unwrap().len(), 8);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_never_retries_permanent_errors() {
        let flaky = Flaky {
            fail_times: 10,
            error: Error::new(ErrorKind::Connection, "down"),
            seen: Mutex::default(),
            calls: AtomicU32::new(0),
        };
        let p = RetryingPublisher::new(flaky, quick(3));
        let out = p.publish("t", &events(2)).await.unwrap();
        assert!(out[0].is_ok() && out[1].is_err());
        assert_eq!(p.inner().calls.load(Ordering::SeqCst), 3);
        let given_up = out[1].as_ref().unwrap_err();
        assert!(
            given_up.retries_exhausted() && given_up.is_temporary(),
            "{given_up}"
        );
        assert_eq!(given_up.context(), [("destination", "t".to_owned())]);

        let flaky = Flaky {
            fail_times: 10,
            error: Error::new(ErrorKind::TooLarge, "too big"),
            seen: Mutex::default(),
            calls: AtomicU32::new(0),
        };
        let p = RetryingPublisher::new(flaky, quick(3));
        let out = p.publish("t", &events(2)).await.unwrap();
        assert_eq!(out[1].as_ref().unwrap_err().kind(), ErrorKind::TooLarge);
        assert_eq!(p.inner().calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delays_grow_and_stay_bounded() {
        let policy = RetryPolicy {
            jitter: false,
            max_attempts: 6,
            ..RetryPolicy::default()
        };
        let d: Vec<_> = policy.delays().collect();
        assert_eq!(d.len(), 5);
        assert_eq!(d[0], Duration::from_millis(100));
        assert!(d[1].abs_diff(Duration::from_millis(200)) < Duration::from_millis(1));
        assert!(d.iter().all(|x| *x <= policy.max_delay));
    }
}
