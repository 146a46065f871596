//! Headers a dead-lettered event carries, the same on every backend.

use crate::event::Event;

/// Why the event was dead-lettered.
pub const REASON: &str = "deadletterreason";
/// How many deliveries it had.
pub const ATTEMPTS: &str = "deadletterattempts";
/// Where it came from (topic, queue, partition/offset, route).
pub const ORIGIN: &str = "deadletterorigin";

/// Marks `event` as dead-lettered from `origin` after `attempts` deliveries.
pub fn mark(event: &mut Event, reason: &str, attempts: u32, origin: &str) {
    event.headers.insert(REASON.to_owned(), reason.to_owned());
    event
        .headers
        .insert(ATTEMPTS.to_owned(), attempts.to_string());
    event.headers.insert(ORIGIN.to_owned(), origin.to_owned());
}
