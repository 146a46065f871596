//! causeway-bridge: routes events from any source endpoint to any sink, with
//! dedup, durable store-and-forward, retries, a circuit breaker, dead
//! letters, replay and metrics. The `causeway` binary is its command line.
//!
//! Adapters are cargo features (`kafka`, `nats`, `rabbitmq`, `sqs`,
//! `servicebus`, and the `postgres` store), all on by default; `memory` and
//! `generator` endpoints are always there. docs/architecture.md walks
//! through the modules.

pub mod breaker;
pub mod cli;
pub mod config;
pub mod endpoint;
pub mod filter;
mod generator;
pub mod metrics;
pub mod pipeline;
pub mod shape;
pub mod sink;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use causeway_core::{DedupStore, EventStore, ReadFrom, ReadQuery, Retention, Template};
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RouteConfig};
use crate::endpoint::Endpoints;
use crate::metrics::Metrics;
use crate::pipeline::{Fate, Route};

/// Where the SQLite store goes when the config names none.
pub const DEFAULT_SQLITE: &str = "causeway-data/causeway.db";

/// A configured bridge: endpoints, the store, metrics.
pub struct Bridge {
    /// The configuration it was built from.
    pub config: Config,
    /// The endpoints.
    pub endpoints: Endpoints,
    /// The event store (durable routes, dead letters, replay).
    pub store: Arc<dyn EventStore>,
    /// The dedup store (direct routes).
    pub dedup: Arc<dyn DedupStore>,
    /// Metrics of every route.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("config", &self.config)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The route whose stream is read.
    pub route: String,
    /// Read another stream (e.g. the route's dead letters) instead.
    pub stream: Option<String>,
    /// Where to start.
    pub from: ReadFrom,
    /// Stop before events stored at or after this time.
    pub until: Option<DateTime<Utc>>,
    /// Only this key.
    pub key: Option<String>,
    /// Another sink endpoint than the route's.
    pub sink: Option<String>,
    /// Another destination template than the route's.
    pub destination: Option<String>,
}

/// How a replay went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Events the sink confirmed.
    pub published: u64,
    /// Events dead-lettered on a permanent failure.
    pub dead_lettered: u64,
    /// Events the sink's filter did not take.
    pub filtered: u64,
    /// The last position handled, to resume from after a failure.
    pub last_position: Option<u64>,
}

