//! Prometheus metrics per route, and `/metrics`, `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `route` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// Route name.
    pub route: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the bridge exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<RouteLabel, Counter>,
    published: Family<RouteLabel, Counter>,
    duplicates: Family<RouteLabel, Counter>,
    sink_duplicates: Family<RouteLabel, Counter>,
    dead_lettered: Family<RouteLabel, Counter>,
    filtered: Family<RouteLabel, Counter>,
    errors: Family<RouteLabel, Counter>,
    sink_refusals: Family<RouteLabel, Counter>,
    redeliveries: Family<RouteLabel, Counter>,
    fenced: Family<RouteLabel, Counter>,
    order_breaks: Family<RouteLabel, Counter>,
    latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    backlog: Family<RouteLabel, Gauge>,
    in_flight: Family<RouteLabel, Gauge>,
    recent: Mutex<HashMap<String, Arc<Mutex<Recent>>>>,
    ready: AtomicBool,
    /// Why the bridge is unhealthy: a route that stopped.
    failed: Mutex<Option<String>>,
}

/// Latencies since the last summary line, for its p50 and p99 (the
/// Prometheus histogram has fixed buckets and no reset).
pub type Recent = hdrhistogram::Histogram<u64>;

fn recent() -> Recent {
    // Microseconds up to an hour, 2 significant digits: a few KiB per route.
    Recent::new_with_bounds(1, 3_600_000_000, 2).expect("constant bounds are valid")
}

/// One route's handles.
#[derive(Clone, Debug)]
pub struct RouteMetrics {
    /// Events taken from the source.
    pub received: Counter,
    /// Events the sink confirmed.
    pub published: Counter,
    /// Events recognised as already handled and dropped.
    pub duplicates: Counter,
    /// Events the sink's own dedup recognised (same source and id) and
    /// dropped: they were already there, so they count as delivered.
    pub sink_duplicates: Counter,
    /// Events sent to the dead-letter destination.
    pub dead_lettered: Counter,
    /// Events the sink's filter did not take.
    pub filtered: Counter,
    /// Failed publish attempts.
    pub errors: Counter,
    /// Events a broken sink refused permanently (credentials, a missing
    /// entity, a quota): the route paused and retried them.
    pub sink_refusals: Counter,
    /// Deliveries the source made more than once.
    pub redeliveries: Counter,
    /// Claims this instance lost to another after its lease ran out (it
    /// was paused or stuck): it stood down from those events.
    pub fenced: Counter,
    /// Events a sink that keeps a call's order confirmed ahead of an
    /// earlier event of their key that it failed: that key's order broke.
    pub order_breaks: Counter,
    /// Event time to sink confirmation, seconds.
    pub latency: Histogram,
    /// The same since the last summary line, microseconds.
    pub recent: Arc<Mutex<Recent>>,
    /// Durable mode: events stored and not yet forwarded.
    pub backlog: Gauge,
    /// Direct mode: events the route's shards hold, waiting for the sink
    /// or at it (not yet confirmed, dead-lettered or handed back).
    pub in_flight: Gauge,
}

