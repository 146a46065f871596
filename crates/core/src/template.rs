//! Destination templates over an event, e.g. `transactions-{key_hash % 10}`
//! (the seed's `transactions-{AccountId % 10}`). Parsed once, rendered per event.
//!
//! Placeholders: `{key}`, `{key_hash % N}`, `{type}`, `{subject}`,
//! `{source}`, `{header.NAME}` (an extension attribute, else a native header). `key_hash` is FNV-1a (64 bit) of the key, or
//! of the id when the event has no key: stable across processes and versions.

use std::borrow::Cow;

use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;

/// A parsed destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Key,
    KeyHashMod(u64),
    Type,
    Subject,
    Source,
    Header(String),
}

/// How many destinations an adapter keeps per-destination state for
/// (a queue's URL, a client): templates render as many as events say, and
/// a cache past this is dropped and filled again.
pub const CACHE_LIMIT: usize = 4096;

/// FNV-1a, 64 bit.
pub fn key_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Template {
    /// Parses `text`; an unknown placeholder or a bad modulus is a config error naming it.
    pub fn parse(text: &str) -> Result<Template> {
        let bad = |what: String| {
            Error::new(
                ErrorKind::Config,
                format!("destination template `{text}`: {what}"),
            )
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad("unclosed `{`".into()))?
                + open;
            let inner = rest[open + 1..close].trim();
            parts.push(match inner {
                "key" => Part::Key,
                "type" => Part::Type,
                "subject" => Part::Subject,
                "source" => Part::Source,
                _ if inner.starts_with("header.") => {
                    Part::Header(inner["header.".len()..].to_owned())
                }
                _ => match inner.split_once('%') {
                    Some((lhs, n)) if lhs.trim() == "key_hash" => {
                        let n: u64 = n
                            .trim()
                            .parse()
                            .map_err(|_| bad(format!("`{}` is not a number", n.trim())))?;
                        if n == 0 {
                            return Err(bad("modulus must be positive".into()));
                        }
                        Part::KeyHashMod(n)
                    }
                    _ => return Err(bad(format!("unknown placeholder `{{{inner}}}`"))),
                },
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// Whether every event gets the same destination.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Whether the event's own values (key, type, subject, source, a
    /// header) pick the destination, so that it can name one that does not
    /// exist. `{key_hash % N}` only spreads events over N destinations the
    /// route names.
    pub fn is_chosen_by_event(&self) -> bool {
        self.parts
            .iter()
            .any(|p| !matches!(p, Part::Literal(_) | Part::KeyHashMod(_)))
    }

    /// The destination of `event`. A missing key, subject or header renders
    /// empty. What comes from the event (key, type, subject, source,
    /// headers) is made inert for every broker: characters other than ASCII
    /// letters, digits, `.`, `_` and `-` become `_`, so an event cannot name
    /// a queue URL (`://`), a NATS wildcard (`*`, `>`) or a path. (Empty
    /// NATS tokens are the NATS publisher's to refuse, per event.)
    pub fn render<'a>(&'a self, event: &Event) -> Cow<'a, str> {
        if let [Part::Literal(s)] = self.parts.as_slice() {
            return Cow::Borrowed(s);
        }
        let mut out = String::new();
        for part in &self.parts {
            let value = match part {
                Part::Literal(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::KeyHashMod(n) => {
                    let basis = event.key.as_deref().unwrap_or(&event.id);
                    out.push_str(&(key_hash(basis.as_bytes()) % n).to_string());
                    continue;
                }
                Part::Key => Cow::Borrowed(event.key.as_deref().unwrap_or_default()),
                Part::Type => Cow::Borrowed(event.kind.as_str()),
                Part::Subject => Cow::Borrowed(event.subject.as_deref().unwrap_or_default()),
                Part::Source => Cow::Borrowed(event.source.as_str()),
                // An extension attribute, else a native header (a raw message's).
                Part::Header(h) => match event.header(h) {
                    Some(v) => Cow::Borrowed(v),
                    None => event
                        .native
                        .header(h)
                        .and_then(crate::message::Value::to_text)
                        .unwrap_or_default(),
                },
            };
            out.extend(value.chars().map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            }));
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_seed_template_stably() {
        let t = Template::parse("transactions-{key_hash % 10}").unwrap();
        let e = Event::new("1", "s", "t").with_key("account-42");
        let d = t.render(&e).into_owned();
        assert_eq!(d, format!("transactions-{}", key_hash(b"account-42") % 10));
        assert_eq!(t.render(&e), d, "same key, same destination");
        assert!(!t.is_static());
        assert!(!t.is_chosen_by_event());
        assert!(Template::parse("q-{key}").unwrap().is_chosen_by_event());
    }

    #[test]
    fn values_from_events_cannot_steer_the_destination() {
        let t = Template::parse("q-{header.region}").unwrap();
        let with = |v: &str| Event::new("1", "s", "t").with_header("region", v);
        // An SQS queue URL, NATS wildcards, path and whitespace: made inert.
        assert_eq!(
            t.render(&with("https://sqs.eu-west-1.amazonaws.com/999/x")),
            "q-https___sqs.eu-west-1.amazonaws.com_999_x"
        );
        assert_eq!(t.render(&with("a.*.>")), "q-a._._");
        assert_eq!(t.render(&with("eu west")), "q-eu_west");
        assert_eq!(t.render(&Event::new("1", "s", "t")), "q-");
    }

    #[test]
    fn placeholders_and_errors() {
        let t = Template::parse("{type}.{key}.{header.region}").unwrap();
        let e = Event::new("1", "s", "tx.created")
            .with_key("k")
            .with_header("region", "eu");
        assert_eq!(t.render(&e), "tx.created.k.eu");
        assert!(Template::parse("plain").unwrap().is_static());
        assert!(
            Template::parse("a-{nope}")
                .unwrap_err()
                .to_string()
                .contains("{nope}")
        );
        assert!(Template::parse("a-{key_hash % 0}").is_err());
        assert!(Template::parse("a-{key").is_err());
    }
}
