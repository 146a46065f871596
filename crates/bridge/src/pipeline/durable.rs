//! Durable mode: append → ack, and a forwarder that drains the store.
//!
//! The source is acked once the event is in the store. The forwarder
//! drains the store to the sink in position order and never moves its
//! cursor past an event the sink has not confirmed: a sink outage only
//! grows the backlog. Where the sink keeps the order of submitted calls,
//! several pages are at the sink at once (across clouds, a page per round
//! trip would bound the route). With a shared store, only the instance
//! holding the route's [`ForwarderLease`] forwards.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use causeway_core::{
    AppendOutcome, Claim, ClaimToken, Consumer, Event, ReadFrom, ReadQuery, Settlement,
    StoredEvent, Ticket, settle_all,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sink::{Lane, LaneCall, Turn};
use super::{Fate, RETRY_PAUSE, Route};

impl Route {
    /// Takes events in (append → ack) while `sinks` each drain the store
    /// with a forwarder of their own: one sink's outage grows its backlog
    /// alone. A route with one sink is its own only sink.
    pub(super) async fn run_durable(
        self: Arc<Self>,
        sinks: Vec<Arc<Route>>,
        mut source: Box<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        // Every sink's cursor exists before anything is appended: retention
        // keeps what the slowest cursor has not passed, and a sink that had
        // not confirmed anything yet had no cursor, so the others' alone
        // decided and its events could be deleted before it sent them.
        for sink in &sinks {
            let registered = self
                .retry_store("register the forwarder's cursor", &shutdown, || {
                    sink.register_cursor()
                })
                .await;
            if registered.is_none() {
                return Ok(());
            }
        }
        // Cancelled with `shutdown`, or alone when one forwarder is gone.
        let forwarding = shutdown.child_token();
        let forwarders: Vec<_> = sinks
            .into_iter()
            .map(|route| {
                let shutdown = forwarding.clone();
                let name = route.name.clone();
                (
                    name,
                    tokio::spawn(async move { route.forwarder(shutdown).await }),
                )
            })
            .collect();
        while !shutdown.is_cancelled() {
            if let Some(at) = forwarders.iter().position(|(_, f)| f.is_finished()) {
                // A sink's forwarder is gone: nothing would drain the store
                // for it. Stop taking events in; the others finish.
                source.close().await?;
                forwarding.cancel();
                let mut forwarders = forwarders;
                let (name, forwarder) = forwarders.swap_remove(at);
                for (_, other) in forwarders {
                    let _ = other.await;
                }
                return match forwarder.await {
                    Ok(Ok(())) => Err(anyhow::anyhow!(
                        "route {name}: the forwarder stopped before shutdown"
                    )),
                    Ok(Err(e)) => Err(e.context(format!("route {name}: the forwarder failed"))),
                    Err(e) => Err(anyhow::anyhow!("route {name}: the forwarder panicked: {e}")),
                };
            }
            let batch = self.poll(source.as_mut()).await;
            if batch.is_empty() {
                continue;
            }
            let (events, tickets): (Vec<Event>, Vec<Ticket>) =
                batch.into_iter().map(|d| (d.event, d.ticket)).unzip();
            self.append(&events, tickets).await;
        }
        source.close().await?;
        for (_, forwarder) in forwarders {
            forwarder.await??;
        }
        Ok(())
    }

    /// Stores a batch, then acks it at the source; a batch the store
    /// refused is handed back to come again.
    async fn append(&self, events: &[Event], tickets: Vec<Ticket>) {
        match self.store.append(&self.stream, events).await {
            Ok(outcomes) => {
                let dups = outcomes
                    .iter()
                    .filter(|o| matches!(o, AppendOutcome::Duplicate(_)))
                    .count();
                self.metrics.duplicates.inc_by(dups as u64);
                // Durable now: the source may forget them.
                if let Err(e) = settle_all(tickets.into_iter().map(|t| (t, Settlement::Ack))).await
                {
                    tracing::warn!(route = %self.name, error = %e, "ack failed; the redelivery is a duplicate the store drops");
                }
            }
            Err(e) => {
                tracing::warn!(route = %self.name, error = %e, "store append failed; handing the batch back");
                let again = Settlement::Nack { delay: RETRY_PAUSE };
                let _ = settle_all(tickets.into_iter().map(|t| (t, again.clone()))).await;
            }
        }
    }

    /// Creates this sink's cursor at the stream's start if it has none
    /// (the position a new sink starts from anyway). A cursor never moves
    /// back, so an existing one, another instance's included, stays put.
    async fn register_cursor(&self) -> causeway_core::Result<()> {
        self.store
            .set_cursor(&self.stream, &self.forwarder, 0)
            .await
    }

