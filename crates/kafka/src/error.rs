use causeway_core::{ErrorKind, Status};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

/// The error of causeway-kafka, classified from librdkafka's error codes.
#[derive(Debug, thiserror::Error)]
#[error("kafka {operation}: {source}")]
pub struct Error {
    operation: &'static str,
    kind: ErrorKind,
    status: Status,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl Error {
    pub(crate) fn new(
        operation: &'static str,
        kind: ErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error {
            operation,
            kind,
            status: kind.default_status(),
            source: source.into(),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::new("config", ErrorKind::Config, message.into())
    }

    /// From an rdkafka error: librdkafka's code says whether the broker or
    /// the network is the problem (temporary) or the request itself (permanent).
    pub(crate) fn kafka(operation: &'static str, e: KafkaError) -> Self {
        let (kind, status) = match e.rdkafka_error_code() {
            Some(code) => classify(code),
            None => match &e {
                KafkaError::Canceled => (ErrorKind::Closed, Status::Permanent),
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
                    (ErrorKind::Config, Status::Permanent)
                }
                _ => (ErrorKind::Internal, Status::Permanent),
            },
        };
        let mut this = Error::new(operation, kind, e);
        this.status = status;
        this
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying may help.
    pub fn status(&self) -> Status {
        self.status
    }
}

fn classify(code: Code) -> (ErrorKind, Status) {
    use Status::{Permanent, Temporary};
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize => (ErrorKind::TooLarge, Permanent),
        Code::QueueFull => (ErrorKind::Unavailable, Temporary),
        Code::MessageTimedOut | Code::RequestTimedOut | Code::OperationTimedOut => {
            (ErrorKind::Timeout, Temporary)
        }
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::NetworkException
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::NotCoordinator
        | Code::CoordinatorNotAvailable
        | Code::CoordinatorLoadInProgress
        | Code::Resolve => (ErrorKind::Connection, Temporary),
        Code::UnknownTopicOrPartition | Code::UnknownTopic | Code::UnknownPartition => {
            (ErrorKind::NotFound, Permanent)
        }
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication => (ErrorKind::Rejected, Permanent),
        Code::InvalidConfig | Code::InvalidArgument => (ErrorKind::Config, Permanent),
        _ => (ErrorKind::Internal, Permanent),
    }
}

impl From<Error> for causeway_core::Error {
    fn from(e: Error) -> Self {
        causeway_core::Error::new(e.kind, e.operation)
            .with_status(e.status)
            .with_source(e)
    }
}
