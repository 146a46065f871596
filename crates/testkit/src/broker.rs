//! Broker scenarios: every adapter runs all of them against its real broker.
//!
//! Each takes a [`BrokerHarness`] and panics with a message on failure.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use causeway_core::{
    Capabilities, ErrorKind, Event, InputFormat, Ordering, Publisher, RetryPolicy,
    RetryingPublisher, Settlement, Status, dead_letter, settle_all,
};

use crate::harness::{BrokerHarness, Foreign};
use crate::support::{collect, events, not_applicable, receive_and_ack};

/// How long a scenario waits for events it expects.
const RECEIVE: Duration = Duration::from_secs(30);

/// How long a scenario waits to be sure nothing more arrives: past the ack
/// timeout, so an unsettled or un-acked delivery would have come back.
fn quiet(h: &dyn BrokerHarness) -> Duration {
    h.ack_timeout() + Duration::from_secs(1)
}

fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// Publishes `events` with the harness's publisher, in batches it takes;
/// every one must be stored.
pub async fn publish_all(h: &dyn BrokerHarness, destination: &str, events: &[Event]) {
    let publisher = h.publisher().await.expect("publisher");
    let batch = h.capabilities().max_batch.max(1);
    for chunk in events.chunks(batch) {
        let outcomes = publisher
            .publish(destination, chunk)
            .await
            .expect("publish failed");
        assert_eq!(outcomes.len(), chunk.len(), "one outcome per event");
        for (event, outcome) in chunk.iter().zip(outcomes) {
            if let Err(e) = outcome {
                panic!("{}: publishing `{}` failed: {e}", h.name(), event.id);
            }
        }
    }
}

/// Every attribute of an event survives the trip: all optional attributes,
/// unicode extension values, a payload of all 256 byte values, an empty
/// payload with no optional attribute, and a payload of 1 MiB or the
/// declared maximum size.
pub async fn round_trip_every_field(h: &dyn BrokerHarness) {
    let dest = h.destination("round-trip").await.expect("destination");
    let full = Event::new(
        "rt-full",
        "kafka://onprem/transactions-3",
        "finbank.transaction.created",
    )
    .with_key("acct-42")
    .with_subject("accounts/42")
    .with_content_type("application/octet-stream")
    .with_header(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .with_header("region", "grüße aus Zürich — 東京 ✓ \"quoted\" 100%")
    .with_payload((0..=255u8).collect::<Vec<u8>>());
    let mut full = full;
    full.data_schema = Some("https://schemas.example/tx/v1.json".into());
    let minimal =
        Event::new("rt-empty", "causeway://testkit", "causeway.test.empty").with_time(None);
    let mut large =
        Event::new("rt-large", "causeway://testkit", "causeway.test.large").with_key("big");
    let room = h
        .capabilities()
        .max_message_bytes
        .saturating_sub(large.encoded_len());
    let size = room.min(1024 * 1024);
    large.payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let sent = [full, minimal, large];
    for event in &sent {
        publish_all(h, &dest, std::slice::from_ref(event)).await;
    }

    let mut consumer = h.consumer(&dest, "round-trip").await.expect("consumer");
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE).await;
    assert_eq!(
        got.len(),
        sent.len(),
        "{}: received {:?}",
        h.name(),
        ids(&got)
    );
    for expected in &sent {
        let actual = got
            .iter()
            .find(|e| e.id == expected.id)
            .unwrap_or_else(|| panic!("{}: `{}` never arrived", h.name(), expected.id));
        assert_eq!(
            actual,
            expected,
            "{}: `{}` changed on the way",
            h.name(),
            expected.id
        );
    }
    println!(
        "{}: round trip kept every field, large payload {size} bytes",
        h.name()
    );
}

/// A publisher connected ahead of its first publish (what a route does
/// when it starts), twice, publishes as one that was not: every event
/// arrives once.
pub async fn connect_before_publish(h: &dyn BrokerHarness) {
    let dest = h.destination("connect").await.expect("destination");
    let sent = events("connect", 20, 0);
    let mut consumer = h.consumer(&dest, "connect").await.expect("consumer");
    let publisher = h.publisher().await.expect("publisher");
    publisher.connect().await.expect("connect");
    publisher.connect().await.expect("connect again");
    let outcomes = publisher.publish(&dest, &sent).await.expect("publish");
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{}: publish after connect: {outcomes:?}",
        h.name()
    );
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE).await;
    let unique: HashSet<&str> = ids(&got).into_iter().collect();
    assert_eq!(
        (unique.len(), got.len()),
        (sent.len(), sent.len()),
        "{}: (distinct, deliveries) after connect",
        h.name()
    );
}

/// 1,000 events published in batches of the declared size all arrive, once
/// each (published and consumed in rounds where the harness keeps queues shallow).
pub async fn batch_publish_1000(h: &dyn BrokerHarness) {
    let dest = h.destination("batch").await.expect("destination");
    let sent = events("batch", 1000, 0);
    let mut consumer = h.consumer(&dest, "batch").await.expect("consumer");
    let round = h.shallow_queue().unwrap_or(sent.len());
    let mut got = Vec::with_capacity(sent.len());
    for chunk in sent.chunks(round) {
        publish_all(h, &dest, chunk).await;
        got.extend(receive_and_ack(consumer.as_mut(), chunk.len(), RECEIVE * 2).await);
    }
    let unique: HashSet<&str> = ids(&got).into_iter().collect();
    assert_eq!(
        unique.len(),
        1000,
        "{}: {} of 1000 distinct events arrived",
        h.name(),
        unique.len()
    );
    assert_eq!(
        got.len(),
        1000,
        "{}: {} deliveries for 1000 events",
        h.name(),
        got.len()
    );
}

/// An acked event is gone: a new consumer in the group does not see it,
/// even after the ack timeout.
pub async fn ack_removes(h: &dyn BrokerHarness) {
    let dest = h.destination("ack").await.expect("destination");
    publish_all(h, &dest, &events("ack", 1, 0)).await;
    {
        let mut consumer = h.consumer(&dest, "ack").await.expect("consumer");
        let got = receive_and_ack(consumer.as_mut(), 1, RECEIVE).await;
        assert_eq!(ids(&got), ["ack-0"], "{}", h.name());
        consumer.close().await.expect("close");
    }
    let mut again = h.consumer(&dest, "ack").await.expect("consumer");
    let late = collect(again.as_mut(), 1, quiet(h)).await;
    assert!(
        late.is_empty(),
        "{}: acked event came back: {:?}",
        h.name(),
        late
    );
}

