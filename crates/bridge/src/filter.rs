//! Content-based routing: which events a sink takes. Conditions compare one
//! field each (equality, prefix, glob, regular expression), combined as
//! `all` and `any`; no scripting language. An event a sink does not take is
//! counted as filtered, never dead-lettered.

use std::borrow::Cow;

use causeway_core::{Event, Value};
use globset::{Glob, GlobMatcher};
use regex::Regex;

use crate::config::{ConditionConfig, FilterConfig};

/// A sink's filter, compiled once.
#[derive(Debug, Clone)]
pub struct Filter {
    all: Vec<Condition>,
    any: Vec<Condition>,
}

#[derive(Debug, Clone)]
struct Condition {
    field: Field,
    test: Test,
}

#[derive(Debug, Clone)]
enum Field {
    Id,
    Type,
    Source,
    Subject,
    Key,
    Header(String),
}

#[derive(Debug, Clone)]
enum Test {
    Equals(String),
    Prefix(String),
    Glob(GlobMatcher),
    Regex(Regex),
}

impl Filter {
    /// Compiles `config`; the error names the condition that is wrong.
    pub fn new(config: &FilterConfig) -> Result<Filter, String> {
        let compile = |list: &[ConditionConfig], which: &str| {
            list.iter()
                .enumerate()
                .map(|(i, c)| Condition::new(c).map_err(|e| format!("{which}[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Filter {
            all: compile(&config.all, "all")?,
            any: compile(&config.any, "any")?,
        })
    }

    /// Whether the sink takes `event`.
    pub fn takes(&self, event: &Event) -> bool {
        self.all.iter().all(|c| c.holds(event))
            && (self.any.is_empty() || self.any.iter().any(|c| c.holds(event)))
    }
}

impl Condition {
    fn new(c: &ConditionConfig) -> Result<Condition, String> {
        let field = match c.field.as_str() {
            "id" => Field::Id,
            "type" => Field::Type,
            "source" => Field::Source,
            "subject" => Field::Subject,
            "key" => Field::Key,
            other => match other.strip_prefix("header.") {
                Some(name) if !name.is_empty() => Field::Header(name.to_owned()),
                _ => {
                    return Err(format!(
                        "field `{other}`: expected id, type, source, subject, key or header.NAME"
                    ));
                }
            },
        };
        let tests = [&c.equals, &c.prefix, &c.glob, &c.regex];
        if tests.iter().filter(|t| t.is_some()).count() != 1 {
            return Err("give exactly one of equals, prefix, glob, regex".to_owned());
        }
        let test = match (&c.equals, &c.prefix, &c.glob, &c.regex) {
            (Some(v), ..) => Test::Equals(v.clone()),
            (_, Some(v), ..) => Test::Prefix(v.clone()),
            (_, _, Some(v), _) => Test::Glob(
                Glob::new(v)
                    .map_err(|e| format!("glob `{v}`: {e}"))?
                    .compile_matcher(),
            ),
            (.., Some(v)) => Test::Regex(Regex::new(v).map_err(|e| format!("regex `{v}`: {e}"))?),
            _ => unreachable!("exactly one test is set"),
        };
        Ok(Condition { field, test })
    }

    fn holds(&self, event: &Event) -> bool {
        let value: Option<Cow<'_, str>> = match &self.field {
            Field::Id => Some(Cow::Borrowed(&event.id)),
            Field::Type => Some(Cow::Borrowed(&event.kind)),
            Field::Source => Some(Cow::Borrowed(&event.source)),
            Field::Subject => event.subject.as_deref().map(Cow::Borrowed),
            Field::Key => event.key.as_deref().map(Cow::Borrowed),
            Field::Header(name) => match event.header(name) {
                Some(v) => Some(Cow::Borrowed(v)),
                None => event.native.header(name).and_then(Value::to_text),
            },
        };
        let Some(value) = value else { return false };
        match &self.test {
            Test::Equals(v) => value == v.as_str(),
            Test::Prefix(p) => value.starts_with(p.as_str()),
            Test::Glob(g) => g.is_match(value.as_ref()),
            Test::Regex(r) => r.is_match(&value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_core::Header;

    fn filter(text: &str) -> Result<Filter, String> {
        let config: FilterConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        Filter::new(&config)
    }

    #[test]
    fn all_and_any_over_every_kind_of_test() {
        let f = filter(
            r#"
all = [{ field = "type", glob = "finbank.transaction.*" }]
any = [
  { field = "header.region", equals = "eu" },
  { field = "key", prefix = "vip-" },
  { field = "subject", regex = "^accounts/9\\d+$" },
]
"#,
        )
        .unwrap();
        let tx = Event::new("1", "s", "finbank.transaction.created");
        assert!(!f.takes(&tx), "no `any` holds");
        assert!(f.takes(&tx.clone().with_header("region", "eu")));
        assert!(f.takes(&tx.clone().with_key("vip-7")));
        assert!(f.takes(&tx.clone().with_subject("accounts/90")));
        assert!(!f.takes(&tx.clone().with_subject("accounts/80")));
        let other = Event::new("1", "s", "finbank.account.opened").with_header("region", "eu");
        assert!(!f.takes(&other), "`all` fails");
    }

    #[test]
    fn native_headers_of_raw_messages_are_fields_too() {
        let f = filter(r#"all = [{ field = "header.x-kind", equals = "debit" }]"#).unwrap();
        let mut e = Event::new("1", "s", "");
        e.native.headers.push(Header::text("X-Kind", "debit"));
        assert!(f.takes(&e));
        e.native.headers[0] = Header::text("x-kind", "credit");
        assert!(!f.takes(&e));
    }

    #[test]
    fn errors_name_the_condition() {
        let e = filter(
            r#"any = [{ field = "type", equals = "a" }, { field = "colour", equals = "b" }]"#,
        )
        .unwrap_err();
        assert!(e.contains("any[1]") && e.contains("colour"), "{e}");
        let e = filter(r#"all = [{ field = "type", regex = "(" }]"#).unwrap_err();
        assert!(e.contains("all[0]") && e.contains("regex"), "{e}");
        let e = filter(r#"all = [{ field = "type", equals = "a", prefix = "b" }]"#).unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
        assert!(
            filter("").unwrap().takes(&Event::new("1", "s", "t")),
            "empty takes all"
        );
    }
}
