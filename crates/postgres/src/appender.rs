//! Group commit of appends: one task per store takes every queued append
//! request and writes them in one transaction, one statement set per stream.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use causeway_core::binding::format_time;
use causeway_core::message::encode_carried;
use causeway_core::{AppendOutcome, Event};
use chrono::Utc;
use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Statement;

use crate::error::Error;

pub(crate) struct AppendRequest {
    pub(crate) stream: String,
    pub(crate) events: Vec<Event>,
    pub(crate) reply: oneshot::Sender<causeway_core::Result<Vec<AppendOutcome>>>,
}

pub(crate) async fn run(
    pool: Pool,
    window: Duration,
    max_requests: usize,
    mut rx: mpsc::Receiver<AppendRequest>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < max_requests {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match append_batch(&pool, window, &batch).await {
            Ok(outcomes) => {
                for (req, out) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(Ok(out));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, requests = batch.len(), "postgres append transaction failed");
                let e = causeway_core::Error::from(e);
                for req in batch {
                    let _ = req.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Writes every request in one transaction; returns outcomes per request.
async fn append_batch(
    pool: &Pool,
    window: Duration,
    batch: &[AppendRequest],
) -> Result<Vec<Vec<AppendOutcome>>, Error> {
    let mut conn = pool.get().await?;
    let tx = conn.transaction().await?;
    let now = Utc::now();
    let window_start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    let statements = Statements::prepare(&tx).await?;
    let mut outcomes: Vec<Vec<AppendOutcome>> = batch
        .iter()
        .map(|r| Vec::with_capacity(r.events.len()))
        .collect();
    // Streams in name order, so two processes lock them in the same order.
    let mut by_stream: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in batch.iter().enumerate() {
        by_stream.entry(r.stream.as_str()).or_default().push(i);
    }
    for (stream, requests) in by_stream {
        let events: Vec<(usize, &Event)> = requests
            .iter()
            .flat_map(|&i| batch[i].events.iter().map(move |e| (i, e)))
            .collect();
        let append = StreamAppend {
            tx: &tx,
            statements: &statements,
            now,
            window_start,
        };
        for (i, outcome) in append.run(stream, &events).await? {
            outcomes[i].push(outcome);
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// The statements of an append transaction, prepared once per connection.
struct Statements {
    /// Locks a stream's row (creating it) and reads its next position.
    lock: Statement,
    /// Inserting the ids is the duplicate check: the primary key finds the
    /// conflicts, and RETURNING names the rows that are new (or whose old
    /// copy left the dedup window).
    claim_ids: Statement,
    /// Where ids stored before (within the window) are.
    existing: Statement,
    insert_events: Statement,
    /// Moves a stream's next position and counts what it holds.
    bump: Statement,
}

impl Statements {
    async fn prepare(tx: &Transaction<'_>) -> Result<Self, Error> {
        Ok(Statements {
            lock: tx
                .prepare_cached(
                    "INSERT INTO streams (name) VALUES ($1)
                     ON CONFLICT (name) DO UPDATE SET name = excluded.name
                     RETURNING sid, next_position",
                )
                .await?,
            claim_ids: tx
                .prepare_cached(
                    "INSERT INTO event_ids (sid, source, id, position, stored_at)
                     SELECT $1, t.s, t.i, t.p, $5 FROM unnest($2::text[], $3::text[], $4::int8[]) AS t(s, i, p)
                     ON CONFLICT (sid, source, id) DO UPDATE SET position = excluded.position, stored_at = excluded.stored_at
                     WHERE event_ids.stored_at < $6
                     RETURNING source, id",
                )
                .await?,
            existing: tx
                .prepare_cached(
                    "SELECT t.source, t.id, e.position FROM unnest($2::text[], $3::text[]) AS t(source, id)
                     JOIN event_ids e ON e.sid = $1 AND e.source = t.source AND e.id = t.id",
                )
                .await?,
            insert_events: tx
                .prepare_cached(
                    "INSERT INTO events (sid, position, stored_at, source, id, kind, time, content_type, data_schema, subject, key, headers, size, payload, native)
                     SELECT $1, t.p, $2, t.s, t.i, t.k, t.tm, t.ct, t.ds, t.sj, t.ky, t.h::jsonb, t.sz, t.pl, t.n
                     FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::bytea[], $15::bytea[])
                       AS t(p, s, i, k, tm, ct, ds, sj, ky, h, sz, pl, n)",
                )
                .await?,
            bump: tx
                .prepare_cached("UPDATE streams SET next_position = $2, events = events + $3, bytes = bytes + $4 WHERE sid = $1")
                .await?,
        })
    }
}

/// One stream's part of an append transaction.
struct StreamAppend<'a> {
    tx: &'a Transaction<'a>,
    statements: &'a Statements,
    now: chrono::DateTime<Utc>,
    window_start: chrono::DateTime<Utc>,
}

/// A stream's events with copies within the batch folded: the first copy
/// of a (source, id) stands for the rest.
struct Folded<'e> {
    /// Each distinct event with the position it would take.
    unique: Vec<(i64, &'e Event)>,
    /// Per event of the batch, in order: the index in `unique` of the
    /// first copy it repeats, or None for a first copy.
    copy_of: Vec<Option<usize>>,
    /// (source, id) → its index in `unique`.
    first_of: HashMap<(&'e str, &'e str), usize>,
}

impl<'e> Folded<'e> {
    fn new(events: &[(usize, &'e Event)], next: i64) -> Self {
        let mut folded = Folded {
            unique: Vec::with_capacity(events.len()),
            copy_of: Vec::with_capacity(events.len()),
            first_of: HashMap::new(),
        };
        for (_, e) in events {
            let key = (e.source.as_str(), e.id.as_str());
            match folded.first_of.get(&key) {
                Some(&u) => folded.copy_of.push(Some(u)),
                None => {
                    folded.first_of.insert(key, folded.unique.len());
                    folded.copy_of.push(None);
                    folded.unique.push((next + folded.unique.len() as i64, *e));
                }
            }
        }
        folded
    }

    /// The index in `unique` of a row's (source, id).
    fn index_of(&self, row: &tokio_postgres::Row) -> Option<usize> {
        self.first_of
            .get(&(row.get::<_, &str>(0), row.get::<_, &str>(1)))
            .copied()
    }
}

impl StreamAppend<'_> {
    /// Appends `events` (each with its request's index) to `stream` under
    /// the stream's row lock: the outcome of each, in order.
    async fn run(
        &self,
        stream: &str,
        events: &[(usize, &Event)],
    ) -> Result<Vec<(usize, AppendOutcome)>, Error> {
        // Holds the stream's row lock to commit: appends to it are ordered.
        let row = self.tx.query_one(&self.statements.lock, &[&stream]).await?;
        let (sid, next): (i64, i64) = (row.get(0), row.get(1));
        let folded = Folded::new(events, next);
        let is_new = self.claim_ids(sid, &folded).await?;
        let old_position = self.old_positions(sid, &folded, &is_new).await?;
        let outcomes = events
            .iter()
            .zip(&folded.copy_of)
            .map(|((i, e), copy)| {
                let u =
                    copy.unwrap_or_else(|| folded.first_of[&(e.source.as_str(), e.id.as_str())]);
                let position = if is_new[u] {
                    folded.unique[u].0
                } else {
                    old_position.get(&u).copied().unwrap_or(folded.unique[u].0)
                };
                let outcome = if copy.is_none() && is_new[u] {
                    AppendOutcome::Stored(position as u64)
                } else {
                    AppendOutcome::Duplicate(position as u64)
                };
                (*i, outcome)
            })
            .collect();
        // Positions of duplicates stay unused: positions increase, with gaps
        // only where a duplicate was refused.
        let next = next + folded.unique.len() as i64;
        let new: Vec<(i64, &Event)> = folded
            .unique
            .iter()
            .zip(&is_new)
            .filter(|(_, n)| **n)
            .map(|(u, _)| *u)
            .collect();
        let bytes = self.insert(sid, &new).await?;
        self.tx
            .execute(
                &self.statements.bump,
                &[&sid, &next, &(new.len() as i64), &bytes],
            )
            .await?;
        Ok(outcomes)
    }

    /// Records the ids: which of the distinct events are new here.
    async fn claim_ids(&self, sid: i64, folded: &Folded<'_>) -> Result<Vec<bool>, Error> {
        let positions: Vec<i64> = folded.unique.iter().map(|(p, _)| *p).collect();
        let sources: Vec<&str> = folded
            .unique
            .iter()
            .map(|(_, e)| e.source.as_str())
            .collect();
        let ids: Vec<&str> = folded.unique.iter().map(|(_, e)| e.id.as_str()).collect();
        let mut is_new = vec![false; folded.unique.len()];
        let rows = self
            .tx
            .query(
                &self.statements.claim_ids,
                &[
                    &sid,
                    &sources,
                    &ids,
                    &positions,
                    &self.now,
                    &self.window_start,
                ],
            )
            .await?;
        for u in rows.iter().filter_map(|r| folded.index_of(r)) {
            is_new[u] = true;
        }
        Ok(is_new)
    }

    /// Ids stored before, within the window: where their first copy is.
    async fn old_positions(
        &self,
        sid: i64,
        folded: &Folded<'_>,
        is_new: &[bool],
    ) -> Result<HashMap<usize, i64>, Error> {
        let old: Vec<usize> = (0..folded.unique.len()).filter(|&u| !is_new[u]).collect();
        let mut positions = HashMap::new();
        if old.is_empty() {
            return Ok(positions);
        }
        let sources: Vec<&str> = old
            .iter()
            .map(|&u| folded.unique[u].1.source.as_str())
            .collect();
        let ids: Vec<&str> = old
            .iter()
            .map(|&u| folded.unique[u].1.id.as_str())
            .collect();
        for r in self
            .tx
            .query(&self.statements.existing, &[&sid, &sources, &ids])
            .await?
        {
            if let Some(u) = folded.index_of(&r) {
                positions.insert(u, r.get(2));
            }
        }
        Ok(positions)
    }

    /// Inserts the new events; returns their payload bytes.
    async fn insert(&self, sid: i64, new: &[(i64, &Event)]) -> Result<i64, Error> {
        if new.is_empty() {
            return Ok(0);
        }
        let positions: Vec<i64> = new.iter().map(|(p, _)| *p).collect();
        let sources: Vec<&str> = new.iter().map(|(_, e)| e.source.as_str()).collect();
        let ids: Vec<&str> = new.iter().map(|(_, e)| e.id.as_str()).collect();
        let kinds: Vec<&str> = new.iter().map(|(_, e)| e.kind.as_str()).collect();
        let times: Vec<Option<String>> = new.iter().map(|(_, e)| e.time.map(format_time)).collect();
        let content_types: Vec<Option<&str>> =
            new.iter().map(|(_, e)| e.content_type.as_deref()).collect();
        let schemas: Vec<Option<&str>> =
            new.iter().map(|(_, e)| e.data_schema.as_deref()).collect();
        let subjects: Vec<Option<&str>> = new.iter().map(|(_, e)| e.subject.as_deref()).collect();
        let keys: Vec<Option<&str>> = new.iter().map(|(_, e)| e.key.as_deref()).collect();
        let headers: Vec<Option<String>> = new
            .iter()
            .map(|(_, e)| {
                (!e.headers.is_empty())
                    .then(|| serde_json::to_string(&e.headers))
                    .transpose()
            })
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Corrupt(format!("headers: {e}")))?;
        let sizes: Vec<i32> = new.iter().map(|(_, e)| e.payload.len() as i32).collect();
        let payloads: Vec<&[u8]> = new.iter().map(|(_, e)| &e.payload[..]).collect();
        let natives: Vec<Option<Vec<u8>>> = new.iter().map(|(_, e)| encode_carried(e)).collect();
        self.tx
            .execute(
                &self.statements.insert_events,
                &[
                    &sid,
                    &self.now,
                    &positions,
                    &sources,
                    &ids,
                    &kinds,
                    &times,
                    &content_types,
                    &schemas,
                    &subjects,
                    &keys,
                    &headers,
                    &sizes,
                    &payloads,
                    &natives,
                ],
            )
            .await?;
        Ok(sizes.iter().map(|&s| i64::from(s)).sum())
    }
}
