use causeway_core::ErrorKind;

causeway_core::adapter_error!(
    /// The error of causeway-servicebus: what failed, classified from the
    /// HTTP status Service Bus answered with (or the transport's failure).
    Error,
    "servicebus"
);

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new("config", ErrorKind::Config, message.into())
    }

    /// From an HTTP status Service Bus answered with, and its body.
    pub(crate) fn http(operation: &'static str, status: u16, detail: &str) -> Self {
        Error::new(
            operation,
            classify(status),
            format!("HTTP {status}: {}", detail.trim()),
        )
    }

    /// From the client library: a status it checked, or a transport failure.
    pub(crate) fn azure(operation: &'static str, e: azure_core::Error) -> Self {
        match e.kind() {
            azure_core::error::ErrorKind::HttpResponse { status, error_code } => {
                let status = u16::from(*status);
                Error::new(
                    operation,
                    classify(status),
                    format!(
                        "HTTP {status}{}: {e}",
                        error_code
                            .as_deref()
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    ),
                )
            }
            azure_core::error::ErrorKind::Io => {
                Error::new(operation, ErrorKind::Connection, e.to_string())
            }
            azure_core::error::ErrorKind::DataConversion => {
                Error::new(operation, ErrorKind::InvalidEvent, e.to_string())
            }
            azure_core::error::ErrorKind::Credential => {
                Error::new(operation, ErrorKind::Config, e.to_string())
            }
            _ => Error::new(operation, ErrorKind::Internal, e.to_string()),
        }
    }
}

/// Service Bus REST status codes (Microsoft's "Service Bus REST API status
/// and error codes"): 401 authorization failure; 403 quota exceeded or
/// message too large (the publisher tells them apart by the request's size;
/// elsewhere a quota: wait); 404 no such message or lock (the lock was
/// lost); 405 not allowed on this entity (one that requires sessions: no
/// message passes until the configuration changes); 410 no such entity;
/// 400 a bad request; 408, 429 and 5xx the service is busy or failing.
pub(crate) fn classify(status: u16) -> ErrorKind {
    match status {
        401 => ErrorKind::Unauthorized,
        403 | 408 | 429 | 500..=599 => ErrorKind::Unavailable,
        404 => ErrorKind::Conflict,
        405 => ErrorKind::Config,
        410 => ErrorKind::NotFound,
        400..=499 => ErrorKind::Rejected,
        _ => ErrorKind::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use causeway_core::Status;

    #[test]
    fn statuses_classify() {
        assert_eq!(classify(401), ErrorKind::Unauthorized);
        assert_eq!(classify(401).default_status(), Status::Permanent);
        assert_eq!(classify(410), ErrorKind::NotFound);
        assert_eq!(classify(503).default_status(), Status::Temporary);
        assert_eq!(classify(403).default_status(), Status::Temporary);
    }
}