impl RouteMetrics {
    /// Records the end-to-end latencies of a batch's events, in seconds
    /// (one lock for the batch, not one per event).
    pub fn observe_latencies(&self, seconds: impl IntoIterator<Item = f64>) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for s in seconds {
            self.latency.observe(s);
            // Beyond the bounds (an hour) is clamped, not dropped.
            recent.saturating_record((s * 1e6).max(1.0) as u64);
        }
    }

    /// p50 and p99 of the latencies since the last call, in milliseconds
    /// (none if nothing was confirmed), and a fresh window.
    pub fn take_recent_quantiles(&self) -> Option<(f64, f64)> {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.is_empty() {
            return None;
        }
        let q = |q: f64| recent.value_at_quantile(q) as f64 / 1000.0;
        let out = (q(0.5), q(0.99));
        recent.reset();
        Some(out)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("causeway");
        let m = Metrics {
            received: Family::default(),
            published: Family::default(),
            duplicates: Family::default(),
            sink_duplicates: Family::default(),
            dead_lettered: Family::default(),
            filtered: Family::default(),
            errors: Family::default(),
            sink_refusals: Family::default(),
            redeliveries: Family::default(),
            fenced: Family::default(),
            order_breaks: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            backlog: Family::default(),
            in_flight: Family::default(),
            recent: Mutex::default(),
            ready: AtomicBool::new(false),
            failed: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Events taken from the source",
            m.received.clone(),
        );
        registry.register(
            "events_published",
            "Events the sink confirmed",
            m.published.clone(),
        );
        registry.register(
            "duplicates_suppressed",
            "Events dropped as already handled",
            m.duplicates.clone(),
        );
        registry.register(
            "sink_duplicates",
            "Events the sink's own dedup dropped as already there",
            m.sink_duplicates.clone(),
        );
        registry.register(
            "dead_lettered",
            "Events sent to the dead-letter destination",
            m.dead_lettered.clone(),
        );
        registry.register(
            "events_filtered",
            "Events the sink's filter did not take: counted, not sent, not dead-lettered",
            m.filtered.clone(),
        );
        registry.register(
            "publish_errors",
            "Failed publish attempts",
            m.errors.clone(),
        );
        registry.register(
            "sink_refusals",
            "Events a broken sink refused (credentials, missing entity, quota): retried, not dead-lettered",
            m.sink_refusals.clone(),
        );
        registry.register(
            "redeliveries",
            "Deliveries the source made more than once",
            m.redeliveries.clone(),
        );
        registry.register(
            "fenced",
            "Claims lost to another instance after the lease ran out",
            m.fenced.clone(),
        );
        registry.register(
            "order_breaks",
            "Events the sink confirmed ahead of an earlier event of their key that it failed",
            m.order_breaks.clone(),
        );
        registry.register(
            "end_to_end_latency_seconds",
            "Event time to sink confirmation",
            m.latency.clone(),
        );
        registry.register(
            "backlog",
            "Events stored and not yet forwarded (durable mode)",
            m.backlog.clone(),
        );
        registry.register(
            "in_flight",
            "Events held between source and sink, not yet confirmed (direct mode)",
            m.in_flight.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The handles of `route`.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let l = RouteLabel {
            route: route.to_owned(),
        };
        RouteMetrics {
            received: self.received.get_or_create(&l).clone(),
            published: self.published.get_or_create(&l).clone(),
            duplicates: self.duplicates.get_or_create(&l).clone(),
            sink_duplicates: self.sink_duplicates.get_or_create(&l).clone(),
            dead_lettered: self.dead_lettered.get_or_create(&l).clone(),
            filtered: self.filtered.get_or_create(&l).clone(),
            errors: self.errors.get_or_create(&l).clone(),
            sink_refusals: self.sink_refusals.get_or_create(&l).clone(),
            redeliveries: self.redeliveries.get_or_create(&l).clone(),
            fenced: self.fenced.get_or_create(&l).clone(),
            order_breaks: self.order_breaks.get_or_create(&l).clone(),
            latency: self.latency.get_or_create(&l).clone(),
            backlog: self.backlog.get_or_create(&l).clone(),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            recent: self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(route.to_owned())
                .or_insert_with(|| Arc::new(Mutex::new(recent())))
                .clone(),
        }
    }

    /// Marks the bridge ready (every route started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Marks the bridge unhealthy: a route stopped, for `reason`.
    /// `/healthz` and `/readyz` answer 503 with it from now on.
    pub fn set_failed(&self, reason: &str) {
        self.ready.store(false, Ordering::SeqCst);
        *self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason.to_owned());
    }

    /// What `/healthz` answers: 200 while every route runs, 503 and why not.
    pub fn health(&self) -> (StatusCode, String) {
        match &*self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {reason}")),
            None => (StatusCode::OK, "ok".to_owned()),
        }
    }

    /// What `/readyz` answers: 200 once every route started, 503 before,
    /// while stopping, and after a route failed.
    pub fn readiness(&self) -> (StatusCode, String) {
        let (status, health) = self.health();
        if status != StatusCode::OK {
            return (status, health);
        }
        if self.ready.load(Ordering::SeqCst) {
            (StatusCode::OK, "ready".to_owned())
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_owned())
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listen` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listen: &str) -> Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("metrics.listen {listen}"))?;
        let (m1, m2, m3) = (self.clone(), self.clone(), self.clone());
        let app = Router::new()
            .route("/metrics", get(move || async move { m1.encode() }))
            .route("/healthz", get(move || async move { m2.health() }))
            .route("/readyz", get(move || async move { m3.readiness() }));
        Ok(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }))
    }
}
