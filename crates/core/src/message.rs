//! What a broker message carries besides CloudEvents attributes: its key as
//! bytes, its headers with their types, its broker properties and where it
//! sat. An [`Event`] holds this as [`Native`]; a raw message (not a
//! CloudEvent) is an event of [`Format::Raw`] whose payload, key and
//! headers are carried byte for byte (docs/headers.md says what each sink
//! makes of each type).

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, is_forbidden_char, sha256_hex};

/// How an event is written to a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A CloudEvent: attributes in the sink's CloudEvents binding, then the
    /// native headers beside them.
    #[default]
    CloudEvents,
    /// A plain message: payload, key and native headers as they arrived;
    /// no CloudEvents attribute is written.
    Raw,
}

/// Which messages a source reads as CloudEvents (a route's `format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// A CloudEvent when the message has the binding's `specversion`
    /// header, a raw message otherwise.
    #[default]
    Auto,
    /// CloudEvents only: any other message is undecodable (a dead letter).
    #[serde(rename = "cloudevents")]
    CloudEvents,
    /// Every message raw, CloudEvents headers included, byte for byte.
    Raw,
}

/// A header or property value, with the type the broker gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Value {
    /// Bytes: Kafka header values, SQS `Binary`, AMQP byte arrays.
    Bytes(Bytes),
    /// Text: NATS headers, SQS `String`, AMQP strings, Service Bus strings.
    Text(String),
    /// A boolean (AMQP, Service Bus).
    Bool(bool),
    /// An integer (AMQP integers of any width, Service Bus numbers).
    Int(i64),
    /// A floating-point number (AMQP float and double).
    Float(f64),
    /// A number kept as its decimal text (SQS `Number`, AMQP decimal), so
    /// that `1.50` stays `1.50`.
    Decimal(String),
    /// A point in time (AMQP timestamp, Service Bus dates).
    Time(DateTime<Utc>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Text(a), Value::Text(b)) | (Value::Decimal(a), Value::Decimal(b)) => a == b,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::Time(a), Value::Time(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// The value as text, for sinks whose headers are strings: bytes when
    /// they are UTF-8, numbers in decimal, booleans as `true`/`false`, times
    /// in RFC 3339. `None` for bytes that are not UTF-8.
    pub fn to_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Value::Bytes(b) => Cow::Borrowed(std::str::from_utf8(b).ok()?),
            Value::Text(s) | Value::Decimal(s) => Cow::Borrowed(s.as_str()),
            Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Value::Int(i) => Cow::Owned(i.to_string()),
            Value::Float(f) => Cow::Owned(f.to_string()),
            Value::Time(t) => Cow::Owned(crate::binding::format_time(*t)),
        })
    }

    /// The value as bytes, for sinks whose headers are bytes (Kafka): text
    /// as UTF-8, other types as [`Self::to_text`] gives them.
    pub fn to_bytes(&self) -> Cow<'_, [u8]> {
        match self {
            Value::Bytes(b) => Cow::Borrowed(b.as_ref()),
            Value::Text(s) | Value::Decimal(s) => Cow::Borrowed(s.as_bytes()),
            other => match other.to_text() {
                Some(Cow::Owned(s)) => Cow::Owned(s.into_bytes()),
                Some(Cow::Borrowed(s)) => Cow::Owned(s.as_bytes().to_vec()),
                None => Cow::Borrowed(&[]),
            },
        }
    }

    /// The type's name in messages and docs/headers.md.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bytes(_) => "bytes",
            Value::Text(_) => "text",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Time(_) => "time",
        }
    }

    fn len(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Text(s) | Value::Decimal(s) => s.len(),
            _ => 8,
        }
    }
}

/// One header or property: a name (repeated names are kept, in order) and a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The name as the broker had it, case kept.
    pub name: String,
    /// The typed value.
    pub value: Value,
}

impl Header {
    /// A header `name` with `value`.
    pub fn new(name: impl Into<String>, value: Value) -> Self {
        Header {
            name: name.into(),
            value,
        }
    }

