//! The sink stack: the adapter's publisher wrapped in layers, each a
//! [`Publisher`] around the next, built innermost first.
//!
//! A route's stack, from the adapter out: the breaker (fails fast while
//! the sink is down), then retries (with backoff, around the breaker so
//! that an open circuit ends them early). The pipeline counts what comes
//! out in its metrics.
//!
//! ```text
//! pipeline → RetryingPublisher → Breaking → adapter publisher → broker
//! ```

use std::sync::Arc;

use causeway_core::{Publisher, RetryPolicy, RetryingPublisher};

use crate::breaker::{Breaker, Breaking};
use crate::config::RouteConfig;

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

/// The stack a route's sink runs in, as its config says.
pub fn for_route(publisher: Arc<dyn Publisher>, config: &RouteConfig) -> Arc<dyn Publisher> {
    let r = &config.retry;
    let policy = RetryPolicy {
        max_attempts: r.max_attempts,
        initial_delay: r.initial_delay,
        max_delay: r.max_delay,
        ..RetryPolicy::default()
    };
    let breaker = Breaker::new(config.breaker.failures, config.breaker.cooldown);
    Stack::new(publisher)
        .layer(&BreakerLayer(Arc::new(breaker)))
        .layer(&RetryLayer(policy))
        .build()
}
