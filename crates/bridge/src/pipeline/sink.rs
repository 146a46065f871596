//! The sink side both modes end in: publish a batch in waves, one call per
//! destination, and dead-letter what can never be carried.
//!
//! A sink that keeps a call's order (`ordered_publish`: it writes a call's
//! events in order and stops writing a key at its first failure) takes a
//! batch whole, a key's events together. Any other sink, or a route with
//! `strict_order`, gets a key's events in waves, one per call: such a sink
//! can fail k:1 and deliver k:2 of the same call, so k:2 waits for k:1's
//! outcome, and a key whose event failed sends no more of that batch. A
//! batch of few keys then pays a round trip per event of its busiest key.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use causeway_core::{ClaimToken, Error, ErrorKind, Event, dead_letter};
use tokio::sync::oneshot;

use super::{Fate, Route};

/// The store stream holding a route's dead letters.
pub fn dead_letter_stream(route: &str) -> String {
    format!("dlq.{route}")
}

impl Route {
    /// Publishes `events` in order, grouped by destination, one [`Fate`] per
    /// event, in order (replays call this too). Permanent
    /// failures that are the event's own fault are dead-lettered; the rest
    /// come back as [`Fate::Failed`] (after the retry layer gave up).
    ///
    /// To a sink that keeps a call's order, the batch goes in one wave;
    /// otherwise in waves, and after a wave a key whose event failed sends
    /// nothing more from this batch: the rest of it fails with it, unsent,
    /// and is retried behind it. Keys seen once in a batch (the usual case)
    /// make one wave either way: one call per destination.
    ///
    /// Events the sink's filter does not take are [`Fate::Filtered`],
    /// counted and not sent.
    pub async fn forward(&self, events: &[Event]) -> Vec<Fate> {
        self.forward_in_turn(events, Turn::default()).await
    }

    /// [`Self::forward`] on a shard's lane: the events are handed to the
    /// sink in `turn`, after the call before them handed over theirs.
    async fn forward_in_turn(&self, events: &[Event], mut turn: Turn) -> Vec<Fate> {
        let fates = self.forward_filtered(events, &mut turn).await;
        // Nothing was sent (all filtered out): still in turn.
        turn.done().await;
        fates
    }

    /// [`Self::forward_all`] of what the sink's filter takes.
    async fn forward_filtered(&self, events: &[Event], turn: &mut Turn) -> Vec<Fate> {
        let Some(filter) = &self.filter else {
            return self.forward_all(events, turn).await;
        };
        let taken: Vec<usize> = (0..events.len())
            .filter(|&i| filter.takes(&events[i]))
            .collect();
        if taken.len() == events.len() {
            return self.forward_all(events, turn).await;
        }
        self.metrics
            .filtered
            .inc_by((events.len() - taken.len()) as u64);
        let subset: Vec<Event> = taken.iter().map(|&i| events[i].clone()).collect();
        let mut fates: Vec<Fate> = events.iter().map(|_| Fate::Filtered).collect();
        for (i, fate) in taken.into_iter().zip(self.forward_all(&subset, turn).await) {
            fates[i] = fate;
        }
        fates
    }

    /// [`Self::forward`] without a filter.
    async fn forward_all(&self, events: &[Event], turn: &mut Turn) -> Vec<Fate> {
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
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut paused_said = false;
        let mut latencies = Vec::with_capacity(events.len());
        let together = !self.config.strict_order && self.sink.capabilities().ordered_publish;
        let waves = if together {
            vec![(0..events.len()).collect()]
        } else {
            waves(events)
        };
        for wave in waves {
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
            self.publish_wave(events, &send, &mut fates, turn).await;
            for &i in &send {
                self.resolve(&events[i], &mut fates[i], &mut paused_said, &mut latencies)
                    .await;
                if let (Fate::Failed(_), Some(key)) = (&fates[i], events[i].key.as_deref()) {
                    blocked.insert(key);
                }
            }
        }
        self.metrics.observe_latencies(latencies);
        if together {
            self.count_order_breaks(events, &fates);
        }
        fates
    }

    /// Counts events a pipelined sink confirmed after an earlier call
    /// failed an event of their key ([`Lane::end`]): that key's order broke.
    pub(super) fn count_overtakes(&self, breaks: u64) {
        if breaks > 0 {
            self.metrics.order_breaks.inc_by(breaks);
            tracing::warn!(route = %self.name, events = breaks, "the sink confirmed events of a key after failing an earlier call's event of that key: those keys' order broke at the sink (pipeline = false rules this out)");
        }
    }

