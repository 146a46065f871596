use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::event::Event;
use crate::store::{
    AppendOutcome, EventStore, ReadFrom, ReadQuery, Retention, StoreStats, StoredEvent,
};

/// An [`EventStore`] in memory, for tests and the quickstart.
#[derive(Debug)]
pub struct MemoryEventStore {
    dedup_window: Duration,
    streams: Mutex<HashMap<String, Stream>>,
}

#[derive(Debug, Default)]
struct Stream {
    /// Held events; positions increase and are contiguous (deletes are from the front).
    events: VecDeque<StoredEvent>,
    next_position: u64,
    bytes: u64,
    /// (source, id) → (position, stored at), kept for the dedup window even
    /// after retention deleted the event.
    ids: HashMap<(String, String), (u64, DateTime<Utc>)>,
    cursors: HashMap<String, u64>,
}

impl Stream {
    fn index_of(&self, position: u64) -> usize {
        match self.events.front() {
            Some(first) => position.saturating_sub(first.position) as usize,
            None => 0,
        }
    }
}

impl MemoryEventStore {
    /// A store that refuses an already-stored (source, id) for `dedup_window`.
    pub fn new(dedup_window: Duration) -> Self {
        MemoryEventStore {
            dedup_window,
            streams: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Stream>> {
        self.streams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for MemoryEventStore {
    fn default() -> Self {
        Self::new(Duration::from_secs(24 * 3600))
    }
}

#[async_trait]
impl EventStore for MemoryEventStore {
    async fn append(&self, stream: &str, events: &[Event]) -> Result<Vec<AppendOutcome>> {
        let now = Utc::now();
        let window = chrono::Duration::from_std(self.dedup_window).unwrap_or(chrono::Duration::MAX);
        let mut streams = self.lock();
        let s = streams.entry(stream.to_owned()).or_insert_with(|| Stream {
            next_position: 1,
            ..Stream::default()
        });
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let id = (event.source.clone(), event.id.clone());
            if let Some(&(position, at)) = s.ids.get(&id)
                && now - at < window
            {
                out.push(AppendOutcome::Duplicate(position));
                continue;
            }
            let position = s.next_position;
            s.next_position += 1;
            s.bytes += event.payload.len() as u64;
            s.ids.insert(id, (position, now));
            s.events.push_back(StoredEvent {
                position,
                stored_at: now,
                event: event.clone(),
            });
            out.push(AppendOutcome::Stored(position));
        }
        Ok(out)
    }

    async fn read(&self, query: &ReadQuery) -> Result<Vec<StoredEvent>> {
        let streams = self.lock();
        let Some(s) = streams.get(&query.stream) else {
            return Ok(Vec::new());
        };
        let start = match query.from {
            ReadFrom::Position(p) => s.index_of(p),
            ReadFrom::Time(t) => s.events.partition_point(|e| e.stored_at < t),
        };
        Ok(s.events
            .iter()
            .skip(start)
            .filter(|e| query.matches(e))
            .take(query.limit)
            .cloned()
            .collect())
    }

    async fn cursor(&self, stream: &str, name: &str) -> Result<Option<u64>> {
        Ok(self
            .lock()
            .get(stream)
            .and_then(|s| s.cursors.get(name).copied()))
    }

    async fn set_cursor(&self, stream: &str, name: &str, position: u64) -> Result<()> {
        self.lock()
            .entry(stream.to_owned())
            .or_insert_with(|| Stream {
                next_position: 1,
                ..Stream::default()
            })
            .cursors
            .entry(name.to_owned())
            .and_modify(|p| *p = (*p).max(position))
            .or_insert(position);
        Ok(())
    }

    async fn apply_retention(&self, policy: &Retention) -> Result<u64> {
        let now = Utc::now();
        let window = chrono::Duration::from_std(self.dedup_window).unwrap_or(chrono::Duration::MAX);
        let max_age = policy
            .max_age
            .and_then(|a| chrono::Duration::from_std(a).ok());
        let mut deleted = 0;
        for (name, s) in self.lock().iter_mut() {
            if !policy.covers(name) {
                s.ids.retain(|_, (_, at)| now - *at < window);
                continue;
            }
            let protect_from = if policy.ignore_cursors {
                u64::MAX
            } else {
                // Events after the slowest cursor are still to be forwarded;
                // with no cursor, all of them.
                s.cursors.values().copied().min().map_or(0, |c| c + 1)
            };
            while let Some(first) = s.events.front() {
                let too_old = max_age.is_some_and(|a| now - first.stored_at > a);
                let too_big = policy.max_bytes.is_some_and(|b| s.bytes > b);
                if !(too_old || too_big) || first.position >= protect_from {
                    break;
                }
                s.bytes -= first.event.payload.len() as u64;
                s.events.pop_front();
                deleted += 1;
            }
            s.ids.retain(|_, (_, at)| now - *at < window);
        }
        Ok(deleted)
    }

    async fn stats(&self, stream: Option<&str>) -> Result<StoreStats> {
        let streams = self.lock();
        let mut stats = StoreStats::default();
        for (_, s) in streams
            .iter()
            .filter(|(name, _)| stream.is_none_or(|n| n == *name))
        {
            let ends = s
                .events
                .front()
                .zip(s.events.back())
                .map(|(f, l)| ((f.position, f.stored_at), (l.position, l.stored_at)));
            stats.add_stream(s.events.len() as u64, s.bytes, ends);
        }
        Ok(stats)
    }
}
