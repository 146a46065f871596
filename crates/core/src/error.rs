//! The one error type of causeway-core, with a kind and a retry status.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Whether an operation that failed may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Retry with backoff: a connection dropped, a broker is busy, a lease is held.
    Temporary,
    /// Don't retry: dead-letter the event or report the fault.
    Permanent,
    /// Temporary, and retried until the retry policy gave up: retries are
    /// exhausted for now. Still worth trying again later
    /// ([`Error::is_temporary`] is true), but no longer a blip.
    Persistent,
}

/// What went wrong, independent of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection to a broker or store failed or was lost.
    Connection,
    /// An operation did not complete in time.
    Timeout,
    /// The backend is overloaded or refusing work for now (throttled, circuit open).
    Unavailable,
    /// An event is malformed: a required attribute is missing or invalid.
    InvalidEvent,
    /// An event exceeds the backend's maximum message size.
    TooLarge,
    /// The broker refused this message (a policy or schema it breaks, a
    /// route it cannot take): other messages may pass.
    Rejected,
    /// Authentication or authorization failed: the credentials are wrong,
    /// expired or rotated, or lack a right. Nothing passes until that changes.
    Unauthorized,
    /// A destination, entity or record does not exist.
    NotFound,
    /// Existing state conflicts with what was asked (topology mismatch, duplicate).
    Conflict,
    /// A dedup claim lost its lease to another owner: the stale owner must not commit.
    Fenced,
    /// Configuration is invalid.
    Config,
    /// The component was closed or shut down.
    Closed,
    /// Storage failed (disk, database).
    Storage,
    /// The backend cannot do what was asked.
    Unsupported,
    /// A bug or an unexpected state inside causeway or a client library.
    Internal,
}

impl ErrorKind {
    /// The status an error of this kind has unless the backend says otherwise.
    pub fn default_status(self) -> Status {
        match self {
            ErrorKind::Connection
            | ErrorKind::Timeout
            | ErrorKind::Unavailable
            | ErrorKind::Storage => Status::Temporary,
            ErrorKind::InvalidEvent
            | ErrorKind::TooLarge
            | ErrorKind::Rejected
            | ErrorKind::Unauthorized
            | ErrorKind::NotFound
            | ErrorKind::Conflict
            | ErrorKind::Fenced
            | ErrorKind::Config
            | ErrorKind::Closed
            | ErrorKind::Unsupported
            | ErrorKind::Internal => Status::Permanent,
        }
    }

    /// Whether an error of this kind is the event's own fault, so that
    /// retrying it can never help and it alone is dead-lettered: it is
    /// invalid, too large, or refused for what it is. Every other
    /// permanent error says the sink is broken (credentials, a missing
    /// entity, a quota, a bug): the route pauses and retries until the
    /// sink recovers, and dead-letters nothing.
    pub fn is_event_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidEvent | ErrorKind::TooLarge | ErrorKind::Rejected
        )
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::InvalidEvent => "invalid event",
            ErrorKind::TooLarge => "too large",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::Config => "config",
            ErrorKind::Closed => "closed",
            ErrorKind::Storage => "storage",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every causeway trait. Adapter crates keep their own error type
