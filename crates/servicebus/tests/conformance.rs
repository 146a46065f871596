//! The conformance suite against the Service Bus REST **emulator** of
//! causeway-testkit (in process), for a queue and for a topic subscription,
//! reached through the fault proxy so connections can be cut. Every test
//! names the emulator in its output: these are emulated results, not
//! Azure's (tests/live.rs runs against a real namespace when one is given).

use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Header, InputFormat, Publisher, Result, Value};
use causeway_servicebus::{ReceiveConfig, ServiceBusClient, ServiceBusConfig};
use causeway_servicebus_emulator::{
    QueueOptions, ROOT_POLICY, Right, ServiceBusEmulator, TopicOptions,
};
use causeway_testkit::{BrokerHarness, FaultProxy, Foreign, ForeignMessage};

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
    /// Peek-lock requests its consumers keep in flight: with more than one,
    /// answers can come back in another order than the entity's.
    receives_in_flight: usize,
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
    let key = emulator.key(ROOT_POLICY).unwrap_or_default();
    ServiceBusConfig {
        duplicate_detection: true,
        max_message_bytes: PREMIUM_BYTES,
        call_timeout: Duration::from_secs(10),
        ..ServiceBusConfig::at_endpoint(emulator.namespace(), ROOT_POLICY, key, endpoint)
    }
}

fn dead_letter_entity(destination: &str) -> String {
    format!("{destination}-dlq")
}

impl Emulated {
    async fn new(topic: bool) -> Emulated {
        Self::with_key_property(topic, causeway_servicebus::KeyProperty::None, 4).await
    }

    async fn with_key_property(
        topic: bool,
        key: causeway_servicebus::KeyProperty,
        receives_in_flight: usize,
    ) -> Emulated {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        let proxy = FaultProxy::start(emulator.addr())
            .await
            .expect("fault proxy");
        let mut config = config(&emulator, format!("http://{}", proxy.addr()));
        config.publish.key_property = key;
        // Declares dead-lettering, as the harness's consumers have a dead-letter entity.
        config.receive = Some(receive_config("probe", topic));
        let client = ServiceBusClient::connect(config).expect("client");
        Emulated {
            topic,
            receives_in_flight,
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
                    ..TopicOptions::default()
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
    async fn consumer_reading(
        &self,
        destination: &str,
        _group: &str,
        format: InputFormat,
    ) -> Result<Box<dyn Consumer>> {
        // Competing receivers of one queue or subscription are the group.
        Ok(Box::new(self.client.consumer_reading(
            Some(&ReceiveConfig {
                receives_in_flight: self.receives_in_flight,
                ..receive_config(destination, self.topic)
            }),
            format,
        )?))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let mut r = receive_config(&dead_letter_entity(destination), false);
        r.dead_letter_entity = None;
        Ok(Box::new(self.client.consumer(Some(&r))?))
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        // The library's own client, straight to the emulator.
        let raw = ServiceBusClient::connect(config(&self.emulator, self.emulator.url()))?
            .queue_client(destination)?;
        let options = azure_messaging_servicebus::service_bus::SendMessageOptions {
            content_type: message.content_type.map(str::to_owned),
            custom_properties: Some(
                message
                    .headers
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        raw.send_message(&String::from_utf8_lossy(message.payload), Some(options))
            .await
            .map_err(|e| {
                causeway_core::Error::new(causeway_core::ErrorKind::Connection, e.to_string())
            })?;
        Ok(true)
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        // The REST API itself (the library cannot read a sequence number
        // past 32 bits): receive and delete the head.
        use causeway_core::message::property;
        let entity = if self.topic {
            format!("{destination}/subscriptions/{SUBSCRIPTION}")
        } else {
            destination.to_owned()
        };
        let failed = |e: String| causeway_core::Error::new(causeway_core::ErrorKind::Connection, e);
        let token = self.emulator.sas_token(ROOT_POLICY).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + timeout;
        let reply = loop {
            let reply = reqwest::Client::new()
                .delete(format!(
                    "{}/{entity}/messages/head?timeout=1",
                    self.emulator.url()
                ))
                .header("authorization", &token)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            if reply.status().as_u16() == 200 {
                break reply;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed(format!(
                    "nothing arrived in {timeout:?}: {}",
                    reply.status()
                )));
            }
        };
        let headers: Vec<(String, String)> = reply
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let payload = reply.bytes().await.map_err(|e| failed(e.to_string()))?;
        let mut broker = serde_json::Map::new();
        let mut custom = Vec::new();
        for (name, value) in headers {
            match name.as_str() {
                "brokerproperties" => {
                    broker = serde_json::from_str(&value).map_err(|e| failed(e.to_string()))?;
                }
                // HTTP's own.
                "content-type" | "content-length" | "location" | "date" | "server"
                | "transfer-encoding" | "connection" | "keep-alive" => {}
                // Strings in quotes (JSON), numbers and booleans bare.
                _ => custom.push(Header::new(name, property_value(&value))),
            }
        }
        let text = |name: &str| broker.get(name).and_then(serde_json::Value::as_str);
        let properties = [
            (property::MESSAGE_ID, "MessageId"),
            (property::CORRELATION_ID, "CorrelationId"),
        ]
        .into_iter()
        .filter_map(|(ours, theirs)| text(theirs).map(|v| Header::text(ours, v)))
        .collect();
        Ok(Some(ForeignMessage {
            payload: payload.to_vec(),
            key: text("SessionId")
                .or(text("PartitionKey"))
                .map(|k| k.as_bytes().to_vec()),
            headers: custom,
            properties,
        }))
    }
    fn foreign_type(&self, written: &Value) -> &'static str {
        // Booleans and numbers keep their JSON type; the rest is a string.
        match written {
            Value::Bool(_) | Value::Int(_) | Value::Float(_) => written.type_name(),
            _ => "text",
        }
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
}

/// A custom property as the REST API gives it: JSON when it parses as a
/// string, a number or a boolean, else text.
fn property_value(text: &str) -> Value {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Bool(b)) => Value::Bool(b),
        Ok(serde_json::Value::Number(n)) => n
            .as_i64()
            .map_or_else(|| Value::Float(n.as_f64().unwrap_or(f64::NAN)), Value::Int),
        Ok(serde_json::Value::String(s)) => Value::Text(s),
        _ => Value::Text(text.to_owned()),
    }
}

mod queue {
    use super::*;
    causeway_testkit::broker_conformance!(Emulated::new(false));
}

mod topic_subscription {
    use super::*;
    causeway_testkit::broker_conformance!(Emulated::new(true));
}

/// With the key in `PartitionKey` a key's messages go in one lane of
/// requests and the publisher declares `ordered_publish`: the suite's
/// case for it, which the queue and topic above skip (no key property).
/// One receive at a time, so that the consumer sees the entity's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_queue_ordered_publish_keeps_a_calls_order_emulator() {
    let key = causeway_servicebus::KeyProperty::PartitionKey;
    let h = Emulated::with_key_property(false, key, 1).await;
    assert!(
        h.capabilities().ordered_publish,
        "declared with a key property"
    );
    causeway_testkit::broker::ordered_publish_keeps_a_calls_order(&h).await;
}

