use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{
    AppendOutcome, Claim, ClaimToken, DedupStore, Event, EventStore, ReadFrom, ReadQuery, Result,
    Retention, StoreStats, StoredEvent,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::error::Error;
use crate::row::{COLUMNS, POSITION_BITS, from_micros, from_row, last_rowid, micros, rowid};
use crate::schema::migrate;
use crate::writer::{Command, Writer};

/// How the store behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// An event whose (source, id) is already in its stream this recently is refused as a duplicate.
    pub dedup_window: Duration,
    /// How often the idle writer purges expired dedup keys.
    pub purge_interval: Duration,
    /// Most commands one transaction (one fsync) takes.
    pub max_commands_per_transaction: usize,
    /// Read-only connections kept for reads.
    pub readers: usize,
    /// SQLite's page cache, in bytes, for all connections together: half
    /// for the writer (dedup claims and appends look up its indexes), the
    /// rest split between the readers. Pages beyond it are read again from
    /// the file (the kernel's cache, not this process's memory), so this is
    /// what a growing dedup table may cost in resident memory.
    pub cache_bytes: u64,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            dedup_window: Duration::from_secs(24 * 3600),
            purge_interval: Duration::from_secs(60),
            max_commands_per_transaction: 1024,
            readers: 4,
            cache_bytes: 16 << 20,
        }
    }
}

impl SqliteOptions {
    /// The writer's page cache in KiB: half of the budget.
    fn writer_cache_kib(&self) -> u64 {
        (self.cache_bytes / 2 / 1024).max(MIN_CACHE_KIB)
    }

    /// Each reader's page cache in KiB: the other half, split.
    fn reader_cache_kib(&self) -> u64 {
        (self.cache_bytes / 2 / 1024 / self.readers.max(1) as u64).max(MIN_CACHE_KIB)
    }
}

/// Below this a connection re-reads its B-tree's inner pages at every lookup.
const MIN_CACHE_KIB: u64 = 256;

/// An [`EventStore`] and [`DedupStore`] in one SQLite file. Cheap to clone;
/// the writer thread stops when the last clone is dropped, after finishing
/// what was queued.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: mpsc::Sender<Command>,
    readers: Arc<Readers>,
}

#[derive(Debug)]
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
    cache_kib: u64,
}

