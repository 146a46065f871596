//! Keeping secrets out of `Debug` output, errors and logs.
//!
//! Configs that hold a secret implement `Debug` by hand with these helpers,
//! so a `{:?}` anywhere (a log line, a panic, `causeway check`) never shows
//! a password, a token or a key.

/// What a secret is printed as.
pub const REDACTED: &str = "<redacted>";

/// `text` with the passwords in it replaced by [`REDACTED`]: the password
/// of each `scheme://user:password@host` URL (also in a comma-separated
/// list of URLs), and the value of each `password=`, `token=` or
/// `secret=` pair (URL queries, libpq's `key=value` strings).
pub fn url(text: &str) -> String {
    let mut out = text.split(',').map(userinfo).collect::<Vec<_>>().join(",");
    for key in ["password=", "token=", "secret=", "sslpassword="] {
        out = pairs(&out, key);
    }
    out
}

/// `scheme://user:password@rest` → `scheme://user:<redacted>@rest`.
fn userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(u, _)| u);
            let hidden = if user_info.contains(':') {
                format!("{user}:{REDACTED}")
            } else if scheme.starts_with("nats") || scheme == "tls" {
                // NATS reads a lone user part as a token (`nats://token@host`).
                REDACTED.to_owned()
            } else {
                user.to_owned()
            };
            format!("{scheme}://{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Replaces the value after each `key` (case-insensitive) up to `&`, `;`,
/// whitespace or the end.
fn pairs(text: &str, key: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(key) {
        let start = at + found + key.len();
        // Only a key at the start of a pair, not inside another word.
        let before = text[..at + found].chars().next_back();
        out.push_str(&text[at..start]);
        if before.is_none_or(|c| matches!(c, '?' | '&' | ';' | ' ' | '\t' | '\n')) {
            let end = text[start..]
                .find(|c: char| c == '&' || c == ';' || c.is_whitespace())
                .map_or(text.len(), |e| start + e);
            out.push_str(REDACTED);
            at = end;
        } else {
            at = start;
        }
    }
    out.push_str(&text[at..]);
    out
}

/// Whether a client property (a librdkafka key, say) holds a secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "oauthbearer.config",
        "jaas",
        "key.pem",
        "private",
    ]
    .iter()
    .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            url("amqps://bank:hunter2@mq:5671/%2f"),
            "amqps://bank:<redacted>@mq:5671/%2f"
        );
        assert_eq!(
            url("nats://a:p1@n1:4222,nats://b:p2@n2:4222"),
            "nats://a:<redacted>@n1:4222,nats://b:<redacted>@n2:4222"
        );
        assert_eq!(
            url("nats://s3cr3t-token@n1:4222"),
            "nats://<redacted>@n1:4222"
        );
        assert_eq!(
            url("postgres://u@db/x?sslmode=verify-full&password=hunter2"),
            "postgres://u@db/x?sslmode=verify-full&password=<redacted>"
        );
        assert_eq!(
            url("host=db user=u password=hunter2 dbname=x"),
            "host=db user=u password=<redacted> dbname=x"
        );
        assert_eq!(
            url("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        // `p@ss` in a password: the last `@` ends the user info.
        assert_eq!(url("amqp://u:p@ss@h/"), "amqp://u:<redacted>@h/");
    }

    #[test]
    fn secret_keys_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.config",
            "ssl.key.pem",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        assert!(!is_secret_key("session.timeout.ms"));
    }
}