/// What the conformance suite cannot see: payload sizes and encodings,
/// lock renewal, the SAS key, poison messages, the entity's own
/// dead-letter subqueue. Against the REST emulator.
mod servicebus_specific {
    use super::*;
    use azure_messaging_servicebus::service_bus::QueueClient;
    use causeway_core::{ErrorKind, Event, Status};
    use causeway_testkit::{collect, events, receive_and_ack};

    async fn emulated() -> (ServiceBusEmulator, ServiceBusClient) {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        let client = ServiceBusClient::connect(config(&emulator, emulator.url())).expect("client");
        (emulator, client)
    }

    fn raw_queue(emulator: &ServiceBusEmulator, queue: &str) -> QueueClient {
        let endpoint_config = config(emulator, emulator.url());
        // The library's own client, through the same endpoint override.
        let client = ServiceBusClient::connect(endpoint_config).expect("client");
        client.queue_client(queue).expect("queue client")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binary_and_200_kib_payloads_round_trip_exactly_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("payloads", queue_options());
        let binary: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let big_binary: Vec<u8> = (0..200 * 1024).map(|_| fastrand::u8(..)).collect();
        let big_text: String = "0123456789abcdef".repeat(200 * 1024 / 16);
        let sent = vec![
            Event::new("binary", "s", "t").with_payload(binary),
            Event::new("binary-200k", "s", "t").with_payload(big_binary),
            Event::new("text-200k", "s", "t")
                .with_content_type("text/plain")
                .with_payload(big_text.into_bytes()),
        ];
        let out = sb
            .publisher()
            .publish("payloads", &sent)
            .await
            .expect("publish");
        for (e, o) in sent.iter().zip(&out) {
            assert!(
                o.is_ok(),
                "servicebus (REST emulator): {} failed: {o:?}",
                e.id
            );
        }
        let mut consumer = sb
            .consumer(Some(&receive_config("payloads", false)))
            .expect("consumer");
        let mut got = receive_and_ack(&mut consumer, 3, Duration::from_secs(30)).await;
        got.sort_by(|a, b| a.id.cmp(&b.id));
        let mut want = sent.clone();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got, want, "servicebus (REST emulator): payloads changed");
        println!(
            "servicebus (REST emulator): 4 KiB binary, 200 KiB binary and 200 KiB text round-tripped byte for byte"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_the_standard_tier_limit_an_oversize_event_fails_alone_emulator() {
        let (emulator, _) = emulated().await;
        emulator.create_queue("standard", QueueOptions::default());
        let standard = ServiceBusConfig {
            max_message_bytes: 256 * 1024,
            ..config(&emulator, emulator.url())
        };
        let sb = ServiceBusClient::connect(standard).expect("client");
        let max = sb.capabilities().max_message_bytes;
        // The declared maximum fits even as base64; one byte more is refused before sending.
        let fits = Event::new("fits", "s", "t").with_payload(vec![0xffu8; max - 200]);
        let too_big = Event::new("too-big", "s", "t").with_payload(vec![0xffu8; max + 1]);
        let out = sb
            .publisher()
            .publish("standard", &[fits, too_big])
            .await
            .expect("publish");
        assert!(out[0].is_ok(), "{:?}", out[0]);
        let err = out[1].as_ref().expect_err("oversize accepted");
        assert_eq!(
            (err.kind(), err.status()),
            (ErrorKind::TooLarge, Status::Permanent)
        );
        assert_eq!(emulator.message_count("standard"), Some(1));
    }

    /// Properties come back from a peek-lock as HTTP headers, and the HTTP
    /// client reads at most 100: an event with more extensions than can be
    /// received fails alone as too large, one within the bound round-trips.
    /// Before the fix the first was sent, and every receive of it failed
    /// until Service Bus gave it up (MaxDeliveryCount) to its own DLQ.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_properties_than_a_receive_can_return_fail_alone_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("properties", queue_options());
        let with = |id: &str, n: usize| {
            (0..n).fold(Event::new(id, "s", "t"), |e, i| {
                e.with_header(format!("x{i}"), i.to_string())
            })
        };
        // 4 required attributes and `time` besides the extensions.
        let sent = [with("fits", 70), with("too-many", 120)];
        let out = sb
            .publisher()
            .publish("properties", &sent)
            .await
            .expect("publish");
        assert!(out[0].is_ok(), "{:?}", out[0]);
        let err = out[1].as_ref().expect_err("120 extensions accepted");
        assert_eq!(
            (err.kind(), err.status()),
            (ErrorKind::TooLarge, Status::Permanent),
            "{err}"
        );
        let mut consumer = sb
            .consumer(Some(&receive_config("properties", false)))
            .expect("consumer");
        let got = receive_and_ack(&mut consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].headers.len(), 70, "servicebus (REST emulator)");
    }

    /// The service's quotas, which the emulator now enforces as the
    /// service answers (the whole request fails): ids of at most 128
    /// characters, 32 KB per property, 64 KB for all. A key of 200
    /// characters goes as its hash in `SessionId` and arrives intact; an
    /// extension over 32 KB, or many that pass 64 KB together, fail alone;
    /// their neighbours in the same call arrive. Before the fix all three
    /// were refused by the service as `Rejected`: the valid long-keyed
    /// event was dead-lettered, and in a request shared with other events
    /// each of them failed them all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_and_properties_over_the_service_quotas_fail_alone_emulator() {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        let mut keyed = config(&emulator, emulator.url());
        keyed.publish.key_property = causeway_servicebus::KeyProperty::SessionId;
        let sb = ServiceBusClient::connect(keyed).expect("client");
        emulator.create_queue("quotas", queue_options());
        let long_key = "k".repeat(200);
        let many = (0..3).fold(Event::new("too-much-together", "s", "t"), |e, i| {
            e.with_header(format!("x{i}"), "v".repeat(25 * 1024))
        });
        let sent = [
            Event::new("good-1", "s", "t"),
            Event::new("long-key", "s", "t").with_key(long_key.clone()),
            Event::new("big-property", "s", "t").with_header("big", "v".repeat(40 * 1024)),
            many,
            Event::new("good-2", "s", "t"),
        ];
        let out = sb
            .publisher()
            .publish("quotas", &sent)
            .await
            .expect("publish");
        let failed: Vec<(&str, Option<ErrorKind>)> = sent
            .iter()
            .zip(&out)
            .map(|(e, o)| {
                (
                    e.id.as_str(),
                    o.as_ref().err().map(causeway_core::Error::kind),
                )
            })
            .collect();
        assert_eq!(
            failed,
            [
                ("good-1", None),
                ("long-key", None),
                ("big-property", Some(ErrorKind::TooLarge)),
                ("too-much-together", Some(ErrorKind::TooLarge)),
                ("good-2", None),
            ],
            "servicebus (REST emulator)"
        );
        let mut consumer = sb
            .consumer(Some(&receive_config("quotas", false)))
            .expect("consumer");
        let got = receive_and_ack(&mut consumer, 3, Duration::from_secs(30)).await;
        let keyed = got.iter().find(|e| e.id == "long-key").expect("long-key");
        assert_eq!(keyed.key.as_deref(), Some(long_key.as_str()));
    }

    /// The entity takes less than the adapter was told (Standard's 256 KiB
    /// against a configured 1 MiB): the service refuses the whole request
    /// with 403. Before the fix that 403 was retried as a quota and every
    /// event of the request failed; now the request is split down to the
    /// one message that is too large.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_refused_whole_is_split_down_to_the_event_at_fault_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("split", QueueOptions::default());
        let mut sent: Vec<Event> = events("split", 6, 0);
        sent[3] = Event::new("too-big", "s", "t").with_payload("x".repeat(300 * 1024).into_bytes());
        let out = sb
            .publisher()
            .publish("split", &sent)
            .await
            .expect("publish");
        for (e, o) in sent.iter().zip(&out) {
            if e.id == "too-big" {
                let err = o.as_ref().expect_err("over the entity's limit");
                assert_eq!(
                    (err.kind(), err.status()),
                    (ErrorKind::TooLarge, Status::Permanent),
                    "{err}"
                );
            } else {
                assert!(o.is_ok(), "servicebus (REST emulator): {}: {o:?}", e.id);
            }
        }
        assert_eq!(emulator.message_count("split"), Some(5));
        println!(
            "servicebus (REST emulator): a request refused with 403 split; the one big event failed alone"
        );
    }

    /// 403 is also the entity's quota: a full queue refuses everything,
    /// which is the sink's state, not the events' fault. The publisher
    /// reports it as temporary (the route waits; nothing is dead-lettered)
    /// and sends again once there is room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_entity_is_waited_for_not_dead_lettered_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue(
            "full",
            QueueOptions {
                max_size_bytes: Some(4 * 1024),
                ..queue_options()
            },
        );
        let filler = Event::new("filler", "s", "t").with_payload(vec![b'x'; 3 * 1024]);
        let out = sb
            .publisher()
            .publish("full", &[filler])
            .await
            .expect("publish");
        assert!(out[0].is_ok(), "{out:?}");
        // Each too big for the room left, each small enough for any tier.
        let more: Vec<Event> = (0..5)
            .map(|i| Event::new(format!("more-{i}"), "s", "t").with_payload(vec![b'y'; 2048]))
            .collect();
        let out = sb
            .publisher()
            .publish("full", &more)
            .await
            .expect("publish");
        for o in &out {
            let err = o.as_ref().expect_err("a full entity took more");
            assert_eq!(
                (err.kind(), err.status()),
                (ErrorKind::Unavailable, Status::Temporary),
                "servicebus (REST emulator): a quota refusal must not be an event's fault: {err}"
            );
        }
        // Room again: the same events go through.
        let mut consumer = sb
            .consumer(Some(&receive_config("full", false)))
            .expect("consumer");
        assert_eq!(
            receive_and_ack(&mut consumer, 1, Duration::from_secs(30))
                .await
                .len(),
            1
        );
        let out = sb
            .publisher()
            .publish("full", &more[..1])
            .await
            .expect("publish");
        assert!(out[0].is_ok(), "{out:?}");
        assert_eq!(emulator.message_count("full"), Some(1));
    }

    /// Standard namespaces throttle with "server busy" and ask for about
    /// 2 s; the publisher's retries used to give up within 0.4 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_namespace_is_waited_out_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("busy", queue_options());
        emulator.busy_for(Duration::from_millis(1500));
        let out = sb
            .publisher()
            .publish("busy", &events("busy", 3, 0))
            .await
            .expect("publish");
        assert!(
            out.iter().all(Result::is_ok),
            "servicebus (REST emulator): gave up on a busy namespace: {out:?}"
        );
        assert_eq!(emulator.message_count("busy"), Some(3));
    }

    /// A session-enabled queue refuses a message without a SessionId (405)
    /// and cannot be received from over REST. Keyless events get their own
    /// session; `check` and the consumer say why they cannot receive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sessions_keyless_events_are_sent_and_receiving_fails_clearly_emulator() {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        emulator.create_queue(
            "sessions",
            QueueOptions {
                requires_session: true,
                ..queue_options()
            },
        );
        let mut keyed = config(&emulator, emulator.url());
        keyed.publish.key_property = causeway_servicebus::KeyProperty::SessionId;
        keyed.receive = Some(receive_config("sessions", false));
        emulator.create_queue("sessions-dlq", queue_options());
        let sb = ServiceBusClient::connect(keyed).expect("client");
        let mut sent = events("session", 4, 2);
        sent[1].key = None;
        let out = sb
            .publisher()
            .publish("sessions", &sent)
            .await
            .expect("publish");
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(emulator.message_count("sessions"), Some(4));
        let err = sb
            .ping()
            .await
            .expect_err("check passed on a session-enabled receive entity");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        assert!(err.to_string().contains("sessions"), "{err}");
        let mut consumer = sb.consumer(None).expect("consumer");
        let mut failure = None;
        for _ in 0..20 {
            match consumer.next_batch(10, Duration::from_millis(250)).await {
                Ok(batch) => assert!(batch.is_empty(), "received from a session entity"),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let err = failure.expect("the consumer kept polling a session-enabled entity");
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        consumer.close().await.expect("close");
    }

    /// A partitioned entity with duplicate detection refuses a batch whose
    /// messages belong to different partitions (400). Before the fix a
    /// batch of several keys was sent whole and every event in it failed
    /// (with requests split on refusal, they arrive, after refusals).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partitioned_entity_gets_one_partition_per_request_emulator() {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        emulator.create_queue(
            "partitioned",
            QueueOptions {
                partitioned: true,
                ..queue_options()
            },
        );
        let mut declared = config(&emulator, emulator.url());
        declared.partitioned = true;
        declared.publish.key_property = causeway_servicebus::KeyProperty::PartitionKey;
        // One lane: every key (and the keyless events) meet in its requests.
        declared.publish.in_flight = 1;
        let sb = ServiceBusClient::connect(declared).expect("client");
        let mut sent = events("partitioned", 12, 3);
        sent[4].key = None;
        sent[9].key = None;
        let out = sb
            .publisher()
            .publish("partitioned", &sent)
            .await
            .expect("publish");
        assert!(
            out.iter().all(Result::is_ok),
            "servicebus (REST emulator): {out:?}"
        );
        let mut consumer = sb
            .consumer(Some(&receive_config("partitioned", false)))
            .expect("consumer");
        let got = receive_and_ack(&mut consumer, 12, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 12, "servicebus (REST emulator): events missing");
        // Splitting refused requests would get there too, at a request's cost each.
        assert_eq!(
            emulator.partition_refusals(),
            0,
            "servicebus (REST emulator): requests mixed partitions"
        );
    }

    /// Custom properties come back as JSON-quoted header values that the
    /// service does not escape (the emulator writes them so): a backslash
    /// read back as JSON turned `\t` into a tab. Values are sent with
    /// backslashes percent-encoded, so they survive byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn backslashes_in_attributes_survive_the_rest_round_trip_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("backslash", queue_options());
        let sent = vec![
            Event::new("back\\slash", "s", "t")
                .with_subject("C:\\temp\\new \\u0041 \\\"quoted\\\"")
                .with_header("path", "a\\b\\\\c\\")
                .with_content_type("text/plain"),
        ];
        let out = sb
            .publisher()
            .publish("backslash", &sent)
            .await
            .expect("publish");
        assert!(out[0].is_ok(), "{out:?}");
        let mut consumer = sb
            .consumer(Some(&receive_config("backslash", false)))
            .expect("consumer");
        let got = receive_and_ack(&mut consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(got, sent, "servicebus (REST emulator): backslashes changed");
    }

    /// An ack whose completion is slow to answer (held 7 s in the proxy,
    /// past the 4 s lock) keeps its lock renewed until the service
    /// answered: the message is not delivered again. Before the fix the
    /// ack took the message off the renewer's list as the DELETE left, so
    /// its lock ran out and the consumer's own receives took it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_completion_keeps_its_lock_emulator() {
        use causeway_core::Settlement;
        let h = Emulated::new(false).await;
        let queue = h.destination("slow-complete").await.expect("queue");
        causeway_testkit::broker::publish_all(&h, &queue, &events("slow-complete", 1, 0)).await;
        let mut holder = h
            .client
            .consumer(Some(&ReceiveConfig {
                max_processing: Duration::from_secs(60),
                ..receive_config(&queue, false)
            }))
            .expect("consumer");
        let held = collect(&mut holder, 1, Duration::from_secs(30)).await;
        assert_eq!(held.len(), 1, "servicebus (REST emulator): nothing arrived");
        h.proxy
            .stall_matching(Some((b"DELETE /", Duration::from_secs(7))));
        let ack = tokio::spawn(async move {
            let tickets = held.into_iter().map(|d| (d.ticket, Settlement::Ack));
            causeway_core::settle_all(tickets).await
        });
        let mut again = collect(&mut holder, 1, Duration::from_secs(8)).await;
        let acked = ack.await.expect("ack task");
        h.proxy.stall_matching(None);
        again.extend(collect(&mut holder, 1, Duration::from_secs(2)).await);
        holder.close().await.expect("close");
        assert!(
            acked.is_ok(),
            "servicebus (REST emulator): the slow completion failed: {acked:?}"
        );
        assert!(
            again.is_empty(),
            "servicebus (REST emulator): delivered again while its completion was on its way: {:?}",
            again.iter().map(|d| &d.event.id).collect::<Vec<_>>()
        );
    }

    /// A message as another producer sends it (a REST batch, where custom
    /// properties keep their JSON types, as an SDK over AMQP sets them):
    /// properties of each type (a string, an integer, a fraction, a
    /// boolean) and broker properties of its own. Read raw, each property
    /// keeps its type and the broker properties are the message's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_message_keeps_typed_properties_emulator() {
        use causeway_core::Value;
        use causeway_core::message::property;
        let h = Emulated::new(false).await;
        let queue = h.destination("typed").await.expect("queue");
        let token = h.emulator.sas_token(ROOT_POLICY).expect("token");
        let batch = serde_json::json!([{
            "Body": r#"{"AccountId": 7}"#,
            "BrokerProperties": {
                "MessageId": "m-1", "CorrelationId": "c-1",
                "Label": "tx.created", "ReplyTo": "replies"
            },
            "UserProperties": {"origin": "core-banking", "count": 42, "rate": 0.5, "flag": true}
        }]);
        let sent = reqwest::Client::new()
            .post(format!("{}/{queue}/messages", h.emulator.url()))
            .header("authorization", token)
            .header("content-type", "application/vnd.microsoft.servicebus.json")
            .body(batch.to_string())
            .send()
            .await
            .expect("raw send");
        assert_eq!(sent.status().as_u16(), 201);
        let e = &causeway_testkit::receive_one_raw(&h, &queue, Duration::from_secs(30)).await;
        assert_eq!(e.payload.as_ref(), br#"{"AccountId": 7}"#);
        for (name, value) in [
            ("origin", Value::Text("core-banking".into())),
            ("count", Value::Int(42)),
            ("rate", Value::Float(0.5)),
            ("flag", Value::Bool(true)),
        ] {
            assert_eq!(
                e.native.header(name),
                Some(&value),
                "servicebus (REST emulator): property `{name}` of {:?}",
                e.native.headers
            );
        }
        for (name, value) in [
            (property::MESSAGE_ID, "m-1"),
            (property::CORRELATION_ID, "c-1"),
            (property::TYPE, "tx.created"),
            (property::REPLY_TO, "replies"),
        ] {
            assert_eq!(
                e.native.property(name),
                Some(&Value::Text(value.into())),
                "servicebus (REST emulator): broker property `{name}` of {:?}",
                e.native.properties
            );
        }
    }

    /// Another producer's message whose body is not UTF-8 (and, as on real
    /// namespaces, a sequence number past 32 bits): the client library
    /// could not read either, so the message was never seen and ended in
    /// the service's own dead-letter queue without a reason. Then it was
    /// handed out as undecodable; now it is a raw message, its body byte
    /// for byte, among the events around it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_is_not_utf8_is_carried_byte_for_byte_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("raw-body", queue_options());
        emulator.create_queue(&dead_letter_entity("raw-body"), queue_options());
        let token = emulator.sas_token(ROOT_POLICY).expect("token");
        let sent = reqwest::Client::new()
            .post(format!("{}/raw-body/messages", emulator.url()))
            .header("authorization", token)
            .header("content-type", "application/octet-stream")
            .body(vec![0xffu8, 0xfe, 0x00, 0x80])
            .send()
            .await
            .expect("raw send");
        assert_eq!(sent.status().as_u16(), 201);
        sb.publisher()
            .publish("raw-body", &events("raw-body", 2, 0))
            .await
            .expect("publish");
        let mut consumer = sb
            .consumer(Some(&receive_config("raw-body", false)))
            .expect("consumer");
        let got = causeway_testkit::collect(&mut consumer, 3, Duration::from_secs(30)).await;
        assert!(got.iter().all(|d| d.undecodable.is_none()));
        let raw: Vec<_> = got.iter().filter(|d| d.event.is_raw()).collect();
        assert_eq!(
            raw.len(),
            1,
            "servicebus (REST emulator): the raw message, once"
        );
        assert_eq!(raw[0].event.payload.as_ref(), [0xffu8, 0xfe, 0x00, 0x80]);
        causeway_core::settle_all(
            got.into_iter()
                .map(|d| (d.ticket, causeway_core::Settlement::Ack)),
        )
        .await
        .expect("ack");
        consumer.close().await.expect("close");
        assert_eq!(emulator.message_count("raw-body"), Some(0));
    }

    /// Least privilege: a publisher's key has only Send, a consumer's only
    /// Listen. `check` asks each entity only for what its role needs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_only_key_passes_check_and_publishes_emulator() {
        let emulator = ServiceBusEmulator::start().await.expect("emulator");
        emulator.create_queue("least", queue_options());
        let send_key = emulator.add_policy("send-only", &[Right::Send]);
        let listen_key = emulator.add_policy("listen-only", &[Right::Listen]);
        let with = |policy: &str, key: String| {
            ServiceBusConfig::at_endpoint(emulator.namespace(), policy, key, emulator.url())
        };
        let publisher = ServiceBusClient::connect(ServiceBusConfig {
            publish: causeway_servicebus::PublishConfig {
                default_entity: Some("least".into()),
                ..Default::default()
            },
            ..with("send-only", send_key.clone())
        })
        .expect("client");
        publisher.ping().await.expect("check with a Send-only key");
        let out = publisher
            .publisher()
            .publish("", &events("least", 2, 0))
            .await
            .expect("publish");
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(
            emulator.message_count("least"),
            Some(2),
            "an empty batch stored something"
        );
        // A Send-only key cannot receive: check says so, as 401.
        let receiver = ServiceBusClient::connect(ServiceBusConfig {
            receive: Some(ReceiveConfig::entity("least")),
            ..with("send-only", send_key)
        })
        .expect("client");
        let err = receiver
            .ping()
            .await
            .expect_err("a Send-only key passed a receive check");
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        let listener = ServiceBusClient::connect(ServiceBusConfig {
            receive: Some(ReceiveConfig::entity("least")),
            ..with("listen-only", listen_key)
        })
        .expect("client");
        listener.ping().await.expect("check with a Listen-only key");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_key_is_refused_with_401_permanently_emulator() {
        let (emulator, _) = emulated().await;
        emulator.create_queue("guarded", queue_options());
        let wrong = ServiceBusConfig {
            sas_key: Some(causeway_servicebus_emulator::random_key()),
            receive: Some(receive_config("guarded", false)),
            ..config(&emulator, emulator.url())
        };
        let sb = ServiceBusClient::connect(wrong).expect("client");
        let err = sb.ping().await.expect_err("ping with a wrong key");
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        assert!(err.to_string().contains("401"), "{err}");
        let err = sb
            .publisher()
            .publish("guarded", &events("guarded", 1, 0))
            .await
            .expect("publish")
            .remove(0)
            .expect_err("published with a wrong key");
        assert_eq!(
            (err.kind(), err.status()),
            (ErrorKind::Unauthorized, Status::Permanent),
            "{err}"
        );
        assert_eq!(emulator.message_count("guarded"), Some(0));
        // The right key, and an entity that does not exist.
        let good = ServiceBusClient::connect(ServiceBusConfig {
            receive: Some(receive_config("missing", false)),
            ..config(&emulator, emulator.url())
        })
        .expect("client");
        let err = good.ping().await.expect_err("ping of a missing entity");
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_renewal_hides_a_message_while_it_is_processed_emulator() {
        let (emulator, sb) = emulated().await;
        let short = QueueOptions {
            lock_duration: Duration::from_secs(2),
            ..queue_options()
        };
        emulator.create_queue("renew", short);
        sb.publisher()
            .publish("renew", &events("renew", 1, 0))
            .await
            .expect("publish")[0]
            .as_ref()
            .expect("published");
        let long = ReceiveConfig {
            max_processing: Duration::from_secs(60),
            ..receive_config("renew", false)
        };
        let mut holder = sb.consumer(Some(&long)).expect("consumer");
        let held = collect(&mut holder, 1, Duration::from_secs(10)).await;
        assert_eq!(held.len(), 1);
        let mut other = sb.consumer(Some(&long)).expect("consumer");
        // Three lock durations pass while the message is held.
        let stolen = collect(&mut other, 1, Duration::from_secs(6)).await;
        assert!(
            stolen.is_empty(),
            "servicebus (REST emulator): a held message was delivered again although its lock was renewed"
        );
        for d in held {
            d.ack().await.expect("ack after 6 s: the lock was renewed");
        }
        assert_eq!(emulator.message_count("renew"), Some(0));
        other.close().await.expect("close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_that_is_not_a_cloudevent_is_dead_lettered_when_reading_cloudevents_emulator()
    {
        let (emulator, sb) = emulated().await;
        emulator.create_queue("poison", queue_options());
        emulator.create_queue("poison-dlq", queue_options());
        raw_queue(&emulator, "poison")
            .send_message("{\"amount\": \"not a cloudevent\"}", None)
            .await
            .expect("raw send");
        sb.publisher()
            .publish("poison", &events("poison", 2, 0))
            .await
            .expect("publish");
        let mut consumer = sb
            .consumer_reading(
                Some(&receive_config("poison", false)),
                InputFormat::CloudEvents,
            )
            .expect("consumer");
        // Read as CloudEvents only (a route's `format = "cloudevents"`),
        // the adapter hands the foreign message out as undecodable; its
        // consumer (here the test, in the bridge the route) rejects it.
        let ids = causeway_testkit::reject_undecodable_ack_rest(
            &mut consumer,
            3,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(ids, ["poison-0", "poison-1"]);
        // The dead letter is still not a CloudEvent: read it raw.
        let rest = causeway_servicebus_emulator::Rest::new(&emulator);
        let dead = rest.peek_lock("poison-dlq", 10).await;
        assert_eq!(dead.status, 201, "poison message not dead-lettered");
        assert_eq!(dead.text(), "{\"amount\": \"not a cloudevent\"}");
        assert_eq!(rest.complete(&dead).await, 200);
        assert_eq!(emulator.message_count("poison"), Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn max_delivery_count_moves_a_message_to_the_dead_letter_subqueue_emulator() {
        let (emulator, sb) = emulated().await;
        emulator.create_queue(
            "flaky",
            QueueOptions {
                max_delivery_count: 2,
                ..queue_options()
            },
        );
        sb.publisher()
            .publish("flaky", &events("flaky", 1, 0))
            .await
            .expect("publish");
        let mut consumer = sb
            .consumer(Some(&receive_config("flaky", false)))
            .expect("consumer");
        for attempt in 1..=2 {
            let got = collect(&mut consumer, 1, Duration::from_secs(10)).await;
            assert_eq!(got.len(), 1, "delivery {attempt}");
            assert_eq!(got[0].ticket.attempt(), attempt);
            for d in got {
                d.nack(Duration::ZERO).await.expect("nack");
            }
        }
        consumer.close().await.expect("close");
        assert_eq!(emulator.message_count("flaky"), Some(0));
        // The subqueue is an entity path the adapter can consume.
        let mut dead = sb
            .consumer(Some(&ReceiveConfig {
                dead_letter_entity: None,
                ..receive_config("flaky/$DeadLetterQueue", false)
            }))
            .expect("dead-letter consumer");
        let events = receive_and_ack(&mut dead, 1, Duration::from_secs(10)).await;
        assert_eq!(
            events.len(),
            1,
            "servicebus (REST emulator): nothing in $DeadLetterQueue"
        );
        assert_eq!(events[0].id, "flaky-0");
    }
}