/// A nacked event comes back, after the delay where the backend supports delays.
pub async fn nack_redelivers(h: &dyn BrokerHarness) {
    let caps = h.capabilities();
    let dest = h.destination("nack").await.expect("destination");
    publish_all(h, &dest, &events("nack", 1, 0)).await;
    let mut consumer = h.consumer(&dest, "nack").await.expect("consumer");
    let first = collect(consumer.as_mut(), 1, RECEIVE).await;
    let first = first
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: nothing arrived", h.name()));
    let delay = Duration::from_secs(2);
    let nacked_at = Instant::now();
    first.nack(delay).await.expect("nack");
    let again = collect(consumer.as_mut(), 1, RECEIVE + delay).await;
    let elapsed = nacked_at.elapsed();
    let again = again
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: nacked event never came back", h.name()));
    assert_eq!(again.event.id, "nack-0");
    assert!(
        again.ticket.attempt() >= 2,
        "{}: redelivery reported attempt {}",
        h.name(),
        again.ticket.attempt()
    );
    if caps.delayed_redelivery {
        assert!(
            elapsed >= delay.mul_f32(0.9),
            "{}: declared delayed redelivery, but it came back after {elapsed:?} (< {delay:?})",
            h.name()
        );
    } else {
        not_applicable(
            &h.name(),
            "nack delay",
            "delayed_redelivery not declared; redelivery checked without the delay",
        );
    }
    again.ack().await.expect("ack");
}

/// A nacked event holds back nothing else: while it waits out a long
/// delay, events of other keys published after it arrive. What
/// `per_message_nack` declares; a backend whose nack blocks the messages
/// behind it does not declare it, and the scenario is skipped there.
pub async fn nack_holds_back_nothing_else(h: &dyn BrokerHarness) {
    if !h.capabilities().per_message_nack {
        return not_applicable(
            &h.name(),
            "nack_holds_back_nothing_else",
            "per_message_nack not declared",
        );
    }
    let dest = h.destination("nack-alone").await.expect("destination");
    publish_all(h, &dest, &events("held", 1, 1)).await;
    let mut consumer = h.consumer(&dest, "nack-alone").await.expect("consumer");
    let held = collect(consumer.as_mut(), 1, RECEIVE)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: nothing arrived", h.name()));
    held.nack(RECEIVE * 2).await.expect("nack");
    let later: Vec<Event> = events("after", 2, 0)
        .into_iter()
        .enumerate()
        .map(|(i, e)| e.with_key(format!("other-{i}")))
        .collect();
    publish_all(h, &dest, &later).await;
    let mut arrived = HashSet::new();
    let deadline = Instant::now() + RECEIVE;
    while arrived.len() < later.len() && Instant::now() < deadline {
        for d in collect(consumer.as_mut(), 1, Duration::from_secs(1)).await {
            // Without delayed redelivery the nacked one may be back already.
            if d.event.id.starts_with("after-") {
                arrived.insert(d.event.id.clone());
            }
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(
        arrived.len(),
        later.len(),
        "{}: declared per_message_nack, but with one event nacked for {:?} only {arrived:?} of the later events arrived in {RECEIVE:?}",
        h.name(),
        RECEIVE * 2
    );
}

/// A rejected event goes to the dead-letter destination with the reason.
pub async fn reject_dead_letters(h: &dyn BrokerHarness) {
    if !h.capabilities().dead_letter {
        return not_applicable(&h.name(), "reject_dead_letters", "dead_letter not declared");
    }
    let dest = h.destination("reject").await.expect("destination");
    let sent = events("reject", 2, 0);
    publish_all(h, &dest, &sent).await;
    let mut consumer = h.consumer(&dest, "reject").await.expect("consumer");
    let got = collect(consumer.as_mut(), 2, RECEIVE).await;
    assert_eq!(got.len(), 2, "{}", h.name());
    for d in got {
        if d.event.id == "reject-0" {
            d.reject("poison: amount is not a number")
                .await
                .expect("reject");
        } else {
            d.ack().await.expect("ack");
        }
    }
    let mut dlq = h.dead_letters(&dest).await.expect("dead-letter consumer");
    let dead = receive_and_ack(dlq.as_mut(), 1, RECEIVE).await;
    assert_eq!(ids(&dead), ["reject-0"], "{}", h.name());
    let d = &dead[0];
    assert_eq!(
        d.header(dead_letter::REASON),
        Some("poison: amount is not a number"),
        "{}",
        h.name()
    );
    assert!(
        d.header(dead_letter::ATTEMPTS)
            .is_some_and(|a| a.parse::<u32>().is_ok_and(|n| n >= 1))
    );
    assert!(
        d.header(dead_letter::ORIGIN).is_some(),
        "{}: no origin header",
        h.name()
    );
    assert_eq!(d.payload, sent[0].payload);
    let late = collect(consumer.as_mut(), 1, quiet(h)).await;
    assert!(
        late.is_empty(),
        "{}: rejected event was redelivered",
        h.name()
    );
}

/// A delivery neither acked nor nacked comes back after the ack timeout.
pub async fn no_ack_redelivers_after_timeout(h: &dyn BrokerHarness) {
    if !h.capabilities().ack_timeout_redelivery {
        return not_applicable(
            &h.name(),
            "no_ack_redelivers_after_timeout",
            "ack_timeout_redelivery not declared",
        );
    }
    let dest = h.destination("noack").await.expect("destination");
    publish_all(h, &dest, &events("noack", 1, 0)).await;
    let mut consumer = h.consumer(&dest, "noack").await.expect("consumer");
    let first = collect(consumer.as_mut(), 1, RECEIVE).await;
    assert_eq!(first.len(), 1, "{}", h.name());
    let received_at = Instant::now();
    let again = collect(consumer.as_mut(), 1, h.ack_timeout() * 3 + RECEIVE).await;
    let elapsed = received_at.elapsed();
    assert_eq!(
        again.len(),
        1,
        "{}: not redelivered after the ack timeout",
        h.name()
    );
    assert_eq!(again[0].event.id, "noack-0");
    assert!(
        elapsed >= h.ack_timeout() / 2,
        "{}: redelivered after {elapsed:?}, before the ack timeout {:?}",
        h.name(),
        h.ack_timeout()
    );
    drop(first);
    for d in again {
        d.ack().await.expect("ack");
    }
}

/// Events with the same key arrive in publish order.
pub async fn per_key_order(h: &dyn BrokerHarness) {
    if h.capabilities().ordering != Ordering::PerKey {
        return not_applicable(&h.name(), "per_key_order", "ordering PerKey not declared");
    }
    let dest = h.destination("order").await.expect("destination");
    let sent = events("order", 200, 5);
    publish_all(h, &dest, &sent).await;
    let mut consumer = h.consumer(&dest, "order").await.expect("consumer");
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE * 2).await;
    assert_eq!(got.len(), sent.len(), "{}", h.name());
    assert_in_key_order(h, &got);
}

/// A backend declaring `ordered_publish` writes one call's events in the
/// order given: 200 events of 5 keys in a single publish call reach a
/// consumer in each key's order. (The bridge sends a key's events to such
/// a sink together, trusting this.)
pub async fn ordered_publish_keeps_a_calls_order(h: &dyn BrokerHarness) {
    if !h.capabilities().ordered_publish {
        return not_applicable(
            &h.name(),
            "ordered_publish_keeps_a_calls_order",
            "ordered_publish not declared",
        );
    }
    let dest = h.destination("call-order").await.expect("destination");
    let sent = events("call-order", 200, 5);
    let mut consumer = h.consumer(&dest, "call-order").await.expect("consumer");
    let publisher = h.publisher().await.expect("publisher");
    let outcomes = publisher.publish(&dest, &sent).await.expect("publish");
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{}: one call of 200: {outcomes:?}",
        h.name()
    );
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE * 2).await;
    assert_eq!(got.len(), sent.len(), "{}", h.name());
    assert_in_key_order(h, &got);
}

