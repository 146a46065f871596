use causeway_core::{ErrorKind, Status};

/// The error of causeway-postgres, classified into a kind and a retry
/// status. An enum (callers may match on it), shown without a prefix: the
/// conversion into `causeway_core::Error` names the store once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused or failed, or the connection broke.
    #[error("{0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("no connection from the pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The options are invalid.
    #[error("config: {0}")]
    Config(String),
    /// A dedup claim was taken over by another owner, or is gone.
    #[error("{0}")]
    Fenced(String),
    /// A stored row could not be turned back into an event.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The store's append task is gone.
    #[error("the store's appender has stopped")]
    Closed,
}

impl Error {
    /// What went wrong, in causeway's terms.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Postgres(e) if e.code().is_none() => ErrorKind::Connection,
            Error::Postgres(_) | Error::Corrupt(_) => ErrorKind::Storage,
            Error::Pool(_) => ErrorKind::Connection,
            Error::Config(_) => ErrorKind::Config,
            Error::Fenced(_) => ErrorKind::Fenced,
            Error::Closed => ErrorKind::Closed,
        }
    }

    /// From the server's SQLSTATE: connection exceptions (08), serialization
    /// failures and deadlocks (40), insufficient resources (53) and operator
    /// intervention (57) are temporary; a broken connection without a code too.
    pub fn status(&self) -> Status {
        match self {
            Error::Postgres(e) => match e.code() {
                None => Status::Temporary,
                Some(code) => match &code.code()[..2] {
                    "08" | "40" | "53" | "57" => Status::Temporary,
                    _ => Status::Permanent,
                },
            },
            Error::Pool(_) => Status::Temporary,
            Error::Config(_) | Error::Fenced(_) | Error::Corrupt(_) | Error::Closed => {
                Status::Permanent
            }
        }
    }
}

impl From<Error> for causeway_core::Error {
    fn from(e: Error) -> Self {
        causeway_core::Error::new(e.kind(), "postgres store")
            .with_status(e.status())
            .with_operation("postgres store")
            .with_source(e)
    }
}
