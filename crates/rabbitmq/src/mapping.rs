//! Event ↔ AMQP message: properties, `cloudEvents:` headers and the
//! message's own headers with their types (docs/headers.md).

use bytes::Bytes;
use causeway_core::message::{KEY_HEADER, property};
use causeway_core::{Binding, Error, Event, Header, Incoming, InputFormat, Result, Value};
use chrono::DateTime;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, ByteArray, FieldTable, LongString, ShortString};

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
    let native = Binding::Amqp
        .native_headers(event, NATIVE_PROPERTIES)
        .map(|h| h.name.clone());
    let binding = Binding::Amqp
        .encode(event)
        .into_iter()
        .map(|(name, _)| name.into_owned());
    for name in binding.chain(native) {
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
    for p in &event.native.properties {
        let long = p
            .value
            .to_text()
            .is_some_and(|t| t.len() > SHORT_STRING_MAX);
        if NATIVE_PROPERTIES.contains(&p.name.as_str()) && long {
            return Err(Error::invalid_event(
                &p.name,
                format!(
                    "AMQP's {} property holds at most {SHORT_STRING_MAX} bytes",
                    p.name
                ),
            ));
        }
    }
    Ok(())
}

/// The properties AMQP has a place for; others travel as headers.
const NATIVE_PROPERTIES: &[&str] = &[
    property::MESSAGE_ID,
    property::CORRELATION_ID,
    property::REPLY_TO,
    property::TYPE,
    property::APP_ID,
    property::USER_ID,
    property::TIMESTAMP,
    property::EXPIRATION,
    property::PRIORITY,
    property::CONTENT_ENCODING,
];

/// Headers RabbitMQ and causeway add for their own bookkeeping: not the
/// message's, so not carried on.
fn is_bookkeeping(name: &str) -> bool {
    name == ATTEMPT_HEADER
        || name == "x-delivery-count"
        || name == "x-death"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// An AMQP header value as a typed [`Value`]; `None` for the types that
/// have no counterpart (field tables, arrays, void).
fn value_of(value: &AMQPValue) -> Option<Value> {
    Some(match value {
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => Value::Text(text.to_owned()),
            Err(_) => Value::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        },
        AMQPValue::ShortString(s) => Value::Text(s.as_str().to_owned()),
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortShortUInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortInt(n) => Value::Int((*n).into()),
        AMQPValue::ShortUInt(n) => Value::Int((*n).into()),
        AMQPValue::LongInt(n) => Value::Int((*n).into()),
        AMQPValue::LongUInt(n) => Value::Int((*n).into()),
        AMQPValue::LongLongInt(n) => Value::Int(*n),
        AMQPValue::Float(f) => Value::Float((*f).into()),
        AMQPValue::Double(f) => Value::Float(*f),
        AMQPValue::DecimalValue(d) => Value::Decimal(decimal_text(d.value, d.scale)),
        AMQPValue::Timestamp(t) => {
            Value::Time(DateTime::from_timestamp(i64::try_from(*t).ok()?, 0)?)
        }
        AMQPValue::ByteArray(b) => Value::Bytes(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::FieldArray(_) | AMQPValue::FieldTable(_) | AMQPValue::Void => return None,
    })
}

fn decimal_text(value: u32, scale: u8) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

/// A typed value as the AMQP type that holds it (docs/headers.md).
fn amqp_value(value: &Value) -> AMQPValue {
    match value {
        Value::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_ref())),
        Value::Text(s) | Value::Decimal(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Int(n) => AMQPValue::LongLongInt(*n),
        Value::Float(f) => AMQPValue::Double(*f),
        Value::Time(t) => AMQPValue::Timestamp(u64::try_from(t.timestamp()).unwrap_or(0)),
    }
}

