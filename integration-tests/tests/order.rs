//! Order per key when one event of a key is busy at another instance, on
//! a source that delivers a key's events together (RabbitMQ; the in-memory
//! broker delivers one event per key at a time and cannot show this). The
//! busy event is nacked with a delay; before the fix the rest of its key in
//! the same batch were published at once, ahead of it.

mod common;

use std::time::Duration;

use causeway_bridge::Bridge;
use common::{Nats, Rabbit, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_to_nats_a_busy_event_holds_back_the_rest_of_its_key() {
    let what = "rabbitmq -> nats (direct), first event of the key busy elsewhere";
    let dir = tempfile::tempdir().expect("dir");
    let prefix = causeway_testkit::unique_name("order");
    let emulator = common::prepare(&prefix, Rabbit, Nats).await;
    let setup = Setup::new(dir.path(), &prefix, Rabbit, Nats, "direct").with_servicebus(&emulator);
    let bridge = Bridge::new(setup.config(&emulator)).await.expect("bridge");
    let mut sink = common::sink_reader(&bridge, Rabbit, Nats).await;
    let sent = causeway_testkit::events(&prefix, 20, 1);
    // Another instance holds the first event's claim for 2 s.
    let route = bridge.route("r").await.expect("route");
    let first = format!("r\u{1f}{}\u{1f}{}", sent[0].source, sent[0].id);
    let held = route
        .dedup
        .claim_many(&[first.as_str()], Duration::from_secs(2))
        .await
        .expect("claim");
    assert!(matches!(held[0], causeway_core::Claim::Claimed(_)));
    common::publish_to_source(&bridge, Rabbit, &prefix, &sent).await;
    common::run_route(&bridge, sent.len() as u64).await;
    let got = common::read(sink.as_mut(), sent.len(), what).await;
    sink.close().await.expect("close");
    common::check(&sent, &got, true, what);
    println!("{what}: {} events in order", got.len());
}
