//! Publishers and consumers for the configured endpoints, by name.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use causeway_core::memory::{ConsumerOptions, MemoryBroker};
use causeway_core::{
    Capabilities, Consumer, Delivery, Event, Publisher, Settlement, Settler, Ticket,
};
use tokio::time::Instant;

use crate::config::{EndpointConfig, GeneratorEndpoint};

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

    /// A publisher to endpoint `name`, connected.
    pub async fn publisher(&self, name: &str) -> Result<Arc<dyn Publisher>> {
        Ok(match self.config(name)? {
            EndpointConfig::Memory(_) => Arc::new(self.memory.publisher()),
            EndpointConfig::Generator(_) => {
                bail!("endpoint `{name}` is a generator: it can only be a source")
            }
            #[cfg(feature = "kafka")]
            EndpointConfig::Kafka(c) => {
                Arc::new(causeway_kafka::KafkaClient::new(c.clone()).publisher()?)
            }
            #[cfg(feature = "nats")]
            EndpointConfig::Nats(c) => Arc::new(
                causeway_nats::NatsClient::connect(c.clone())
                    .await?
                    .publisher(),
            ),
            #[cfg(feature = "rabbitmq")]
            EndpointConfig::Rabbitmq(c) => Arc::new(
                causeway_rabbitmq::RabbitClient::connect(c.clone())
                    .await?
                    .publisher(),
            ),
            #[cfg(feature = "sqs")]
            EndpointConfig::Sqs(c) => Arc::new(
                causeway_sqs::SqsClient::connect(c.clone())
                    .await?
                    .publisher(),
            ),
            #[cfg(feature = "servicebus")]
            EndpointConfig::Servicebus(c) => {
                Arc::new(causeway_servicebus::ServiceBusClient::connect(c.clone())?.publisher())
            }
        })
    }

    /// A consumer of endpoint `name`, as its config says.
    pub async fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>> {
        Ok(match self.config(name)? {
            EndpointConfig::Memory(m) => {
                let topic = m
                    .topic
                    .as_deref()
                    .with_context(|| format!("endpoint `{name}` has no topic to consume"))?;
                Box::new(
                    self.memory
                        .consumer(topic, &m.group, ConsumerOptions::default()),
                )
            }
            EndpointConfig::Generator(g) => Box::new(Generator::new(g.clone())),
            #[cfg(feature = "kafka")]
            EndpointConfig::Kafka(c) => {
                Box::new(causeway_kafka::KafkaClient::new(c.clone()).consumer(None)?)
            }
            #[cfg(feature = "nats")]
            EndpointConfig::Nats(c) => Box::new(
                causeway_nats::NatsClient::connect(c.clone())
                    .await?
                    .consumer(None)
                    .await?,
            ),
            #[cfg(feature = "rabbitmq")]
            EndpointConfig::Rabbitmq(c) => Box::new(
                causeway_rabbitmq::RabbitClient::connect(c.clone())
                    .await?
                    .consumer(None)
                    .await?,
            ),
            #[cfg(feature = "sqs")]
            EndpointConfig::Sqs(c) => Box::new(
                causeway_sqs::SqsClient::connect(c.clone())
                    .await?
                    .consumer(None)
                    .await?,
            ),
            #[cfg(feature = "servicebus")]
            EndpointConfig::Servicebus(c) => {
                Box::new(causeway_servicebus::ServiceBusClient::connect(c.clone())?.consumer(None)?)
            }
        })
    }

    /// Connects to endpoint `name` and returns what it can do.
    pub async fn check(&self, name: &str) -> Result<Capabilities> {
        Ok(match self.config(name)? {
            EndpointConfig::Generator(g) => Generator::new(g.clone()).capabilities(),
            // Creating a producer contacts no broker: ask for metadata.
            #[cfg(feature = "kafka")]
            EndpointConfig::Kafka(c) => {
                let publisher = causeway_kafka::KafkaClient::new(c.clone()).publisher()?;
                publisher.ping(Duration::from_secs(10)).await?;
                causeway_core::Publisher::capabilities(&publisher)
            }
            // Building a client contacts no server: list queues, resolve the configured ones.
            #[cfg(feature = "sqs")]
            EndpointConfig::Sqs(c) => {
                let client = causeway_sqs::SqsClient::connect(c.clone()).await?;
                client.ping().await?;
                client.capabilities()
            }
            // Probes the key and each configured entity without changing anything.
            #[cfg(feature = "servicebus")]
            EndpointConfig::Servicebus(c) => {
                let client = causeway_servicebus::ServiceBusClient::connect(c.clone())?;
                client.ping().await?;
                client.capabilities()
            }
            _ => self.publisher(name).await?.capabilities(),
        })
    }

    /// Endpoint names and their types.
    pub fn describe(&self) -> Vec<(String, &'static str)> {
        self.configs
            .iter()
            .map(|(name, c)| {
                let kind = match c {
                    EndpointConfig::Memory(_) => "memory",
                    EndpointConfig::Generator(_) => "generator",
                    #[cfg(feature = "kafka")]
                    EndpointConfig::Kafka(_) => "kafka",
                    #[cfg(feature = "nats")]
                    EndpointConfig::Nats(_) => "nats",
                    #[cfg(feature = "rabbitmq")]
                    EndpointConfig::Rabbitmq(_) => "rabbitmq",
                    #[cfg(feature = "sqs")]
                    EndpointConfig::Sqs(_) => "sqs",
                    #[cfg(feature = "servicebus")]
                    EndpointConfig::Servicebus(_) => "servicebus",
                };
                (name.clone(), kind)
            })
            .collect()
    }
}

