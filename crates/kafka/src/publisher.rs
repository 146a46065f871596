use async_trait::async_trait;
use causeway_core::publish::{StopAtFailure, destination_or_default};
use causeway_core::{
    Binding, Capabilities, Confirms, Error as CoreError, ErrorKind, Event, Position, Publisher,
    Receipt, Result,
};
use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::error::Error;

/// How long `connect` waits for the cluster's metadata: a handshake across
/// clouds takes a few round trips, not seconds.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Produces to Kafka: the batch is enqueued whole (librdkafka batches and
/// compresses it), then the delivery reports are awaited together.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    capabilities: Capabilities,
    default_topic: Option<String>,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// The Kafka headers of `event`: its CloudEvents attributes (Kafka
/// binding) unless it is raw, then its native headers and properties, every
/// value as bytes (docs/headers.md).
pub(crate) fn headers_of(event: &Event) -> OwnedHeaders {
    let mut headers =
        OwnedHeaders::new_with_capacity(8 + event.headers.len() + event.native.headers.len());
    if !event.is_raw() {
        for (key, value) in Binding::Kafka.encode(event) {
            headers = headers.insert(Header {
                key: key.as_ref(),
                value: Some(value.as_bytes()),
            });
        }
    }
    for header in Binding::Kafka.native_headers(event, &[]) {
        headers = headers.insert(Header {
            key: header.name.as_str(),
            value: Some(header.value.to_bytes().as_ref()),
        });
    }
    headers
}

/// The record key of `event`: the key as it arrived, else the ordering key.
pub(crate) fn key_of(event: &Event) -> Option<&[u8]> {
    event
        .native
        .key
        .as_deref()
        .or(event.key.as_deref().map(str::as_bytes))
}

impl KafkaPublisher {
    pub(crate) fn new(
        config: ClientConfig,
        capabilities: Capabilities,
        default_topic: Option<String>,
    ) -> Result<Self, Error> {
        Ok(KafkaPublisher {
            producer: config
                .create()
                .map_err(|e| Error::kafka("create producer", e))?,
            capabilities,
            default_topic,
        })
    }

    /// Asks the cluster for its metadata: proves the brokers answer.
    pub async fn ping(&self, timeout: std::time::Duration) -> Result<usize> {
        self.metadata(None, timeout).await
    }

    /// The cluster's metadata, of `topic` only if given; returns how many
    /// brokers it lists. librdkafka blocks for it, so it runs off the runtime.
    async fn metadata(&self, topic: Option<String>, timeout: std::time::Duration) -> Result<usize> {
        let producer = self.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            producer.client().fetch_metadata(topic.as_deref(), timeout)
        })
        .await
        .map_err(|e| CoreError::new(ErrorKind::Internal, e.to_string()))?
        .map_err(|e| Error::kafka("metadata", e))?;
        Ok(metadata.brokers().len())
    }

    /// Produces one record with raw headers (dead letters keep the original's).
    pub(crate) async fn produce_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Position> {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| Error::kafka("produce", e))?
            .await
            .map_err(|_| CoreError::new(ErrorKind::Closed, "producer closed"))?
            .map_err(|(e, _)| Error::kafka("produce", e))?;
        Ok(Position {
            partition: delivery.partition as u32,
            offset: delivery.offset as u64,
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Asks for the metadata of the default topic (of the cluster without
    /// one): librdkafka connects to the brokers and learns the partition
    /// leaders before the first batch waits for them, and an unreachable
    /// cluster is reported at start.
    async fn connect(&self) -> Result<()> {
        self.metadata(self.default_topic.clone(), CONNECT_TIMEOUT)
            .await
            .map(|_brokers| ())
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.submit(destination, events).await.await
    }

    /// Enqueues everything (librdkafka sends while we enqueue) and returns
    /// the deliveries to await: the idempotent producer writes a
    /// partition's messages in the order enqueued, across calls. Once one
    /// cannot be enqueued (a full queue) the rest of the call are not
    /// either, so no later event of its key overtakes it.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        let topic = match destination_or_default(
            destination,
            self.default_topic.as_deref(),
            "producer.default_topic",
        ) {
            Ok(topic) => topic,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let mut stop = StopAtFailure::default();
        let enqueued: Vec<Result<_>> = events
            .iter()
            .map(|event| {
                self.capabilities.admit(event)?;
                stop.check()?;
                let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                    .payload(&event.payload[..])
                    .headers(headers_of(event));
                if let Some(key) = key_of(event) {
                    record = record.key(key);
                }
                self.producer.send_result(record).map_err(|(e, _)| {
                    let e: CoreError = Error::kafka("enqueue", e).into();
                    stop.note(&e);
                    e
                })
            })
            .collect();
        Box::pin(async move {
            Ok(join_all(enqueued.into_iter().map(|e| async move {
                let delivery = e?
                    .await
                    .map_err(|_| CoreError::new(ErrorKind::Closed, "producer closed"))?
                    .map_err(|(e, _)| Error::kafka("produce", e))?;
                Ok(Receipt {
                    position: Some(Position {
                        partition: delivery.partition as u32,
                        offset: delivery.offset as u64,
                    }),
                    duplicate: false,
                })
            }))
            .await)
        })
    }
}
