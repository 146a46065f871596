//! causeway-testkit: the conformance suite every adapter runs against its
//! real broker, the fault proxy, and helpers for tests.
//!
//! Scenarios are public async functions over a harness trait
//! ([`BrokerHarness`], [`EventStoreHarness`], [`DedupStoreHarness`]); the
//! macros [`broker_conformance!`], [`event_store_conformance!`] and
//! [`dedup_store_conformance!`] expand them into one `#[tokio::test]` each
//! for a backend. Scenarios read the backend's declared [`Capabilities`]: a
//! capability the backend declares is asserted, one it does not declare is
//! either asserted absent (where that is observable) or the scenario prints
//! that it does not apply, naming the capability. Never by adapter name.
//!
//! [`Capabilities`]: causeway_core::Capabilities

pub mod bench;
pub mod broker;
pub mod crash;
pub mod dedup;
pub mod env;
pub mod fault_proxy;
pub mod harness;
pub mod memory;
pub mod store;

mod macros;
mod support;

pub use fault_proxy::FaultProxy;
pub use harness::{
    BrokerHarness, Decorated, DedupStoreHarness, EventStoreHarness, Foreign, ForeignMessage,
};
pub use support::{
    collect, events, not_applicable, receive_and_ack, receive_one_raw, reject_undecodable_ack_rest,
    unique_name,
};
