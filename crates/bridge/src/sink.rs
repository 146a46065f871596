//! The sink stack: the adapter's publisher wrapped in layers, each a
//! [`Publisher`] around the next, built innermost first.
//!
//! A route's stack, from the adapter out: the rate limit, if any (every
//! call the broker sees, retries included, takes its tokens), the breaker
//! (fails fast while the sink is down), then retries (with backoff, around
//! the breaker so that an open circuit ends them early). The pipeline
//! counts what comes out in its metrics.
//!
//! ```text
//! pipeline → RetryingPublisher → Breaking → RateLimited → adapter publisher → broker
//! ```

use std::num::NonZeroU32;
use std::sync::Arc;

use async_trait::async_trait;
use causeway_core::{
    Capabilities, Confirms, Event, Publisher, Receipt, RetryPolicy, RetryingPublisher,
};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::breaker::{Breaker, Breaking};
use crate::config::{RateLimitConfig, RouteConfig};

/// Wraps a publisher in one more behaviour (tower's `Layer`, for publishers).
pub trait Layer {
    /// `inner` with this layer around it.
    fn wrap(&self, inner: Arc<dyn Publisher>) -> Arc<dyn Publisher>;
}

/// A circuit breaker around the sink.
#[derive(Debug, Clone)]
pub struct BreakerLayer(pub Arc<Breaker>);

impl Layer for BreakerLayer {
    fn wrap(&self, inner: Arc<dyn Publisher>) -> Arc<dyn Publisher> {
        Arc::new(Breaking {
            inner,
            breaker: self.0.clone(),
        })
    }
}

/// Retries with backoff of what failed temporarily.
#[derive(Debug, Clone)]
pub struct RetryLayer(pub RetryPolicy);

impl Layer for RetryLayer {
    fn wrap(&self, inner: Arc<dyn Publisher>) -> Arc<dyn Publisher> {
        Arc::new(RetryingPublisher::new(inner, self.0))
    }
}

/// A token bucket of events and one of payload bytes before the sink:
/// waiting for tokens is backpressure, never a failure.
#[derive(Debug, Clone)]
pub struct RateLimitLayer(pub RateLimitConfig);

impl Layer for RateLimitLayer {
    fn wrap(&self, inner: Arc<dyn Publisher>) -> Arc<dyn Publisher> {
        let c = &self.0;
        let bucket = |rate: Option<u32>, burst: Option<u32>| {
            let rate = NonZeroU32::new(rate?)?;
            let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
            Some((
                RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                burst,
            ))
        };
        // Bytes come in a second's worth at most; events in `burst`.
        Arc::new(RateLimited {
            inner,
            events: bucket(c.events_per_second, c.burst),
            bytes: bucket(c.bytes_per_second, None),
        })
    }
}

/// A publisher behind [`RateLimitLayer`].
struct RateLimited {
    inner: Arc<dyn Publisher>,
    events: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
    bytes: Option<(DefaultDirectRateLimiter, NonZeroU32)>,
}

impl RateLimited {
    /// How many of `len` events go in one call: at most the events' burst.
    fn chunk(&self, len: usize) -> usize {
        self.events
            .as_ref()
            .map_or(len, |(_, burst)| burst.get() as usize)
            .max(1)
    }

    /// Waits for `n` tokens of `bucket` (at most its burst at once).
    async fn take(bucket: &Option<(DefaultDirectRateLimiter, NonZeroU32)>, n: usize) {
        if let Some((limiter, burst)) = bucket {
            let n = u32::try_from(n).unwrap_or(u32::MAX).clamp(1, burst.get());
            let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // `n` never exceeds the burst, so capacity always suffices.
            let _ = limiter.until_n_ready(n).await;
        }
    }
}

#[async_trait]
impl Publisher for RateLimited {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    /// Takes no tokens: nothing is sent.
    async fn connect(&self) -> causeway_core::Result<()> {
        self.inner.connect().await
    }

    /// Sends in calls of at most the events' burst, each after its tokens.
    async fn publish(
        &self,
        destination: &str,
        events: &[Event],
    ) -> causeway_core::Result<Vec<causeway_core::Result<Receipt>>> {
        let chunk = self.chunk(events.len());
        let mut out = Vec::with_capacity(events.len());
        for part in events.chunks(chunk) {
            Self::take(&self.events, part.len()).await;
            Self::take(&self.bytes, part.iter().map(|e| e.payload.len()).sum()).await;
            out.extend(self.inner.publish(destination, part).await?);
        }
        Ok(out)
    }

    /// Submits in parts as `publish` sends them, each after its tokens;
    /// their confirmations come back as one.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        let chunk = self.chunk(events.len());
        let mut parts = Vec::new();
        for part in events.chunks(chunk) {
            Self::take(&self.events, part.len()).await;
            Self::take(&self.bytes, part.iter().map(|e| e.payload.len()).sum()).await;
            parts.push(self.inner.submit(destination, part).await);
        }
        let len = events.len();
        Box::pin(async move {
            let mut out = Vec::with_capacity(len);
            for part in parts {
                out.extend(part.await?);
            }
            Ok(out)
        })
    }
}

/// A publisher and the layers put around it so far.
pub struct Stack(Arc<dyn Publisher>);

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("capabilities", &self.0.capabilities())
            .finish()
    }
}

impl Stack {
    /// The bare publisher.
    pub fn new(publisher: Arc<dyn Publisher>) -> Self {
        Stack(publisher)
    }

    /// Adds `layer` around what is there.
    pub fn layer(self, layer: &dyn Layer) -> Self {
        Stack(layer.wrap(self.0))
    }

    /// The outermost publisher.
    pub fn build(self) -> Arc<dyn Publisher> {
        self.0
    }
}

/// The stack a route's sink runs in, as its config and the sink's rate
/// limit say.
pub fn for_route(
    publisher: Arc<dyn Publisher>,
    config: &RouteConfig,
    rate_limit: Option<&RateLimitConfig>,
) -> Arc<dyn Publisher> {
    let r = &config.retry;
    let policy = RetryPolicy {
        max_attempts: r.max_attempts,
        initial_delay: r.initial_delay,
        max_delay: r.max_delay,
        ..RetryPolicy::default()
    };
    let breaker = Breaker::new(config.breaker.failures, config.breaker.cooldown);
    let mut stack = Stack::new(publisher);
    if let Some(limit) = rate_limit {
        stack = stack.layer(&RateLimitLayer(limit.clone()));
    }
    stack
        .layer(&BreakerLayer(Arc::new(breaker)))
        .layer(&RetryLayer(policy))
        .build()
}
