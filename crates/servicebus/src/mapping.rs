//! Events as Service Bus messages (docs/headers.md, "Azure Service Bus"):
//! the AMQP binding's `cloudEvents_` custom properties, values
//! percent-encoded (they come back as HTTP headers), `MessageId` = the
//! event's (source, id) key, `Event::dedup_id`.

use bytes::Bytes;
use causeway_core::message::{KEY_HEADER, property};
use causeway_core::{
    Binding, Error, Event, Header, Incoming, InputFormat, Result, structured, text_body,
};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::KeyProperty;

/// Custom property saying how the body encodes the payload, when it is not
/// the payload's own UTF-8 text.
pub(crate) const BODY_ENCODING: &str = "causeway_bodyencoding";
/// The content type travels as a custom property as well: a message of a
/// JSON batch has no `Content-Type` of its own.
const CONTENT_TYPE: &str = "datacontenttype";
/// Native custom properties whose text was percent-encoded to survive as
/// an HTTP header (non-ASCII, quotes, backslashes): their names, joined by
/// commas. Only these are decoded on the way back.
pub(crate) const ENCODED: &str = "causeway_encoded";
/// What is percent-encoded in such a value.
const UNSAFE: &AsciiSet = &CONTROLS.add(b'"').add(b'\\').add(b'%');

/// The broker properties causeway carries, by their Service Bus names.
const BROKER_PROPERTIES: [(&str, &str); 4] = [
    (property::CORRELATION_ID, "CorrelationId"),
    (property::REPLY_TO, "ReplyTo"),
    (property::TYPE, "Label"),
    (property::TO, "To"),
];
const SINK_PROPERTIES: &[&str] = &[
    property::CORRELATION_ID,
    property::REPLY_TO,
    property::TYPE,
    property::TO,
];

/// One message of a Send Message Batch request.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct BatchMessage {
    pub body: String,
    pub broker_properties: Map<String, Value>,
    pub user_properties: Map<String, Value>,
}

/// Service Bus takes ids (`SessionId`, `PartitionKey`) of at most 128
/// characters: a longer key travels as its SHA-256 in hex, the same for the
/// same key, so its order group holds. The event keeps its key in
/// `cloudEvents_partitionkey`.
pub(crate) fn id_token(key: &str) -> String {
    if key.chars().count() <= 128 {
        key.to_owned()
    } else {
        causeway_core::event::sha256_hex(key.as_bytes())
    }
}

/// Encodes `event`; `admit` has already validated it. A native header
/// Service Bus cannot hold (bytes that are not UTF-8) fails this event alone.
pub(crate) fn encode(event: &Event, key: KeyProperty) -> Result<BatchMessage> {
    let mut user = Map::new();
    if !event.is_raw() {
        for (name, value) in Binding::ServiceBus.encode(event) {
            user.insert(name.into_owned(), Value::String(value));
        }
    }
    let mut encoded = Vec::new();
    for header in Binding::ServiceBus.native_headers(event, SINK_PROPERTIES) {
        let name = header.name.to_ascii_lowercase();
        if user.contains_key(&name) {
            return Err(Error::invalid_event(
                &header.name,
                "Service Bus properties are a map: a name cannot repeat (nor differ only in case)",
            ));
        }
        let value = match &header.value {
            causeway_core::Value::Bool(b) => Value::Bool(*b),
            causeway_core::Value::Int(n) => Value::from(*n),
            causeway_core::Value::Float(f) if f.is_finite() => Value::from(*f),
            other => {
                let text = other.to_text().ok_or_else(|| {
                    Error::invalid_event(
                        &header.name,
                        "a Service Bus property cannot hold bytes that are not UTF-8",
                    )
                })?;
                if text
                    .bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
                {
                    Value::String(text.into_owned())
                } else {
                    encoded.push(name.clone());
                    Value::String(utf8_percent_encode(&text, UNSAFE).to_string())
                }
            }
        };
        user.insert(name, value);
    }
    if !encoded.is_empty() {
        user.insert(ENCODED.into(), Value::String(encoded.join(",")));
    }
    if let (true, KeyProperty::None, Some(k)) = (event.is_raw(), key, &event.key) {
        // No broker property holds the key here: a raw message's travels
        // as a property.
        user.insert(KEY_HEADER.into(), Value::String(k.clone()));
    }
    let mut broker = Map::new();
    broker.insert("MessageId".into(), Value::String(event.dedup_id()));
    for (ours, theirs) in BROKER_PROPERTIES {
        if let Some(text) = event.native.property(ours).and_then(|v| v.to_text()) {
            broker.insert(theirs.into(), Value::String(text.into_owned()));
        }
    }
    if let Some(ct) = &event.content_type {
        let (name, value) = Binding::ServiceBus.extension_header(CONTENT_TYPE, ct);
        // Not BrokerProperties.ContentType: the service ignores it on a
        // message of a JSON batch.
        user.insert(name, Value::String(value));
    }
    match (key, &event.key) {
        (KeyProperty::None, _) | (KeyProperty::PartitionKey, None) => {}
        (KeyProperty::PartitionKey, Some(k)) => {
            broker.insert("PartitionKey".into(), Value::String(id_token(k)));
        }
        // A session-enabled entity refuses a message without a SessionId;
        // a keyless event has no order to keep: its own session.
        (KeyProperty::SessionId, k) => {
            let session = id_token(k.as_deref().unwrap_or(&event.id));
            broker.insert("SessionId".into(), Value::String(session));
        }
    }
    let body = text_body_of(&event.payload, &mut user);
    Ok(BatchMessage {
        body,
        broker_properties: broker,
        user_properties: user,
    })
}

