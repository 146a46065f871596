//! The endpoint: checks the config against the server, then makes
//! publishers and consumers, each on its own [`Session`].

use std::sync::Arc;

use async_trait::async_trait;
use causeway_core::{Capabilities, Connect, Consumer, Endpoint, InputFormat, Ordering, Publisher};

use crate::config::{QueueConfig, QueueKind, RabbitConfig};
use crate::consumer::RabbitConsumer;
use crate::error::Error;
use crate::publisher::RabbitPublisher;
use crate::session::Session;

/// A RabbitMQ endpoint: makes publishers and consumers, each with its own
/// connection, so a slow consumer never holds up a publisher's confirms.
#[derive(Clone, Debug)]
pub struct RabbitClient {
    config: Arc<RabbitConfig>,
}

impl RabbitClient {
    /// Connects once to check the endpoint and declare its topology: a
    /// conflicting existing queue or exchange is an error here.
    pub async fn connect(config: RabbitConfig) -> Result<RabbitClient, Error> {
        let client = RabbitClient {
            config: Arc::new(config),
        };
        client.declare().await?;
        Ok(client)
    }

    /// Opens a connection, declares the topology (a conflicting existing
    /// queue or exchange fails), and closes it.
    async fn declare(&self) -> Result<(), Error> {
        let session = Session::new(self.config.clone(), self.config.queue.clone());
        let link = session.link().await?;
        session.invalidate(&link).await;
        Ok(())
    }

    /// What this endpoint can do; stream queues keep messages for every
    /// consumer and cannot requeue one.
    pub fn capabilities(&self) -> Capabilities {
        capabilities(&self.config, self.config.queue.as_ref())
    }

    /// A publisher with its own connection.
    pub fn publisher(&self) -> RabbitPublisher {
        RabbitPublisher::new(Session::new(self.config.clone(), None), self.capabilities())
    }

    /// A consumer of `queue` (the config's own when `None`), with its own connection.
    pub async fn consumer(&self, queue: Option<&QueueConfig>) -> Result<RabbitConsumer, Error> {
        let queue = match queue.or(self.config.queue.as_ref()) {
            Some(q) => q.clone(),
            None => {
                return Err(Error::config(
                    "no [queue] configured for this RabbitMQ endpoint",
                ));
            }
        };
        let capabilities = capabilities(&self.config, Some(&queue));
        RabbitConsumer::start(Session::new(self.config.clone(), Some(queue)), capabilities).await
    }
}

pub(crate) fn capabilities(config: &RabbitConfig, queue: Option<&QueueConfig>) -> Capabilities {
    let stream = queue.is_some_and(|q| q.kind == QueueKind::Stream);
    Capabilities {
        per_message_nack: !stream,
        delayed_redelivery: !stream,
        // Unacked messages return when the channel closes, not after a timeout.
        ack_timeout_redelivery: false,
        dead_letter: queue.is_some_and(|q| q.dead_letter_queue.is_some()),
        native_dedup: false,
        ordering: Ordering::None,
        // A call publishes on one channel, in order, nothing after a
        // channel failure and no chunk after one with a message not
        // confirmed. Within a chunk a queue can still nack one message and
        // confirm the next (`reject-publish` overflow freeing up between).
        ordered_publish: true,
        // Submitted calls share one confirm-mode channel, in submission
        // order, and one reader of its confirms (`crate::lane`). As within
        // a call, the queue can nack one message and confirm a later
        // call's.
        pipelined_order: true,
        consumer_groups: !stream,
        durable_resume: !stream,
        max_message_bytes: config.max_message_bytes,
        max_batch: 1000,
    }
}

#[async_trait]
impl Endpoint for RabbitClient {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn capabilities(&self) -> Capabilities {
        RabbitClient::capabilities(self)
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(RabbitClient::publisher(self)))
    }

    async fn consumer(&self, format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(
            RabbitClient::consumer(self, None).await?.reading(format),
        ))
    }

    /// Connects and declares the topology again, as `connect` did.
    async fn ping(&self) -> causeway_core::Result<()> {
        Ok(self.declare().await?)
    }
}

#[async_trait]
impl Connect for RabbitClient {
    type Config = RabbitConfig;

    /// [`RabbitClient::connect`].
    async fn connect(config: RabbitConfig) -> causeway_core::Result<Self> {
        Ok(RabbitClient::connect(config).await?)
    }
}
