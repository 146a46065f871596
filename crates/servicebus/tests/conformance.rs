//! The conformance suite against the Service Bus REST **emulator** of
//! causeway-testkit (in process), for a queue and for a topic subscription,
//! reached through the fault proxy so connections can be cut. Every test
//! names the emulator in its output: these are emulated results, not
//! Azure's (tests/live.rs runs against a real namespace when one is given).

use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Publisher, Result};
use causeway_servicebus::{ReceiveConfig, ServiceBusClient, ServiceBusConfig};
use causeway_testkit::servicebus_emulator::{
    QueueOptions, ROOT_POLICY, ServiceBusEmulator, TopicOptions,
};
use causeway_testkit::{BrokerHarness, FaultProxy};

/// The emulated entities' lock duration; consumers renew locks for
/// `MAX_PROCESSING` after hand-out, so an unsettled delivery returns after
/// about both.
const LOCK: Duration = Duration::from_secs(4);
const MAX_PROCESSING: Duration = Duration::from_secs(2);
/// Premium-tier size: a 200 KiB binary payload fits once base64-encoded.
const PREMIUM_BYTES: usize = 1024 * 1024;
const SUBSCRIPTION: &str = "causeway";

struct Emulated {
    topic: bool,
    emulator: ServiceBusEmulator,
    proxy: FaultProxy,
    client: ServiceBusClient,
}

fn queue_options() -> QueueOptions {
    QueueOptions {
        lock_duration: LOCK,
        max_delivery_count: 100,
        duplicate_detection: Some(Duration::from_secs(600)),
        max_message_bytes: PREMIUM_BYTES,
        ..QueueOptions::default()
    }
}

fn config(emulator: &ServiceBusEmulator, endpoint: String) -> ServiceBusConfig {
    ServiceBusConfig {
        sas_key: emulator.key(ROOT_POLICY).map(str::to_owned),
        endpoint: Some(endpoint),
        duplicate_detection: true,
        max_message_bytes: PREMIUM_BYTES,
        call_timeout: Duration::from_secs(10),
        ..ServiceBusConfig::new(emulator.namespace(), ROOT_POLICY)
    }
}

fn dead_letter_entity(destination: &str) -> String {
    format!("{destination}-dlq")
}

impl Emulated {
    async fn new(topic: bool) -> Emulated {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        let proxy = FaultProxy::start(emulator.addr())
            .await
            .expect("fault proxy");
        let mut config = config(&emulator, format!("http://{}", proxy.addr()));
        // Declares dead-lettering, as the harness's consumers have a dead-letter entity.
        config.receive = Some(receive_config("probe", topic));
        let client = ServiceBusClient::connect(config).expect("client");
        Emulated {
            topic,
            emulator,
            proxy,
            client,
        }
    }
}

fn receive_config(destination: &str, topic: bool) -> ReceiveConfig {
    ReceiveConfig {
        subscription: topic.then(|| SUBSCRIPTION.to_owned()),
        receives_in_flight: 4,
        long_poll: Duration::from_secs(1),
        max_processing: MAX_PROCESSING,
        dead_letter_entity: Some(dead_letter_entity(destination)),
        ..ReceiveConfig::entity(destination)
    }
}

#[async_trait]
impl BrokerHarness for Emulated {
    fn name(&self) -> String {
        let kind = if self.topic {
            "topic subscription"
        } else {
            "queue"
        };
        format!("servicebus {kind} (REST emulator)")
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        MAX_PROCESSING + LOCK
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        let name = causeway_testkit::unique_name(scenario);
        if self.topic {
            // A second subscription: fan-out must not disturb the first.
            self.emulator.create_topic(
                &name,
                TopicOptions {
                    duplicate_detection: Some(Duration::from_secs(600)),
                    max_message_bytes: PREMIUM_BYTES,
                },
                &[(SUBSCRIPTION, queue_options()), ("audit", queue_options())],
            );
        } else {
            self.emulator.create_queue(&name, queue_options());
        }
        self.emulator
            .create_queue(&dead_letter_entity(&name), queue_options());
        Ok(name)
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.client.publisher()))
    }
    async fn consumer(&self, destination: &str, _group: &str) -> Result<Box<dyn Consumer>> {
        // Competing receivers of one queue or subscription are the group.
        Ok(Box::new(self.client.consumer(Some(&receive_config(
            destination,
            self.topic,
        )))?))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let mut r = receive_config(&dead_letter_entity(destination), false);
        r.dead_letter_entity = None;
        Ok(Box::new(self.client.consumer(Some(&r))?))
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
}

mod queue {
    use super::*;
    causeway_testkit::broker_conformance!(Emulated::new(false));

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_mid_stream_10000() {
        causeway_testkit::broker::cut_mid_stream_10000(&Emulated::new(false).await).await;
    }
}

mod topic_subscription {
    use super::*;
    causeway_testkit::broker_conformance!(Emulated::new(true));
}
