//! The CloudEvents 1.0 event that causeway moves, and its validation.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::message::{Format, Native};

/// The CloudEvents specification version causeway speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Attribute names defined by CloudEvents 1.0 (plus the `partitionkey`
/// extension, which causeway models as [`Event::key`]). They cannot be used as
/// header names because each has its own field.
pub const RESERVED_ATTRIBUTES: [&str; 10] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "datacontenttype",
    "dataschema",
    "subject",
    "partitionkey",
    "data",
];

/// A CloudEvents 1.0 event in binary content mode: attributes beside an opaque payload.
///
/// The payload is never parsed; it stays [`Bytes`] end to end, so cloning an
/// event does not copy it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `id`: unique per source; the idempotency key dedup works on.
    pub id: String,
    /// `source`: where the event was produced, a URI-reference (e.g. `kafka://onprem/transactions-3`).
    pub source: String,
    /// `type`: the event type, e.g. `finbank.transaction.created`.
    pub kind: String,
    /// `time`: when it happened; end-to-end latency is measured from it.
    pub time: Option<DateTime<Utc>>,
    /// `datacontenttype`: the media type of the payload.
    pub content_type: Option<String>,
    /// `dataschema`: a URI of the payload's schema.
    pub data_schema: Option<String>,
    /// `subject`: what the event is about within the source.
    pub subject: Option<String>,
    /// `partitionkey` extension: the ordering key. Same key, same order.
    pub key: Option<String>,
    /// Other extension attributes, e.g. W3C `traceparent`. Names follow the
    /// CloudEvents rule: lowercase ASCII letters and digits.
    pub headers: BTreeMap<String, String>,
    /// `data`: the payload, never parsed.
    pub payload: Bytes,
    /// Whether sinks write this as a CloudEvent or as the plain message it was.
    pub format: Format,
    /// What the source broker carried besides the attributes: the key as
    /// bytes, headers with their types, properties, position.
    pub native: Native,
}

impl Event {
    /// An event with the required attributes, `time` set to now and an empty payload.
    pub fn new(id: impl Into<String>, source: impl Into<String>, kind: impl Into<String>) -> Self {
        Event {
            id: id.into(),
            source: source.into(),
            kind: kind.into(),
            time: Some(Utc::now()),
            content_type: None,
            data_schema: None,
            subject: None,
            key: None,
            headers: BTreeMap::new(),
            payload: Bytes::new(),
            format: Format::CloudEvents,
            native: Native::default(),
        }
    }

    /// Sets the payload.
    #[must_use]
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Sets the ordering key (`partitionkey`).
    #[must_use]
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets `datacontenttype`.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets `subject`.
    #[must_use]
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets or clears `time`.
    #[must_use]
    pub fn with_time(mut self, time: Option<DateTime<Utc>>) -> Self {
        self.time = time;
        self
    }

    /// Adds an extension attribute.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// An extension attribute's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Bytes this event takes on the wire, roughly: payload plus attributes.
    /// Adapters compare it with their broker's maximum message size.
    pub fn encoded_len(&self) -> usize {
        let optional = [
            &self.content_type,
            &self.data_schema,
            &self.subject,
            &self.key,
        ]
        .iter()
        .map(|v| v.as_ref().map_or(0, |s| s.len() + 16))
        .sum::<usize>();
        let headers = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
        self.payload.len()
            + self.id.len()
            + self.source.len()
            + self.kind.len()
            + optional
            + headers
            + self.native.encoded_len()
            + 64
    }

    /// True for a raw message (not a CloudEvent).
    pub fn is_raw(&self) -> bool {
        self.format == Format::Raw
    }

