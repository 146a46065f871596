//! SIGKILL in the middle of appending (the testkit's crash scenario) on a SQLite file.

use std::sync::Arc;

use causeway_core::EventStore;
use causeway_sqlite::{SqliteOptions, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_append_keeps_every_durable_batch_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    causeway_testkit::crash::sigkill_mid_append(
        "sigkill_mid_append_keeps_every_durable_batch_whole",
        || dir.path().join("crash.db").to_string_lossy().into_owned(),
        |path| async move {
            Arc::new(SqliteStore::open(path, SqliteOptions::default()).expect("open"))
                as Arc<dyn EventStore>
        },
    )
    .await;
}
