//! The store scenarios of the conformance suite on a real PostgreSQL server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{DedupStore, EventStore, Result};
use causeway_postgres::PostgresOptions;
use causeway_testkit::{DedupStoreHarness, EventStoreHarness};

struct Postgres;

#[async_trait]
impl EventStoreHarness for Postgres {
    fn name(&self) -> String {
        "postgres".into()
    }
    async fn store(&self, dedup_window: Duration) -> Result<Arc<dyn EventStore>> {
        let mut options = PostgresOptions::new(common::url());
        options.schema = common::fresh_schema();
        options.pool_size = 4;
        options.dedup_window = dedup_window;
        Ok(Arc::new(common::connect(options).await))
    }
}

#[async_trait]
impl DedupStoreHarness for Postgres {
    fn name(&self) -> String {
        "postgres".into()
    }
    async fn store(&self) -> Result<Arc<dyn DedupStore>> {
        Ok(Arc::new(common::store_in(&common::fresh_schema()).await))
    }
}

mod event_store {
    causeway_testkit::event_store_conformance!(async { super::Postgres });
}

mod dedup_store {
    causeway_testkit::dedup_store_conformance!(async { super::Postgres });
}
