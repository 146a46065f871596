use std::sync::Arc;

use async_trait::async_trait;
use causeway_core::{
    Capabilities, Error as CoreError, ErrorKind, Event, Publisher, Receipt, Result,
};
use futures_util::future::join_all;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use tokio::sync::Semaphore;

use crate::error::{Error, bounded};
use crate::mapping::properties;
use crate::session::Session;

/// Publishes persistent messages with publisher confirms: the batch goes
/// out, then its confirms are awaited together (a batch larger than the
/// window in window-sized chunks). At most `max_unconfirmed` messages are
/// outstanding across concurrent calls.
#[derive(Debug, Clone)]
pub struct RabbitPublisher {
    session: Arc<Session>,
    window: Arc<Semaphore>,
    window_size: usize,
    capabilities: Capabilities,
}

impl RabbitPublisher {
    pub(crate) fn new(session: Session, capabilities: Capabilities) -> Self {
        // Semaphore::acquire_many takes a u32.
        let window_size = session
            .config
            .publish
            .max_unconfirmed
            .clamp(1, u32::MAX as usize);
        RabbitPublisher {
            window: Arc::new(Semaphore::new(window_size)),
            window_size,
            session: Arc::new(session),
            capabilities,
        }
    }

    fn routing_key<'a>(&'a self, destination: &'a str) -> Result<&'a str> {
        if !destination.is_empty() {
            return Ok(destination);
        }
        self.session
            .config
            .publish
            .default_routing_key
            .as_deref()
            .ok_or_else(|| {
                CoreError::new(
                    ErrorKind::Config,
                    "no destination given and no publish.default_routing_key",
                )
            })
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let routing_key = self.routing_key(destination)?;
        let link = self.session.link().await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut broken = None;
        // A chunk takes its share of the window at once and is confirmed
        // before the next: a call never holds part of the window while
        // waiting for more, so concurrent calls (and batches larger than
        // the window) cannot wait for each other forever.
        for chunk in events.chunks(self.window_size) {
            let permits = self
                .window
                .clone()
                .acquire_many_owned(chunk.len() as u32)
                .await
                .map_err(|_| CoreError::new(ErrorKind::Closed, "publisher closed"))?;
            let confirms = self.send(&link, routing_key, chunk, &mut broken).await;
            outcomes.extend(self.confirmed(confirms).await);
            drop(permits);
        }
        if broken.is_some()
            || outcomes
                .iter()
                .any(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Connection))
        {
            self.session.invalidate(&link).await;
        }
        Ok(outcomes)
    }
}

impl RabbitPublisher {
    /// Sends `events`; after a channel failure nothing more goes out and
    /// the rest fail with the same error.
    async fn send(
        &self,
        link: &crate::session::Link,
        routing_key: &str,
        events: &[Event],
        broken: &mut Option<CoreError>,
    ) -> Vec<Result<lapin::PublisherConfirm>> {
        let exchange = self.session.config.exchange.as_str();
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            if let Err(e) = self
                .capabilities
                .admit(event)
                .and_then(|()| crate::mapping::check_short_strings(event))
            {
                confirms.push(Err(e));
                continue;
            }
            if let Some(e) = broken {
                // The channel failed under an earlier message: nothing after it went out.
                confirms.push(Err(CoreError::clone(e)));
                continue;
            }
            let sent = bounded(
                "publish",
                link.channel.basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    // Mandatory: a message no queue takes comes back as an error.
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &event.payload,
                    properties(event),
                ),
            )
            .await;
            match sent {
                Ok(confirm) => confirms.push(Ok(confirm)),
                Err(e) => {
                    let e = CoreError::from(e);
                    *broken = Some(e.clone());
                    confirms.push(Err(e));
                }
            }
        }
        confirms
    }

    /// Awaits the confirms together, each bounded by `confirm_timeout`.
    async fn confirmed(
        &self,
        confirms: Vec<Result<lapin::PublisherConfirm>>,
    ) -> Vec<Result<Receipt>> {
        let timeout = self.session.config.publish.confirm_timeout;
        join_all(confirms.into_iter().map(|c| async move {
            let confirm = c?;
            let confirmed = tokio::time::timeout(timeout, confirm).await.map_err(|_| {
                CoreError::new(
                    ErrorKind::Timeout,
                    format!("no publisher confirm within {timeout:?}"),
                )
            })?;
            match confirmed.map_err(|e| Error::lapin("confirm", e))? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Receipt::default()),
                Confirmation::Ack(Some(returned)) => Err(CoreError::new(
                    ErrorKind::NotFound,
                    format!(
                        "unroutable: no queue bound for routing key `{}` ({} {})",
                        returned.delivery.routing_key, returned.reply_code, returned.reply_text
                    ),
                )),
                // The broker could not store it; it may next time.
                Confirmation::Nack(_) => Err(CoreError::temporary(
                    ErrorKind::Unavailable,
                    "the broker nacked the message",
                )),
            }
        }))
        .await
    }
}
