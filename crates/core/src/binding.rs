//! Event ↔ broker headers, following the CloudEvents protocol bindings in
//! binary content mode. Adapters call [`Binding::encode`] and
//! [`Binding::decode`] instead of writing their own mapping; see
//! `docs/headers.md` for the table per broker.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};

use crate::error::{Error, Result};
use crate::event::{Event, SPEC_VERSION, validate_extension_name};
use crate::message::{Format, Header, Incoming, InputFormat, Native, Value, ordering_key};
use crate::structured;

/// W3C trace context headers, also accepted without a prefix on decode,
/// because tracing libraries write them that way.
const TRACE_HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Characters the HTTP binding (§3.1.3.2) percent-encodes in header values:
/// space, `"`, `%` and anything outside printable ASCII.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');
/// Service Bus also returns custom properties as JSON-quoted header values
/// without escaping backslashes (docs/headers.md): they are encoded too.
const SERVICEBUS_VALUE: &AsciiSet = &HEADER_VALUE.add(b'\\');

/// A CloudEvents protocol binding: how attributes travel as message headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// Kafka binding: `ce_` headers, `content-type` header, key = `partitionkey`.
    Kafka,
    /// AMQP binding: `cloudEvents:` application properties, AMQP `content-type` property.
    Amqp,
    /// AMQP binding with the `cloudEvents_` prefix it allows, used over the
    /// Service Bus REST API where properties travel as HTTP headers (no `:`
    /// allowed in a header name); values percent-encoded as in HTTP.
    ServiceBus,
    /// NATS binding: `ce-` headers, `content-type` header, values percent-encoded.
    Nats,
}

/// The standard attributes in the order they are written.
#[derive(Debug, Clone, Copy)]
enum Attr {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    DataSchema,
    Subject,
    PartitionKey,
}

macro_rules! prefixed {
    ($prefix:literal) => {
        [
            concat!($prefix, "specversion"),
            concat!($prefix, "id"),
            concat!($prefix, "source"),
            concat!($prefix, "type"),
            concat!($prefix, "time"),
            concat!($prefix, "dataschema"),
            concat!($prefix, "subject"),
            concat!($prefix, "partitionkey"),
        ]
    };
}

const KAFKA_NAMES: [&str; 8] = prefixed!("ce_");
const AMQP_NAMES: [&str; 8] = prefixed!("cloudEvents:");
const SERVICEBUS_NAMES: [&str; 8] = prefixed!("cloudEvents_");
const NATS_NAMES: [&str; 8] = prefixed!("ce-");