impl Bridge {
    /// Opens the store and prepares the endpoints (nothing connects yet).
    pub async fn new(config: Config) -> Result<Bridge> {
        let window = config.store.dedup_window;
        let (store, dedup): (Arc<dyn EventStore>, Arc<dyn DedupStore>) =
            match (&config.store.postgres, &config.store.sqlite) {
                #[cfg(feature = "postgres")]
                (Some(pg), _) => {
                    let mut options = causeway_postgres::PostgresOptions::new(pg.url.clone());
                    options.schema = pg.schema.clone();
                    options.dedup_window = window;
                    let s = causeway_postgres::PostgresStore::connect(options)
                        .await
                        .context("store.postgres")?;
                    (Arc::new(s.clone()), Arc::new(s))
                }
                #[cfg(not(feature = "postgres"))]
                (Some(_), _) => bail!("store.postgres needs the `postgres` feature"),
                (None, path) => {
                    let path = path.clone().unwrap_or_else(|| DEFAULT_SQLITE.into());
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("store directory {}", dir.display()))?;
                    }
                    let options = causeway_sqlite::SqliteOptions {
                        dedup_window: window,
                        cache_bytes: config.store.sqlite_cache_mib().saturating_mul(1 << 20),
                        ..Default::default()
                    };
                    let s = causeway_sqlite::SqliteStore::open(&path, options)
                        .with_context(|| format!("store.sqlite {}", path.display()))?;
                    (Arc::new(s.clone()), Arc::new(s))
                }
            };
        Ok(Bridge {
            endpoints: Endpoints::new(config.endpoints.clone()),
            config,
            store,
            dedup,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// A route with one sink, ready to run: its sink in its stack of
    /// layers ([`sink::for_route`]). For a route with several, [`Self::sinks`].
    pub async fn route(&self, name: &str) -> Result<Arc<Route>> {
        self.route_with(name, None, None).await
    }

    /// The routes of route `name`'s sinks, one per sink, in config order:
    /// what [`pipeline::run_fanout`] runs.
    pub async fn sinks(&self, name: &str) -> Result<Vec<Arc<Route>>> {
        let config = self.route_config(name)?;
        let mut out = Vec::new();
        for leg in config.legs(name) {
            out.push(self.leg(name, &config, &leg, None, None).await?);
        }
        Ok(out)
    }

    fn route_config(&self, name: &str) -> Result<RouteConfig> {
        Ok(self
            .config
            .routes
            .get(name)
            .with_context(|| format!("no route `{name}`"))?
            .clone())
    }

    /// Route `name`'s one sink, or the one `sink` names among several (by
    /// its name in `sinks`); with one sink, `sink` may name another
    /// endpoint to send to instead (a replay's `--sink`).
    async fn route_with(
        &self,
        name: &str,
        sink: Option<&str>,
        destination: Option<&str>,
    ) -> Result<Arc<Route>> {
        let config = self.route_config(name)?;
        let legs = config.legs(name);
        if let [leg] = legs.as_slice() {
            return self.leg(name, &config, leg, sink, destination).await;
        }
        let names: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        let Some(wanted) = sink else {
            bail!(
                "route `{name}` has several sinks ({}): name one",
                names.join(", ")
            );
        };
        let leg = legs
            .iter()
            .find(|l| l.name == format!("{name}/{wanted}"))
            .with_context(|| {
                format!(
                    "route `{name}` has no sink `{wanted}` (its sinks: {})",
                    names.join(", ")
                )
            })?;
        self.leg(name, &config, leg, None, destination).await
    }

    /// The route of one sink `leg` of route `name`, with another endpoint
    /// and destination where given.
    async fn leg(
        &self,
        name: &str,
        config: &RouteConfig,
        leg: &config::Leg,
        endpoint: Option<&str>,
        destination: Option<&str>,
    ) -> Result<Arc<Route>> {
        let raw = self
            .endpoints
            .publisher(endpoint.unwrap_or(&leg.sink.endpoint))
            .await?;
        let sink = sink::for_route(raw, config, leg.sink.rate_limit.as_ref());
        let dead_letter = match &config.dead_letter {
            Some(dl) => Some((
                self.endpoints.publisher(&dl.endpoint).await?,
                dl.destination.clone(),
            )),
            None => None,
        };
        let template = Template::parse(destination.unwrap_or(&leg.sink.destination))?;
        let filter = match &leg.sink.filter {
            Some(f) => Some(filter::Filter::new(f).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        Ok(Arc::new(Route {
            name: leg.name.clone(),
            stream: name.to_owned(),
            forwarder: leg.forwarder.clone(),
            filter,
            template,
            shape: shape::Shape::new(config)?,
            sink,
            dead_letter,
            store: self.store.clone(),
            dedup: self.dedup.clone(),
            shared_store: self.config.store.postgres.is_some(),
            metrics: self.metrics.route(&leg.name),
            config: config.clone(),
        }))
    }

    /// Runs every route until `shutdown`; then each finishes its in-flight
    /// work, commits and closes its source.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let _server = match &self.config.metrics.listen {
            Some(listen) => Some(self.metrics.clone().serve(listen).await?),
            None => None,
        };
        // Routes stop on `stop`: the caller's shutdown, or one route
        // stopping on its own, which stops the others (finishing their
        // in-flight work) so that the process exits non-zero.
        let stop = shutdown.child_token();
        let mut tasks = tokio::task::JoinSet::new();
        for (name, config) in &self.config.routes {
            let sinks = self.sinks(name).await?;
            let source = self
                .endpoints
                .consumer_reading(&config.source, config.format)
                .await?;
            let stop = stop.clone();
            let name = name.clone();
            tasks.spawn(async move {
                let result = match <[_; 1]>::try_from(sinks) {
                    Ok([route]) => route.run(source, stop).await,
                    Err(sinks) => pipeline::run_fanout(sinks, source, stop).await,
                };
                (name, result)
            });
        }
        let retention = self.config.store.retention.map(|r| {
            let store = self.store.clone();
            let shutdown = stop.clone();
            tokio::spawn(async move { retain(store, r, shutdown).await })
        });
        self.metrics.set_ready(true);
        let summary = tokio::spawn(summarize(
            self.metrics.clone(),
            self.config.routes.keys().cloned().collect(),
            self.config.metrics.summary_every,
            stop.clone(),
        ));
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let failure = match joined {
                Ok((_, Ok(()))) if stop.is_cancelled() => None,
                Ok((name, Ok(()))) => Some(format!("{name}: stopped by itself")),
                Ok((name, Err(e))) => Some(format!("{name}: {e:#}")),
                Err(e) => Some(format!("a route task panicked: {e}")),
            };
            if let Some(failure) = failure {
                tracing::error!(failure, "a route stopped; stopping the others");
                self.metrics.set_failed(&failure);
                failed.push(failure);
                stop.cancel();
            }
        }
        self.metrics.set_ready(false);
        summary.abort();
        if let Some(r) = retention {
            r.abort();
        }
        if !failed.is_empty() {
            bail!("routes failed: {}", failed.join("; "));
        }
        Ok(())
    }

    /// Re-publishes stored events to the route's sink (or another), in
    /// position order. Stops at the first event that fails temporarily,
    /// reporting where, so the replay can be resumed from there.
    pub async fn replay(
        &self,
        replay: &Replay,
        mut progress: impl FnMut(u64),
    ) -> Result<ReplayReport> {
        let route = self
            .route_with(
                &replay.route,
                replay.sink.as_deref(),
                replay.destination.as_deref(),
            )
            .await?;
        let stream = replay
            .stream
            .clone()
            .unwrap_or_else(|| replay.route.clone());
        let mut report = ReplayReport::default();
        let mut query = ReadQuery::new(stream, replay.from, 1000);
        query.until = replay.until;
        query.key = replay.key.clone();
        loop {
            let page = self.store.read(&query).await?;
            let Some(last) = page.last() else { break };
            let next = last.position + 1;
            let events: Vec<_> = page.iter().map(|s| s.event.clone()).collect();
            let fates = route.forward(&events).await;
            for (stored, fate) in page.iter().zip(fates) {
                match fate {
                    Fate::Sent => report.published += 1,
                    Fate::Filtered => report.filtered += 1,
                    Fate::DeadLettered => report.dead_lettered += 1,
                    Fate::Failed(e) => bail!(
                        "stopped at position {} ({e}); {} published so far; resume with --from-position {}",
                        stored.position,
                        report.published,
                        stored.position
                    ),
                }
                report.last_position = Some(stored.position);
            }
            progress(page.len() as u64);
            query.from = ReadFrom::Position(next);
        }
        Ok(report)
    }
}