    /// Checks the event against CloudEvents 1.0: required attributes present
    /// and non-empty, no control characters in any attribute, extension
    /// names valid and not reserved. The error names the offending field.
    ///
    /// Control characters are refused because brokers and stores cannot all
    /// carry them: CR/LF cannot be in a NATS header, NUL cannot be in a
    /// PostgreSQL text column. One such event must fail alone, here.
    ///
    /// A raw message needs only an id and a source (causeway gives it
    /// both); its type may be empty and its native headers are the sinks'
    /// to judge.
    pub fn validate(&self) -> Result<()> {
        require_non_empty("id", &self.id)?;
        require_non_empty("source", &self.source)?;
        if !self.is_raw() {
            require_non_empty("type", &self.kind)?;
        }
        for (field, value) in self.string_attributes() {
            require_no_control(field, value)?;
        }
        if self.source.chars().any(char::is_whitespace) {
            return Err(Error::invalid_event(
                "source",
                "a URI-reference cannot contain whitespace",
            ));
        }
        for (field, value) in [
            ("datacontenttype", &self.content_type),
            ("dataschema", &self.data_schema),
            ("subject", &self.subject),
            ("partitionkey", &self.key),
        ] {
            if let Some(v) = value {
                require_non_empty(field, v)?;
            }
        }
        for name in self.headers.keys() {
            validate_extension_name(name)?;
        }
        Ok(())
    }

    /// The key a broker's own dedup (`Nats-Msg-Id`, SQS FIFO
    /// `MessageDeduplicationId`, Service Bus `MessageId`) knows this event
    /// by. A CloudEvents id is unique only within its source, so the key is
    /// derived from both: `{id}.{h}`, where `h` is the first 32 hex digits of
    /// SHA-256(source), when the id is at most 95 printable ASCII characters
    /// without spaces; otherwise the 64 hex digits of SHA-256(source, 0x1f,
    /// id). Either way at most 128 printable ASCII characters, which every
    /// broker accepts (docs/headers.md).
    pub fn dedup_id(&self) -> String {
        let readable = !self.id.is_empty()
            && self.id.len() <= 95
            && self.id.bytes().all(|b| b.is_ascii_graphic());
        if readable {
            let source = sha256_hex(self.source.as_bytes());
            format!("{}.{}", self.id, &source[..32])
        } else {
            let mut joined = Vec::with_capacity(self.source.len() + 1 + self.id.len());
            joined.extend_from_slice(self.source.as_bytes());
            joined.push(0x1f);
            joined.extend_from_slice(self.id.as_bytes());
            sha256_hex(&joined)
        }
    }

    /// Every string attribute with its CloudEvents name, extensions by their own.
    fn string_attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        let optional = [
            ("datacontenttype", &self.content_type),
            ("dataschema", &self.data_schema),
            ("subject", &self.subject),
            ("partitionkey", &self.key),
        ]
        .into_iter()
        .filter_map(|(field, v)| v.as_deref().map(|v| (field, v)));
        [
            ("id", self.id.as_str()),
            ("source", self.source.as_str()),
            ("type", self.kind.as_str()),
        ]
        .into_iter()
        .chain(optional)
        .chain(self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// The SHA-256 of `data` in 64 lowercase hex digits: the stand-in for a
/// value too long or too odd for a broker's id field, the same for the same
/// value (a key keeps its order group).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// CloudEvents 1.0 §3.1.1: U+0000–U+001F and U+007F–U+009F must not be used.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
}

fn require_no_control(field: &str, value: &str) -> Result<()> {
    match value.char_indices().find(|(_, c)| is_forbidden_char(*c)) {
        Some((at, c)) => Err(Error::invalid_event(
            field,
            format!("contains the control character {c:?} at byte {at}"),
        )),
        None => Ok(()),
    }
}

fn require_non_empty(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        Err(Error::invalid_event(
            field,
            "required and must not be empty",
        ))
    } else {
        Ok(())
    }
}