    /// Drains the store to the sink. With a shared store, only the instance
    /// holding the route's forwarder lease does; the others stand by.
    async fn forwarder(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        self.connect_sink(&shutdown).await;
        if !self.shared_store {
            return self.forward_stored(&mut None, &shutdown).await;
        }
        while let Some(lease) = ForwarderLease::acquire(&self, &shutdown).await {
            let mut lease = Some(lease);
            self.forward_stored(&mut lease, &shutdown).await?;
            if shutdown.is_cancelled() {
                // Hand over at once rather than after the lease.
                if let Some(lease) = lease {
                    let _ = self.dedup.release(&lease.token).await;
                }
                break;
            }
        }
        Ok(())
    }

    /// Drains the store to the sink in position order, while `lease` (if
    /// any) is renewed. Where the sink keeps the order of submitted calls,
    /// up to `in_flight` pages are at the sink at once, handed over in
    /// order (`Turn`); otherwise one. The cursor moves over the confirmed
    /// prefix only. After a page with a failure, the pages already at the
    /// sink finish (what they confirm is not sent again) and reading starts
    /// over from the cursor. On shutdown it reads no more and finishes the
    /// pages at the sink; the rest stays in the store for the next start.
    /// Returns when the lease is lost.
    async fn forward_stored(
        self: &Arc<Self>,
        lease: &mut Option<ForwarderLease>,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let Some(cursor) = self
            .retry_store("read the forwarder's cursor", shutdown, || {
                self.store.cursor(&self.stream, &self.forwarder)
            })
            .await
        else {
            return Ok(());
        };
        let mut cursor = cursor.unwrap_or(0);
        let window = if self.pipelined() {
            self.config.in_flight
        } else {
            1
        };
        let mut confirmed_ahead = BTreeSet::new();
        // Pages at the sink, in position order, and where the next starts.
        let mut pages: VecDeque<(Vec<u64>, JoinHandle<Forwarded>)> = VecDeque::new();
        let mut next_read = cursor + 1;
        let mut lane = Lane::default();
        // A page had a failure: read again from the cursor once the pages
        // at the sink are back.
        let mut stalled = false;
        loop {
            while pages.len() < window && !stalled && !shutdown.is_cancelled() {
                if let Some(l) = lease.as_mut() {
                    match l.renew_if_due(self).await {
                        Some(true) => {}
                        Some(false) => {
                            // Another instance forwards now: what is at the
                            // sink stops, and its cursor is not moved.
                            pages.iter().for_each(|(_, page)| page.abort());
                            return Ok(());
                        }
                        // Not knowing whether it still leads, it does not
                        // hand more over.
                        None => break,
                    }
                }
                let Some(page) = self.read_page(next_read, cursor).await else {
                    break;
                };
                next_read = page.last().map_or(next_read, |s| s.position + 1);
                // Events confirmed in an earlier round, beyond a failed one,
                // are not sent again: the sink would get them twice.
                let positions: Vec<u64> = page.iter().map(|s| s.position).collect();
                let (todo, events): (Vec<u64>, Vec<Event>) = page
                    .into_iter()
                    .filter(|s| !confirmed_ahead.contains(&s.position))
                    .map(|s| (s.position, s.event))
                    .unzip();
                let (call, turn) = if window > 1 {
                    let (call, turn) = lane.start();
                    (Some(call), turn)
                } else {
                    (None, Turn::default())
                };
                let claims: Vec<ClaimToken> = lease.iter().map(|l| l.token.clone()).collect();
                let route = self.clone();
                let forwarding = tokio::spawn(async move {
                    let (fates, renewed) = route.forward_leased(&events, &claims, turn).await;
                    Forwarded {
                        on_lane: call.map(|call| LaneCall::of(call, &events, &fates)),
                        todo,
                        fates,
                        renewed,
                    }
                });
                pages.push_back((positions, forwarding));
            }
            let Some((positions, forwarding)) = pages.pop_front() else {
                if shutdown.is_cancelled() {
                    break;
                }
                let pause = if stalled {
                    stalled = false;
                    next_read = cursor + 1;
                    RETRY_PAUSE
                } else {
                    self.config.linger
                };
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            };
            let forwarded = match forwarding.await {
                Ok(forwarded) => forwarded,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => anyhow::bail!("route {}: a page's forwarding stopped: {e}", self.name),
            };
            if let (Some(l), Some(at)) = (lease.as_mut(), forwarded.renewed) {
                l.renewed_at = l.renewed_at.max(at);
            }
            if let Some(ended) = forwarded.on_lane {
                self.count_overtakes(lane.ended(ended));
            }
            for (position, fate) in forwarded.todo.iter().zip(&forwarded.fates) {
                if !matches!(fate, Fate::Failed(_)) {
                    confirmed_ahead.insert(*position);
                }
            }
            if stalled {
                // Past a gap: kept in `confirmed_ahead`, not moved over.
                continue;
            }
            // Advance over the confirmed prefix only: order holds, nothing is skipped.
            let mut confirmed = 0;
            for position in &positions {
                if !confirmed_ahead.remove(position) {
                    break;
                }
                cursor = *position;
                confirmed += 1;
            }
            stalled = confirmed < positions.len();
            // Not moved: after a restart these are sent again and the
            // sink's dedup (or the reader's) drops the copies.
            // Fenced: only the lease holder moves the cursor. One that lost
            // its lease while publishing stands down; the new holder sends
            // these again and the sink's dedup drops the copies.
            if confirmed > 0
                && let Some(l) = lease.as_mut()
                && !l.still_holds(self).await
            {
                pages.iter().for_each(|(_, page)| page.abort());
                return Ok(());
            }
            if confirmed > 0
                && self
                    .retry_store("move the forwarder's cursor", shutdown, || {
                        self.store.set_cursor(&self.stream, &self.forwarder, cursor)
                    })
                    .await
                    .is_none()
            {
                break;
            }
        }
        Ok(())
    }