fn configure(conn: &Connection, cache_kib: u64) -> Result<(), Error> {
    conn.busy_timeout(Duration::from_secs(5))?;
    // Negative: a size in KiB rather than in pages.
    conn.pragma_update(None, "cache_size", -(cache_kib as i64))?;
    conn.pragma_update(None, "temp_store", "memory")?;
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`, migrating its schema.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore, Error> {
        let path = path.as_ref().to_path_buf();
        let mut conn = Connection::open(&path)?;
        configure(&conn, options.writer_cache_kib())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit is fsynced before the writer answers.
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(
            conn,
            &path,
            options.dedup_window,
            options.purge_interval,
            options.max_commands_per_transaction.max(1),
        )?;
        std::thread::Builder::new()
            .name("causeway-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(Readers {
                path,
                idle: Mutex::new(Vec::new()),
                keep: options.readers.max(1),
                cache_kib: options.reader_cache_kib(),
            }),
        })
    }

    async fn send<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.writer.send(make(tx)).map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` on a read-only connection on the blocking pool.
    async fn read_with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T> {
        let readers = self.readers.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<T, Error> {
            let idle = readers
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            let conn = match idle {
                Some(c) => c,
                None => {
                    let c = Connection::open_with_flags(
                        &readers.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )?;
                    configure(&c, readers.cache_kib)?;
                    c
                }
            };
            let result = f(&conn);
            let mut idle = readers
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < readers.keep {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(Error::from)?;
        Ok(out?)
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(&self, stream: &str, events: &[Event]) -> Result<Vec<AppendOutcome>> {
        let (stream, events) = (stream.to_owned(), events.to_vec());
        self.send(|reply| Command::Append {
            stream,
            events,
            reply,
        })
        .await
    }

    async fn read(&self, query: &ReadQuery) -> Result<Vec<StoredEvent>> {
        let q = query.clone();
        self.read_with(move |conn| {
            let (from_position, from_time) = match q.from {
                // Past the last position a stream can have: nothing. (A
                // position of 2^63 or more used to wrap negative and read
                // other streams' rows.)
                ReadFrom::Position(p) if p >= 1 << POSITION_BITS => return Ok(Vec::new()),
                ReadFrom::Position(p) => (p as i64, None),
                ReadFrom::Time(t) => (0, Some(micros(t))),
            };
            let Some(sid) = conn
                .prepare_cached("SELECT sid FROM streams WHERE name = ?1")?
                .query_row([&q.stream], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(Vec::new());
            };
            let mut start = rowid(sid, from_position.min((1 << POSITION_BITS) - 1));
            if let Some(t) = from_time {
                // The first append at or after `t`: its events and all later ones qualify.
                let first: Option<i64> = conn
                    .prepare_cached("SELECT min(rowid) FROM batches WHERE rowid BETWEEN ?1 AND ?2 AND stored_at >= ?3")?
                    .query_row(params![rowid(sid, 0), last_rowid(sid), t], |r| r.get(0))?;
                match first {
                    Some(first) => start = start.max(first),
                    None => return Ok(Vec::new()),
                }
            }
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM events
                 WHERE rowid BETWEEN ?1 AND ?2
                   AND (?3 IS NULL OR stored_at >= ?3)
                   AND (?4 IS NULL OR stored_at < ?4)
                   AND (?5 IS NULL OR source = ?5)
                   AND (?6 IS NULL OR key = ?6)
                 ORDER BY rowid LIMIT ?7"
            ))?;
            let rows = stmt.query_and_then(
                params![
                    start,
                    last_rowid(sid),
                    from_time,
                    q.until.map(micros),
                    q.source,
                    q.key,
                    q.limit.min(i64::MAX as usize) as i64
                ],
                from_row,
            )?;
            rows.collect()
        })
        .await
    }

    async fn cursor(&self, stream: &str, name: &str) -> Result<Option<u64>> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        self.read_with(move |conn| {
            let position: Option<i64> = conn
                .query_row(
                    "SELECT c.position FROM cursors c JOIN streams s ON s.sid = c.sid WHERE s.name = ?1 AND c.name = ?2",
                    params![stream, name],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(position.map(|p| p as u64))
        })
        .await
    }

    async fn set_cursor(&self, stream: &str, name: &str, position: u64) -> Result<()> {
        let (stream, name) = (stream.to_owned(), name.to_owned());
        self.send(|reply| Command::SetCursor {
            stream,
            name,
            position,
            reply,
        })
        .await
    }

    async fn apply_retention(&self, policy: &Retention) -> Result<u64> {
        let policy = policy.clone();
        self.send(|reply| Command::Retention { policy, reply })
            .await
    }

    async fn stats(&self, stream: Option<&str>) -> Result<StoreStats> {
        let stream = stream.map(str::to_owned);
        self.read_with(move |conn| {
            let mut stats = StoreStats::default();
            let mut streams = conn.prepare_cached(
                "SELECT sid, events, bytes FROM streams WHERE ?1 IS NULL OR name = ?1",
            )?;
            let rows: Vec<(i64, i64, i64)> = streams
                .query_map([&stream], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut ends = conn.prepare_cached(
                "SELECT rowid & 1099511627775, stored_at FROM events
                 WHERE rowid IN ((SELECT min(rowid) FROM events WHERE rowid BETWEEN ?1 AND ?2),
                                 (SELECT max(rowid) FROM events WHERE rowid BETWEEN ?1 AND ?2))
                 ORDER BY rowid",
            )?;
            for (sid, events, bytes) in rows {
                let found: Vec<(i64, i64)> = ends
                    .query_map([rowid(sid, 0), last_rowid(sid)], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<_, _>>()?;
                let ends = match (found.first(), found.last()) {
                    (Some(f), Some(l)) => Some((
                        (f.0 as u64, from_micros(f.1)?),
                        (l.0 as u64, from_micros(l.1)?),
                    )),
                    _ => None,
                };
                stats.add_stream(events as u64, bytes as u64, ends);
            }
            Ok(stats)
        })
        .await
    }
}

#[async_trait]
impl DedupStore for SqliteStore {
    async fn release(&self, token: &ClaimToken) -> Result<()> {
        let token = token.clone();
        self.send(|reply| Command::Release { token, reply }).await
    }

    async fn claim_many(&self, keys: &[&str], lease: Duration) -> Result<Vec<Claim>> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.send(|reply| Command::Claim { keys, lease, reply })
            .await
    }

    async fn commit_many(&self, tokens: &[ClaimToken], ttl: Duration) -> Result<Vec<Result<()>>> {
        let tokens = tokens.to_vec();
        self.send(|reply| Command::Commit {
            tokens,
            ttl,
            done: true,
            reply,
        })
        .await
    }

    async fn renew_many(&self, tokens: &[ClaimToken], lease: Duration) -> Result<Vec<Result<()>>> {
        let tokens = tokens.to_vec();
        self.send(|reply| Command::Commit {
            tokens,
            ttl: lease,
            done: false,
            reply,
        })
        .await
    }

    async fn purge_expired(&self) -> Result<u64> {
        self.send(|reply| Command::Purge { reply }).await
    }
}
