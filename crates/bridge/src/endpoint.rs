//! The configured endpoints, by name: each opens as a [`causeway_core::Endpoint`],
//! whichever broker it is, and the bridge asks it for publishers,
//! consumers and checks the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use causeway_core::memory::{ConsumerOptions, MemoryBroker};
use causeway_core::{Capabilities, Connect, Consumer, Endpoint, InputFormat, Publisher};

use crate::config::{EndpointConfig, MemoryEndpoint};
use crate::generator::GeneratorSource;

/// The configured endpoints. Memory endpoints share one in-process broker.
#[derive(Debug, Clone)]
pub struct Endpoints {
    configs: BTreeMap<String, EndpointConfig>,
    memory: MemoryBroker,
}

impl Endpoints {
    /// Endpoints from config; nothing connects until a publisher or consumer is made.
    pub fn new(configs: BTreeMap<String, EndpointConfig>) -> Self {
        Endpoints {
            configs,
            memory: MemoryBroker::new(),
        }
    }

    /// Endpoints whose `memory` endpoints use `broker` (tests pick its dedup window).
    pub fn with_memory(configs: BTreeMap<String, EndpointConfig>, broker: MemoryBroker) -> Self {
        Endpoints {
            configs,
            memory: broker,
        }
    }

    /// The in-process broker behind `memory` endpoints.
    pub fn memory(&self) -> &MemoryBroker {
        &self.memory
    }

    fn config(&self, name: &str) -> Result<&EndpointConfig> {
        self.configs
            .get(name)
            .with_context(|| format!("no endpoint `{name}`"))
    }

    /// Endpoint `name`, connected as its adapter connects (some only on
    /// first use).
    pub async fn open(&self, name: &str) -> Result<Box<dyn Endpoint>> {
        /// An adapter's endpoint from its config.
        async fn connect<E: Connect + 'static>(config: &E::Config) -> Result<Box<dyn Endpoint>>
        where
            E::Config: Clone,
        {
            Ok(Box::new(E::connect(config.clone()).await?))
        }
        match self.config(name)? {
            EndpointConfig::Memory(m) => Ok(Box::new(InProcess {
                name: name.to_owned(),
                config: m.clone(),
                broker: self.memory.clone(),
            })),
            EndpointConfig::Generator(g) => Ok(Box::new(GeneratorSource(g.clone()))),
            #[cfg(feature = "kafka")]
            EndpointConfig::Kafka(c) => connect::<causeway_kafka::KafkaClient>(c).await,
            #[cfg(feature = "nats")]
            EndpointConfig::Nats(c) => connect::<causeway_nats::NatsClient>(c).await,
            #[cfg(feature = "rabbitmq")]
            EndpointConfig::Rabbitmq(c) => connect::<causeway_rabbitmq::RabbitClient>(c).await,
            #[cfg(feature = "sqs")]
            EndpointConfig::Sqs(c) => connect::<causeway_sqs::SqsClient>(c).await,
            #[cfg(feature = "servicebus")]
            EndpointConfig::Servicebus(c) => {
                connect::<causeway_servicebus::ServiceBusClient>(c).await
            }
        }
    }

    /// A publisher to endpoint `name`, connected.
    pub async fn publisher(&self, name: &str) -> Result<Arc<dyn Publisher>> {
        Ok(Arc::from(self.open(name).await?.publisher().await?))
    }

    /// A consumer of endpoint `name`, as its config says, reading
    /// CloudEvents as such and other messages raw.
    pub async fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>> {
        self.consumer_reading(name, InputFormat::Auto).await
    }

    /// [`Self::consumer`], reading messages as `format` says (a route's `format`).
    pub async fn consumer_reading(
        &self,
        name: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        Ok(self.open(name).await?.consumer(format).await?)
    }

    /// Connects to endpoint `name`, proves it answers ([`Endpoint::ping`]),
    /// and returns what it can do.
    pub async fn check(&self, name: &str) -> Result<Capabilities> {
        let endpoint = self.open(name).await?;
        endpoint.ping().await?;
        Ok(endpoint.capabilities())
    }

    /// Endpoint names and their types.
    pub fn describe(&self) -> Vec<(String, &'static str)> {
        self.configs
            .iter()
            .map(|(name, c)| (name.clone(), c.kind()))
            .collect()
    }
}

/// A `memory` endpoint: a topic and group on the bridge's in-process broker.
#[derive(Debug)]
struct InProcess {
    name: String,
    config: MemoryEndpoint,
    broker: MemoryBroker,
}

#[async_trait]
impl Endpoint for InProcess {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> Capabilities {
        self.broker.capabilities()
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(self.broker.publisher()))
    }

    /// The in-process broker carries events as they are: `format` has
    /// nothing to read.
    async fn consumer(&self, _format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        let Some(topic) = self.config.topic.as_deref() else {
            return Err(causeway_core::Error::new(
                causeway_core::ErrorKind::Config,
                format!("endpoint `{}` has no topic to consume", self.name),
            ));
        };
        Ok(Box::new(self.broker.consumer(
            topic,
            &self.config.group,
            ConsumerOptions::default(),
        )))
    }

    async fn ping(&self) -> causeway_core::Result<()> {
        Ok(())
    }
}