/// A backend declaring `pipelined_order` writes calls in the order they
/// were submitted: 400 events of 5 keys in 20 calls, each submitted before
/// any is confirmed, reach a consumer in each key's order. (The bridge
/// keeps several calls of a key at such a sink, trusting this.)
pub async fn pipelined_calls_keep_their_order(h: &dyn BrokerHarness) {
    if !h.capabilities().pipelined_order {
        return not_applicable(
            &h.name(),
            "pipelined_calls_keep_their_order",
            "pipelined_order not declared",
        );
    }
    let dest = h.destination("pipelined").await.expect("destination");
    let sent = events("pipelined", 400, 5);
    let mut consumer = h.consumer(&dest, "pipelined").await.expect("consumer");
    let publisher = h.publisher().await.expect("publisher");
    let mut confirms = Vec::new();
    for call in sent.chunks(20) {
        confirms.push(publisher.submit(&dest, call).await);
    }
    for (i, answer) in futures_util::future::join_all(confirms)
        .await
        .into_iter()
        .enumerate()
    {
        let outcomes = answer.expect("submitted call");
        assert!(
            outcomes.iter().all(Result::is_ok),
            "{}: call {i} of 20: {outcomes:?}",
            h.name()
        );
    }
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE * 2).await;
    assert_eq!(got.len(), sent.len(), "{}", h.name());
    assert_in_key_order(h, &got);
}

/// Each key's events (by their `seq` header) arrived in increasing order.
fn assert_in_key_order(h: &dyn BrokerHarness, got: &[Event]) {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for e in got {
        let seq = e
            .header("seq")
            .and_then(|s| s.parse().ok())
            .expect("seq header");
        by_key
            .entry(e.key.as_deref().expect("key"))
            .or_default()
            .push(seq);
    }
    for (key, seqs) in by_key {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{}: key {key} out of order: {seqs:?}",
            h.name()
        );
    }
}

