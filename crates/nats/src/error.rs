use async_nats::jetstream;
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
    pub(crate) fn request<K: Classify>(
        operation: &'static str,
        e: async_nats::error::Error<K>,
    ) -> Self {
        Error::new(operation, e.kind().classify(), e)
    }

    /// An ack, nak or term could not be sent: the connection is the problem.
    pub(crate) fn ack(e: async_nats::Error) -> Self {
        Error::new("ack", ErrorKind::Connection, e)
    }
}

/// How one of async-nats's request error kinds maps onto causeway's: each
/// call has its own kind enum, matched here variant by variant.
pub(crate) trait Classify:
    Clone + std::fmt::Debug + std::fmt::Display + PartialEq + Send + Sync + 'static
{
    /// The causeway kind of this async-nats kind.
    fn classify(&self) -> ErrorKind;
}

impl Classify for jetstream::context::RequestErrorKind {
    fn classify(&self) -> ErrorKind {
        use jetstream::context::RequestErrorKind as K;
        match self {
            K::TimedOut => ErrorKind::Timeout,
            K::NoResponders => ErrorKind::Connection,
            K::InvalidSubject | K::Other => ErrorKind::Internal,
        }
    }
}

impl Classify for jetstream::context::CreateStreamErrorKind {
    fn classify(&self) -> ErrorKind {
        use jetstream::context::CreateStreamErrorKind as K;
        match self {
            K::TimedOut => ErrorKind::Timeout,
            K::JetStreamUnavailable => ErrorKind::Connection,
            K::JetStream(_) => ErrorKind::Rejected,
            K::EmptyStreamName
            | K::InvalidStreamName
            | K::DomainAndExternalSet
            | K::Response
            | K::NotFound
            | K::ResponseParse => ErrorKind::Internal,
        }
    }
}

impl Classify for jetstream::context::GetStreamErrorKind {
    fn classify(&self) -> ErrorKind {
        use jetstream::context::GetStreamErrorKind as K;
        match self {
            K::Request => ErrorKind::Connection,
            K::JetStream(_) => ErrorKind::Rejected,
            K::EmptyName | K::InvalidStreamName => ErrorKind::Internal,
        }
    }
}

impl Classify for jetstream::stream::ConsumerErrorKind {
    fn classify(&self) -> ErrorKind {
        use jetstream::stream::ConsumerErrorKind as K;
        match self {
            K::TimedOut => ErrorKind::Timeout,
            K::Request => ErrorKind::Connection,
            K::JetStream(_) => ErrorKind::Rejected,
            K::InvalidConsumerType | K::InvalidName | K::Other => ErrorKind::Internal,
        }
    }
}

impl Classify for jetstream::consumer::StreamErrorKind {
    fn classify(&self) -> ErrorKind {
        use jetstream::consumer::StreamErrorKind as K;
        match self {
            K::TimedOut => ErrorKind::Timeout,
            K::Other => ErrorKind::Internal,
        }
    }
}
