//! What a route makes of a message between its source and its sink: the
//! identity of a raw message, raw messages wrapped into CloudEvents,
//! CloudEvents unwrapped into plain messages (docs/headers.md).

use causeway_core::{Event, Format, Identity, Template};

use crate::config::RouteConfig;

/// A route's shaping, parsed once from its config.
#[derive(Debug, Clone)]
pub struct Shape {
    identity: Identity,
    wrap: Option<Wrap>,
    unwrap: bool,
}

#[derive(Debug, Clone)]
struct Wrap {
    kind: Template,
    source: Option<Template>,
}

impl Shape {
    /// The shaping `config` asks for (its templates were checked when the
    /// config was read).
    pub fn new(config: &RouteConfig) -> causeway_core::Result<Self> {
        let wrap = match &config.wrap {
            Some(w) => Some(Wrap {
                kind: Template::parse(&w.kind)?,
                source: w.source.as_deref().map(Template::parse).transpose()?,
            }),
            None => None,
        };
        Ok(Shape {
            identity: config.identity.clone(),
            wrap,
            unwrap: config.unwrap,
        })
    }

    /// Shapes `event` for the sink. A raw message that lacks the identity
    /// the route asks for is an error: it becomes a dead letter.
    pub fn apply(&self, event: &mut Event) -> causeway_core::Result<()> {
        if event.is_raw() {
            if self.identity != Identity::Auto {
                event.id = self.identity.of(event)?;
            }
            if let Some(wrap) = &self.wrap {
                event.kind = wrap.kind.render(event).into_owned();
                if let Some(source) = &wrap.source {
                    event.source = source.render(event).into_owned();
                }
                event.format = Format::CloudEvents;
            }
        } else if self.unwrap {
            event.format = Format::Raw;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_core::{Header, Incoming};

    fn route(extra: &str) -> RouteConfig {
        let text = format!("source = \"a\"\nsink = \"b\"\ndestination = \"d\"\n{extra}");
        toml::from_str(&text).expect("route config")
    }

    fn raw() -> Event {
        Incoming {
            origin: "kafka://transactions-3".into(),
            headers: vec![Header::text("tx-id", "T-9"), Header::text("kind", "debit")],
            position: Some("transactions-3/0/7".into()),
            payload: bytes::Bytes::from_static(b"{}"),
            ..Incoming::default()
        }
        .into_raw()
        .expect("raw")
    }

    #[test]
    fn identity_wrap_and_unwrap() {
        let shape = Shape::new(&route(
            "identity = \"header:tx-id\"\n[wrap]\ntype = \"finbank.{header.kind}\"",
        ))
        .unwrap();
        let mut e = raw();
        shape.apply(&mut e).unwrap();
        assert_eq!(e.id, "T-9");
        assert_eq!(e.kind, "finbank.debit");
        assert_eq!(e.source, "kafka://transactions-3");
        assert_eq!(e.format, Format::CloudEvents);
        e.validate().unwrap();

        let mut missing = raw();
        missing.native.headers.clear();
        let err = shape.apply(&mut missing).unwrap_err();
        assert!(err.to_string().contains("tx-id"), "{err}");

        let unwrap = Shape::new(&route("unwrap = true")).unwrap();
        let mut ce = Event::new("1", "s", "t");
        unwrap.apply(&mut ce).unwrap();
        assert!(ce.is_raw());
    }
}