impl Binding {
    /// The prefix of attribute headers.
    pub fn prefix(self) -> &'static str {
        match self {
            Binding::Kafka => "ce_",
            Binding::Amqp => "cloudEvents:",
            Binding::ServiceBus => "cloudEvents_",
            Binding::Nats => "ce-",
        }
    }

    /// The header that carries `datacontenttype`, or `None` where the
    /// protocol has a native content-type property the adapter sets itself.
    pub fn content_type_header(self) -> Option<&'static str> {
        match self {
            Binding::Kafka | Binding::Nats => Some("content-type"),
            Binding::Amqp | Binding::ServiceBus => None,
        }
    }

    fn percent_encodes(self) -> bool {
        matches!(self, Binding::Nats | Binding::ServiceBus)
    }

    fn name(self, attr: Attr) -> &'static str {
        let names = match self {
            Binding::Kafka => &KAFKA_NAMES,
            Binding::Amqp => &AMQP_NAMES,
            Binding::ServiceBus => &SERVICEBUS_NAMES,
            Binding::Nats => &NATS_NAMES,
        };
        names[attr as usize]
    }

    fn value<'a>(self, v: &'a str) -> Cow<'a, str> {
        match self {
            Binding::Nats => utf8_percent_encode(v, HEADER_VALUE).into(),
            Binding::ServiceBus => utf8_percent_encode(v, SERVICEBUS_VALUE).into(),
            Binding::Kafka | Binding::Amqp => Cow::Borrowed(v),
        }
    }

    /// The headers carrying every attribute of `event` except the payload.
    /// `datacontenttype` is included only where [`Self::content_type_header`]
    /// is `Some`; otherwise the adapter maps it to its native property.
    pub fn encode(self, event: &Event) -> Vec<(Cow<'static, str>, String)> {
        let mut out = Vec::with_capacity(8 + event.headers.len());
        let mut put = |name: Cow<'static, str>, value: &str| {
            out.push((name, self.value(value).into_owned()));
        };
        put(self.name(Attr::SpecVersion).into(), SPEC_VERSION);
        put(self.name(Attr::Id).into(), &event.id);
        put(self.name(Attr::Source).into(), &event.source);
        put(self.name(Attr::Type).into(), &event.kind);
        if let Some(t) = event.time {
            put(self.name(Attr::Time).into(), &format_time(t));
        }
        for (attr, value) in [
            (Attr::DataSchema, &event.data_schema),
            (Attr::Subject, &event.subject),
            (Attr::PartitionKey, &event.key),
        ] {
            if let Some(v) = value {
                put(self.name(attr).into(), v);
            }
        }
        if let (Some(header), Some(ct)) = (self.content_type_header(), &event.content_type) {
            put(header.into(), ct);
        }
        for (name, value) in &event.headers {
            put(format!("{}{name}", self.prefix()).into(), value);
        }
        out
    }

    /// The header carrying extension `name` with `value`, for adapters that
    /// add attributes to a message they pass on without decoding it (a
    /// dead letter of an undecodable message).
    pub fn extension_header(self, name: &str, value: &str) -> (String, String) {
        (
            format!("{}{name}", self.prefix()),
            self.value(value).into_owned(),
        )
    }

    /// Rebuilds an event from a message's headers and payload, validating it.
    ///
    /// `content_type` is the native content-type property for bindings that
    /// have one (AMQP, Service Bus); for the others it is read from the headers.
    /// Headers without the binding's prefix are not CloudEvents attributes and
    /// are ignored, except W3C `traceparent`/`tracestate`. A header name that
    /// is not UTF-8, or a missing or malformed attribute, is an error naming it.
    pub fn decode<'a, I, V>(
        self,
        headers: I,
        content_type: Option<&str>,
        payload: Bytes,
    ) -> Result<Event>
    where
        I: IntoIterator<Item = (&'a [u8], V)>,
        V: AsRef<[u8]>,
    {
        let mut event = Event::new(String::new(), String::new(), String::new()).with_time(None);
        event.payload = payload;
        event.content_type = content_type.map(str::to_owned);
        let mut spec_version = None;
        let prefix = self.prefix();
        for (raw_name, raw_value) in headers {
            let raw_value = raw_value.as_ref();
            let name = std::str::from_utf8(raw_name).map_err(|_| {
                Error::invalid_event(
                    "header name",
                    format!("not valid UTF-8: {:?}", String::from_utf8_lossy(raw_name)),
                )
            })?;
            let attr = match strip_prefix_ignore_case(name, prefix) {
                Some(attr) => attr,
                None if self
                    .content_type_header()
                    .is_some_and(|h| h.eq_ignore_ascii_case(name)) =>
                {
                    "datacontenttype"
                }
                None if TRACE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) => {
                    // A prefixed trace header wins over a plain one.
                    let key = name.to_ascii_lowercase();
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        event.headers.entry(key)
                    {
                        let value = self.decode_value(slot.key(), raw_value)?;
                        slot.insert(value);
                    }
                    continue;
                }
                None => continue,
            };
            let attr = attr.to_ascii_lowercase();
            let value = self.decode_value(&attr, raw_value)?;
            match attr.as_str() {
                "specversion" => spec_version = Some(value),
                "id" => event.id = value,
                "source" => event.source = value,
                "type" => event.kind = value,
                "time" => event.time = Some(parse_time(&value)?),
                "datacontenttype" => event.content_type = Some(value),
                "dataschema" => event.data_schema = Some(value),
                "subject" => event.subject = Some(value),
                "partitionkey" => event.key = Some(value),
                _ => {
                    validate_extension_name(&attr)?;
                    event.headers.insert(attr, value);
                }
            }
        }
        check_spec_version(spec_version.as_deref())?;
        event.validate()?;
        Ok(event)
    }

    /// Reads a message as `format` asks: a CloudEvent (binary mode, by
    /// the binding's headers; structured mode, by the content type
    /// `application/cloudevents+json`) or a raw message. Headers that are
    /// not CloudEvents attributes stay on the event as native headers, with
    /// their types; so do the key (when it is not the ordering key already)
    /// and the broker properties.
    pub fn read(self, format: InputFormat, message: Incoming) -> Result<Event> {
        // Raw reads skip the header scan: nothing is parsed.
        let structured = format != InputFormat::Raw
            && self
                .content_type(&message)
                .is_some_and(structured::is_structured);
        let cloudevent = match format {
            InputFormat::Raw => false,
            InputFormat::CloudEvents => true,
            InputFormat::Auto => {
                structured
                    || message.headers.iter().any(|h| {
                        strip_prefix_ignore_case(&h.name, self.prefix())
                            .is_some_and(|a| a.eq_ignore_ascii_case("specversion"))
                    })
            }
        };
        if !cloudevent {
            return message.into_raw();
        }
        let (attributes, foreign): (Vec<Header>, Vec<Header>) = message
            .headers
            .into_iter()
            .partition(|h| self.is_attribute(&h.name));
        let mut event = if structured {
            structured::decode(&message.payload)?
        } else {
            self.decode(
                attributes
                    .iter()
                    .map(|h| (h.name.as_bytes(), h.value.to_bytes())),
                message.content_type.as_deref(),
                message.payload,
            )?
        };
        // A record key is the partitionkey (Kafka binding); an SQS group
        // or Service Bus session is a sink's derived value.
        let record_key = message.key.filter(|_| !message.derived_key);
        let key = match (&event.key, record_key) {
            (None, Some(k)) => {
                event.key = Some(ordering_key(&k));
                (event.key.as_deref() != std::str::from_utf8(&k).ok()).then_some(k)
            }
            (Some(partition_key), Some(k)) if partition_key.as_bytes() != k => Some(k),
            _ => None,
        };
        // A CloudEvent is known by its id: a broker message id beside it
        // is most often a sink's dedup key, not something to carry on.
        let mut properties = message.properties;
        properties.retain(|p| p.name != crate::message::property::MESSAGE_ID);
        event.native = Native {
            key,
            headers: foreign,
            properties,
            position: None,
        };
        Ok(event)
    }

    /// The message's content type: the native property, else the header.
    fn content_type(self, message: &Incoming) -> Option<&str> {
        message.content_type.as_deref().or_else(|| {
            let name = self.content_type_header()?;
            message
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| match &h.value {
                    Value::Text(t) => Some(t.as_str()),
                    Value::Bytes(b) => std::str::from_utf8(b).ok(),
                    _ => None,
                })
        })
    }

    /// True for a header this binding reads as a CloudEvents attribute.
    fn is_attribute(self, name: &str) -> bool {
        strip_prefix_ignore_case(name, self.prefix()).is_some()
            || self
                .content_type_header()
                .is_some_and(|h| h.eq_ignore_ascii_case(name))
            || TRACE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The native headers to write for `event` beside what [`Self::encode`]
    /// gives: its headers as they arrived (for a CloudEvent, those that do
    /// not collide with an attribute header), then the properties the sink
    /// has no place for (`sink_properties` lists those it has), then, for a
    /// raw message with a content type and a binding whose content type is
    /// a header, that header.
    pub fn native_headers<'a>(
        self,
        event: &'a Event,
        sink_properties: &'a [&str],
    ) -> impl Iterator<Item = Cow<'a, Header>> + 'a {
        let raw = event.format == Format::Raw;
        let headers = event
            .native
            .headers
            .iter()
            .filter(move |h| raw || !self.is_attribute(&h.name));
        let properties = event
            .native
            .properties
            .iter()
            .filter(|p| !sink_properties.contains(&p.name.as_str()));
        let content_type = match (raw, self.content_type_header(), &event.content_type) {
            (true, Some(name), Some(ct)) if event.native.header(name).is_none() => {
                Some(Header::text(name, ct.as_str()))
            }
            _ => None,
        };
        headers
            .chain(properties)
            .map(Cow::Borrowed)
            .chain(content_type.map(Cow::Owned))
    }

    fn decode_value(self, attr: &str, raw: &[u8]) -> Result<String> {
        let text = std::str::from_utf8(raw)
            .map_err(|_| Error::invalid_event(attr, "value is not valid UTF-8"))?;
        if self.percent_encodes() {
            percent_decode_str(text)
                .decode_utf8()
                .map(Cow::into_owned)
                .map_err(|_| Error::invalid_event(attr, "percent-decoded value is not valid UTF-8"))
        } else {
            Ok(text.to_owned())
        }
    }
}

