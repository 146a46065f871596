//! `causeway`: the bridge's command line. A library module so that a test
//! package can build the same program as its own binary (and so always run
//! the current code).

use std::path::PathBuf;

use crate::config::{Config, EMBEDDED_DEFAULT};
use crate::pipeline::dead_letter_stream;
use crate::{Bridge, Replay};
use anyhow::{Context, Result};
use causeway_core::{ReadFrom, ReadQuery, dead_letter};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "causeway",
    version,
    about = "Moves events between brokers: nothing lost, no duplicate through, replayable"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML configuration; the embedded quickstart when omitted.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run every route until SIGINT/SIGTERM, then finish in-flight work and exit 0.
    Run(ConfigArg),
    /// Validate the configuration, connect to every endpoint, print what each can do.
    Check(ConfigArg),
    /// Re-publish stored events of a route to its sink (or another).
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// The route.
        #[arg(long)]
        route: String,
        /// Start at events stored at or after this RFC 3339 time.
        #[arg(
            long,
            conflicts_with = "from_position",
            required_unless_present_any = ["from_position", "last"]
        )]
        from_time: Option<DateTime<Utc>>,
        /// Start at events stored this long ago, e.g. `1m` or `2h`.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from_time", "from_position"])]
        last: Option<std::time::Duration>,
        /// Start at this store position.
        #[arg(long)]
        from_position: Option<u64>,
        /// Stop before events stored at or after this RFC 3339 time.
        #[arg(long)]
        to_time: Option<DateTime<Utc>>,
        /// Only events with this key.
        #[arg(long)]
        key: Option<String>,
        /// Another sink endpoint than the route's.
        #[arg(long)]
        sink: Option<String>,
        /// Another destination template than the route's.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Dead letters kept in the store.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The store.
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// List a route's dead letters with their reasons.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// The route.
        #[arg(long)]
        route: String,
        /// Most to show.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Publish a route's dead letters to its sink again.
    Redrive {
        #[command(flatten)]
        config: ConfigArg,
        /// The route.
        #[arg(long)]
        route: String,
        /// From this dead-letter position (the first by default).
        #[arg(long, default_value_t = 0)]
        from_position: u64,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Counts per stream: events, bytes, positions, times.
    Stats(ConfigArg),
}

fn load(arg: &ConfigArg) -> Result<Config> {
    Ok(match &arg.config {
        Some(path) => Config::load(path)?,
        None => Config::parse(EMBEDDED_DEFAULT, "embedded quickstart config")?,
    })
}

/// Parses the arguments and runs the command. Errors are printed as one
/// chain of causes, without a backtrace, and exit 1.
pub fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAUSEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(arg) => run(load(&arg)?).await,
        Command::Check(arg) => check(load(&arg)?).await,
        Command::Replay {
            config,
            route,
            from_time,
            from_position,
            last,
            to_time,
            key,
            sink,
            destination,
        } => {
            let from = match (from_time, from_position, last) {
                (Some(t), _, _) => ReadFrom::Time(t),
                (None, _, Some(ago)) => ReadFrom::Time(
                    Utc::now() - chrono::Duration::from_std(ago).context("--last is too long")?,
                ),
                (None, p, None) => ReadFrom::Position(p.unwrap_or(0)),
            };
            let replay = Replay {
                route,
                stream: None,
                from,
                until: to_time,
                key,
                sink,
                destination,
            };
            replay_with_progress(Bridge::new(load(&config)?).await?, replay).await
        }
        Command::Dlq { action } => match action {
            DlqAction::List {
                config,
                route,
                limit,
            } => dlq_list(Bridge::new(load(&config)?).await?, &route, limit).await,
            DlqAction::Redrive {
                config,
                route,
                from_position,
            } => {
                let replay = Replay {
                    stream: Some(dead_letter_stream(&route)),
                    route,
                    from: ReadFrom::Position(from_position),
                    until: None,
                    key: None,
                    sink: None,
                    destination: None,
                };
                replay_with_progress(Bridge::new(load(&config)?).await?, replay).await
            }
        },
        Command::Store {
            action: StoreAction::Stats(arg),
        } => stats(Bridge::new(load(&arg)?).await?).await,
    }
}