/// Calls submitted to a pipelined sink when every connection is cut under
/// them: 30 calls of 100 events go out across a slowed link (50 ms each
/// way, so that some are unanswered), the link is cut right after the
/// last, and then every call must answer within a minute (an answer that
/// never comes would stall a shard for good), each event confirmed or
/// failed. The failed ones published again, every event is at the
/// consumer; copies of events that went through but were not confirmed
/// are counted, and they are what dedup is for.
pub async fn pipelined_calls_across_a_cut(h: &dyn BrokerHarness) {
    const CALLS: usize = 30;
    const SCENARIO: &str = "pipelined_calls_across_a_cut";
    if !h.capabilities().pipelined_order {
        return not_applicable(&h.name(), SCENARIO, "pipelined_order not declared");
    }
    if !h.can_cut() {
        return not_applicable(
            &h.name(),
            SCENARIO,
            "the harness cannot cut this backend's connections",
        );
    }
    let dest = h.destination("pipelined-cut").await.expect("destination");
    let sent = events("pipelined-cut", CALLS * 100, 5);
    let mut consumer = h.consumer(&dest, "pipelined-cut").await.expect("consumer");
    let publisher = h.publisher().await.expect("publisher");
    let delayed = h.delay_link(Duration::from_millis(50)).await;
    let mut answers = Vec::new();
    for call in sent.chunks(100) {
        let confirms = tokio::time::timeout(RECEIVE, publisher.submit(&dest, call))
            .await
            .unwrap_or_else(|_| panic!("{}: a submit took over {RECEIVE:?}", h.name()));
        // Each answer is awaited from now on, to time it against the cut.
        answers.push(tokio::spawn(async move {
            let answer = confirms.await;
            (Instant::now(), answer)
        }));
    }
    let cut_at = Instant::now();
    assert!(
        h.cut_connections(Duration::from_secs(2)).await,
        "{}: nothing to cut",
        h.name()
    );
    let answers = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(answers),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: a call submitted before the cut never answered",
            h.name()
        )
    });
    h.delay_link(Duration::ZERO).await;
    let (mut unanswered_at_cut, mut failed_calls, mut confirmed) = (0, 0, 0);
    let mut again = Vec::new();
    for (call, answer) in sent.chunks(100).zip(answers) {
        let (answered_at, answer) = answer.expect("answer task");
        unanswered_at_cut += usize::from(answered_at > cut_at);
        match answer {
            Ok(outcomes) => {
                assert_eq!(
                    outcomes.len(),
                    call.len(),
                    "{}: one outcome per event",
                    h.name()
                );
                for (event, outcome) in call.iter().zip(outcomes) {
                    match outcome {
                        Ok(_) => confirmed += 1,
                        Err(_) => again.push(event.clone()),
                    }
                }
            }
            Err(_) => {
                failed_calls += 1;
                again.extend_from_slice(call);
            }
        }
    }
    if delayed {
        assert!(
            unanswered_at_cut > 0,
            "{}: every call answered before the cut; the scenario tested nothing",
            h.name()
        );
    }
    let retrying = RetryingPublisher::new(
        h.publisher().await.expect("publisher"),
        RetryPolicy {
            max_attempts: 30,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
    );
    for chunk in again.chunks(100) {
        let out = retrying.publish(&dest, chunk).await.expect("publish again");
        assert!(
            out.iter().all(Result::is_ok),
            "{}: publishing again after the cut failed: {out:?}",
            h.name()
        );
    }
    let mut seen = HashSet::new();
    let (deliveries, missing) = receive_across_a_cut(h, consumer.as_mut(), &sent, &mut seen).await;
    println!(
        "{}: {CALLS} pipelined calls across a cut{}: {unanswered_at_cut} unanswered at the cut, \
         {failed_calls} failed whole, {confirmed} of {} events confirmed, {} published again; \
         {} of them arrived, {deliveries} deliveries ({} copies)",
        h.name(),
        if delayed {
            " (50 ms each way)"
        } else {
            " (link not slowed)"
        },
        sent.len(),
        again.len(),
        seen.len(),
        deliveries.saturating_sub(seen.len()),
    );
    assert!(
        missing.is_empty(),
        "{}: lost across the cut: {} events, first {:?}",
        h.name(),
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// Two consumers in one group share the work: both get some, none gets an
/// event the other got while the first holder's lease was live, and
/// together they get all. A copy after a lease that may have lapsed (held
/// past the harness's ack timeout on a broker that redelivers then) is
/// at-least-once delivery, reported and not failed.
pub async fn consumer_group_shares_work(h: &dyn BrokerHarness) {
    if !h.capabilities().consumer_groups {
        return not_applicable(
            &h.name(),
            "consumer_group_shares_work",
            "consumer_groups not declared",
        );
    }
    let dest = h.destination("group").await.expect("destination");
    let sent = events("group", 200, 20);
    let mut a = h.consumer(&dest, "shared").await.expect("consumer a");
    let mut b = h.consumer(&dest, "shared").await.expect("consumer b");
    publish_all(h, &dest, &sent).await;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    // How long each event was held, from asking for it to its ack answered:
    // past the harness's ack timeout its lease may have lapsed, and a broker
    // that redelivers on a lapsed lease may hand it to the other consumer.
    let mut held: HashMap<String, Duration> = HashMap::new();
    let deadline = Instant::now() + RECEIVE * 2;
    while got_a.len() + got_b.len() < sent.len() && Instant::now() < deadline {
        for (consumer, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
            let asked = Instant::now();
            let batch = consumer
                .next_batch(20, Duration::from_millis(300))
                .await
                .expect("next_batch");
            // Acked together, as the bridge does: one at a time a slow
            // broker (moto under load) lets the last lease lapse first.
            let ids: Vec<String> = batch.iter().map(|d| d.event.id.clone()).collect();
            settle_all(batch.into_iter().map(|d| (d.ticket, Settlement::Ack)))
                .await
                .expect("ack");
            for id in &ids {
                let longest = held.entry(id.clone()).or_default();
                *longest = (*longest).max(asked.elapsed());
            }
            got.extend(ids);
        }
    }
    let set_a: HashSet<_> = got_a.iter().collect();
    let set_b: HashSet<_> = got_b.iter().collect();
    println!(
        "{}: group split {} / {}",
        h.name(),
        got_a.len(),
        got_b.len()
    );
    let (lapsed, both): (Vec<&&String>, Vec<&&String>) =
        set_a.intersection(&set_b).partition(|id| {
            h.capabilities().ack_timeout_redelivery
                && held.get(id.as_str()).is_some_and(|t| *t >= h.ack_timeout())
        });
    if !lapsed.is_empty() {
        println!(
            "{}: {} event(s) went to both consumers after being held past the ack timeout ({:?}): redelivered on a lapsed lease, as at-least-once allows (the broker was slow, not the group broken)",
            h.name(),
            lapsed.len(),
            h.ack_timeout()
        );
    }
    assert!(
        both.is_empty(),
        "{}: {} event(s) went to both consumers while their first holder's lease was live, e.g. {:?}",
        h.name(),
        both.len(),
        both.first()
    );
    assert_eq!(
        set_a.union(&set_b).count(),
        sent.len(),
        "{}: events missing",
        h.name()
    );
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "{}: one consumer got everything",
        h.name()
    );
}

/// A consumer that closes with some deliveries unsettled, then restarts in
/// the same group, gets everything it had not acked, and nothing it had.
pub async fn restart_resumes_without_loss(h: &dyn BrokerHarness) {
    if !h.capabilities().durable_resume {
        return not_applicable(
            &h.name(),
            "restart_resumes_without_loss",
            "durable_resume not declared",
        );
    }
    let dest = h.destination("resume").await.expect("destination");
    let sent = events("resume", 100, 0);
    publish_all(h, &dest, &sent).await;
    let mut acked = HashSet::new();
    {
        let mut first = h.consumer(&dest, "resume").await.expect("consumer");
        let got = collect(first.as_mut(), 40, RECEIVE).await;
        assert_eq!(got.len(), 40, "{}", h.name());
        let mut unsettled = Vec::new();
        for (i, d) in got.into_iter().enumerate() {
            if i < 30 {
                acked.insert(d.event.id.clone());
                d.ack().await.expect("ack");
            } else {
                unsettled.push(d);
            }
        }
        first.close().await.expect("close");
        drop(unsettled);
    }
    let mut second = h.consumer(&dest, "resume").await.expect("consumer");
    let rest = receive_and_ack(second.as_mut(), 70, RECEIVE + h.ack_timeout()).await;
    let rest_ids: HashSet<&str> = ids(&rest).into_iter().collect();
    let missing: Vec<&str> = ids(&sent)
        .into_iter()
        .filter(|id| !acked.contains(*id) && !rest_ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: lost after restart: {missing:?}",
        h.name()
    );
    let repeated: Vec<&str> = rest_ids
        .iter()
        .copied()
        .filter(|id| acked.contains(*id))
        .collect();
    assert!(
        repeated.is_empty(),
        "{}: acked events redelivered after restart: {repeated:?}",
        h.name()
    );
    let late = collect(second.as_mut(), 1, quiet(h)).await;
    assert!(late.is_empty(), "{}: extra delivery {:?}", h.name(), late);
}

/// Publishing one event id twice: the backend that declares native dedup
/// delivers it once; one that does not delivers both copies (so the
/// declaration is checked either way).
pub async fn duplicate_publish(h: &dyn BrokerHarness) {
    let dest = h.destination("dup").await.expect("destination");
    let event = events("dup", 1, 1).remove(0);
    let publisher = h.publisher().await.expect("publisher");
    for _ in 0..2 {
        let out = publisher
            .publish(&dest, std::slice::from_ref(&event))
            .await
            .expect("publish");
        out.into_iter()
            .next()
            .expect("one outcome")
            .expect("publish outcome");
    }
    let mut consumer = h.consumer(&dest, "dup").await.expect("consumer");
    // The first copy must come; a second may follow within the quiet period.
    let mut got = receive_and_ack(consumer.as_mut(), 1, RECEIVE).await;
    got.extend(receive_and_ack(consumer.as_mut(), 1, quiet(h).max(Duration::from_secs(3))).await);
    if h.capabilities().native_dedup {
        assert_eq!(
            got.len(),
            1,
            "{}: native dedup declared, {} copies delivered",
            h.name(),
            got.len()
        );
    } else {
        assert_eq!(
            got.len(),
            2,
            "{}: no native dedup declared, {} copies delivered",
            h.name(),
            got.len()
        );
    }
}

/// The same id from two sources is two events (a CloudEvents id is unique
/// only within its source): every one arrives, also where the broker
/// deduplicates, and its receipt does not say duplicate. Re-sending all of
/// them is then dropped where native dedup is declared.
pub async fn same_id_from_two_sources(h: &dyn BrokerHarness) {
    let dest = h.destination("two-sources").await.expect("destination");
    let sent: Vec<Event> = (0..20)
        .flat_map(|i| {
            ["kafka://onprem/ledger", "kafka://onprem/cards"].map(|source| {
                Event::new(format!("tx-{i}"), source, "causeway.test")
                    .with_payload(format!("{source} {i}"))
            })
        })
        .collect();
    let publisher = h.publisher().await.expect("publisher");
    let mut outcomes = Vec::new();
    for chunk in sent.chunks(h.capabilities().max_batch.max(1)) {
        outcomes.extend(publisher.publish(&dest, chunk).await.expect("publish"));
    }
    assert_eq!(outcomes.len(), sent.len(), "one outcome per event");
    for (e, o) in sent.iter().zip(&outcomes) {
        match o {
            Ok(receipt) => assert!(
                !receipt.duplicate,
                "{}: `{}` from {} was taken for a duplicate of the other source's",
                h.name(),
                e.id,
                e.source
            ),
            Err(err) => panic!("{}: publishing `{}` failed: {err}", h.name(), e.id),
        }
    }
    let mut consumer = h.consumer(&dest, "two-sources").await.expect("consumer");
    let got = receive_and_ack(consumer.as_mut(), sent.len(), RECEIVE).await;
    let pairs: HashSet<(String, String)> = got
        .iter()
        .map(|e| (e.source.clone(), e.id.clone()))
        .collect();
    assert_eq!(
        pairs.len(),
        sent.len(),
        "{}: {} of {} (source, id) pairs arrived",
        h.name(),
        pairs.len(),
        sent.len()
    );
}

/// A message from a producer that knows nothing of CloudEvents (the seed's
/// `ProduceAsync(topic, value, key)`), with headers, among events: read as
/// it is, a raw message carrying its payload byte for byte, every header
/// with its value, and its key where the broker keeps one; acked, it does
/// not come back.
pub async fn foreign_message_is_carried_raw(h: &dyn BrokerHarness) {
    let dest = h.destination("foreign").await.expect("destination");
    let payload = br#"{"AccountId": 7, "Amount": 12.50, "note": "from a legacy producer"}"#;
    let headers = [
        ("x-origin", "core-banking"),
        ("x-account", "acct-7"),
        ("trace-id", "4bf92f3577b34da6"),
    ];
    let message = Foreign {
        payload,
        key: Some("acct-7"),
        headers: &headers,
        content_type: None,
    };
    if !foreign_among_events(h, &dest, message, "foreign_message_is_carried_raw").await {
        return;
    }
    let mut consumer = h.consumer(&dest, "foreign").await.expect("consumer");
    let got = collect(consumer.as_mut(), 3, RECEIVE).await;
    assert!(
        got.iter().all(|d| d.undecodable.is_none()),
        "{}: a plain message is not undecodable: {:?}",
        h.name(),
        got.iter().map(|d| &d.undecodable).collect::<Vec<_>>()
    );
    let (raw, events): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.event.is_raw());
    assert_eq!(
        (raw.len(), events.len()),
        (1, 2),
        "{}: the foreign message raw and the two events, each once",
        h.name()
    );
    let e = &raw[0].event;
    assert_eq!(e.payload.as_ref(), payload, "{}: payload changed", h.name());
    for (name, value) in headers {
        let got = e.native.header(name).map(|v| v.to_bytes().into_owned());
        assert_eq!(
            got.as_deref(),
            Some(value.as_bytes()),
            "{}: header `{name}` of {:?}",
            h.name(),
            e.native.headers
        );
    }
    if h.foreign_keys() {
        assert_eq!(e.key.as_deref(), Some("acct-7"), "{}: key", h.name());
    }
    assert!(
        !e.id.is_empty(),
        "{}: a raw message has an identity",
        h.name()
    );
    ack_and_expect_nothing_more(h, consumer.as_mut(), raw.into_iter().chain(events)).await;
}

