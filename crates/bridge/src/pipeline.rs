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
//! Within a batch, a key's events go to the sink in waves, one per call
//! (`forward`): a sink can fail k:1 and deliver k:2 of the same call, so
//! k:2 waits for k:1's outcome, and a key whose event failed sends no more
//! of that batch. Keys seen once per batch make a single call; a batch of
//! few keys pays a round trip per event of its busiest key.
//!
//! Durable mode acks the source once the event is in the store; a
//! forwarder drains the store to the sink in position order and never moves
//! its cursor past an event the sink has not confirmed. A sink outage only
//! grows the backlog.
//!
//! Instances sharing a store (PostgreSQL) share the work through leases in
//! the dedup store: a claim per event in direct mode, one claim on the
//! route's forwarder in durable mode. Whoever acts on a claim older than half
//! its lease renews it first, so an instance that was paused (a "zombie")
//! learns that another took over and stands down instead of acting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use causeway_core::{
    AppendOutcome, Claim, ClaimToken, Consumer, DedupStore, Error, ErrorKind, Event, EventStore,
    Publisher, ReadFrom, ReadQuery, Settlement, Template, Ticket, dead_letter, settle_all,
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
    /// Direct-mode dedup, and the forwarder's lease.
    pub dedup: Arc<dyn DedupStore>,
    /// Whether other instances may share the store: durable forwarding then
    /// takes turns under a lease.
    pub shared_store: bool,
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
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Events of one poll queued for a shard, with their dedup claims.
struct Claimed {
    items: Vec<(Event, Ticket, Option<ClaimToken>)>,
    /// When the claims were requested: their lease runs from about then.
    at: Instant,
}

/// A source ticket with the event's dedup claim (none with dedup off).
type Held = (Ticket, Option<ClaimToken>);

/// Keys whose next event is busy at another instance (nacked with a
/// delay), each with that event's dedup key: until it comes back and is
/// claimed (or found done), later events of the key are handed back too,
/// behind it, so that the key's order holds across polls. A hold lapses
/// after two claim leases, in case the busy event never comes back here.
#[derive(Default)]
struct HeldKeys(std::collections::HashMap<String, (String, Instant)>);

impl HeldKeys {
    /// Whether an event of `key` (with `dedup_key`) must wait behind another.
    fn holds(&mut self, key: &str, dedup_key: &str, lease: Duration) -> bool {
        match self.0.get(key) {
            Some((_, since)) if since.elapsed() > lease * 2 => {
                self.0.remove(key);
                false
            }
            Some((blocking, _)) => blocking != dedup_key,
            None => false,
        }
    }

    fn hold(&mut self, key: String, dedup_key: String) {
        self.0
            .entry(key)
            .or_insert_with(|| (dedup_key, Instant::now()));
    }

    /// The blocking event went on (or was a duplicate): the key is free.
    fn release(&mut self, key: &str, dedup_key: &str) {
        if self.0.get(key).is_some_and(|(b, _)| b == dedup_key) {
            self.0.remove(key);
        }
    }
}