    /// A text header.
    pub fn text(name: impl Into<String>, value: impl Into<String>) -> Self {
        Header::new(name, Value::Text(value.into()))
    }
}

/// The broker properties causeway knows by name, the same on every broker
/// that has them (AMQP properties, Service Bus broker properties); a sink
/// without a native place for one writes it as a header of this name.
pub mod property {
    /// AMQP `message_id`, Service Bus `MessageId`, SQS `MessageId` (read only).
    pub const MESSAGE_ID: &str = "message_id";
    /// AMQP `correlation_id`, Service Bus `CorrelationId`.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// AMQP `reply_to`, Service Bus `ReplyTo`.
    pub const REPLY_TO: &str = "reply_to";
    /// AMQP `type`, Service Bus `Label` (its subject).
    pub const TYPE: &str = "type";
    /// AMQP `app_id`.
    pub const APP_ID: &str = "app_id";
    /// AMQP `user_id`.
    pub const USER_ID: &str = "user_id";
    /// AMQP `timestamp`.
    pub const TIMESTAMP: &str = "timestamp";
    /// AMQP `expiration` (milliseconds, as text).
    pub const EXPIRATION: &str = "expiration";
    /// AMQP `priority`.
    pub const PRIORITY: &str = "priority";
    /// AMQP `content_encoding`.
    pub const CONTENT_ENCODING: &str = "content_encoding";
    /// Service Bus `To`.
    pub const TO: &str = "to";
}

/// The header that carries a raw message's key to brokers whose messages
/// have no key of their own (NATS, RabbitMQ); read back as the key.
pub const KEY_HEADER: &str = "causeway-key";

/// What the source broker carried that is not a CloudEvents attribute.
/// Empty for an event made inside causeway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Native {
    /// The record key as the broker held it (Kafka keys are bytes); the
    /// ordering key is [`Event::key`].
    pub key: Option<Bytes>,
    /// User headers in arrival order; a name may repeat.
    pub headers: Vec<Header>,
    /// Broker properties by the names in [`property`].
    pub properties: Vec<Header>,
    /// Where the message sat at its source, stable across redeliveries
    /// (`topic/partition/offset`, `stream/sequence`).
    pub position: Option<String>,
}

impl Native {
    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.headers.is_empty()
            && self.properties.is_empty()
            && self.position.is_none()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Value> {
        find(&self.headers, name)
    }

    /// The property named `name` (one of [`property`]).
    pub fn property(&self, name: &str) -> Option<&Value> {
        find(&self.properties, name)
    }

    /// Bytes this takes on the wire, roughly.
    pub fn encoded_len(&self) -> usize {
        let headers = self
            .headers
            .iter()
            .chain(&self.properties)
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum::<usize>();
        headers + self.key.as_ref().map_or(0, Bytes::len)
    }
}

fn find<'a>(headers: &'a [Header], name: &str) -> Option<&'a Value> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value)
}

/// The part of an event stores keep beside its attributes: the format and
/// the native metadata, CBOR-encoded. `None` for a CloudEvent with no
/// native metadata (the common case costs nothing).
pub fn encode_carried(event: &Event) -> Option<Vec<u8>> {
    if event.format == Format::CloudEvents && event.native.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    // Serializing owned, plain data into a Vec cannot fail.
    ciborium::into_writer(&(event.format, &event.native), &mut out).ok()?;
    Some(out)
}

/// Restores what [`encode_carried`] kept into `event`.
pub fn decode_carried(bytes: &[u8], event: &mut Event) -> Result<()> {
    let (format, native): (Format, Native) = ciborium::from_reader(bytes)
        .map_err(|e| Error::new(ErrorKind::Storage, format!("stored native metadata: {e}")))?;
    event.format = format;
    event.native = native;
    Ok(())
}