    /// The next page from `from`, `None` when there is none now (empty, or
    /// the store failed: logged, after a pause). Also sets the backlog
    /// past `cursor`.
    async fn read_page(&self, from: u64, cursor: u64) -> Option<Vec<StoredEvent>> {
        let query = ReadQuery::new(
            &self.stream,
            ReadFrom::Position(from),
            self.config.batch_size,
        );
        let page = match self.store.read(&query).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(route = %self.name, error = %e, "store read failed; retrying");
                tokio::time::sleep(RETRY_PAUSE).await;
                return None;
            }
        };
        if let Ok(stats) = self.store.stats(Some(&self.stream)).await {
            let last = stats.last_position.unwrap_or(cursor);
            self.metrics.backlog.set(last.saturating_sub(cursor) as i64);
        }
        (!page.is_empty()).then_some(page)
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
}

/// What forwarding a page gave: the positions sent, their fates in order,
/// and when the lease was renewed meanwhile.
struct Forwarded {
    todo: Vec<u64>,
    fates: Vec<Fate>,
    renewed: Option<Instant>,
    /// What it did by key, on a pipelined sink's lane.
    on_lane: Option<LaneCall>,
}

/// The route's forwarder lease in a shared store: a claim on the key
/// `<stream>\u{1f}<forwarder>`, renewed every third of the lease while held.
struct ForwarderLease {
    token: ClaimToken,
    renewed_at: Instant,
}

impl ForwarderLease {
    /// Waits until this instance holds the lease; None on shutdown.
    async fn acquire(route: &Route, shutdown: &CancellationToken) -> Option<Self> {
        let key = format!("{}\u{1f}{}", route.stream, route.forwarder);
        let mut told = false;
        loop {
            let at = Instant::now();
            match route.dedup.claim(&key, route.config.claim_lease).await {
                Ok(Claim::Claimed(token)) => {
                    tracing::info!(route = %route.name, "this instance forwards the route");
                    return Some(ForwarderLease {
                        token,
                        renewed_at: at,
                    });
                }
                Ok(_) if !told => {
                    told = true;
                    tracing::info!(route = %route.name, "another instance forwards the route; standing by");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(route = %route.name, error = %e, "dedup store unavailable for the forwarder lease; retrying")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(route.config.claim_lease / 4) => {}
            }
        }
    }

    /// Renews the lease once a third of it has run: Some(true) still held,
    /// Some(false) another instance took it over, None the store cannot say.
    async fn renew_if_due(&mut self, route: &Route) -> Option<bool> {
        if self.renewed_at.elapsed() < route.config.claim_lease / 3 {
            return Some(true);
        }
        match self.renew(route).await {
            Ok(held) => {
                if !held {
                    tracing::warn!(route = %route.name, "another instance took over forwarding after this one's lease ran out; standing by");
                }
                Some(held)
            }
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "cannot renew the forwarder lease; retrying");
                None
            }
        }
    }

    /// Whether this instance still holds the lease (renewing it), before it
    /// moves the cursor: false when another took it over, or when the store
    /// cannot say.
    async fn still_holds(&mut self, route: &Route) -> bool {
        match self.renew(route).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(route = %route.name, "another instance took over forwarding while this one published; standing by");
                false
            }
            Err(e) => {
                tracing::warn!(route = %route.name, error = %e, "cannot renew the forwarder lease before moving the cursor; standing by");
                false
            }
        }
    }

    /// One renewal: whether it is still held; a lost lease is counted as fenced.
    async fn renew(&mut self, route: &Route) -> causeway_core::Result<bool> {
        let at = Instant::now();
        let renewed = route
            .dedup
            .renew_many(std::slice::from_ref(&self.token), route.config.claim_lease)
            .await?;
        let held = renewed.first().is_some_and(Result::is_ok);
        if held {
            self.renewed_at = at;
        } else {
            route.metrics.fenced.inc();
        }
        Ok(held)
    }
}
