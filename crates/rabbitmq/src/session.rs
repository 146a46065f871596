//! Connections: one live channel per session, reopened (and the topology
//! re-declared) after it is lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::{ExchangeKind, QueueConfig, QueueKind, RabbitConfig};
use crate::error::{Error, bounded};

/// An open connection and its confirm-mode channel.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    /// Delay queues declared on this link, with when each was last declared.
    delay_queues: std::sync::Mutex<HashMap<u64, Instant>>,
    /// Confirm-mode channels for publish calls, one call at a time each.
    spare_channels: std::sync::Mutex<Vec<Channel>>,
}

/// Holds at most one live link and reopens it on demand.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) config: Arc<RabbitConfig>,
    pub(crate) queue: Option<QueueConfig>,
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

impl Session {
    pub(crate) fn new(config: Arc<RabbitConfig>, queue: Option<QueueConfig>) -> Self {
        Session {
            config,
            queue,
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// The live link, opening a new one (and declaring the topology) if needed.
    pub(crate) async fn link(&self) -> Result<Arc<Link>, Error> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref()
            && link.channel.status().connected()
        {
            return Ok(link.clone());
        }
        // A handshake that never completes must not hold the session forever.
        let opened = tokio::time::timeout(Duration::from_secs(15), self.open())
            .await
            .map_err(|_| {
                Error::new(
                    "connect",
                    causeway_core::ErrorKind::Timeout,
                    "no AMQP handshake within 15 s",
                )
            })?;
        let link = Arc::new(opened?);
        *current = Some(link.clone());
        Ok(link)
    }

    /// Forgets `link` after a failure on it, so the next call reconnects.
    /// The old connection is closed in the background, bounded in time: a
    /// broken connection may never answer the close, and nothing may wait on it.
    pub(crate) async fn invalidate(&self, link: &Arc<Link>) {
        {
            let mut current = self.link.lock().await;
            if current.as_ref().is_some_and(|l| Arc::ptr_eq(l, link)) {
                *current = None;
            }
        }
        let link = link.clone();
        tokio::spawn(async move {
            let close = link
                .connection
                .close(200, ShortString::from("causeway reconnecting"));
            let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
        });
    }

    /// Closes the live link, if any (bounded in time, like `invalidate`).
    pub(crate) async fn close(&self) {
        let link = self.link.lock().await.take();
        if let Some(link) = link {
            let closing = async {
                let _ = link
                    .channel
                    .close(200, ShortString::from("causeway closing"))
                    .await;
                let _ = link
                    .connection
                    .close(200, ShortString::from("causeway closing"))
                    .await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
        }
    }

    async fn open(&self) -> Result<Link, Error> {
        let connection = Connection::connect(
            &self.config.url,
            ConnectionProperties::default().with_connection_name("causeway".into()),
        )
        .await
        .map_err(|e| Error::lapin("connect", e))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| Error::lapin("open channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| Error::lapin("confirm select", e))?;
        declare(&channel, &self.config, self.queue.as_ref()).await?;
        Ok(Link {
            connection,
            channel,
            delay_queues: std::sync::Mutex::default(),
            spare_channels: std::sync::Mutex::default(),
        })
    }
}

impl Link {
    /// A confirm-mode channel for one publish call alone; give it back
    /// with [`Link::give_back`]. lapin hands a returned (unroutable)
    /// message to whichever pending confirm an ack covering several
    /// completes first, so calls sharing a channel received each other's
    /// returns: an event that was delivered reported unroutable, and the
    /// unroutable one reported delivered. With a channel per call, every
    /// return stays within the call that sent the message. (Submitted
    /// calls share one such channel, the publisher's lane, whose one
    /// confirm reader keeps the returns apart: `crate::lane`.)
    pub(crate) async fn publish_channel(&self) -> Result<Channel, Error> {
        loop {
            let spare = self
                .spare_channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            match spare {
                Some(channel) if channel.status().connected() => return Ok(channel),
                Some(_) => continue,
                None => break,
            }
        }
        let channel = bounded("open channel", self.connection.create_channel()).await?;
        bounded(
            "confirm select",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(channel)
    }

    /// Returns a channel from [`Link::publish_channel`] for the next call.
    pub(crate) fn give_back(&self, channel: Channel) {
        if channel.status().connected() {
            self.spare_channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(channel);
        }
    }

    /// The delay queue for `bucket_ms`: its TTL dead-letters messages back
    /// to `queue` through the default exchange, and RabbitMQ deletes it,
    /// messages and all, once it has been unused for `idle` past its TTL.
    /// Publishing does not count as use; declaring does. So the queue is
    /// declared again whenever the last declaration is older than half of
    /// `idle`: every copy published here then has at least its TTL plus
    /// half of `idle` before the queue could expire.
    pub(crate) async fn delay_queue(
        &self,
        queue: &str,
        bucket_ms: u64,
        idle: Duration,
    ) -> Result<String, Error> {
        let name = format!("{queue}.delay.{bucket_ms}ms");
        let fresh = self
            .delay_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&bucket_ms)
            .is_some_and(|at| at.elapsed() < idle / 2);
        if !fresh {
            let declared_at = Instant::now();
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(bucket_ms as i64),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(queue)),
            );
            args.insert(
                "x-expires".into(),
                AMQPValue::LongLongInt(bucket_ms as i64 + idle.as_millis() as i64),
            );
            bounded(
                "declare delay queue",
                self.channel.queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                ),
            )
            .await?;
            self.delay_queues
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(bucket_ms, declared_at);
        }
        Ok(name)
    }
}

