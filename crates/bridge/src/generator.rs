//! The `generator` endpoint: synthetic FinBank transactions at a fixed
//! rate, for the quickstart and benchmarks. A source only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use async_trait::async_trait;
use causeway_core::{
    Capabilities, Consumer, Delivery, Endpoint, Error, ErrorKind, Event, InputFormat, Publisher,
    Settlement, Settler, Ticket,
};
use tokio::time::Instant;

use crate::config::GeneratorEndpoint;

/// The generator as an endpoint: each consumer it makes is a new run.
#[derive(Debug)]
pub(crate) struct GeneratorSource(pub GeneratorEndpoint);

#[async_trait]
impl Endpoint for GeneratorSource {
    fn kind(&self) -> &'static str {
        "generator"
    }

    fn capabilities(&self) -> Capabilities {
        Generator::new(self.0.clone()).capabilities()
    }

    async fn publisher(&self) -> causeway_core::Result<Box<dyn Publisher>> {
        Err(Error::new(
            ErrorKind::Config,
            "a generator endpoint can only be a source",
        ))
    }

    /// Generated events are CloudEvents whatever `format` says.
    async fn consumer(&self, _format: InputFormat) -> causeway_core::Result<Box<dyn Consumer>> {
        Ok(Box::new(Generator::new(self.0.clone())))
    }

    async fn ping(&self) -> causeway_core::Result<()> {
        Ok(())
    }
}

/// Synthetic FinBank transactions at a fixed rate; acks are accepted and forgotten.
struct Generator {
    config: GeneratorEndpoint,
    run: String,
    next: u64,
    started: Instant,
    settler: Arc<dyn Settler>,
}

struct Forget;

#[async_trait]
impl Settler for Forget {
    async fn settle(&self, _items: Vec<(u64, Settlement)>) -> causeway_core::Result<()> {
        Ok(())
    }
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl Generator {
    fn new(config: GeneratorEndpoint) -> Self {
        Generator {
            config,
            // Ids are unique per run, so a restarted bridge is not taken for a replay.
            run: format!(
                "{:x}-{}",
                chrono::Utc::now().timestamp_millis(),
                RUNS.fetch_add(1, AtomicOrdering::Relaxed)
            ),
            next: 0,
            started: Instant::now(),
            settler: Arc::new(Forget),
        }
    }

    fn event(&self, n: u64) -> Event {
        let account = n % u64::from(self.config.keys.max(1));
        let amount = (n * 7919) % 100_000;
        let mut payload =
            format!(r#"{{"account":"acct-{account}","amount_cents":{amount},"currency":"EUR"}}"#)
                .into_bytes();
        payload.resize(payload.len().max(self.config.payload_bytes), b' ');
        Event::new(
            format!("{}-{n}", self.run),
            "causeway://generator/finbank",
            "finbank.transaction.created",
        )
        .with_key(format!("acct-{account}"))
        .with_content_type("application/json")
        .with_payload(payload)
    }
}

#[async_trait]
impl Consumer for Generator {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_message_bytes: usize::MAX,
            max_batch: usize::MAX,
            ..Capabilities::default()
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> causeway_core::Result<Vec<Delivery>> {
        let rate = f64::from(self.config.rate.max(1));
        let due = |started: Instant| (started.elapsed().as_secs_f64() * rate) as u64;
        if due(self.started) <= self.next {
            let until_next = Duration::from_secs_f64((self.next + 1) as f64 / rate)
                .saturating_sub(self.started.elapsed());
            tokio::time::sleep(until_next.min(wait)).await;
        }
        let available = due(self.started).saturating_sub(self.next).min(max as u64);
        let batch = (0..available)
            .map(|i| {
                let n = self.next + i;
                Delivery::new(self.event(n), Ticket::new(self.settler.clone(), n, None, 1))
            })
            .collect();
        self.next += available;
        Ok(batch)
    }
}
