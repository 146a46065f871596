//! The broker conformance suite through a route's sink stack (breaker and
//! retries, as `causeway run` builds it) around the in-memory broker: the
//! layers must keep every promise the bare publisher keeps.

use std::sync::Arc;

use causeway_bridge::config::Config;
use causeway_core::Publisher;
use causeway_testkit::Decorated;
use causeway_testkit::memory::MemoryBrokerHarness;

/// The route stack of a route on the defaults.
fn stacked(publisher: Box<dyn Publisher>) -> Box<dyn Publisher> {
    let config = Config::parse(
        r#"
[endpoints.a.memory]
topic = "in"
[endpoints.b.memory]
[routes.r]
source = "a"
sink = "b"
destination = "out"
"#,
        "sink_stack.toml",
    )
    .expect("a route on the defaults");
    let route = &config.routes["r"];
    // A rate limit generous enough not to slow the suite, so that its
    // layer (which splits calls into bursts) runs every scenario too.
    let limit = causeway_bridge::config::RateLimitConfig {
        events_per_second: Some(200_000),
        bytes_per_second: Some(1 << 30),
        burst: Some(700),
    };
    Box::new(causeway_bridge::sink::for_route(
        Arc::from(publisher),
        route,
        Some(&limit),
    ))
}

causeway_testkit::broker_conformance!(async {
    Decorated::new(
        MemoryBrokerHarness::new(),
        "the route's sink stack",
        stacked,
    )
});