    /// Counts the events a sink that keeps a call's order confirmed after
    /// failing an earlier event of their key in the same call: the failed
    /// one is retried behind them, so their key's order broke at the sink.
    /// The adapters say where their broker can do this (a nack of one
    /// message); `strict_order` rules it out at a round trip per event.
    fn count_order_breaks(&self, events: &[Event], fates: &[Fate]) {
        let mut failed: HashSet<&str> = HashSet::new();
        let mut breaks = 0;
        for (event, fate) in events.iter().zip(fates) {
            let Some(key) = event.key.as_deref() else {
                continue;
            };
            match fate {
                Fate::Failed(_) => {
                    failed.insert(key);
                }
                Fate::Sent if failed.contains(key) => breaks += 1,
                _ => {}
            }
        }
        if breaks > 0 {
            self.metrics.order_breaks.inc_by(breaks);
            tracing::warn!(route = %self.name, events = breaks, "the sink confirmed events ahead of an earlier event of their key that it failed: those keys' order broke at the sink (strict_order rules this out)");
        }
    }

    /// One wave: its events grouped by destination, one call per group, in
    /// order of first appearance, all submitted in `turn` before any is
    /// awaited; each outcome goes to its event's fate.
    async fn publish_wave(
        &self,
        events: &[Event],
        wave: &[usize],
        fates: &mut [Fate],
        turn: &mut Turn,
    ) {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for &i in wave {
            let d = self.template.render(&events[i]);
            match groups.iter_mut().find(|(dest, _)| *dest == d) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((d.into_owned(), vec![i])),
            }
        }
        turn.wait().await;
        let mut submitted = Vec::with_capacity(groups.len());
        for (dest, idx) in groups {
            let owned;
            let batch: &[Event] = if idx.len() == events.len() {
                events
            } else {
                owned = idx.iter().map(|&i| events[i].clone()).collect::<Vec<_>>();
                &owned
            };
            submitted.push((idx, self.sink.submit(&dest, batch).await));
        }
        turn.pass();
        for (idx, confirms) in submitted {
            match confirms.await {
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
            Fate::DeadLettered | Fate::Filtered => {}
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
    pub(super) async fn forward_leased(
        &self,
        events: &[Event],
        claims: &[ClaimToken],
        turn: Turn,
    ) -> (Vec<Fate>, Option<Instant>) {
        let forward = self.forward_in_turn(events, turn);
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

    /// Records a dead letter in the store (always) and at the dead-letter
    /// destination (when configured). False if it could not be kept anywhere:
    /// the caller must not drop the event then.
    pub(super) async fn dead_letter(&self, event: &Event, reason: &str, attempts: u32) -> bool {
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
}

/// A call's turn on its shard's lane. Calls of one shard pass it on in
/// the order the shard made them: a call hands its events to the sink
/// once the call before it handed over its own, and lets the next go as
/// soon as it has, before its confirmations are in. So a key's calls reach
/// a sink that keeps the order of submitted calls (`pipelined_order`) in
/// the shard's order while they are confirmed together. A call that ends
/// without sending still takes its turn ([`Turn::done`]): the next must
/// not go before the one before it. The default turn waits for nothing.
#[derive(Debug, Default)]
pub(super) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    then: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// The turn after the one `last` waits for; `last` becomes this one.
    pub(super) fn next(last: &mut Option<oneshot::Receiver<()>>) -> Turn {
        let (then, after_this) = oneshot::channel();
        Turn {
            after: last.replace(after_this),
            then: Some(then),
        }
    }

    /// Waits until the call before has handed over its events.
    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            // Sent or dropped, the call before is done handing over.
            let _ = after.await;
        }
    }

    /// This call's events are handed over: the next call may go.
    fn pass(&mut self) {
        if let Some(then) = self.then.take() {
            let _ = then.send(());
        }
    }

    /// Takes the turn without sending (or after sending: then it does
    /// nothing more).
    pub(super) async fn done(&mut self) {
        self.wait().await;
        self.pass();
    }
}

/// Calls (a shard's, a forwarder's pages) in the order they are handed to
/// a pipelined sink, and what overlapping calls let break: when a call fails an event of key k,
/// every later call already handed over may still confirm k's later
/// events ahead of it. Calls made after the failure is known do not: a
/// shard holds k's later events behind the retry, a forwarder reads again
/// from its cursor. Keys are hashes: a
/// collision can only miscount.
#[derive(Default)]
pub(super) struct Lane {
    /// The turn the next call waits for.
    last: Option<oneshot::Receiver<()>>,
    next: u64,
    /// Calls at the sink, each with the keys an earlier call failed since
    /// it was handed over.
    open: BTreeMap<u64, HashSet<u64>>,
    /// Calls that ended while an earlier one was still at the sink: what
    /// they confirmed, by key.
    ended: BTreeMap<u64, HashMap<u64, u64>>,
}

impl Lane {
    /// The next call's place and turn.
    pub(super) fn start(&mut self) -> (u64, Turn) {
        let call = self.next;
        self.next += 1;
        self.open.insert(call, HashSet::new());
        (call, Turn::next(&mut self.last))
    }

