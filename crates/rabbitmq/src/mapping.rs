//! Event ↔ AMQP message: properties and `cloudEvents:` headers.

use bytes::Bytes;
use causeway_core::{Binding, Event, Result};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Header carrying how many deliveries a message has had, on copies that
/// come back from a delay queue (classic queues count nothing themselves).
pub(crate) const ATTEMPT_HEADER: &str = "x-causeway-attempt";

/// AMQP's short strings (header names, `message_id`, `content_type`) hold
/// at most 255 bytes; a longer one would make a malformed frame.
pub(crate) const SHORT_STRING_MAX: usize = 255;

/// Whether `event` fits AMQP's short strings: `datacontenttype` and every
/// header name the binding makes. (An id too long for `message_id` is
/// still carried, in its `cloudEvents:id` header.) The error names the field.
pub(crate) fn check_short_strings(event: &Event) -> Result<()> {
    if let Some(ct) = &event.content_type
        && ct.len() > SHORT_STRING_MAX
    {
        return Err(causeway_core::Error::invalid_event(
            "datacontenttype",
            format!(
                "{} bytes; AMQP's content_type holds at most {SHORT_STRING_MAX}",
                ct.len()
            ),
        ));
    }
    for (name, _) in Binding::Amqp.encode(event) {
        if name.len() > SHORT_STRING_MAX {
            return Err(causeway_core::Error::invalid_event(
                "header name",
                format!(
                    "`{}…` is {} bytes; AMQP header names hold at most {SHORT_STRING_MAX}",
                    &name[..32.min(name.len())],
                    name.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Persistent properties for `event`: message id, content type and the
/// CloudEvents attributes as headers. Call [`check_short_strings`] first.
pub(crate) fn properties(event: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (name, value) in Binding::Amqp.encode(event) {
        headers.insert(
            ShortString::from(name.into_owned()),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if event.id.len() <= SHORT_STRING_MAX {
        props = props.with_message_id(ShortString::from(event.id.as_str()));
    }
    if let Some(ct) = &event.content_type {
        props = props.with_content_type(ShortString::from(ct.as_str()));
    }
    props
}

/// The text of a header value, for the types a CloudEvents header can have.
fn text(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// Rebuilds the event of a delivery.
pub(crate) fn decode(props: &BasicProperties, payload: Bytes) -> Result<Event> {
    let empty = FieldTable::default();
    let headers = props.headers().as_ref().unwrap_or(&empty);
    Binding::Amqp.decode(
        headers
            .inner()
            .iter()
            .filter_map(|(k, v)| text(v).map(|t| (k.as_str().as_bytes(), t))),
        props.content_type().as_ref().map(ShortString::as_str),
        payload,
    )
}

/// Deliveries so far: ours on delay copies, the quorum queue's count, or
/// the redelivered flag.
pub(crate) fn attempt(props: &BasicProperties, redelivered: bool) -> u32 {
    let headers = props.headers().as_ref();
    let number = |name: &str| {
        headers
            .and_then(|h| h.inner().get(name))
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(*n as u32),
                AMQPValue::LongInt(n) => Some(*n as u32),
                _ => None,
            })
    };
    let base = number(ATTEMPT_HEADER)
        .or_else(|| number("x-delivery-count").map(|n| n + 1))
        .unwrap_or(1);
    if redelivered { base.max(2) } else { base }
}

/// A copy of a delivered message with extra headers, for delay and dead-letter queues.
pub(crate) fn copy_with(props: &BasicProperties, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert(ShortString::from(*name), value.clone());
    }
    props.clone().with_headers(headers).with_delivery_mode(2)
}