/// Headers of a received message that are HTTP's or the REST protocol's,
/// not custom properties.
fn standard_header(name: &str) -> bool {
    matches!(
        name,
        "brokerproperties"
            | "content-type"
            | "content-length"
            | "location"
            | "date"
            | "server"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "strict-transport-security"
    ) || name.starts_with("x-ms-")
}

/// Custom properties of a received message, from its response headers
/// (names lowercase: HTTP does not keep their case; CloudEvents attribute
/// names restored to their prefix's case). Strings come back in quotes
/// (JSON), numbers and booleans bare; a value that is not JSON is text.
pub(crate) fn custom_properties<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, Value)> {
    let prefix = Binding::ServiceBus.prefix();
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            if standard_header(&lower) {
                return None;
            }
            let name = match lower.strip_prefix(&prefix.to_ascii_lowercase()) {
                Some(attr) => format!("{prefix}{attr}"),
                None => lower,
            };
            let value = serde_json::from_str::<Value>(value)
                .ok()
                .filter(|v| v.is_string() || v.is_number() || v.is_boolean())
                .unwrap_or_else(|| Value::String(value.to_owned()));
            Some((name, value))
        })
        .collect()
}

/// A custom property's value as text (for a dead letter's stand-in).
pub(crate) fn property_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON batch carries text: a payload that is not UTF-8 goes as base64,
/// marked in the user properties.
fn text_body_of(payload: &[u8], user: &mut Map<String, Value>) -> String {
    let (body, marker) = text_body::encode(payload, |_| true);
    if let Some(marker) = marker {
        user.insert(BODY_ENCODING.into(), Value::String(marker.into()));
    }
    body
}

/// What the service says about a received message beside its body and
/// custom properties.
#[derive(Debug, Default)]
pub(crate) struct Received<'a> {
    /// `servicebus://entity`.
    pub origin: String,
    /// The `BrokerProperties` JSON.
    pub broker: Option<&'a Map<String, Value>>,
    /// Which broker property holds the key.
    pub key: Option<KeyProperty>,
    /// The message's `ContentType`, as the HTTP content type of the reply.
    pub content_type: Option<&'a str>,
}

