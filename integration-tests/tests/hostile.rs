//! Messages nobody planned for, written into a real source broker with
//! that broker's own client (rdkafka, async-nats, lapin), as any producer
//! would (for SQS: aws-sdk-sqs against moto; for Service Bus: its REST API
//! against the emulator), and bridged to NATS JetStream in direct and durable mode, on
//! SQLite and on PostgreSQL: plain messages with no CloudEvents headers,
//! attributes with CR/LF or NUL, an empty id, header values that are not
//! UTF-8, a record key that is not UTF-8 (carried: a key is bytes), a 256-byte id, 16 KiB and 64 KiB extensions
//! (JetStream stores at most 64 KiB of headers), 300 extensions,
//! payloads just under and over the sink's limit, and structured-mode
//! events (JSON) that are cut short, not UTF-8, of another specversion,
//! with CR/LF in the id, an object or 10,000-deep extension, bad base64, or
//! data nested 10,000 deep (valid: carried), among well-formed events.
//!
//! The routes read CloudEvents only (`format = "cloudevents"`), so that a
//! plain message is one of the bad ones here. Each bad message must become
//! exactly one dead letter in the route's
//! store, with its reason; every good one (the well-formed events and the
//! hostile messages that are valid) must arrive once; the route keeps
//! running and stops cleanly. What a source broker cannot carry (NATS
//! headers are text; its payload limit is the sink's) is reported as not
//! applicable, by name.
//!
//! A Kafka header name that is not UTF-8 is written with kcat (rdkafka takes
//! names as `&str`): rdkafka panics reading one, and the consumer's guard
//! must turn that into one dead letter. SQS (moto, an emulator) takes the
//! corpus as message attributes within its 10 and its 256 KiB, extras
//! folded into `ce_attributes` as causeway writes them; Service Bus (the
//! REST emulator) as `UserProperties` of a REST batch send, within its
//! 256 KiB.

mod common;

use std::time::Duration;

use causeway_bridge::Bridge;
use causeway_bridge::pipeline::dead_letter_stream;
use causeway_core::{Binding, ReadFrom, ReadQuery, dead_letter};
use causeway_servicebus_emulator::ServiceBusEmulator;
use common::{Broker, Kafka, Nats, Rabbit, ServiceBus, Setup, Sqs};

