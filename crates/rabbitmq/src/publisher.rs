use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use causeway_core::publish::{StopAtFailure, destination_or_default};
use causeway_core::{
    Capabilities, Confirms, Error as CoreError, ErrorKind, Event, Publisher, Receipt, Result,
};
use futures_util::future::join_all;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::error::{Error, bounded};
use crate::lane::{Lane, Sent};
use crate::mapping::properties;
use crate::session::{Link, Session};

/// Publishes persistent messages with publisher confirms: the batch goes
/// out, then its confirms are awaited together (a batch larger than the
/// window in window-sized chunks). At most `max_unconfirmed` messages are
/// outstanding across concurrent calls. A `publish` call has a channel of
/// its own; submitted calls go one after another on the publisher's lane
/// (`crate::lane`), in the order submitted.
#[derive(Debug, Clone)]
pub struct RabbitPublisher {
    session: Arc<Session>,
    window: Arc<Semaphore>,
    window_size: usize,
    capabilities: Capabilities,
    /// The channel submitted calls share, opened by the first.
    lane: Arc<tokio::sync::Mutex<Option<Lane>>>,
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
            lane: Arc::default(),
        }
    }

    fn routing_key<'a>(&'a self, destination: &'a str) -> Result<&'a str> {
        destination_or_default(
            destination,
            self.session.config.publish.default_routing_key.as_deref(),
            "publish.default_routing_key",
        )
    }
}

#[async_trait]
impl Publisher for RabbitPublisher {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Opens the connection (declaring the topology) and one confirm-mode
    /// channel, kept for the first publish.
    async fn connect(&self) -> Result<()> {
        let link = self.session.link().await?;
        link.give_back(self.channel_on(&link).await?);
        let mut lane = self.lane.lock().await;
        self.lane_on(&link, &mut lane).await.map(|_| ())
    }

    /// Sends the call on the lane, after the calls submitted before it,
    /// and returns its outcomes to await. A call larger than the window
    /// goes as `publish` sends it (confirmed chunk by chunk).
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        if events.len() > self.window_size {
            let answer = self.publish(destination, events).await;
            return Box::pin(std::future::ready(answer));
        }
        match self.hand_over(destination, events).await {
            Ok(confirms) => confirms,
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        let routing_key = self.routing_key(destination)?;
        let link = self.session.link().await?;
        let channel = self.channel_on(&link).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut broken = None;
        // Set when a chunk had a message not confirmed: later chunks do
        // not go, so no later event of its key passes it (`ordered_publish`).
        let mut stop = StopAtFailure::default();
        // A chunk takes its share of the window at once and is confirmed
        // before the next: a call never holds part of the window while
        // waiting for more, so concurrent calls (and batches larger than
        // the window) cannot wait for each other forever.
        for chunk in events.chunks(self.window_size) {
            if let Err(held) = stop.check() {
                outcomes.extend(chunk.iter().map(|_| Err(held.clone())));
                continue;
            }
            let permits = self.window_for(chunk.len()).await?;
            let confirms = self.send(&channel, routing_key, chunk, &mut broken).await;
            let confirmed = self.confirmed(chunk, confirms).await;
            drop(permits);
            for e in confirmed.iter().filter_map(|o| o.as_ref().err()) {
                stop.note(e);
            }
            outcomes.extend(confirmed);
        }
        link.give_back(channel);
        if lost_link(broken.as_ref(), &outcomes) {
            self.session.invalidate(&link).await;
        }
        Ok(outcomes)
    }
}

impl RabbitPublisher {
    /// `messages` places in the window of unconfirmed messages (at most
    /// its size: callers send larger calls in chunks).
    async fn window_for(&self, messages: usize) -> Result<OwnedSemaphorePermit> {
        self.window
            .clone()
            .acquire_many_owned(messages as u32)
            .await
            .map_err(|_| CoreError::new(ErrorKind::Closed, "publisher closed"))
    }

    /// A confirm-mode channel on `link`; a link that cannot open one is
    /// given up, for the next call to open another.
    async fn channel_on(&self, link: &Arc<Link>) -> Result<lapin::Channel> {
        match link.publish_channel().await {
            Ok(channel) => Ok(channel),
            Err(e) => {
                self.session.invalidate(link).await;
                Err(e.into())
            }
        }
    }

