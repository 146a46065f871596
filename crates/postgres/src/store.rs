use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use causeway_core::binding::parse_time;
use causeway_core::message::decode_carried;
use causeway_core::{
    AppendOutcome, Claim, ClaimToken, DedupStore, Event, EventStore, Format, Native, ReadFrom,
    ReadQuery, Result, Retention, StoreStats, StoredEvent,
};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use crate::appender::{self, AppendRequest};
use crate::error::Error;
use crate::schema::migrate;

/// How long an operation waits for a pooled connection before it fails
/// (temporarily: the caller retries).
const POOL_WAIT: Duration = Duration::from_secs(30);

/// How to reach PostgreSQL and how the store behaves. `Debug` hides the
/// URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connection URL, e.g. `postgres://causeway@db:5432/causeway`.
    pub url: String,
    /// The PostgreSQL schema holding causeway's tables: one per deployment.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// An event whose (source, id) is already in its stream this recently is refused as a duplicate.
    pub dedup_window: Duration,
    /// How often expired dedup keys are purged in the background.
    pub purge_interval: Duration,
    /// Most append requests one transaction takes.
    pub max_appends_per_transaction: usize,
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOptions")
            .field("url", &causeway_core::redact::url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("dedup_window", &self.dedup_window)
            .field("purge_interval", &self.purge_interval)
            .field(
                "max_appends_per_transaction",
                &self.max_appends_per_transaction,
            )
            .finish()
    }
}

impl PostgresOptions {
    /// Defaults for `url`: schema `causeway`, 8 connections, 24 h dedup window.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: "causeway".into(),
            pool_size: 8,
            dedup_window: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
            max_appends_per_transaction: 256,
        }
    }
}

/// An [`EventStore`] and [`DedupStore`] on PostgreSQL. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    appends: mpsc::Sender<AppendRequest>,
    dedup_window: Duration,
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63
}

const COLUMNS: &str = "position, stored_at, source, id, kind, time, content_type, data_schema, subject, key, headers::text, payload, native";

fn from_row(row: &Row) -> Result<StoredEvent, Error> {
    let headers: Option<String> = row.try_get(10)?;
    let headers: BTreeMap<String, String> = match headers {
        Some(json) => {
            serde_json::from_str(&json).map_err(|e| Error::Corrupt(format!("headers: {e}")))?
        }
        None => BTreeMap::new(),
    };
    let time: Option<String> = row.try_get(5)?;
    let payload: Vec<u8> = row.try_get(11)?;
    let position: i64 = row.try_get(0)?;
    let native: Option<Vec<u8>> = row.try_get(12)?;
    let mut event = Event {
        source: row.try_get(2)?,
        id: row.try_get(3)?,
        kind: row.try_get(4)?,
        time: time
            .map(|t| parse_time(&t))
            .transpose()
            .map_err(|e| Error::Corrupt(e.to_string()))?,
        content_type: row.try_get(6)?,
        data_schema: row.try_get(7)?,
        subject: row.try_get(8)?,
        key: row.try_get(9)?,
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
        stored_at: row.try_get(1)?,
        event,
    })
}

