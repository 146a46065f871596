//! One route: source → dedup → [store] → sink → commit → ack.
//!
//! Direct mode acks the source only after the sink confirmed. Events are
//! split into key shards: same key, same shard, so source order holds per
//! key while different keys publish in parallel; each shard keeps up to
//! `in_flight` batches queued. A shard that cannot publish keeps retrying
//! (with the breaker failing fast) rather than skipping an event, so order
//! holds and the window fills up: the source stops being read, and nothing
//! is acked that the sink has not confirmed.
//!
//! Durable mode acks the source once the event is in the store; a
//! forwarder drains the store to the sink in position order and never moves
//! its cursor past an event the sink has not confirmed. A sink outage only
//! grows the backlog.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use causeway_core::{
    AppendOutcome, Claim, ClaimToken, Consumer, DedupStore, Error, Event, EventStore, Publisher,
    ReadFrom, ReadQuery, Settlement, Template, Ticket, dead_letter, settle_all,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Mode, RouteConfig};
use crate::metrics::RouteMetrics;

/// Everything a running route needs.
pub struct Route {
    /// Route name; also its store stream.
    pub name: String,
    /// Its config.
    pub config: RouteConfig,
    /// The parsed destination template.
    pub template: Template,
    /// The sink, behind the retry wrapper and the breaker.
    pub sink: Arc<dyn Publisher>,
    /// The dead-letter publisher and destination, if configured.
    pub dead_letter: Option<(Arc<dyn Publisher>, String)>,
    /// The store (durable mode, dead letters, replay).
    pub store: Arc<dyn EventStore>,
    /// Direct-mode dedup.
    pub dedup: Arc<dyn DedupStore>,
    /// Metrics.
    pub metrics: RouteMetrics,
}

/// Where each event of a batch ended up.
#[derive(Debug)]
enum Fate {
    Sent,
    DeadLettered,
    Failed(Error),
}

const FORWARDER: &str = "forwarder";
const CLAIM_LEASE: Duration = Duration::from_secs(60);
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The store stream holding a route's dead letters.
pub fn dead_letter_stream(route: &str) -> String {
    format!("dlq.{route}")
}