async fn run(config: Config) -> Result<()> {
    let bridge = Bridge::new(config).await?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down: finishing in-flight work");
        signal.cancel();
    });
    if let Some(listen) = &bridge.config.metrics.listen {
        tracing::info!("metrics on http://{listen}/metrics, health on /healthz and /readyz");
    }
    bridge.run(shutdown).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn check(config: Config) -> Result<()> {
    let bridge = Bridge::new(config).await?;
    let mut failed = 0;
    for (name, kind) in bridge.endpoints.describe() {
        match bridge.endpoints.check(&name).await {
            Ok(c) => println!(
                "{name} ({kind}): ok — nack {}, delayed redelivery {}, ack timeout {}, dead letter {}, native dedup {}, ordering {:?}, ordered publish {}, pipelined order {}, groups {}, resume {}, max message {} bytes",
                c.per_message_nack,
                c.delayed_redelivery,
                c.ack_timeout_redelivery,
                c.dead_letter,
                c.native_dedup,
                c.ordering,
                c.ordered_publish,
                c.pipelined_order,
                c.consumer_groups,
                c.durable_resume,
                c.max_message_bytes
            ),
            Err(e) => {
                failed += 1;
                println!("{name} ({kind}): FAILED — {e:#}");
            }
        }
    }
    println!(
        "routes: {}",
        bridge
            .config
            .routes
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    anyhow::ensure!(failed == 0, "{failed} endpoint(s) failed");
    Ok(())
}

async fn replay_with_progress(bridge: Bridge, replay: Replay) -> Result<()> {
    let stream = replay
        .stream
        .clone()
        .unwrap_or_else(|| replay.route.clone());
    let total = bridge.store.stats(Some(&stream)).await?.events;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events {per_sec} eta {eta}")
            .context("progress style")?,
    );
    let result = bridge.replay(&replay, |n| bar.inc(n)).await;
    bar.finish_and_clear();
    let report = result?;
    println!(
        "replayed {} events from `{stream}` ({} dead-lettered), last position {}",
        report.published,
        report.dead_lettered,
        report.last_position.map_or("-".into(), |p| p.to_string())
    );
    Ok(())
}

async fn dlq_list(bridge: Bridge, route: &str, limit: usize) -> Result<()> {
    let stored = bridge
        .store
        .read(&ReadQuery::new(
            dead_letter_stream(route),
            ReadFrom::Position(0),
            limit,
        ))
        .await?;
    for s in &stored {
        let e = &s.event;
        // What a hostile producer wrote must not drive the terminal.
        let shown = |v: Option<&str>| dead_letter::escape(v.unwrap_or("?"));
        println!(
            "{:>8}  {}  {}  attempts {}  {}  — {}",
            s.position,
            s.stored_at.to_rfc3339(),
            dead_letter::escape(&e.id),
            shown(e.header(dead_letter::ATTEMPTS)),
            shown(e.header(dead_letter::ORIGIN)),
            shown(e.header(dead_letter::REASON))
        );
    }
    println!("{} dead letter(s) shown for route {route}", stored.len());
    Ok(())
}

async fn stats(bridge: Bridge) -> Result<()> {
    let mut streams: Vec<String> = bridge.config.routes.keys().cloned().collect();
    streams.extend(bridge.config.routes.keys().map(|r| dead_letter_stream(r)));
    for stream in streams {
        let s = bridge.store.stats(Some(&stream)).await?;
        println!(
            "{stream}: {} events, {} bytes, positions {}..{}, stored {} .. {}",
            s.events,
            s.bytes,
            s.first_position.map_or("-".into(), |p| p.to_string()),
            s.last_position.map_or("-".into(), |p| p.to_string()),
            s.oldest.map_or("-".into(), |t| t.to_rfc3339()),
            s.newest.map_or("-".into(), |t| t.to_rfc3339()),
        );
    }
    Ok(())
}