/// and convert into this one, keeping kind, status and the client's error as source.
///
/// Cloneable (the source is shared) so that one failure can be reported for
/// every message of a batch it affected.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    status: Status,
    message: Cow<'static, str>,
    /// The operation that failed (`kafka publish`, `sqs receive`), when known.
    operation: Option<Cow<'static, str>>,
    /// What it was working on: (what, which), e.g. ("destination", "orders").
    context: Vec<(&'static str, String)>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// `Result` with causeway's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with the kind's default status.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            status: kind.default_status(),
            message: message.into(),
            operation: None,
            context: Vec::new(),
            source: None,
        }
    }

    /// A temporary error: worth retrying.
    pub fn temporary(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(kind, message).with_status(Status::Temporary)
    }

    /// A permanent error: retrying will not help.
    pub fn permanent(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(kind, message).with_status(Status::Permanent)
    }

    /// An invalid event, naming the offending field.
    pub fn invalid_event(field: &str, problem: impl fmt::Display) -> Self {
        Error::new(
            ErrorKind::InvalidEvent,
            format!("field `{field}`: {problem}"),
        )
    }

    /// Overrides the status, e.g. from the client's own retriable flag.
    #[must_use]
    pub fn with_status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches the underlying error, already boxed (as adapters hold it).
    #[must_use]
    pub fn with_boxed_source(mut self, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(Arc::from(source));
        self
    }

    /// Names the operation that failed.
    #[must_use]
    pub fn with_operation(mut self, operation: impl Into<Cow<'static, str>>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Adds what the operation was working on, shown after the message:
    /// `with_context("destination", "orders")`.
    #[must_use]
    pub fn with_context(mut self, what: &'static str, which: impl Into<String>) -> Self {
        self.context.push((what, which.into()));
        self
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<&str> {
        self.operation.as_deref()
    }

    /// What the operation was working on.
    pub fn context(&self) -> &[(&'static str, String)] {
        &self.context
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying may help.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether trying again later may help: [`Status::Temporary`], or
    /// [`Status::Persistent`] (temporary, with the retries spent).
    pub fn is_temporary(&self) -> bool {
        matches!(self.status, Status::Temporary | Status::Persistent)
    }

    /// Whether the retry policy gave up on it ([`Status::Persistent`]).
    pub fn retries_exhausted(&self) -> bool {
        self.status == Status::Persistent
    }

    /// The message without kind or source.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Temporary => "temporary",
            Status::Permanent => "permanent",
            Status::Persistent => "temporary, retries exhausted",
        };
        write!(f, "{} error ({status}): {}", self.kind, self.message)?;
        if !self.context.is_empty() {
            let context: Vec<String> = self
                .context
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            write!(f, " ({})", context.join(", "))?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("message", &self.message)
            .field("operation", &self.operation)
            .field("context", &self.context)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[doc(hidden)]
pub use tokio::time::timeout as __timeout;

/// Defines an adapter crate's own error type: the failed operation, a
/// [`ErrorKind`], a [`Status`] and the client's error as source, converting
/// into [`Error`]. Each adapter adds the constructors that classify its
/// client's errors.
#[macro_export]
macro_rules! adapter_error {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name {
            operation: &'static str,
            kind: $crate::ErrorKind,
            status: $crate::Status,
            source: Box<dyn std::error::Error + Send + Sync>,
        }

        impl $name {
            /// An error of `kind` with the kind's default status.
            pub(crate) fn new(
                operation: &'static str,
                kind: $crate::ErrorKind,
                source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
            ) -> Self {
                $name { operation, kind, status: kind.default_status(), source: source.into() }
            }

            /// Overrides the status, e.g. from the client's own retriable signal.
            #[allow(dead_code)]
            pub(crate) fn with_status(mut self, status: $crate::Status) -> Self {
                self.status = status;
                self
            }

            /// `call`, or a `Timeout` error of `operation` when it takes
            /// longer than `limit`: no call to a broker waits forever.
            #[allow(dead_code)]
            pub(crate) async fn bounded<T>(
                operation: &'static str,
                limit: std::time::Duration,
                call: impl std::future::Future<Output = Result<T, Self>>,
            ) -> Result<T, Self> {
                match $crate::error::__timeout(limit, call).await {
                    Ok(result) => result,
                    Err(_) => Err($name::new(
                        operation,
                        $crate::ErrorKind::Timeout,
                        format!("no answer within {limit:?}"),
                    )),
                }
            }

            /// What went wrong.
            pub fn kind(&self) -> $crate::ErrorKind {
                self.kind
            }

            /// Whether retrying may help.
            pub fn status(&self) -> $crate::Status {
                self.status
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!($prefix, " {}: {}"), self.operation, self.source)
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&*self.source)
            }
        }

        /// The operation, prefixed with the adapter, becomes the message and
        /// the client's error the source: said once, not once per layer.
        impl From<$name> for $crate::Error {
            fn from(e: $name) -> Self {
                let operation = format!(concat!($prefix, " {}"), e.operation);
                $crate::Error::new(e.kind, operation.clone())
                    .with_status(e.status)
                    .with_operation(operation)
                    .with_boxed_source(e.source)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_carry_a_default_status_that_can_be_overridden() {
        let e = Error::new(ErrorKind::Connection, "lost");
        assert!(e.is_temporary());
        let e = Error::new(ErrorKind::Rejected, "no").with_status(Status::Temporary);
        assert!(e.is_temporary());
        assert_eq!(
            Error::new(ErrorKind::TooLarge, "x").status(),
            Status::Permanent
        );
    }

    #[test]
    fn exhausted_retries_are_their_own_status_and_still_temporary() {
        let e = Error::new(ErrorKind::Timeout, "no answer").with_status(Status::Persistent);
        assert!(e.is_temporary() && e.retries_exhausted());
        assert_eq!(
            e.with_context("destination", "orders").to_string(),
            "timeout error (temporary, retries exhausted): no answer (destination orders)"
        );
    }

    #[test]
    fn display_names_kind_status_message_and_source() {
        let io = std::io::Error::other("socket closed");
        let e = Error::new(ErrorKind::Connection, "publish failed").with_source(io);
        assert_eq!(
            e.to_string(),
            "connection error (temporary): publish failed: socket closed"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
