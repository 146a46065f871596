//! The conformance suite against moto, an SQS emulator (`cargo xtask
//! services up sqs`), for standard and FIFO queues, reached through the fault
//! proxy so connections can be cut. Every test names moto in its output:
//! these are emulated results, not AWS's.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Header, InputFormat, Publisher, Result, Value};
use causeway_sqs::{QueueConfig, SqsClient, SqsConfig, StaticCredentials};
use causeway_testkit::{BrokerHarness, FaultProxy, Foreign, ForeignMessage};

const VAR: &str = "CAUSEWAY_SQS_ENDPOINT";
const DEFAULT: &str = "http://127.0.0.1:4566";

/// A fresh queue per scenario, with `<queue>-dlq` as its dead-letter queue.
struct Moto {
    fifo: bool,
    proxy: FaultProxy,
    client: SqsClient,
}

/// How the harness's consumers hold messages: visible again 8 s after the
/// extender stops, which it does 2 s after hand-out. moto answers slowly
/// under load (a busy FIFO queue takes seconds per call), and the extender
/// renews with half the timeout to spare: 4 s leaves room for a slow call.
const VISIBILITY: Duration = Duration::from_secs(8);
const MAX_PROCESSING: Duration = Duration::from_secs(2);

fn moto_config(endpoint: String) -> SqsConfig {
    SqsConfig {
        endpoint: Some(endpoint),
        credentials: Some(StaticCredentials {
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            session_token: None,
        }),
        create_queues: true,
        call_timeout: Duration::from_secs(10),
        ..SqsConfig::new("us-east-1")
    }
}

impl Moto {
    async fn new(fifo: bool) -> Moto {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let authority = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let upstream: SocketAddr = authority.trim_end_matches('/').parse().unwrap_or_else(|e| {
            panic!("{VAR}={url}: the host must be ip:port for the fault proxy: {e}")
        });
        if let Err(e) = tokio::net::TcpStream::connect(upstream).await {
            causeway_testkit::env::unreachable("sqs", VAR, &url, e);
        }
        let proxy = FaultProxy::start(upstream).await.expect("fault proxy");
        let mut config = moto_config(format!("http://{}", proxy.addr()));
        // Declares FIFO capabilities when the harness's queues are FIFO.
        config.queue = Some(queue_config(&queue_name("probe", fifo)));
        let client = SqsClient::connect(config).await.expect("sqs client");
        Moto {
            fifo,
            proxy,
            client,
        }
    }
}

fn queue_name(scenario: &str, fifo: bool) -> String {
    let name = causeway_testkit::unique_name(scenario);
    if fifo { format!("{name}.fifo") } else { name }
}

fn dead_letter_queue(queue: &str) -> String {
    match queue.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dlq.fifo"),
        None => format!("{queue}-dlq"),
    }
}

fn queue_config(name: &str) -> QueueConfig {
    QueueConfig {
        long_poll: Duration::from_secs(1),
        receives_in_flight: 2,
        visibility_timeout: VISIBILITY,
        max_processing: MAX_PROCESSING,
        dead_letter_queue: Some(dead_letter_queue(name)),
        ..QueueConfig::named(name)
    }
}

