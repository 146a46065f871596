//! Events as SQS messages (docs/headers.md, "AWS SQS"): the CloudEvents
//! Kafka binding's `ce_` names, folded to fit SQS's 10 message attributes.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use causeway_core::message::{KEY_HEADER, property};
use causeway_core::{
    Binding, Error, Event, Header, Incoming, InputFormat, Result, Value, text_body,
};

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

/// Attributes sent as SQS attributes of their own; every other CloudEvents
/// attribute goes into the JSON of [`FOLDED`].
const OWN: [&str; 7] = [
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_partitionkey",
    "content-type",
];
/// `subject`, `dataschema` and extensions: a JSON object `{name: value}`.
pub(crate) const FOLDED: &str = "ce_attributes";
/// How the body encodes the payload, when it is not the payload's text.
pub(crate) const BODY_ENCODING: &str = "ce_bodyencoding";
/// SQS refuses an empty body: an empty payload travels as this one character.
const EMPTY_BODY: &str = "-";
/// Native headers that cannot be attributes of their own (a name SQS
/// refuses or repeats, more than fit): a JSON array of
/// `[name, type, value]`, bytes in base64, read back as they were.
pub(crate) const HEADERS: &str = "causeway.headers";

/// An event ready to send.
pub(crate) struct Encoded {
    pub body: String,
    pub attributes: HashMap<String, MessageAttributeValue>,
}

impl Encoded {
    /// The size SQS counts against its limit: the body, and each attribute's
    /// name, data type and value.
    pub fn size(&self) -> usize {
        self.body.len() + attributes_size(&self.attributes)
    }

    /// The name of an attribute whose value SQS would refuse: string values
    /// obey the body's character rules, which `admit` does not fully check.
    pub fn refused_attribute(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(_, v)| v.string_value().is_some_and(|t| !sqs_text(t)))
            .map(|(name, _)| name.as_str())
    }
}

pub(crate) fn attributes_size(attributes: &HashMap<String, MessageAttributeValue>) -> usize {
    attributes
        .iter()
        .map(|(name, v)| {
            name.len()
                + v.data_type().len()
                + v.string_value().map_or(0, str::len)
                + v.binary_value().map_or(0, |b| b.as_ref().len())
        })
        .sum()
}

pub(crate) fn string_attribute(value: impl Into<String>) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data_type is set")
}

/// Whether SQS accepts `text` as a body or attribute value: its allowed
/// characters are #x9, #xA, #xD, #x20–#xD7FF, #xE000–#xFFFD and #x10000 up.
fn sqs_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    })
}

/// Encodes `event`; `admit` has already validated it. A CloudEvent's
/// attributes come first (those that do not fit are folded into one JSON
/// attribute), then the native headers take what SQS's 10 attributes leave.
///
/// A raw message's key is the FIFO group; where that is not the key itself
/// (a standard queue, a key SQS refuses as a group id) it travels in the
/// attribute [`KEY_HEADER`] as well.
pub(crate) fn encode(event: &Event, fifo: bool) -> Encoded {
    let mut attributes = HashMap::with_capacity(9);
    if !event.is_raw() {
        encode_attributes(event, &mut attributes);
    }
    // SQS refuses an empty body, so an empty payload sends a stand-in.
    let (mut body, marker) = text_body::encode(&event.payload, |t| !t.is_empty() && sqs_text(t));
    if let Some(marker) = marker {
        attributes.insert(BODY_ENCODING.to_owned(), string_attribute(marker));
        if marker == text_body::EMPTY {
            body = EMPTY_BODY.to_owned();
        }
    }
    let key = event
        .key
        .as_deref()
        .filter(|k| event.is_raw() && (!fifo || fifo_token(k) != *k));
    encode_native(event, key, &mut attributes);
    Encoded { body, attributes }
}

