//! The Service Bus REST **emulator** as a process, for running the bridge
//! against "Azure" on a machine without it (`cargo xtask services up
//! servicebus` starts it). Tests use the emulator in process instead.

use std::time::Duration;

use causeway_servicebus_emulator::{
    DEV_KEY, NAMESPACE, QueueOptions, ROOT_POLICY, ServiceBusEmulator,
};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "servicebus-emulator",
    about = "An Azure Service Bus REST-protocol emulator (causeway-servicebus-emulator); not Azure"
)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 9354)]
    port: u16,
    /// Namespace clients sign for (`<namespace>.servicebus.windows.net`).
    #[arg(long, default_value = NAMESPACE)]
    namespace: String,
    /// Key of policy RootManageSharedAccessKey (default: the well-known dev key).
    #[arg(long, env = "CAUSEWAY_SERVICEBUS_SAS_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Queues to create; more are created on first use.
    #[arg(long = "queue")]
    queues: Vec<String>,
    /// Lock duration of the queues, in seconds.
    #[arg(long, default_value_t = 60)]
    lock_seconds: u64,
    /// Duplicate detection window of the queues, in seconds (0: off).
    #[arg(long, default_value_t = 600)]
    duplicate_detection_seconds: u64,
    /// Largest message and request, in bytes (Standard: 262144).
    #[arg(long, default_value_t = 256 * 1024)]
    max_message_bytes: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let key = args.key.unwrap_or_else(|| DEV_KEY.to_owned());
    let emulator =
        ServiceBusEmulator::start_with(&args.namespace, &[(ROOT_POLICY, &key)], args.port).await?;
    let options = QueueOptions {
        lock_duration: Duration::from_secs(args.lock_seconds),
        duplicate_detection: (args.duplicate_detection_seconds > 0)
            .then(|| Duration::from_secs(args.duplicate_detection_seconds)),
        max_message_bytes: args.max_message_bytes,
        ..QueueOptions::default()
    };
    for queue in &args.queues {
        emulator.create_queue(queue, options.clone());
    }
    emulator.auto_create_queues(options);
    println!(
        "Service Bus REST emulator (not Azure) for namespace `{}` on {}; policy {ROOT_POLICY}",
        emulator.namespace(),
        emulator.url()
    );
    if key == DEV_KEY {
        println!("key: the well-known dev key; export CAUSEWAY_SERVICEBUS_SAS_KEY={DEV_KEY}");
    }
    tokio::signal::ctrl_c().await?;
    drop(emulator);
    Ok(())
}
