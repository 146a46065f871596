//! causeway-core: the event model, the broker and store traits, errors and
//! capabilities that every causeway adapter and the bridge share, plus
//! in-memory backends.
//!
//! The crate stays light: no broker client, no TLS stack, no database.

pub mod ack_tracker;
pub mod binding;
pub mod capabilities;
pub mod consume;
pub mod dead_letter;
pub mod dedup;
pub mod duration;
pub mod endpoint;
pub mod error;
pub mod event;
pub mod idempotent;
pub mod memory;
pub mod message;
pub mod publish;
pub mod redact;
pub mod retry;
pub mod store;
pub mod structured;
pub mod template;
pub mod text_body;

pub use ack_tracker::AckTracker;
pub use binding::Binding;
pub use capabilities::{Capabilities, Ordering};
pub use consume::{
    Consumer, Delivery, Position, Prefetch, Settlement, Settler, Ticket, Unsettled, next_buffered,
    settle_all, unknown_tags,
};
pub use dedup::{Claim, ClaimToken, DedupStore};
pub use endpoint::{Connect, Endpoint};
pub use error::{Error, ErrorKind, Result, Status};
pub use event::Event;
pub use idempotent::{Handled, IdempotentHandler};
pub use message::{Format, Header, Identity, Incoming, InputFormat, Native, Value};
pub use publish::{Confirms, Publisher, Receipt};
pub use retry::{RetryPolicy, RetryingPublisher};
pub use store::{
    AppendOutcome, EventStore, ReadFrom, ReadQuery, Retention, StoreStats, StoredEvent,
};
pub use template::Template;