/// The native headers as typed attributes while they fit (one is kept for
/// [`HEADERS`]); the rest, in order, in [`HEADERS`].
fn encode_native(
    event: &Event,
    key: Option<&str>,
    attributes: &mut HashMap<String, MessageAttributeValue>,
) {
    let mut rest: Vec<(String, &'static str, String)> = Vec::new();
    let mut headers: Vec<_> = Binding::Kafka.native_headers(event, &[]).collect();
    if let Some(key) = key {
        headers.insert(0, std::borrow::Cow::Owned(Header::text(KEY_HEADER, key)));
    }
    // A repeated name is folded whole, so its values keep their order.
    // Counted once: a message can bring tens of thousands of headers.
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(headers.len());
    for h in &headers {
        *seen.entry(h.name.as_str()).or_default() += 1;
    }
    for header in &headers {
        let own = attributes.len() + 1 < MAX_ATTRIBUTES
            && valid_name(&header.name)
            && seen.get(header.name.as_str()) == Some(&1)
            && !attributes.contains_key(&header.name);
        match attribute_of(&header.value) {
            Some(value) if own => {
                attributes.insert(header.name.clone(), value);
            }
            _ => rest.push(folded_header(header)),
        }
    }
    if !rest.is_empty() {
        let json = serde_json::to_string(&rest).expect("a list of strings serializes");
        attributes.insert(HEADERS.to_owned(), string_attribute(json));
    }
}

/// A typed value as an SQS attribute: `String`, `Number` or `Binary`;
/// `None` where SQS would refuse it as its own attribute (empty, or text
/// with characters SQS does not allow), so it is folded instead.
fn attribute_of(value: &Value) -> Option<MessageAttributeValue> {
    let typed = |data_type: &str, text: String| {
        MessageAttributeValue::builder()
            .data_type(data_type)
            .string_value(text)
            .build()
            .ok()
    };
    match value {
        Value::Bytes(b) if !b.is_empty() => MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(Blob::new(b.to_vec()))
            .build()
            .ok(),
        Value::Int(_) | Value::Float(_) | Value::Decimal(_) => {
            let text = value.to_text()?.into_owned();
            let number = text.parse::<f64>().is_ok_and(f64::is_finite);
            typed(if number { "Number" } else { "String" }, text)
        }
        Value::Bytes(_) => None,
        other => {
            let text = other.to_text()?;
            (!text.is_empty() && sqs_text(&text)).then(|| typed("String", text.into_owned()))?
        }
    }
}

fn folded_header(header: &Header) -> (String, &'static str, String) {
    let text = match &header.value {
        Value::Bytes(b) => BASE64.encode(b),
        other => other.to_text().unwrap_or_default().into_owned(),
    };
    (header.name.clone(), header.value.type_name(), text)
}

fn unfolded_header((name, kind, text): (String, String, String)) -> Result<Header> {
    let bad = |why: String| Error::invalid_event(HEADERS, why);
    let value = match kind.as_str() {
        "bytes" => Value::Bytes(Bytes::from(
            BASE64
                .decode(&text)
                .map_err(|e| bad(format!("{name}: not base64: {e}")))?,
        )),
        "bool" => Value::Bool(text == "true"),
        "int" => Value::Int(text.parse().map_err(|e| bad(format!("{name}: {e}")))?),
        "float" => Value::Float(text.parse().map_err(|e| bad(format!("{name}: {e}")))?),
        "decimal" => Value::Decimal(text),
        "time" => Value::Time(causeway_core::binding::parse_time(&text)?),
        _ => Value::Text(text),
    };
    Ok(Header::new(name, value))
}

/// SQS attribute names: 1–256 of `A-Za-z0-9_-.`, no `..`, not starting or
/// ending with `.`, not starting with `AWS.` or `Amazon.`.
fn valid_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.contains("..")
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && name != BODY_ENCODING
        && name != FOLDED
        && name != HEADERS
}

/// A CloudEvent's attributes as SQS attributes (the Kafka binding's names),
/// those without a place of their own folded into [`FOLDED`].
fn encode_attributes(event: &Event, attributes: &mut HashMap<String, MessageAttributeValue>) {
    let mut folded = BTreeMap::new();
    for (name, value) in Binding::Kafka.encode(event) {
        if value.is_empty() {
            // SQS refuses empty attribute values; the JSON keeps them.
            folded.insert(strip(&name).to_owned(), value);
        } else if OWN.contains(&name.as_ref()) {
            attributes.insert(name.into_owned(), string_attribute(value));
        } else {
            folded.insert(strip(&name).to_owned(), value);
        }
    }
    if !folded.is_empty() {
        let json = serde_json::to_string(&folded).expect("a map of strings serializes");
        attributes.insert(FOLDED.to_owned(), string_attribute(json));
    }
}

fn strip(name: &str) -> &str {
    name.strip_prefix("ce_").unwrap_or(name)
}

/// What SQS says about a received message beside its body and attributes.
#[derive(Debug, Default)]
pub(crate) struct Received<'a> {
    /// `sqs://queue`.
    pub origin: String,
    /// SQS's `MessageId`.
    pub message_id: Option<&'a str>,
    /// The FIFO `MessageGroupId`: the key.
    pub group_id: Option<&'a str>,
}

