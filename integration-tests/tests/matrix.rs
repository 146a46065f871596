//! The bridge between every source and every sink among Kafka (Tansu),
//! RabbitMQ, NATS JetStream, SQS (moto, an emulator) and Service Bus
//! (causeway-testkit's REST emulator, in process): 25 routes, each in direct
//! and in durable mode. Each moves events with keys and headers; the sink is
//! read with the sink's own adapter, and every event must arrive once, with
//! every CloudEvents attribute and header intact, in order per key where the
//! source keeps one (SQS standard queues and Service Bus do not: their
//! events get a key each).

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

macro_rules! both_modes {
    ($($rest:tt)*) => {
        matrix!(direct: $($rest)*);
        matrix!(durable: $($rest)*);
    };
}

both_modes! {
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