/// A CloudEvent's `specversion`, present and the one causeway speaks.
pub(crate) fn check_spec_version(found: Option<&str>) -> Result<()> {
    match found {
        Some(SPEC_VERSION) => Ok(()),
        Some(other) => Err(Error::invalid_event(
            "specversion",
            format!("`{other}` is not supported; expected `{SPEC_VERSION}`"),
        )),
        None => Err(Error::invalid_event("specversion", "missing")),
    }
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Formats `time` as RFC 3339 in UTC, keeping sub-second precision.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 `time` attribute.
pub fn parse_time(value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| Error::invalid_event("time", format!("`{value}` is not RFC 3339: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const ALL: [Binding; 4] = [
        Binding::Kafka,
        Binding::Amqp,
        Binding::ServiceBus,
        Binding::Nats,
    ];

    fn full_event() -> Event {
        Event::new(
            "id-1",
            "kafka://onprem/transactions-3",
            "finbank.transaction.created",
        )
        .with_key("acct-42")
        .with_subject("accounts/42")
        .with_content_type("application/json; charset=utf-8")
        .with_header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("region", "zürich \"HQ\" 100%")
        .with_payload(&b"\x00\xffbinary"[..])
    }

    fn round_trip(binding: Binding, event: &Event) -> Event {
        let headers = binding.encode(event);
        let native_ct = binding
            .content_type_header()
            .is_none()
            .then_some(())
            .and(event.content_type.as_deref());
        binding
            .decode(
                headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                native_ct,
                event.payload.clone(),
            )
            .unwrap()
    }

    #[test]
    fn every_field_round_trips_through_every_binding() {
        let mut event = full_event();
        event.data_schema = Some("https://schemas.example/tx.json".into());
        for binding in ALL {
            assert_eq!(round_trip(binding, &event), event, "{binding:?}");
        }
    }

    #[test]
    fn header_names_follow_each_binding() {
        let kafka = Binding::Kafka.encode(&full_event());
        assert!(kafka.iter().any(|(k, v)| k == "ce_id" && v == "id-1"));
        assert!(kafka.iter().any(|(k, _)| k == "content-type"));
        let amqp = Binding::Amqp.encode(&full_event());
        assert!(amqp.iter().any(|(k, _)| k == "cloudEvents:partitionkey"));
        assert!(!amqp.iter().any(|(k, _)| k.contains("datacontenttype")));
        let nats = Binding::Nats.encode(&full_event());
        let region = nats.iter().find(|(k, _)| k == "ce-region").unwrap();
        assert_eq!(region.1, "z%C3%BCrich%20%22HQ%22%20100%25");
    }

    #[test]
    fn non_utf8_header_name_is_an_error_naming_the_field() {
        let err = Binding::Kafka
            .decode([(&b"ce_\xffbad"[..], &b"x"[..])], None, Bytes::new())
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidEvent);
        assert!(err.to_string().contains("header name"), "{err}");
    }

    #[test]
    fn missing_id_and_specversion_are_errors_naming_the_field() {
        let mut headers = Binding::Kafka.encode(&full_event());
        headers.retain(|(k, _)| k != "ce_id");
        let err = Binding::Kafka
            .decode(
                headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                None,
                Bytes::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("`id`"), "{err}");
        let err = Binding::Kafka
            .decode([(&b"ce_id"[..], &b"1"[..])], None, Bytes::new())
            .unwrap_err();
        assert!(err.to_string().contains("specversion"), "{err}");
    }

    #[test]
    fn malformed_time_and_foreign_headers() {
        let err = Binding::Kafka
            .decode(
                [
                    (&b"ce_specversion"[..], &b"1.0"[..]),
                    (b"ce_id", b"1"),
                    (b"ce_source", b"s"),
                    (b"ce_type", b"t"),
                    (b"ce_time", b"yesterday"),
                ],
                None,
                Bytes::new(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("`time`"), "{err}");
        let event = Binding::Kafka
            .decode(
                [
                    (&b"ce_specversion"[..], &b"1.0"[..]),
                    (b"ce_id", b"1"),
                    (b"ce_source", b"s"),
                    (b"ce_type", b"t"),
                    (b"X-Foreign", b"ignored"),
                    (b"traceparent", b"00-a-b-01"),
                ],
                None,
                Bytes::new(),
            )
            .unwrap();
        assert_eq!(event.headers.len(), 1);
        assert_eq!(event.header("traceparent"), Some("00-a-b-01"));
    }

    #[test]
    fn read_keeps_foreign_headers_and_takes_plain_messages_raw() {
        use crate::message::{Value, property};
        let mut headers: Vec<Header> = Binding::Kafka
            .encode(&full_event())
            .into_iter()
            .map(|(k, v)| Header::new(k, Value::Bytes(Bytes::from(v))))
            .collect();
        headers.push(Header::new(
            "X-Foreign",
            Value::Bytes(Bytes::from_static(b"\xff")),
        ));
        let incoming = Incoming {
            origin: "kafka://t".into(),
            headers,
            key: Some(Bytes::from_static(b"acct-42")),
            properties: vec![Header::text(property::CORRELATION_ID, "c")],
            payload: full_event().payload,
            ..Incoming::default()
        };
        let event = Binding::Kafka
            .read(InputFormat::Auto, incoming.clone())
            .unwrap();
        assert_eq!(event.format, Format::CloudEvents);
        assert_eq!(event.id, "id-1");
        assert_eq!(event.native.headers.len(), 1);
        assert_eq!(event.native.key, None, "the key is the partitionkey");
        assert_eq!(event.native.properties.len(), 1);
        let written: Vec<_> = Binding::Kafka.native_headers(&event, &[]).collect();
        assert_eq!(written.len(), 2, "{written:?}");

        let raw = Binding::Kafka
            .read(InputFormat::Raw, incoming.clone())
            .unwrap();
        assert_eq!(raw.format, Format::Raw);
        assert_eq!(raw.native.headers.len(), incoming.headers.len());
        assert_eq!(raw.native.key.as_deref(), Some(&b"acct-42"[..]));

        let plain = Incoming {
            headers: vec![Header::text("content-type", "application/json")],
            ..incoming.clone()
        };
        assert_eq!(
            Binding::Kafka
                .read(InputFormat::Auto, plain.clone())
                .unwrap()
                .format,
            Format::Raw
        );
        let err = Binding::Kafka
            .read(InputFormat::CloudEvents, plain)
            .unwrap_err();
        assert!(err.to_string().contains("specversion"), "{err}");
    }

    #[test]
    fn structured_mode_is_recognised_by_its_content_type() {
        use crate::message::Value;
        let json =
            br#"{"specversion":"1.0","id":"s-1","source":"/ledger","type":"tx","data":{"a":1}}"#;
        let kafka = Incoming {
            origin: "kafka://t".into(),
            headers: vec![
                Header::new(
                    "content-type",
                    Value::Bytes(Bytes::from_static(
                        b"application/cloudevents+json; charset=utf-8",
                    )),
                ),
                Header::text("x-tenant", "eu"),
            ],
            key: Some(Bytes::from_static(b"acct-1")),
            payload: Bytes::from_static(json),
            ..Incoming::default()
        };
        let event = Binding::Kafka
            .read(InputFormat::Auto, kafka.clone())
            .unwrap();
        assert_eq!(event.format, Format::CloudEvents);
        assert_eq!((event.id.as_str(), event.kind.as_str()), ("s-1", "tx"));
        assert_eq!(&event.payload[..], br#"{"a":1}"#);
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            event.key.as_deref(),
            Some("acct-1"),
            "the record key orders it"
        );
        assert_eq!(event.native.headers, vec![Header::text("x-tenant", "eu")]);
        // Raw keeps the JSON as it came, content type and all.
        let raw = Binding::Kafka.read(InputFormat::Raw, kafka).unwrap();
        assert_eq!(&raw.payload[..], json);
        assert_eq!(raw.native.headers.len(), 2);

        // AMQP and Service Bus: the native content-type property.
        let amqp = Incoming {
            origin: "amqp://q".into(),
            content_type: Some("application/cloudevents+json".into()),
            payload: Bytes::from_static(json),
            ..Incoming::default()
        };
        let event = Binding::Amqp.read(InputFormat::CloudEvents, amqp).unwrap();
        assert_eq!(event.id, "s-1");
        let broken = Incoming {
            origin: "amqp://q".into(),
            content_type: Some("application/cloudevents+json".into()),
            payload: Bytes::from_static(b"{\"id\":1}"),
            ..Incoming::default()
        };
        let err = Binding::Amqp.read(InputFormat::Auto, broken).unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
    }
}
