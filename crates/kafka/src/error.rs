use causeway_core::{ErrorKind, Status};
use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};

causeway_core::adapter_error!(
    /// The error of causeway-kafka, classified from librdkafka's error codes.
    Error,
    "kafka"
);

impl Error {
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
        Error::new(operation, kind, e).with_status(status)
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
        | Code::TransactionalIdAuthorizationFailed
        | Code::DelegationTokenAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication => (ErrorKind::Unauthorized, Permanent),
        // The record itself breaks a rule of the topic.
        Code::InvalidRecord | Code::InvalidMessage | Code::PolicyViolation => {
            (ErrorKind::Rejected, Permanent)
        }
        Code::KafkaStorageError | Code::OutOfOrderSequenceNumber => (ErrorKind::Storage, Temporary),
        Code::InvalidConfig | Code::InvalidArgument => (ErrorKind::Config, Permanent),
        // Unknown: not the record's fault as far as anyone knows, so it
        // pauses the route (Internal is a sink fault) rather than
        // dead-lettering whatever is sent while it lasts.
        _ => (ErrorKind::Internal, Permanent),
    }
}