/// The store policies `[store.retention]` stands for, each with what it
/// deletes. Route streams: never past the forwarder's cursor. Dead letters
/// have no cursor, so that keeps them; their own policy, if any, is explicit.
pub fn retention_policies(r: &config::RetentionConfig) -> Vec<(&'static str, Retention)> {
    let mut policies = vec![(
        "events",
        Retention {
            max_age: r.max_age,
            max_bytes: r.max_bytes,
            ..Retention::default()
        },
    )];
    if let Some(d) = r.dead_letters {
        policies.push((
            "dead letters",
            Retention {
                max_age: d.max_age,
                max_bytes: d.max_bytes,
                ignore_cursors: true,
                stream_prefix: Some(pipeline::dead_letter_stream("")),
            },
        ));
    }
    policies
}

/// Applies the retention policy every `r.every` until shutdown.
async fn retain(
    store: Arc<dyn EventStore>,
    r: config::RetentionConfig,
    shutdown: CancellationToken,
) {
    let policies = retention_policies(&r);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(r.every) => {}
        }
        for (what, policy) in &policies {
            match store.apply_retention(policy).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, what, "retention"),
                Err(e) => tracing::warn!(error = %e, what, "retention failed; next run retries"),
            }
        }
    }
}

/// Logs a line per route every `every`: the live summary; and a warning
/// when a route holds events and finishes none for [`STALL_AFTER`].
async fn summarize(
    metrics: Arc<Metrics>,
    routes: Vec<String>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut last: Vec<u64> = vec![0; routes.len()];
    let mut watches: Vec<StallWatch> = routes
        .iter()
        .map(|_| StallWatch::new(STALL_AFTER, std::time::Instant::now()))
        .collect();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        for (i, name) in routes.iter().enumerate() {
            let m = metrics.route(name);
            let published = m.published.get();
            let rate = (published - last[i]) as f64 / every.as_secs_f64();
            last[i] = published;
            let (p50, p99) = m
                .take_recent_quantiles()
                .map_or(("-".into(), "-".into()), |(a, b)| {
                    (format!("{a:.1}ms"), format!("{b:.1}ms"))
                });
            tracing::info!(
                route = %name,
                received = m.received.get(),
                published,
                rate = format!("{rate:.0}/s"),
                p50,
                p99,
                duplicates = m.duplicates.get(),
                dead_lettered = m.dead_lettered.get(),
                backlog = m.backlog.get(),
                in_flight = m.in_flight.get(),
                "flowing"
            );
            let held = m.in_flight.get() + m.backlog.get();
            let finished =
                published + m.dead_lettered.get() + m.duplicates.get() + m.filtered.get();
            match watches[i].observe(held, finished, std::time::Instant::now()) {
                Some(Stall::Began(for_)) => tracing::warn!(
                    route = %name,
                    held,
                    errors = m.errors.get(),
                    "{held} events held and none finished for {}s: the sink does not answer, or the route is stuck",
                    for_.as_secs()
                ),
                Some(Stall::Ended(after)) => tracing::info!(
                    route = %name,
                    "moving again after {}s without finishing an event",
                    after.as_secs()
                ),
                None => {}
            }
        }
    }
}