    /// A call ended: how many events it or the calls after it confirmed
    /// past a failed earlier event of their key.
    pub(super) fn ended(&mut self, ended: LaneCall) -> u64 {
        self.end(ended.call, ended.confirmed, ended.failed)
    }

    fn end(&mut self, call: u64, confirmed: HashMap<u64, u64>, failed: HashSet<u64>) -> u64 {
        let passed = self.open.remove(&call).unwrap_or_default();
        let mut breaks: u64 = confirmed
            .iter()
            .filter(|(k, _)| passed.contains(k))
            .map(|(_, n)| n)
            .sum();
        if !failed.is_empty() {
            for (_, keys) in self.open.range_mut(call + 1..) {
                keys.extend(failed.iter().copied());
            }
            for (_, sent) in self.ended.range(call + 1..) {
                breaks += failed.iter().filter_map(|k| sent.get(k)).sum::<u64>();
            }
        }
        if self.open.range(..call).next().is_some() {
            self.ended.insert(call, confirmed);
        }
        // A call ended before every open one cannot be passed any more.
        let oldest = self.open.keys().next().copied().unwrap_or(u64::MAX);
        self.ended = self.ended.split_off(&oldest);
        breaks
    }
}

/// What a call on a [`Lane`] did, by key hash: how many events of each
/// key the sink confirmed, and which keys it failed.
pub(super) struct LaneCall {
    call: u64,
    confirmed: HashMap<u64, u64>,
    failed: HashSet<u64>,
}

impl LaneCall {
    /// Call `call`'s `events` and their `fates`, by key.
    pub(super) fn of(call: u64, events: &[Event], fates: &[Fate]) -> Self {
        let mut confirmed = HashMap::new();
        let mut failed = HashSet::new();
        for (event, fate) in events.iter().zip(fates) {
            let Some(key) = event.key.as_deref() else {
                continue;
            };
            let key = causeway_core::template::key_hash(key.as_bytes());
            match fate {
                Fate::Sent => *confirmed.entry(key).or_default() += 1,
                Fate::Failed(_) => {
                    failed.insert(key);
                }
                Fate::Filtered | Fate::DeadLettered => {}
            }
        }
        LaneCall {
            call,
            confirmed,
            failed,
        }
    }
}

/// A batch's indices in waves: the n-th event of each key goes in wave n,
/// events without a key (no order to keep) in the first.
fn waves(events: &[Event]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(key: u64, n: u64) -> HashMap<u64, u64> {
        HashMap::from([(key, n)])
    }

    #[test]
    fn a_call_confirming_a_key_after_an_earlier_call_failed_it_is_a_break() {
        let mut lane = Lane::default();
        let (a, b, c) = (lane.start().0, lane.start().0, lane.start().0);
        // b ends first, confirming 2 of key 7; then a fails key 7: b passed it.
        assert_eq!(lane.end(b, sent(7, 2), HashSet::new()), 0);
        assert_eq!(lane.end(a, HashMap::new(), HashSet::from([7])), 2);
        // c was handed over before a failed: its 3 of key 7 passed too.
        assert_eq!(lane.end(c, sent(7, 3), HashSet::new()), 3);
        // A call made after the failure was known is not counted.
        let d = lane.start().0;
        assert_eq!(lane.end(d, sent(7, 1), HashSet::new()), 0);
        assert!(
            lane.open.is_empty() && lane.ended.is_empty(),
            "nothing kept"
        );
    }

    #[test]
    fn other_keys_and_earlier_calls_are_not_breaks() {
        let mut lane = Lane::default();
        let (a, b) = (lane.start().0, lane.start().0);
        // a confirms key 1 and fails key 2; b (later) confirms only key 1.
        assert_eq!(lane.end(b, sent(1, 4), HashSet::new()), 0);
        assert_eq!(lane.end(a, sent(1, 1), HashSet::from([2])), 0);
        // A failure in the later call is never passed by the earlier one.
        let (c, d) = (lane.start().0, lane.start().0);
        assert_eq!(lane.end(d, HashMap::new(), HashSet::from([5])), 0);
        assert_eq!(lane.end(c, sent(5, 9), HashSet::new()), 0);
    }
}
