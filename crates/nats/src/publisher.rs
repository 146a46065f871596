use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_trait::async_trait;
use causeway_core::message::KEY_HEADER;
use causeway_core::publish::{StopAtFailure, destination_or_default};
use causeway_core::{
    Binding, Capabilities, Confirms, Error as CoreError, ErrorKind, Event, Position, Publisher,
    Receipt, Result,
};
use futures_util::future::join_all;

use crate::error::Error;

/// Publishes to JetStream, pipelined: the whole batch is sent, then the
/// PubAcks are awaited together.
#[derive(Clone, Debug)]
pub struct NatsPublisher {
    jetstream: async_nats::jetstream::Context,
    /// Where an event goes when the route names no subject.
    default_subject: Option<String>,
    capabilities: Capabilities,
}

/// The NATS headers of `event`: CloudEvents attributes per the NATS binding
/// (unless it is raw), its native headers and properties as text (a name
/// may repeat), and the event's (source, id) key as `Nats-Msg-Id` for the
/// stream's duplicate window. A native header NATS cannot carry (bytes
/// that are not UTF-8, a control character, a name with `:` or a space)
/// fails this event alone.
pub(crate) fn headers_of(event: &Event) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    if !event.is_raw() {
        for (name, value) in Binding::Nats.encode(event) {
            headers.insert(name.as_ref(), value.as_str());
        }
    }
    for header in Binding::Nats.native_headers(event, &[]) {
        let bad = |why: &str| {
            CoreError::invalid_event(
                &header.name,
                format!(
                    "a NATS header cannot carry this {} value: {why}",
                    header.value.type_name()
                ),
            )
        };
        if header.name.is_empty()
            || header
                .name
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(bad("the name is not a NATS header name"));
        }
        let text = header
            .value
            .to_text()
            .ok_or_else(|| bad("it is not UTF-8"))?;
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad("it holds a control character"));
        }
        headers.append(header.name.as_str(), text.as_ref());
    }
    if event.is_raw()
        && let Some(key) = &event.key
    {
        // A NATS message has no key: a raw one's travels as a header.
        headers.insert(KEY_HEADER, key.as_str());
    }
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        event.dedup_id().as_str(),
    );
    Ok(headers)
}

/// The largest header block JetStream stores (the server refuses a longer
/// one with error 10097, "header size exceeds maximum allowed of 64k").
const MAX_HEADER_BLOCK: usize = u16::MAX as usize;

/// The length of `headers` on the wire: `NATS/1.0\r\n`, a `name: value\r\n`
/// line per value, and the closing `\r\n`.
fn header_block_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|v| name.len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// A subject to publish to: tokens separated by `.`, none empty, no
/// wildcard (`*`, `>`) and no white space. A destination rendered from an
/// event that breaks this is the event's fault (it fails, and is
/// dead-lettered, alone); async-nats would refuse it or, for `*`/`>`,
/// JetStream would.
fn valid_subject(subject: &str) -> Result<&str> {
    let bad = |why: &str| {
        Err(CoreError::invalid_event(
            "destination",
            format!(
                "`{}` is not a NATS subject to publish to: {why}",
                causeway_core::dead_letter::escape(subject)
            ),
        ))
    };
    if subject.split('.').any(str::is_empty) {
        return bad("an empty token");
    }
    if subject.contains(['*', '>']) {
        return bad("a wildcard");
    }
    if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return bad("white space");
    }
    Ok(subject)
}

impl NatsPublisher {
    pub(crate) fn new(
        jetstream: async_nats::jetstream::Context,
        default_subject: Option<String>,
        capabilities: Capabilities,
    ) -> Self {
        NatsPublisher {
            jetstream,
            default_subject,
            capabilities,
        }
    }

    fn subject<'a>(&'a self, destination: &'a str) -> Result<&'a str> {
        if !destination.is_empty() {
            return valid_subject(destination);
        }
        destination_or_default(
            destination,
            self.default_subject.as_deref(),
            "publish.default_subject",
        )
    }

    /// Sends one event; the returned future resolves with its PubAck.
    async fn send(&self, subject: &str, event: &Event) -> Result<PublishAckFuture> {
        self.capabilities.admit(event)?;
        let headers = headers_of(event)?;
        let size = header_block_len(&headers);
        if size > MAX_HEADER_BLOCK {
            // JetStream refuses it whatever its payload (error 10097): the
            // event's own attributes are too big for this sink.
            return Err(CoreError::new(
                ErrorKind::TooLarge,
                format!(
                    "its NATS headers take {size} bytes; JetStream takes at most {MAX_HEADER_BLOCK}"
                ),
            ));
        }
        let message = PublishMessage::build()
            .payload(event.payload.clone())
            .headers(headers);
        Ok(self
            .jetstream
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(Error::publish)?)
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    async fn publish(&self, destination: &str, events: &[Event]) -> Result<Vec<Result<Receipt>>> {
        self.submit(destination, events).await.await
    }

    /// Sends everything on the connection, in order, and returns the
    /// acks to await: they come back while later calls go out. After a
    /// send fails (not one event's own fault) nothing more of the call
    /// goes out, so no later event of its key overtakes it.
    async fn submit(&self, destination: &str, events: &[Event]) -> Confirms {
        let subject = match self.subject(destination) {
            Ok(subject) => subject,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let mut pending = Vec::with_capacity(events.len());
        let mut stop = StopAtFailure::default();
        for event in events {
            let sent = match stop.check() {
                Ok(()) => self.send(subject, event).await,
                Err(held) => Err(held),
            };
            if let Err(e) = &sent {
                stop.note(e);
            }
            pending.push(sent);
        }
        Box::pin(async move {
            Ok(join_all(pending.into_iter().map(|sent| async move {
                let ack = sent?.await.map_err(Error::publish)?;
                Ok(Receipt {
                    position: Some(Position {
                        partition: 0,
                        offset: ack.sequence,
                    }),
                    duplicate: ack.duplicate,
                })
            }))
            .await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_over_jetstreams_header_limit_are_too_large() {
        let e = Event::new("big", "test://nats", "t").with_header("bigext", "x".repeat(70_000));
        let size = header_block_len(&headers_of(&e).unwrap());
        assert!(size > MAX_HEADER_BLOCK, "{size}");
        let small = Event::new("small", "test://nats", "t").with_header("ext", "x".repeat(16_384));
        assert!(header_block_len(&headers_of(&small).unwrap()) < MAX_HEADER_BLOCK);
    }

    #[test]
    fn subjects_from_templates_are_checked() {
        assert!(valid_subject("orders.eu.created").is_ok());
        for bad in ["orders.", ".orders", "a..b", "a.*", "a.>", "a b", ""] {
            let e = valid_subject(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidEvent, "{bad}: {e}");
        }
    }
}
