//! Group commit of appends: one task per store takes every queued append
//! request and writes them in one transaction, one statement set per stream.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use causeway_core::binding::format_time;
use causeway_core::{AppendOutcome, Event};
use chrono::Utc;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

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
    let mut outcomes: Vec<Vec<AppendOutcome>> = batch
        .iter()
        .map(|r| Vec::with_capacity(r.events.len()))
        .collect();

    // Streams in name order, so two processes lock them in the same order.
    let mut by_stream: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in batch.iter().enumerate() {
        by_stream.entry(r.stream.as_str()).or_default().push(i);
    }
    let lock = tx
        .prepare_cached(
            "INSERT INTO streams (name) VALUES ($1)
             ON CONFLICT (name) DO UPDATE SET name = excluded.name
             RETURNING sid, next_position",
        )
        .await?;
    let find = tx
        .prepare_cached(
            // LATERAL: one primary-key probe per id; a plain join lets the
            // generic plan scan the whole table, which grows without bound.
            "SELECT t.source, t.id, e.position FROM unnest($2::text[], $3::text[]) AS t(source, id)
             CROSS JOIN LATERAL (SELECT position FROM event_ids
                                  WHERE sid = $1 AND source = t.source AND id = t.id AND stored_at >= $4) e",
        )
        .await?;
    let insert_ids = tx
        .prepare_cached(
            "INSERT INTO event_ids (sid, source, id, position, stored_at)
             SELECT $1, t.s, t.i, t.p, $5 FROM unnest($2::text[], $3::text[], $4::int8[]) AS t(s, i, p)
             ON CONFLICT (sid, source, id) DO UPDATE SET position = excluded.position, stored_at = excluded.stored_at",
        )
        .await?;
    let insert_events = tx
        .prepare_cached(
            "INSERT INTO events (sid, position, stored_at, source, id, kind, time, content_type, data_schema, subject, key, headers, size, payload)
             SELECT $1, t.p, $2, t.s, t.i, t.k, t.tm, t.ct, t.ds, t.sj, t.ky, t.h::jsonb, t.sz, t.pl
             FROM unnest($3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::int4[], $14::bytea[])
               AS t(p, s, i, k, tm, ct, ds, sj, ky, h, sz, pl)",
        )
        .await?;
    let bump = tx
        .prepare_cached("UPDATE streams SET next_position = $2, events = events + $3, bytes = bytes + $4 WHERE sid = $1")
        .await?;

    for (stream, requests) in by_stream {
        // Holds the stream's row lock to commit: appends to it are ordered.
        let row = tx.query_one(&lock, &[&stream]).await?;
        let (sid, mut next): (i64, i64) = (row.get(0), row.get(1));
        let events: Vec<(usize, &Event)> = requests
            .iter()
            .flat_map(|&i| batch[i].events.iter().map(move |e| (i, e)))
            .collect();
        let sources: Vec<&str> = events.iter().map(|(_, e)| e.source.as_str()).collect();
        let ids: Vec<&str> = events.iter().map(|(_, e)| e.id.as_str()).collect();
        let found: Vec<(String, String, i64)> = tx
            .query(&find, &[&sid, &sources, &ids, &window_start])
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect();
        // Stored ones, then earlier copies in this very batch.
        let mut known: HashMap<(&str, &str), i64> = found
            .iter()
            .map(|(s, i, p)| ((s.as_str(), i.as_str()), *p))
            .collect();
        let mut new: Vec<(i64, &Event)> = Vec::with_capacity(events.len());
        for (i, e) in events {
            match known.get(&(e.source.as_str(), e.id.as_str())) {
                Some(&position) => outcomes[i].push(AppendOutcome::Duplicate(position as u64)),
                None => {
                    known.insert((e.source.as_str(), e.id.as_str()), next);
                    outcomes[i].push(AppendOutcome::Stored(next as u64));
                    new.push((next, e));
                    next += 1;
                }
            }
        }
        if new.is_empty() {
            continue;
        }
        let positions: Vec<i64> = new.iter().map(|(p, _)| *p).collect();
        let sources: Vec<&str> = new.iter().map(|(_, e)| e.source.as_str()).collect();
        let ids: Vec<&str> = new.iter().map(|(_, e)| e.id.as_str()).collect();
        tx.execute(&insert_ids, &[&sid, &sources, &ids, &positions, &now])
            .await?;
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
        tx.execute(
            &insert_events,
            &[
                &sid,
                &now,
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
            ],
        )
        .await?;
        let bytes: i64 = sizes.iter().map(|&s| i64::from(s)).sum();
        tx.execute(&bump, &[&sid, &next, &(new.len() as i64), &bytes])
            .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}