fn fenced(token: &ClaimToken) -> causeway_core::Error {
    Error::Fenced(format!(
        "claim {} on `{}` was taken over or is gone",
        token.fence, token.key
    ))
    .into()
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl PostgresStore {
    /// Connects, creates the schema if needed and applies missing migrations.
    pub async fn connect(options: PostgresOptions) -> Result<PostgresStore, Error> {
        if !valid_identifier(&options.schema) {
            return Err(Error::Config(format!(
                "schema `{}` must be a lowercase SQL identifier (a-z, 0-9, _)",
                options.schema
            )));
        }
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| Error::Config(format!("url: {e}")))?;
        // Custom plans: the batch statements take arrays whose size the
        // generic plan of a prepared statement guesses badly (it turned the
        // per-id index probes of the duplicate check into a full scan).
        config.options(format!(
            "-c search_path={} -c plan_cache_mode=force_custom_plan",
            options.schema
        ));
        config.application_name("causeway");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Waiting for a connection is bounded: a pool starved (by a stuck
        // caller, or a server gone quiet) fails the operation, which its
        // caller logs and retries, instead of stalling it without a word.
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let mut conn = pool.get().await?;
        migrate(&mut conn, &options.schema).await?;
        drop(conn);

        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(appender::run(
            pool.clone(),
            options.dedup_window,
            options.max_appends_per_transaction.max(1),
            rx,
        ));
        let inner = Arc::new(Inner {
            pool,
            appends: tx,
            dedup_window: options.dedup_window,
        });
        tokio::spawn(purge_loop(Arc::downgrade(&inner), options.purge_interval));
        Ok(PostgresStore { inner })
    }

    async fn conn(&self) -> Result<deadpool_postgres::Object, Error> {
        Ok(self.inner.pool.get().await?)
    }
}

/// Purges expired dedup keys until the store is dropped.
async fn purge_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let store = PostgresStore { inner };
        if let Err(e) = store.purge_expired().await {
            tracing::warn!(error = %e, "purging expired dedup keys failed");
        }
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, stream: &str, events: &[Event]) -> Result<Vec<AppendOutcome>> {
        let (reply, rx) = oneshot::channel();
        let request = AppendRequest {
            stream: stream.to_owned(),
            events: events.to_vec(),
            reply,
        };
        self.inner
            .appends
            .send(request)
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    async fn read(&self, q: &ReadQuery) -> Result<Vec<StoredEvent>> {
        let mut conn = self.conn().await?;
        // The primary key gives the order: never sort. Where statistics lag
        // behind the newest positions (a stream growing faster than
        // autoanalyze), the planner would otherwise estimate a few rows,
        // bitmap-scan everything after `from` and sort it on disk for every
        // page: replay fell to 7k events/s that way.
        let tx = conn.transaction().await.map_err(Error::from)?;
        tx.batch_execute("SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off")
            .await
            .map_err(Error::from)?;
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events
                 WHERE sid = (SELECT sid FROM streams WHERE name = $1)
                   AND position >= GREATEST($2, COALESCE(
                       (SELECT min(position) FROM events
                         WHERE sid = (SELECT sid FROM streams WHERE name = $1) AND stored_at >= $3), $2))
                   AND ($3::timestamptz IS NULL OR stored_at >= $3)
                   AND ($4::timestamptz IS NULL OR stored_at < $4)
                   AND ($5::text IS NULL OR source = $5)
                   AND ($6::text IS NULL OR key = $6)
                 ORDER BY position LIMIT $7"
            ))
            .await
            .map_err(Error::from)?;
        let (from_position, from_time): (i64, Option<DateTime<Utc>>) = match q.from {
            ReadFrom::Position(p) => (p.min(i64::MAX as u64) as i64, None),
            ReadFrom::Time(t) => (0, Some(t)),
        };
        let limit = q.limit.min(i64::MAX as usize) as i64;
        let rows = tx
            .query(
                &stmt,
                &[
                    &q.stream,
                    &from_position,
                    &from_time,
                    &q.until,
                    &q.source,
                    &q.key,
                    &limit,
                ],
            )
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
    }

    async fn cursor(&self, stream: &str, name: &str) -> Result<Option<u64>> {
        let conn = self.conn().await?;
        let row = conn
            .query_opt(
                "SELECT c.position FROM cursors c JOIN streams s ON s.sid = c.sid WHERE s.name = $1 AND c.name = $2",
                &[&stream, &name],
            )
            .await
            .map_err(Error::from)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn set_cursor(&self, stream: &str, name: &str, position: u64) -> Result<()> {
        let conn = self.conn().await?;
        conn.execute(
            "WITH s AS (INSERT INTO streams (name) VALUES ($1)
                        ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING sid)
             INSERT INTO cursors (sid, name, position) SELECT sid, $2, $3 FROM s
             ON CONFLICT (sid, name) DO UPDATE SET position = GREATEST(cursors.position, excluded.position)",
            &[&stream, &name, &(position as i64)],
        )
        .await
        .map_err(Error::from)?;
        Ok(())
    }

    async fn apply_retention(&self, policy: &Retention) -> Result<u64> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(Error::from)?;
        let now = Utc::now();
        let streams = tx
            .query(
                "SELECT sid, bytes, name FROM streams ORDER BY name FOR UPDATE",
                &[],
            )
            .await
            .map_err(Error::from)?;
        let mut deleted = 0u64;
        for s in streams {
            let (sid, bytes, name): (i64, i64, String) = (s.get(0), s.get(1), s.get(2));
            if !policy.covers(&name) {
                continue;
            }
            // Events after the slowest cursor are still to be forwarded;
            // with no cursor, all of them.
            let protect_from: i64 = if policy.ignore_cursors {
                i64::MAX
            } else {
                tx.query_one(
                    "SELECT min(position) + 1 FROM cursors WHERE sid = $1",
                    &[&sid],
                )
                .await
                .map_err(Error::from)?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0)
            };
            let mut cut: Option<i64> = None;
            if let Some(age) = policy.max_age {
                let before = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
                cut = tx
                    .query_one(
                        "SELECT max(position) FROM events WHERE sid = $1 AND stored_at < $2",
                        &[&sid, &before],
                    )
                    .await
                    .map_err(Error::from)?
                    .get(0);
            }
            if let Some(max_bytes) = policy.max_bytes {
                let excess = bytes - max_bytes as i64;
                if excess > 0 {
                    let by_size: Option<i64> = tx
                        .query_opt(
                            "SELECT position FROM (SELECT position, sum(size) OVER (ORDER BY position) AS run
                                                     FROM events WHERE sid = $1) t
                             WHERE run >= $2 ORDER BY position LIMIT 1",
                            &[&sid, &excess],
                        )
                        .await
                        .map_err(Error::from)?
                        .map(|r| r.get(0));
                    cut = cut.max(by_size);
                }
            }
            let Some(cut) = cut else { continue };
            let last = cut.min(protect_from - 1);
            let row = tx
                .query_one(
                    "WITH d AS (DELETE FROM events WHERE sid = $1 AND position <= $2 RETURNING size)
                     SELECT count(*), coalesce(sum(size), 0)::int8 FROM d",
                    &[&sid, &last],
                )
                .await
                .map_err(Error::from)?;
            let (n, freed): (i64, i64) = (row.get(0), row.get(1));
            tx.execute(
                "UPDATE streams SET events = events - $2, bytes = bytes - $3 WHERE sid = $1",
                &[&sid, &n, &freed],
            )
            .await
            .map_err(Error::from)?;
            deleted += n as u64;
        }
        let window_start = now
            - chrono::Duration::from_std(self.inner.dedup_window).unwrap_or(chrono::Duration::MAX);
        tx.execute(
            "DELETE FROM event_ids WHERE stored_at < $1",
            &[&window_start],
        )
        .await
        .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(deleted)
    }

    async fn stats(&self, stream: Option<&str>) -> Result<StoreStats> {
        let conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT s.events, s.bytes, f.position, f.stored_at, l.position, l.stored_at FROM streams s
                 LEFT JOIN LATERAL (SELECT position, stored_at FROM events WHERE sid = s.sid ORDER BY position LIMIT 1) f ON true
                 LEFT JOIN LATERAL (SELECT position, stored_at FROM events WHERE sid = s.sid ORDER BY position DESC LIMIT 1) l ON true
                 WHERE $1::text IS NULL OR s.name = $1",
                &[&stream],
            )
            .await
            .map_err(Error::from)?;
        let mut stats = StoreStats::default();
        for r in rows {
            let first: Option<i64> = r.get(2);
            let last: Option<i64> = r.get(4);
            let ends = first.zip(last).map(|(f, l)| {
                let (ft, lt): (DateTime<Utc>, DateTime<Utc>) = (r.get(3), r.get(5));
                ((f as u64, ft), (l as u64, lt))
            });
            stats.add_stream(r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64, ends);
        }
        Ok(stats)
    }
}

