//! The SDK client, queue URL resolution, and what a queue can do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use causeway_core::{Capabilities, ErrorKind, Ordering};

use crate::config::{QueueConfig, SqsConfig, is_fifo};
use crate::consumer::SqsConsumer;
use crate::error::{Error, bounded};
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

pub(crate) struct Shared {
    pub sqs: aws_sdk_sqs::Client,
    pub config: SqsConfig,
    urls: Mutex<HashMap<String, String>>,
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
            shared: Arc::new(Shared {
                sqs: aws_sdk_sqs::Client::new(&sdk_config),
                config,
                urls: Mutex::default(),
            }),
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
        let queue = queue
            .or(self.shared.config.queue.as_ref())
            .cloned()
            .ok_or_else(|| Error::config("consumer without a queue"))?;
        SqsConsumer::start(self.shared.clone(), queue).await
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
        bounded("list queues", shared.config.call_timeout, call).await?;
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

impl Shared {
    /// A queue's URL: given, cached, or asked for (and created where
    /// `create_queues` is set).
    pub async fn queue_url(&self, name_or_url: &str) -> Result<String, Error> {
        if name_or_url.contains("://") {
            return Ok(name_or_url.to_owned());
        }
        if let Some(url) = self.cached(name_or_url) {
            return Ok(url);
        }
        let found = self.lookup(name_or_url, None).await;
        let url = match found {
            Err(e) if e.kind() == ErrorKind::NotFound && self.config.create_queues => {
                self.create(name_or_url).await?
            }
            other => other?,
        };
        let mut urls = self
            .urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Destinations rendered from events are unbounded in number; the
        // cache is not (a URL is cheap to look up again).
        if urls.len() >= causeway_core::template::CACHE_LIMIT {
            urls.clear();
        }
        urls.insert(name_or_url.to_owned(), url.clone());
        Ok(url)
    }

    fn cached(&self, name: &str) -> Option<String> {
        self.urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    async fn lookup(&self, name: &str, owner: Option<&str>) -> Result<String, Error> {
        let call = async {
            let out = self
                .sqs
                .get_queue_url()
                .queue_name(name)
                .set_queue_owner_aws_account_id(owner.map(str::to_owned))
                .send()
                .await
                .map_err(|e| Error::sdk("get queue url", e))?;
            out.queue_url
                .ok_or_else(|| Error::new("get queue url", ErrorKind::NotFound, name.to_owned()))
        };
        bounded("get queue url", self.config.call_timeout, call).await
    }

    async fn create(&self, name: &str) -> Result<String, Error> {
        let mut request = self.sqs.create_queue().queue_name(name);
        if is_fifo(name) {
            request = request.attributes(QueueAttributeName::FifoQueue, "true");
        }
        let call = async {
            let out = request
                .send()
                .await
                .map_err(|e| Error::sdk("create queue", e))?;
            out.queue_url
                .ok_or_else(|| Error::new("create queue", ErrorKind::Internal, "no queue URL"))
        };
        let url = bounded("create queue", self.config.call_timeout, call).await?;
        tracing::info!(queue = name, "created SQS queue");
        Ok(url)
    }

    /// The dead-letter queue of the queue's redrive policy, if it has one.
    pub async fn redrive_target(&self, queue_url: &str) -> Result<Option<String>, Error> {
        let call = async {
            self.sqs
                .get_queue_attributes()
                .queue_url(queue_url)
                .attribute_names(QueueAttributeName::RedrivePolicy)
                .send()
                .await
                .map_err(|e| Error::sdk("get queue attributes", e))
        };
        let out = bounded("get queue attributes", self.config.call_timeout, call).await?;
        let Some(policy) = out
            .attributes
            .as_ref()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
        else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Redrive {
            dead_letter_target_arn: String,
        }
        let redrive: Redrive = serde_json::from_str(policy).map_err(|e| {
            Error::new(
                "get queue attributes",
                ErrorKind::Internal,
                format!("unreadable RedrivePolicy {policy}: {e}"),
            )
        })?;
        // arn:aws:sqs:<region>:<account>:<name>
        let parts: Vec<&str> = redrive.dead_letter_target_arn.split(':').collect();
        let (Some(name), Some(account)) = (parts.last(), parts.get(4)) else {
            return Err(Error::config(format!(
                "redrive target `{}` is not a queue ARN",
                redrive.dead_letter_target_arn
            )));
        };
        self.lookup(name, Some(account)).await.map(Some)
    }
}

/// What an SQS queue can do.
pub(crate) fn capabilities(fifo: bool, dead_letter: bool, config: &SqsConfig) -> Capabilities {
    Capabilities {
        per_message_nack: true,
        delayed_redelivery: true,
        ack_timeout_redelivery: true,
        dead_letter,
        native_dedup: fifo,
        ordering: if fifo {
            Ordering::PerKey
        } else {
            Ordering::None
        },
        consumer_groups: true,
        durable_resume: true,
        // Any payload fits once base64-encoded (a binary payload grows by 4/3),
        // with room left for the attributes.
        max_message_bytes: (config.max_message_bytes * 3 / 4).saturating_sub(256),
        max_batch: 10 * config.publish.in_flight,
    }
}
