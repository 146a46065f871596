//! CloudEvents in structured content mode (JSON event format): the whole
//! event, attributes and data, as one JSON object in the payload, with the
//! content type `application/cloudevents+json`. Sources read it; sinks
//! always write binary mode (an intermediary may change the mode, and
//! binary mode is what every causeway sink speaks), so the event arrives
//! with the same attributes and its data as the payload.

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::binding::{check_spec_version, parse_time};
use crate::error::{Error, Result};
use crate::event::{Event, validate_extension_name};

/// The media type of a structured-mode CloudEvent in JSON.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// True when `content_type` (parameters such as `charset` allowed) names a
/// structured-mode CloudEvent in JSON. Batches
/// (`application/cloudevents-batch+json`) are not: they are carried raw.
pub fn is_structured(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case(CONTENT_TYPE)
}

/// Reads a structured-mode CloudEvent: the attributes from the JSON
/// object's members, the payload from `data` (a JSON value kept byte for
/// byte as it was written, or a string's text where the content type is
/// not JSON) or `data_base64`. An error names the member at fault.
pub fn decode(payload: &[u8]) -> Result<Event> {
    // Raw values: `data` stays as it was written.
    let members: BTreeMap<String, Box<RawValue>> = serde_json::from_slice(payload)
        .map_err(|e| Error::invalid_event("body", format!("not a JSON object: {e}")))?;
    let mut event = Event::new(String::new(), String::new(), String::new()).with_time(None);
    let mut spec_version = None;
    let (mut data, mut data_base64) = (None, None);
    for (name, value) in members {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(string(&name, &value)?),
            "specversion" => spec_version = Some(string(&name, &value)?),
            "id" => event.id = string(&name, &value)?,
            "source" => event.source = string(&name, &value)?,
            "type" => event.kind = string(&name, &value)?,
            "time" => event.time = Some(parse_time(&string(&name, &value)?)?),
            "datacontenttype" => event.content_type = Some(string(&name, &value)?),
            "dataschema" => event.data_schema = Some(string(&name, &value)?),
            "subject" => event.subject = Some(string(&name, &value)?),
            "partitionkey" => event.key = Some(string(&name, &value)?),
            _ => {
                if let Some(text) = extension(&name, &value)? {
                    validate_extension_name(&name)?;
                    event.headers.insert(name, text);
                }
            }
        }
    }
    check_spec_version(spec_version.as_deref())?;
    event.payload = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid_event(
                "data_base64",
                "`data` and `data_base64` are both present",
            ));
        }
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .map(Bytes::from)
            .map_err(|e| Error::invalid_event("data_base64", format!("not base64: {e}")))?,
        (Some(value), None) => data_payload(&mut event, &value)?,
        (None, None) => Bytes::new(),
    };
    event.validate()?;
    Ok(event)
}

/// `data` as the payload: JSON as written when the data is JSON (the JSON
/// format's default when `datacontenttype` is absent), a string's text
/// otherwise.
fn data_payload(event: &mut Event, value: &RawValue) -> Result<Bytes> {
    let json = event.content_type.as_deref().is_none_or(is_json);
    if json {
        event
            .content_type
            .get_or_insert_with(|| "application/json".to_owned());
        return Ok(Bytes::copy_from_slice(value.get().as_bytes()));
    }
    match serde_json::from_str::<serde_json::Value>(value.get()) {
        Ok(serde_json::Value::String(text)) => Ok(Bytes::from(text)),
        _ => Err(Error::invalid_event(
            "data",
            format!(
                "the content type `{}` is not JSON, so `data` must be a string",
                event.content_type.as_deref().unwrap_or_default()
            ),
        )),
    }
}

fn string(name: &str, value: &RawValue) -> Result<String> {
    match serde_json::from_str::<serde_json::Value>(value.get()) {
        Ok(serde_json::Value::String(text)) => Ok(text),
        _ => Err(Error::invalid_event(name, "must be a JSON string")),
    }
}

