use causeway_core::ErrorKind;

causeway_core::adapter_error!(
    /// The error of causeway-nats: what failed, classified from async-nats's own
    /// error kinds into a kind and a retry status.
    Error,
    "nats"
);

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new("config", ErrorKind::Config, message.into())
    }

    pub(crate) fn connect(e: async_nats::ConnectError) -> Self {
        use async_nats::ConnectErrorKind as K;
        let kind = match e.kind() {
            K::ServerParse | K::Tls => ErrorKind::Config,
            K::Authentication | K::AuthorizationViolation => ErrorKind::Unauthorized,
            K::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Connection,
        };
        Error::new("connect", kind, e)
    }

    pub(crate) fn publish(e: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let kind = match e.kind() {
            K::TimedOut => ErrorKind::Timeout,
            K::BrokenPipe | K::MaxAckPending => ErrorKind::Connection,
            K::StreamNotFound => ErrorKind::NotFound,
            K::MaxPayloadExceeded => ErrorKind::TooLarge,
            K::WrongLastMessageId | K::WrongLastSequence => ErrorKind::Conflict,
            // JetStream's "header size exceeds maximum": this message's own
            // headers (the publisher refuses these before sending).
            K::Other if e.to_string().contains("error code 10097") => ErrorKind::TooLarge,
            // The server answered with an error about the stream, not this
            // message (storage full, limits, permissions): the sink is
            // refusing writes for now; retried, never dead-lettered.
            K::Other => ErrorKind::Unavailable,
        };
        Error::new("publish", kind, e)
    }

    /// A request to the server (stream or consumer management, pulls),
    /// classified by async-nats's own error kind: timeouts and missing
    /// responders are temporary; an error answered by JetStream is not.
    pub(crate) fn request<K>(operation: &'static str, e: async_nats::error::Error<K>) -> Self
    where
        K: Clone + std::fmt::Debug + std::fmt::Display + PartialEq + Send + Sync + 'static,
    {
        // The kind enums differ per call but share variant names.
        let variant = format!("{:?}", e.kind());
        let kind = match variant.split('(').next().unwrap_or_default() {
            "TimedOut" => ErrorKind::Timeout,
            "Request"
            | "NoResponders"
            | "JetStreamUnavailable"
            | "MissingHeartbeat"
            | "ConsumerDeleted" => ErrorKind::Connection,
            "JetStream" => ErrorKind::Rejected,
            _ => ErrorKind::Internal,
        };
        Error::new(operation, kind, e)
    }

    /// An ack, nak or term could not be sent: the connection is the problem.
    pub(crate) fn ack(e: async_nats::Error) -> Self {
        Error::new("ack", ErrorKind::Connection, e)
    }
}
