//! The endpoint: the SDK client built from the config and the AWS chain,
//! making publishers and consumers that share its [`Shared`] state.

use std::sync::Arc;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use causeway_core::{Capabilities, Connect, Consumer, Endpoint, InputFormat, Publisher};

use crate::config::{QueueConfig, SqsConfig, is_fifo};
use crate::connection::{Shared, capabilities};
use crate::consumer::SqsConsumer;
use crate::error::Error;
use crate::publisher::SqsPublisher;

/// A connection to SQS in one account and region. Cheap to clone; publishers
/// and consumers made from it share its HTTP connections and queue URLs.
#[derive(Clone)]
pub struct SqsClient {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SqsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsClient")
            .field("region", &self.shared.config.region)
            .field("endpoint", &self.shared.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl SqsClient {
    /// Builds the client from `config` and the standard AWS chain for what
    /// it leaves unset. Contacts no server: a wrong endpoint or credentials
    /// show on the first call (the bridge's `check` makes one).
    pub async fn connect(config: SqsConfig) -> Result<SqsClient, Error> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                c.session_token.clone(),
                None,
                "causeway-config",
            ));
        }
        let sdk_config = loader.load().await;
        if sdk_config.region().is_none() {
            return Err(Error::config(
                "no region: set `region` or AWS_REGION (or a profile's region)",
            ));
        }
        if config.publish.in_flight == 0 {
            return Err(Error::config("publish.in_flight must be at least 1"));
        }
        Ok(SqsClient {
            shared: Arc::new(Shared::new(aws_sdk_sqs::Client::new(&sdk_config), config)),
        })
    }

    /// The SDK client, for what causeway does not wrap (queue management).
    pub fn sdk(&self) -> &aws_sdk_sqs::Client {
        &self.shared.sqs
    }

    /// What this endpoint's queues can do: FIFO where the configured queue
    /// (the consumer's, else the default publish queue) is a FIFO queue.
    pub fn capabilities(&self) -> Capabilities {
        let config = &self.shared.config;
        let queue = config
            .queue
            .as_ref()
            .map(|q| q.name.as_str())
            .or(config.publish.default_queue.as_deref())
            .unwrap_or("");
        capabilities(
            is_fifo(queue),
            config
                .queue
                .as_ref()
                .is_some_and(|q| q.dead_letter_queue.is_some()),
            config,
        )
    }

    /// A publisher. Destinations are queue names or URLs.
    pub fn publisher(&self) -> SqsPublisher {
        SqsPublisher::new(self.shared.clone())
    }

    /// A consumer of `queue`, or of the configured queue when `None`.
    /// Resolves the queue and its dead-letter queue first, so a missing
    /// queue fails here rather than on the first poll.
    pub async fn consumer(&self, queue: Option<&QueueConfig>) -> Result<SqsConsumer, Error> {
        self.consumer_reading(queue, InputFormat::Auto).await
    }

    /// [`Self::consumer`], reading messages as `format` says.
    pub async fn consumer_reading(
        &self,
        queue: Option<&QueueConfig>,
        format: InputFormat,
    ) -> Result<SqsConsumer, Error> {
        let queue = queue
            .or(self.shared.config.queue.as_ref())
            .cloned()
            .ok_or_else(|| Error::config("consumer without a queue"))?;
        SqsConsumer::start(self.shared.clone(), queue, format).await
    }

    /// Checks that the endpoint answers and accepts the credentials (one
    /// `ListQueues` call), and resolves the configured queues.
    pub async fn ping(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let call = async {
            shared
                .sqs
                .list_queues()
                .max_results(1)
                .send()
                .await
                .map_err(|e| Error::sdk("list queues", e))
        };
        Error::bounded("list queues", shared.config.call_timeout, call).await?;
        let config = &shared.config;
        for queue in [
            config.queue.as_ref().map(|q| q.name.as_str()),
            config.publish.default_queue.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            shared.queue_url(queue).await?;
        }
        Ok(())
    }

    /// The URL of a queue given by name or URL.
    pub async fn queue_url(&self, name_or_url: &str) -> Result<String, Error> {
        self.shared.queue_url(name_or_url).await
    }
}

#[async_trait]
impl Endpoint for SqsClient {
    fn kind(&self) -> &'static str {
        "sqs"
    }

    fn capabilities(&self) -> Capabilities {
        SqsClient::capabilities(self)
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(SqsClient::publisher(self)))
    }

    async fn consumer(&self, format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(self.consumer_reading(None, format).await?))
    }

    /// [`SqsClient::ping`]: building the client contacted no server.
    async fn ping(&self) -> causeway_core::Result<()> {
        Ok(SqsClient::ping(self).await?)
    }
}

#[async_trait]
impl Connect for SqsClient {
    type Config = SqsConfig;

    /// [`SqsClient::connect`].
    async fn connect(config: SqsConfig) -> causeway_core::Result<Self> {
        Ok(SqsClient::connect(config).await?)
    }
}
