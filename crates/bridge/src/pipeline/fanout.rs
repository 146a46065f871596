//! One source, several sinks: one consumer (one group), and per sink a
//! [`Route`] of its own (its dedup scope, breaker, filter, rate limit, dead
//! letters and metrics, named `route/sink`).
//!
//! - Durable mode: the first sink's route takes events in, one store append
//!   per event; every sink forwards from the shared stream with its own
//!   cursor, so a slow or broken sink grows its own backlog and holds no
//!   other.
//! - Direct mode: each delivery goes to every sink's route as a delivery
//!   of its own ([`Branch`]); the source's delivery is settled once every
//!   sink settled its copy ([`Joint`]): acked when all acked, otherwise
//!   redelivered (the longest delay asked), the sinks that had it already
//!   dropping it as a duplicate. A sink that cannot keep up holds the
//!   source back: in direct mode nothing is acked that a sink has not
//!   confirmed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use causeway_core::{
    Capabilities, Consumer, Delivery, Settlement, Settler, Ticket, Unsettled, settle_all,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{RETRY_PAUSE, Route};
use crate::config::Mode;

/// Runs `sinks` (the routes of one route's sinks, in config order) from
/// one `source` until `shutdown`.
pub async fn run_fanout(
    sinks: Vec<Arc<Route>>,
    source: Box<dyn Consumer>,
    shutdown: CancellationToken,
) -> Result<()> {
    let Some(first) = sinks.first().cloned() else {
        anyhow::bail!("a route without sinks");
    };
    let name = first.stream.clone();
    tracing::info!(route = %name, sinks = sinks.len(), mode = ?first.config.mode, "route started");
    let result = match first.config.mode {
        Mode::Durable => first.run_durable(sinks, source, shutdown).await,
        Mode::Direct => split(sinks, source, shutdown).await,
    };
    tracing::info!(route = %name, "route stopped");
    result
}

/// Direct mode: polls the source and hands each batch to every sink's route.
async fn split(
    sinks: Vec<Arc<Route>>,
    mut source: Box<dyn Consumer>,
    shutdown: CancellationToken,
) -> Result<()> {
    let first = sinks[0].clone();
    let capabilities = source.capabilities();
    let mut senders = Vec::with_capacity(sinks.len());
    let mut running = Vec::with_capacity(sinks.len());
    for route in &sinks {
        // Two batches queued per sink: the rest waits at the source.
        let (tx, rx) = mpsc::channel(2);
        senders.push(tx);
        let branch = Box::new(Branch { rx, capabilities });
        let (route, shutdown) = (route.clone(), shutdown.clone());
        running.push(tokio::spawn(async move {
            route.run_direct(branch, shutdown).await
        }));
    }
    let joint = Arc::new(Joint::default());
    let mut failure = None;
    'polling: while !shutdown.is_cancelled() {
        if running.iter().any(tokio::task::JoinHandle::is_finished) {
            failure = Some(anyhow::anyhow!(
                "route {}: a sink stopped before shutdown",
                first.stream
            ));
            break;
        }
        let batch = match source
            .next_batch(first.config.batch_size, first.config.linger)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(route = %first.stream, error = %e, "source failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        // Undecodable and invalid messages become one dead letter each,
        // under the first sink's name, before they are copied.
        let batch = first.admit(batch).await;
        if batch.is_empty() {
            continue;
        }
        let mut copies: Vec<Vec<Delivery>> = senders.iter().map(|_| Vec::new()).collect();
        for d in batch {
            let children = joint.split(d.ticket, senders.len());
            for (copy, ticket) in copies.iter_mut().zip(children) {
                copy.push(Delivery::new(d.event.clone(), ticket));
            }
        }
        for (tx, copy) in senders.iter().zip(copies) {
            tokio::select! {
                sent = tx.send(copy) => if sent.is_err() { break 'polling },
                // Copies not handed over are never settled: their source
                // deliveries stay unacked and come again after a restart.
                () = shutdown.cancelled() => break 'polling,
            }
        }
        // Let the sinks just woken run: a task woken by this one waits in
        // this worker's LIFO slot, which no other worker steals from, and a
        // source whose poll does not yield (the in-memory broker's) would
        // keep them from running at all.
        tokio::task::yield_now().await;
    }
    drop(senders);
    for handle in running {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(anyhow::anyhow!("a sink panicked: {e}"))),
        }
    }
    // Every sink settled what it held: now the source may commit.
    source.close().await?;
    match failure {
        Some(e) if !shutdown.is_cancelled() => Err(e),
        _ => Ok(()),
    }
}

