//! The `causeway` command line, built by this package so that its tests
//! (which run the bridge as a process, to kill it) always run the current code.

fn main() -> std::process::ExitCode {
    causeway_bridge::cli::main()
}