/// Checks an extension attribute name: lowercase ASCII letters and digits
/// (CloudEvents 1.0 §3.1.1), and not one of [`RESERVED_ATTRIBUTES`].
pub fn validate_extension_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid_event("header name", "must not be empty"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(Error::invalid_event(
            "header name",
            format!("`{name}` contains {c:?}; only a-z and 0-9 are allowed"),
        ));
    }
    if RESERVED_ATTRIBUTES.contains(&name) {
        return Err(Error::invalid_event(
            "header name",
            format!("`{name}` is a CloudEvents attribute, not an extension"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn err_of(e: Event) -> Error {
        e.validate().expect_err("should be invalid")
    }

    #[test]
    fn a_complete_event_is_valid() {
        Event::new("1", "kafka://onprem/t", "t.created")
            .with_key("acct-1")
            .with_header("traceparent", "00-abc-def-01")
            .validate()
            .unwrap();
    }

    #[test]
    fn missing_required_attributes_name_the_field() {
        let e = err_of(Event::new("", "s", "t"));
        assert_eq!(e.kind(), ErrorKind::InvalidEvent);
        assert!(e.to_string().contains("`id`"), "{e}");
        assert!(
            err_of(Event::new("1", "", "t"))
                .to_string()
                .contains("`source`")
        );
        assert!(
            err_of(Event::new("1", "s", ""))
                .to_string()
                .contains("`type`")
        );
        assert!(
            err_of(Event::new("1", "a b", "t"))
                .to_string()
                .contains("`source`")
        );
        assert!(
            err_of(Event::new("1", "s", "t").with_key(""))
                .to_string()
                .contains("partitionkey")
        );
    }

    #[test]
    fn control_characters_are_refused_in_every_attribute() {
        let cases = [
            ("id", Event::new("a\r\nb", "s", "t")),
            ("source", Event::new("1", "s\u{0}", "t")),
            ("type", Event::new("1", "s", "t\u{7f}")),
            (
                "subject",
                Event::new("1", "s", "t").with_subject("x\u{1b}[31m"),
            ),
            (
                "partitionkey",
                Event::new("1", "s", "t").with_key("k\u{85}"),
            ),
            (
                "traceparent",
                Event::new("1", "s", "t").with_header("traceparent", "\u{0}"),
            ),
        ];
        for (field, event) in cases {
            let e = err_of(event);
            assert_eq!(e.kind(), ErrorKind::InvalidEvent);
            assert!(e.to_string().contains(field), "{field}: {e}");
            assert!(e.to_string().contains("control character"), "{e}");
        }
        // Tabs are control characters too; other Unicode is fine.
        assert!(
            Event::new("1", "s", "t")
                .with_subject("a\tb")
                .validate()
                .is_err()
        );
        Event::new("ü-1", "s", "t")
            .with_subject("ünïcødé ✓")
            .validate()
            .unwrap();
    }

    #[test]
    fn dedup_ids_tell_sources_apart_and_fit_every_broker() {
        let a = Event::new("tx-1", "kafka://onprem/a", "t");
        let b = Event::new("tx-1", "kafka://onprem/b", "t");
        assert_ne!(a.dedup_id(), b.dedup_id());
        assert_eq!(a.dedup_id(), a.clone().with_payload("other").dedup_id());
        assert!(a.dedup_id().starts_with("tx-1."), "{}", a.dedup_id());
        for id in [
            "tx-1",
            &"x".repeat(95),
            &"x".repeat(96),
            "with space",
            "grüße",
            "a\r\nb",
        ] {
            let d = Event::new(id, "s", "t").dedup_id();
            assert!(
                d.len() <= 128 && d.bytes().all(|b| b.is_ascii_graphic()),
                "{d}"
            );
        }
        // The two forms cannot meet: the long one is hex only, the short one has a dot.
        assert_eq!(Event::new("with space", "s", "t").dedup_id().len(), 64);
    }

    #[test]
    fn header_names_follow_the_cloudevents_rule() {
        let e = err_of(Event::new("1", "s", "t").with_header("Trace-Id", "x"));
        assert!(e.to_string().contains("header name"), "{e}");
        assert!(e.to_string().contains("Trace-Id"), "{e}");
        let e = err_of(Event::new("1", "s", "t").with_header("time", "x"));
        assert!(e.to_string().contains("CloudEvents attribute"), "{e}");
    }
}