/// How long a route may hold events without finishing one before it is
/// said to be stalled: longer than a retried publish and a breaker's
/// cooldown, so that it names what nothing else reports (a sink that
/// never answers, a stuck task), not a retry in progress.
const STALL_AFTER: Duration = Duration::from_secs(120);

/// What a [`StallWatch`] saw change.
#[derive(Debug, PartialEq, Eq)]
enum Stall {
    /// Events held and none finished for this long.
    Began(Duration),
    /// Finishing again, after a stall this long.
    Ended(Duration),
}

/// Watches one route's held and finished counts for a stall: events held
/// while the count of finished ones (published, dead-lettered, dropped as
/// duplicates or filtered) stays put. An idle route holds nothing.
#[derive(Debug)]
struct StallWatch {
    after: Duration,
    finished: u64,
    since: std::time::Instant,
    said: bool,
}

impl StallWatch {
    fn new(after: Duration, now: std::time::Instant) -> Self {
        StallWatch {
            after,
            finished: 0,
            since: now,
            said: false,
        }
    }

    /// A new reading; says when a stall begins or ends, once each.
    fn observe(&mut self, held: i64, finished: u64, now: std::time::Instant) -> Option<Stall> {
        if finished != self.finished || held <= 0 {
            let stalled = now.duration_since(self.since);
            let ended = std::mem::take(&mut self.said).then_some(Stall::Ended(stalled));
            (self.finished, self.since) = (finished, now);
            return ended;
        }
        let stalled = now.duration_since(self.since);
        if stalled >= self.after && !self.said {
            self.said = true;
            return Some(Stall::Began(stalled));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soak once stopped for good with nothing logged: events held,
    /// none finished, no error. The watch names that, once, and says when
    /// the route moves again; an idle route, or one that moves, is no stall.
    #[test]
    fn a_route_holding_events_that_finishes_none_is_said_to_stall_once() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = StallWatch::new(Duration::from_secs(60), t0);
        // Idle: nothing held, nothing finished, for long.
        assert_eq!(w.observe(0, 0, at(300)), None);
        // Moving: what is held changes, and things finish.
        assert_eq!(w.observe(50, 10, at(310)), None);
        assert_eq!(w.observe(50, 20, at(360)), None);
        // Stuck at 20 finished with 50 held.
        assert_eq!(w.observe(50, 20, at(400)), None);
        assert_eq!(
            w.observe(50, 20, at(420)),
            Some(Stall::Began(Duration::from_secs(60)))
        );
        assert_eq!(w.observe(50, 20, at(500)), None, "said once");
        assert_eq!(
            w.observe(40, 30, at(510)),
            Some(Stall::Ended(Duration::from_secs(150)))
        );
        assert_eq!(w.observe(40, 40, at(600)), None);
    }
}
