//! Direct mode: poll → claim → shard → publish → commit → ack.
//!
//! The source is acked only after the sink confirmed. Events are split
//! into key shards: same key, same shard, so source order holds per key
//! while different keys publish in parallel; each shard keeps up to
//! `in_flight` batches queued and as many calls at the sink (`Waiting`): a
//! key in one call at a time, or, where the sink keeps the order of
//! submitted calls, in several handed over in the shard's order (`Lane`).
//! A shard that cannot publish keeps retrying
//! (with the breaker failing fast) rather than skipping an event, so order
//! holds and the window fills up: the source stops being read, and nothing
//! is acked that the sink has not confirmed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use causeway_core::{
    Claim, ClaimToken, Consumer, Delivery, Error, ErrorKind, Event, Settlement, Ticket, settle_all,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sink::{Lane, LaneCall, Turn};
use super::{Fate, InFlight, RETRY_PAUSE, Route};

/// Events of one poll queued for a shard.
struct Queued {
    items: Vec<InFlight>,
    /// When their claims were requested: the lease runs from about then.
    claimed_at: Instant,
}

impl Route {
    pub(super) async fn run_direct(
        self: Arc<Self>,
        mut source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let shards: Vec<_> = (0..self.config.shards)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Queued>(self.config.in_flight);
                let route = self.clone();
                let shutdown = shutdown.clone();
                (
                    tx,
                    tokio::spawn(async move { route.shard(rx, shutdown).await }),
                )
            })
            .collect();
        self.connect_sink(&shutdown).await;
        let mut behind = KeysBehind::default();
        let mut refused = None;
        while !shutdown.is_cancelled() {
            let batch = self.poll(source.as_mut()).await;
            if batch.is_empty() {
                continue;
            }
            let claimed_at = Instant::now();
            let claimed = match self.claim(batch, &mut behind).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    // Its batch goes unacked: the source delivers it again.
                    refused = Some(e);
                    break;
                }
            };
            let mut per_shard: Vec<Vec<InFlight>> = (0..shards.len()).map(|_| Vec::new()).collect();
            for item in claimed {
                per_shard[shard_of(&item.event, shards.len())].push(item);
            }
            for (items, (tx, _)) in per_shard.into_iter().zip(&shards) {
                // A full shard queue is the in-flight window: waiting here is backpressure.
                if !items.is_empty() && tx.send(Queued { items, claimed_at }).await.is_err() {
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
        if let Some(e) = refused {
            anyhow::bail!(
                "route {}: the dedup store refuses its claims: {e}",
                self.name
            );
        }
        Ok(())
    }

    /// Dedup claims for a batch: duplicates are acked and dropped, events
    /// being handled elsewhere come back later, the rest go on with their claim.
    /// A store that is down is waited for; one that refuses this process's
    /// claims (`Conflict`: another process claims in a one-process store)
    /// stops the route, since waiting would never end.
    async fn claim(
        &self,
        batch: Vec<Delivery>,
        behind: &mut KeysBehind,
    ) -> Result<Vec<InFlight>, Error> {
        for d in &batch {
            if d.ticket.attempt() > 1 {
                self.metrics.redeliveries.inc();
            }
        }
        if !self.config.dedup {
            return Ok(batch
                .into_iter()
                .map(|d| InFlight {
                    event: d.event,
                    ticket: d.ticket,
                    claim: None,
                })
                .collect());
        }
        let keys: Vec<String> = batch
            .iter()
            .map(|d| causeway_core::dedup::key(&self.name, &d.event))
            .collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let claims = loop {
            match self.dedup.claim_many(&refs, self.config.claim_lease).await {
                Ok(c) => break c,
                Err(e) if e.kind() == ErrorKind::Conflict => return Err(e),
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
            let waits = d
                .event
                .key
                .as_deref()
                .is_some_and(|k| behind.waits(k, dedup_key, self.config.claim_lease));
            match claim {
                Claim::Done => {
                    self.metrics.duplicates.inc();
                    if let Some(k) = d.event.key.as_deref() {
                        behind.release(k, dedup_key);
                    }
                    settle.push((d.ticket, Settlement::Ack));
                }
                Claim::Claimed(token) if waits => {
                    if let Err(e) = self.dedup.release(&token).await {
                        tracing::debug!(route = %self.name, error = %e, "releasing a held-back claim failed; it lapses");
                    }
                    settle.push((d.ticket, busy.clone()));
                }
                Claim::Claimed(token) => {
                    if let Some(k) = d.event.key.as_deref() {
                        behind.release(k, dedup_key);
                    }
                    out.push(InFlight {
                        event: d.event,
                        ticket: d.ticket,
                        claim: Some(token),
                    });
                }
                Claim::Busy => {
                    if let Some(k) = &d.event.key {
                        behind.hold(k.clone(), dedup_key.clone());
                    }
                    settle.push((d.ticket, busy.clone()));
                }
            }
        }
        if let Err(e) = settle_all(settle).await {
            tracing::warn!(route = %self.name, error = %e, "settling duplicates failed; they come back and are dropped again");
        }
        Ok(out)
    }

    /// A key shard. Its events wait in arrival order; a call to the sink
    /// takes every waiting event whose key has nothing unconfirmed (waves
    /// keep the order of a key's events within the call), and up to
    /// `in_flight` calls run at once. So a key never has an event at the
    /// sink while an earlier one is unconfirmed — a sink that fails k:1
    /// and takes k:2 cannot reorder the key — while the shard's other keys
    /// do not wait for its round trip: across clouds, calls overlap.
    /// Where the sink keeps the order of submitted calls (`pipelined`),
    /// a key's later events go in the next call without waiting: calls are
    /// handed over in the shard's order (`Lane`), and an event confirmed
    /// after an earlier call failed one of its key is counted as a break.
    /// What failed waits a pause and goes again, ahead of its key's later
    /// events, until it is confirmed or the bridge shuts down.
    async fn shard(self: Arc<Self>, mut rx: mpsc::Receiver<Queued>, shutdown: CancellationToken) {
        let pipelined = self.pipelined();
        let mut waiting = Waiting::default();
        let mut lane = Lane::default();
        // Each call runs as a task of its own: the store operations of one
        // call (renewing, committing) hold a pooled connection until the
        // call reads the answer, so a call must never wait on the shard.
        let mut calls: JoinSet<Again> = JoinSet::new();
        let mut open = true;
        // What a shard holds, waiting and at the sink: about `in_flight`
        // polls' share, as many as its queue holds, so the window (and
        // memory) stays what `in_flight` says; the rest waits in the queue,
        // whose bound is the source's backpressure.
        let room =
            self.config.in_flight * self.config.batch_size.div_ceil(self.config.shards.max(1));
        // What this shard adds to the route's in-flight gauge.
        let mut counted = 0;
        loop {
            let held = waiting.held() as i64;
            self.metrics.in_flight.inc_by(held - counted);
            counted = held;
            while open && waiting.held() < room {
                match rx.try_recv() {
                    Ok(queued) => waiting.add(queued),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            while calls.len() < self.config.in_flight {
                let Some(call) = waiting.next_call(room) else {
                    break;
                };
                // A pipelined sink takes a key in several calls: its keys
                // need not wait for this one.
                let keys = if pipelined { Vec::new() } else { call.keys() };
                waiting.start(call.events.len(), &keys);
                let turn = if pipelined {
                    let (place, turn) = lane.start();
                    (Some(place), turn)
                } else {
                    (None, Turn::default())
                };
                let (route, shutdown) = (self.clone(), shutdown.clone());
                calls.spawn(async move { route.call(call, keys, turn, shutdown).await });
            }
            if !open && waiting.is_empty() && calls.is_empty() {
                break;
            }
            let retry_at = waiting
                .next_retry()
                .filter(|_| calls.len() < self.config.in_flight);
            tokio::select! {
                Some(ended) = calls.join_next(), if !calls.is_empty() => match ended {
                    Ok(again) => {
                        waiting.end(again.sent, &again.sent_keys);
                        if let Some(ended) = again.on_lane {
                            self.count_overtakes(lane.ended(ended));
                        }
                        waiting.retry(again.pending, Instant::now() + RETRY_PAUSE);
                    }
                    // A call that panicked is the shard's panic: the route reports it.
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => unreachable!("a shard never aborts its calls"),
                },
                queued = rx.recv(), if open && waiting.held() < room => match queued {
                    Some(queued) => waiting.add(queued),
                    None => open = false,
                },
                () = sleep_until(retry_at), if retry_at.is_some() => {}
            }
        }
        self.metrics.in_flight.dec_by(counted);
    }

    /// One call to the sink: renews claims that waited past half the lease
    /// (standing down from any another instance took over), publishes,
    /// finishes what is done (commit, ack) and returns what is to be tried
    /// again — nothing once the bridge is shutting down: that goes back to
    /// the source.
    async fn call(
        self: Arc<Self>,
        mut pending: Pending,
        sent_keys: Vec<String>,
        (place, mut turn): (Option<u64>, Turn),
        shutdown: CancellationToken,
    ) -> Again {
        let sent = pending.events.len();
        let mut again = Again {
            pending: Pending::default(),
            sent,
            sent_keys,
            on_lane: None,
        };
        if pending
            .oldest_claim()
            .is_some_and(|at| at.elapsed() >= self.config.claim_lease / 2)
        {
            pending = self.renew(pending, &shutdown).await;
            if pending.events.is_empty() {
                // Every claim was taken over (or handed back): nothing to send.
                turn.done().await;
                return again;
            }
        }
        let (fates, renewed) = self
            .forward_leased(&pending.events, &pending.claims(), turn)
            .await;
        again.on_lane = place.map(|place| LaneCall::of(place, &pending.events, &fates));
        let (done, mut retried) = pending.sort(fates);
        if let Some(at) = renewed {
            retried.held.iter_mut().for_each(|h| h.claimed_at = at);
        }
        self.finish(done).await;
        if shutdown.is_cancelled() && !retried.held.is_empty() {
            // Not confirmed: hand back to the source, release the claims.
            self.give_back(std::mem::take(&mut retried).held).await;
        }
        again.pending = retried;
        again
    }

    /// Renews a batch's claims. Events another instance took over are
    /// handed back to the source unacked (their new owner settles them; a
    /// redelivery finds them done) and dropped from the batch.
    async fn renew(&self, pending: Pending, shutdown: &CancellationToken) -> Pending {
        let tokens = pending.claims();
        if tokens.is_empty() {
            return pending;
        }
        let at = Instant::now();
        let renewed = loop {
            match self
                .dedup
                .renew_many(&tokens, self.config.claim_lease)
                .await
            {
                Ok(r) => break r,
                Err(_) if shutdown.is_cancelled() => {
                    self.give_back(pending.held).await;
                    return Pending::default();
                }
                Err(e) => {
                    tracing::warn!(route = %self.name, error = %e, "dedup store unavailable for a renewal; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        };
        // One answer per claim, in order; events without a claim keep going.
        let mut renewed = renewed.into_iter();
        let (mut kept, lost) =
            pending.keep(|h| h.claim.is_none() || renewed.next().is_some_and(|r| r.is_ok()));
        kept.held.iter_mut().for_each(|h| h.claimed_at = at);
        if !lost.is_empty() {
            self.metrics.fenced.inc_by(lost.len() as u64);
            tracing::warn!(route = %self.name, events = lost.len(), "another instance took these over after this one's lease ran out; standing down");
            let lost = lost
                .into_iter()
                .map(|h| (h.ticket, Settlement::Nack { delay: RETRY_PAUSE }));
            if let Err(e) = settle_all(lost).await {
                tracing::warn!(route = %self.name, error = %e, "handing back failed; the source redelivers anyway");
            }
        }
        kept
    }

    /// Confirmed (or dead-lettered): commit the dedup claims, then ack.
    async fn finish(&self, done: Vec<Held>) {
        if done.is_empty() {
            return;
        }
        let tokens: Vec<ClaimToken> = done.iter().filter_map(|h| h.claim.clone()).collect();
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
        if let Err(e) = settle_all(done.into_iter().map(|h| (h.ticket, Settlement::Ack))).await {
            tracing::warn!(route = %self.name, error = %e, "ack failed; the source redelivers and dedup drops the copy");
        }
    }

    /// Not confirmed and not to be retried here (shutdown, a lost lease):
    /// the claims are released and the source redelivers at once.
    async fn give_back(&self, held: Vec<Held>) {
        for claim in held.iter().filter_map(|h| h.claim.as_ref()) {
            let _ = self.dedup.release(claim).await;
        }
        let now = Settlement::Nack {
            delay: Duration::ZERO,
        };
        let _ = settle_all(held.into_iter().map(|h| (h.ticket, now.clone()))).await;
    }
}

/// The shard an event goes to: same key, same shard; an event without a
/// key has no order to keep and spreads by id.
fn shard_of(event: &Event, shards: usize) -> usize {
    let basis = event.key.as_deref().unwrap_or(&event.id);
    (causeway_core::template::key_hash(basis.as_bytes()) % shards as u64) as usize
}

/// How to finish an event at the source: its ticket and its dedup claim;
/// beside them its place in the shard's arrival order and when its claim
/// was last taken or renewed.
struct Held {
    ticket: Ticket,
    claim: Option<ClaimToken>,
    seq: u64,
    claimed_at: Instant,
}

/// A shard's batch while it is published: the events in one vector,
/// because the sink takes them as one slice (no clone per call), and
/// beside them, at the same index, how to finish each.
#[derive(Default)]
struct Pending {
    events: Vec<Event>,
    held: Vec<Held>,
}

impl Pending {
    fn push(&mut self, event: Event, held: Held) {
        self.events.push(event);
        self.held.push(held);
    }

    /// The live claims, in order.
    fn claims(&self) -> Vec<ClaimToken> {
        self.held.iter().filter_map(|h| h.claim.clone()).collect()
    }

    /// When the oldest of its claims was taken or renewed.
    fn oldest_claim(&self) -> Option<Instant> {
        self.held
            .iter()
            .filter(|h| h.claim.is_some())
            .map(|h| h.claimed_at)
            .min()
    }

    /// The keys of its events, once each.
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.events.iter().filter_map(|e| e.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Splits by fate: what is finished (sent or dead-lettered) and what is
    /// to be tried again.
    fn sort(self, fates: Vec<Fate>) -> (Vec<Held>, Pending) {
        let mut done = Vec::new();
        let mut again = Pending::default();
        for ((event, held), fate) in self.events.into_iter().zip(self.held).zip(fates) {
            match fate {
                Fate::Sent | Fate::Filtered | Fate::DeadLettered => done.push(held),
                Fate::Failed(_) => again.push(event, held),
            }
        }
        (done, again)
    }

    /// Keeps the events `live` says yes to (asked in order), and returns
    /// how to finish the others.
    fn keep(self, mut live: impl FnMut(&Held) -> bool) -> (Pending, Vec<Held>) {
        let mut kept = Pending::default();
        let mut lost = Vec::new();
        for (event, held) in self.events.into_iter().zip(self.held) {
            if live(&held) {
                kept.push(event, held);
            } else {
                lost.push(held);
            }
        }
        (kept, lost)
    }
}

/// What a call returns: the events to try again, and the keys it held.
struct Again {
    pending: Pending,
    /// How many events the call carried, and their keys.
    sent: usize,
    sent_keys: Vec<String>,
    /// What it did by key, on a pipelined sink's lane.
    on_lane: Option<LaneCall>,
}

/// A shard's events not yet confirmed and not at the sink, in arrival
/// order (a failed event goes back to its place, ahead of its key's later
/// ones), and the keys that have events at the sink.
#[derive(Default)]
struct Waiting {
    events: BTreeMap<u64, (Event, Held)>,
    /// When a failed event may go again, by its place.
    retry_at: BTreeMap<u64, Instant>,
    /// Keys at the sink (none tracked for a pipelined sink).
    at_sink: HashSet<String>,
    /// Events in calls at the sink.
    sending: usize,
    next_seq: u64,
}

impl Waiting {
    /// Events waiting and at the sink.
    fn held(&self) -> usize {
        self.events.len() + self.sending
    }

    fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// A polled batch's events for this shard, after those waiting.
    fn add(&mut self, queued: Queued) {
        for InFlight {
            event,
            ticket,
            claim,
        } in queued.items
        {
            let held = Held {
                ticket,
                claim,
                seq: self.next_seq,
                claimed_at: queued.claimed_at,
            };
            self.events.insert(self.next_seq, (event, held));
            self.next_seq += 1;
        }
    }

    /// The next call: in arrival order, up to `most` events whose key has
    /// nothing at the sink (tracked unless pipelined) and nothing earlier still
    /// pausing after a failure. None when nothing can go now.
    fn next_call(&mut self, most: usize) -> Option<Pending> {
        let now = Instant::now();
        let mut stopped: HashSet<&str> = HashSet::new();
        let mut taken = Vec::new();
        for (&seq, (event, _)) in &self.events {
            if taken.len() == most {
                break;
            }
            let key = event.key.as_deref();
            let pausing = self.retry_at.get(&seq).is_some_and(|&at| at > now);
            if key.is_some_and(|k| self.at_sink.contains(k) || stopped.contains(k)) {
                continue;
            }
            if pausing {
                if let Some(k) = key {
                    stopped.insert(k);
                }
                continue;
            }
            taken.push(seq);
        }
        if taken.is_empty() {
            return None;
        }
        let mut call = Pending::default();
        for seq in taken {
            self.retry_at.remove(&seq);
            if let Some((event, held)) = self.events.remove(&seq) {
                call.push(event, held);
            }
        }
        Some(call)
    }

    /// A call of `events` events with `keys` went to the sink: its keys wait for it.
    fn start(&mut self, events: usize, keys: &[String]) {
        self.at_sink.extend(keys.iter().cloned());
        self.sending += events;
    }

    /// A call of `events` events ended: its keys may go again.
    fn end(&mut self, events: usize, keys: &[String]) {
        self.sending -= events;
        for k in keys {
            self.at_sink.remove(k);
        }
    }

    /// Failed events back to their places, to go again at `at`.
    fn retry(&mut self, again: Pending, at: Instant) {
        for (event, held) in again.events.into_iter().zip(again.held) {
            self.retry_at.insert(held.seq, at);
            self.events.insert(held.seq, (event, held));
        }
    }

    /// The earliest moment a pausing event may go again.
    fn next_retry(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }
}

/// Sleeps until `at`; forever without one (the caller's guard disables it).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Keys whose next event is busy at another instance (nacked with a
/// delay), each with that event's dedup key: until it comes back and is
/// claimed (or found done), later events of the key are handed back too,
/// behind it, so that the key's order holds across polls. A hold lapses
/// after two claim leases, in case the busy event never comes back here.
#[derive(Default)]
struct KeysBehind(HashMap<String, (String, Instant)>);

impl KeysBehind {
    /// Whether an event of `key` (with `dedup_key`) must wait behind another.
    fn waits(&mut self, key: &str, dedup_key: &str, lease: Duration) -> bool {
        match self.0.get(key) {
            Some((_, since)) if since.elapsed() > lease * 2 => {
                self.0.remove(key);
                false
            }
            Some((blocking, _)) => blocking != dedup_key,
            None => false,
        }
    }

    /// The event `dedup_key` of `key` is busy elsewhere: later ones wait.
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
