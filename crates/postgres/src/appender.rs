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
    // Inserting the ids is the duplicate check: the primary key finds the
    // conflicts, and RETURNING names the rows that are new (or whose old
    // copy left the dedup window).
    let claim_ids = tx
        .prepare_cached(
            "INSERT INTO event_ids (sid, source, id, position, stored_at)
             SELECT $1, t.s, t.i, t.p, $5 FROM unnest($2::text[], $3::text[], $4::int8[]) AS t(s, i, p)
             ON CONFLICT (sid, source, id) DO UPDATE SET position = excluded.position, stored_at = excluded.stored_at
             WHERE event_ids.stored_at < $6
             RETURNING source, id",
        )
        .await?;
    let existing = tx
        .prepare_cached(
            "SELECT t.source, t.id, e.position FROM unnest($2::text[], $3::text[]) AS t(source, id)
             JOIN event_ids e ON e.sid = $1 AND e.source = t.source AND e.id = t.id",
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
        // Copies within this batch: the first one stands for the rest.
        let mut first_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut unique: Vec<(i64, &Event)> = Vec::with_capacity(events.len());
        let mut copy_of: Vec<Option<usize>> = Vec::with_capacity(events.len());
        for (_, e) in &events {
            match first_of.get(&(e.source.as_str(), e.id.as_str())) {
                Some(&u) => copy_of.push(Some(u)),
                None => {
                    first_of.insert((e.source.as_str(), e.id.as_str()), unique.len());
                    copy_of.push(None);
                    unique.push((next + unique.len() as i64, *e));
                }
            }
        }
        let positions: Vec<i64> = unique.iter().map(|(p, _)| *p).collect();
        let sources: Vec<&str> = unique.iter().map(|(_, e)| e.source.as_str()).collect();
        let ids: Vec<&str> = unique.iter().map(|(_, e)| e.id.as_str()).collect();
        let mut is_new = vec![false; unique.len()];
        for r in tx
            .query(
                &claim_ids,
                &[&sid, &sources, &ids, &positions, &now, &window_start],
            )
            .await?
        {
            if let Some(&u) = first_of.get(&(r.get::<_, &str>(0), r.get::<_, &str>(1))) {
                is_new[u] = true;
            }
        }
        // Ids stored before, within the window: where their first copy is.
        let old: Vec<usize> = (0..unique.len()).filter(|&u| !is_new[u]).collect();
        let mut old_position: HashMap<usize, i64> = HashMap::new();
        if !old.is_empty() {
            let old_sources: Vec<&str> = old.iter().map(|&u| sources[u]).collect();
            let old_ids: Vec<&str> = old.iter().map(|&u| ids[u]).collect();
            for r in tx.query(&existing, &[&sid, &old_sources, &old_ids]).await? {
                if let Some(&u) = first_of.get(&(r.get::<_, &str>(0), r.get::<_, &str>(1))) {
                    old_position.insert(u, r.get(2));
                }
            }
        }
        for ((i, e), copy) in events.iter().zip(&copy_of) {
            let u = copy.unwrap_or_else(|| first_of[&(e.source.as_str(), e.id.as_str())]);
            let position = if is_new[u] {
                unique[u].0
            } else {
                old_position.get(&u).copied().unwrap_or(unique[u].0)
            };
            outcomes[*i].push(if copy.is_none() && is_new[u] {
                AppendOutcome::Stored(position as u64)
            } else {
                AppendOutcome::Duplicate(position as u64)
            });
        }
        // Positions of duplicates stay unused: positions increase, with gaps
        // only where a duplicate was refused.
        next += unique.len() as i64;
        let new: Vec<(i64, &Event)> = unique
            .iter()
            .zip(&is_new)
            .filter(|(_, n)| **n)
            .map(|(u, _)| *u)
            .collect();
        if new.is_empty() {
            tx.execute(&bump, &[&sid, &next, &0i64, &0i64]).await?;
            continue;
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