impl PostgresStore {
    /// Marks live claims done (a commit) or extends their lease (a
    /// renewal), by the server's clock: the same fenced update either way.
    async fn update_claims(
        &self,
        tokens: &[ClaimToken],
        ttl: Duration,
        done: bool,
    ) -> Result<Vec<Result<()>>> {
        let conn = self.conn().await?;
        let keys: Vec<&str> = tokens.iter().map(|t| t.key.as_str()).collect();
        let fences: Vec<i64> = tokens.iter().map(|t| t.fence as i64).collect();
        let stmt = conn
            .prepare_cached(
                "UPDATE dedup SET done = $4, until = now() + $3::int8 * interval '1 millisecond'
                 FROM unnest($1::text[], $2::int8[]) AS t(k, f)
                 WHERE dedup.key = t.k AND dedup.fence = t.f AND NOT dedup.done
                 RETURNING dedup.key, dedup.fence",
            )
            .await
            .map_err(Error::from)?;
        let updated: std::collections::HashSet<(String, i64)> = conn
            .query(&stmt, &[&keys, &fences, &millis(ttl), &done])
            .await
            .map_err(Error::from)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        Ok(tokens
            .iter()
            .map(|t| {
                if updated.contains(&(t.key.clone(), t.fence as i64)) {
                    Ok(())
                } else {
                    Err(fenced(t))
                }
            })
            .collect())
    }
}

