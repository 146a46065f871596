//! `causeway`: the bridge's command line; see `causeway_bridge::cli`.

fn main() -> std::process::ExitCode {
    causeway_bridge::cli::main()
}