#[async_trait]
impl BrokerHarness for Moto {
    fn name(&self) -> String {
        let kind = if self.fifo { "fifo" } else { "standard" };
        format!("sqs-{kind} (moto emulator)")
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        MAX_PROCESSING + VISIBILITY
    }
    fn shallow_queue(&self) -> Option<usize> {
        // moto slows as a queue deepens (SERVICES.md): publish and consume in rounds.
        Some(200)
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        let name = queue_name(scenario, self.fifo);
        self.client.queue_url(&name).await?;
        self.client.queue_url(&dead_letter_queue(&name)).await?;
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
        // One queue per destination: its consumers are the group.
        Ok(Box::new(
            self.client
                .consumer_reading(Some(&queue_config(destination)), format)
                .await?,
        ))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let mut q = queue_config(&dead_letter_queue(destination));
        q.dead_letter_queue = None;
        Ok(Box::new(self.client.consumer(Some(&q)).await?))
    }
    fn foreign_keys(&self) -> bool {
        self.fifo
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        let url = self.client.queue_url(destination).await?;
        let mut send = self
            .client
            .sdk()
            .send_message()
            .queue_url(url)
            .message_body(String::from_utf8_lossy(message.payload));
        let content_type = message.content_type.map(|ct| ("content-type", ct));
        for (name, value) in message.headers.iter().chain(&content_type) {
            let attribute = aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(*value)
                .build()
                .expect("data type is set");
            send = send.message_attributes(*name, attribute);
        }
        if self.fifo {
            send = send
                .message_group_id(message.key.unwrap_or("legacy"))
                .message_deduplication_id("legacy-1");
        }
        send.send().await.map_err(|e| failed(e.to_string()))?;
        Ok(true)
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        // aws-sdk-sqs itself, as any consumer: every attribute asked for.
        use aws_sdk_sqs::types::MessageSystemAttributeName as System;
        use causeway_core::message::property;
        let url = self.client.queue_url(destination).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let message = loop {
            let out = self
                .client
                .sdk()
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(1)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(System::All)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
            if let Some(message) = out.messages.unwrap_or_default().pop() {
                break message;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed(format!("nothing arrived in {timeout:?}")));
            }
        };
        let mut headers = Vec::new();
        for (name, attribute) in message.message_attributes().into_iter().flatten() {
            let text = || attribute.string_value().unwrap_or_default().to_owned();
            let value = match attribute.data_type().split('.').next() {
                Some("Number") => Value::Decimal(text()),
                Some("Binary") => Value::Bytes(
                    attribute
                        .binary_value()
                        .map_or_else(Vec::new, |b| b.as_ref().to_vec())
                        .into(),
                ),
                _ => Value::Text(text()),
            };
            headers.push(Header::new(name.as_str(), value));
        }
        if let Some(receipt) = message.receipt_handle() {
            self.client
                .sdk()
                .delete_message()
                .queue_url(&url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|e| failed(e.to_string()))?;
        }
        let system = message.attributes();
        Ok(Some(ForeignMessage {
            payload: message.body().unwrap_or_default().as_bytes().to_vec(),
            key: system
                .and_then(|a| a.get(&System::MessageGroupId))
                .map(|group| group.as_bytes().to_vec()),
            headers,
            properties: message
                .message_id()
                .map(|id| Header::text(property::MESSAGE_ID, id))
                .into_iter()
                .collect(),
        }))
    }
    fn foreign_type(&self, written: &Value) -> &'static str {
        // `String`, `Number` and `Binary`, read as text, decimal and bytes.
        match written {
            Value::Bytes(_) => "bytes",
            Value::Int(_) | Value::Float(_) | Value::Decimal(_) => "decimal",
            Value::Text(_) | Value::Bool(_) | Value::Time(_) => "text",
        }
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
}

fn failed(message: String) -> causeway_core::Error {
    causeway_core::Error::new(causeway_core::ErrorKind::Connection, message)
}

mod standard {
    use super::*;
    causeway_testkit::broker_conformance!(Moto::new(false));
}

mod fifo {
    use super::*;
    causeway_testkit::broker_conformance!(Moto::new(true));
}

/// What the conformance suite cannot see: the visibility extender, the
/// queue's own redrive policy, poison messages. Against moto, an emulator.
mod sqs_specific {
    use super::*;
    use aws_sdk_sqs::types::QueueAttributeName;
    use causeway_testkit::{collect, events, receive_and_ack};

    pub(super) async fn client() -> SqsClient {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        SqsClient::connect(moto_config(url))
            .await
            .expect("sqs client")
    }

    /// Publishes one event `<prefix>-0` to queue `name`, asserting it was taken.
    pub(super) async fn publish_one(sqs: &SqsClient, name: &str, prefix: &str) {
        sqs.publisher()
            .publish(name, &events(prefix, 1, 0))
            .await
            .expect("publish")[0]
            .as_ref()
            .expect("published");
    }

