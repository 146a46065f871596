//! Secrets never appear in `Debug` output or in the errors of a failing
//! connect: every config is built with distinctive secrets, then its
//! `Debug` and the errors of connecting to a closed port are searched for
//! them. Before the fix the Kafka security table, the librdkafka map, the
//! NATS auth, the RabbitMQ and PostgreSQL URLs (and so the bridge's whole
//! `Config`) printed them.

use causeway_bridge::Bridge;
use causeway_bridge::config::{Config, EndpointConfig};

/// Each secret is unique, so a hit names where it leaked from.
const SECRETS: [&str; 9] = [
    "KAFKA-SASL-PW-7f3a",
    "RDKAFKA-PW-19c2",
    "NATS-TOKEN-88d1",
    "NATS-URL-PW-4e0b",
    "RABBIT-PW-a5c7",
    "PG-PW-2b9e",
    "SQS-SECRET-6d44",
    "SB-SAS-KEY-c0fe",
    "NATS-USER-PW-5150",
];

/// Closed ports: nothing listens there, so every connect fails.
fn config_text() -> String {
    format!(
        r#"
[store]
postgres = {{ url = "postgres://bank:{pg}@127.0.0.1:1/causeway" }}

[endpoints.kafka.kafka]
brokers = "127.0.0.1:1"
security = {{ protocol = "sasl_plaintext", sasl_mechanism = "PLAIN", username = "bank", password = "{kafka}" }}
librdkafka = {{ "sasl.password" = "{rdkafka}", "socket.timeout.ms" = "1000" }}
consumer = {{ group = "g", topics = ["t"] }}

[endpoints.nats.nats]
url = "nats://bank:{nats_url}@127.0.0.1:1"
auth = {{ method = "token", token = "{nats_token}" }}
stream = {{ name = "S", subjects = ["s.>"] }}

[endpoints.nats2.nats]
url = "nats://127.0.0.1:1"
auth = {{ method = "user_password", user = "bank", password = "{nats_pw}" }}
stream = {{ name = "S", subjects = ["s.>"] }}

[endpoints.rabbit.rabbitmq]
url = "amqp://bank:{rabbit}@127.0.0.1:1/%2f"

[endpoints.sqs.sqs]
region = "us-east-1"
endpoint = "http://127.0.0.1:1"
credentials = {{ access_key_id = "AKIA", secret_access_key = "{sqs}" }}

[endpoints.sb.servicebus]
namespace = "bank"
sas_policy = "root"
endpoint = "http://127.0.0.1:1"

[routes.r]
source = "kafka"
sink = "rabbit"
destination = "out"
"#,
        kafka = SECRETS[0],
        rdkafka = SECRETS[1],
        nats_token = SECRETS[2],
        nats_url = SECRETS[3],
        rabbit = SECRETS[4],
        pg = SECRETS[5],
        sqs = SECRETS[6],
        nats_pw = SECRETS[8],
    )
}

/// The config, with the Service Bus key as the bridge reads it from the
/// environment (it is never a TOML key).
fn config() -> Config {
    let mut config = Config::parse(&config_text(), "secrets.toml").expect("config");
    if let Some(EndpointConfig::Servicebus(sb)) = config.endpoints.get_mut("sb") {
        sb.sas_key = Some(SECRETS[7].to_owned());
    }
    config
}

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret}:\n{text}"
        );
    }
}

#[test]
fn debug_of_every_config_hides_every_secret() {
    let config = config();
    let debug = format!("{config:?}");
    // The config holds them all: the search would find a leak.
    assert!(debug.contains("<redacted>"), "{debug}");
    assert_clean("Debug of Config", &debug);
    assert_clean("pretty Debug of Config", &format!("{config:#?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_a_failing_connect_hide_every_secret() {
    let mut config = config();
    // The store first: PostgreSQL refuses the connection.
    let e = Bridge::new(config.clone())
        .await
        .expect_err("no PostgreSQL on port 1");
    assert_clean("PostgreSQL connect error", &format!("{e:#} / {e:?}"));
    // Then every endpoint against closed ports, on a store that works.
    let dir = tempfile::tempdir().expect("dir");
    config.store.postgres = None;
    config.store.sqlite = Some(dir.path().join("store.db"));
    let bridge = Bridge::new(config).await.expect("bridge on SQLite");
    for endpoint in ["kafka", "nats", "nats2", "rabbit", "sqs", "sb"] {
        let checked = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            bridge.endpoints.check(endpoint),
        )
        .await;
        let text = match checked {
            // Service Bus checks only the entities it is configured with
            // (none here): nothing is called, nothing can leak.
            Ok(Ok(_)) if endpoint == "sb" => String::new(),
            Ok(Ok(_)) => panic!("{endpoint}: a closed port answered"),
            Ok(Err(e)) => format!("{e:#} / {e:?}"),
            Err(_) => format!("{endpoint}: no answer in 60 s"),
        };
        assert_clean(&format!("{endpoint} check error"), &text);
    }
}
