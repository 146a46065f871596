//! Endpoints of real servers, from the environment, with a clear failure
//! when a server is missing.

/// The endpoint in `var`, or `default` when unset.
pub fn endpoint(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// Fails the test with how to start `service`, after `error` reaching it.
pub fn unreachable(service: &str, var: &str, endpoint: &str, error: impl std::fmt::Display) -> ! {
    panic!(
        "{service} is not reachable at {endpoint} ({error}).\n\
         Start it with `cargo xtask services up {service}`, or point {var} at a running one."
    )
}
