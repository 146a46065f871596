//! Memory of one `causeway run` process at a steady 20,000 events/s: a
//! generator (1 KiB payloads, 1,000 keys) → NATS JetStream, direct mode.
//!
//! Two cases, one after the other in the same run: the route without dedup
//! (the baseline: everything but the dedup store) and with SQLite dedup
//! (the defaults). For each it samples the process's resident memory every
//! second and prints the peak (`VmHWM`), the resident memory when warm-up
//! ends (a quarter of the run), at the end, and how many events it
//! published, so that a rate the process could not hold is seen.
//!
//! A third case is durable mode at full speed, Kafka → NATS: the bench
//! first fills a fresh topic (3 partitions) with `KAFKA_EVENTS` events of
//! 1 KiB, then the process stores every event and forwards it as fast as it
//! can; the case ends when all were published (or at the time limit).
//!
//! Not criterion: a sample is minutes long. `cargo xtask bench rss` runs
//! each case for 10 minutes (the issue's measure); `-- --seconds 60` a
//! shorter look. Needs NATS and Kafka from `cargo xtask services up`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RATE: u64 = 20_000;

/// Events the durable case moves from Kafka.
const KAFKA_EVENTS: u64 = 300_000;

struct Case {
    name: &'static str,
    /// The route's source: the generator at `RATE`, or a filled Kafka topic.
    kafka: bool,
    route: &'static str,
}

const CASES: [Case; 3] = [
    Case {
        name: "direct, no dedup (baseline)",
        kafka: false,
        route: "mode = \"direct\"\ndedup = false",
    },
    Case {
        name: "direct, SQLite dedup (defaults)",
        kafka: false,
        route: "mode = \"direct\"",
    },
    Case {
        name: "durable, Kafka at full speed",
        kafka: true,
        route: "mode = \"durable\"",
    },
];

/// What one case measured.
struct Measured {
    peak_kib: u64,
    warm_kib: u64,
    end_kib: u64,
    published: u64,
    seconds: f64,
}

fn main() {
    let seconds = seconds_from_args();
    let nats = std::env::var("CAUSEWAY_NATS_URL").unwrap_or_else(|_| {
        panic!("CAUSEWAY_NATS_URL is not set: start NATS with `cargo xtask services up` (or run `cargo xtask bench rss`)")
    });
    let kafka = std::env::var("CAUSEWAY_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("CAUSEWAY_KAFKA_BROKERS is not set: start Kafka with `cargo xtask services up` (or run `cargo xtask bench rss`)")
    });
    let binary = env!("CARGO_BIN_EXE_causeway-under-test");
    println!(
        "rss: one `causeway run` → NATS, from a generator at {RATE}/s or from Kafka \
         ({KAFKA_EVENTS} events, as fast as it goes), at most {seconds} s per case, RSS sampled every second"
    );
    let mut rows = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let m = run_case(binary, &nats, &kafka, case, i, seconds);
        println!(
            "rss/{}: peak {:.1} MiB, at warm-up end {:.1} MiB, at end {:.1} MiB, {} events in {:.0} s ({:.0}/s)",
            case.name,
            mib(m.peak_kib),
            mib(m.warm_kib),
            mib(m.end_kib),
            m.published,
            m.seconds,
            m.published as f64 / m.seconds
        );
        rows.push((case.name, m));
    }
    println!("\n| case | events/s | peak RSS | RSS after warm-up | RSS at end |");
    println!("|---|---|---|---|---|");
    for (name, m) in rows {
        println!(
            "| {name} | {:.1}k | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            m.published as f64 / m.seconds / 1000.0,
            mib(m.peak_kib),
            mib(m.warm_kib),
            mib(m.end_kib)
        );
    }
}

/// `--seconds N` among the arguments cargo passes (it adds `--bench`).
fn seconds_from_args() -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse().expect("--seconds takes a whole number"))
        .unwrap_or(600)
}