/// Persistent properties for `event`: message id, content type, its broker
/// properties, the CloudEvents attributes as headers (unless it is raw) and
/// its native headers. Call [`check_short_strings`] first.
pub(crate) fn properties(event: &Event) -> BasicProperties {
    let mut headers = FieldTable::default();
    if !event.is_raw() {
        for (name, value) in Binding::Amqp.encode(event) {
            headers.insert(
                ShortString::from(name.into_owned()),
                AMQPValue::LongString(LongString::from(value)),
            );
        }
    }
    for header in Binding::Amqp.native_headers(event, NATIVE_PROPERTIES) {
        headers.insert(
            ShortString::from(header.name.as_str()),
            amqp_value(&header.value),
        );
    }
    if event.is_raw()
        && let Some(key) = &event.key
    {
        // An AMQP message has no key: a raw one's travels as a header.
        headers.insert(
            ShortString::from(KEY_HEADER),
            AMQPValue::LongString(LongString::from(key.as_str())),
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
    for p in &event.native.properties {
        let text = || ShortString::from(p.value.to_text().unwrap_or_default().into_owned());
        props = match p.name.as_str() {
            property::MESSAGE_ID => props.with_message_id(text()),
            property::CORRELATION_ID => props.with_correlation_id(text()),
            property::REPLY_TO => props.with_reply_to(text()),
            property::TYPE => props.with_type(text()),
            property::APP_ID => props.with_app_id(text()),
            property::USER_ID => props.with_user_id(text()),
            property::EXPIRATION => props.with_expiration(text()),
            property::CONTENT_ENCODING => props.with_content_encoding(text()),
            property::TIMESTAMP => match &p.value {
                Value::Time(t) => props.with_timestamp(u64::try_from(t.timestamp()).unwrap_or(0)),
                _ => props,
            },
            property::PRIORITY => match &p.value {
                Value::Int(n) => props.with_priority(u8::try_from(*n).unwrap_or(0)),
                _ => props,
            },
            _ => props,
        };
    }
    props
}

/// Reads a delivery as `format` says: headers with their types, the
/// properties AMQP has, the content type. A header of a type causeway
/// cannot carry (a nested table or array, void) makes it undecodable.
pub(crate) fn decode(
    props: &BasicProperties,
    payload: Bytes,
    origin: String,
    format: InputFormat,
) -> Result<Event> {
    let mut incoming = Incoming {
        origin,
        payload,
        content_type: props.content_type().as_ref().map(|c| c.as_str().to_owned()),
        ..Incoming::default()
    };
    for (name, value) in props.headers().iter().flat_map(|t| t.inner().iter()) {
        if is_bookkeeping(name.as_str()) {
            continue;
        }
        if name.as_str() == KEY_HEADER {
            incoming.key = value_of(value).map(|v| Bytes::from(v.to_bytes().into_owned()));
            continue;
        }
        let value = value_of(value).ok_or_else(|| {
            Error::invalid_event(
                name.as_str(),
                format!("an AMQP {:?} header cannot be carried", value.get_type()),
            )
        })?;
        incoming.headers.push(Header::new(name.as_str(), value));
    }
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| Value::Text(s.as_str().to_owned()));
    let properties = [
        (property::MESSAGE_ID, text(props.message_id())),
        (property::CORRELATION_ID, text(props.correlation_id())),
        (property::REPLY_TO, text(props.reply_to())),
        (property::TYPE, text(props.kind())),
        (property::APP_ID, text(props.app_id())),
        (property::USER_ID, text(props.user_id())),
        (property::EXPIRATION, text(props.expiration())),
        (property::CONTENT_ENCODING, text(props.content_encoding())),
        (
            property::TIMESTAMP,
            props
                .timestamp()
                .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
                .map(Value::Time),
        ),
        (
            property::PRIORITY,
            props.priority().map(|p| Value::Int(p.into())),
        ),
    ];
    incoming.properties = properties
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| Header::new(name, v)))
        .collect();
    Binding::Amqp.read(format, incoming)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale() {
        assert_eq!(decimal_text(150, 2), "1.50");
        assert_eq!(decimal_text(5, 3), "0.005");
        assert_eq!(decimal_text(42, 0), "42");
    }

    #[test]
    fn typed_headers_and_properties_round_trip() {
        let mut headers = FieldTable::default();
        headers.insert("n".into(), AMQPValue::LongInt(-7));
        headers.insert("b".into(), AMQPValue::Boolean(true));
        headers.insert("s".into(), AMQPValue::LongString("zürich".into()));
        headers.insert("x".into(), AMQPValue::ByteArray(vec![0u8, 255].into()));
        headers.insert("f".into(), AMQPValue::Double(0.5));
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_correlation_id("c-1".into())
            .with_app_id("core-banking".into())
            .with_timestamp(1_700_000_000)
            .with_priority(5)
            .with_content_type("application/json".into());
        let event = decode(
            &props,
            Bytes::from_static(b"{}"),
            "rabbitmq://q".into(),
            InputFormat::Auto,
        )
        .unwrap();
        assert!(event.is_raw());
        assert_eq!(event.native.headers.len(), 5, "bookkeeping is not carried");
        assert_eq!(event.native.header("n"), Some(&Value::Int(-7)));
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
        let written = properties(&event);
        assert_eq!(
            written.correlation_id().as_ref().map(ShortString::as_str),
            Some("c-1")
        );
        assert_eq!(*written.timestamp(), Some(1_700_000_000));
        assert_eq!(*written.priority(), Some(5));
        let again = decode(
            &written,
            event.payload.clone(),
            "rabbitmq://q".into(),
            InputFormat::Auto,
        )
        .unwrap();
        assert_eq!(again.native.headers, event.native.headers);
        // The sink adds the message id the route knows the message by.
        assert_eq!(
            again.native.properties.len(),
            event.native.properties.len() + 1
        );
    }

    #[test]
    fn a_nested_table_makes_the_message_undecodable() {
        let mut headers = FieldTable::default();
        headers.insert("t".into(), AMQPValue::FieldTable(FieldTable::default()));
        let props = BasicProperties::default().with_headers(headers);
        let err = decode(
            &props,
            Bytes::new(),
            "rabbitmq://q".into(),
            InputFormat::Auto,
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot be carried"), "{err}");
    }
}
