//! causeway-sqlite: the embedded default [`EventStore`] and [`DedupStore`]
//! of causeway, in one SQLite file, for one process.
//!
//! - WAL mode with `synchronous=FULL`: a write returns only after its
//!   transaction is fsynced.
//! - One writer thread does group commit: every append, claim, commit and
//!   cursor update queued while the previous transaction was fsyncing shares
//!   the next transaction and its one fsync. Each command runs in a savepoint,
//!   so one failing command never takes its neighbours down.
//! - Reads use a small pool of read-only connections; WAL readers never block
//!   the writer.
//! - Dedup claims live in this process's memory (`claims`); only commits
//!   are written, so a claim costs a lookup, not a write and an fsync. The
//!   first claim locks the file's claims to this process.
//! - Committed dedup keys past their TTL are purged by the writer when idle.
//!
//! [`EventStore`]: causeway_core::EventStore
//! [`DedupStore`]: causeway_core::DedupStore

mod claims;
mod error;
mod row;
mod schema;
mod store;
mod writer;

pub use error::Error;
pub use store::{SqliteOptions, SqliteStore};
