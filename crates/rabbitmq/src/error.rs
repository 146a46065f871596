use std::future::Future;
use std::time::Duration;

use causeway_core::{ErrorKind, Status};

/// The longest any single broker operation may take. lapin can leave an
/// operation pending forever on a connection that died under it; bounded,
/// that becomes a temporary error the caller retries.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a lapin operation with [`OPERATION_TIMEOUT`].
pub(crate) async fn bounded<T>(
    operation: &'static str,
    op: impl Future<Output = lapin::Result<T>>,
) -> Result<T, Error> {
    Error::bounded(operation, OPERATION_TIMEOUT, async {
        op.await.map_err(|e| Error::lapin(operation, e))
    })
    .await
}

causeway_core::adapter_error!(
    /// The error of causeway-rabbitmq: what failed, classified with lapin's
    /// own `can_be_recovered` and the AMQP reply codes.
    Error,
    "rabbitmq"
);

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new("config", ErrorKind::Config, message.into())
    }

    /// From lapin: I/O and channel/connection state errors are connection
    /// trouble; an AMQP error from the broker is a rejection (access refused,
    /// precondition failed: a topology conflict); `can_be_recovered` decides
    /// the status.
    pub(crate) fn lapin(operation: &'static str, e: lapin::Error) -> Self {
        use lapin::ErrorKind as K;
        let kind = match e.kind() {
            K::IOError(_)
            | K::InvalidChannel(_)
            | K::InvalidChannelState(..)
            | K::InvalidConnectionState(_)
            | K::MissingHeartbeatError => ErrorKind::Connection,
            K::ProtocolError(amqp) => match amqp.get_id() {
                // NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED
                404 => ErrorKind::NotFound,
                406 => ErrorKind::Conflict,
                403 => ErrorKind::Unauthorized,
                _ => ErrorKind::Connection,
            },
            _ => ErrorKind::Internal,
        };
        let status = if e.can_be_recovered()
            && !matches!(kind, ErrorKind::Conflict | ErrorKind::Unauthorized)
        {
            Status::Temporary
        } else {
            Status::Permanent
        };
        Error::new(operation, kind, e).with_status(status)
    }
}