impl Route {
    fn dedup_key(&self, e: &Event) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.name, e.source, e.id)
    }

    /// Publishes `events` in order, grouped by destination. Permanent
    /// failures are dead-lettered; temporary ones (after the retry wrapper
    /// gave up) come back as `Failed`.
    async fn forward(&self, events: &[Event]) -> Vec<Fate> {
        let mut fates: Vec<Fate> = events.iter().map(|_| Fate::Sent).collect();
        // Destinations in order of first appearance, each with its events in order.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, e) in events.iter().enumerate() {
            let d = self.template.render(e);
            match groups.iter_mut().find(|(dest, _)| *dest == d) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((d.into_owned(), vec![i])),
            }
        }
        for (dest, idx) in groups {
            let owned;
            let batch: &[Event] = if idx.len() == events.len() {
                events
            } else {
                owned = idx.iter().map(|&i| events[i].clone()).collect::<Vec<_>>();
                &owned
            };
            match self.sink.publish(&dest, batch).await {
                Ok(outcomes) => {
                    for (&i, o) in idx.iter().zip(outcomes) {
                        fates[i] = match o {
                            Ok(_) => Fate::Sent,
                            Err(e) => Fate::Failed(e),
                        };
                    }
                }
                Err(e) => {
                    for &i in &idx {
                        fates[i] = Fate::Failed(e.clone());
                    }
                }
            }
        }
        let now = chrono::Utc::now();
        for (i, fate) in fates.iter_mut().enumerate() {
            match fate {
                Fate::Sent => {
                    self.metrics.published.inc();
                    if let Some(t) = events[i].time {
                        self.metrics
                            .latency
                            .observe((now - t).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                    }
                }
                Fate::Failed(e) if !e.is_temporary() => {
                    let reason = e.to_string();
                    if self.dead_letter(&events[i], &reason, 1).await {
                        *fate = Fate::DeadLettered;
                    }
                }
                Fate::Failed(_) => {
                    self.metrics.errors.inc();
                }
                Fate::DeadLettered => {}
            }
        }
        fates
    }

    /// `forward` for replays: per event, Ok(true) published, Ok(false)
    /// dead-lettered, Err a temporary failure the retries did not overcome.
    pub async fn forward_report(&self, events: &[Event]) -> Vec<Result<bool, Error>> {
        self.forward(events)
            .await
            .into_iter()
            .map(|f| match f {
                Fate::Sent => Ok(true),
                Fate::DeadLettered => Ok(false),
                Fate::Failed(e) => Err(e),
            })
            .collect()
    }

    /// Records a dead letter in the store (always) and at the dead-letter
    /// destination (when configured). False if it could not be kept anywhere:
    /// the caller must not drop the event then.
    async fn dead_letter(&self, event: &Event, reason: &str, attempts: u32) -> bool {
        let mut copy = event.clone();
        dead_letter::mark(&mut copy, reason, attempts, &format!("route {}", self.name));
        tracing::warn!(route = %self.name, id = %event.id, reason, "dead-lettering");
        if let Err(e) = self
            .store
            .append(&dead_letter_stream(&self.name), std::slice::from_ref(&copy))
            .await
        {
            tracing::error!(route = %self.name, error = %e, "could not store a dead letter");
            return false;
        }
        if let Some((publisher, destination)) = &self.dead_letter {
            match publisher
                .publish(destination, std::slice::from_ref(&copy))
                .await
            {
                Ok(o) if o.iter().all(Result::is_ok) => {}
                other => {
                    tracing::error!(route = %self.name, ?other, "dead-letter destination refused; kept in the store")
                }
            }
        }
        self.metrics.dead_lettered.inc();
        true
    }

    /// Runs until `shutdown`, then finishes in-flight work, commits and closes the source.
    pub async fn run(
        self: Arc<Self>,
        source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        tracing::info!(route = %self.name, mode = ?self.config.mode, "route started");
        let result = match self.config.mode {
            Mode::Direct => self.clone().run_direct(source, shutdown).await,
            Mode::Durable => self.clone().run_durable(source, shutdown).await,
        };
        tracing::info!(route = %self.name, "route stopped");
        result
    }

    async fn run_direct(
        self: Arc<Self>,
        mut source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let shards: Vec<_> = (0..self.config.shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Vec<(Event, Ticket, Option<ClaimToken>)>>(
                    self.config.in_flight,
                );
                let route = self.clone();
                let shutdown = shutdown.clone();
                (
                    tx,
                    tokio::spawn(async move { route.shard(rx, shutdown).await }),
                )
            })
            .collect();
        while !shutdown.is_cancelled() {
            let batch = self.poll(source.as_mut()).await;
            if batch.is_empty() {
                continue;
            }
            let claimed = self.claim(batch).await;
            let mut per_shard: Vec<Vec<_>> = (0..shards.len()).map(|_| Vec::new()).collect();
            for item in claimed {
                let basis = item.0.key.as_deref().unwrap_or(&item.0.id);
                let shard = (causeway_core::template::key_hash(basis.as_bytes())
                    % shards.len() as u64) as usize;
                per_shard[shard].push(item);
            }
            for (items, (tx, _)) in per_shard.into_iter().zip(&shards) {
                // A full shard queue is the in-flight window: waiting here is backpressure.
                if !items.is_empty() && tx.send(items).await.is_err() {
                    anyhow::bail!("route {}: a shard stopped", self.name);
                }
            }
            // Let the shards just woken run: a task woken by this one waits in
            // this worker's LIFO slot, which no other worker steals from, and
            // this loop may not yield otherwise until the next poll waits.
            tokio::task::yield_now().await;
        }
        // Stop consuming; let the shards finish what they hold.
        let mut failed = None;
        for (tx, handle) in shards {
            drop(tx);
            if let Err(e) = handle.await {
                failed = Some(e);
            }
        }
        source.close().await?;
        if let Some(e) = failed {
            anyhow::bail!("route {}: a shard panicked: {e}", self.name);
        }
        Ok(())
    }

    /// The next batch from the source; a failing source is logged and
    /// polled again after a pause (the adapter reconnects by itself).
    async fn poll(&self, source: &mut dyn Consumer) -> Vec<causeway_core::Delivery> {
        match source
            .next_batch(self.config.batch_size, self.config.linger)
            .await
        {
            Ok(batch) => {
                self.metrics.received.inc_by(batch.len() as u64);
                batch
            }
            Err(e) => {
                tracing::warn!(route = %self.name, error = %e, "source failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                Vec::new()
            }
        }
    }

    /// Dedup claims for a batch: duplicates are acked and dropped, events
    /// being handled elsewhere come back later, the rest go on with their claim.
    async fn claim(
        &self,
        batch: Vec<causeway_core::Delivery>,
    ) -> Vec<(Event, Ticket, Option<ClaimToken>)> {
        for d in &batch {
            if d.ticket.attempt() > 1 {
                self.metrics.redeliveries.inc();
            }
        }
        if !self.config.dedup {
            return batch
                .into_iter()
                .map(|d| (d.event, d.ticket, None))
                .collect();
        }
        let keys: Vec<String> = batch.iter().map(|d| self.dedup_key(&d.event)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let claims = loop {
            match self.dedup.claim_many(&refs, CLAIM_LEASE).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "dedup store unavailable; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut settle = Vec::new();
        for (d, claim) in batch.into_iter().zip(claims) {
            match claim {
                Claim::Claimed(token) => out.push((d.event, d.ticket, Some(token))),
                Claim::Done => {
                    self.metrics.duplicates.inc();
                    settle.push((d.ticket, Settlement::Ack));
                }
                Claim::Busy => settle.push((
                    d.ticket,
                    Settlement::Nack {
                        delay: Duration::from_secs(1),
                    },
                )),
            }
        }
        if let Err(e) = settle_all(settle).await {
            tracing::warn!(route = %self.name, error = %e, "settling duplicates failed; they come back and are dropped again");
        }
        out
    }

    /// A key shard: publishes its batches in order, retrying what failed
    /// temporarily until it is confirmed or the bridge shuts down.
    async fn shard(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Vec<(Event, Ticket, Option<ClaimToken>)>>,
        shutdown: CancellationToken,
    ) {
        while let Some(items) = rx.recv().await {
            let (mut events, mut held): (Vec<Event>, Vec<(Ticket, Option<ClaimToken>)>) =
                items.into_iter().map(|(e, t, c)| (e, (t, c))).unzip();
            loop {
                let fates = self.forward(&events).await;
                let mut done = Vec::new();
                let (mut again_events, mut again_held) = (Vec::new(), Vec::new());
                for ((event, h), fate) in events.into_iter().zip(held).zip(fates) {
                    match fate {
                        Fate::Sent | Fate::DeadLettered => done.push(h),
                        Fate::Failed(_) => {
                            again_events.push(event);
                            again_held.push(h);
                        }
                    }
                }
                self.finish(done).await;
                if again_events.is_empty() {
                    break;
                }
                if shutdown.is_cancelled() {
                    // Not confirmed: hand back to the source, release the claims.
                    self.give_back(again_held).await;
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                (events, held) = (again_events, again_held);
            }
        }
    }

    /// Confirmed (or dead-lettered): commit the dedup claims, then ack.
    async fn finish(&self, done: Vec<(Ticket, Option<ClaimToken>)>) {
        if done.is_empty() {
            return;
        }
        let (tickets, tokens): (Vec<Ticket>, Vec<Option<ClaimToken>>) = done.into_iter().unzip();
        let tokens: Vec<ClaimToken> = tokens.into_iter().flatten().collect();
        if !tokens.is_empty() {
            match self.dedup.commit_many(&tokens, self.config.dedup_ttl).await {
                Ok(r) if r.iter().all(Result::is_ok) => {}
                other => {
                    tracing::warn!(route = %self.name, ?other, "dedup commit incomplete; a redelivery may publish again")
                }
            }
        }
        if let Err(e) = settle_all(tickets.into_iter().map(|t| (t, Settlement::Ack))).await {
            tracing::warn!(route = %self.name, error = %e, "ack failed; the source redelivers and dedup drops the copy");
        }
    }

    async fn give_back(&self, held: Vec<(Ticket, Option<ClaimToken>)>) {
        for (_, token) in &held {
            if let Some(t) = token {
                let _ = self.dedup.release(t).await;
            }
        }
        let _ = settle_all(held.into_iter().map(|(t, _)| {
            (
                t,
                Settlement::Nack {
                    delay: Duration::ZERO,
                },
            )
        }))
        .await;
    }

    async fn run_durable(
        self: Arc<Self>,
        mut source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let forwarder = {
            let route = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { route.forwarder(shutdown).await })
        };
        while !shutdown.is_cancelled() {
            let batch = self.poll(source.as_mut()).await;
            if batch.is_empty() {
                continue;
            }
            let (events, tickets): (Vec<Event>, Vec<Ticket>) =
                batch.into_iter().map(|d| (d.event, d.ticket)).unzip();
            match self.store.append(&self.name, &events).await {
                Ok(outcomes) => {
                    let dups = outcomes
                        .iter()
                        .filter(|o| matches!(o, AppendOutcome::Duplicate(_)))
                        .count();
                    self.metrics.duplicates.inc_by(dups as u64);
                    // Durable now: the source may forget them.
                    if let Err(e) =
                        settle_all(tickets.into_iter().map(|t| (t, Settlement::Ack))).await
                    {
                        tracing::warn!(route = %self.name, error = %e, "ack failed; the redelivery is a duplicate the store drops");
                    }
                }
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "store append failed; handing the batch back");
                    let _ = settle_all(
                        tickets
                            .into_iter()
                            .map(|t| (t, Settlement::Nack { delay: RETRY_PAUSE })),
                    )
                    .await;
                }
            }
        }
        source.close().await?;
        forwarder.await??;
        Ok(())
    }

    /// Drains the store to the sink in position order. On shutdown it stops
    /// between batches; the rest stays in the store for the next start.
    async fn forwarder(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        let mut cursor = self.store.cursor(&self.name, FORWARDER).await?.unwrap_or(0);
        let mut confirmed_ahead = std::collections::BTreeSet::new();
        while !shutdown.is_cancelled() {
            let page = match self
                .store
                .read(&ReadQuery::new(
                    &self.name,
                    ReadFrom::Position(cursor + 1),
                    self.config.batch_size,
                ))
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "store read failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            if let Ok(stats) = self.store.stats(Some(&self.name)).await {
                let last = stats.last_position.unwrap_or(cursor);
                self.metrics.backlog.set(last.saturating_sub(cursor) as i64);
            }
            if page.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.config.linger) => continue,
                }
            }
            // Events confirmed in an earlier round, beyond a failed one, are
            // not sent again: the sink would get them twice.
            let todo: Vec<&causeway_core::StoredEvent> = page
                .iter()
                .filter(|s| !confirmed_ahead.contains(&s.position))
                .collect();
            let events: Vec<Event> = todo.iter().map(|s| s.event.clone()).collect();
            let fates = self.forward(&events).await;
            for (s, fate) in todo.iter().zip(&fates) {
                if !matches!(fate, Fate::Failed(_)) {
                    confirmed_ahead.insert(s.position);
                }
            }
            // Advance over the confirmed prefix only: order holds, nothing is skipped.
            let mut confirmed = 0;
            for s in &page {
                if !confirmed_ahead.remove(&s.position) {
                    break;
                }
                cursor = s.position;
                confirmed += 1;
            }
            if confirmed > 0 {
                self.store.set_cursor(&self.name, FORWARDER, cursor).await?;
            }
            if confirmed < page.len() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
        Ok(())
    }
}
