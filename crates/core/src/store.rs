//! The durable event log: append, read back from a position or time, cursors, retention.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::event::Event;

/// What happened to one appended event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this position of the stream.
    Stored(u64),
    /// An event with the same source and id is already stored within the
    /// dedup window, at this position. Not an error: the caller drops the copy.
    Duplicate(u64),
}

impl AppendOutcome {
    /// The position of the stored event, whichever copy it is.
    pub fn position(self) -> u64 {
        match self {
            AppendOutcome::Stored(p) | AppendOutcome::Duplicate(p) => p,
        }
    }
}

/// An event as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in its stream; positions increase with every append.
    pub position: u64,
    /// When the store appended it. Reads "from a time" use this clock.
    pub stored_at: DateTime<Utc>,
    /// The event.
    pub event: Event,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// From this position, inclusive.
    Position(u64),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
}

/// Which events a read returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadQuery {
    /// The stream (a route's log).
    pub stream: String,
    /// Where to start.
    pub from: ReadFrom,
    /// Stop before events stored at or after this time.
    pub until: Option<DateTime<Utc>>,
    /// Only events from this source.
    pub source: Option<String>,
    /// Only events with this key.
    pub key: Option<String>,
    /// At most this many events.
    pub limit: usize,
}

impl ReadQuery {
    /// Everything in `stream` from `from`, up to `limit` events.
    pub fn new(stream: impl Into<String>, from: ReadFrom, limit: usize) -> Self {
        ReadQuery {
            stream: stream.into(),
            from,
            until: None,
            source: None,
            key: None,
            limit,
        }
    }

    /// Whether `stored` passes the filters and time bounds of this query
    /// (the start position is the caller's business).
    pub fn matches(&self, stored: &StoredEvent) -> bool {
        if let ReadFrom::Time(t) = self.from
            && stored.stored_at < t
        {
            return false;
        }
        self.until.is_none_or(|u| stored.stored_at < u)
            && self
                .source
                .as_ref()
                .is_none_or(|s| *s == stored.event.source)
            && self
                .key
                .as_ref()
                .is_none_or(|k| Some(k) == stored.event.key.as_ref())
    }
}

/// How much the store keeps.
///
/// Unless `ignore_cursors` is set, retention never deletes an event that
/// a stream's slowest cursor has not passed, and a stream with no cursor
/// has passed nothing: a route whose forwarder never confirmed anything,
/// or a stream of dead letters, keeps everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Retention {
    /// Delete events stored longer ago than this.
    pub max_age: Option<Duration>,
    /// Delete the oldest events while a stream holds more payload bytes than this.
    pub max_bytes: Option<u64>,
    /// Delete past the slowest cursor too, and in streams with no cursor.
    /// Off by default: a forwarder that has not sent an event yet must
    /// still find it.
    pub ignore_cursors: bool,
    /// Only streams whose names start with this (all when `None`).
    pub stream_prefix: Option<String>,
}

impl Retention {
    /// Whether the policy applies to `stream`.
    pub fn covers(&self, stream: &str) -> bool {
        self.stream_prefix
            .as_deref()
            .is_none_or(|p| stream.starts_with(p))
    }
}

/// Counts for one stream or the whole store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Events held.
    pub events: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Position of the oldest event held.
    pub first_position: Option<u64>,
    /// Position of the newest event held.
    pub last_position: Option<u64>,
    /// When the oldest event held was stored.
    pub oldest: Option<DateTime<Utc>>,
    /// When the newest event held was stored.
    pub newest: Option<DateTime<Utc>>,
}

/// A stream's first or last event: (position, stored at).
pub type StreamEnd = (u64, DateTime<Utc>);

impl StoreStats {
    /// Adds one stream's counts; `ends` are its first and last (position,
    /// stored at), when it holds any event. Stores sum streams with this.
    pub fn add_stream(&mut self, events: u64, bytes: u64, ends: Option<(StreamEnd, StreamEnd)>) {
        self.events += events;
        self.bytes += bytes;
        if let Some(((fp, ft), (lp, lt))) = ends {
            self.first_position = Some(self.first_position.map_or(fp, |p| p.min(fp)));
            self.last_position = Some(self.last_position.map_or(lp, |p| p.max(lp)));
            self.oldest = Some(self.oldest.map_or(ft, |t| t.min(ft)));
            self.newest = Some(self.newest.map_or(lt, |t| t.max(lt)));
        }
    }
}

/// A durable, replayable log of events, split into named streams.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends `events` to `stream` and returns one outcome per event, in
    /// order, only once they are durable. An event whose (source, id) is
    /// already in the stream within the store's dedup window is reported as
    /// [`AppendOutcome::Duplicate`] and not stored again.
    async fn append(&self, stream: &str, events: &[Event]) -> Result<Vec<AppendOutcome>>;

    /// Events matching `query`, in position order.
    async fn read(&self, query: &ReadQuery) -> Result<Vec<StoredEvent>>;

    /// The position a named cursor of `stream` was last set to.
    async fn cursor(&self, stream: &str, name: &str) -> Result<Option<u64>>;

    /// Advances a named cursor (e.g. a forwarder's last sent position),
    /// atomically; it never moves back, so a stale writer (a paused
    /// forwarder that lost its lease) cannot undo another's progress.
    async fn set_cursor(&self, stream: &str, name: &str, position: u64) -> Result<()>;

    /// Applies `policy` to every stream it covers; returns how many events
    /// were deleted. Unless told otherwise, never deletes an event a cursor
    /// has not passed, nor anything in a stream with no cursor.
    async fn apply_retention(&self, policy: &Retention) -> Result<u64>;

    /// Counts for `stream`, or for the whole store when `None`.
    async fn stats(&self, stream: Option<&str>) -> Result<StoreStats>;
}
