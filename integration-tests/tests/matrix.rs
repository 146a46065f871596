//! The bridge between every source and every sink among Kafka (Tansu),
//! RabbitMQ, NATS JetStream, SQS (moto, an emulator) and Service Bus
//! (causeway-testkit's REST emulator, in process): 25 routes, each in direct
//! and in durable mode. Each moves events with keys and headers; the sink is
//! read with the sink's own adapter, and every event must arrive once, with
//! every CloudEvents attribute and header intact, in order per key where the
//! source keeps one (SQS standard queues and Service Bus do not: their
//! events get a key each).
//!
//! The same 25 routes run once more with `format = "raw"` (direct mode):
//! plain messages, no CloudEvents attribute, with a key and headers,
//! written to the source with its adapter; at the sink the payload must be
//! byte for byte what was sent, the key kept and every header there with
//! its value.

mod common;

use causeway_bridge::Bridge;
use common::{Broker, Kafka, Nats, Rabbit, ServiceBus, Setup, Sqs};

async fn route(from: Broker, to: Broker, mode: &'static str) {
    let what = format!("{} -> {} ({mode})", from.name(), to.name());
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("mx");
    let emulator = common::prepare(&prefix, from, to).await;
    let setup = Setup::new(dir.path(), &prefix, from, to, mode).with_servicebus(&emulator);
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&bridge, from, to).await;
    let n = Broker::events(from, to);
    // Every sink keeps a key's order as configured here (SQS FIFO, Service
    // Bus sessions read by one receiver): what decides is the source.
    let ordered = from.keeps_order();
    // Without order at the source, one key per event: nothing to reorder.
    let keys = if ordered { 10 } else { n };
    let sent = causeway_testkit::events(&prefix, n, keys);
    common::publish_to_source(&bridge, from, &prefix, &sent).await;
    common::run_route(&bridge, n as u64).await;
    let got = common::read(sink.as_mut(), n, &what).await;
    sink.close().await.expect("close the sink consumer");
    common::check(&sent, &got, ordered, &what);
    println!(
        "{what}: {n} of {n}, once each, every field intact{}",
        if ordered { ", in order per key" } else { "" }
    );
}

/// Plain messages from `from` to `to` through a route reading them raw.
async fn raw_route(from: Broker, to: Broker) {
    let what = format!("{} -> {} (raw)", from.name(), to.name());
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("mxr");
    let emulator = common::prepare(&prefix, from, to).await;
    let mut setup = Setup::new(dir.path(), &prefix, from, to, "direct").with_servicebus(&emulator);
    setup.route_extra = "format = \"raw\"".into();
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&bridge, from, to).await;
    let n = Broker::events(from, to);
    let ordered = from.keeps_order();
    let keys = if ordered { 10 } else { n };
    let sent = common::raw_messages(&prefix, n, keys);
    common::publish_to_source(&bridge, from, &prefix, &sent).await;
    common::run_route(&bridge, n as u64).await;
    let got = common::read(sink.as_mut(), n, &what).await;
    sink.close().await.expect("close the sink consumer");
    common::check_raw(&sent, &got, ordered, &what);
    println!(
        "{what}: {n} of {n}, once each, payload, key and headers intact{}",
        if ordered { ", in order per key" } else { "" }
    );
}

macro_rules! matrix {
    ($mode:ident: $($test:ident: $from:expr => $to:expr;)*) => {
        mod $mode {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    route($from, $to, stringify!($mode)).await;
                }
            )*
        }
    };
}

macro_rules! raw_matrix {
    ($($test:ident: $from:expr => $to:expr;)*) => {
        mod raw {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    raw_route($from, $to).await;
                }
            )*
        }
    };
}

macro_rules! every_route {
    ($($rest:tt)*) => {
        matrix!(direct: $($rest)*);
        matrix!(durable: $($rest)*);
        raw_matrix!($($rest)*);
    };
}

every_route! {
    kafka_to_kafka: Kafka => Kafka;
    kafka_to_nats: Kafka => Nats;
    kafka_to_rabbitmq: Kafka => Rabbit;
    kafka_to_sqs_moto_emulator: Kafka => Sqs;
    kafka_to_servicebus_rest_emulator: Kafka => ServiceBus;
    nats_to_kafka: Nats => Kafka;
    nats_to_nats: Nats => Nats;
    nats_to_rabbitmq: Nats => Rabbit;
    nats_to_sqs_moto_emulator: Nats => Sqs;
    nats_to_servicebus_rest_emulator: Nats => ServiceBus;
    rabbitmq_to_kafka: Rabbit => Kafka;
    rabbitmq_to_nats: Rabbit => Nats;
    rabbitmq_to_rabbitmq: Rabbit => Rabbit;
    rabbitmq_to_sqs_moto_emulator: Rabbit => Sqs;
    rabbitmq_to_servicebus_rest_emulator: Rabbit => ServiceBus;
    sqs_moto_emulator_to_kafka: Sqs => Kafka;
    sqs_moto_emulator_to_nats: Sqs => Nats;
    sqs_moto_emulator_to_rabbitmq: Sqs => Rabbit;
    sqs_moto_emulator_to_sqs_moto_emulator: Sqs => Sqs;
    sqs_moto_emulator_to_servicebus_rest_emulator: Sqs => ServiceBus;
    servicebus_rest_emulator_to_kafka: ServiceBus => Kafka;
    servicebus_rest_emulator_to_nats: ServiceBus => Nats;
    servicebus_rest_emulator_to_rabbitmq: ServiceBus => Rabbit;
    servicebus_rest_emulator_to_sqs_moto_emulator: ServiceBus => Sqs;
    servicebus_rest_emulator_to_servicebus_rest_emulator: ServiceBus => ServiceBus;
}