    /// A route connects its sink when it starts: the SQS publisher then
    /// looks up its default queue (here creating it), a round trip the
    /// first publish would otherwise pay across clouds. Before, `connect`
    /// did nothing and the queue did not exist until the first publish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connect_looks_up_the_default_queue_before_the_first_publish_moto_emulator() {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let name = queue_name("connect-default", false);
        let mut config = moto_config(url.clone());
        config.publish.default_queue = Some(name.clone());
        let sqs = SqsClient::connect(config).await.expect("sqs client");
        sqs.publisher().connect().await.expect("connect");
        let looker = SqsClient::connect(SqsConfig {
            create_queues: false,
            ..moto_config(url)
        })
        .await
        .expect("sqs client");
        looker
            .queue_url(&name)
            .await
            .expect("the default queue exists once the publisher connected");
    }

    /// An ack whose delete is slow to answer (held 6 s in the proxy, three
    /// visibility timeouts) keeps its message hidden until SQS answered:
    /// neither its consumer nor another gets it again. Before the fix the
    /// ack took the message off the extender's list as the delete left, so
    /// it became visible and was delivered twice (its own consumer's next
    /// receive took it back).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_delete_keeps_its_message_hidden_moto_emulator() {
        let h = Moto::new(false).await;
        let sqs = client().await;
        let name = queue_name("slow-delete", false);
        sqs.queue_url(&name).await.expect("queue");
        publish_one(&sqs, &name, "slow-delete").await;
        let short = QueueConfig {
            visibility_timeout: Duration::from_secs(2),
            max_processing: Duration::from_secs(60),
            ..queue_config(&name)
        };
        let mut holder = h.client.consumer(Some(&short)).await.expect("consumer");
        let held = collect(&mut holder, 1, Duration::from_secs(30)).await;
        assert_eq!(held.len(), 1, "sqs (moto emulator): nothing arrived");
        h.proxy
            .stall_matching(Some((b"DeleteMessageBatch", Duration::from_secs(6))));
        let ack = tokio::spawn(async move {
            for d in held {
                d.ack().await.expect("ack");
            }
        });
        let mut other = sqs.consumer(Some(&short)).await.expect("consumer");
        let mut again = collect(&mut other, 1, Duration::from_secs(7)).await;
        ack.await.expect("ack task");
        h.proxy.stall_matching(None);
        again.extend(collect(&mut holder, 1, Duration::from_secs(3)).await);
        holder.close().await.expect("close");
        other.close().await.expect("close");
        assert!(
            again.is_empty(),
            "sqs (moto emulator): delivered again while its delete was on its way: {:?}",
            again.iter().map(|d| &d.event.id).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visibility_extender_hides_a_message_while_it_is_processed_moto_emulator() {
        let sqs = client().await;
        let name = queue_name("extend", false);
        sqs.queue_url(&name).await.expect("queue");
        publish_one(&sqs, &name, "extend").await;
        // 2 s: the extender renews with 1 s to spare, room for a slow moto under load.
        let short = QueueConfig {
            visibility_timeout: Duration::from_secs(2),
            max_processing: Duration::from_secs(60),
            ..queue_config(&name)
        };
        let mut holder = sqs.consumer(Some(&short)).await.expect("consumer");
        let held = collect(&mut holder, 1, Duration::from_secs(30)).await;
        assert_eq!(held.len(), 1, "sqs (moto emulator): nothing arrived");
        // Three visibility timeouts pass while the message is held.
        let mut other = sqs.consumer(Some(&short)).await.expect("consumer");
        let mut stolen = collect(&mut other, 1, Duration::from_secs(6)).await;
        // Its own consumer's receives would take it back first.
        stolen.extend(collect(&mut holder, 1, Duration::from_secs(1)).await);
        assert!(
            stolen.is_empty(),
            "sqs (moto emulator): a held message reappeared although its visibility was extended"
        );
        for d in held {
            d.ack().await.expect("ack");
        }
        holder.close().await.expect("close");
        other.close().await.expect("close");
        // With the extender off, an unsettled message comes back after the timeout.
        publish_one(&sqs, &name, "lapse").await;
        let no_extender = QueueConfig {
            max_processing: Duration::ZERO,
            ..short
        };
        let mut first = sqs.consumer(Some(&no_extender)).await.expect("consumer");
        let kept = collect(&mut first, 1, Duration::from_secs(30)).await;
        assert_eq!(kept.len(), 1);
        let again = collect(&mut first, 1, Duration::from_secs(10)).await;
        assert_eq!(
            again.len(),
            1,
            "sqs (moto emulator): not redelivered after the visibility timeout"
        );
        assert_eq!(again[0].event.id, "lapse-0");
        // With no extender at all, a copy waiting in the buffer lapses too: 2 or more.
        let attempt = again[0].ticket.attempt();
        assert!(
            attempt >= 2,
            "sqs (moto emulator): redelivery reported attempt {attempt}"
        );
        println!(
            "sqs (moto emulator): extended 3 timeouts; lapsed message redelivered as attempt {attempt}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reject_uses_the_queue_redrive_policy_moto_emulator() {
        let sqs = client().await;
        let name = queue_name("redrive", false);
        let dlq = dead_letter_queue(&name);
        let dlq_url = sqs.queue_url(&dlq).await.expect("dlq");
        let arn = sqs
            .sdk()
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .expect("dlq arn")
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .expect("QueueArn");
        sqs.sdk()
            .create_queue()
            .queue_name(&name)
            .attributes(
                QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"5"}}"#),
            )
            .send()
            .await
            .expect("create queue with a redrive policy");
        let own_policy = QueueConfig {
            dead_letter_queue: None,
            ..queue_config(&name)
        };
        let mut consumer = sqs.consumer(Some(&own_policy)).await.expect("consumer");
        assert!(
            causeway_core::Consumer::capabilities(&consumer).dead_letter,
            "a queue with a redrive policy has a dead-letter destination"
        );
        publish_one(&sqs, &name, "redrive").await;
        let got = collect(&mut consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(got.len(), 1);
        for d in got {
            d.reject("poison: no account").await.expect("reject");
        }
        let dead_letters = QueueConfig {
            dead_letter_queue: None,
            ..queue_config(&dlq)
        };
        let mut dead = sqs
            .consumer(Some(&dead_letters))
            .await
            .expect("dlq consumer");
        let dead = receive_and_ack(&mut dead, 1, Duration::from_secs(30)).await;
        assert_eq!(
            dead.len(),
            1,
            "sqs (moto emulator): nothing in the redrive DLQ"
        );
        assert_eq!(
            dead[0].header(causeway_core::dead_letter::REASON),
            Some("poison: no account")
        );
    }

    /// A message as any producer writes it with aws-sdk-sqs: `String`,
    /// `Number` and `Binary` attributes. Read raw, each keeps its value and
    /// its type (text, a decimal kept as written, bytes), and SQS's own
    /// `MessageId` is the `message_id` property.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_message_keeps_string_number_and_binary_attributes_moto_emulator() {
        use aws_sdk_sqs::primitives::Blob;
        use aws_sdk_sqs::types::MessageAttributeValue;
        use causeway_core::message::property;
        use causeway_core::{InputFormat, Value};
        let sqs = client().await;
        let name = queue_name("typed", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        sqs.queue_url(&dead_letter_queue(&name)).await.expect("dlq");
        let attribute = |kind: &str| MessageAttributeValue::builder().data_type(kind);
        let sent = sqs
            .sdk()
            .send_message()
            .queue_url(&url)
            .message_body(r#"{"AccountId": 7}"#)
            .message_attributes(
                "tenant",
                attribute("String")
                    .string_value("eu")
                    .build()
                    .expect("attribute"),
            )
            .message_attributes(
                "amount",
                attribute("Number")
                    .string_value("12.50")
                    .build()
                    .expect("attribute"),
            )
            .message_attributes(
                "blob",
                attribute("Binary")
                    .binary_value(Blob::new(vec![0u8, 1, 254, 255]))
                    .build()
                    .expect("attribute"),
            )
            .send()
            .await
            .expect("send");
        let mut consumer = sqs
            .consumer_reading(Some(&queue_config(&name)), InputFormat::Raw)
            .await
            .expect("consumer");
        let got = receive_and_ack(&mut consumer, 1, Duration::from_secs(30)).await;
        let e = got.first().expect("the message");
        assert_eq!(e.payload.as_ref(), br#"{"AccountId": 7}"#);
        for (header, value) in [
            ("tenant", Value::Text("eu".into())),
            ("amount", Value::Decimal("12.50".into())),
            ("blob", Value::Bytes(vec![0u8, 1, 254, 255].into())),
        ] {
            assert_eq!(
                e.native.header(header),
                Some(&value),
                "sqs (moto emulator): attribute `{header}` of {:?}",
                e.native.headers
            );
        }
        assert_eq!(
            e.native
                .property(property::MESSAGE_ID)
                .and_then(|v| v.to_text())
                .as_deref(),
            sent.message_id(),
            "sqs (moto emulator): SQS's MessageId"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_that_is_not_a_cloudevent_is_dead_lettered_when_reading_cloudevents_moto_emulator()
     {
        let sqs = client().await;
        let name = queue_name("poison", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        let dlq_url = sqs.queue_url(&dead_letter_queue(&name)).await.expect("dlq");
        sqs.sdk()
            .send_message()
            .queue_url(&url)
            .message_body("{\"amount\": \"not a cloudevent\"}")
            .send()
            .await
            .expect("raw send");
        sqs.publisher()
            .publish(&name, &events("poison", 2, 0))
            .await
            .expect("publish");
        let mut consumer = sqs
            .consumer_reading(Some(&queue_config(&name)), InputFormat::CloudEvents)
            .await
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
        let mut raw = Vec::new();
        for _ in 0..30 {
            let out = sqs
                .sdk()
                .receive_message()
                .queue_url(&dlq_url)
                .message_attribute_names("All")
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive dlq");
            raw.extend(out.messages.unwrap_or_default());
            if !raw.is_empty() {
                break;
            }
        }
        assert_eq!(
            raw.len(),
            1,
            "sqs (moto emulator): poison message not dead-lettered"
        );
        assert_eq!(raw[0].body(), Some("{\"amount\": \"not a cloudevent\"}"));
        let folded = raw[0]
            .message_attributes()
            .and_then(|a| a.get("ce_attributes"))
            .and_then(|v| v.string_value())
            .expect("dead-letter attributes");
        assert!(folded.contains("undecodable message"), "{folded}");
    }
}

/// What SQS refuses and moto alone would let through: run against moto
/// behind the project's strictness layer (xtask's `moto_server.py`), which
/// checks sizes, attribute values and receipt handles as SQS documents.
mod strict {
    use super::*;
    use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
    use causeway_core::{ErrorKind, Event};
    use causeway_testkit::collect;

    use super::sqs_specific::{client, publish_one};

    /// The tag the strictness layer reads: entries with these
    /// MessageDeduplicationIds fail once with InternalError.
    const FAIL_ONCE_TAG: &str = "causeway-emulator:fail-once";

    fn text_event(id: &str, bytes: usize) -> Event {
        Event::new(id, "causeway://strict", "strict").with_payload("x".repeat(bytes).into_bytes())
    }

    /// Every message body on a queue, read raw, in the order received.
    async fn bodies(sqs: &SqsClient, url: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..60 {
            let received = sqs
                .sdk()
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .wait_time_seconds(1)
                .send()
                .await
                .expect("receive");
            for m in received.messages.unwrap_or_default() {
                out.push(m.body().unwrap_or_default().to_owned());
                sqs.sdk()
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
            if out.len() >= n {
                break;
            }
        }
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_events_near_the_size_limit_go_in_batches_sqs_takes_moto_strict() {
        let sqs = client().await;
        let name = queue_name("near-limit", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        // 10 × 150 KB: one call of ten is 1.5 MB, over the cap on a batch (1 MiB here).
        let events: Vec<Event> = (0..10)
            .map(|i| text_event(&format!("near-{i}"), 150_000))
            .collect();
        let outcomes = sqs
            .publisher()
            .publish(&name, &events)
            .await
            .expect("publish");
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(
            failed.is_empty(),
            "sqs (moto, strict): {} of 10 failed: {:?}",
            failed.len(),
            failed.first()
        );
        assert_eq!(bodies(&sqs, &url, 10).await.len(), 10);
        println!("sqs (moto, strict): 10 events of 150 KB sent in calls under the batch cap");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_refused_whole_is_split_down_to_the_message_at_fault_moto_strict() {
        let sqs = client().await;
        let name = queue_name("split", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        // The queue takes less than the adapter was told (256 KiB): SQS
        // refuses the whole call for its one big message.
        sqs.sdk()
            .set_queue_attributes()
            .queue_url(&url)
            .attributes(QueueAttributeName::MaximumMessageSize, "100000")
            .send()
            .await
            .expect("set MaximumMessageSize");
        let mut events: Vec<Event> = (0..6)
            .map(|i| text_event(&format!("split-{i}"), 100))
            .collect();
        events[3] = text_event("split-big", 150_000);
        let outcomes = sqs
            .publisher()
            .publish(&name, &events)
            .await
            .expect("publish");
        for (event, outcome) in events.iter().zip(&outcomes) {
            if event.id == "split-big" {
                let e = outcome.as_ref().expect_err("over the queue's limit");
                assert_eq!(e.status(), causeway_core::Status::Permanent, "{e}");
            } else {
                assert!(
                    outcome.is_ok(),
                    "sqs (moto, strict): {}: {outcome:?}",
                    event.id
                );
            }
        }
        assert_eq!(bodies(&sqs, &url, 5).await.len(), 5);
        println!("sqs (moto, strict): a refused call of 6 split; the one big message failed alone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attribute_value_sqs_refuses_fails_its_event_alone_moto_strict() {
        let sqs = client().await;
        let name = queue_name("attr-chars", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        let mut events = causeway_testkit::events("chars", 5, 0);
        // Not a control character (admit lets it through), yet outside
        // SQS's allowed set.
        events[2] = events[2].clone().with_subject("ends in \u{FFFF}");
        let outcomes = sqs
            .publisher()
            .publish(&name, &events)
            .await
            .expect("publish");
        let kinds: Vec<Option<ErrorKind>> = outcomes
            .iter()
            .map(|o| o.as_ref().err().map(causeway_core::Error::kind))
            .collect();
        assert_eq!(
            kinds,
            [None, None, Some(ErrorKind::InvalidEvent), None, None],
            "sqs (moto, strict)"
        );
        assert_eq!(bodies(&sqs, &url, 4).await.len(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_message_with_ten_attributes_is_dead_lettered_with_its_reason_moto_strict() {
        let sqs = client().await;
        let name = queue_name("ten-attrs", false);
        let url = sqs.queue_url(&name).await.expect("queue");
        let dlq_url = sqs.queue_url(&dead_letter_queue(&name)).await.expect("dlq");
        let mut send = sqs
            .sdk()
            .send_message()
            .queue_url(&url)
            .message_body("legacy payload");
        for i in 0..10 {
            send = send.message_attributes(
                format!("legacy{i}"),
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(format!("v{i}"))
                    .build()
                    .expect("attribute"),
            );
        }
        send.send().await.expect("raw send");
        let mut consumer = sqs
            .consumer_reading(Some(&queue_config(&name)), InputFormat::CloudEvents)
            .await
            .expect("consumer");
        let ids = causeway_testkit::reject_undecodable_ack_rest(
            &mut consumer,
            1,
            Duration::from_secs(30),
        )
        .await;
        assert!(ids.is_empty(), "{ids:?}");
        consumer.close().await.expect("close");
        let received = sqs
            .sdk()
            .receive_message()
            .queue_url(&dlq_url)
            .message_attribute_names("All")
            .wait_time_seconds(5)
            .send()
            .await
            .expect("receive dlq")
            .messages
            .unwrap_or_default();
        assert_eq!(
            received.len(),
            1,
            "sqs (moto, strict): the dead-letter copy was not stored"
        );
        let attributes = received[0].message_attributes().expect("attributes");
        assert_eq!(attributes.len(), 10, "{:?}", attributes.keys());
        let folded = attributes["ce_attributes"].string_value().expect("json");
        assert!(folded.contains("undecodable message"), "{folded}");
        assert!(folded.contains("\"legacy9\":\"v9\""), "{folded}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_keeps_its_order_when_one_entry_fails_once_moto_strict() {
        let sqs = client().await;
        let name = queue_name("entry-fails", true);
        let url = sqs.queue_url(&name).await.expect("queue");
        let events: Vec<Event> = (0..4)
            .map(|i| text_event(&format!("ordered-{i}"), 10).with_key("account-7"))
            .collect();
        sqs.sdk()
            .tag_queue()
            .queue_url(&url)
            .tags(FAIL_ONCE_TAG, events[1].dedup_id())
            .send()
            .await
            .expect("tag queue");
        let outcomes = sqs
            .publisher()
            .publish(&name, &events)
            .await
            .expect("publish");
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let mut consumer = sqs
            .consumer(Some(&queue_config(&name)))
            .await
            .expect("consumer");
        let mut ids = Vec::new();
        for d in collect(&mut consumer, 4, Duration::from_secs(30)).await {
            ids.push(d.event.id.clone());
            d.ack().await.expect("ack");
        }
        consumer.close().await.expect("close");
        assert_eq!(
            ids,
            ["ordered-0", "ordered-1", "ordered-2", "ordered-3"],
            "sqs (moto, strict): the group's order broke when ordered-1 failed once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ack_after_the_visibility_lapsed_is_counted_and_the_message_comes_back_moto_strict()
    {
        let sqs = client().await;
        let name = queue_name("late-ack", false);
        sqs.queue_url(&name).await.expect("queue");
        publish_one(&sqs, &name, "late").await;
        // The extender gives up 1 s after hand-out; visible again 2 s later.
        let short = QueueConfig {
            visibility_timeout: Duration::from_secs(2),
            max_processing: Duration::from_secs(1),
            ..queue_config(&name)
        };
        let mut consumer = sqs.consumer(Some(&short)).await.expect("consumer");
        let held = collect(&mut consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(held.len(), 1, "sqs (moto emulator): nothing arrived");
        // Its visibility lapses; a receive takes it again, with a new handle.
        let again = collect(&mut consumer, 1, Duration::from_secs(30)).await;
        assert_eq!(
            again.len(),
            1,
            "not redelivered after the visibility lapsed"
        );
        for d in held {
            d.ack().await.expect("a stale delete answers with success");
        }
        assert_eq!(consumer.late_acks(), 1, "the late ack was not counted");
        // SQS kept the message: the newer receipt deletes it.
        for d in again {
            assert_eq!(d.event.id, "late-0");
            d.ack().await.expect("ack");
        }
        assert_eq!(
            consumer.late_acks(),
            1,
            "an ack in time was counted as late"
        );
        consumer.close().await.expect("close");
        let mut check = sqs.consumer(Some(&short)).await.expect("consumer");
        let left = collect(&mut check, 1, Duration::from_secs(4)).await;
        assert!(
            left.is_empty(),
            "deleted with the latest receipt handle, yet delivered again"
        );
        println!(
            "sqs (moto, strict): a late ack counted; the message stayed until its latest receipt was deleted"
        );
    }
}