/// One sink's side of a split source: what the splitter handed it.
struct Branch {
    rx: mpsc::Receiver<Vec<Delivery>>,
    capabilities: Capabilities,
}

#[async_trait]
impl Consumer for Branch {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// The next batch handed over (never split further: a batch is at most
    /// the route's `batch_size` already).
    async fn next_batch(
        &mut self,
        _max: usize,
        wait: Duration,
    ) -> causeway_core::Result<Vec<Delivery>> {
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) | Err(_) => Ok(Vec::new()),
        }
    }

    /// The source is closed by the splitter, once every sink is done.
    async fn close(&mut self) -> causeway_core::Result<()> {
        Ok(())
    }
}

/// The source deliveries split among sinks: each copy's ticket is a tag
/// here; the source's ticket settles when the last copy does.
#[derive(Default)]
struct Joint {
    copies: Unsettled<Arc<Mutex<Part>>>,
}

/// One source delivery and what its copies came to so far.
struct Part {
    source: Option<Ticket>,
    left: usize,
    outcome: Settlement,
}

impl Joint {
    /// `n` tickets for the copies of the delivery `source` settles.
    fn split(self: &Arc<Self>, source: Ticket, n: usize) -> Vec<Ticket> {
        let (position, attempt) = (source.position(), source.attempt());
        let part = Arc::new(Mutex::new(Part {
            source: Some(source),
            left: n,
            outcome: Settlement::Ack,
        }));
        let settler: Arc<dyn Settler> = self.clone();
        (0..n)
            .map(|_| {
                let tag = self.copies.insert(part.clone());
                Ticket::new(settler.clone(), tag, position, attempt)
            })
            .collect()
    }
}

/// The stronger of two outcomes: reject over nack over ack; the longer delay.
fn stronger(a: Settlement, b: Settlement) -> Settlement {
    match (a, b) {
        (r @ Settlement::Reject { .. }, _) | (_, r @ Settlement::Reject { .. }) => r,
        (Settlement::Nack { delay: x }, Settlement::Nack { delay: y }) => {
            Settlement::Nack { delay: x.max(y) }
        }
        (n @ Settlement::Nack { .. }, Settlement::Ack) | (Settlement::Ack, n) => n,
    }
}

#[async_trait]
impl Settler for Joint {
    async fn settle(&self, items: Vec<(u64, Settlement)>) -> causeway_core::Result<()> {
        let (taken, unknown) = self.copies.take(items);
        let mut done = Vec::new();
        for (part, settlement) in taken {
            let mut part = part
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            part.left -= 1;
            let so_far = std::mem::replace(&mut part.outcome, Settlement::Ack);
            part.outcome = stronger(so_far, settlement);
            if part.left == 0
                && let Some(source) = part.source.take()
            {
                done.push((source, part.outcome.clone()));
            }
        }
        settle_all(done).await?;
        causeway_core::unknown_tags(unknown)
    }
}

impl std::fmt::Debug for Joint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Joint").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_strongest_outcome_wins() {
        let nack = |s| Settlement::Nack {
            delay: Duration::from_secs(s),
        };
        assert_eq!(stronger(Settlement::Ack, Settlement::Ack), Settlement::Ack);
        assert_eq!(stronger(Settlement::Ack, nack(1)), nack(1));
        assert_eq!(stronger(nack(3), nack(1)), nack(3));
        let reject = Settlement::Reject { reason: "r".into() };
        assert_eq!(stronger(nack(3), reject.clone()), reject);
    }
}
