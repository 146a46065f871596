//! The single writer: group commit of every mutation.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use causeway_core::{AppendOutcome, Claim, ClaimToken, Event, Retention};
use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

use crate::claims::{Claims, FENCE_BLOCK, STALE_CLAIM_GRACE_MS};
use crate::error::Error;
use causeway_core::message::encode_carried;

use crate::row::{headers_json, last_rowid, micros, rowid, time_text};

type Reply<T> = oneshot::Sender<Result<T, causeway_core::Error>>;

/// A mutation for the writer thread; its result goes back through `reply`.
pub(crate) enum Command {
    Append {
        stream: String,
        events: Vec<Event>,
        reply: Reply<Vec<AppendOutcome>>,
    },
    SetCursor {
        stream: String,
        name: String,
        position: u64,
        reply: Reply<()>,
    },
    Retention {
        policy: Retention,
        reply: Reply<u64>,
    },
    Claim {
        keys: Vec<String>,
        lease: Duration,
        reply: Reply<Vec<Claim>>,
    },
    /// Commit (`done`: kept for `ttl`) or renew (not done: leased for `ttl`).
    Commit {
        tokens: Vec<ClaimToken>,
        ttl: Duration,
        done: bool,
        reply: Reply<Vec<Result<(), causeway_core::Error>>>,
    },
    Release {
        token: ClaimToken,
        reply: Reply<()>,
    },
    Purge {
        reply: Reply<u64>,
    },
}

/// A finished command waiting for its transaction to commit.
type Done = Box<dyn FnOnce(Option<&causeway_core::Error>) + Send>;

