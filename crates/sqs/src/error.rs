use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use causeway_core::{ErrorKind, Status};

causeway_core::adapter_error!(
    /// The error of causeway-sqs: what failed, classified from the SDK's
    /// error metadata (the error code and the HTTP status).
    Error,
    "sqs"
);

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new("config", ErrorKind::Config, message.into())
    }

    /// From an SDK call. A request that never got an answer (dispatch
    /// failure, timeout, unreadable response) is temporary; a service error
    /// is classified by its code, then by its HTTP status.
    pub(crate) fn sdk<E>(operation: &'static str, e: SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("");
                let message = service.err().message().unwrap_or("");
                let (kind, retry) = classify(code, Some(service.raw().status().as_u16()));
                Error::new(operation, kind, format!("{code}: {message}")).with_status(retry)
            }
            SdkError::TimeoutError(_) => Error::new(
                operation,
                ErrorKind::Timeout,
                DisplayErrorContext(&e).to_string(),
            ),
            SdkError::ConstructionFailure(_) => Error::new(
                operation,
                ErrorKind::Config,
                DisplayErrorContext(&e).to_string(),
            ),
            _ => Error::new(
                operation,
                ErrorKind::Connection,
                DisplayErrorContext(&e).to_string(),
            ),
        }
    }

    /// A failed entry of a batch call: `sender_fault` is SQS's own verdict
    /// that sending it again cannot succeed.
    pub(crate) fn entry(
        operation: &'static str,
        code: &str,
        message: Option<&str>,
        sender_fault: bool,
    ) -> Self {
        let (kind, status) = classify(code, None);
        let status = if sender_fault {
            Status::Permanent
        } else {
            status
        };
        Error::new(
            operation,
            kind,
            format!("{code}: {}", message.unwrap_or("")),
        )
        .with_status(status)
    }
}

/// Error codes of the SQS API (both the JSON protocol's short names and the
/// query protocol's `AWS.SimpleQueueService.*` forms).
fn classify(code: &str, http: Option<u16>) -> (ErrorKind, Status) {
    let code = code.rsplit('.').next().unwrap_or(code);
    let kind = match code {
        "RequestThrottled"
        | "ThrottlingException"
        | "Throttling"
        | "KmsThrottled"
        | "OverLimit"
        | "ServiceUnavailable"
        | "InternalError"
        | "InternalFailure"
        | "KmsUnavailable" => ErrorKind::Unavailable,
        "NonExistentQueue" | "QueueDoesNotExist" => ErrorKind::NotFound,
        // The credentials or the queue's key: nothing passes until fixed.
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "KmsAccessDenied"
        | "KmsDisabled"
        | "KmsInvalidKeyUsage"
        | "KmsInvalidState"
        | "KmsNotFound"
        | "InvalidSecurity" => ErrorKind::Unauthorized,
        "UnsupportedOperation" => ErrorKind::Unsupported,
        "InvalidMessageContents"
        | "InvalidAttributeValue"
        | "InvalidAttributeName"
        | "InvalidParameterValue"
        | "MissingParameter" => ErrorKind::InvalidEvent,
        "ReceiptHandleIsInvalid" | "MessageNotInflight" | "InvalidIdFormat" => ErrorKind::Conflict,
        "BatchRequestTooLong" => ErrorKind::TooLarge,
        "QueueDeletedRecently" | "QueueNameExists" | "QueueAlreadyExists" => ErrorKind::Conflict,
        _ => match http {
            Some(429) | Some(500..=599) => ErrorKind::Unavailable,
            Some(404) => ErrorKind::NotFound,
            Some(401) | Some(403) => ErrorKind::Unauthorized,
            Some(400..=499) => ErrorKind::Rejected,
            _ => ErrorKind::Internal,
        },
    };
    (kind, kind.default_status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify() {
        assert_eq!(
            classify("AWS.SimpleQueueService.NonExistentQueue", Some(400)),
            (ErrorKind::NotFound, Status::Permanent)
        );
        assert_eq!(
            classify("RequestThrottled", None),
            (ErrorKind::Unavailable, Status::Temporary)
        );
        assert_eq!(
            classify("Whatever", Some(503)),
            (ErrorKind::Unavailable, Status::Temporary)
        );
        assert_eq!(classify("Whatever", Some(400)).1, Status::Permanent);
    }
}
