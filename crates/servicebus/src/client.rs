//! The endpoint: credentials from the config and the environment, then
//! publishers and consumers that share its [`Shared`] connection state.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::Url;
use azure_messaging_servicebus::service_bus::QueueClient;
use causeway_core::{Capabilities, Connect, Consumer, Endpoint, ErrorKind, InputFormat, Publisher};

use crate::config::{
    ConnectionString, DEFAULT_KEY_ENV, REST_MAX_MESSAGE_BYTES, ReceiveConfig, ServiceBusConfig,
    namespace_of,
};
use crate::connection::{Shared, capabilities};
use crate::consumer::ServiceBusConsumer;
use crate::error::Error;
use crate::publisher::ServiceBusPublisher;

/// A connection to one Service Bus namespace. Cheap to clone; publishers
/// and consumers made from it share its HTTP connections.
#[derive(Clone)]
pub struct ServiceBusClient {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for ServiceBusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBusClient")
            .field("namespace", &self.shared.namespace)
            .field("policy", &self.shared.policy)
            .field("endpoint", &self.shared.config.endpoint)
            .finish_non_exhaustive()
    }
}

/// Resolves namespace, policy and key from the config and the environment.
fn credentials(config: &ServiceBusConfig) -> Result<(String, String, String), Error> {
    if let Some(var) = &config.connection_string_env {
        let text = std::env::var(var)
            .map_err(|_| Error::config(format!("environment variable {var} is not set")))?;
        let c = ConnectionString::parse(&text).map_err(|e| Error::config(format!("{var}: {e}")))?;
        return Ok((c.namespace, c.policy, c.key));
    }
    let namespace = config
        .namespace
        .as_deref()
        .map(namespace_of)
        .ok_or_else(|| Error::config("set `namespace` (or `connection_string_env`)"))?;
    let policy = config
        .sas_policy
        .clone()
        .ok_or_else(|| Error::config("set `sas_policy` (or `connection_string_env`)"))?;
    let key = match &config.sas_key {
        Some(key) => key.clone(),
        None => {
            let var = config.sas_key_env.as_deref().unwrap_or(DEFAULT_KEY_ENV);
            std::env::var(var).map_err(|_| {
                Error::config(format!(
                    "environment variable {var} (the key of policy `{policy}`) is not set"
                ))
            })?
        }
    };
    Ok((namespace, policy, key))
}

impl ServiceBusClient {
    /// Builds the client. Contacts no server: a wrong endpoint or key shows
    /// on the first call (the bridge's `check` makes one, [`Self::ping`]).
    pub fn connect(config: ServiceBusConfig) -> Result<ServiceBusClient, Error> {
        let (namespace, policy, key) = credentials(&config)?;
        if config.publish.in_flight == 0 {
            return Err(Error::config("publish.in_flight must be at least 1"));
        }
        if config.max_message_bytes > REST_MAX_MESSAGE_BYTES {
            return Err(Error::config(format!(
                "max_message_bytes is {}; the Service Bus REST API takes at most {REST_MAX_MESSAGE_BYTES} bytes (1 MiB) per message on any tier: larger messages are AMQP-only",
                config.max_message_bytes
            )));
        }
        let endpoint = match &config.endpoint {
            Some(e) => {
                Some(Url::parse(e).map_err(|err| Error::config(format!("endpoint `{e}`: {err}")))?)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::new("connect", ErrorKind::Internal, e))?;
        Ok(ServiceBusClient {
            shared: Arc::new(Shared::new(
                config, namespace, policy, key, client, endpoint,
            )),
        })
    }

    /// What this endpoint's entities can do (see [`capabilities`]).
    pub fn capabilities(&self) -> Capabilities {
        let dead_letter = self
            .shared
            .config
            .receive
            .as_ref()
            .is_some_and(|r| r.dead_letter_entity.is_some());
        capabilities(&self.shared.config, dead_letter)
    }

    /// A publisher. Destinations are queue or topic names.
    pub fn publisher(&self) -> ServiceBusPublisher {
        ServiceBusPublisher::new(self.shared.clone())
    }

    /// A consumer of `receive`, or of the configured one when `None`.
    pub fn consumer(&self, receive: Option<&ReceiveConfig>) -> Result<ServiceBusConsumer, Error> {
        self.consumer_reading(receive, InputFormat::Auto)
    }

    /// [`Self::consumer`], reading messages as `format` says.
    pub fn consumer_reading(
        &self,
        receive: Option<&ReceiveConfig>,
        format: InputFormat,
    ) -> Result<ServiceBusConsumer, Error> {
        let receive = receive
            .or(self.shared.config.receive.as_ref())
            .cloned()
            .ok_or_else(|| Error::config("consumer without a `receive` entity"))?;
        ServiceBusConsumer::start(self.shared.clone(), receive, format)
    }

    /// The library's client for queue or topic `entity`, sending through this
    /// client's transport (endpoint override included), for what causeway does
    /// not wrap.
    pub fn queue_client(&self, entity: &str) -> Result<QueueClient, Error> {
        self.shared.sender(entity)
    }

    /// Checks that the namespace answers, accepts the key, and has the
    /// configured entities, asking only for the rights each role needs: the
    /// receive entity is asked to complete a lock that does not exist
    /// (Listen: 404 means authorized and there), entities sent to are sent
    /// an empty batch (Send: stores nothing). 410 is a missing entity, 401 a
    /// key without the right, 405 a receive entity that requires sessions,
    /// which the REST API cannot receive from. It changes nothing.
    pub async fn ping(&self) -> Result<(), Error> {
        let config = &self.shared.config;
        if let Some(receive) = &config.receive {
            self.shared.probe_listen(&receive.path()).await?;
        }
        let sent_to = [
            config
                .receive
                .as_ref()
                .and_then(|r| r.dead_letter_entity.clone()),
            config.publish.default_entity.clone(),
        ];
        for entity in sent_to.into_iter().flatten() {
            self.shared.probe_send(&entity).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Endpoint for ServiceBusClient {
    fn kind(&self) -> &'static str {
        "servicebus"
    }

    fn capabilities(&self) -> Capabilities {
        ServiceBusClient::capabilities(self)
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(ServiceBusClient::publisher(self)))
    }

    async fn consumer(&self, format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(self.consumer_reading(None, format)?))
    }

    /// [`ServiceBusClient::ping`]: building the client contacted no server.
    async fn ping(&self) -> causeway_core::Result<()> {
        Ok(ServiceBusClient::ping(self).await?)
    }
}

#[async_trait]
impl Connect for ServiceBusClient {
    type Config = ServiceBusConfig;

    /// [`ServiceBusClient::connect`].
    async fn connect(config: ServiceBusConfig) -> causeway_core::Result<Self> {
        Ok(ServiceBusClient::connect(config)?)
    }
}
