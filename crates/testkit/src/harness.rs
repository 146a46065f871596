//! What a backend provides so the conformance suite can run against it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{
    Capabilities, Consumer, DedupStore, EventStore, Header, InputFormat, Publisher, Result, Value,
};

/// A broker under test: publishers, consumers and dead-letter access.
#[async_trait]
pub trait BrokerHarness: Send + Sync {
    /// The backend's name in test output. Emulators say so, e.g. `sqs (moto emulator)`.
    fn name(&self) -> String;

    /// The capabilities its adapter declares.
    fn capabilities(&self) -> Capabilities;

    /// How long an unsettled delivery stays invisible before redelivery,
    /// as configured for the consumers this harness makes.
    fn ack_timeout(&self) -> Duration;

    /// For emulators that slow down as a queue deepens (moto): scenarios
    /// with many events publish at most this many before consuming them.
    fn shallow_queue(&self) -> Option<usize> {
        None
    }

    /// A fresh destination (topic, queue, subject) only this scenario uses.
    async fn destination(&self, scenario: &str) -> Result<String>;

    /// A publisher.
    async fn publisher(&self) -> Result<Box<dyn Publisher>>;

    /// A consumer of `destination` in consumer group `group`, reading
    /// CloudEvents as such and other messages raw.
    async fn consumer(&self, destination: &str, group: &str) -> Result<Box<dyn Consumer>> {
        self.consumer_reading(destination, group, InputFormat::Auto)
            .await
    }

    /// [`Self::consumer`], reading messages as `format` says.
    async fn consumer_reading(
        &self,
        destination: &str,
        group: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>>;

    /// A consumer of the dead-letter destination of `destination`.
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>>;

    /// Writes `message` as a foreign producer would, with the broker's own
    /// client: no CloudEvents attribute. False where the backend has no
    /// foreign producers (in-process ones).
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool>;

    /// Takes the next message from `destination` with the broker's own
    /// client, as a consumer that knows nothing of causeway reads it,
    /// waiting up to `timeout`; an error when none arrived. `Ok(None)`
    /// where the backend has no foreign consumer (in-process ones).
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>>;

    /// The type a foreign consumer reads for a header causeway wrote as
    /// `written` ([`Value::type_name`]): docs/headers.md, "Writing".
    fn foreign_type(&self, written: &Value) -> &'static str;

    /// Whether a foreign producer's key is kept by the broker (Kafka's
    /// record key, an SQS FIFO group), so the scenarios can expect it.
    fn foreign_keys(&self) -> bool {
        false
    }

    /// Whether [`BrokerHarness::cut_connections`] can cut anything here;
    /// where not, the scenarios that need a cut are reported as skipped.
    fn can_cut(&self) -> bool {
        true
    }

    /// Cuts every connection between the adapter and the broker, as a network
    /// failure would, and keeps new connections failing for `outage`. Returns
    /// false where the backend has no connection to cut (in-process backends).
    async fn cut_connections(&self, outage: Duration) -> bool;

    /// Adds `one_way` latency in each direction on every connection to the
    /// broker (`Duration::ZERO` takes it away), so that calls are still
    /// unanswered when a scenario cuts the link. False where the harness
    /// has no link to slow.
    async fn delay_link(&self, _one_way: Duration) -> bool {
        false
    }
}

/// A message as a foreign producer writes it with the broker's own client.
#[derive(Debug, Clone, Copy, Default)]
pub struct Foreign<'a> {
    /// The payload.
    pub payload: &'a [u8],
    /// The key, where the broker's messages have one.
    pub key: Option<&'a str>,
    /// Headers in the broker's own form (Kafka headers, the AMQP headers
    /// table, NATS headers, SQS `String` attributes, Service Bus custom
    /// properties), text values.
    pub headers: &'a [(&'a str, &'a str)],
    /// The content type: the broker's own property where it has one (AMQP
    /// `content_type`, Service Bus `ContentType`), else a `content-type`
    /// header (Kafka, NATS) or `String` attribute (SQS).
    pub content_type: Option<&'a str>,
}

/// A message as a foreign consumer reads it with the broker's own client,
/// each header typed by the broker's own type (the harness's mapping, not
/// the adapter's).
#[derive(Debug, Clone, Default)]
pub struct ForeignMessage {
    /// The payload.
    pub payload: Vec<u8>,
    /// The key, where the broker's messages have one: Kafka's record key,
    /// an SQS FIFO group, a Service Bus session or partition key.
    pub key: Option<Vec<u8>>,
    /// The headers (Kafka headers, the AMQP headers table, NATS headers, SQS
    /// message attributes, Service Bus custom properties), in order.
    pub headers: Vec<Header>,
    /// Properties with a place of their own, by causeway's names
    /// (`causeway_core::message::property`): AMQP properties, Service Bus
    /// broker properties.
    pub properties: Vec<Header>,
}

/// An event store under test.
#[async_trait]
pub trait EventStoreHarness: Send + Sync {
    /// The backend's name in test output.
    fn name(&self) -> String;

    /// A fresh, empty store whose dedup window is `dedup_window`.
    async fn store(&self, dedup_window: Duration) -> Result<Arc<dyn EventStore>>;
}

/// A dedup store under test.
#[async_trait]
pub trait DedupStoreHarness: Send + Sync {
    /// The backend's name in test output.
    fn name(&self) -> String;

    /// A fresh, empty store.
    async fn store(&self) -> Result<Arc<dyn DedupStore>>;
}

/// Puts a publisher inside wrappers.
type Wrap = Box<dyn Fn(Box<dyn Publisher>) -> Box<dyn Publisher> + Send + Sync>;

/// Another harness's backend with every publisher it makes wrapped (in
/// retries, a breaker, …), so that wrappers run the same scenarios as the
/// adapters they wrap.
pub struct Decorated<H> {
    inner: H,
    name: String,
    wrap: Wrap,
}

impl<H: BrokerHarness> Decorated<H> {
    /// `inner` with `wrap` around each of its publishers; `what` names the
    /// wrapping in test output.
    pub fn new(
        inner: H,
        what: &str,
        wrap: impl Fn(Box<dyn Publisher>) -> Box<dyn Publisher> + Send + Sync + 'static,
    ) -> Self {
        Decorated {
            name: format!("{} behind {what}", inner.name()),
            inner,
            wrap: Box::new(wrap),
        }
    }
}

#[async_trait]
impl<H: BrokerHarness> BrokerHarness for Decorated<H> {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        self.inner.ack_timeout()
    }
    fn shallow_queue(&self) -> Option<usize> {
        self.inner.shallow_queue()
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        self.inner.destination(scenario).await
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok((self.wrap)(self.inner.publisher().await?))
    }
    async fn consumer_reading(
        &self,
        destination: &str,
        group: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        self.inner
            .consumer_reading(destination, group, format)
            .await
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        self.inner.dead_letters(destination).await
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        self.inner.publish_foreign(destination, message).await
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        self.inner.read_foreign(destination, timeout).await
    }
    fn foreign_type(&self, written: &Value) -> &'static str {
        self.inner.foreign_type(written)
    }
    fn foreign_keys(&self) -> bool {
        self.inner.foreign_keys()
    }
    fn can_cut(&self) -> bool {
        self.inner.can_cut()
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.inner.cut_connections(outage).await
    }
    async fn delay_link(&self, one_way: Duration) -> bool {
        self.inner.delay_link(one_way).await
    }
}
