//! The conformance suite and the cut-mid-stream fault test against the real
//! RabbitMQ server (`cargo xtask services up rabbitmq`), for classic and
//! quorum queues, reached through the fault proxy so connections can be cut.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{Capabilities, Consumer, Header, InputFormat, Publisher, Result, Value};
use causeway_rabbitmq::{
    ExchangeKind, PublishConfig, QueueConfig, QueueKind, RabbitClient, RabbitConfig,
};
use causeway_testkit::{BrokerHarness, FaultProxy, Foreign, ForeignMessage};

const VAR: &str = "CAUSEWAY_RABBITMQ_URL";
const DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Publishes through the default exchange (routing key = queue name), one
/// queue per scenario with `<queue>.dlq` for dead letters.
struct Rabbit {
    kind: QueueKind,
    proxy: FaultProxy,
    config: RabbitConfig,
    client: RabbitClient,
}

/// `amqp://user:pass@host:port/vhost` → (`host:port`, the URL with `replacement` there).
fn split_url(url: &str, replacement: &str) -> (String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let after_auth = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = after_auth
        .split('/')
        .next()
        .unwrap_or(after_auth)
        .to_owned();
    (authority.clone(), url.replacen(&authority, replacement, 1))
}

impl Rabbit {
    async fn new(kind: QueueKind) -> Rabbit {
        let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
        let (authority, _) = split_url(&url, "");
        let upstream: SocketAddr = authority.parse().unwrap_or_else(|e| {
            panic!("{VAR}={url}: the host must be ip:port for the fault proxy: {e}")
        });
        let proxy = FaultProxy::start(upstream).await.expect("fault proxy");
        let (_, proxied) = split_url(&url, &proxy.addr().to_string());
        let config = RabbitConfig {
            url: proxied,
            exchange: String::new(),
            exchange_kind: ExchangeKind::Direct,
            publish: PublishConfig::default(),
            queue: Some(queue_config(kind, &causeway_testkit::unique_name("probe"))),
            max_message_bytes: 16 * 1024 * 1024,
            max_reconnect_delay: Duration::from_secs(1),
        };
        let client = match tokio::time::timeout(
            Duration::from_secs(15),
            RabbitClient::connect(config.clone()),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => causeway_testkit::env::unreachable("rabbitmq", VAR, &url, e),
            Err(_) => {
                causeway_testkit::env::unreachable("rabbitmq", VAR, &url, "no answer in 15 s")
            }
        };
        Rabbit {
            kind,
            proxy,
            config,
            client,
        }
    }
}

fn queue_config(kind: QueueKind, name: &str) -> QueueConfig {
    QueueConfig {
        name: name.to_owned(),
        kind,
        bindings: Vec::new(),
        prefetch: 100,
        dead_letter_queue: Some(format!("{name}.dlq")),
        delivery_limit: None,
        stream_offset: None,
        delay_queue_idle: Duration::from_secs(60),
    }
}