fn run_case(
    binary: &str,
    nats: &str,
    kafka: &str,
    case: &Case,
    index: usize,
    seconds: u64,
) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    );
    // A stream of its own per case and run; it keeps 30 s, so the server's
    // disk use stays bounded over a long run.
    let stream = format!("rss-{}-{index}", std::process::id());
    let source = if case.kafka {
        fill_kafka(kafka, &stream);
        format!(
            "[endpoints.src.kafka]\nbrokers = \"{kafka}\"\n\
             consumer = {{ group = \"{stream}\", topics = [\"{stream}\"] }}\n"
        )
    } else {
        format!("[endpoints.src.generator]\nrate = {RATE}\nkeys = 1000\npayload_bytes = 1024\n")
    };
    let config = format!(
        r#"[store]
sqlite = "{store}"

[metrics]
listen = "{listen}"
summary_every = "60s"

{source}
[endpoints.nats.nats]
url = "{nats}"
stream = {{ name = "{stream}", subjects = ["{stream}.out"], max_age = "30s", duplicate_window = "10s" }}

[routes.r]
source = "src"
sink = "nats"
destination = "{stream}.out"
{route}
"#,
        store = dir.path().join("store.db").display(),
        route = case.route,
    );
    let path = dir.path().join("rss.toml");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .expect("write config");
    let log = std::fs::File::create(dir.path().join("causeway.log")).expect("log file");
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&path)
        .env("CAUSEWAY_LOG", "warn")
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start causeway");
    let metrics = format!("http://{listen}/metrics");
    let started = Instant::now();
    let warm_at = Duration::from_secs(seconds / 4);
    let mut warm_kib = 0;
    let mut end_kib = 0;
    let mut ticks = 0;
    let mut moved = 0;
    while started.elapsed() < Duration::from_secs(seconds) && !(case.kafka && moved >= KAFKA_EVENTS)
    {
        std::thread::sleep(Duration::from_secs(1));
        ticks += 1;
        let Some(rss) = status_kib(&child, "VmRSS") else {
            let log = std::fs::read_to_string(dir.path().join("causeway.log")).unwrap_or_default();
            panic!("causeway stopped during the run; log:\n{log}");
        };
        end_kib = rss;
        if warm_kib == 0 && started.elapsed() >= warm_at {
            warm_kib = rss;
        }
        if case.kafka {
            moved = published(&metrics);
        }
        if ticks % 60 == 0 {
            println!(
                "  {:>4} s: RSS {:.1} MiB, published {}",
                ticks,
                mib(rss),
                published(&metrics)
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let published = published(&metrics);
    let peak_kib = status_kib(&child, "VmHWM").unwrap_or_default();
    stop(&mut child);
    Measured {
        peak_kib,
        warm_kib,
        end_kib,
        published,
        seconds: elapsed,
    }
}

/// Fills a fresh 3-partition `topic` with `KAFKA_EVENTS` CloudEvents of
/// 1 KiB over 1,000 keys (binary mode: `ce_` headers).
fn fill_kafka(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = {
            let mut c = rdkafka::ClientConfig::new();
            c.set("bootstrap.servers", brokers).set("linger.ms", "20");
            c
        };
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            config.create().expect("admin client");
        admin
            .create_topics(
                &[NewTopic::new(topic, 3, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .expect("create topic");
        let producer: FutureProducer = config.create().expect("producer");
        let payload = vec![b'x'; 1024];
        let started = Instant::now();
        for chunk in 0..KAFKA_EVENTS / 1000 {
            let sends = (0..1000).map(|i| {
                let id = format!("{topic}-{chunk}-{i}");
                let key = format!("account-{i}");
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "ce_specversion",
                        value: Some("1.0"),
                    })
                    .insert(Header {
                        key: "ce_id",
                        value: Some(id.as_str()),
                    })
                    .insert(Header {
                        key: "ce_source",
                        value: Some("causeway://rss"),
                    })
                    .insert(Header {
                        key: "ce_type",
                        value: Some("rss"),
                    });
                let producer = &producer;
                let payload = &payload;
                async move {
                    let record = FutureRecord::to(topic)
                        .payload(payload)
                        .key(&key)
                        .headers(headers);
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .expect("fill kafka");
                }
            });
            futures_util::future::join_all(sends).await;
        }
        println!(
            "  filled {topic} with {KAFKA_EVENTS} events in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    });
}

/// A `kB` line of /proc/<pid>/status, e.g. `VmRSS`.
fn status_kib(child: &Child, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `causeway_events_published_total` of route `r`, from `/metrics`.
fn published(metrics: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let text = rt.block_on(async {
        match reqwest::get(metrics).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    });
    text.lines()
        .filter(|l| l.starts_with("causeway_events_published_total{") && l.contains("route=\"r\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// SIGTERM, then a wait: the run ends as an operator would end it.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
