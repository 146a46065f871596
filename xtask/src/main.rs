//! `cargo xtask`: starts the brokers tests need, runs the tests, the CI
//! checks and the benchmarks. Everything a fresh machine needs is installed
//! from here, never by hand.

mod cmd;
mod services;
#[cfg(test)]
mod tidy;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "causeway project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start, stop or show the local broker services tests use.
    Services {
        #[command(subcommand)]
        action: ServicesAction,
    },
    /// Bring the needed services up and run the whole test suite.
    Test(TestArgs),
    /// What CI runs: fmt, clippy -D warnings, cargo deny, then `test`.
    Ci(TestArgs),
    /// cargo deny check (installs cargo-deny from crates.io when missing).
    Deny,
    /// The FinBank pipeline on local brokers (Kafka, SQS on moto, Service Bus
    /// on the emulator) with a live summary, then a replay of its last
    /// minute into a second sink.
    Demo {
        /// How long the pipeline runs before the replay.
        #[arg(long, default_value_t = 90)]
        seconds: u64,
    },
    /// The soak (integration-tests/tests/soak.rs): two routes on real
    /// brokers with flapping sinks, leases, delayed nacks and retention,
    /// asserting nothing lost, no duplicate, flat memory. `test` runs it for 5.
    Soak {
        /// How long the routes are fed.
        #[arg(long, default_value_t = SOAK_MINUTES_IN_TEST)]
        minutes: f64,
    },
    /// Run benchmarks (criterion), each next to its baseline in the same run.
    Bench {
        /// Bench targets to run; all when empty.
        targets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ServicesAction {
    /// Start each service that is not reachable yet, then print the env vars tests read.
    Up {
        /// Services to start; all when empty.
        names: Vec<String>,
    },
    /// Stop the services xtask started.
    Down {
        /// Services to stop; all when empty.
        names: Vec<String>,
    },
    /// Show which services are reachable.
    Status,
}

#[derive(clap::Args, Clone)]
struct TestArgs {
    /// The long mode: CAUSEWAY_FULL=1 (the conformance suite's
    /// cut_mid_stream then streams 10,000 events through emulators too), and
    /// the soak for 30 minutes instead of 5.
    #[arg(long)]
    full: bool,
    /// Extra arguments for the test runner.
    #[arg(last = true)]
    runner_args: Vec<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Paths below (docs, the workspace's cargo commands) are the project's,
    // whichever folder `cargo xtask` was run from.
    let root = project_root();
    std::env::set_current_dir(&root)
        .with_context(|| format!("cannot enter the project root {}", root.display()))?;
    match cli.command {
        Command::Services { action } => match action {
            ServicesAction::Up { names } => {
                let names = if names.is_empty() {
                    services::all().iter().map(|s| s.to_string()).collect()
                } else {
                    names
                };
                services::up(&names).map(|env| services::print_env(&env))
            }
            ServicesAction::Down { names } => services::down(&names),
            ServicesAction::Status => services::status(),
        },
        Command::Test(args) => test(&args),
        Command::Ci(args) => {
            cmd::run("cargo", &["fmt", "--all", "--check"], &[])?;
            cmd::run(
                "cargo",
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
            deny()?;
            test(&args)
        }
        Command::Deny => deny(),
        Command::Bench { targets } => bench(&targets),
        Command::Soak { minutes } => soak(minutes),
        Command::Demo { seconds } => demo(seconds),
    }
}

/// The Service Bus emulator's well-known dev key (causeway-servicebus-emulator's
/// `DEV_KEY`; local demos only).
const EMULATOR_DEV_KEY: &str = "Y2F1c2V3YXktZW11bGF0b3ItZGV2LWtleS1ub3Qtc2VjcmV0";

/// Runs examples/demo.toml for `seconds`, stops it as an operator would
/// (SIGTERM: in-flight work finishes), then replays its last minute.
fn demo(seconds: u64) -> Result<()> {
    let mut env = services::up(&["kafka", "sqs", "servicebus"])?;
    env.push((
        "CAUSEWAY_SERVICEBUS_SAS_KEY".into(),
        EMULATOR_DEV_KEY.into(),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for stale in ["demo.db", "demo.db-wal", "demo.db-shm"] {
        let _ = std::fs::remove_file(std::path::Path::new("causeway-data").join(stale));
    }
    cmd::run("cargo", &["build", "-q", "-p", "causeway-bridge"], &[])?;
    // `cargo run` execs the binary on Unix: a child is causeway itself.
    let causeway = |args: &[&str]| {
        let mut c = std::process::Command::new("cargo");
        c.args(["run", "-q", "-p", "causeway-bridge", "--"])
            .args(args)
            .envs(env.iter().copied());
        c
    };
    let run = |args: &[&str]| -> Result<()> {
        let status = causeway(args).status()?;
        anyhow::ensure!(status.success(), "causeway {} failed: {status}", args[0]);
        Ok(())
    };
    run(&["check", "-c", "examples/demo.toml"])?;
    println!(
        "\n== FinBank: core banking -> Kafka -> SQS (durable) and Service Bus (direct), {seconds} s ==\n"
    );
    let mut child = causeway(&["run", "-c", "examples/demo.toml"]).spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    cmd::run("kill", &["-TERM", &child.id().to_string()], &[])?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "causeway run exited with {status}");
    println!(
        "\n== Replay: the AWS route's last minute into a second sink, Service Bus queue finbank-audit ==\n"
    );
    run(&[
        "replay",
        "-c",
        "examples/demo.toml",
        "--route",
        "transactions-to-aws",
        "--last",
        "1m",
        "--sink",
        "azure",
        "--destination",
        "finbank-audit",
    ])?;
    run(&["store", "stats", "-c", "examples/demo.toml"])
}

/// The live cloud tests (`#[ignore]`d): the variable that gives each its
/// account, the nextest filter that selects them, and the end of their
/// names (for `cargo test --skip`).
const LIVE: [(&str, &str, &str, &str); 2] = [
    (
        "Azure Service Bus",
        "CAUSEWAY_SERVICEBUS_CONNECTION_STRING",
        "package(causeway-servicebus) and binary(live)",
        "against_azure",
    ),
    (
        "AWS SQS",
        "CAUSEWAY_SQS_LIVE_QUEUE",
        "package(causeway-sqs) and binary(live)",
        "against_aws",
    ),
];

/// Starts what the suites need and runs them with nextest (cargo test where
/// nextest is missing), passing the services' endpoints in the environment.
fn test(args: &TestArgs) -> Result<()> {
    let env = services::up(services::NEEDED_BY_TESTS)?;
    services::print_env(&env);
    let mut extra: Vec<(String, String)> = env;
    let soak_minutes = if args.full {
        SOAK_MINUTES_FULL
    } else {
        SOAK_MINUTES_IN_TEST
    };
    if args.full {
        extra.push(("CAUSEWAY_FULL".into(), "1".into()));
    }
    let extra_refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut runner: Vec<&str> = args.runner_args.iter().map(String::as_str).collect();
    // Live cloud tests are #[ignore]d: run those whose account is given,
    // and say which did not run.
    let mut filter = String::from("not binary(soak)");
    let mut live = false;
    let mut not_run = Vec::new();
    for (cloud, var, tests, names) in LIVE {
        if std::env::var_os(var).is_some() {
            println!("{var} is set: running the live {cloud} tests too");
            live = true;
        } else {
            println!(
                "live {cloud} tests: NOT RUN ({var} is not set); the suite runs against an emulator"
            );
            filter.push_str(&format!(" and not ({tests})"));
            not_run.push(names);
        }
    }
    if live {
        runner.extend(["--run-ignored", "all"]);
    }
    // Scenarios that do not apply to a backend pass in the test harness;
    // they write themselves here, and the run lists them as skipped.
    let skipped = std::env::temp_dir().join(format!("causeway-skipped-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&skipped);
    let skipped_var = skipped.to_string_lossy().into_owned();
    let mut extra_refs = extra_refs;
    extra_refs.push(("CAUSEWAY_SKIPPED_FILE", &skipped_var));
    let result = run_suite(&filter, runner, &not_run, &extra_refs);
    report_skipped(&skipped);
    if result.is_err() {
        services::report_health("services after the failed run", services::NEEDED_BY_TESTS);
    }
    result?;
    soak(soak_minutes)
}

/// Lists the scenarios that reported themselves not applicable.
fn report_skipped(file: &std::path::Path) {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.dedup();
    println!(
        "skipped (not applicable to the backend, counted as passed by the test harness): {}",
        lines.len()
    );
    for line in lines {
        println!("  SKIPPED {line}");
    }
    let _ = std::fs::remove_file(file);
}

/// The test suite without the soak: nextest where installed, cargo test otherwise.
fn run_suite(
    filter: &str,
    mut runner: Vec<&str>,
    not_run: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    if cmd::succeeds("cargo", &["nextest", "--version"]) {
        // The soak runs on its own afterwards, not beside everything else:
        // its memory readings and its minutes are its own.
        let mut a = vec![
            "nextest",
            "run",
            "--workspace",
            "--locked",
            "--profile",
            "ci",
            "-E",
            filter,
        ];
        a.extend(&runner);
        cmd::run("cargo", &a, env)
    } else {
        println!("cargo-nextest not found; running cargo test");
        let mut a = vec!["test", "--workspace", "--locked"];
        if let Some(at) = runner.iter().position(|a| *a == "--run-ignored") {
            runner.drain(at..at + 2);
            runner.extend(["--", "--include-ignored"]);
        }
        a.extend(&runner);
        if !a.contains(&"--") {
            a.push("--");
        }
        a.extend(["--skip", "soak_"]);
        for names in not_run {
            a.extend(["--skip", names]);
        }
        cmd::run("cargo", &a, env)
    }
}

/// The workspace root: xtask's own manifest folder's parent.
fn project_root() -> std::path::PathBuf {
    let xtask = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// How long `cargo xtask test` (and so CI) soaks.
const SOAK_MINUTES_IN_TEST: f64 = 5.0;

/// How long `cargo xtask test --full` soaks.
const SOAK_MINUTES_FULL: f64 = 30.0;

/// Runs the soak test alone for `minutes`, after the services are up.
fn soak(minutes: f64) -> Result<()> {
    anyhow::ensure!(minutes > 0.0, "--minutes must be more than 0");
    let env = services::up(services::NEEDED_BY_TESTS)?;
    let minutes = minutes.to_string();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("CAUSEWAY_SOAK_MINUTES", &minutes));
    println!("soak: {minutes} minute(s)");
    let result = if cmd::succeeds("cargo", &["nextest", "--version"]) {
        cmd::run(
            "cargo",
            &[
                "nextest",
                "run",
                "--locked",
                "--profile",
                "ci",
                "-p",
                "causeway-integration-tests",
                "--test",
                "soak",
                "--no-capture",
            ],
            &env,
        )
    } else {
        cmd::run(
            "cargo",
            &[
                "test",
                "--locked",
                "-p",
                "causeway-integration-tests",
                "--test",
                "soak",
                "--",
                "--nocapture",
            ],
            &env,
        )
    };
    if result.is_err() {
        services::report_health("services after the failed run", services::NEEDED_BY_TESTS);
    }
    result
}

fn deny() -> Result<()> {
    if !cmd::succeeds("cargo", &["deny", "--version"]) {
        println!("installing cargo-deny from crates.io");
        cmd::run("cargo", &["install", "--locked", "cargo-deny@0.20.2"], &[])?;
    }
    // The advisory database lives on GitHub, which these machines cannot
    // reach; check it only where it can be fetched, and say so where not.
    if cmd::succeeds(
        "git",
        &[
            "ls-remote",
            "--exit-code",
            "https://github.com/rustsec/advisory-db",
            "HEAD",
        ],
    ) {
        cmd::run("cargo", &["deny", "--locked", "check"], &[])
    } else {
        println!(
            "cargo deny: the RustSec advisory database is unreachable here; checking bans, licenses and sources"
        );
        cmd::run(
            "cargo",
            &["deny", "--locked", "check", "bans", "licenses", "sources"],
            &[],
        )
    }
}

fn bench(targets: &[String]) -> Result<()> {
    let env = services::up(services::NEEDED_BY_BENCHES)?;
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut a = vec!["bench", "--workspace", "--locked"];
    for t in targets {
        a.extend(["--bench", t.as_str()]);
    }
    cmd::run("cargo", &a, &env_refs)
}
