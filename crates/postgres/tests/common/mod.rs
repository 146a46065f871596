//! A fresh PostgreSQL schema per store, so tests never see each other's rows.

use causeway_postgres::{PostgresOptions, PostgresStore};

pub const VAR: &str = "CAUSEWAY_POSTGRES_URL";
pub const DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn url() -> String {
    causeway_testkit::env::endpoint(VAR, DEFAULT)
}

/// A schema name no other test uses.
pub fn fresh_schema() -> String {
    causeway_testkit::unique_name("t").replace('-', "_")
}

pub async fn connect(options: PostgresOptions) -> PostgresStore {
    let url = options.url.clone();
    match PostgresStore::connect(options).await {
        Ok(store) => store,
        Err(e) => causeway_testkit::env::unreachable("postgres", VAR, &url, e),
    }
}

pub async fn store_in(schema: &str) -> PostgresStore {
    let mut options = PostgresOptions::new(url());
    options.schema = schema.to_owned();
    options.pool_size = 4;
    connect(options).await
}