/// Reads a received message as `format` says: attributes with their types
/// (`String` as text, `Number` as a decimal, `Binary` as bytes), folded
/// attributes and headers unfolded, the body decoded where causeway
/// encoded it.
pub(crate) fn decode(
    body: Option<&str>,
    attributes: Option<&HashMap<String, MessageAttributeValue>>,
    received: Received<'_>,
    format: InputFormat,
) -> Result<Event> {
    let empty = HashMap::new();
    let attributes = attributes.unwrap_or(&empty);
    let mut incoming = Incoming {
        origin: received.origin,
        key: received
            .group_id
            .map(|g| Bytes::copy_from_slice(g.as_bytes())),
        derived_key: true,
        properties: received
            .message_id
            .map(|id| vec![Header::text(property::MESSAGE_ID, id)])
            .unwrap_or_default(),
        ..Incoming::default()
    };
    let mut encoding = None;
    let mut names: Vec<&String> = attributes.keys().collect();
    names.sort_unstable();
    for name in names {
        let value = &attributes[name];
        let text = value.string_value();
        match (name.as_str(), text) {
            (FOLDED, Some(text)) => {
                let folded: BTreeMap<String, String> = serde_json::from_str(text).map_err(|e| {
                    Error::invalid_event(FOLDED, format!("not a JSON object of strings: {e}"))
                })?;
                incoming.headers.extend(
                    folded
                        .into_iter()
                        .map(|(k, v)| Header::text(format!("ce_{k}"), v)),
                );
            }
            (HEADERS, Some(text)) => {
                let folded: Vec<(String, String, String)> =
                    serde_json::from_str(text).map_err(|e| {
                        Error::invalid_event(HEADERS, format!("not a list of headers: {e}"))
                    })?;
                for header in folded {
                    incoming.headers.push(unfolded_header(header)?);
                }
            }
            (BODY_ENCODING, Some(text)) => encoding = Some(text),
            (_, Some(text)) if value.data_type().starts_with("Number") => incoming
                .headers
                .push(Header::new(name, Value::Decimal(text.to_owned()))),
            (_, Some(text)) => incoming.headers.push(Header::text(name, text)),
            (_, None) => {
                if let Some(blob) = value.binary_value() {
                    incoming.headers.push(Header::new(
                        name,
                        Value::Bytes(Bytes::copy_from_slice(blob.as_ref())),
                    ));
                }
            }
        }
    }
    if let Some(at) = incoming.headers.iter().position(|h| h.name == KEY_HEADER) {
        let key = incoming.headers.remove(at);
        incoming.key = Some(Bytes::from(key.value.to_bytes().into_owned()));
    }
    incoming.payload = text_body::decode(body.unwrap_or(""), encoding, BODY_ENCODING)?;
    Binding::Kafka.read(format, incoming)
}

/// Most message attributes SQS takes on one message.
pub(crate) const MAX_ATTRIBUTES: usize = 10;

/// Adds dead-letter extensions to a received message's attributes, for the
/// copy `reject` sends: they join the folded JSON like any extension. A
/// foreign message may already have all 10 attributes SQS allows; then the
/// ones whose names sort last move into the folded JSON too, as text
/// (Binary values in base64), to make room for it.
pub(crate) fn with_extensions(
    attributes: &HashMap<String, MessageAttributeValue>,
    extensions: &[(&str, String)],
) -> HashMap<String, MessageAttributeValue> {
    let mut out = attributes.clone();
    let mut folded: BTreeMap<String, String> = out
        .get(FOLDED)
        .and_then(|v| v.string_value())
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    for (name, value) in extensions {
        folded.insert((*name).to_owned(), value.clone());
    }
    let mut names: Vec<String> = out.keys().filter(|n| *n != FOLDED).cloned().collect();
    names.sort_unstable();
    while names.len() + 1 > MAX_ATTRIBUTES {
        let Some(name) = names.pop() else { break };
        if let Some(value) = out.remove(&name) {
            let text = match (value.string_value(), value.binary_value()) {
                (Some(text), _) => text.to_owned(),
                (None, Some(binary)) => BASE64.encode(binary.as_ref()),
                (None, None) => String::new(),
            };
            folded.entry(name).or_insert(text);
        }
    }
    let json = serde_json::to_string(&folded).expect("a map of strings serializes");
    out.insert(FOLDED.to_owned(), string_attribute(json));
    out
}

