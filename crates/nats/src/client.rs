//! Connecting, and creating or verifying the stream and consumers.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use causeway_core::{
    Capabilities, Connect, Consumer, Endpoint, ErrorKind, InputFormat, Ordering, Publisher,
};

use crate::config::{Auth, ConsumerConfig, NatsConfig, Start};
use crate::consumer::NatsConsumer;
use crate::error::Error;
use crate::publisher::NatsPublisher;

/// PubAcks awaited at once across all publishes of a client: far above
/// any batch, so the limit never makes a batch wait for another.
const MAX_ACKS_IN_FLIGHT: usize = 1 << 24;

/// A connection to a JetStream server with its stream in place.
#[derive(Clone, Debug)]
pub struct NatsClient {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) config: NatsConfig,
}

impl NatsClient {
    /// Connects (retrying until the server answers, then reconnecting
    /// forever after a lost connection) and creates or verifies the stream.
    pub async fn connect(config: NatsConfig) -> Result<NatsClient, Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name("causeway")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(2_000))
            });
        options = match &config.auth {
            Auth::None => options,
            Auth::Token { token } => options.token(token.clone()),
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Auth::Nkey { seed } => options.nkey(seed.clone()),
            Auth::Credentials { path } => options
                .credentials_file(path)
                .await
                .map_err(|e| Error::config(format!("credentials file {}: {e}", path.display())))?,
        };
        if let Some(tls) = &config.tls {
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca_file {
                options = options.add_root_certificates(ca.clone());
            }
            match (&tls.client_cert, &tls.client_key) {
                (Some(cert), Some(key)) => {
                    options = options.add_client_certificate(cert.clone(), key.clone())
                }
                (None, None) => {}
                _ => {
                    return Err(Error::config(
                        "tls.client_cert and tls.client_key go together",
                    ));
                }
            }
        }
        // retry_on_initial_connect returns at once; the first request waits
        // for the connection, bounded by the request timeout.
        let client = options.connect(&config.url).await.map_err(Error::connect)?;
        // async-nats holds an ack permit per unawaited PubAck (5,000 by
        // default) and waits for one when none is left. `publish` sends a
        // whole batch before awaiting its acks, so batches in flight that
        // together pass the limit would wait for each other forever. Callers
        // bound what they have in flight (the bridge: shards × batch size),
        // so the library's bound is lifted.
        // publish.ack_timeout bounds each awaited PubAck (and JetStream API
        // replies, which async-nats bounds with the same setting).
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.publish.ack_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .build(client.clone());
        let this = NatsClient {
            client,
            jetstream,
            config,
        };
        this.ensure_stream().await?;
        Ok(this)
    }

    /// What this endpoint can do.
    pub fn capabilities(&self) -> Capabilities {
        let dead_letter = self
            .config
            .consumer
            .as_ref()
            .is_some_and(|c| c.dead_letter_subject.is_some());
        Capabilities {
            per_message_nack: true,
            delayed_redelivery: true,
            ack_timeout_redelivery: true,
            dead_letter,
            native_dedup: !self.config.stream.duplicate_window.is_zero(),
            // A shared pull consumer hands a key's messages to any member, and
            // a Nak sends one behind later ones: no per-key order.
            ordering: Ordering::None,
            // A call sends on one connection, in order, and nothing after a
            // send fails. The stream can still refuse one message and take
            // the next (a limit freeing up in between).
            ordered_publish: true,
            // Every call writes to the one connection, in submission order.
            // A PubAck can be lost with a connection that drops while later
            // calls go out on its successor: those events are counted as
            // order breaks.
            pipelined_order: true,
            consumer_groups: true,
            durable_resume: true,
            // Headers count against the server's max_payload; keep room for them.
            max_message_bytes: self.client.server_info().max_payload.saturating_sub(4096),
            max_batch: 1000,
        }
    }

    /// A publisher on this connection.
    pub fn publisher(&self) -> NatsPublisher {
        NatsPublisher::new(
            self.jetstream.clone(),
            self.config.publish.default_subject.clone(),
            self.capabilities(),
        )
    }

    /// A consumer as configured in `consumer` (the config's own when `None`).
    pub async fn consumer(&self, consumer: Option<&ConsumerConfig>) -> Result<NatsConsumer, Error> {
        let config = match consumer.or(self.config.consumer.as_ref()) {
            Some(c) => c.clone(),
            None => {
                return Err(Error::config(
                    "no [consumer] configured for this NATS endpoint",
                ));
            }
        };
        let pull = self.ensure_consumer(&config).await?;
        NatsConsumer::start(self.jetstream.clone(), config, pull, self.capabilities()).await
    }

    async fn ensure_stream(&self) -> Result<(), Error> {
        let want = &self.config.stream;
        match self.jetstream.get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing
                    .info()
                    .await
                    .map_err(|e| Error::request("stream info", e))?;
                let have = &info.config;
                let missing: Vec<&String> = want
                    .subjects
                    .iter()
                    .filter(|s| !have.subjects.contains(s))
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::new(
                        "verify stream",
                        ErrorKind::Conflict,
                        format!(
                            "stream `{}` exists without subjects {missing:?} (it has {:?})",
                            want.name, have.subjects
                        ),
                    ));
                }
                if have.duplicate_window != want.duplicate_window {
                    return Err(Error::new(
                        "verify stream",
                        ErrorKind::Conflict,
                        format!(
                            "stream `{}` exists with duplicate_window {:?}, config says {:?}",
                            want.name, have.duplicate_window, want.duplicate_window
                        ),
                    ));
                }
                Ok(())
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                self.jetstream
                    .create_stream(stream::Config {
                        name: want.name.clone(),
                        subjects: want.subjects.clone(),
                        duplicate_window: want.duplicate_window,
                        max_age: want.max_age,
                        storage: if want.memory_storage {
                            stream::StorageType::Memory
                        } else {
                            stream::StorageType::File
                        },
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| Error::request("create stream", e))?;
                Ok(())
            }
            Err(e) => Err(Error::request("get stream", e)),
        }
    }

    /// Creates the durable consumer, or binds to it when it exists with the
    /// same settings; a conflicting one is an error from the server.
    async fn ensure_consumer(&self, c: &ConsumerConfig) -> Result<consumer::PullConsumer, Error> {
        let deliver_policy = match &c.start {
            Start::All => consumer::DeliverPolicy::All,
            Start::New => consumer::DeliverPolicy::New,
            Start::Sequence(start_sequence) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: *start_sequence,
            },
            Start::Time(t) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::parse(
                    t,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| Error::config(format!("consumer.start.time `{t}`: {e}")))?,
            },
        };
        let config = consumer::pull::Config {
            durable_name: Some(c.durable.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            max_deliver: c.max_deliver,
            filter_subject: c.filter_subject.clone().unwrap_or_default(),
            deliver_policy,
            max_ack_pending: -1,
            ..Default::default()
        };
        let stream = self
            .jetstream
            .get_stream_no_info(&self.config.stream.name)
            .await
            .map_err(|e| Error::request("get stream", e))?;
        match self
            .jetstream
            .get_consumer_from_stream::<consumer::pull::Config, _, _>(
                &c.durable,
                &self.config.stream.name,
            )
            .await
        {
            Ok(existing) => {
                let have = &existing.cached_info().config;
                if have.filter_subject != config.filter_subject
                    || have.ack_wait != config.ack_wait
                    || have.max_deliver != config.max_deliver
                {
                    return Err(Error::new(
                        "verify consumer",
                        ErrorKind::Conflict,
                        format!(
                            "consumer `{}` exists with filter {:?}, ack_wait {:?}, max_deliver {}; config says {:?}, {:?}, {}",
                            c.durable,
                            have.filter_subject,
                            have.ack_wait,
                            have.max_deliver,
                            config.filter_subject,
                            config.ack_wait,
                            config.max_deliver
                        ),
                    ));
                }
                Ok(existing)
            }
            // Only a consumer that is not there is created: a timeout or a
            // refused lookup is an error, not a reason to make a second one.
            Err(e)
                if matches!(e.kind(), jetstream::stream::ConsumerErrorKind::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                stream
                    .create_consumer(config)
                    .await
                    .map_err(|e| Error::request("create consumer", e))
            }
            Err(e) => Err(Error::request("get consumer", e)),
        }
    }
}

#[async_trait]
impl Endpoint for NatsClient {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        NatsClient::capabilities(self)
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Ok(Box::new(NatsClient::publisher(self)))
    }

    async fn consumer(&self, format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(
            NatsClient::consumer(self, None).await?.reading(format),
        ))
    }

    /// `connect` made or verified the stream; this asks the server again
    /// (one request, bounded by `publish.ack_timeout`).
    async fn ping(&self) -> causeway_core::Result<()> {
        self.jetstream
            .get_stream(&self.config.stream.name)
            .await
            .map_err(|e| Error::request("get stream", e))?;
        Ok(())
    }
}

#[async_trait]
impl Connect for NatsClient {
    type Config = NatsConfig;

    /// [`NatsClient::connect`].
    async fn connect(config: NatsConfig) -> causeway_core::Result<Self> {
        Ok(NatsClient::connect(config).await?)
    }
}