/// How a route knows a raw message for dedup and for the sinks' native
/// dedup (its [`Event::id`]). CloudEvents keep their `id`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Identity {
    /// The position where the source has one, else the broker's message
    /// id, else the content.
    #[default]
    Auto,
    /// The source position: stable across redeliveries of one message; a
    /// message published twice is two messages.
    Position,
    /// The broker's message id (AMQP `message_id`, `Nats-Msg-Id`, SQS
    /// `MessageId`, Service Bus `MessageId`): as good as the producer's ids.
    MessageId,
    /// SHA-256 of key and payload: identical messages are one message.
    Content,
    /// The value of this header, set by the producer.
    Header(String),
}

impl TryFrom<String> for Identity {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        Identity::parse(&text)
    }
}

impl Identity {
    /// Parses `auto`, `position`, `message-id`, `content` or `header:<name>`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text {
            "auto" => Ok(Identity::Auto),
            "position" => Ok(Identity::Position),
            "message-id" => Ok(Identity::MessageId),
            "content" => Ok(Identity::Content),
            other => match other.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(Identity::Header(name.to_owned())),
                _ => Err(format!(
                    "`{other}`: expected auto, position, message-id, content or header:<name>"
                )),
            },
        }
    }

    /// The id of a raw `event` under this identity, or an error naming what
    /// the message lacks (it becomes a dead letter).
    pub fn of(&self, event: &Event) -> Result<String> {
        let native = &event.native;
        let position = || native.position.clone();
        let message_id = || {
            native
                .property(property::MESSAGE_ID)
                .and_then(Value::to_text)
                .map(Cow::into_owned)
        };
        let found = match self {
            Identity::Auto => position()
                .or_else(message_id)
                .or_else(|| Some(content_hash(event))),
            Identity::Position => position(),
            Identity::MessageId => message_id(),
            Identity::Content => Some(content_hash(event)),
            Identity::Header(name) => native
                .header(name)
                .map(|v| String::from_utf8_lossy(&v.to_bytes()).into_owned()),
        };
        let missing = || {
            let what = match self {
                Identity::Position => "a source position",
                Identity::MessageId => "a broker message id",
                Identity::Header(name) => name.as_str(),
                Identity::Auto | Identity::Content => "an identity",
            };
            Error::invalid_event("identity", format!("the message has no {what}"))
        };
        let id = found.filter(|id| !id.is_empty()).ok_or_else(missing)?;
        // An id a store or broker cannot hold is replaced by its hash: the
        // same value still gives the same id.
        if id.len() > 256 || id.chars().any(is_forbidden_char) {
            return Ok(sha256_hex(id.as_bytes()));
        }
        Ok(id)
    }
}

/// SHA-256 over the key's and the payload's lengths and bytes.
fn content_hash(event: &Event) -> String {
    let key = event
        .native
        .key
        .as_deref()
        .or(event.key.as_deref().map(str::as_bytes))
        .unwrap_or_default();
    let mut data = Vec::with_capacity(16 + key.len() + event.payload.len());
    data.extend_from_slice(&(key.len() as u64).to_be_bytes());
    data.extend_from_slice(key);
    data.extend_from_slice(&(event.payload.len() as u64).to_be_bytes());
    data.extend_from_slice(&event.payload);
    sha256_hex(&data)
}

/// The ordering key of a raw message whose key is `key` bytes: the key when
/// it is UTF-8 without control characters, its SHA-256 otherwise (the same
/// bytes, the same order group).
pub fn ordering_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(k) if !k.is_empty() && !k.chars().any(is_forbidden_char) => k.to_owned(),
        _ => sha256_hex(key),
    }
}

