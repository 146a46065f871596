//! The publisher's lane for submitted calls (`pipelined_order`): one
//! confirm-mode channel that calls are sent on one after another, so they
//! reach the broker in the order submitted, and one reader of its
//! confirms.
//!
//! lapin hands a returned (unroutable) message to whichever pending
//! confirm the next ack resolves, which on a shared channel may be another
//! call's. So no call reads its own confirms: the reader takes every
//! confirm of the channel, keeps the returns they carry by event id, and
//! answers the messages in the order they were sent, each once every
//! confirm resolved by then has been read. A message's return always comes
//! before its ack, so it is known by the time the message is answered.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use causeway_core::{Error as CoreError, ErrorKind, Receipt, Result};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::message::BasicReturnMessage;
use lapin::{Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::publisher::{nacked, unroutable};
use crate::session::Link;

/// One message sent on the lane: its event's id, its confirm, and where
/// its outcome goes.
pub(crate) struct Sent {
    pub(crate) id: String,
    pub(crate) confirm: PublisherConfirm,
    pub(crate) outcome: oneshot::Sender<Result<Receipt>>,
}

/// The lane's channel on one link, and its confirm reader's intake.
#[derive(Debug)]
pub(crate) struct Lane {
    link: Arc<Link>,
    pub(crate) channel: Channel,
    reader: mpsc::UnboundedSender<Sent>,
}

impl Lane {
    /// A lane on `channel`, its reader bounding each confirm by `timeout`.
    pub(crate) fn new(link: Arc<Link>, channel: Channel, timeout: Duration) -> Self {
        let (reader, intake) = mpsc::unbounded_channel();
        tokio::spawn(read_confirms(intake, timeout));
        Lane {
            link,
            channel,
            reader,
        }
    }

    /// Whether calls can still go on it: its channel is open on `link`,
    /// the session's live one.
    pub(crate) fn usable(&self, link: &Arc<Link>) -> bool {
        Arc::ptr_eq(&self.link, link) && self.channel.status().connected()
    }

    /// Hands a sent message's confirm to the reader, in sending order. Its
    /// outcome comes on the message's sender (dropped, should the reader
    /// be gone: the caller reports the message failed).
    pub(crate) fn watch(&self, sent: Sent) {
        let _ = self.reader.send(sent);
    }
}

/// What a confirm said: acked or nacked, or that it failed or timed out.
type Read = Result<bool>;

/// The reader: see the module's comment. Ends once the lane is dropped
/// and every confirm it took has been answered.
async fn read_confirms(mut intake: mpsc::UnboundedReceiver<Sent>, timeout: Duration) {
    // Messages not yet answered, by their place on the lane.
    let mut unanswered: BTreeMap<u64, (String, oneshot::Sender<Result<Receipt>>)> = BTreeMap::new();
    let mut read: HashMap<u64, Read> = HashMap::new();
    // Returns read so far, by the id of the event they carry.
    let mut returned: HashMap<String, Vec<String>> = HashMap::new();
    let mut confirms = FuturesUnordered::new();
    let mut next = 0u64;
    let mut open = true;
    loop {
        tokio::select! {
            sent = intake.recv(), if open => match sent {
                Some(Sent { id, confirm, outcome }) => {
                    let place = next;
                    next += 1;
                    unanswered.insert(place, (id, outcome));
                    confirms.push(async move { (place, tokio::time::timeout(timeout, confirm).await) });
                }
                None => open = false,
            },
            Some((place, confirmed)) = confirms.next(), if !confirms.is_empty() => {
                read.insert(place, take_return(confirmed, timeout, &mut returned));
                // Every confirm the same ack resolved is ready now: read
                // them too, so that their returns are known.
                while let Some(Some((place, confirmed))) = confirms.next().now_or_never() {
                    read.insert(place, take_return(confirmed, timeout, &mut returned));
                }
                while let Some(first) = unanswered.first_entry() {
                    let Some(acked) = read.remove(first.key()) else {
                        break;
                    };
                    let (id, outcome) = first.remove();
                    let _ = outcome.send(answer(&id, acked, &mut returned));
                }
            },
            else => break,
        }
    }
}

/// What a confirm said, keeping the return it carries (whichever
/// message's it is).
fn take_return(
    confirmed: std::result::Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: Duration,
    returned: &mut HashMap<String, Vec<String>>,
) -> Read {
    let confirmation = confirmed
        .map_err(|_| {
            CoreError::new(
                ErrorKind::Timeout,
                format!("no publisher confirm within {timeout:?}"),
            )
        })?
        .map_err(|e| Error::lapin("confirm", e))?;
    let (acked, message): (bool, Option<BasicReturnMessage>) = match confirmation {
        Confirmation::Ack(message) => (true, message),
        Confirmation::Nack(message) => (false, message),
        Confirmation::NotRequested => (true, None),
    };
    if let Some(message) = message {
        let (id, reason) = unroutable(&message);
        returned.entry(id).or_default().push(reason);
    }
    Ok(acked)
}

/// A message's outcome: its confirm's, or unroutable if a return for its
/// event was read.
fn answer(id: &str, acked: Read, returned: &mut HashMap<String, Vec<String>>) -> Result<Receipt> {
    let reason = returned.get_mut(id).and_then(Vec::pop);
    if returned.get(id).is_some_and(Vec::is_empty) {
        returned.remove(id);
    }
    if !acked? {
        return Err(nacked());
    }
    match reason {
        Some(reason) => Err(CoreError::new(ErrorKind::NotFound, reason)),
        None => Ok(Receipt::default()),
    }
}
