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
/// out, then its confirms are awaited together. At most `max_unconfirmed`
/// messages are outstanding across concurrent calls.
#[derive(Debug, Clone)]
pub struct RabbitPublisher {
    session: Arc<Session>,
    window: Arc<Semaphore>,
    capabilities: Capabilities,
}

impl RabbitPublisher {
    pub(crate) fn new(session: Session, capabilities: Capabilities) -> Self {
        let window = Arc::new(Semaphore::new(
            session.config.publish.max_unconfirmed.max(1),
        ));
        RabbitPublisher {
            session: Arc::new(session),
            window,
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
        let exchange = self.session.config.exchange.as_str();
        let mut confirms = Vec::with_capacity(events.len());
        let mut broken = None;
        for event in events {
            if let Err(e) = self.capabilities.admit(event) {
                confirms.push(Err(e));
                continue;
            }
            if let Some(e) = &broken {
                // The channel failed under an earlier message: nothing after it went out.
                confirms.push(Err(CoreError::clone(e)));
                continue;
            }
            let permit = self
                .window
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CoreError::new(ErrorKind::Closed, "publisher closed"))?;
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
                Ok(confirm) => confirms.push(Ok((confirm, permit))),
                Err(e) => {
                    let e = CoreError::from(e);
                    broken = Some(e.clone());
                    confirms.push(Err(e));
                }
            }
        }
        if broken.is_some() {
            self.session.invalidate(&link).await;
        }
        let timeout = self.session.config.publish.confirm_timeout;
        let outcomes = join_all(confirms.into_iter().map(|c| async move {
            let (confirm, _permit) = c?;
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
        .await;
        if outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Connection))
        {
            self.session.invalidate(&link).await;
        }
        Ok(outcomes)
    }
}