/// A consumer reading CloudEvents only hands a foreign message out as
/// undecodable, with its payload byte for byte, among the events around
/// it, for its route to dead-letter; acked, it does not come back. (Before
/// adapters handed such messages out they settled them themselves, and
/// where no dead-letter destination was configured they were gone.)
pub async fn undecodable_message_is_handed_out(h: &dyn BrokerHarness) {
    let dest = h.destination("undecodable").await.expect("destination");
    let payload = b"{\"amount\": 12, \"note\": \"from a legacy producer\"}";
    let message = Foreign {
        payload,
        ..Foreign::default()
    };
    if !foreign_among_events(h, &dest, message, "undecodable_message_is_handed_out").await {
        return;
    }
    let mut consumer = h
        .consumer_reading(&dest, "undecodable", InputFormat::CloudEvents)
        .await
        .expect("consumer");
    let got = collect(consumer.as_mut(), 3, RECEIVE).await;
    let (undecodable, events): (Vec<_>, Vec<_>) =
        got.into_iter().partition(|d| d.undecodable.is_some());
    assert_eq!(
        (undecodable.len(), events.len()),
        (1, 2),
        "{}: the foreign message and the two events, each once",
        h.name()
    );
    let d = &undecodable[0];
    assert_eq!(
        d.event.payload.as_ref(),
        payload,
        "{}: payload changed",
        h.name()
    );
    assert_eq!(d.event.kind, dead_letter::UNDECODABLE_TYPE);
    assert!(
        d.undecodable.as_deref().is_some_and(|r| !r.is_empty()),
        "{}: no reason",
        h.name()
    );
    ack_and_expect_nothing_more(h, consumer.as_mut(), undecodable.into_iter().chain(events)).await;
}