#[async_trait]
impl DedupStore for PostgresStore {
    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let conn = self.conn().await?;
        let n = conn
            .execute(
                "DELETE FROM dedup WHERE key = $1 AND fence = $2 AND NOT done",
                &[&token.key, &(token.fence as i64)],
            )
            .await
            .map_err(Error::from)?;
        if n == 1 { Ok(()) } else { Err(fenced(token)) }
    }

    /// One statement claims every free or expired key; a second reads why
    /// the others were not claimed. A key twice in `keys` is `Busy` the second time.
    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>> {
        let conn = self.conn().await?;
        let mut unique: Vec<&str> = keys.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let claim = conn
            .prepare_cached(
                "INSERT INTO dedup (key, fence, done, until)
                 SELECT k, nextval('fences'), false, now() + $2::int8 * interval '1 millisecond'
                 FROM unnest($1::text[]) AS k
                 ON CONFLICT (key) DO UPDATE SET fence = excluded.fence, done = false, until = excluded.until
                 WHERE dedup.until <= now()
                 RETURNING key, fence",
            )
            .await
            .map_err(Error::from)?;
        let claimed: std::collections::HashMap<String, i64> = conn
            .query(&claim, &[&unique, &millis(lease)])
            .await
            .map_err(Error::from)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let others: Vec<&str> = unique
            .iter()
            .copied()
            .filter(|k| !claimed.contains_key(*k))
            .collect();
        let mut done = std::collections::HashSet::new();
        if !others.is_empty() {
            for r in conn
                .query(
                    "SELECT key FROM dedup WHERE key = ANY($1) AND done AND until > now()",
                    &[&others],
                )
                .await
                .map_err(Error::from)?
            {
                done.insert(r.get::<_, String>(0));
            }
        }
        let mut handed_out = std::collections::HashSet::new();
        Ok(keys
            .iter()
            .map(|k| match claimed.get(*k) {
                Some(&fence) if handed_out.insert(*k) => Claim::Claimed(ClaimToken {
                    key: (*k).to_owned(),
                    fence: fence as u64,
                }),
                Some(_) => Claim::Busy,
                None if done.contains(*k) => Claim::Done,
                None => Claim::Busy,
            })
            .collect())
    }

    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>> {
        self.update_claims(tokens, ttl, true).await
    }

    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>> {
        self.update_claims(tokens, lease, false).await
    }

    /// Committed keys past their TTL, and claims whose lease ran out over an
    /// hour ago (a late commit without takeover is allowed until then).
    async fn purge_expired(&self) -> Result<u64> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "DELETE FROM dedup WHERE until <= now() AND (done OR until <= now() - interval '1 hour')",
                &[],
            )
            .await
            .map_err(Error::from)?)
    }
}