/// Delays round up to one of these, so a few delay queues serve every
/// backoff (one TTL per queue: messages never wait behind longer ones).
const DELAY_BUCKETS_MS: [u64; 13] = [
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000, 1_800_000,
    3_600_000,
];

/// The bucket a delay goes to: the smallest at least as long, at most an hour.
pub(crate) fn delay_bucket(delay: Duration) -> u64 {
    let ms = delay.as_millis() as u64;
    DELAY_BUCKETS_MS
        .iter()
        .copied()
        .find(|b| *b >= ms)
        .unwrap_or(3_600_000)
}

async fn declare(
    channel: &Channel,
    config: &RabbitConfig,
    queue: Option<&QueueConfig>,
) -> Result<(), Error> {
    if !config.exchange.is_empty() {
        declare_exchange(channel, config).await?;
    }
    let Some(q) = queue else { return Ok(()) };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    if let Some(dlq) = &q.dead_letter_queue {
        channel
            .queue_declare(dlq.as_str().into(), durable, FieldTable::default())
            .await
            .map_err(|e| Error::lapin("declare dead-letter queue", e))?;
    }
    channel
        .queue_declare(q.name.as_str().into(), durable, queue_arguments(q))
        .await
        .map_err(|e| Error::lapin("declare queue", e))?;
    if !config.exchange.is_empty() {
        for key in &q.bindings {
            channel
                .queue_bind(
                    q.name.as_str().into(),
                    config.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| Error::lapin("bind queue", e))?;
        }
    }
    Ok(())
}

/// The endpoint's exchange, durable, of its configured kind.
async fn declare_exchange(channel: &Channel, config: &RabbitConfig) -> Result<(), Error> {
    let kind = match config.exchange_kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::lapin("declare exchange", e))
}

/// A queue's `x-` arguments: its type, where the broker dead-letters
/// (delivery limit, expiry), and a quorum queue's delivery limit.
fn queue_arguments(q: &QueueConfig) -> FieldTable {
    let text = |v: &str| AMQPValue::LongString(LongString::from(v));
    let mut args = FieldTable::default();
    let queue_type = match q.kind {
        QueueKind::Classic => None,
        QueueKind::Quorum => Some("quorum"),
        QueueKind::Stream => Some("stream"),
    };
    if let Some(t) = queue_type {
        args.insert("x-queue-type".into(), text(t));
    }
    if q.kind != QueueKind::Stream
        && let Some(dlq) = &q.dead_letter_queue
    {
        // The broker's own dead-lettering (delivery limit, expiry) lands there too.
        args.insert("x-dead-letter-exchange".into(), text(""));
        args.insert("x-dead-letter-routing-key".into(), text(dlq));
    }
    if let (QueueKind::Quorum, Some(limit)) = (q.kind, q.delivery_limit) {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(limit)),
        );
    }
    args
}
