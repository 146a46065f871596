//! An endpoint: one configured broker, the single shape every adapter gives
//! the bridge. The bridge holds `Box<dyn Endpoint>` and never matches on
//! which broker it is.

use async_trait::async_trait;

use crate::capabilities::Capabilities;
use crate::consume::Consumer;
use crate::error::Result;
use crate::message::InputFormat;
use crate::publish::Publisher;

/// A broker endpoint, connected and ready to make publishers and consumers.
#[async_trait]
pub trait Endpoint: Send + Sync + std::fmt::Debug {
    /// What kind of broker it is, in messages and `causeway check`
    /// (`"kafka"`, `"nats"`, …).
    fn kind(&self) -> &'static str;

    /// What it can do, as configured.
    fn capabilities(&self) -> Capabilities;

    /// A publisher to it.
    async fn publisher(&self) -> Result<Box<dyn Publisher>>;

    /// A consumer of what its config names to consume (a `Config` error
    /// when it names nothing), reading messages as `format` says.
    async fn consumer(&self, format: InputFormat) -> Result<Box<dyn Consumer>>;

    /// Proves the broker answers and accepts the credentials, and that the
    /// configured entities exist, changing nothing. An endpoint whose
    /// connect already proved this (a handshake, a declared topology)
    /// answers from what it holds.
    async fn ping(&self) -> Result<()>;
}

/// How an adapter makes its [`Endpoint`] from its config: `connect` is the
/// one constructor every adapter has, async whether or not it touches the
/// network (a Kafka client connects lazily, a NATS one at once).
#[async_trait]
pub trait Connect: Endpoint + Sized {
    /// The adapter's config.
    type Config: Send + 'static;

    /// Builds the endpoint, connecting where the client does.
    async fn connect(config: Self::Config) -> Result<Self>;
}
