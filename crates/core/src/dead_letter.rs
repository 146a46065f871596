//! Headers a dead-lettered event carries, the same on every backend.

use std::fmt::Write as _;

use crate::event::{Event, is_forbidden_char, validate_extension_name};

/// Why the event was dead-lettered.
pub const REASON: &str = "deadletterreason";
/// How many deliveries it had.
pub const ATTEMPTS: &str = "deadletterattempts";
/// Where it came from (topic, queue, partition/offset, route).
pub const ORIGIN: &str = "deadletterorigin";
/// Extension attributes whose names CloudEvents does not allow, kept as
/// escaped `name=value` pairs separated by `; `.
pub const INVALID_HEADERS: &str = "deadletterinvalidheaders";

/// Marks `event` as dead-lettered from `origin` after `attempts` deliveries:
/// extension attributes on a CloudEvent, native headers on a raw message
/// (whose sinks write no attributes).
pub fn mark(event: &mut Event, reason: &str, attempts: u32, origin: &str) {
    if event.is_raw() {
        for (name, value) in [
            (REASON, reason.to_owned()),
            (ATTEMPTS, attempts.to_string()),
            (ORIGIN, origin.to_owned()),
        ] {
            event.native.headers.retain(|h| h.name != name);
            event
                .native
                .headers
                .push(crate::message::Header::text(name, value));
        }
        return;
    }
    event.headers.insert(REASON.to_owned(), reason.to_owned());
    event
        .headers
        .insert(ATTEMPTS.to_owned(), attempts.to_string());
    event.headers.insert(ORIGIN.to_owned(), origin.to_owned());
}

/// The type of a stand-in event for a message that could not be decoded.
pub const UNDECODABLE_TYPE: &str = "causeway.undecodable";

/// A stand-in event for a message a source could not decode: the payload
/// byte for byte, `source` = `origin` (the topic, queue or subject as a
/// URI), `id` = the message's place there (offset, sequence, message id),
/// type [`UNDECODABLE_TYPE`], the message's headers as extension attributes
/// (names lowercased, values as lossy UTF-8) and its key. It need not be a
/// valid event: [`storable_copy`] makes the dead letter of it.
pub fn stand_in<'a>(
    origin: &str,
    place: &str,
    payload: bytes::Bytes,
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Event {
    let mut event = Event::new(place, origin, UNDECODABLE_TYPE).with_payload(payload);
    event.key = key.map(|k| String::from_utf8_lossy(k).into_owned());
    for (name, value) in headers {
        event.headers.insert(
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    event
}

/// A dead-letter copy of `event` that any store and broker can carry, even
/// when `event` itself is invalid: control characters become visible
/// `\u{..}` escapes, an empty required attribute gets a stand-in (an empty
/// id one derived from the whole event, so two such events stay apart),
/// extension attributes with invalid names move into [`INVALID_HEADERS`];
/// then it is [`mark`]ed. A valid event is only marked.
pub fn storable_copy(event: &Event, reason: &str, attempts: u32, origin: &str) -> Event {
    let mut copy = event.clone();
    if event.validate().is_err() {
        copy.id = escape(&event.id);
        if copy.id.is_empty() {
            copy.id = format!("empty-id-{:016x}", fingerprint(event));
        }
        copy.source = escape(&event.source).replace(char::is_whitespace, "%20");
        if copy.source.is_empty() {
            copy.source = "causeway:empty-source".to_owned();
        }
        copy.kind = escape(&event.kind);
        if copy.kind.is_empty() {
            copy.kind = "causeway.empty-type".to_owned();
        }
        for field in [
            &mut copy.content_type,
            &mut copy.data_schema,
            &mut copy.subject,
            &mut copy.key,
        ] {
            *field = field.as_deref().map(escape).filter(|v| !v.is_empty());
        }
        let mut invalid = String::new();
        copy.headers = event
            .headers
            .iter()
            .filter_map(|(name, value)| {
                if validate_extension_name(name).is_ok() {
                    return Some((name.clone(), escape(value)));
                }
                if !invalid.is_empty() {
                    invalid.push_str("; ");
                }
                let _ = write!(invalid, "{}={}", escape(name), escape(value));
                None
            })
            .collect();
        if !invalid.is_empty() {
            copy.headers.insert(INVALID_HEADERS.to_owned(), invalid);
        }
    }
    mark(&mut copy, &escape(reason), attempts, &escape(origin));
    copy
}

/// `text` with each control character written as a `\u{..}` escape.
pub fn escape(text: &str) -> String {
    if !text.contains(is_forbidden_char) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if is_forbidden_char(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A stable hash of everything in `event`.
fn fingerprint(event: &Event) -> u64 {
    crate::template::key_hash(format!("{event:?}").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_event_has_a_valid_storable_copy() {
        let bad = Event::new("a\r\nb", "s\u{0}", "")
            .with_key("k\u{1b}")
            .with_header("traceparent", "\u{0}x")
            .with_header("Bad-Name", "v\n")
            .with_payload("payload kept as it is \u{0}");
        let copy = storable_copy(&bad, "field `id`: control", 1, "route r");
        copy.validate().unwrap();
        assert_eq!(copy.id, "a\\u{d}\\u{a}b");
        assert_eq!(copy.source, "s\\u{0}");
        assert_eq!(copy.kind, "causeway.empty-type");
        assert_eq!(copy.key.as_deref(), Some("k\\u{1b}"));
        assert_eq!(copy.header("traceparent"), Some("\\u{0}x"));
        assert_eq!(copy.header(INVALID_HEADERS), Some("Bad-Name=v\\u{a}"));
        assert_eq!(copy.header(REASON), Some("field `id`: control"));
        assert_eq!(copy.payload, bad.payload);
    }

    #[test]
    fn empty_ids_stay_apart() {
        let a = storable_copy(&Event::new("", "s", "t").with_payload("a"), "r", 1, "o");
        let b = storable_copy(&Event::new("", "s", "t").with_payload("b"), "r", 1, "o");
        a.validate().unwrap();
        assert!(a.id.starts_with("empty-id-"));
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn a_valid_event_is_only_marked() {
        let good = Event::new("1", "s", "t").with_header("traceparent", "00-x");
        let mut marked = good.clone();
        mark(&mut marked, "r", 2, "o");
        assert_eq!(storable_copy(&good, "r", 2, "o"), marked);
    }
}