/// What must become of a hostile message.
#[derive(Debug, Clone)]
enum Fate {
    /// One dead letter whose reason mentions this.
    Dead(&'static str),
    /// Delivered once, under this id.
    Delivered(String),
}

/// A message as a foreign producer writes it.
struct Raw {
    what: &'static str,
    /// The record key (Kafka only).
    key: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    payload: Vec<u8>,
    fate: Fate,
}

/// The sink's payload limit is NATS's `max_payload` (1 MiB here): one
/// payload just under it, one well over it.
const UNDER_SINK_LIMIT: usize = 900_000;
const OVER_SINK_LIMIT: usize = 1_500_000;

fn binding(from: Broker) -> Binding {
    match from {
        // SQS carries the Kafka binding's names (docs/headers.md).
        Kafka | Sqs => Binding::Kafka,
        Nats => Binding::Nats,
        Rabbit => Binding::Amqp,
        ServiceBus => Binding::ServiceBus,
    }
}

/// A CloudEvent in binary mode: the required attributes as `from`'s
/// binding writes them (NATS percent-encodes values), then `extra`. SQS
/// holds 10 message attributes: `extra` goes into the folded JSON of
/// `ce_attributes` there, as causeway's SQS publisher writes it.
fn ce(from: Broker, id: &str, extra: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let b = binding(from);
    if from == Sqs {
        let mut headers = ce(Kafka, id, &[]);
        if !extra.is_empty() {
            let folded: serde_json::Map<String, serde_json::Value> = extra
                .iter()
                .map(|(n, v)| ((*n).to_owned(), serde_json::Value::from(*v)))
                .collect();
            let json = serde_json::Value::Object(folded).to_string();
            headers.push((b"ce_attributes".to_vec(), json.into_bytes()));
        }
        return headers;
    }
    [
        ("specversion", "1.0"),
        ("id", id),
        ("source", "legacy://ledger"),
        ("type", "finbank.transaction.created"),
    ]
    .iter()
    .chain(extra)
    .map(|(name, value)| {
        let (n, v) = b.extension_header(name, value);
        (n.into_bytes(), v.into_bytes())
    })
    .collect()
}

/// The corpus for source `from`, and what of it does not apply there.
fn corpus(from: Broker) -> (Vec<Raw>, Vec<String>) {
    let b = binding(from);
    let raw = |what, headers, payload: &[u8], fate| Raw {
        what,
        key: None,
        headers,
        payload: payload.to_vec(),
        fate,
    };
    let mut raws: Vec<Raw> = (0..10)
        .map(|i| Raw {
            key: Some(format!("acct-{i}").into_bytes()),
            ..raw(
                "a plain message without CloudEvents headers",
                Vec::new(),
                format!("{{\"accountId\": {i}, \"amount\": 12.5}}").as_bytes(),
                Fate::Dead("undecodable"),
            )
        })
        .collect();
    let long_id = "i".repeat(256);
    let big = "x".repeat(64 * 1024);
    let many: Vec<(String, String)> = (0..300)
        .map(|i| (format!("x{i}"), format!("v{i}")))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    raws.extend([
        raw(
            "CR/LF in the id",
            ce(from, "h-crlf\r\nNats-Msg-Id: forged", &[]),
            b"crlf",
            Fate::Dead("control character"),
        ),
        raw(
            "NUL in the subject",
            ce(from, "h-nul", &[("subject", "acct\0-7")]),
            b"nul",
            Fate::Dead("control character"),
        ),
        raw(
            "an empty id",
            ce(from, "", &[]),
            b"empty id",
            Fate::Dead("must not be empty"),
        ),
        raw(
            "a payload of 200 KB",
            ce(from, "h-200k", &[]),
            &vec![b't'; 200_000],
            Fate::Delivered("h-200k".into()),
        ),
        raw(
            "a 256-byte id",
            ce(from, &long_id, &[]),
            b"long id",
            Fate::Delivered(long_id.clone()),
        ),
        raw(
            "a 16 KiB extension",
            ce(from, "h-big-ext", &[("bigext", &big[..16 * 1024])]),
            b"big extension",
            Fate::Delivered("h-big-ext".into()),
        ),
        raw(
            "300 extensions",
            ce(from, "h-many", &many),
            b"many extensions",
            Fate::Delivered("h-many".into()),
        ),
        raw(
            "a payload just under the sink's limit",
            ce(from, "h-under-limit", &[]),
            &vec![b'u'; UNDER_SINK_LIMIT],
            Fate::Delivered("h-under-limit".into()),
        ),
    ]);
    let mut skipped = Vec::new();
    if from == ServiceBus {
        skipped.push(
            "structured-mode events: a REST batch send drops each message's ContentType (the service ignores it), so none can be written structured here; conformance `structured_cloudevent_is_read` sends one alone".to_owned(),
        );
    } else {
        raws.extend(structured_corpus());
    }
    if from == Sqs {
        raws.retain(|r| r.what != "a structured body that is not UTF-8");
        skipped.push("a structured body that is not UTF-8: SQS bodies are text".to_owned());
    }
    if matches!(from, Sqs | ServiceBus) {
        // Their own limit is 256 KiB: nothing near the sink's.
        raws.retain(|r| r.payload.len() < 256 * 1024);
        skipped.push(format!(
            "payloads near the sink's limit ({UNDER_SINK_LIMIT} and {OVER_SINK_LIMIT} bytes): {} carries at most 256 KiB",
            from.name()
        ));
    }
    if from == Sqs {
        raws.push(raw(
            "folded attributes that are not JSON",
            vec![
                (b"ce_specversion".to_vec(), b"1.0".to_vec()),
                (b"ce_id".to_vec(), b"h-bad-json".to_vec()),
                (b"ce_source".to_vec(), b"legacy://ledger".to_vec()),
                (b"ce_type".to_vec(), b"t".to_vec()),
                (b"ce_attributes".to_vec(), b"{not json".to_vec()),
            ],
            b"bad folded json",
            Fate::Dead("not a JSON object"),
        ));
    }
    if from == Nats {
        skipped.push(
            "a 64 KiB extension: JetStream refuses headers over 64 KiB as a source too".to_owned(),
        );
    } else if from == ServiceBus {
        skipped.push(
            "a 64 KiB extension: Service Bus refuses a property over 32 KB as a source too"
                .to_owned(),
        );
    } else {
        raws.push(raw(
            "a 64 KiB extension (over JetStream's header limit at the sink)",
            ce(from, "h-huge-ext", &[("hugeext", &big)]),
            b"huge extension",
            Fate::Dead("too large"),
        ));
    }
    if from == Nats {
        skipped.push("a header value that is not UTF-8: NATS headers are text".to_owned());
        skipped.push(format!(
            "a payload over the sink's limit: the NATS source has the same limit ({OVER_SINK_LIMIT} bytes cannot be written)"
        ));
    } else if from == ServiceBus {
        skipped.push(
            "a header value that is not UTF-8: Service Bus properties are JSON values".to_owned(),
        );
        // A peek-lock returns properties as HTTP headers; hyper (under
        // reqwest) refuses a response with more than 100. Such a message is
        // never received: Service Bus moves it to its own dead-letter
        // subqueue after MaxDeliveryCount, not to the route's.
        raws.retain(|r| r.what != "300 extensions");
        skipped.push(
            "KNOWN GAP (the adapter, not the emulator): a message with 300 properties cannot be received over REST (hyper reads at most 100 response headers); it reaches Service Bus's own dead-letter subqueue after MaxDeliveryCount, not the route's dead letters".to_owned(),
        );
        let sixty: Vec<(String, String)> = (0..60)
            .map(|i| (format!("x{i}"), format!("v{i}")))
            .collect();
        let sixty: Vec<(&str, &str)> = sixty
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        raws.push(raw(
            "60 extensions",
            ce(from, "h-sixty", &sixty),
            b"sixty extensions",
            Fate::Delivered("h-sixty".into()),
        ));
    } else if from == Sqs {
        // SQS strings are Unicode; bytes travel as a Binary attribute,
        // which is no CloudEvents attribute: the id is missing.
        let mut headers = ce(from, "h-bad-utf8", &[]);
        headers.retain(|(n, _)| n.as_slice() != b"ce_id");
        headers.push((b"ce_id".to_vec(), vec![0xff, 0xfe, b'x']));
        raws.push(raw(
            "an id that is bytes, not text (a Binary attribute)",
            headers,
            b"bad utf-8 value",
            Fate::Dead("id"),
        ));
    } else {
        let mut headers = ce(from, "h-bad-utf8", &[]);
        headers.push((
            format!("{}comment", b.prefix()).into_bytes(),
            vec![0xff, 0xfe, b'x'],
        ));
        raws.push(raw(
            "a header value that is not UTF-8",
            headers,
            b"bad utf-8 value",
            Fate::Dead("UTF-8"),
        ));
        if from != ServiceBus {
            raws.push(raw(
                "a payload over the sink's limit",
                ce(from, "h-over-limit", &[]),
                &vec![b'o'; OVER_SINK_LIMIT],
                Fate::Dead("too large"),
            ));
        }
    }
    if from == Kafka {
        // rdkafka takes header names as `&str`: written with kcat.
        let mut headers = ce(from, "h-bad-name", &[]);
        headers.push((vec![0xff, 0xfe], b"x".to_vec()));
        raws.push(raw(
            "a header name that is not UTF-8",
            headers,
            b"bad header name",
            Fate::Dead("name is not UTF-8"),
        ));
        // A key is bytes: kept as they are, ordered by their hash. (Until
        // raw messages, such a record was refused as undecodable.)
        raws.push(Raw {
            key: Some(vec![0xc3, 0x28]),
            ..raw(
                "a record key that is not UTF-8",
                ce(from, "h-bad-key", &[]),
                b"bad key",
                Fate::Delivered("h-bad-key".into()),
            )
        });
    } else {
        skipped.push("a record key that is not UTF-8: only Kafka has record keys".to_owned());
        skipped.push(format!(
            "a header name that is not UTF-8: {} header names are text",
            from.name()
        ));
    }
    (raws, skipped)
}

/// Structured-mode CloudEvents (the whole event as JSON, content type
/// `application/cloudevents+json`) that are broken, or valid but extreme.
fn structured_corpus() -> Vec<Raw> {
    let structured = |what, body: String, fate| Raw {
        what,
        key: None,
        headers: vec![(
            b"content-type".to_vec(),
            b"application/cloudevents+json".to_vec(),
        )],
        payload: body.into_bytes(),
        fate,
    };
    let event = |id: &str, extra: &str| {
        format!(
            r#"{{"specversion": "1.0", "id": "{id}", "source": "/ledger", "type": "tx"{extra}, "data": {{"amount": 1}}}}"#
        )
    };
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let mut invalid_utf8 = structured(
        "a structured body that is not UTF-8",
        event("s-bad-utf8", ""),
        Fate::Dead("not a JSON object"),
    );
    // Inside the id's string.
    invalid_utf8.payload.splice(33..33, [0xff, 0xfe]);
    vec![
        invalid_utf8,
        structured(
            "a structured event with CR/LF in its id",
            event(r"s-crlf\r\nNats-Msg-Id: forged", ""),
            Fate::Dead("control character"),
        ),
        structured(
            "a structured event of specversion 0.3",
            event("s-v03", "").replacen("1.0", "0.3", 1),
            Fate::Dead("specversion"),
        ),
        structured(
            "a structured body cut short",
            event("s-cut", "")[..30].to_owned(),
            Fate::Dead("not a JSON object"),
        ),
        structured(
            "a structured extension that is an object",
            event("s-object-ext", r#", "tenant": {"name": "eu"}"#),
            Fate::Dead("an extension must be"),
        ),
        structured(
            "a structured extension nested 10,000 deep",
            event("s-deep-ext", &format!(r#", "deep": {}"#, deep(10_000))),
            Fate::Dead("an extension must be"),
        ),
        structured(
            "structured data nested 10,000 deep (valid JSON, carried as bytes)",
            event("s-deep-data", "").replacen(r#"{"amount": 1}"#, &deep(10_000), 1),
            Fate::Delivered("s-deep-data".into()),
        ),
        structured(
            "structured data_base64 that is not base64",
            event("s-bad-base64", r#", "data_base64": "@@@""#).replacen(
                r#", "data": {"amount": 1}"#,
                "",
                1,
            ),
            Fate::Dead("not base64"),
        ),
    ]
}

/// Writes `raws` into `from`'s source destination with its own client.
async fn write_raw(from: Broker, destination: &str, raws: &[Raw], emulator: &ServiceBusEmulator) {
    match from {
        Kafka => write_kafka(destination, raws).await,
        Nats => write_nats(destination, raws).await,
        Rabbit => write_rabbit(destination, raws).await,
        Sqs => write_sqs(destination, raws).await,
        ServiceBus => write_servicebus(emulator, destination, raws).await,
    }
}

/// Over Service Bus's REST API (Send Message Batch), as any HTTP client
/// would: the properties as `UserProperties`, signed with a SAS token.
async fn write_servicebus(emulator: &ServiceBusEmulator, queue: &str, raws: &[Raw]) {
    let token = emulator
        .sas_token(causeway_servicebus_emulator::ROOT_POLICY)
        .expect("the emulator's root policy");
    let http = reqwest::Client::new();
    for raw in raws {
        let properties: serde_json::Map<String, serde_json::Value> = raw
            .headers
            .iter()
            .map(|(n, v)| {
                let n = String::from_utf8(n.clone()).expect("property names are text");
                let v = String::from_utf8(v.clone()).expect("property values are text");
                (n, serde_json::Value::String(v))
            })
            .collect();
        let body = std::str::from_utf8(&raw.payload).expect("a text body");
        let batch = serde_json::json!([{ "Body": body, "UserProperties": properties }]);
        let sent = http
            .post(format!("{}/{queue}/messages", emulator.url()))
            .header("Authorization", &token)
            .header("Content-Type", "application/vnd.microsoft.servicebus.json")
            .body(batch.to_string())
            .send()
            .await
            .unwrap_or_else(|e| panic!("raw send of {}: {e}", raw.what));
        assert!(
            sent.status().is_success(),
            "the emulator refused {}: {}",
            raw.what,
            sent.status()
        );
    }
}

/// With aws-sdk-sqs: a text value as a String attribute, bytes as Binary.
async fn write_sqs(queue: &str, raws: &[Raw]) {
    use aws_sdk_sqs::primitives::Blob;
    use aws_sdk_sqs::types::MessageAttributeValue;
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let endpoint = common::env("CAUSEWAY_SQS_ENDPOINT", "http://127.0.0.1:4566");
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "hostile",
        ))
        .load()
        .await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url = client
        .get_queue_url()
        .queue_name(queue)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the SQS source queue {queue}: {e}"))
        .queue_url
        .expect("queue url");
    for raw in raws {
        let body = std::str::from_utf8(&raw.payload).expect("SQS bodies are text");
        let mut send = client.send_message().queue_url(&url).message_body(body);
        for (name, value) in &raw.headers {
            let name = std::str::from_utf8(name).expect("SQS attribute names are text");
            let attribute = match std::str::from_utf8(value) {
                Ok(text) => MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(text),
                Err(_) => MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(value.clone())),
            }
            .build()
            .expect("attribute");
            send = send.message_attributes(name, attribute);
        }
        send.send()
            .await
            .unwrap_or_else(|e| panic!("raw send of {}: {e:?}", raw.what));
    }
}

async fn write_kafka(topic: &str, raws: &[Raw]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let brokers = common::env("CAUSEWAY_KAFKA_BROKERS", "127.0.0.1:19092");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    for raw in raws {
        let names: Result<Vec<&str>, _> = raw
            .headers
            .iter()
            .map(|(n, _)| std::str::from_utf8(n))
            .collect();
        let Ok(names) = names else {
            write_with_kcat(&brokers, topic, raw);
            continue;
        };
        let mut headers = OwnedHeaders::new();
        for (name, (_, value)) in names.iter().zip(&raw.headers) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_slice()),
            });
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&raw.payload)
            .headers(headers);
        if let Some(key) = &raw.key {
            record = record.key(key);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap_or_else(|e| panic!("raw produce of {}: {e}", raw.what));
    }
}

