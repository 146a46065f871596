//! Event ↔ row.

use std::collections::BTreeMap;

use bytes::Bytes;
use causeway_core::binding::{format_time, parse_time};
use causeway_core::message::decode_carried;
use causeway_core::{Event, Format, Native, StoredEvent};
use chrono::{DateTime, Utc};
use rusqlite::Row;

use crate::error::Error;

/// The columns `from_row` reads, in order.
pub(crate) const COLUMNS: &str = "rowid & 1099511627775, stored_at, source, id, kind, time, content_type, data_schema, subject, key, headers, payload, native";

pub(crate) fn headers_json(event: &Event) -> Option<String> {
    if event.headers.is_empty() {
        None
    } else {
        serde_json::to_string(&event.headers).ok()
    }
}

pub(crate) fn time_text(event: &Event) -> Option<String> {
    event.time.map(format_time)
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| Error::Corrupt(format!("stored_at {us} out of range")))
}

pub(crate) fn from_row(row: &Row<'_>) -> Result<StoredEvent, Error> {
    let position: i64 = row.get(0)?;
    let stored_at = from_micros(row.get(1)?)?;
    let time: Option<String> = row.get(5)?;
    let headers: Option<String> = row.get(10)?;
    let headers: BTreeMap<String, String> = match headers {
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| Error::Corrupt(format!("headers: {e}")))?
        }
        None => BTreeMap::new(),
    };
    let payload: Vec<u8> = row.get(11)?;
    let native: Option<Vec<u8>> = row.get(12)?;
    let mut event = Event {
        source: row.get(2)?,
        id: row.get(3)?,
        kind: row.get(4)?,
        time: time
            .map(|t| parse_time(&t))
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        content_type: row.get(6)?,
        data_schema: row.get(7)?,
        subject: row.get(8)?,
        key: row.get(9)?,
        headers,
        payload: Bytes::from(payload),
        format: Format::CloudEvents,
        native: Native::default(),
    };
    if let Some(native) = native {
        decode_carried(&native, &mut event).map_err(|e| Error::Corrupt(e.to_string()))?;
    }
    Ok(StoredEvent {
        position: position as u64,
        stored_at,
        event,
    })
}

/// Bits of a rowid that hold the position; the rest hold the stream id.
pub(crate) const POSITION_BITS: u32 = 40;

/// The rowid of `position` in stream `sid`.
pub(crate) fn rowid(sid: i64, position: i64) -> i64 {
    (sid << POSITION_BITS) | position
}

/// The last rowid stream `sid` can have.
pub(crate) fn last_rowid(sid: i64) -> i64 {
    rowid(sid, (1 << POSITION_BITS) - 1)
}