/// Reads a received message as `format` says. `datacontenttype` comes from
/// its `cloudEvents_datacontenttype` property only: the HTTP content type of
/// a message sent in a JSON batch is the service's default, not the
/// event's. Custom properties keep their JSON type (string, integer,
/// floating point, boolean); broker properties become properties.
pub(crate) fn decode(
    body: &[u8],
    properties: &[(String, Value)],
    received: Received<'_>,
    format: InputFormat,
) -> Result<Event> {
    let find = |name: &str| properties.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let encoding = find(BODY_ENCODING).and_then(Value::as_str);
    let encoded: Vec<&str> = find(ENCODED)
        .and_then(Value::as_str)
        .map(|names| names.split(',').collect())
        .unwrap_or_default();
    // A body causeway did not encode is the payload, whatever its bytes.
    let payload = match encoding {
        None => Bytes::copy_from_slice(body),
        Some(_) => {
            let text = std::str::from_utf8(body).map_err(|_| {
                Error::invalid_event("body", "marked as encoded, but not UTF-8 text")
            })?;
            text_body::decode(text, encoding, BODY_ENCODING)?
        }
    };
    let mut incoming = Incoming {
        origin: received.origin,
        payload,
        derived_key: true,
        // Only to recognise a structured CloudEvent: otherwise a message
        // sent in a JSON batch shows the service's default here.
        content_type: received
            .content_type
            .filter(|ct| structured::is_structured(ct))
            .map(str::to_owned),
        ..Incoming::default()
    };
    for (name, value) in properties {
        if name == BODY_ENCODING || name == ENCODED {
            continue;
        }
        if name == KEY_HEADER {
            incoming.key = Some(Bytes::from(property_text(value)));
            continue;
        }
        let value = match value {
            Value::Bool(b) => causeway_core::Value::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => causeway_core::Value::Int(i),
                None => causeway_core::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) if encoded.contains(&name.as_str()) => causeway_core::Value::Text(
                percent_decode_str(s)
                    .decode_utf8()
                    .map_err(|_| Error::invalid_event(name, "percent-decoded value is not UTF-8"))?
                    .into_owned(),
            ),
            other => causeway_core::Value::Text(property_text(other)),
        };
        incoming.headers.push(Header::new(name, value));
    }
    if let Some(broker) = received.broker {
        let text = |name: &str| broker.get(name).and_then(Value::as_str);
        if let Some(id) = text("MessageId") {
            incoming
                .properties
                .push(Header::text(property::MESSAGE_ID, id));
        }
        for (ours, theirs) in BROKER_PROPERTIES {
            if let Some(v) = text(theirs) {
                incoming.properties.push(Header::text(ours, v));
            }
        }
        let key = match received.key {
            Some(KeyProperty::SessionId) => text("SessionId"),
            Some(KeyProperty::PartitionKey) => text("PartitionKey"),
            _ => None,
        };
        if let Some(k) = key {
            incoming.key = Some(Bytes::copy_from_slice(k.as_bytes()));
        }
    }
    Binding::ServiceBus.read(format, incoming)
}

