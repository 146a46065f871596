//! Payloads over brokers whose message body is text (SQS, the Service Bus
//! REST API): a payload that is acceptable text goes as it is; any other
//! goes in base64, or as nothing when empty, and a marker (a header or
//! property the adapter names) says which.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;

use crate::error::{Error, Result};

/// The marker of a body that is the payload in base64.
pub const BASE64: &str = "base64";
/// The marker of an empty payload (whatever the body holds).
pub const EMPTY: &str = "empty";

/// The body for `payload`, and the marker to send with it where the body
/// is not the payload's own text. `fits` says which text the broker takes
/// as a body as it is.
pub fn encode(payload: &[u8], fits: impl Fn(&str) -> bool) -> (String, Option<&'static str>) {
    match std::str::from_utf8(payload).ok().filter(|t| fits(t)) {
        Some(text) => (text.to_owned(), None),
        None if payload.is_empty() => (String::new(), Some(EMPTY)),
        None => (B64.encode(payload), Some(BASE64)),
    }
}

/// The payload back from a received `body` and its `marker`; `field` names
/// the marker in the error for a body that does not match it.
pub fn decode(body: &str, marker: Option<&str>, field: &str) -> Result<Bytes> {
    match marker {
        None => Ok(Bytes::copy_from_slice(body.as_bytes())),
        Some(EMPTY) => Ok(Bytes::new()),
        Some(BASE64) => B64
            .decode(body)
            .map(Bytes::from)
            .map_err(|e| Error::invalid_event(field, format!("body is not base64: {e}"))),
        Some(other) => Err(Error::invalid_event(
            field,
            format!("unknown body encoding `{other}`"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_binary_and_empty_payloads_come_back() {
        for payload in [&b"{\"a\":1}"[..], &[0xff, 0, 1][..], &[][..]] {
            let (body, marker) = encode(payload, |t| !t.is_empty());
            assert_eq!(decode(&body, marker, "enc").expect("decodes"), payload);
        }
        assert!(decode("%%", Some(BASE64), "enc").is_err());
        assert!(decode("x", Some("rot13"), "enc").is_err());
    }
}
