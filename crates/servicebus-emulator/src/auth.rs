//! Shared Access Signature verification, as Service Bus does it: the token
//! `SharedAccessSignature sr=<uri>&sig=<sig>&se=<expiry>&skn=<policy>` is
//! valid when `sig` is base64(HMAC-SHA256(key, "<sr as sent>\n<se>")) with
//! the key of policy `skn`, `se` (Unix seconds) is in the future, and the
//! URI `sr` covers the resource asked for (it is a prefix of it).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::percent_decode_str;
use sha2::Sha256;

/// Checks `authorization` for `resource` (`<namespace>.servicebus.windows.net/<path>`,
/// no scheme): the policy that signed it, or why not, for the 401 body.
pub(crate) fn verify(
    authorization: Option<&str>,
    resource: &str,
    key_of: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let token = authorization
        .ok_or("missing Authorization header")?
        .strip_prefix("SharedAccessSignature ")
        .ok_or("Authorization is not a SharedAccessSignature token")?;
    let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
    for pair in token.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "sr" => sr = Some(value),
            "sig" => sig = Some(value),
            "se" => se = Some(value),
            "skn" => skn = Some(value),
            _ => {}
        }
    }
    let (Some(sr), Some(sig), Some(se), Some(skn)) = (sr, sig, se, skn) else {
        return Err("the token needs sr, sig, se and skn".into());
    };
    let policy = decode(skn);
    let key = key_of(&policy).ok_or_else(|| format!("unknown policy `{skn}`"))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).map_err(|e| format!("unusable key: {e}"))?;
    mac.update(format!("{sr}\n{se}").as_bytes());
    let expected = BASE64.encode(mac.finalize().into_bytes());
    if decode(sig) != expected {
        return Err("signature does not match".into());
    }
    let expiry: i64 = se
        .parse()
        .map_err(|_| format!("se `{se}` is not a number"))?;
    if expiry <= chrono::Utc::now().timestamp() {
        return Err("token expired".into());
    }
    let scope = decode(sr).to_ascii_lowercase();
    let scope = scope
        .split_once("://")
        .map_or(scope.as_str(), |(_, rest)| rest);
    let scope = scope.split('?').next().unwrap_or("").trim_end_matches('/');
    if !resource.to_ascii_lowercase().starts_with(scope) {
        return Err(format!("token for `{scope}` does not cover `{resource}`"));
    }
    Ok(policy)
}

fn decode(value: &str) -> String {
    percent_decode_str(&value.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(sr: &str, key: &str, se: i64) -> String {
        let sr: String =
            percent_encoding::utf8_percent_encode(sr, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(format!("{sr}\n{se}").as_bytes());
        let sig = BASE64.encode(mac.finalize().into_bytes());
        let sig: String =
            percent_encoding::utf8_percent_encode(&sig, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}&skn=root")
    }

    #[test]
    fn a_valid_token_passes_and_anything_else_is_refused() {
        let key = |p: &str| (p == "root").then(|| "secret".to_owned());
        let later = chrono::Utc::now().timestamp() + 60;
        let res = "ns.servicebus.windows.net/q/messages/head";
        let good = sign(
            "https://ns.servicebus.windows.net/q/messages/head?timeout=5",
            "secret",
            later,
        );
        assert_eq!(verify(Some(&good), res, key), Ok("root".to_owned()));
        let namespace_wide = sign("https://ns.servicebus.windows.net/", "secret", later);
        assert_eq!(
            verify(Some(&namespace_wide), res, key),
            Ok("root".to_owned())
        );
        let wrong_key = sign("https://ns.servicebus.windows.net/q", "other", later);
        assert!(verify(Some(&wrong_key), res, key).is_err());
        let expired = sign("https://ns.servicebus.windows.net/q", "secret", later - 120);
        assert!(verify(Some(&expired), res, key).is_err());
        let other_entity = sign("https://ns.servicebus.windows.net/other", "secret", later);
        assert!(verify(Some(&other_entity), res, key).is_err());
        assert!(verify(None, res, key).is_err());
    }
}