/// A CloudEvent in structured mode (the whole event as JSON, content type
/// `application/cloudevents+json`), as a producer using a CloudEvents SDK
/// writes it, among binary-mode events: read as that CloudEvent, its data
/// byte for byte the payload, its other headers kept; acked, it does not
/// come back.
pub async fn structured_cloudevent_is_read(h: &dyn BrokerHarness) {
    let dest = h.destination("structured").await.expect("destination");
    let data = br#"{"AccountId": 7, "Amount": 12.50}"#;
    let payload = format!(
        r#"{{"specversion": "1.0", "id": "structured-1", "source": "/finbank/ledger",
            "type": "finbank.transaction.created", "subject": "acct-7",
            "time": "2026-11-30T12:00:00Z", "retries": 2,
            "data": {}}}"#,
        String::from_utf8_lossy(data)
    );
    let message = Foreign {
        payload: payload.as_bytes(),
        headers: &[("x-tenant", "eu")],
        content_type: Some("application/cloudevents+json; charset=utf-8"),
        ..Foreign::default()
    };
    if !foreign_among_events(h, &dest, message, "structured_cloudevent_is_read").await {
        return;
    }
    let mut consumer = h.consumer(&dest, "structured").await.expect("consumer");
    let got = collect(consumer.as_mut(), 3, RECEIVE).await;
    let name = h.name();
    assert!(
        got.iter()
            .all(|d| d.undecodable.is_none() && !d.event.is_raw()),
        "{name}: every message is a CloudEvent: {:?}",
        got.iter()
            .map(|d| (&d.event.id, d.event.format, &d.undecodable))
            .collect::<Vec<_>>()
    );
    let structured: Vec<_> = got
        .iter()
        .filter(|d| d.event.id == "structured-1")
        .collect();
    assert_eq!(
        (structured.len(), got.len()),
        (1, 3),
        "{name}: the structured event and the two events, each once"
    );
    let e = &structured[0].event;
    assert_eq!(e.source, "/finbank/ledger", "{name}");
    assert_eq!(e.kind, "finbank.transaction.created", "{name}");
    assert_eq!(e.subject.as_deref(), Some("acct-7"), "{name}");
    assert_eq!(e.header("retries"), Some("2"), "{name}");
    assert_eq!(e.payload.as_ref(), data, "{name}: data changed");
    assert_eq!(
        e.content_type.as_deref(),
        Some("application/json"),
        "{name}: the JSON format's data is JSON"
    );
    assert_eq!(
        e.native
            .header("x-tenant")
            .map(|v| v.to_bytes().into_owned()),
        Some(b"eu".to_vec()),
        "{name}: a header beside the event: {:?}",
        e.native.headers
    );
    ack_and_expect_nothing_more(h, consumer.as_mut(), got).await;
}

/// Writes `message` with the broker's own client, then two events with the
/// adapter; false (the scenario reported as skipped) where the backend has
/// no foreign producer.
async fn foreign_among_events(
    h: &dyn BrokerHarness,
    dest: &str,
    message: Foreign<'_>,
    scenario: &str,
) -> bool {
    if !h
        .publish_foreign(dest, message)
        .await
        .expect("foreign publish")
    {
        not_applicable(&h.name(), scenario, "no foreign producer");
        return false;
    }
    publish_all(h, dest, &events("around", 2, 0)).await;
    true
}

/// Acks `got`; then nothing may come back.
async fn ack_and_expect_nothing_more(
    h: &dyn BrokerHarness,
    consumer: &mut dyn causeway_core::Consumer,
    got: impl IntoIterator<Item = causeway_core::Delivery>,
) {
    let tickets = got
        .into_iter()
        .map(|d| (d.ticket, causeway_core::Settlement::Ack));
    causeway_core::settle_all(tickets).await.expect("ack");
    let again = collect(consumer, 1, quiet(h)).await;
    assert!(again.is_empty(), "{}: redelivered after its ack", h.name());
}

/// A raw message through the adapter and back: payload of every byte
/// value, key, headers of every type causeway knows, a broker property.
/// Each comes back with the same name and the same bytes
/// (`Value::to_bytes`): the type may change where the broker has fewer
/// types (docs/headers.md), the value may not.
pub async fn raw_round_trip(h: &dyn BrokerHarness) {
    use causeway_core::message::property;
    use causeway_core::{Format, Header, Value};
    let dest = h.destination("raw").await.expect("destination");
    let mut sent = Event::new("raw-1", "test://raw", "")
        .with_time(None)
        .with_key("acct-7")
        .with_payload((0..=255u8).collect::<Vec<u8>>());
    sent.format = Format::Raw;
    sent.native.key = Some(Bytes::from_static(b"acct-7"));
    sent.native.headers = vec![
        Header::text("region", "grüße aus Zürich \"HQ\" 100%"),
        Header::new("count", Value::Int(42)),
        Header::new("flag", Value::Bool(true)),
        Header::new("rate", Value::Float(0.5)),
        Header::new("tag", Value::Bytes(Bytes::from_static(b"plain-bytes"))),
    ];
    sent.native
        .properties
        .push(Header::text(property::CORRELATION_ID, "c-1"));
    publish_all(h, &dest, std::slice::from_ref(&sent)).await;
    let mut consumer = h.consumer(&dest, "raw").await.expect("consumer");
    let got = collect(consumer.as_mut(), 1, RECEIVE).await;
    assert_eq!(got.len(), 1, "{}: the raw message, once", h.name());
    let d = got.into_iter().next().expect("one");
    assert!(d.undecodable.is_none(), "{}: {:?}", h.name(), d.undecodable);
    let e = &d.event;
    assert!(e.is_raw(), "{}: read back as a CloudEvent", h.name());
    assert_eq!(e.payload, sent.payload, "{}: payload", h.name());
    assert_eq!(e.key.as_deref(), Some("acct-7"), "{}: key", h.name());
    for header in &sent.native.headers {
        let got = e
            .native
            .header(&header.name)
            .map(|v| v.to_bytes().into_owned());
        assert_eq!(
            got.as_deref(),
            Some(header.value.to_bytes().as_ref()),
            "{}: header `{}` of {:?}",
            h.name(),
            header.name,
            e.native.headers
        );
    }
    let correlation = e
        .native
        .property(property::CORRELATION_ID)
        .or_else(|| e.native.header(property::CORRELATION_ID));
    assert_eq!(
        correlation.map(|v| v.to_bytes().into_owned()).as_deref(),
        Some(&b"c-1"[..]),
        "{}: correlation id, a property or a header",
        h.name()
    );
    causeway_core::settle_all([(d.ticket, causeway_core::Settlement::Ack)])
        .await
        .expect("ack");
}

