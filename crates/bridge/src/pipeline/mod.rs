//! One route: source → dedup → [store] → sink → commit → ack.
//!
//! The files read in the order an event travels:
//! - here: the [`Route`], [`Route::run`], and the source side both modes
//!   share ([`Route::run`] → `poll` → `admit`);
//! - [`direct`]: claim → shard → publish → commit → ack. The source is
//!   acked only after the sink confirmed;
//! - [`durable`]: append → ack, and the forwarder that drains the store to
//!   the sink. The source is acked once the event is in the store;
//! - [`sink`]: the publish both modes end in (the sink's filter, waves,
//!   one call per destination), and dead letters;
//! - [`fanout`]: one source feeding several sinks, each a [`Route`] of
//!   its own (`route/sink`): durable mode shares the store stream, direct
//!   mode splits each delivery and acks the source once every sink settled.
//!
//! Instances sharing a store (PostgreSQL) share the work through leases in
//! the dedup store: a claim per event in direct mode, one claim on the
//! route's forwarder in durable mode. Whoever acts on a claim older than half
//! its lease renews it first, so an instance that was paused (a "zombie")
//! learns that another took over and stands down instead of acting.

mod direct;
mod durable;
mod fanout;
mod sink;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use causeway_core::{
    ClaimToken, Consumer, DedupStore, Delivery, Error, Event, EventStore, Publisher, Settlement,
    Template, Ticket, settle_all,
};
use tokio_util::sync::CancellationToken;

use crate::config::{Mode, RouteConfig};
use crate::metrics::RouteMetrics;

pub use fanout::run_fanout;
pub use sink::dead_letter_stream;

/// Everything a running route needs: one source side and one sink. A
/// route with several sinks runs one of these per sink (`fanout`).
pub struct Route {
    /// Its name in metrics, logs, dedup and dead letters: the route's, or
    /// `route/sink` for one sink of several.
    pub name: String,
    /// The store stream its events are kept in (durable mode): the
    /// route's name, shared by all of its sinks.
    pub stream: String,
    /// Its forwarder's cursor and lease in `stream`.
    pub forwarder: String,
    /// Which events the sink takes; `None` takes all.
    pub filter: Option<crate::filter::Filter>,
    /// Its config.
    pub config: RouteConfig,
    /// The parsed destination template.
    pub template: Template,
    /// Identity, wrap and unwrap of what the source delivers.
    pub shape: crate::shape::Shape,
    /// The sink, in its stack of layers (retries, breaker): see [`crate::sink`].
    pub sink: Arc<dyn Publisher>,
    /// The dead-letter publisher and destination, if configured.
    pub dead_letter: Option<(Arc<dyn Publisher>, String)>,
    /// The store (durable mode, dead letters, replay).
    pub store: Arc<dyn EventStore>,
    /// Direct-mode dedup, and the forwarder's lease.
    pub dedup: Arc<dyn DedupStore>,
    /// Whether other instances may share the store: durable forwarding then
    /// takes turns under a lease.
    pub shared_store: bool,
    /// Metrics.
    pub metrics: RouteMetrics,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("shared_store", &self.shared_store)
            .finish_non_exhaustive()
    }
}

/// Where an event ended up after the sink was asked to take it.
#[derive(Debug)]
pub enum Fate {
    /// The sink confirmed it (or already had this very event).
    Sent,
    /// The sink's filter does not take it: counted, not sent.
    Filtered,
    /// It can never be carried: it is kept as a dead letter instead.
    DeadLettered,
    /// Not confirmed, and retried: a temporary failure the retries did not
    /// overcome, or a sink that refuses everything (the route pauses).
    Failed(Error),
}

/// An event between its poll and its ack: the event, how to settle it at
/// the source, and its dedup claim (none with dedup off).
#[derive(Debug)]
pub struct InFlight {
    /// The event.
    pub event: Event,
    /// Settles it at the source.
    pub ticket: Ticket,
    /// Its dedup claim, committed once the sink confirmed.
    pub claim: Option<ClaimToken>,
}

