//! Embedded migrations, applied in order under an advisory lock so that
//! several processes starting at once migrate once. Append, never edit.

use deadpool_postgres::Object;

use crate::error::Error;

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE streams (
    sid           BIGSERIAL PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    next_position BIGINT NOT NULL DEFAULT 1,
    events        BIGINT NOT NULL DEFAULT 0,
    bytes         BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE events (
    sid          BIGINT NOT NULL,
    position     BIGINT NOT NULL,
    stored_at    TIMESTAMPTZ NOT NULL,
    source       TEXT NOT NULL,
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    time         TEXT,
    content_type TEXT,
    data_schema  TEXT,
    subject      TEXT,
    key          TEXT,
    headers      JSONB,
    size         INTEGER NOT NULL,
    payload      BYTEA NOT NULL,
    PRIMARY KEY (sid, position)
);
CREATE INDEX events_by_time ON events (sid, stored_at);
CREATE TABLE event_ids (
    sid       BIGINT NOT NULL,
    source    TEXT NOT NULL,
    id        TEXT NOT NULL,
    position  BIGINT NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (sid, source, id)
);
CREATE TABLE cursors (
    sid      BIGINT NOT NULL,
    name     TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (sid, name)
);
CREATE TABLE dedup (
    key   TEXT PRIMARY KEY,
    fence BIGINT NOT NULL,
    done  BOOLEAN NOT NULL,
    until TIMESTAMPTZ NOT NULL
);
CREATE SEQUENCE fences;
"#,
    // What an event carried besides its attributes (a raw message's format,
    // key bytes, typed headers, properties), CBOR; NULL for a plain CloudEvent.
    r#"
ALTER TABLE events ADD COLUMN native BYTEA;
"#,
];

/// Creates the schema if needed and applies missing migrations.
pub(crate) async fn migrate(conn: &mut Object, schema: &str) -> Result<(), Error> {
    conn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .or_else(|e| {
            // Two processes creating the schema at once: the loser sees a unique violation.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let tx = conn.transaction().await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('causeway-migrate:' || $1::text))",
        &[&schema],
    )
    .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
        .await?;
    let applied: i64 = tx
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await?
        .get(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
