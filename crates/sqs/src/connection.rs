//! What publishers and consumers of one endpoint share: the SDK client,
//! the config, the queue URLs resolved so far, and what a queue can do.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_sqs::types::QueueAttributeName;
use causeway_core::{Capabilities, ErrorKind, Ordering};

use crate::config::{SqsConfig, is_fifo};
use crate::error::Error;

/// The connection state of an endpoint, shared by its publishers and consumers.
pub(crate) struct Shared {
    pub sqs: aws_sdk_sqs::Client,
    pub config: SqsConfig,
    urls: Mutex<HashMap<String, String>>,
}

impl Shared {
    pub(crate) fn new(sqs: aws_sdk_sqs::Client, config: SqsConfig) -> Self {
        Shared {
            sqs,
            config,
            urls: Mutex::default(),
        }
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
        Error::bounded("get queue url", self.config.call_timeout, call).await
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
        let url = Error::bounded("create queue", self.config.call_timeout, call).await?;
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
        let out = Error::bounded("get queue attributes", self.config.call_timeout, call).await?;
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
        // FIFO: a group's messages go in one lane of calls, one message of
        // the group per call, and a lane stops at a failed call.
        ordered_publish: fifo,
        // Each call is its own requests: a group's sequence is kept by
        // waiting for each call's answer, not by submission order.
        pipelined_order: false,
        consumer_groups: true,
        durable_resume: true,
        // Any payload fits once base64-encoded (a binary payload grows by 4/3),
        // with room left for the attributes.
        max_message_bytes: (config.max_message_bytes * 3 / 4).saturating_sub(256),
        max_batch: 10 * config.publish.in_flight,
    }
}
