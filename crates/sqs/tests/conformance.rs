//! The conformance suite against moto, an SQS emulator (`cargo xtask
//! services up sqs`), for standard and FIFO queues, reached through the fault
//! proxy so connections can be cut. Every test names moto in its output:
//! these are emulated results, not AWS's.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Publisher, Result};
use causeway_sqs::{QueueConfig, SqsClient, SqsConfig, StaticCredentials};
use causeway_testkit::{BrokerHarness, FaultProxy};

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
    async fn consumer(&self, destination: &str, _group: &str) -> Result<Box<dyn Consumer>> {
        // One queue per destination: its consumers are the group.
        Ok(Box::new(
            self.client
                .consumer(Some(&queue_config(destination)))
                .await?,
        ))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let mut q = queue_config(&dead_letter_queue(destination));
        q.dead_letter_queue = None;
        Ok(Box::new(self.client.consumer(Some(&q)).await?))
    }
    async fn publish_foreign(&self, destination: &str, payload: &[u8]) -> Result<bool> {
        let url = self.client.queue_url(destination).await?;
        let mut send = self
            .client
            .sdk()
            .send_message()
            .queue_url(url)
            .message_body(String::from_utf8_lossy(payload));
        if self.fifo {
            send = send
                .message_group_id("legacy")
                .message_deduplication_id("legacy-1");
        }
        send.send().await.map_err(|e| {
            causeway_core::Error::new(causeway_core::ErrorKind::Connection, e.to_string())
        })?;
        Ok(true)
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
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

    async fn client() -> SqsClient {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        SqsClient::connect(moto_config(url))
            .await
            .expect("sqs client")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn visibility_extender_hides_a_message_while_it_is_processed_moto_emulator() {
        let sqs = client().await;
        let name = queue_name("extend", false);
        sqs.queue_url(&name).await.expect("queue");
        sqs.publisher()
            .publish(&name, &events("extend", 1, 0))
            .await
            .expect("publish")[0]
            .as_ref()
            .expect("published");
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
        let stolen = collect(&mut other, 1, Duration::from_secs(6)).await;
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
        sqs.publisher()
            .publish(&name, &events("lapse", 1, 0))
            .await
            .expect("publish")[0]
            .as_ref()
            .expect("published");
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
        sqs.publisher()
            .publish(&name, &events("redrive", 1, 0))
            .await
            .expect("publish")[0]
            .as_ref()
            .expect("published");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_that_is_not_a_cloudevent_is_dead_lettered_and_the_rest_flows_moto_emulator()
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
            .consumer(Some(&queue_config(&name)))
            .await
            .expect("consumer");
        // The adapter hands the foreign message out as undecodable; its
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
