//! Idempotent event handlers for application consumers: run a handler at
//! most once per event, using a [`DedupStore`] so that several instances agree.

use std::future::Future;
use std::time::Duration;

use crate::consume::Delivery;
use crate::dedup::{Claim, DedupStore};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;

/// What [`IdempotentHandler::handle`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<T> {
    /// The handler ran and its effect is committed.
    Ran(T),
    /// The event was handled before: the handler did not run.
    AlreadyDone,
    /// Another instance is handling it right now: the handler did not run.
    Busy,
}

/// Runs `handler` at most once per (scope, source, id), committing the key
/// only after the handler succeeded and releasing it when the handler fails,
/// so that a redelivery runs it again.
///
/// Handler errors are causeway [`crate::Error`]s so their status decides what
/// [`IdempotentHandler::handle_delivery`] does: retry later or dead-letter.
#[derive(Debug)]
pub struct IdempotentHandler<D, H> {
    store: D,
    handler: H,
    scope: String,
    lease: Duration,
    ttl: Duration,
    retry_delay: Duration,
}

impl<D, H, Fut, T> IdempotentHandler<D, H>
where
    D: DedupStore,
    H: Fn(Event) -> Fut + Send + Sync,
    Fut: Future<Output = Result<T>> + Send,
    T: Send,
{
    /// A handler scoped by `scope` (e.g. the consumer's name), so two
    /// applications sharing a store don't suppress each other's work.
    /// Defaults: lease 30 s (longer than the handler may take), keys kept
    /// for 7 days, temporary failures redelivered after 1 s.
    pub fn new(store: D, scope: impl Into<String>, handler: H) -> Self {
        IdempotentHandler {
            store,
            handler,
            scope: scope.into(),
            lease: Duration::from_secs(30),
            ttl: Duration::from_secs(7 * 24 * 3600),
            retry_delay: Duration::from_secs(1),
        }
    }

    /// How long a claim lasts unrenewed: it is renewed while the handler
    /// runs, so this is how soon another instance takes over from one that
    /// crashed or was paused.
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a handled event is remembered.
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Delay before redelivery after a temporary failure or a busy key.
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The dedup key of `event` in this handler's scope.
    pub fn key_of(&self, event: &Event) -> String {
        crate::dedup::key(&self.scope, event)
    }

    /// Runs the handler unless the event was handled or is being handled.
    ///
    /// On handler failure the claim is released and the handler's error returned.
    /// If the handler outlived its lease and another instance claimed the
    /// event meanwhile, the commit fails with [`ErrorKind::Fenced`].
    pub async fn handle(&self, event: Event) -> Result<Handled<T>> {
        let key = self.key_of(&event);
        let token = match self.store.claim(&key, self.lease).await? {
            Claim::Claimed(token) => token,
            Claim::Done => return Ok(Handled::AlreadyDone),
            Claim::Busy => return Ok(Handled::Busy),
        };
        // The claim is renewed while the handler runs, so a slow handler
        // keeps it; the lease bounds only a crashed or paused instance.
        let handled = {
            let run = (self.handler)(event);
            tokio::pin!(run);
            loop {
                tokio::select! {
                    out = &mut run => break out,
                    () = tokio::time::sleep(self.lease / 3) => {
                        if let Err(e) = self.store.renew_many(std::slice::from_ref(&token), self.lease).await {
                            tracing::warn!(error = %e, key, "could not renew the claim while the handler runs");
                        }
                    }
                }
            }
        };
        match handled {
            Ok(value) => {
                self.store.commit(&token, self.ttl).await?;
                Ok(Handled::Ran(value))
            }
            Err(e) => {
                if let Err(release) = self.store.release(&token).await {
                    // The claim expires with its lease anyway; the handler's error matters more.
                    tracing::warn!(error = %release, key, "could not release dedup claim");
                }
                Err(e)
            }
        }
    }

    /// Handles a broker delivery and settles it: ack when handled (now or
    /// before), nack after the retry delay when busy or failed temporarily,
    /// reject (dead-letter) when the handler failed permanently. A message
    /// that could not be decoded is rejected without reaching the handler.
    pub async fn handle_delivery(&self, delivery: Delivery) -> Result<Handled<T>> {
        let Delivery {
            event,
            ticket,
            undecodable,
        } = delivery;
        if let Some(reason) = undecodable {
            let e = Error::new(
                ErrorKind::InvalidEvent,
                format!("undecodable message: {reason}"),
            );
            ticket.reject(e.to_string()).await?;
            return Err(e);
        }
        match self.handle(event).await {
            Ok(Handled::Busy) => {
                ticket.nack(self.retry_delay).await?;
                Ok(Handled::Busy)
            }
            Ok(done) => {
                ticket.ack().await?;
                Ok(done)
            }
            Err(e) if e.is_temporary() || e.kind() == ErrorKind::Fenced => {
                ticket.nack(self.retry_delay).await?;
                Err(e)
            }
            Err(e) => {
                ticket.reject(e.to_string()).await?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::error::Error;
    use crate::memory::MemoryDedupStore;

    /// A handler slower than its lease keeps its claim: a redelivery at
    /// another instance meanwhile finds it busy. Before the fix the lease
    /// ran out under it and the second instance ran the handler too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_handler_keeps_its_claim() {
        let store = Arc::new(MemoryDedupStore::new());
        let runs = Arc::new(AtomicU32::new(0));
        let make = |runs: Arc<AtomicU32>| {
            IdempotentHandler::new(store.clone(), "app", move |_e: Event| {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1_000)).await;
                    Ok(())
                }
            })
            .with_lease(Duration::from_millis(300))
        };
        let (a, b) = (make(runs.clone()), make(runs.clone()));
        let event = Event::new("slow-1", "s", "t");
        let first = tokio::spawn({
            let event = event.clone();
            async move { a.handle(event).await }
        });
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(b.handle(event).await.unwrap(), Handled::Busy);
        assert_eq!(first.await.unwrap().unwrap(), Handled::Ran(()));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_once_under_1000_concurrent_duplicates_and_again_after_failure() {
        let runs = Arc::new(AtomicU32::new(0));
        let fail_next = Arc::new(AtomicU32::new(0));
        let handler = {
            let runs = runs.clone();
            let fail_next = fail_next.clone();
            Arc::new(IdempotentHandler::new(
                MemoryDedupStore::new(),
                "app",
                move |_event: Event| {
                    let runs = runs.clone();
                    let fail_next = fail_next.clone();
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        if fail_next.swap(0, Ordering::SeqCst) == 1 {
                            return Err(Error::new(ErrorKind::Connection, "downstream blip"));
                        }
                        Ok(())
                    }
                },
            ))
        };

        let event = Event::new("tx-1", "kafka://onprem/t", "finbank.transaction.created");
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let h = handler.clone();
                let e = event.clone();
                tokio::spawn(async move { h.handle(e).await })
            })
            .collect();
        let mut ran = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Handled::Ran(()) => ran += 1,
                Handled::AlreadyDone | Handled::Busy => {}
            }
        }
        assert_eq!(ran, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(handler.handle(event).await.unwrap(), Handled::AlreadyDone);

        // A failing run releases its claim: the redelivery runs it again.
        let other = Event::new("tx-2", "kafka://onprem/t", "finbank.transaction.created");
        fail_next.store(1, Ordering::SeqCst);
        let err = handler.handle(other.clone()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Connection);
        assert_eq!(
            handler.handle(other.clone()).await.unwrap(),
            Handled::Ran(())
        );
        assert_eq!(handler.handle(other).await.unwrap(), Handled::AlreadyDone);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn keys_are_scoped_and_unambiguous() {
        let h = IdempotentHandler::new(MemoryDedupStore::new(), "a", |_e: Event| async {
            Ok::<_, Error>(())
        });
        let e1 = Event::new("c", "a:b", "t");
        let e2 = Event::new("b:c", "a", "t");
        assert_ne!(h.key_of(&e1), h.key_of(&e2));
    }
}
