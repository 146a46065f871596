//! The store scenarios of the conformance suite on a real SQLite file.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{DedupStore, EventStore, Result};
use causeway_sqlite::{SqliteOptions, SqliteStore};
use causeway_testkit::{DedupStoreHarness, EventStoreHarness};

/// Each store lives in its own temporary directory, deleted with the harness.
struct Sqlite {
    dir: tempfile::TempDir,
}

impl Sqlite {
    fn new() -> Self {
        Sqlite {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn open(&self, dedup_window: Duration) -> SqliteStore {
        let path = self
            .dir
            .path()
            .join(format!("{}.db", causeway_testkit::unique_name("store")));
        SqliteStore::open(
            path,
            SqliteOptions {
                dedup_window,
                ..SqliteOptions::default()
            },
        )
        .expect("open sqlite store")
    }
}

#[async_trait]
impl EventStoreHarness for Sqlite {
    fn name(&self) -> String {
        "sqlite".into()
    }
    async fn store(&self, dedup_window: Duration) -> Result<Arc<dyn EventStore>> {
        Ok(Arc::new(self.open(dedup_window)))
    }
}

#[async_trait]
impl DedupStoreHarness for Sqlite {
    fn name(&self) -> String {
        "sqlite".into()
    }
    async fn store(&self) -> Result<Arc<dyn DedupStore>> {
        Ok(Arc::new(self.open(Duration::from_secs(3600))))
    }
}

mod event_store {
    causeway_testkit::event_store_conformance!(async { super::Sqlite::new() });
}

mod dedup_store {
    causeway_testkit::dedup_store_conformance!(async { super::Sqlite::new() });
}