#[async_trait]
impl BrokerHarness for Rabbit {
    fn name(&self) -> String {
        format!("rabbitmq-{:?}", self.kind).to_lowercase()
    }
    fn capabilities(&self) -> Capabilities {
        self.client.capabilities()
    }
    fn ack_timeout(&self) -> Duration {
        // No ack timeout: the wait used to be sure nothing more arrives.
        Duration::from_secs(1)
    }
    async fn destination(&self, scenario: &str) -> Result<String> {
        let name = causeway_testkit::unique_name(scenario);
        // Declare the queue up front: publishing before a consumer exists must not be unroutable.
        RabbitClient::connect(RabbitConfig {
            queue: Some(queue_config(self.kind, &name)),
            ..self.config.clone()
        })
        .await?;
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
                .consumer(Some(&queue_config(self.kind, destination)))
                .await?
                .reading(format),
        ))
    }
    async fn dead_letters(&self, destination: &str) -> Result<Box<dyn Consumer>> {
        let mut q = queue_config(QueueKind::Classic, &format!("{destination}.dlq"));
        q.dead_letter_queue = None;
        Ok(Box::new(self.client.consumer(Some(&q)).await?))
    }
    async fn publish_foreign(&self, destination: &str, message: Foreign<'_>) -> Result<bool> {
        // lapin itself, as any AMQP producer: a headers table of strings.
        let (connection, channel) = lapin_channel().await.map_err(failed)?;
        let mut table = lapin::types::FieldTable::default();
        for (name, value) in message.headers {
            table.insert(
                (*name).into(),
                lapin::types::AMQPValue::LongString((*value).into()),
            );
        }
        let mut properties = lapin::BasicProperties::default().with_headers(table);
        if let Some(ct) = message.content_type {
            properties = properties.with_content_type(ct.into());
        }
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .map_err(failed)?;
        channel
            .basic_publish(
                "".into(),
                destination.into(),
                lapin::options::BasicPublishOptions::default(),
                message.payload,
                properties,
            )
            .await
            .map_err(failed)?
            .await
            .map_err(failed)?;
        let _ = connection.close(200, "done".into()).await;
        Ok(true)
    }
    async fn read_foreign(
        &self,
        destination: &str,
        timeout: Duration,
    ) -> Result<Option<ForeignMessage>> {
        // lapin itself, as any AMQP consumer: basic.get until a message is there.
        use causeway_core::message::property;
        let (connection, channel) = lapin_channel().await.map_err(failed)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let message = loop {
            let options = lapin::options::BasicGetOptions { no_ack: true };
            if let Some(message) = channel
                .basic_get(destination.into(), options)
                .await
                .map_err(failed)?
            {
                break message.delivery;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(failed_with(format!("nothing arrived in {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = connection.close(200, "done".into()).await;
        let p = &message.properties;
        let mut headers = Vec::new();
        for (name, value) in p
            .headers()
            .as_ref()
            .map(|t| t.inner().iter())
            .into_iter()
            .flatten()
        {
            if name.as_str() == "x-delivery-count" {
                // RabbitMQ's own count (quorum queues), not the message's.
                continue;
            }
            headers.push(Header::new(
                name.as_str(),
                amqp_value(value).ok_or_else(|| {
                    failed_with(format!("header `{name}`: {value:?} has no causeway type"))
                })?,
            ));
        }
        let text = |name: &str, value: &Option<lapin::types::ShortString>| {
            value.as_ref().map(|v| Header::text(name, v.as_str()))
        };
        let properties = [
            text(property::MESSAGE_ID, p.message_id()),
            text(property::CORRELATION_ID, p.correlation_id()),
            text(property::REPLY_TO, p.reply_to()),
            text(property::TYPE, p.kind()),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok(Some(ForeignMessage {
            payload: message.data,
            key: None,
            headers,
            properties,
        }))
    }
    fn foreign_type(&self, written: &Value) -> &'static str {
        // Each type its AMQP counterpart; a decimal is a long string.
        match written {
            Value::Decimal(_) => "text",
            other => other.type_name(),
        }
    }
    async fn cut_connections(&self, outage: Duration) -> bool {
        self.proxy.cut_for(outage);
        true
    }
    async fn delay_link(&self, one_way: Duration) -> bool {
        self.proxy.set_latency(one_way, one_way);
        true
    }
}

/// lapin itself, as any AMQP client: a connection and a channel.
async fn lapin_channel() -> lapin::Result<(lapin::Connection, lapin::Channel)> {
    let url = causeway_testkit::env::endpoint(VAR, DEFAULT);
    let connection =
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

fn failed(e: lapin::Error) -> causeway_core::Error {
    failed_with(e.to_string())
}

fn failed_with(message: String) -> causeway_core::Error {
    causeway_core::Error::new(causeway_core::ErrorKind::Connection, message)
}

/// An AMQP field value as the broker typed it, in causeway's types.
fn amqp_value(value: &lapin::types::AMQPValue) -> Option<Value> {
    use lapin::types::AMQPValue as A;
    Some(match value {
        A::LongString(s) => Value::Text(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        A::ShortString(s) => Value::Text(s.to_string()),
        A::ByteArray(b) => Value::Bytes(b.as_slice().to_vec().into()),
        A::Boolean(b) => Value::Bool(*b),
        A::ShortShortInt(i) => Value::Int((*i).into()),
        A::ShortShortUInt(i) => Value::Int((*i).into()),
        A::ShortInt(i) => Value::Int((*i).into()),
        A::ShortUInt(i) => Value::Int((*i).into()),
        A::LongInt(i) => Value::Int((*i).into()),
        A::LongUInt(i) => Value::Int((*i).into()),
        A::LongLongInt(i) => Value::Int(*i),
        A::Float(f) => Value::Float((*f).into()),
        A::Double(f) => Value::Float(*f),
        A::Timestamp(t) => Value::Time(chrono::DateTime::from_timestamp(
            i64::try_from(*t).ok()?,
            0,
        )?),
        _ => return None,
    })
}

mod classic {
    use super::*;

    /// Concurrent batches that together pass the unconfirmed window (8,192).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_batches_over_the_confirm_window_complete() {
        causeway_testkit::broker::concurrent_batches_complete(
            &Rabbit::new(QueueKind::Classic).await,
            8,
            1_500,
        )
        .await;
    }
    causeway_testkit::broker_conformance!(Rabbit::new(QueueKind::Classic));

    /// A link that lives past its delay queue's idle expiry keeps every
    /// delayed nack: RabbitMQ deletes an unused queue with its messages,
    /// and publishing into it does not count as use. Before the fix the
    /// queue was declared once per link, so nacks made after its expiry
    /// were copied into a queue about to vanish (or already gone) and the
    /// originals acked: lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delayed_nacks_survive_the_delay_queues_expiry() {
        use causeway_core::Event;
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let name = rabbit.destination("delay-expiry").await.expect("queue");
        let mut queue = queue_config(QueueKind::Classic, &name);
        // x-expires = 1 s TTL + 2 s: the queue dies 3 s after its last declaration.
        queue.delay_queue_idle = Duration::from_secs(2);
        let mut consumer = rabbit
            .client
            .consumer(Some(&queue))
            .await
            .expect("consumer");
        let publisher = rabbit.client.publisher();
        // One event nacked every 1.5 s for 9 s, on one link: the later ones
        // are well past the first declaration's expiry.
        let rounds = 6;
        let started = std::time::Instant::now();
        for round in 0..rounds {
            let id = format!("late-nack-{round}");
            let event = Event::new(&id, "test://delay-expiry", "t").with_payload("x");
            let outcomes = publisher
                .publish(&name, std::slice::from_ref(&event))
                .await
                .expect("publish");
            assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
            let first = receive_one(&mut consumer, &id).await;
            assert_eq!(first.ticket.attempt(), 1);
            first.nack(Duration::from_secs(1)).await.expect("nack");
            let again = receive_one(&mut consumer, &id).await;
            assert!(
                again.ticket.attempt() >= 2,
                "{id} came back as attempt {}",
                again.ticket.attempt()
            );
            again.ack().await.expect("ack");
            let next_at = Duration::from_millis(1_500) * (round + 1);
            tokio::time::sleep(next_at.saturating_sub(started.elapsed())).await;
        }
        println!(
            "{rounds} delayed nacks over {:.1} s on one link: all came back",
            started.elapsed().as_secs_f64()
        );
    }

    /// AMQP short strings hold 255 bytes: a content type or header name
    /// longer than that fails its event alone (before the fix it reached
    /// the frame encoder: a debug assertion, a malformed frame in release);
    /// an id that long is carried in its header, without `message_id`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attributes_over_amqp_short_string_limits_fail_alone() {
        use causeway_core::{ErrorKind, Event};
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let name = rabbit.destination("short-strings").await.expect("queue");
        let long_id = "i".repeat(300);
        let events = [
            Event::new("ok-1", "test://short", "t"),
            Event::new(long_id.as_str(), "test://short", "t"),
            Event::new("long-ct", "test://short", "t").with_content_type("c".repeat(300)),
            Event::new("long-name", "test://short", "t").with_header("h".repeat(300), "v"),
            Event::new("ok-2", "test://short", "t"),
        ];
        let outcomes = rabbit
            .client
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
            [
                None,
                None,
                Some(ErrorKind::InvalidEvent),
                Some(ErrorKind::InvalidEvent),
                None
            ]
        );
        let mut consumer = rabbit
            .client
            .consumer(Some(&queue_config(QueueKind::Classic, &name)))
            .await
            .expect("consumer");
        let got =
            causeway_testkit::receive_and_ack(&mut consumer, 3, Duration::from_secs(10)).await;
        let ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ok-1", long_id.as_str(), "ok-2"]);
    }

    /// Concurrent publish calls, one of them to a routing key no queue is
    /// bound to: exactly that call's events are reported unroutable. lapin
    /// hands a returned message to whichever pending confirm a multiple
    /// ack completes first; calls sharing a channel got each other's
    /// returns (a delivered event reported unroutable, the unroutable one
    /// reported delivered: lost). Found by the poison fault test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unroutable_returns_reach_their_own_events_under_concurrency() {
        use causeway_core::ErrorKind;
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let good = rabbit.destination("returns").await.expect("queue");
        let publisher = std::sync::Arc::new(rabbit.client.publisher());
        let mut misattributed = 0;
        for round in 0..20 {
            let mut calls = Vec::new();
            for call in 0..4 {
                let p = publisher.clone();
                let good = good.clone();
                calls.push(tokio::spawn(async move {
                    let events = causeway_testkit::events(&format!("r{round}c{call}"), 50, 5);
                    (true, p.publish(&good, &events).await.expect("publish"))
                }));
            }
            let p = publisher.clone();
            calls.push(tokio::spawn(async move {
                let events = causeway_testkit::events(&format!("r{round}-nowhere"), 5, 1);
                let nowhere = causeway_testkit::unique_name("nowhere");
                (false, p.publish(&nowhere, &events).await.expect("publish"))
            }));
            for call in calls {
                let (routable, outcomes) = call.await.expect("call");
                for o in outcomes {
                    let unroutable = o.as_ref().is_err_and(|e| e.kind() == ErrorKind::NotFound);
                    if unroutable == routable {
                        misattributed += 1;
                    }
                }
            }
        }
        assert_eq!(misattributed, 0, "outcomes given to the wrong events");
    }

    /// Submitted calls share the publisher's lane (one channel, in order),
    /// one of each round to a routing key no queue is bound to, all
    /// submitted before any is awaited: exactly that call's events are
    /// reported unroutable, however lapin hands the returns to the
    /// channel's confirms (the lane's one reader sorts them out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unroutable_returns_reach_their_own_events_on_the_lane() {
        use causeway_core::ErrorKind;
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        assert!(rabbit.client.publisher().capabilities().pipelined_order);
        let good = rabbit.destination("lane-returns").await.expect("queue");
        let publisher = rabbit.client.publisher();
        let mut misattributed = 0;
        for round in 0..20 {
            let mut calls = Vec::new();
            for call in 0..5 {
                let routable = call != 2;
                let dest = if routable {
                    good.clone()
                } else {
                    causeway_testkit::unique_name("nowhere")
                };
                let events = causeway_testkit::events(&format!("l{round}c{call}"), 50, 5);
                calls.push((routable, publisher.submit(&dest, &events).await));
            }
            for (routable, confirms) in calls {
                for o in confirms.await.expect("submitted call") {
                    let unroutable = o.as_ref().is_err_and(|e| e.kind() == ErrorKind::NotFound);
                    if unroutable == routable {
                        misattributed += 1;
                    }
                }
            }
        }
        assert_eq!(misattributed, 0, "outcomes given to the wrong events");
    }

    /// A settlement that fails (here a reject whose dead-letter queue was
    /// deleted under the consumer) gives its message back, and consumption
    /// goes on. Before the fix the delivery was taken out of the in-flight
    /// table and left unacked on the live channel: with `prefetch` 1, one
    /// such failure and nothing more was delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_settlement_gives_its_message_back() {
        use causeway_core::{Event, Settlement};
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let name = causeway_testkit::unique_name("failed-settle");
        let mut queue = queue_config(QueueKind::Classic, &name);
        queue.prefetch = 1;
        let mut consumer = rabbit
            .client
            .consumer(Some(&queue))
            .await
            .expect("consumer");
        delete_queue(&format!("{name}.dlq")).await;
        let events: Vec<Event> = (0..2)
            .map(|i| {
                Event::new(format!("settle-{i}"), "test://failed-settle", "t").with_payload("x")
            })
            .collect();
        causeway_testkit::broker::publish_all(&rabbit, &name, &events).await;
        let first = receive_one(&mut consumer, "settle-0").await;
        let refused = first
            .ticket
            .settle(Settlement::Reject {
                reason: "poison".into(),
            })
            .await;
        assert!(refused.is_err(), "a reject into a deleted queue must fail");
        let again = receive_one(&mut consumer, "settle-0").await;
        assert!(again.ticket.attempt() >= 2, "settle-0 was not redelivered");
        again.ack().await.expect("ack");
        receive_one(&mut consumer, "settle-1")
            .await
            .ack()
            .await
            .expect("ack");
    }

    /// Deletes `queue` with lapin itself, as an operator would.
    /// A message as any AMQP producer writes it with lapin: headers of
    /// every field type causeway carries and every basic property. (Not a
    /// short string: RabbitMQ reads an `s` field as a 16-bit integer, by
    /// its errata to AMQP 0-9-1, and closes the connection.) Read raw,
    /// each header keeps its value and its type (docs/headers.md), each
    /// property arrives under causeway's name, the payload byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_foreign_message_keeps_its_typed_headers_and_properties() {
        use causeway_core::Value;
        use causeway_core::message::property;
        use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldTable};
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let name = rabbit.destination("typed").await.expect("queue");
        let at = chrono::DateTime::from_timestamp(1_764_000_000, 0).expect("time");
        // Each header as written, and as causeway must read it.
        let headers = [
            (
                "text",
                AMQPValue::LongString("Zürich ✓".into()),
                Value::Text("Zürich ✓".into()),
            ),
            ("flag", AMQPValue::Boolean(true), Value::Bool(true)),
            ("byte", AMQPValue::ShortShortInt(-8), Value::Int(-8)),
            ("int32", AMQPValue::LongInt(-70_000), Value::Int(-70_000)),
            (
                "int64",
                AMQPValue::LongLongInt(1 << 40),
                Value::Int(1 << 40),
            ),
            ("float", AMQPValue::Float(1.5), Value::Float(1.5)),
            ("double", AMQPValue::Double(-0.25), Value::Float(-0.25)),
            (
                "amount",
                AMQPValue::DecimalValue(DecimalValue {
                    scale: 2,
                    value: 1250,
                }),
                Value::Decimal("12.50".into()),
            ),
            ("at", AMQPValue::Timestamp(1_764_000_000), Value::Time(at)),
            (
                "blob",
                AMQPValue::ByteArray(ByteArray::from(&[0u8, 1, 254, 255][..])),
                Value::Bytes(vec![0u8, 1, 254, 255].into()),
            ),
        ];
        let mut table = FieldTable::default();
        for (header, written, _) in &headers {
            table.insert((*header).into(), written.clone());
        }
        let properties = lapin::BasicProperties::default()
            .with_headers(table)
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into())
            .with_reply_to("replies".into())
            .with_type("tx.created".into())
            .with_app_id("core-banking".into())
            .with_user_id("guest".into())
            .with_timestamp(1_764_000_000)
            .with_expiration("600000".into())
            .with_priority(5);
        let payload = br#"{"AccountId": 7}"#;
        let (connection, channel) = lapin_channel().await.expect("lapin");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        channel
            .basic_publish(
                "".into(),
                name.as_str().into(),
                lapin::options::BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        let _ = connection.close(200, "done".into()).await;

        let e = &causeway_testkit::receive_one_raw(&rabbit, &name, Duration::from_secs(10)).await;
        assert_eq!(e.payload.as_ref(), payload);
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
        for (header, _, value) in &headers {
            assert_eq!(
                e.native.header(header),
                Some(value),
                "header `{header}` of {:?}",
                e.native.headers
            );
        }
        assert_eq!(
            e.native.headers.len(),
            headers.len(),
            "{:?}",
            e.native.headers
        );
        for (name, value) in [
            (property::MESSAGE_ID, Value::Text("m-1".into())),
            (property::CORRELATION_ID, Value::Text("c-1".into())),
            (property::REPLY_TO, Value::Text("replies".into())),
            (property::TYPE, Value::Text("tx.created".into())),
            (property::APP_ID, Value::Text("core-banking".into())),
            (property::USER_ID, Value::Text("guest".into())),
            (property::EXPIRATION, Value::Text("600000".into())),
            (property::TIMESTAMP, Value::Time(at)),
            (property::PRIORITY, Value::Int(5)),
        ] {
            assert_eq!(
                e.native.property(name),
                Some(&value),
                "property `{name}` of {:?}",
                e.native.properties
            );
        }
    }

    /// Messages from an AMQP producer with a header causeway has no type
    /// for: a nested table, an array. Each is handed out undecodable (for
    /// its route to dead-letter) with a reason naming the header, its
    /// payload byte for byte; the event between them flows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nested_table_or_array_header_is_undecodable_alone() {
        use lapin::types::{AMQPValue, FieldArray, FieldTable};
        let rabbit = Rabbit::new(QueueKind::Classic).await;
        let name = rabbit.destination("nested").await.expect("queue");
        let mut route = FieldTable::default();
        route.insert("hop".into(), AMQPValue::LongString("eu-west".into()));
        let nested = [
            ("route", AMQPValue::FieldTable(route)),
            (
                "hops",
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongInt(1)])),
            ),
        ];
        let (connection, channel) = lapin_channel().await.expect("lapin");
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        for (i, (header, value)) in nested.into_iter().enumerate() {
            if i == 1 {
                causeway_testkit::broker::publish_all(
                    &rabbit,
                    &name,
                    &causeway_testkit::events("between", 1, 0),
                )
                .await;
            }
            let mut table = FieldTable::default();
            table.insert("plain".into(), AMQPValue::LongString("kept".into()));
            table.insert(header.into(), value);
            channel
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    header.as_bytes(),
                    lapin::BasicProperties::default().with_headers(table),
                )
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
        let _ = connection.close(200, "done".into()).await;
        let mut consumer = rabbit.consumer(&name, "nested").await.expect("consumer");
        let got = causeway_testkit::collect(consumer.as_mut(), 3, Duration::from_secs(10)).await;
        let mut undecodable: Vec<(String, String)> = got
            .iter()
            .filter_map(|d| {
                let payload = String::from_utf8_lossy(&d.event.payload).into_owned();
                d.undecodable.clone().map(|reason| (payload, reason))
            })
            .collect();
        undecodable.sort();
        assert_eq!(undecodable.len(), 2, "{got:?}");
        for (payload, reason) in &undecodable {
            assert!(
                reason.contains(&format!("`{payload}`")),
                "the reason names header `{payload}`: {reason}"
            );
        }
        assert_eq!(
            got.iter().filter(|d| d.undecodable.is_none()).count(),
            1,
            "the event between them"
        );
        causeway_core::settle_all(
            got.into_iter()
                .map(|d| (d.ticket, causeway_core::Settlement::Ack)),
        )
        .await
        .expect("ack");
    }

    async fn delete_queue(queue: &str) {
        let (connection, channel) = lapin_channel().await.expect("lapin");
        channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("delete queue");
        let _ = connection.close(200, "done".into()).await;
    }

    /// The delivery of `id`, waiting up to 10 s; panics naming it otherwise.
    async fn receive_one(consumer: &mut dyn Consumer, id: &str) -> causeway_core::Delivery {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let mut batch = consumer
                .next_batch(1, Duration::from_millis(500))
                .await
                .expect("receive");
            if let Some(d) = batch.pop() {
                assert_eq!(d.event.id, id, "unexpected delivery");
                return d;
            }
        }
        panic!("`{id}` was not delivered within 10 s");
    }
}