/// A FIFO `MessageDeduplicationId` or `MessageGroupId`: the value itself
/// where SQS accepts it (1–128 characters, alphanumeric or punctuation),
/// otherwise its SHA-256 in hex.
pub(crate) fn fifo_token(value: &str) -> String {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b.is_ascii_punctuation());
    if ok {
        value.to_owned()
    } else {
        causeway_core::event::sha256_hex(value.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(event: &Event) -> Event {
        let encoded = encode(event, false);
        assert!(
            encoded.attributes.len() <= 9,
            "{:?}",
            encoded.attributes.keys()
        );
        decode(
            Some(&encoded.body),
            Some(&encoded.attributes),
            Received::default(),
            InputFormat::Auto,
        )
        .expect("decode")
    }

    #[test]
    fn every_field_survives() {
        let mut e = Event::new("id-1", "kafka://onprem/tx", "finbank.tx")
            .with_key("acct-42")
            .with_subject("accounts/42")
            .with_content_type("application/json")
            .with_header("traceparent", "00-abc-01")
            .with_header("region", "Zürich \"quoted\"")
            .with_header("a", "1")
            .with_header("b", "2")
            .with_payload(&b"{\"amount\":1}"[..]);
        e.data_schema = Some("https://schemas.example/tx.json".into());
        let encoded = encode(&e, false);
        assert_eq!(encoded.body, "{\"amount\":1}");
        assert!(!encoded.attributes.contains_key(BODY_ENCODING));
        assert_eq!(round_trip(&e), e);
    }

    #[test]
    fn binary_control_and_empty_payloads_survive() {
        for payload in [
            (0..=255u8).collect::<Vec<u8>>(),
            vec![7u8; 10],
            b"ok\x00".to_vec(),
            Vec::new(),
        ] {
            let e = Event::new("id", "s", "t").with_payload(payload);
            let encoded = encode(&e, false);
            assert!(!encoded.body.is_empty());
            assert!(sqs_text(&encoded.body));
            assert_eq!(round_trip(&e), e);
        }
    }

    #[test]
    fn not_a_cloudevent_is_an_error() {
        let err = decode(
            Some("hello"),
            None,
            Received::default(),
            InputFormat::CloudEvents,
        )
        .expect_err("no attributes");
        assert!(err.to_string().contains("specversion"), "{err}");
    }

    #[test]
    fn dead_letter_extensions_join_the_folded_json() {
        let e = Event::new("id", "s", "t").with_header("x", "1");
        let encoded = encode(&e, false);
        let copy = with_extensions(&encoded.attributes, &[("deadletterreason", "bad".into())]);
        let back = decode(
            Some(&encoded.body),
            Some(&copy),
            Received::default(),
            InputFormat::Auto,
        )
        .expect("decode");
        assert_eq!(
            back.headers.get("deadletterreason").map(String::as_str),
            Some("bad")
        );
        assert_eq!(back.headers.get("x").map(String::as_str), Some("1"));
    }

    #[test]
    fn a_dead_letter_copy_of_a_message_with_ten_attributes_keeps_to_ten() {
        let mut attributes: HashMap<String, MessageAttributeValue> = (0..10)
            .map(|i| (format!("a{i}"), string_attribute(format!("v{i}"))))
            .collect();
        attributes.insert(
            "a9".into(),
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0xff, 0]))
                .build()
                .expect("data type is set"),
        );
        let copy = with_extensions(&attributes, &[("deadletterreason", "bad".into())]);
        assert_eq!(copy.len(), MAX_ATTRIBUTES, "{:?}", copy.keys());
        assert!(copy.contains_key("a0") && copy.contains_key("a8"));
        let folded: BTreeMap<String, String> =
            serde_json::from_str(copy[FOLDED].string_value().expect("json")).expect("object");
        assert_eq!(folded["deadletterreason"], "bad");
        assert_eq!(folded["a9"], BASE64.encode([0xff, 0]));
    }

    #[test]
    fn raw_messages_keep_typed_headers_repeats_and_overflow() {
        let mut e = Event::new("p", "kafka://t", "").with_payload(&b"plain \x00 text"[..]);
        e.format = causeway_core::Format::Raw;
        e.native.headers = vec![
            Header::new("bin", Value::Bytes(Bytes::from_static(b"\x00\xff"))),
            Header::new("amount", Value::Decimal("1.50".into())),
            Header::new("n", Value::Int(-3)),
            Header::text("dup", "1"),
            Header::text("dup", "2"),
            Header::text("bad name", "x"),
        ];
        for i in 0..10 {
            e.native
                .headers
                .push(Header::text(format!("h{i}"), i.to_string()));
        }
        let encoded = encode(&e, false);
        assert!(
            encoded.attributes.len() <= MAX_ATTRIBUTES,
            "{:?}",
            encoded.attributes.keys()
        );
        let back = decode(
            Some(&encoded.body),
            Some(&encoded.attributes),
            Received::default(),
            InputFormat::Auto,
        )
        .unwrap();
        assert!(back.is_raw());
        assert_eq!(back.payload, e.payload);
        let mut want = e.native.headers.clone();
        // Attributes of their own come back in name order, then the folded ones in theirs.
        want.sort_by(|a, b| a.name.cmp(&b.name));
        let mut got = back.native.headers.clone();
        got.sort_by(|a, b| a.name.cmp(&b.name));
        // SQS has no integer type: an int comes back as a decimal of the same text.
        for h in &mut want {
            if let Value::Int(n) = h.value {
                h.value = Value::Decimal(n.to_string());
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn fifo_tokens() {
        assert_eq!(fifo_token("evt-1:a/b"), "evt-1:a/b");
        assert_eq!(fifo_token(&"x".repeat(129)).len(), 64);
        assert_eq!(fifo_token("with space").len(), 64);
        assert_eq!(fifo_token("grüße").len(), 64);
    }
}
