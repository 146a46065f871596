//! Events as Service Bus messages (docs/headers.md, "Azure Service Bus"):
//! the AMQP binding's `cloudEvents_` custom properties, values
//! percent-encoded (they come back as HTTP headers), `MessageId` = the
//! event's (source, id) key, `Event::dedup_id`.

use causeway_core::{Binding, Event, Result, text_body};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::KeyProperty;

/// Custom property saying how the body encodes the payload, when it is not
/// the payload's own UTF-8 text.
pub(crate) const BODY_ENCODING: &str = "causeway_bodyencoding";
/// The content type travels as a custom property as well: a message of a
/// JSON batch has no `Content-Type` of its own.
const CONTENT_TYPE: &str = "datacontenttype";

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

/// Encodes `event`; `admit` has already validated it.
pub(crate) fn encode(event: &Event, key: KeyProperty) -> BatchMessage {
    let mut user = Map::new();
    for (name, value) in Binding::ServiceBus.encode(event) {
        user.insert(name.into_owned(), Value::String(value));
    }
    let mut broker = Map::new();
    broker.insert("MessageId".into(), Value::String(event.dedup_id()));
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
    BatchMessage {
        body,
        broker_properties: broker,
        user_properties: user,
    }
}

/// Custom properties of a received message, from its response headers:
/// the ones causeway reads (`cloudEvents_*`, `causeway_*`, trace context),
/// names restored to their sent case, string values unquoted.
pub(crate) fn custom_properties<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(String, String)> {
    let prefix = Binding::ServiceBus.prefix();
    headers
        .into_iter()
        .filter_map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            let name = if let Some(attr) = lower.strip_prefix(&prefix.to_ascii_lowercase()) {
                format!("{prefix}{attr}")
            } else if lower.starts_with("causeway_")
                || lower == "traceparent"
                || lower == "tracestate"
            {
                lower
            } else {
                return None;
            };
            // Strings come back in quotes (JSON); numbers and booleans bare.
            let value = match serde_json::from_str::<Value>(value) {
                Ok(Value::String(s)) => s,
                _ => value.to_owned(),
            };
            Some((name, value))
        })
        .collect()
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

/// Rebuilds the event of a received message. `datacontenttype` comes from
/// its `cloudEvents_datacontenttype` property only: the HTTP content type of
/// a message sent in a JSON batch is the service's default, not the event's.
pub(crate) fn decode(body: &str, properties: &[(String, String)]) -> Result<Event> {
    let encoding = properties
        .iter()
        .find(|(n, _)| n == BODY_ENCODING)
        .map(|(_, v)| v.as_str());
    let payload = text_body::decode(body, encoding, BODY_ENCODING)?;
    Binding::ServiceBus.decode(
        properties.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        None,
        payload,
    )
}

/// The dead-letter copy of a received message: its body and properties as
/// received, plus the dead-letter extensions; `MessageId` kept, so a copy
/// sent twice is dropped where the dead-letter entity detects duplicates.
pub(crate) fn dead_letter_copy(
    message_id: &str,
    body: &[u8],
    properties: &[(String, String)],
    extensions: &[(&str, String)],
) -> BatchMessage {
    let mut user: Map<String, Value> = properties
        .iter()
        .map(|(n, v)| (n.clone(), Value::String(v.clone())))
        .collect();
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
    fn as_received(m: &BatchMessage) -> Vec<(String, String)> {
        let headers: Vec<(String, String)> = m
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        custom_properties(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())))
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
        let m = encode(&e, KeyProperty::PartitionKey);
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
        let back = decode(&m.body, &as_received(&m)).expect("decode");
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
            let m = encode(&e, KeyProperty::None);
            assert_eq!(decode(&m.body, &as_received(&m)).expect("decode"), e);
        }
        let binary = encode(
            &Event::new("id", "s", "t").with_payload(vec![0xffu8, 0xfe]),
            KeyProperty::None,
        );
        assert_eq!(binary.user_properties[BODY_ENCODING], text_body::BASE64);
    }

    #[test]
    fn not_a_cloudevent_is_an_error() {
        let err = decode("hello", &[]).expect_err("no properties");
        assert!(err.to_string().contains("specversion"), "{err}");
    }

    #[test]
    fn dead_letter_copies_carry_the_reason() {
        let e = Event::new("id", "s", "t").with_header("x", "1");
        let m = encode(&e, KeyProperty::None);
        let copy = dead_letter_copy(
            "id",
            m.body.as_bytes(),
            &as_received(&m),
            &[(causeway_core::dead_letter::REASON, "bad amount".into())],
        );
        let back = decode(&copy.body, &as_received(&copy)).expect("decode");
        assert_eq!(
            back.headers
                .get(causeway_core::dead_letter::REASON)
                .map(String::as_str),
            Some("bad amount")
        );
        assert_eq!(back.headers.get("x").map(String::as_str), Some("1"));
    }
}