/// Produces `raw` with kcat, whose `-H name=value` takes the name as bytes.
fn write_with_kcat(brokers: &str, topic: &str, raw: &Raw) {
    use std::io::Write;
    use std::os::unix::ffi::OsStringExt;
    let mut kcat = std::process::Command::new("kcat");
    kcat.args(["-P", "-b", brokers, "-t", topic]);
    for (name, value) in &raw.headers {
        let mut arg = name.clone();
        arg.push(b'=');
        arg.extend_from_slice(value);
        kcat.arg("-H").arg(std::ffi::OsString::from_vec(arg));
    }
    let mut child = kcat
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "kcat, for {} (`cargo xtask services up kafka` installs it): {e}",
                raw.what
            )
        });
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&raw.payload).expect("kcat stdin");
    }
    let status = child.wait().expect("kcat");
    assert!(status.success(), "kcat could not produce {}", raw.what);
}

async fn write_nats(subject: &str, raws: &[Raw]) {
    let url = common::env("CAUSEWAY_NATS_URL", "nats://127.0.0.1:14222");
    let client = async_nats::connect(url.as_str()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    for raw in raws {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &raw.headers {
            let name = std::str::from_utf8(name).expect("NATS header names are text");
            let value = std::str::from_utf8(value).expect("NATS header values are text");
            headers.insert(name, value);
        }
        js.publish_with_headers(subject.to_owned(), headers, raw.payload.clone().into())
            .await
            .unwrap_or_else(|e| panic!("raw publish of {}: {e}", raw.what))
            .await
            .unwrap_or_else(|e| panic!("raw publish of {}: {e}", raw.what));
    }
}

async fn write_rabbit(queue: &str, raws: &[Raw]) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let url = common::env(
        "CAUSEWAY_RABBITMQ_URL",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    );
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("rabbitmq");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    for raw in raws {
        let mut headers = FieldTable::default();
        let mut properties = lapin::BasicProperties::default();
        for (name, value) in &raw.headers {
            let name = std::str::from_utf8(name).expect("AMQP header names are text");
            if name == "content-type" {
                // AMQP has a property for it.
                let value = std::str::from_utf8(value).expect("a content type is text");
                properties = properties.with_content_type(value.into());
                continue;
            }
            headers.insert(
                name.into(),
                AMQPValue::LongString(LongString::from(value.clone())),
            );
        }
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                &raw.payload,
                properties.with_headers(headers),
            )
            .await
            .unwrap_or_else(|e| panic!("raw publish of {}: {e}", raw.what))
            .await
            .unwrap_or_else(|e| panic!("raw publish of {}: {e}", raw.what));
        assert!(confirm.is_ack(), "RabbitMQ refused {}", raw.what);
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Which store the route runs on.
#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

async fn hostile_to_nats(from: Broker, mode: &'static str, store: Store) {
    let what = format!(
        "{} -> nats ({mode}, {store:?}), hostile messages",
        from.name()
    );
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("hostile");
    let emulator = common::prepare(&prefix, from, Nats).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, Nats, mode).with_servicebus(&emulator);
    // CloudEvents only: a plain message is undecodable here, as the corpus
    // expects. Read `auto` (the default) it is carried raw: the matrix's
    // raw routes and the adapters' `foreign_message_is_carried_raw`.
    setup.route_extra = "format = \"cloudevents\"".into();
    if let Store::Postgres = store {
        setup.store = common::postgres_store(&prefix);
    }
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&bridge, from, Nats).await;
    let good = causeway_testkit::events(&prefix, 46, 10);
    let (bad, skipped) = corpus(from);
    for s in &skipped {
        println!("{what}: not applicable: {s}");
    }
    let delivered: Vec<&str> = bad
        .iter()
        .filter_map(|r| match &r.fate {
            Fate::Delivered(id) => Some(id.as_str()),
            Fate::Dead(_) => None,
        })
        .collect();
    let dead: Vec<&Raw> = bad
        .iter()
        .filter(|r| matches!(r.fate, Fate::Dead(_)))
        .collect();
    // Good events first and last, the hostile ones in between.
    common::publish_to_source(&bridge, from, &prefix, &good[..20]).await;
    write_raw(from, &from.destination(&prefix, "in"), &bad, &emulator).await;
    common::publish_to_source(&bridge, from, &prefix, &good[20..]).await;

    let metrics = bridge.metrics.route("r");
    let running = common::start_route(&bridge).await;
    let want_published = (good.len() + delivered.len()) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while (metrics.published.get() < want_published
        || metrics.dead_lettered.get() < dead.len() as u64)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    let got = common::read(sink.as_mut(), good.len() + delivered.len(), &what).await;
    sink.close().await.expect("close");
    let (hostile_got, good_got): (Vec<_>, Vec<_>) = got
        .into_iter()
        .partition(|e| delivered.contains(&e.id.as_str()));
    common::check(&good, &good_got, from.keeps_order(), &what);
    let mut hostile_ids: Vec<&str> = hostile_got.iter().map(|e| e.id.as_str()).collect();
    hostile_ids.sort_unstable();
    let mut want_ids = delivered.clone();
    want_ids.sort_unstable();
    assert_eq!(
        hostile_ids, want_ids,
        "{what}: the valid hostile messages, once each"
    );
    for e in &hostile_got {
        let raw = bad
            .iter()
            .find(|r| matches!(&r.fate, Fate::Delivered(id) if *id == e.id))
            .expect("raw");
        if raw.headers.iter().any(|(n, _)| n == b"content-type") {
            // Structured: the payload is `data`, byte for byte as written in it.
            assert!(
                raw.payload
                    .windows(e.payload.len())
                    .any(|w| w == e.payload.as_ref()),
                "{what}: {}: the data is not in the message as written",
                raw.what
            );
        } else {
            assert_eq!(e.payload.len(), raw.payload.len(), "{what}: {}", raw.what);
        }
        if e.id == "h-many" {
            assert_eq!(e.headers.len(), 300, "{what}: 300 extensions carried");
        }
    }

    let letters = bridge
        .store
        .read(&ReadQuery::new(
            dead_letter_stream("r"),
            ReadFrom::Position(0),
            1000,
        ))
        .await
        .expect("dead letters");
    let reasons: Vec<String> = letters
        .iter()
        .map(|d| {
            d.event
                .header(dead_letter::REASON)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        letters.len(),
        dead.len(),
        "{what}: one dead letter per bad message: {reasons:#?}"
    );
    for raw in &dead {
        let Fate::Dead(why) = raw.fate else {
            continue;
        };
        let hit = letters
            .iter()
            .find(|d| d.event.payload.as_ref() == raw.payload.as_slice())
            .unwrap_or_else(|| panic!("{what}: no dead letter for {}", raw.what));
        let reason = hit.event.header(dead_letter::REASON).unwrap_or_default();
        assert!(
            reason.contains(why),
            "{what}: the dead letter of {} says {reason:?}, not {why:?}",
            raw.what
        );
        hit.event
            .validate()
            .expect("a dead letter is a valid event");
    }
    println!(
        "{what}: {} good events and {} valid hostile ones delivered once each, {} bad messages dead-lettered once each with their reason, {} cases not applicable",
        good.len(),
        delivered.len(),
        dead.len(),
        skipped.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kafka_records_are_dead_lettered_alone_direct() {
    hostile_to_nats(Kafka, "direct", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kafka_records_are_dead_lettered_alone_durable() {
    hostile_to_nats(Kafka, "durable", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_kafka_records_are_dead_lettered_alone_durable_on_postgres() {
    hostile_to_nats(Kafka, "durable", Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nats_messages_are_dead_lettered_alone_direct() {
    hostile_to_nats(Nats, "direct", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_nats_messages_are_dead_lettered_alone_durable() {
    hostile_to_nats(Nats, "durable", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sqs_moto_emulator_messages_are_dead_lettered_alone_direct() {
    hostile_to_nats(Sqs, "direct", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sqs_moto_emulator_messages_are_dead_lettered_alone_durable() {
    hostile_to_nats(Sqs, "durable", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servicebus_rest_emulator_messages_are_dead_lettered_alone_direct() {
    hostile_to_nats(ServiceBus, "direct", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_servicebus_rest_emulator_messages_are_dead_lettered_alone_durable() {
    hostile_to_nats(ServiceBus, "durable", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rabbitmq_messages_are_dead_lettered_alone_direct() {
    hostile_to_nats(Rabbit, "direct", Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rabbitmq_messages_are_dead_lettered_alone_durable_on_postgres() {
    hostile_to_nats(Rabbit, "durable", Store::Postgres).await;
}