/// The queues a run declares are never deleted by the tests, and the
/// broker xtask runs outlives every run: one run left about 290 queues
/// holding 230 of RabbitMQ's 927 file descriptors, and the fourth run on
/// one machine found it answering no AMQP handshake (19 tests failed).
/// xtask's policy `causeway-test-queues` lets RabbitMQ delete them once
/// unused for 15 minutes: every queue a scenario declares, its dead-letter
/// queue too, must fall under it. Before the fix no policy existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_queues_fall_under_the_expiry_policy() {
    const SCENARIO: &str = "test_queues_fall_under_the_expiry_policy";
    if causeway_testkit::env::endpoint(VAR, DEFAULT) != DEFAULT {
        return causeway_testkit::not_applicable(
            "rabbitmq",
            SCENARIO,
            "not the local RabbitMQ that xtask administers",
        );
    }
    let rabbit = Rabbit::new(QueueKind::Quorum).await;
    let queue = rabbit.destination("expiry").await.expect("destination");
    let listed = match std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "policy"])
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        // Not root, or no rabbitmqctl here: the broker cannot be inspected.
        Ok(out) => {
            return causeway_testkit::not_applicable(
                "rabbitmq",
                SCENARIO,
                &format!(
                    "rabbitmqctl failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
        }
        Err(e) => {
            return causeway_testkit::not_applicable(
                "rabbitmq",
                SCENARIO,
                &format!("rabbitmqctl cannot run: {e}"),
            );
        }
    };
    for name in [queue.clone(), format!("{queue}.dlq")] {
        let policy = listed
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}\t")))
            .unwrap_or_else(|| panic!("{name} is not listed by rabbitmqctl:\n{listed}"));
        assert_eq!(
            policy.trim(),
            "causeway-test-queues",
            "{name} would outlive the run; `cargo xtask services up rabbitmq` sets the policy"
        );
    }
}

mod quorum {
    use super::*;
    causeway_testkit::broker_conformance!(Rabbit::new(QueueKind::Quorum));
}
