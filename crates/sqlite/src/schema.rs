//! The schema, as migrations applied in order; `PRAGMA user_version` records
//! how many ran. Append new migrations, never edit old ones.

use rusqlite::Connection;

use crate::error::Error;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    sid           INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    next_position INTEGER NOT NULL DEFAULT 1,
    events        INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0
);
-- rowid = sid << 40 | position: the table is its own per-stream index, so
-- an append touches one B-tree for the row (plus one for its id).
CREATE TABLE events (
    rowid        INTEGER PRIMARY KEY,
    stored_at    INTEGER NOT NULL, -- unix microseconds
    source       TEXT NOT NULL,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    time         TEXT,             -- RFC 3339, as the event had it
    content_type TEXT,
    data_schema  TEXT,
    subject      TEXT,
    key          TEXT,
    headers      TEXT,             -- JSON object, NULL when empty
    size         INTEGER NOT NULL, -- payload bytes
    payload      BLOB NOT NULL
);
-- One row per append to a stream, keyed like events by its first position:
-- reads from a time find their start here instead of in a per-event index.
CREATE TABLE batches (
    rowid     INTEGER PRIMARY KEY,
    stored_at INTEGER NOT NULL
);
-- Ids outlive their events: dedup holds for the window even after retention.
CREATE TABLE event_ids (
    sid       INTEGER NOT NULL,
    source    TEXT NOT NULL,
    id        TEXT NOT NULL,
    position  INTEGER NOT NULL,
    stored_at INTEGER NOT NULL,
    PRIMARY KEY (sid, source, id)
) WITHOUT ROWID;
CREATE TABLE cursors (
    sid      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (sid, name)
) WITHOUT ROWID;
CREATE TABLE dedup (
    key   TEXT PRIMARY KEY,
    fence INTEGER NOT NULL,
    done  INTEGER NOT NULL,  -- 0 claimed, 1 committed
    until INTEGER NOT NULL   -- unix milliseconds: lease end or TTL end
) WITHOUT ROWID;
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('last_fence', 0);
"#,
    // What an event carried besides its attributes (a raw message's format,
    // key bytes, typed headers, properties), CBOR; NULL for a plain CloudEvent.
    r#"
ALTER TABLE events ADD COLUMN native BLOB;
"#,
];

/// Applies the migrations this file has not seen, in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let applied: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if applied >= MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len())?;
    tx.commit()?;
    Ok(())
}