/// The pause before a failed step is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

impl Route {
    /// Runs until `shutdown`, then finishes in-flight work, commits and closes the source.
    pub async fn run(
        self: Arc<Self>,
        source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        tracing::info!(route = %self.name, mode = ?self.config.mode, "route started");
        let result = match self.config.mode {
            Mode::Direct => self.clone().run_direct(source, shutdown).await,
            Mode::Durable => {
                let sinks = vec![self.clone()];
                self.clone().run_durable(sinks, source, shutdown).await
            }
        };
        tracing::info!(route = %self.name, "route stopped");
        result
    }

    /// Whether the sink may have several calls of a key at once: it keeps
    /// the order of submitted calls (and of a call) and the route lets it.
    fn pipelined(&self) -> bool {
        let sink = self.sink.capabilities();
        self.config.pipeline
            && !self.config.strict_order
            && sink.ordered_publish
            && sink.pipelined_order
    }

    /// Opens the sink's connection before the first publish needs it:
    /// across clouds a handshake is several round trips, which the first
    /// batch would otherwise wait for. Called where the publishing side
    /// starts (direct mode before its first poll, durable mode's forwarder
    /// before its first read, so that events are stored meanwhile). A sink
    /// that cannot be reached is only logged: publish opens again and the
    /// route pauses there, saying why.
    async fn connect_sink(&self, shutdown: &CancellationToken) {
        tokio::select! {
            connected = self.sink.connect() => {
                if let Err(e) = connected {
                    tracing::warn!(route = %self.name, error = %e, "sink not reached at start; publishing will try again");
                }
            }
            () = shutdown.cancelled() => {}
        }
    }

    /// The next batch from the source; a failing source is logged and
    /// polled again after a pause (the adapter reconnects by itself).
    /// Events that are not valid CloudEvents never go further: each becomes
    /// a dead letter on its own.
    async fn poll(&self, source: &mut dyn Consumer) -> Vec<Delivery> {
        match source
            .next_batch(self.config.batch_size, self.config.linger)
            .await
        {
            Ok(batch) => {
                self.metrics.received.inc_by(batch.len() as u64);
                self.admit(batch).await
            }
            Err(e) => {
                tracing::warn!(route = %self.name, error = %e, "source failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                Vec::new()
            }
        }
    }

    /// Keeps the deliveries that are valid events. A message the source
    /// could not decode, or an invalid event (a control character in an
    /// id, an empty source), would be lost, fail at the store or the sink,
    /// or worse, take its whole batch or group commit with it: each is
    /// dead-lettered here, alone, and acked once the dead letter is kept.
    /// Each kept delivery is shaped for the sink first (`crate::shape`).
    async fn admit(&self, mut batch: Vec<Delivery>) -> Vec<Delivery> {
        let mut refusals: Vec<Option<String>> = batch
            .iter_mut()
            .map(|d| match &d.undecodable {
                Some(reason) => Some(format!("undecodable message: {reason}")),
                None => self
                    .shape
                    .apply(&mut d.event)
                    .and_then(|()| d.event.validate())
                    .err()
                    .map(|e| e.to_string()),
            })
            .collect();
        if refusals.iter().all(Option::is_none) {
            return batch;
        }
        let mut valid = Vec::with_capacity(batch.len());
        let mut settle = Vec::new();
        for (d, refusal) in batch.into_iter().zip(refusals.drain(..)) {
            match refusal {
                None => valid.push(d),
                Some(reason) => {
                    let kept = self
                        .dead_letter(&d.event, &reason, d.ticket.attempt())
                        .await;
                    let settlement = if kept {
                        Settlement::Ack
                    } else {
                        Settlement::Nack { delay: RETRY_PAUSE }
                    };
                    settle.push((d.ticket, settlement));
                }
            }
        }
        if let Err(e) = settle_all(settle).await {
            tracing::warn!(route = %self.name, error = %e, "settling invalid events failed; they come back and are dead-lettered again");
        }
        valid
    }
}
