//! SIGKILL in the middle of appending (the testkit's crash scenario) on PostgreSQL.

mod common;

use std::sync::Arc;

use causeway_core::EventStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_append_keeps_every_durable_batch_whole() {
    causeway_testkit::crash::sigkill_mid_append(
        "sigkill_mid_append_keeps_every_durable_batch_whole",
        common::fresh_schema,
        |schema| async move { Arc::new(common::store_in(&schema).await) as Arc<dyn EventStore> },
    )
    .await;
}