/// An extension's value as text: strings as they are, booleans and
/// integers in their canonical form (CloudEvents' JSON format allows
/// those); `null` is an absent attribute.
fn extension(name: &str, value: &RawValue) -> Result<Option<String>> {
    match serde_json::from_str::<serde_json::Value>(value.get()) {
        Ok(serde_json::Value::String(text)) => Ok(Some(text)),
        Ok(serde_json::Value::Bool(b)) => Ok(Some(b.to_string())),
        Ok(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Ok(serde_json::Value::Null) => Ok(None),
        _ => Err(Error::invalid_event(
            name,
            "an extension must be a string, a boolean or an integer",
        )),
    }
}

fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

fn is_json(content_type: &str) -> bool {
    let media = media_type(content_type).to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    const FULL: &str = r#"{
        "specversion": "1.0", "id": "tx-1", "source": "/finbank/ledger",
        "type": "finbank.transaction.created", "time": "2026-11-30T12:00:00Z",
        "subject": "acct-7", "partitionkey": "7", "dataschema": "urn:tx:v1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "attempt": 3, "replayed": false, "comment": null,
        "data": {"amount": 12.50,  "currency": "EUR"}
    }"#;

    #[test]
    fn a_full_event_keeps_its_attributes_and_its_data_as_written() {
        let event = decode(FULL.as_bytes()).unwrap();
        assert_eq!(event.id, "tx-1");
        assert_eq!(event.source, "/finbank/ledger");
        assert_eq!(event.kind, "finbank.transaction.created");
        assert_eq!(event.subject.as_deref(), Some("acct-7"));
        assert_eq!(event.key.as_deref(), Some("7"));
        assert_eq!(event.data_schema.as_deref(), Some("urn:tx:v1"));
        assert_eq!(event.content_type.as_deref(), Some("application/json"));
        assert_eq!(event.header("attempt"), Some("3"));
        assert_eq!(event.header("replayed"), Some("false"));
        assert_eq!(event.header("comment"), None);
        assert!(event.header("traceparent").is_some());
        // Byte for byte, the spacing and the number's form included.
        assert_eq!(
            &event.payload[..],
            br#"{"amount": 12.50,  "currency": "EUR"}"#
        );
        assert!(!event.is_raw());
    }

    #[test]
    fn base64_and_text_data_become_their_bytes() {
        let binary = r#"{"specversion":"1.0","id":"1","source":"s","type":"t",
            "datacontenttype":"application/octet-stream","data_base64":"AP8="}"#;
        assert_eq!(&decode(binary.as_bytes()).unwrap().payload[..], [0, 255]);
        let text = r#"{"specversion":"1.0","id":"1","source":"s","type":"t",
            "datacontenttype":"text/plain","data":"a \"quoted\" line"}"#;
        assert_eq!(
            &decode(text.as_bytes()).unwrap().payload[..],
            br#"a "quoted" line"#
        );
        let none = r#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        let event = decode(none.as_bytes()).unwrap();
        assert!(event.payload.is_empty());
        assert_eq!(event.content_type, None);
    }

    #[test]
    fn what_is_wrong_is_named() {
        for (json, field) in [
            ("[1, 2]", "body"),
            ("{not json", "body"),
            (r#"{"id":"1","source":"s","type":"t"}"#, "specversion"),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "specversion",
            ),
            (r#"{"specversion":"1.0","source":"s","type":"t"}"#, "id"),
            (
                r#"{"specversion":"1.0","id":7,"source":"s","type":"t"}"#,
                "id",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}"#,
                "time",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","nested":{"a":1}}"#,
                "nested",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad-Name":"x"}"#,
                "header name",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"AA=="}"#,
                "data_base64",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}"#,
                "data_base64",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","datacontenttype":"text/plain","data":{"a":1}}"#,
                "data",
            ),
            (
                r#"{"specversion":"1.0","id":"1\u0000","source":"s","type":"t"}"#,
                "id",
            ),
        ] {
            let e = decode(json.as_bytes()).expect_err(json);
            assert_eq!(e.kind(), ErrorKind::InvalidEvent, "{json}");
            assert!(
                e.to_string().contains(field),
                "{json}: `{e}` should name {field}"
            );
        }
    }

    #[test]
    fn the_content_type_is_recognised_with_parameters_and_in_any_case() {
        assert!(is_structured("application/cloudevents+json"));
        assert!(is_structured("Application/CloudEvents+JSON; charset=utf-8"));
        assert!(!is_structured("application/cloudevents-batch+json"));
        assert!(!is_structured("application/json"));
    }
}