/// A raw message written by the adapter, read at the broker with its own
/// client (rdkafka, lapin, async-nats, aws-sdk-sqs, the Service Bus REST
/// API) as a consumer that knows nothing of causeway: the payload byte for
/// byte, each header under its name with its bytes and the type
/// docs/headers.md gives for this broker, the key where the broker has a
/// place for it (else header `causeway-key`), the correlation id likewise,
/// and nothing else added.
pub async fn raw_is_read_by_a_foreign_consumer(h: &dyn BrokerHarness) {
    use causeway_core::message::{KEY_HEADER, property};
    use causeway_core::{Format, Header, Value};
    let dest = h.destination("foreign-read").await.expect("destination");
    let mut sent = Event::new("foreign-read-1", "test://raw", "")
        .with_time(None)
        .with_key("acct-7")
        .with_payload(&br#"{"AccountId":7,"Amount":12.50}"#[..]);
    sent.format = Format::Raw;
    sent.native.key = Some(Bytes::from_static(b"acct-7"));
    let booked = chrono::DateTime::from_timestamp(1_795_000_000, 0).expect("a time");
    sent.native.headers = vec![
        Header::text("origin", "core-banking eu-west 100%"),
        Header::new("count", Value::Int(42)),
        Header::new("flag", Value::Bool(true)),
        Header::new("rate", Value::Float(0.5)),
        Header::new("amount", Value::Decimal("12.50".into())),
        Header::new("booked", Value::Time(booked)),
        Header::new("tag", Value::Bytes(Bytes::from_static(b"plain-bytes"))),
    ];
    sent.native
        .properties
        .push(Header::text(property::CORRELATION_ID, "c-1"));
    publish_all(h, &dest, std::slice::from_ref(&sent)).await;
    let Some(read) = h.read_foreign(&dest, RECEIVE).await.expect("foreign read") else {
        not_applicable(
            &h.name(),
            "raw_is_read_by_a_foreign_consumer",
            "no foreign consumer",
        );
        return;
    };
    let name = h.name();
    assert_eq!(read.payload, sent.payload.as_ref(), "{name}: payload");
    let typed = |header: &Header| {
        (
            header.name.clone(),
            h.foreign_type(&header.value),
            header.value.to_bytes().into_owned(),
        )
    };
    let mut expected: Vec<_> = sent.native.headers.iter().map(typed).collect();
    match &read.key {
        Some(k) => assert_eq!(k.as_slice(), b"acct-7", "{name}: key"),
        None => expected.push(typed(&Header::text(KEY_HEADER, "acct-7"))),
    }
    match read
        .properties
        .iter()
        .find(|p| p.name == property::CORRELATION_ID)
    {
        Some(p) => assert_eq!(p.value.to_bytes().as_ref(), b"c-1", "{name}"),
        None => expected.push(typed(&Header::text(property::CORRELATION_ID, "c-1"))),
    }
    let mut got: Vec<_> = read
        .headers
        .iter()
        .map(|header| {
            (
                header.name.clone(),
                header.value.type_name(),
                header.value.to_bytes().into_owned(),
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "{name}: the headers a foreign consumer reads (name, type, bytes)"
    );
}

/// An event over the declared size fails alone, permanently, with `TooLarge`;
/// the rest of its batch is delivered.
pub async fn oversize_event_is_rejected_permanently(h: &dyn BrokerHarness) {
    let caps: Capabilities = h.capabilities();
    let dest = h.destination("oversize").await.expect("destination");
    let small = events("oversize", 1, 0).remove(0);
    let big = Event::new("oversize-big", "causeway://testkit", "causeway.test")
        .with_payload(vec![7u8; caps.max_message_bytes + 1]);
    let publisher = h.publisher().await.expect("publisher");
    let out = publisher
        .publish(&dest, &[small.clone(), big])
        .await
        .expect("publish");
    assert_eq!(out.len(), 2);
    assert!(
        out[0].is_ok(),
        "{}: small event failed: {:?}",
        h.name(),
        out[0]
    );
    let err = out[1].as_ref().expect_err("oversize event was accepted");
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{}: {err}", h.name());
    assert_eq!(err.status(), Status::Permanent, "{}: {err}", h.name());
    let mut consumer = h.consumer(&dest, "oversize").await.expect("consumer");
    let mut got = receive_and_ack(consumer.as_mut(), 1, RECEIVE).await;
    got.extend(receive_and_ack(consumer.as_mut(), 1, quiet(h).max(Duration::from_secs(3))).await);
    assert_eq!(ids(&got), [small.id.as_str()], "{}", h.name());
}

/// An invalid event fails alone with `InvalidEvent` naming the field.
pub async fn invalid_event_is_rejected(h: &dyn BrokerHarness) {
    let dest = h.destination("invalid").await.expect("destination");
    let good = events("invalid", 1, 0).remove(0);
    let bad = Event::new("", "causeway://testkit", "causeway.test");
    let publisher = h.publisher().await.expect("publisher");
    let out = publisher
        .publish(&dest, &[good, bad])
        .await
        .expect("publish");
    assert!(out[0].is_ok(), "{}: {:?}", h.name(), out[0]);
    let err = out[1].as_ref().expect_err("invalid event was accepted");
    assert_eq!(err.kind(), ErrorKind::InvalidEvent, "{}: {err}", h.name());
    assert!(err.to_string().contains("`id`"), "{}: {err}", h.name());
}

/// All connections cut mid-stream: the publisher (with the retry wrapper)
/// and the consumer reconnect by themselves and every event arrives.
pub async fn reconnect_after_cut(h: &dyn BrokerHarness) {
    let dest = h.destination("reconnect").await.expect("destination");
    let sent = events("reconnect", 100, 0);
    let publisher = RetryingPublisher::new(
        h.publisher().await.expect("publisher"),
        RetryPolicy {
            max_attempts: 30,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
    );
    let mut consumer = h.consumer(&dest, "reconnect").await.expect("consumer");
    let (before, after) = sent.split_at(50);
    let first = publisher
        .publish(&dest, before)
        .await
        .expect("publish before cut");
    assert!(first.iter().all(Result::is_ok));
    let got = receive_and_ack(consumer.as_mut(), 25, RECEIVE).await;
    if !h.cut_connections(Duration::from_secs(2)).await {
        not_applicable(
            &h.name(),
            "reconnect_after_cut (the cut itself)",
            "the harness cannot cut this backend's connections; publishing and receiving checked without a cut",
        );
    }
    let second = publisher
        .publish(&dest, after)
        .await
        .expect("publish after cut");
    for (e, o) in after.iter().zip(&second) {
        assert!(
            o.is_ok(),
            "{}: `{}` not published after reconnect: {:?}",
            h.name(),
            e.id,
            o
        );
    }
    let mut seen: HashSet<String> = got.iter().map(|e| e.id.clone()).collect();
    let (deliveries, missing) = receive_across_a_cut(h, consumer.as_mut(), &sent, &mut seen).await;
    assert!(
        missing.is_empty(),
        "{}: lost across the cut: {missing:?}",
        h.name()
    );
    println!(
        "{}: {} deliveries for {} events across the cut",
        h.name(),
        got.len() + deliveries,
        sent.len()
    );
}

/// Receives until every event of `sent` is in `seen` or a minute passed,
/// acking each delivery (an ack lost in a cut means a redelivery, which
/// the set absorbs). Returns the deliveries made and the ids missing.
async fn receive_across_a_cut<'a>(
    h: &dyn BrokerHarness,
    consumer: &mut dyn causeway_core::Consumer,
    sent: &'a [Event],
    seen: &mut HashSet<String>,
) -> (usize, Vec<&'a str>) {
    let deadline = Instant::now() + RECEIVE * 2;
    let mut deliveries = 0;
    while seen.len() < sent.len() && Instant::now() < deadline {
        match consumer.next_batch(500, Duration::from_secs(1)).await {
            Ok(batch) => {
                for d in batch {
                    deliveries += 1;
                    seen.insert(d.event.id.clone());
                    let _ = d.ack().await;
                }
            }
            // The consumer may report the cut; it must recover on its own.
            Err(e) => println!("{}: consumer reported during the cut: {e}", h.name()),
        }
    }
    let missing = ids(sent)
        .into_iter()
        .filter(|id| !seen.contains(*id))
        .collect();
    (deliveries, missing)
}

/// The fault test: 10,000 events (a few hundred where the backend is an
/// emulator that slows as a queue deepens, outside the long mode) stream through while every connection is
/// cut once in the middle (outage of 3 s). Every event arrives; after an
/// idempotent handler (the application's dedup) each is handled exactly once.
pub async fn cut_mid_stream(h: &dyn BrokerHarness) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

    use causeway_core::memory::MemoryDedupStore;
    use causeway_core::{Handled, IdempotentHandler};

    if !h.can_cut() {
        return not_applicable(
            &h.name(),
            "cut_mid_stream",
            "the harness cannot cut this backend's connections",
        );
    }
    // Emulators that slow as a queue deepens take a few hundred here, and
    // 10,000 in the long mode (`cargo xtask test --full`).
    let total: usize = match h.shallow_queue() {
        Some(n) if !crate::support::full() => n,
        _ => 10_000,
    };
    let dest = h.destination("cut-mid-stream").await.expect("destination");
    let sent = events("cut", total, 0);
    let publisher = RetryingPublisher::new(
        h.publisher().await.expect("publisher"),
        RetryPolicy {
            max_attempts: 60,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
    );
    let mut consumer = h.consumer(&dest, "cut").await.expect("consumer");
    let handled = Arc::new(AtomicUsize::new(0));
    let handler = {
        let handled = handled.clone();
        IdempotentHandler::new(MemoryDedupStore::new(), "cut-test", move |_e: Event| {
            let handled = handled.clone();
            async move {
                handled.fetch_add(1, AtomicOrdering::SeqCst);
                Ok(())
            }
        })
    };
    let receiving = tokio::spawn(async move {
        let (mut deliveries, mut skipped, mut errors) = (0usize, 0usize, 0usize);
        let mut seen = HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        while seen.len() < total && Instant::now() < deadline {
            match consumer.next_batch(500, Duration::from_secs(1)).await {
                Ok(batch) => {
                    for d in batch {
                        deliveries += 1;
                        seen.insert(d.event.id.clone());
                        match handler.handle_delivery(d).await {
                            Ok(Handled::Ran(())) => {}
                            Ok(_) => skipped += 1,
                            // An ack lost in the cut: the redelivery is absorbed by the handler.
                            Err(_) => errors += 1,
                        }
                    }
                }
                Err(_) => errors += 1,
            }
        }
        (seen, deliveries, skipped, errors)
    });
    let (first, second) = sent.split_at(total / 2);
    for chunk in first.chunks(500) {
        let out = publisher.publish(&dest, chunk).await.expect("publish");
        assert!(
            out.iter().all(Result::is_ok),
            "{}: publish failed before the cut",
            h.name()
        );
    }
    assert!(
        h.cut_connections(Duration::from_secs(3)).await,
        "{}: nothing to cut",
        h.name()
    );
    for chunk in second.chunks(500) {
        let out = publisher
            .publish(&dest, chunk)
            .await
            .expect("publish after cut");
        for (e, o) in chunk.iter().zip(&out) {
            assert!(
                o.is_ok(),
                "{}: `{}` not published across the cut: {:?}",
                h.name(),
                e.id,
                o
            );
        }
    }
    let (seen, deliveries, skipped, errors) = receiving.await.expect("receiver");
    let missing = total - seen.len();
    println!(
        "{}: cut mid-stream: {} of {total} events arrived, {deliveries} deliveries, handler ran {} times, \
         {skipped} duplicates suppressed, {errors} errors reported during the cut",
        h.name(),
        seen.len(),
        handled.load(AtomicOrdering::SeqCst)
    );
    assert_eq!(
        missing,
        0,
        "{}: {missing} events lost across the cut",
        h.name()
    );
    assert_eq!(
        handled.load(AtomicOrdering::SeqCst),
        total,
        "{}: handler did not run exactly once per event",
        h.name()
    );
}

/// Four concurrent publishes of 1,000 events each (of a quarter of what an
/// emulator that slows with depth takes) all complete: see
/// [`concurrent_batches_complete`].
pub async fn concurrent_batches(h: &dyn BrokerHarness) {
    let per_batch = h.shallow_queue().map_or(1_000, |n| (n / 4).max(1));
    concurrent_batches_complete(h, 4, per_batch).await;
}

/// `batches` publishes of `per_batch` events each, at once from one
/// publisher, all complete within two minutes with every event confirmed.
/// An adapter that sends a batch before awaiting its confirms, with a
/// window of unconfirmed messages, must not let concurrent batches hold
/// parts of the window while each waits for more (they would wait forever).
/// Adapters with a window call it with batches that together exceed it;
/// the conformance suite runs [`concurrent_batches`] for every adapter.
pub async fn concurrent_batches_complete(h: &dyn BrokerHarness, batches: usize, per_batch: usize) {
    let destination = h.destination("concurrent").await.expect("destination");
    let publisher: std::sync::Arc<dyn causeway_core::Publisher> =
        h.publisher().await.expect("publisher").into();
    let tasks: Vec<_> = (0..batches)
        .map(|b| {
            let (publisher, destination) = (publisher.clone(), destination.clone());
            tokio::spawn(async move {
                let sent = events(&format!("concurrent-{b}"), per_batch, 0);
                publisher.publish(&destination, &sent).await
            })
        })
        .collect();
    let all = tokio::time::timeout(
        Duration::from_secs(120),
        futures_util::future::join_all(tasks),
    )
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{}: {batches} concurrent batches of {per_batch} did not complete within 120 s",
            h.name()
        )
    });
    for outcome in all {
        let receipts = outcome.expect("task").expect("publish");
        assert_eq!(receipts.len(), per_batch, "{}", h.name());
        assert!(
            receipts.iter().all(Result::is_ok),
            "{}: {:?}",
            h.name(),
            receipts.iter().find(|r| r.is_err())
        );
    }
}