/// The dead-letter copy of a received message: its body and properties as
/// received, plus the dead-letter extensions; `MessageId` kept, so a copy
/// sent twice is dropped where the dead-letter entity detects duplicates.
pub(crate) fn dead_letter_copy(
    message_id: &str,
    body: &[u8],
    properties: &[(String, Value)],
    extensions: &[(&str, String)],
) -> BatchMessage {
    let mut user: Map<String, Value> = properties.iter().cloned().collect();
    // A JSON batch carries text: a body that is not UTF-8 goes as base64,
    // marked as the publisher marks it.
    let body = text_body_of(body, &mut user);
    for (name, value) in extensions {
        let (name, value) = Binding::ServiceBus.extension_header(name, value);
        user.insert(name, Value::String(value));
    }
    let mut broker = Map::new();
    broker.insert("MessageId".into(), Value::String(message_id.to_owned()));
    BatchMessage {
        body,
        broker_properties: broker,
        user_properties: user,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the service does: custom properties become headers (lowercase
    /// names after HTTP/1), string values quoted.
    fn as_received(m: &BatchMessage) -> Vec<(String, Value)> {
        let headers: Vec<(String, String)> = m
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        custom_properties(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    fn read(m: &BatchMessage) -> Event {
        let received = Received {
            broker: Some(&m.broker_properties),
            key: Some(KeyProperty::PartitionKey),
            ..Received::default()
        };
        decode(
            m.body.as_bytes(),
            &as_received(m),
            received,
            InputFormat::Auto,
        )
        .expect("decode")
    }

    #[test]
    fn raw_messages_keep_typed_properties() {
        use causeway_core::Value as V;
        let mut e = Event::new("p", "kafka://t", "").with_payload(&b"{}"[..]);
        e.format = causeway_core::Format::Raw;
        e.native.headers = vec![
            Header::new("amount", V::Int(150)),
            Header::new("rate", V::Float(0.25)),
            Header::new("ok", V::Bool(true)),
            Header::text("city", "Zürich \"HQ\" 100% \\"),
            Header::new("kafkabytes", V::Bytes(Bytes::from_static(b"plain"))),
        ];
        e.native
            .properties
            .push(Header::text(property::CORRELATION_ID, "c-1"));
        let m = encode(&e, KeyProperty::None).unwrap();
        assert_eq!(m.broker_properties["CorrelationId"], "c-1");
        let back = read(&m);
        assert!(back.is_raw());
        assert_eq!(back.payload, e.payload);
        let mut want = e.native.headers.clone();
        want[4].value = V::Text("plain".into());
        let mut got = back.native.headers.clone();
        got.sort_by(|a, b| a.name.cmp(&b.name));
        want.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got, want);
        assert_eq!(
            back.native.property(property::CORRELATION_ID),
            Some(&V::Text("c-1".into()))
        );

        e.native.headers = vec![Header::new("x", V::Bytes(Bytes::from_static(b"\xff")))];
        let err = encode(&e, KeyProperty::None).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn every_field_survives() {
        let mut e = Event::new("id-1", "kafka://onprem/tx", "finbank.tx")
            .with_key("acct-42")
            .with_subject("accounts/42")
            .with_content_type("application/json")
            .with_header("traceparent", "00-abc-01")
            .with_header("region", "Zürich \"quoted\" 100%")
            .with_payload(&b"{\"amount\":1}"[..]);
        e.data_schema = Some("https://schemas.example/tx.json".into());
        let m = encode(&e, KeyProperty::PartitionKey).unwrap();
        assert_eq!(m.body, "{\"amount\":1}");
        assert_eq!(m.broker_properties["MessageId"], e.dedup_id());
        assert_eq!(m.broker_properties["PartitionKey"], "acct-42");
        assert!(!m.user_properties.contains_key(BODY_ENCODING));
        // Header values must be plain ASCII.
        assert!(
            m.user_properties
                .values()
                .all(|v| v.as_str().is_some_and(|s| s.is_ascii()))
        );
        let back = read(&m);
        assert_eq!(back, e);
    }

    #[test]
    fn binary_and_empty_payloads_survive() {
        for payload in [
            (0..=255u8).collect::<Vec<u8>>(),
            b"ok\x00".to_vec(),
            Vec::new(),
        ] {
            let e = Event::new("id", "s", "t").with_payload(payload);
            let m = encode(&e, KeyProperty::None).unwrap();
            assert_eq!(read(&m), e);
        }
        let binary = encode(
            &Event::new("id", "s", "t").with_payload(vec![0xffu8, 0xfe]),
            KeyProperty::None,
        )
        .unwrap();
        assert_eq!(binary.user_properties[BODY_ENCODING], text_body::BASE64);
    }

    #[test]
    fn not_a_cloudevent_is_an_error() {
        let err = decode(b"hello", &[], Received::default(), InputFormat::CloudEvents)
            .expect_err("no properties");
        assert!(err.to_string().contains("specversion"), "{err}");
    }

    #[test]
    fn dead_letter_copies_carry_the_reason() {
        let e = Event::new("id", "s", "t").with_header("x", "1");
        let m = encode(&e, KeyProperty::None).unwrap();
        let copy = dead_letter_copy(
            "id",
            m.body.as_bytes(),
            &as_received(&m),
            &[(causeway_core::dead_letter::REASON, "bad amount".into())],
        );
        let back = read(&copy);
        assert_eq!(
            back.headers
                .get(causeway_core::dead_letter::REASON)
                .map(String::as_str),
            Some("bad amount")
        );
        assert_eq!(back.headers.get("x").map(String::as_str), Some("1"));
    }
}