/// A batch's indices in waves: the n-th event of each key goes in wave n,
/// events without a key (no order to keep) in the first.
fn waves(events: &[Event]) -> Vec<Vec<usize>> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut waves: Vec<Vec<usize>> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let wave = e.key.as_deref().map_or(0, |k| {
            let n = seen.entry(k).or_default();
            *n += 1;
            *n - 1
        });
        if waves.len() <= wave {
            waves.push(Vec::new());
        }
        waves[wave].push(i);
    }
    waves
}

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
    ///
    /// A key's events go out in waves, one per call: a sink can fail one
    /// event of a call and deliver the next, so k:2 sent beside a k:1 that
    /// fails would reach the sink first. After a wave, a key whose event
    /// failed sends nothing more from this batch; the rest of it fails
    /// with it, unsent, and is retried behind it. Keys seen once in a
    /// batch (the usual case) make one wave: one call per destination.
    async fn forward(&self, events: &[Event]) -> Vec<Fate> {
        // Fail closed: an event the sink returned no outcome for is not sent.
        let mut fates: Vec<Fate> = events
            .iter()
            .map(|_| {
                Fate::Failed(Error::temporary(
                    ErrorKind::Internal,
                    "the sink returned no outcome for this event",
                ))
            })
            .collect();
        let mut blocked: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut paused_said = false;
        let mut latencies = Vec::with_capacity(events.len());
        for wave in waves(events) {
            let (send, held): (Vec<usize>, Vec<usize>) = wave.into_iter().partition(|&i| {
                events[i]
                    .key
                    .as_deref()
                    .is_none_or(|k| !blocked.contains(k))
            });
            for i in held {
                fates[i] = Fate::Failed(Error::temporary(
                    ErrorKind::Unavailable,
                    "not sent: an earlier event of its key in this batch failed",
                ));
            }
            self.publish_wave(events, &send, &mut fates).await;
            for &i in &send {
                self.resolve(&events[i], &mut fates[i], &mut paused_said, &mut latencies)
                    .await;
                if let (Fate::Failed(_), Some(key)) = (&fates[i], events[i].key.as_deref()) {
                    blocked.insert(key);
                }
            }
        }
        self.metrics.observe_latencies(latencies);
        fates
    }

    /// One wave: its events grouped by destination, one call per group, in
    /// order of first appearance; each outcome goes to its event's fate.
    async fn publish_wave(&self, events: &[Event], wave: &[usize], fates: &mut [Fate]) {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for &i in wave {
            let d = self.template.render(&events[i]);
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
                    if outcomes.len() != idx.len() {
                        tracing::error!(route = %self.name, events = idx.len(), outcomes = outcomes.len(), "the sink broke its contract: not one outcome per event; those without one are retried");
                    }
                    for (&i, o) in idx.iter().zip(outcomes) {
                        fates[i] = match o {
                            // The sink dropped a copy of this very (source,
                            // id): it is there already, so this one is done.
                            Ok(receipt) if receipt.duplicate => {
                                self.metrics.sink_duplicates.inc();
                                Fate::Sent
                            }
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
    }

    /// Counts a published event's fate, and dead-letters it where the
    /// failure is its own fault.
    async fn resolve(
        &self,
        event: &Event,
        fate: &mut Fate,
        paused_said: &mut bool,
        latencies: &mut Vec<f64>,
    ) {
        match fate {
            Fate::Sent => {
                self.metrics.published.inc();
                if let Some(t) = event.time {
                    let age = chrono::Utc::now() - t;
                    latencies.push(age.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6);
                }
            }
            // Only the event's own fault makes a dead letter.
            Fate::Failed(e) if !e.is_temporary() && self.event_fault(e) => {
                let reason = e.to_string();
                if self.dead_letter(event, &reason, 1).await {
                    *fate = Fate::DeadLettered;
                }
            }
            // A broken sink (credentials, a missing entity, a quota): the
            // event stays where it is and the route retries, paused,
            // until the sink recovers. Said once per batch.
            Fate::Failed(e) if !e.is_temporary() => {
                self.metrics.errors.inc();
                self.metrics.sink_refusals.inc();
                if !*paused_said {
                    *paused_said = true;
                    tracing::error!(route = %self.name, error = %e, "the sink refuses everything; the route is paused and retries until it recovers (nothing is dead-lettered)");
                }
            }
            Fate::Failed(_) => {
                self.metrics.errors.inc();
            }
            Fate::DeadLettered => {}
        }
    }

    /// Whether a permanent error is the event's own fault (dead letter) or
    /// the sink's (pause). A destination that does not exist is the sink's
    /// when the route names it, but the event's when the event chose it
    /// through the template (a key or header that routes nowhere).
    fn event_fault(&self, e: &Error) -> bool {
        e.kind().is_event_fault()
            || (e.kind() == ErrorKind::NotFound && self.template.is_chosen_by_event())
    }

    /// `forward`, keeping `claims` alive while it runs: a publish with
    /// retries can outlast a lease (5 attempts of up to 30 s against a 30 s
    /// lease), and another instance must not take the events over while
    /// they are still being sent. A claim lost anyway shows when it is
    /// committed (fenced, counted). Also returns when the claims were last
    /// renewed, if they were.
    async fn forward_leased(
        &self,
        events: &[Event],
        claims: &[ClaimToken],
    ) -> (Vec<Fate>, Option<Instant>) {
        let forward = self.forward(events);
        if claims.is_empty() {
            return (forward.await, None);
        }
        tokio::pin!(forward);
        let mut renewed_at = None;
        loop {
            tokio::select! {
                fates = &mut forward => return (fates, renewed_at),
                () = tokio::time::sleep(self.config.claim_lease / 3) => {
                    let at = Instant::now();
                    match self.dedup.renew_many(claims, self.config.claim_lease).await {
                        Ok(renewed) => {
                            renewed_at = Some(at);
                            let lost = renewed.iter().filter(|r| r.is_err()).count();
                            if lost > 0 {
                                tracing::warn!(route = %self.name, claims = lost, "claims taken over while publishing; their commit will be fenced");
                            }
                        }
                        Err(e) => {
                            tracing::warn!(route = %self.name, error = %e, "could not renew claims while publishing");
                        }
                    }
                }
            }
        }
    }

    /// Whether this instance still holds `lease` (renewing it): false when
    /// another took it over, or when the store cannot say.
    async fn still_holds(&self, lease: &ClaimToken) -> bool {
        match self
            .dedup
            .renew_many(std::slice::from_ref(lease), self.config.claim_lease)
            .await
        {
            Ok(r) if r.first().is_some_and(Result::is_ok) => true,
            Ok(_) => {
                self.metrics.fenced.inc();
                tracing::warn!(route = %self.name, "another instance took over forwarding while this one published; standing by");
                false
            }
            Err(e) => {
                tracing::warn!(route = %self.name, error = %e, "cannot renew the forwarder lease before moving the cursor; standing by");
                false
            }
        }
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
        let copy =
            dead_letter::storable_copy(event, reason, attempts, &format!("route {}", self.name));
        tracing::warn!(route = %self.name, id = %copy.id, reason = %dead_letter::escape(reason), "dead-lettering");
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
                let (tx, rx) = mpsc::channel::<Claimed>(self.config.in_flight);
                let route = self.clone();
                let shutdown = shutdown.clone();
                (
                    tx,
                    tokio::spawn(async move { route.shard(rx, shutdown).await }),
                )
            })
            .collect();
        let mut held_keys = HeldKeys::default();
        while !shutdown.is_cancelled() {
            let batch = self.poll(source.as_mut()).await;
            if batch.is_empty() {
                continue;
            }
            let at = Instant::now();
            let claimed = self.claim(batch, &mut held_keys).await;
            let mut per_shard: Vec<Vec<_>> = (0..shards.len()).map(|_| Vec::new()).collect();
            for item in claimed {
                let basis = item.0.key.as_deref().unwrap_or(&item.0.id);
                let shard = (causeway_core::template::key_hash(basis.as_bytes())
                    % shards.len() as u64) as usize;
                per_shard[shard].push(item);
            }
            for (items, (tx, _)) in per_shard.into_iter().zip(&shards) {
                // A full shard queue is the in-flight window: waiting here is backpressure.
                if !items.is_empty() && tx.send(Claimed { items, at }).await.is_err() {
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
    /// Events that are not valid CloudEvents never go further: each becomes
    /// a dead letter on its own.
    async fn poll(&self, source: &mut dyn Consumer) -> Vec<causeway_core::Delivery> {
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
    async fn admit(&self, batch: Vec<causeway_core::Delivery>) -> Vec<causeway_core::Delivery> {
        let refusal = |d: &causeway_core::Delivery| match &d.undecodable {
            Some(reason) => Some(format!("undecodable message: {reason}")),
            None => d.event.validate().err().map(|e| e.to_string()),
        };
        if batch.iter().all(|d| refusal(d).is_none()) {
            return batch;
        }
        let mut valid = Vec::with_capacity(batch.len());
        let mut settle = Vec::new();
        for d in batch {
            match refusal(&d) {
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

    /// Dedup claims for a batch: duplicates are acked and dropped, events
    /// being handled elsewhere come back later, the rest go on with their claim.
    async fn claim(
        &self,
        batch: Vec<causeway_core::Delivery>,
        held_keys: &mut HeldKeys,
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
            match self.dedup.claim_many(&refs, self.config.claim_lease).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "dedup store unavailable; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut settle = Vec::new();
        let busy = Settlement::Nack {
            delay: Duration::from_secs(1),
        };
        // The dedup keys computed for the claims, reused: no second string per event.
        for ((d, dedup_key), claim) in batch.into_iter().zip(&keys).zip(claims) {
            let behind = d
                .event
                .key
                .as_deref()
                .is_some_and(|k| held_keys.holds(k, dedup_key, self.config.claim_lease));
            match claim {
                Claim::Done => {
                    self.metrics.duplicates.inc();
                    if let Some(k) = d.event.key.as_deref() {
                        held_keys.release(k, dedup_key);
                    }
                    settle.push((d.ticket, Settlement::Ack));
                }
                Claim::Claimed(token) if behind => {
                    if let Err(e) = self.dedup.release(&token).await {
                        tracing::debug!(route = %self.name, error = %e, "releasing a held-back claim failed; it lapses");
                    }
                    settle.push((d.ticket, busy.clone()));
                }
                Claim::Claimed(token) => {
                    if let Some(k) = d.event.key.as_deref() {
                        held_keys.release(k, dedup_key);
                    }
                    out.push((d.event, d.ticket, Some(token)));
                }
                Claim::Busy => {
                    if let Some(k) = &d.event.key {
                        held_keys.hold(k.clone(), dedup_key.clone());
                    }
                    settle.push((d.ticket, busy.clone()));
                }
            }
        }
        if let Err(e) = settle_all(settle).await {
            tracing::warn!(route = %self.name, error = %e, "settling duplicates failed; they come back and are dropped again");
        }
        out
    }

    /// A key shard: publishes its batches in order, retrying what failed
    /// temporarily until it is confirmed or the bridge shuts down.
    async fn shard(self: Arc<Self>, mut rx: mpsc::Receiver<Claimed>, shutdown: CancellationToken) {
        while let Some(Claimed { items, mut at }) = rx.recv().await {
            let (mut events, mut held): (Vec<Event>, Vec<Held>) =
                items.into_iter().map(|(e, t, c)| (e, (t, c))).unzip();
            loop {
                // Queued, retrying or paused past half the lease: renew
                // before publishing, and stand down where another took over.
                if at.elapsed() >= self.config.claim_lease / 2 {
                    at = Instant::now();
                    (events, held) = self.renew(events, held, &shutdown).await;
                    if events.is_empty() {
                        break;
                    }
                }
                let tokens: Vec<ClaimToken> = held.iter().filter_map(|(_, t)| t.clone()).collect();
                let (fates, renewed) = self.forward_leased(&events, &tokens).await;
                at = renewed.unwrap_or(at);
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

    /// Renews a batch's claims. Events another instance took over are
    /// handed back to the source unacked (their new owner settles them; a
    /// redelivery finds them done) and dropped from the batch.
    async fn renew(
        &self,
        events: Vec<Event>,
        held: Vec<Held>,
        shutdown: &CancellationToken,
    ) -> (Vec<Event>, Vec<Held>) {
        let tokens: Vec<ClaimToken> = held.iter().filter_map(|(_, t)| t.clone()).collect();
        if tokens.is_empty() {
            return (events, held);
        }
        let renewed = loop {
            match self
                .dedup
                .renew_many(&tokens, self.config.claim_lease)
                .await
            {
                Ok(r) => break r,
                Err(_) if shutdown.is_cancelled() => {
                    self.give_back(held).await;
                    return (Vec::new(), Vec::new());
                }
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "dedup store unavailable for a renewal; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        let mut renewed = renewed.into_iter();
        let (mut kept_events, mut kept) = (Vec::new(), Vec::new());
        let mut lost = Vec::new();
        for (event, (ticket, token)) in events.into_iter().zip(held) {
            let live = token.is_none() || renewed.next().is_some_and(|r| r.is_ok());
            if live {
                kept_events.push(event);
                kept.push((ticket, token));
            } else {
                lost.push((ticket, Settlement::Nack { delay: RETRY_PAUSE }));
            }
        }
        if !lost.is_empty() {
            self.metrics.fenced.inc_by(lost.len() as u64);
            tracing::warn!(route = %self.name, events = lost.len(), "another instance took these over after this one's lease ran out; standing down");
            if let Err(e) = settle_all(lost).await {
                tracing::warn!(route = %self.name, error = %e, "handing back failed; the source redelivers anyway");
            }
        }
        (kept_events, kept)
    }

    /// Confirmed (or dead-lettered): commit the dedup claims, then ack.
    async fn finish(&self, done: Vec<Held>) {
        if done.is_empty() {
            return;
        }
        let (tickets, tokens): (Vec<Ticket>, Vec<Option<ClaimToken>>) = done.into_iter().unzip();
        let tokens: Vec<ClaimToken> = tokens.into_iter().flatten().collect();
        if !tokens.is_empty() {
            match self.dedup.commit_many(&tokens, self.config.dedup_ttl).await {
                Ok(r) if r.iter().all(Result::is_ok) => {}
                Ok(r) => {
                    let fenced = r.iter().filter(|r| r.is_err()).count();
                    self.metrics.fenced.inc_by(fenced as u64);
                    tracing::warn!(route = %self.name, events = fenced, "published after another instance took the claims over (this one was paused past its lease): the sink may see these twice");
                }
                other => {
                    tracing::warn!(route = %self.name, ?other, "dedup commit incomplete; a redelivery may publish again")
                }
            }
        }
        if let Err(e) = settle_all(tickets.into_iter().map(|t| (t, Settlement::Ack))).await {
            tracing::warn!(route = %self.name, error = %e, "ack failed; the source redelivers and dedup drops the copy");
        }
    }

    async fn give_back(&self, held: Vec<Held>) {
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
            if forwarder.is_finished() {
                // Nothing drains the store any more: stop taking events in.
                source.close().await?;
                return match forwarder.await {
                    Ok(Ok(())) => Err(anyhow::anyhow!(
                        "route {}: the forwarder stopped before shutdown",
                        self.name
                    )),
                    Ok(Err(e)) => {
                        Err(e.context(format!("route {}: the forwarder failed", self.name)))
                    }
                    Err(e) => Err(anyhow::anyhow!(
                        "route {}: the forwarder panicked: {e}",
                        self.name
                    )),
                };
            }
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

    /// Runs a store operation until it succeeds, pausing between tries (a
    /// store that failed once usually answers again: a lock, a restart, a
    /// full disk freed). None on shutdown. A forwarder that gave up here
    /// would leave the source acked into a store nobody drains.
    async fn retry_store<T, F, Fut>(
        &self,
        what: &str,
        shutdown: &CancellationToken,
        mut op: F,
    ) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = causeway_core::Result<T>>,
    {
        let mut pause = RETRY_PAUSE;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.metrics.errors.inc();
                    tracing::warn!(route = %self.name, error = %e, "could not {what}; retrying in {pause:?}");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Drains the store to the sink. With a shared store, only the instance
    /// holding the route's forwarder lease does; the others stand by.
    async fn forwarder(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        if !self.shared_store {
            return self.forward_stored(None, &shutdown).await;
        }
        let key = format!("{}\u{1f}{FORWARDER}", self.name);
        while let Some(token) = self.lead(&key, &shutdown).await {
            self.forward_stored(Some(&token), &shutdown).await?;
            if shutdown.is_cancelled() {
                // Hand over at once rather than after the lease.
                let _ = self.dedup.release(&token).await;
                break;
            }
        }
        Ok(())
    }

    /// Waits for the route's forwarder lease; None on shutdown.
    async fn lead(&self, key: &str, shutdown: &CancellationToken) -> Option<ClaimToken> {
        let mut told = false;
        loop {
            match self.dedup.claim(key, self.config.claim_lease).await {
                Ok(Claim::Claimed(token)) => {
                    tracing::info!(route = %self.name, "this instance forwards the route");
                    return Some(token);
                }
                Ok(_) if !told => {
                    told = true;
                    tracing::info!(route = %self.name, "another instance forwards the route; standing by");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "dedup store unavailable for the forwarder lease; retrying")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.config.claim_lease / 4) => {}
            }
        }
    }

    /// Drains the store to the sink in position order, while `lease` (if
    /// any) is renewed. On shutdown it stops between batches; the rest stays
    /// in the store for the next start.
    async fn forward_stored(
        &self,
        lease: Option<&ClaimToken>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let Some(cursor) = self
            .retry_store("read the forwarder's cursor", shutdown, || {
                self.store.cursor(&self.name, FORWARDER)
            })
            .await
        else {
            return Ok(());
        };
        let mut cursor = cursor.unwrap_or(0);
        let mut confirmed_ahead = std::collections::BTreeSet::new();
        let mut renewed_at = Instant::now();
        while !shutdown.is_cancelled() {
            if let Some(token) =
                lease.filter(|_| renewed_at.elapsed() >= self.config.claim_lease / 3)
            {
                let at = Instant::now();
                match self
                    .dedup
                    .renew_many(std::slice::from_ref(token), self.config.claim_lease)
                    .await
                {
                    Ok(r) if r.first().is_some_and(Result::is_ok) => renewed_at = at,
                    Ok(_) => {
                        self.metrics.fenced.inc();
                        tracing::warn!(route = %self.name, "another instance took over forwarding after this one's lease ran out; standing by");
                        return Ok(());
                    }
                    Err(e) => {
                        // Not knowing whether it still leads, it does not forward.
                        tracing::warn!(route = %self.name, error = %e, "cannot renew the forwarder lease; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                }
            }
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
            let (fates, renewed) = self
                .forward_leased(&events, lease.map(std::slice::from_ref).unwrap_or_default())
                .await;
            renewed_at = renewed.unwrap_or(renewed_at);
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
            // Not moved: after a restart these are sent again and the
            // sink's dedup (or the reader's) drops the copies.
            // Fenced: only the lease holder moves the cursor. One that lost
            // its lease while publishing stands down; the new holder sends
            // these again and the sink's dedup drops the copies.
            if confirmed > 0
                && let Some(token) = lease
                && !self.still_holds(token).await
            {
                return Ok(());
            }
            if confirmed > 0
                && self
                    .retry_store("move the forwarder's cursor", shutdown, || {
                        self.store.set_cursor(&self.name, FORWARDER, cursor)
                    })
                    .await
                    .is_none()
            {
                break;
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