/// A message as a source read it, before it is an event.
#[derive(Debug, Clone, Default)]
pub struct Incoming {
    /// The source as a URI (`kafka://transactions-3`), the raw event's `source`.
    pub origin: String,
    /// Every header, in order, CloudEvents attributes included.
    pub headers: Vec<Header>,
    /// The broker properties by [`property`] names.
    pub properties: Vec<Header>,
    /// The key as bytes.
    pub key: Option<Bytes>,
    /// True when the key is the sink's derived value (an SQS group, a
    /// Service Bus session) rather than a producer's record key: a
    /// CloudEvent then keeps its `partitionkey` alone.
    pub derived_key: bool,
    /// The native content-type property (AMQP, Service Bus).
    pub content_type: Option<String>,
    /// Where the message sits (`topic/partition/offset`).
    pub position: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

impl Incoming {
    /// The raw event of this message: payload, key and headers as they are,
    /// `source` the origin, `id` by [`Identity::Auto`] (a route may choose
    /// another), no type.
    pub fn into_raw(self) -> Result<Event> {
        let mut event = Event::new(String::new(), self.origin, String::new()).with_time(None);
        event.format = Format::Raw;
        event.payload = self.payload;
        event.content_type = self.content_type;
        event.key = self.key.as_deref().map(ordering_key);
        event.native = Native {
            key: self.key,
            headers: self.headers,
            properties: self.properties,
            position: self.position,
        };
        event.id = Identity::Auto.of(&event)?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> Event {
        Incoming {
            origin: "kafka://transactions-3".into(),
            headers: vec![
                Header::new("bin", Value::Bytes(Bytes::from_static(b"\x00\xff"))),
                Header::text("dup", "1"),
                Header::text("dup", "2"),
            ],
            key: Some(Bytes::from_static(b"acct-7")),
            position: Some("transactions-3/0/42".into()),
            payload: Bytes::from_static(b"{\"amount\":1}"),
            ..Incoming::default()
        }
        .into_raw()
        .unwrap()
    }

    #[test]
    fn a_raw_message_keeps_everything_and_is_known_by_its_position() {
        let e = raw();
        assert_eq!(e.format, Format::Raw);
        assert_eq!(e.id, "transactions-3/0/42");
        assert_eq!(e.key.as_deref(), Some("acct-7"));
        assert_eq!(e.native.headers.len(), 3);
        e.validate().unwrap();
    }

    #[test]
    fn identities() {
        let mut e = raw();
        e.native
            .properties
            .push(Header::text(property::MESSAGE_ID, "m-1"));
        assert_eq!(Identity::MessageId.of(&e).unwrap(), "m-1");
        assert_eq!(Identity::Header("dup".into()).of(&e).unwrap(), "1");
        let content = Identity::Content.of(&e).unwrap();
        assert_eq!(content.len(), 64);
        let mut other = e.clone();
        other.native.position = Some("elsewhere".into());
        assert_eq!(Identity::Content.of(&other).unwrap(), content);
        let err = Identity::Header("nope".into()).of(&e).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidEvent);
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(
            Identity::parse("header:x-id").unwrap(),
            Identity::Header("x-id".into())
        );
        assert!(Identity::parse("header:").is_err());
    }

    #[test]
    fn a_key_that_is_not_text_orders_by_its_hash() {
        assert_eq!(ordering_key(b"a"), "a");
        assert_eq!(ordering_key(b"\xff").len(), 64);
        assert_eq!(ordering_key(b"a\nb").len(), 64);
    }

    #[test]
    fn what_stores_keep_round_trips() {
        let mut e = raw();
        e.native.properties.push(Header::new(
            property::TIMESTAMP,
            Value::Time(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        ));
        e.native.headers.push(Header::new("f", Value::Float(1.5)));
        e.native
            .headers
            .push(Header::new("d", Value::Decimal("1.50".into())));
        let bytes = encode_carried(&e).unwrap();
        let mut back = Event::new(e.id.clone(), e.source.clone(), "");
        back.key.clone_from(&e.key);
        back.payload = e.payload.clone();
        back.time = None;
        decode_carried(&bytes, &mut back).unwrap();
        assert_eq!(back, e);
        assert!(encode_carried(&Event::new("1", "s", "t")).is_none());
    }
}
