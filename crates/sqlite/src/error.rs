use causeway_core::{ErrorKind, Status};

/// The error of causeway-sqlite, classified into a kind and a retry
/// status. An enum (callers may match on it), shown without a prefix: the
/// conversion into `causeway_core::Error` names the store once.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite refused or failed.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The writer thread is gone (the store was dropped or crashed).
    #[error("the store's writer has stopped")]
    Closed,
    /// A stored row could not be turned back into an event.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// A dedup claim was taken over by another owner, or is gone.
    #[error("{0}")]
    Fenced(String),
    /// Another process (or another store on the same file) claims dedup
    /// keys in this file: claims live in one process's memory.
    #[error("{0}")]
    InUse(String),
    /// A blocking task failed to run.
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    /// What went wrong, in causeway's terms.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Sqlite(_) | Error::Corrupt(_) => ErrorKind::Storage,
            Error::Closed => ErrorKind::Closed,
            Error::Fenced(_) => ErrorKind::Fenced,
            Error::InUse(_) => ErrorKind::Conflict,
            Error::Join(_) => ErrorKind::Internal,
        }
    }

    /// Busy/locked databases and I/O hiccups are worth retrying; the rest is not.
    pub fn status(&self) -> Status {
        use rusqlite::ffi::ErrorCode;
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => match e.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory => Status::Temporary,
                _ => Status::Permanent,
            },
            Error::Sqlite(_)
            | Error::Corrupt(_)
            | Error::Closed
            | Error::Fenced(_)
            | Error::InUse(_)
            | Error::Join(_) => Status::Permanent,
        }
    }
}

impl From<Error> for causeway_core::Error {
    fn from(e: Error) -> Self {
        causeway_core::Error::new(e.kind(), "sqlite store")
            .with_status(e.status())
            .with_operation("sqlite store")
            .with_source(e)
    }
}
