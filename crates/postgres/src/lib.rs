//! causeway-postgres: [`EventStore`] and [`DedupStore`] on PostgreSQL, for
//! several bridge processes sharing one route's state.
//!
//! - Appends from one process go through one task that does group commit:
//!   requests queued meanwhile share a transaction. Across processes, a
//!   stream's row lock orders appends, so positions are assigned in commit
//!   order and a reader never sees a position appear behind one it already read.
//! - Dedup claims are single statements (`INSERT … ON CONFLICT … WHERE lease
//!   expired`), fenced by a sequence, timed by the server's clock, so
//!   processes with skewed clocks still agree.
//! - The schema lives in its own PostgreSQL schema (default `causeway`) and
//!   is created by embedded migrations under an advisory lock.
//!
//! [`EventStore`]: causeway_core::EventStore
//! [`DedupStore`]: causeway_core::DedupStore

mod appender;
mod error;
mod schema;
mod store;

pub use error::Error;
pub use store::{PostgresOptions, PostgresStore};
