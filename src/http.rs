//! Shared HTTP plumbing for LLM providers and tools.
//!
//! In offline mode every request to a host that is not on the loopback interface is
//! refused before it is sent, with an error naming `PORTIA_OFFLINE`. Offline mode is
//! on when the crate is built with the `testing` feature (so a test that forgot to
//! point a client at its in-process mock server fails instead of reaching the
//! internet), and can be switched either way with `PORTIA_OFFLINE=1` or `PORTIA_OFFLINE=0`.

use std::time::Duration;

/// The environment variable that turns offline mode on (`1`) or off (`0`).
pub const OFFLINE_VAR: &str = "PORTIA_OFFLINE";

/// An HTTP client (rustls, connection pooling) with a per-request timeout.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        // Only fails if the TLS backend cannot initialise, which is a broken build, not bad input.
        .expect("the HTTP client could not be built")
}

/// Refuses `url` when offline mode is on and it does not point at a loopback host.
pub(crate) fn check_allowed(url: &str) -> Result<(), String> {
    if !offline() {
        return Ok(());
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {url}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("{OFFLINE_VAR} is set, so only loopback hosts may be called; refusing {url}"))
    }
}

/// Whether offline mode is on. Read on every call; the cost is nothing next to a request.
pub fn offline() -> bool {
    match std::env::var(OFFLINE_VAR) {
        Ok(value) if !value.trim().is_empty() => value.trim() != "0",
        _ => cfg!(any(test, feature = "testing")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_mode_allows_only_loopback() {
        assert!(offline(), "unit tests run offline unless {OFFLINE_VAR}=0");
        assert!(check_allowed("http://127.0.0.1:8099/v1").is_ok());
        assert!(check_allowed("http://localhost:1/x").is_ok());
        assert!(check_allowed("http://[::1]:80/").is_ok());
        let err = check_allowed("https://api.openai.com/v1").unwrap_err();
        assert!(err.contains("PORTIA_OFFLINE") && err.contains("api.openai.com"), "{err}");
    }
}
