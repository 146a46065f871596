//! Durations in configuration files, written the humantime way (`30s`,
//! `5m`, `250ms`).

/// For `#[serde(with = "causeway_core::duration::positive")]`: a duration
/// that must be longer than zero, where zero would make a loop spin (a
/// linger, a lease renewed every zero seconds, a retry without pause) or
/// time every call out at once. Refused while parsing, so the error names
/// the file, the line and the key.
pub mod positive {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    /// Deserializes a humantime duration, refusing zero.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let value = humantime_serde::Serde::<Duration>::deserialize(d)?.into_inner();
        if value.is_zero() {
            return Err(D::Error::custom("must be longer than zero"));
        }
        Ok(value)
    }
}