/// Synthetic FinBank transactions at a fixed rate; acks are accepted and forgotten.
struct Generator {
    config: GeneratorEndpoint,
    run: String,
    next: u64,
    started: Instant,
    settler: Arc<dyn Settler>,
}

struct Forget;

#[async_trait]
impl Settler for Forget {
    async fn settle(&self, _items: Vec<(u64, Settlement)>) -> causeway_core::Result<()> {
        Ok(())
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl Generator {
    fn new(config: GeneratorEndpoint) -> Self {
        Generator {
            config,
            // Ids are unique per run, so a restarted bridge is not taken for a replay.
            run: format!(
                "{:x}-{}",
                chrono::Utc::now().timestamp_millis(),
                RUNS.fetch_add(1, AtomicOrdering::Relaxed)
            ),
            next: 0,
            started: Instant::now(),
            settler: Arc::new(Forget),
        }
    }

    fn event(&self, n: u64) -> Event {
        let account = n % u64::from(self.config.keys.max(1));
        let amount = (n * 7919) % 100_000;
        let mut payload =
            format!(r#"{{"account":"acct-{account}","amount_cents":{amount},"currency":"EUR"}}"#)
                .into_bytes();
        payload.resize(payload.len().max(self.config.payload_bytes), b' ');
        Event::new(
            format!("{}-{n}", self.run),
            "causeway://generator/finbank",
            "finbank.transaction.created",
        )
        .with_key(format!("acct-{account}"))
        .with_content_type("application/json")
        .with_payload(payload)
    }
}

#[async_trait]
impl Consumer for Generator {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_bytes: usize::MAX,
            max_batch: usize::MAX,
            ..Capabilities::default()
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> causeway_core::Result<Vec<Delivery>> {
        let rate = f64::from(self.config.rate.max(1));
        let due = |started: Instant| (started.elapsed().as_secs_f64() * rate) as u64;
        if due(self.started) <= self.next {
            let until_next = Duration::from_secs_f64((self.next + 1) as f64 / rate)
                .saturating_sub(self.started.elapsed());
            tokio::time::sleep(until_next.min(wait)).await;
        }
        let available = due(self.started).saturating_sub(self.next).min(max as u64);
        let batch = (0..available)
            .map(|i| {
                let n = self.next + i;
                Delivery::new(self.event(n), Ticket::new(self.settler.clone(), n, None, 1))
            })
            .collect();
        self.next += available;
        Ok(batch)
    }
}