    /// The lane's channel on `link`, opened anew when the lane has none
    /// there (first use, a lost channel or link).
    async fn lane_on<'a>(&self, link: &Arc<Link>, lane: &'a mut Option<Lane>) -> Result<&'a Lane> {
        if let Some(open) = lane.take_if(|l| l.usable(link)) {
            return Ok(lane.insert(open));
        }
        let channel = self.channel_on(link).await?;
        let timeout = self.session.config.publish.confirm_timeout;
        Ok(lane.insert(Lane::new(link.clone(), channel, timeout)))
    }

    /// [`Publisher::submit`] of a call within the window.
    async fn hand_over(&self, destination: &str, events: &[Event]) -> Result<Confirms> {
        let routing_key = self.routing_key(destination)?;
        let permits = self.window_for(events.len()).await?;
        let link = self.session.link().await?;
        let mut lane = self.lane.lock().await;
        let open = self.lane_on(&link, &mut lane).await?;
        let mut broken = None;
        let sent = self
            .send(&open.channel, routing_key, events, &mut broken)
            .await;
        let outcomes: Vec<Result<oneshot::Receiver<Result<Receipt>>>> = events
            .iter()
            .zip(sent)
            .map(|(event, sent)| {
                let (outcome, answer) = oneshot::channel();
                open.watch(Sent {
                    id: event.id.clone(),
                    confirm: sent?,
                    outcome,
                });
                Ok(answer)
            })
            .collect();
        drop(lane);
        let session = self.session.clone();
        Ok(Box::pin(async move {
            let mut answers = Vec::with_capacity(outcomes.len());
            for outcome in outcomes {
                answers.push(match outcome {
                    Ok(answer) => answer.await.unwrap_or_else(|_| {
                        Err(CoreError::new(
                            ErrorKind::Connection,
                            "the channel's confirm reader stopped",
                        ))
                    }),
                    Err(e) => Err(e),
                });
            }
            drop(permits);
            if lost_link(broken.as_ref(), &answers) {
                session.invalidate(&link).await;
            }
            Ok(answers)
        }))
    }

    /// Sends `events`; after a channel failure nothing more goes out and
    /// the rest fail with the same error.
    async fn send(
        &self,
        channel: &lapin::Channel,
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
                channel.basic_publish(
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
    /// A returned (unroutable) message is matched to its event by the
    /// event's id, whichever confirm lapin handed it to.
    async fn confirmed(
        &self,
        events: &[Event],
        confirms: Vec<Result<lapin::PublisherConfirm>>,
    ) -> Vec<Result<Receipt>> {
        let timeout = self.session.config.publish.confirm_timeout;
        let results: Vec<Result<Option<lapin::message::BasicReturnMessage>>> =
            join_all(confirms.into_iter().map(|c| async move {
                let confirm = c?;
                let confirmed = tokio::time::timeout(timeout, confirm).await.map_err(|_| {
                    CoreError::new(
                        ErrorKind::Timeout,
                        format!("no publisher confirm within {timeout:?}"),
                    )
                })?;
                match confirmed.map_err(|e| Error::lapin("confirm", e))? {
                    Confirmation::Ack(returned) => Ok(returned),
                    Confirmation::NotRequested => Ok(None),
                    // The broker could not store it; it may next time.
                    Confirmation::Nack(_) => Err(nacked()),
                }
            }))
            .await;
        // Every return of this call, by the id of the event it carries.
        let mut returned: HashMap<String, Vec<String>> = HashMap::new();
        for r in results.iter().flatten().flatten() {
            let (id, reason) = unroutable(r);
            returned.entry(id).or_default().push(reason);
        }
        events
            .iter()
            .zip(results)
            .map(|(event, result)| {
                result?;
                match returned.get_mut(&event.id).and_then(Vec::pop) {
                    Some(reason) => Err(CoreError::new(ErrorKind::NotFound, reason)),
                    None => Ok(Receipt::default()),
                }
            })
            .collect()
    }
}

/// Whether a call's outcomes show its link is gone (a channel failure
/// while sending, a message lost with the connection): the session opens
/// a new one for the next call.
fn lost_link(broken: Option<&CoreError>, outcomes: &[Result<Receipt>]) -> bool {
    broken.is_some()
        || outcomes
            .iter()
            .any(|o| o.as_ref().is_err_and(|e| e.kind() == ErrorKind::Connection))
}

/// The broker could not store a message; it may next time.
pub(crate) fn nacked() -> CoreError {
    CoreError::temporary(ErrorKind::Unavailable, "the broker nacked the message")
}

/// A returned message: the id of the event it carries, and why it came back.
pub(crate) fn unroutable(r: &lapin::message::BasicReturnMessage) -> (String, String) {
    let reason = format!(
        "unroutable: no queue bound for routing key `{}` ({} {})",
        r.delivery.routing_key, r.reply_code, r.reply_text
    );
    (returned_id(r), reason)
}

/// The event id a returned message carries: its `cloudEvents:id` header,
/// or its message id.
fn returned_id(r: &lapin::message::BasicReturnMessage) -> String {
    let properties = &r.delivery.properties;
    let header = properties.headers().as_ref().and_then(|h| {
        h.inner()
            .iter()
            .find(|(name, _)| name.as_str() == "cloudEvents:id")
            .and_then(|(_, v)| match v {
                lapin::types::AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                lapin::types::AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            })
    });
    header
        .or_else(|| {
            properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
        })
        .unwrap_or_default()
}