fn done<T: Send + 'static>(reply: Reply<T>, result: Result<T, causeway_core::Error>) -> Done {
    Box::new(move |commit_failed| {
        // The caller may have gone away (timed out, dropped): nothing to tell.
        let _ = reply.send(match commit_failed {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

pub(crate) struct Writer {
    conn: Connection,
    dedup_window: Duration,
    purge_interval: Duration,
    max_commands: usize,
    sids: HashMap<String, i64>,
    /// Dedup claims live here, not in the file (`crate::claims`).
    claims: Claims,
    /// Claims committed or released by the open transaction: forgotten
    /// once it is durable, kept if it fails.
    settling: Vec<ClaimToken>,
}

impl Writer {
    /// The writer of the store file at `path`, opened and migrated as `conn`.
    pub(crate) fn new(
        conn: Connection,
        path: &std::path::Path,
        dedup_window: Duration,
        purge_interval: Duration,
        max_commands: usize,
    ) -> Result<Self, Error> {
        let claims = Claims::new(path, reserve_fences(&conn)?);
        Ok(Writer {
            conn,
            dedup_window,
            purge_interval,
            max_commands,
            sids: HashMap::new(),
            claims,
            settling: Vec::new(),
        })
    }

    /// Runs until every sender is dropped: waits for a command, takes every
    /// other command already queued, runs them all in one transaction.
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        loop {
            let first = match rx.recv_timeout(self.purge_interval) {
                Ok(cmd) => cmd,
                Err(RecvTimeoutError::Timeout) => {
                    let (tx, _) = oneshot::channel();
                    self.run_batch(vec![Command::Purge { reply: tx }]);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < self.max_commands {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
    }

    fn run_batch(&mut self, batch: Vec<Command>) {
        let mut finished = Vec::with_capacity(batch.len());
        let outcome = (|| -> Result<(), Error> {
            let mut tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut state = State {
                sids: &mut self.sids,
                claims: &mut self.claims,
                settling: &mut self.settling,
            };
            for cmd in batch {
                finished.push(execute(&mut tx, &mut state, self.dedup_window, cmd)?);
            }
            tx.commit()?;
            Ok(())
        })();
        let settled = std::mem::take(&mut self.settling);
        if outcome.is_ok() {
            settled.iter().for_each(|t| self.claims.settle(t));
        }
        let failure = outcome.err().map(|e| {
            tracing::error!(error = %e, "sqlite store transaction failed");
            // Stream ids created in the rolled-back transaction are gone.
            self.sids.clear();
            causeway_core::Error::from(e)
        });
        for f in finished {
            f(failure.as_ref());
        }
    }
}

/// What the commands of one transaction change besides the file.
struct State<'a> {
    sids: &'a mut HashMap<String, i64>,
    claims: &'a mut Claims,
    settling: &'a mut Vec<ClaimToken>,
}

/// Runs one command inside a savepoint of the batch's transaction, so its
/// failure rolls back only its own writes.
fn execute(
    tx: &mut Transaction<'_>,
    state: &mut State<'_>,
    window: Duration,
    cmd: Command,
) -> Result<Done, Error> {
    let State {
        sids,
        claims,
        settling,
    } = state;
    let sp = tx.savepoint()?;
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let result: Result<_, Error> = $body;
            match result {
                Ok(v) => {
                    sp.commit()?;
                    Ok(done($reply, Ok(v)))
                }
                Err(e) => {
                    drop(sp); // rolls back to the savepoint
                    // Stream ids it created are rolled back too.
                    sids.clear();
                    Ok(done($reply, Err(e.into())))
                }
            }
        }};
    }
    match cmd {
        Command::Append {
            stream,
            events,
            reply,
        } => run!(reply, append(&sp, sids, window, &stream, &events)),
        Command::SetCursor {
            stream,
            name,
            position,
            reply,
        } => run!(reply, set_cursor(&sp, sids, &stream, &name, position)),
        Command::Retention { policy, reply } => run!(reply, retention(&sp, window, &policy)),
        Command::Claim { keys, lease, reply } => run!(reply, claim(&sp, claims, keys, lease)),
        Command::Commit {
            tokens,
            ttl,
            done: true,
            reply,
        } => run!(reply, commit(&sp, claims, settling, tokens, ttl)),
        Command::Commit {
            tokens,
            ttl,
            done: false,
            reply,
        } => run!(reply, Ok(renew(claims, &tokens, ttl))),
        Command::Release { token, reply } => run!(reply, release(claims, settling, token)),
        Command::Purge { reply } => run!(reply, purge(&sp, claims)),
    }
}

fn sid(conn: &Connection, sids: &mut HashMap<String, i64>, stream: &str) -> Result<i64, Error> {
    if let Some(&sid) = sids.get(stream) {
        return Ok(sid);
    }
    conn.execute("INSERT OR IGNORE INTO streams (name) VALUES (?1)", [stream])?;
    let sid = conn.query_row("SELECT sid FROM streams WHERE name = ?1", [stream], |r| {
        r.get(0)
    })?;
    sids.insert(stream.to_owned(), sid);
    Ok(sid)
}

fn append(
    conn: &Connection,
    sids: &mut HashMap<String, i64>,
    window: Duration,
    stream: &str,
    events: &[Event],
) -> Result<Vec<AppendOutcome>, Error> {
    let sid = sid(conn, sids, stream)?;
    let now = micros(Utc::now());
    let window_start = now - window.as_micros() as i64;
    let mut next: i64 = conn.query_row(
        "SELECT next_position FROM streams WHERE sid = ?1",
        [sid],
        |r| r.get(0),
    )?;
    let mut claim_id = conn.prepare_cached(
        "INSERT INTO event_ids (sid, source, id, position, stored_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sid, source, id) DO UPDATE SET position = excluded.position, stored_at = excluded.stored_at
         WHERE event_ids.stored_at < ?6",
    )?;
    let mut existing = conn.prepare_cached(
        "SELECT position FROM event_ids WHERE sid = ?1 AND source = ?2 AND id = ?3",
    )?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO events (rowid, stored_at, source, id, kind, time, content_type, data_schema, subject, key, headers, size, payload, native)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let first = next;
    let mut out = Vec::with_capacity(events.len());
    let (mut added, mut bytes) = (0i64, 0i64);
    for e in events {
        if claim_id.execute(params![sid, e.source, e.id, next, now, window_start])? == 0 {
            let position: i64 = existing.query_row(params![sid, e.source, e.id], |r| r.get(0))?;
            out.push(AppendOutcome::Duplicate(position as u64));
            continue;
        }
        let size = e.payload.len() as i64;
        insert.execute(params![
            rowid(sid, next),
            now,
            e.source,
            e.id,
            e.kind,
            time_text(e),
            e.content_type,
            e.data_schema,
            e.subject,
            e.key,
            headers_json(e),
            size,
            &e.payload[..],
            encode_carried(e),
        ])?;
        out.push(AppendOutcome::Stored(next as u64));
        next += 1;
        added += 1;
        bytes += size;
    }
    if added > 0 {
        conn.prepare_cached("INSERT INTO batches (rowid, stored_at) VALUES (?1, ?2)")?
            .execute(params![rowid(sid, first), now])?;
        conn.prepare_cached("UPDATE streams SET next_position = ?2, events = events + ?3, bytes = bytes + ?4 WHERE sid = ?1")?
            .execute(params![sid, next, added, bytes])?;
    }
    Ok(out)
}

fn set_cursor(
    conn: &Connection,
    sids: &mut HashMap<String, i64>,
    stream: &str,
    name: &str,
    position: u64,
) -> Result<(), Error> {
    let sid = sid(conn, sids, stream)?;
    conn.execute(
        "INSERT INTO cursors (sid, name, position) VALUES (?1, ?2, ?3)
         ON CONFLICT (sid, name) DO UPDATE SET position = max(position, excluded.position)",
        params![sid, name, position as i64],
    )?;
    Ok(())
}

fn retention(conn: &Connection, window: Duration, policy: &Retention) -> Result<u64, Error> {
    let now = micros(Utc::now());
    let streams: Vec<(i64, String, i64)> = conn
        .prepare("SELECT sid, name, bytes FROM streams")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut deleted = 0u64;
    for (sid, name, bytes) in streams {
        if !policy.covers(&name) {
            continue;
        }
        // Events after the slowest cursor are still to be forwarded; with
        // no cursor, all of them.
        let protect_from: i64 = if policy.ignore_cursors {
            i64::MAX
        } else {
            conn.query_row(
                "SELECT min(position) + 1 FROM cursors WHERE sid = ?1",
                [sid],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .unwrap_or(0)
        };
        // The last position to delete: the older of the age cut and the size cut.
        let mut cut: Option<i64> = None;
        if let Some(age) = policy.max_age {
            let before = now - age.as_micros() as i64;
            cut = conn
                .query_row(
                    "SELECT max(rowid) FROM events WHERE rowid BETWEEN ?1 AND ?2 AND stored_at < ?3",
                    params![rowid(sid, 0), last_rowid(sid), before],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten()
                .map(|r| r - rowid(sid, 0));
        }
        if let Some(max_bytes) = policy.max_bytes {
            let mut excess = bytes - max_bytes as i64;
            if excess > 0 {
                let mut rows = conn.prepare_cached(
                    "SELECT rowid, size FROM events WHERE rowid BETWEEN ?1 AND ?2 ORDER BY rowid",
                )?;
                let mut rows = rows.query([rowid(sid, 0), last_rowid(sid)])?;
                while let Some(row) = rows.next()? {
                    let (key, size): (i64, i64) = (row.get(0)?, row.get(1)?);
                    let position = key - rowid(sid, 0);
                    cut = Some(cut.map_or(position, |c| c.max(position)));
                    excess -= size;
                    if excess <= 0 {
                        break;
                    }
                }
            }
        }
        let Some(cut) = cut else { continue };
        let last = cut.min(protect_from - 1);
        if last < 1 {
            continue;
        }
        let range = params![rowid(sid, 0), rowid(sid, last)];
        let (n, freed): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM events WHERE rowid BETWEEN ?1 AND ?2",
            range,
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        conn.execute("DELETE FROM events WHERE rowid BETWEEN ?1 AND ?2", range)?;
        // Keep the batch row the oldest remaining event belongs to: reads
        // from a time start there.
        conn.execute(
            "DELETE FROM batches WHERE rowid >= ?1
               AND rowid < (SELECT max(rowid) FROM batches WHERE rowid BETWEEN ?1 AND ?2)",
            params![rowid(sid, 0), rowid(sid, last + 1)],
        )?;
        conn.execute(
            "UPDATE streams SET events = events - ?2, bytes = bytes - ?3 WHERE sid = ?1",
            params![sid, n, freed],
        )?;
        deleted += n as u64;
    }
    conn.execute(
        "DELETE FROM event_ids WHERE stored_at < ?1",
        [now - window.as_micros() as i64],
    )?;
    Ok(deleted)
}

fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// Records a block of fences as taken (`meta.last_fence`, from which
/// earlier versions fenced each claim) and returns where it starts.
fn reserve_fences(conn: &Connection) -> Result<u64, Error> {
    let end: i64 = conn.query_row(
        "UPDATE meta SET value = value + ?1 WHERE name = 'last_fence' RETURNING value",
        [FENCE_BLOCK as i64],
        |r| r.get(0),
    )?;
    Ok((end as u64).saturating_sub(FENCE_BLOCK))
}

/// Each key done (committed, within its TTL), busy (claimed by a live
/// lease) or claimed now. Reads only: claims are not written to the file.
fn claim(
    conn: &Connection,
    claims: &mut Claims,
    keys: Vec<String>,
    lease: Duration,
) -> Result<Vec<Claim>, Error> {
    claims.lock()?;
    let now = now_millis();
    let mut is_done =
        conn.prepare_cached("SELECT 1 FROM dedup WHERE key = ?1 AND done = 1 AND until > ?2")?;
    // Every read first: a failed one then leaves no claim behind.
    let done = keys
        .iter()
        .map(|key| is_done.exists(params![key, now]))
        .collect::<Result<Vec<bool>, _>>()?;
    if claims.needs_fences(keys.len()) {
        claims.reserve(reserve_fences(conn)?);
    }
    let until = now + lease.as_millis() as i64;
    Ok(keys
        .into_iter()
        .zip(done)
        .map(|(key, done)| {
            if done {
                Claim::Done
            } else if claims.busy(&key, now) {
                Claim::Busy
            } else {
                Claim::Claimed(claims.take(key, until))
            }
        })
        .collect())
}

fn fenced(token: &ClaimToken) -> causeway_core::Error {
    Error::Fenced(format!(
        "claim {} on `{}` was taken over or is gone",
        token.fence, token.key
    ))
    .into()
}

/// Writes each live claim as done for `ttl`; the claim is forgotten once
/// the transaction is durable. A lease that ran out without a takeover
/// may still commit.
fn commit(
    conn: &Connection,
    claims: &Claims,
    settling: &mut Vec<ClaimToken>,
    tokens: Vec<ClaimToken>,
    ttl: Duration,
) -> Result<Vec<Result<(), causeway_core::Error>>, Error> {
    let until = now_millis() + ttl.as_millis() as i64;
    let mut put = conn.prepare_cached(
        "INSERT INTO dedup (key, fence, done, until) VALUES (?1, ?2, 1, ?3)
         ON CONFLICT (key) DO UPDATE SET fence = excluded.fence, done = 1, until = excluded.until",
    )?;
    let mut committed = Vec::new();
    let out = tokens
        .into_iter()
        .map(|t| {
            if !claims.holds(&t) {
                return Ok(Err(fenced(&t)));
            }
            put.execute(params![t.key, t.fence as i64, until])?;
            committed.push(t);
            Ok(Ok(()))
        })
        .collect::<Result<_, Error>>()?;
    // Only once every write of the command succeeded.
    settling.extend(committed);
    Ok(out)
}

/// Extends the leases of live claims: memory only.
fn renew(
    claims: &mut Claims,
    tokens: &[ClaimToken],
    lease: Duration,
) -> Vec<Result<(), causeway_core::Error>> {
    let until = now_millis() + lease.as_millis() as i64;
    tokens
        .iter()
        .map(|t| {
            if claims.renew(t, until) {
                Ok(())
            } else {
                Err(fenced(t))
            }
        })
        .collect()
}

fn release(
    claims: &Claims,
    settling: &mut Vec<ClaimToken>,
    token: ClaimToken,
) -> Result<(), Error> {
    if claims.holds(&token) {
        settling.push(token);
        Ok(())
    } else {
        Err(Error::Fenced(fenced(&token).to_string()))
    }
}

/// Deletes committed keys past their TTL, and forgets claims whose lease
/// ran out over an hour ago (their owner is gone; a late commit would have
/// been allowed until then). Rows of claims written by earlier versions go
/// the same way.
fn purge(conn: &Connection, claims: &mut Claims) -> Result<u64, Error> {
    let now = now_millis();
    let rows = conn.execute(
        "DELETE FROM dedup WHERE until <= ?1 AND (done = 1 OR until <= ?2)",
        params![now, now - STALE_CLAIM_GRACE_MS],
    )? as u64;
    Ok(rows + claims.purge(now))
}
