//! Shared HTTP plumbing for LLM providers and tools.
//!
//! In offline mode every request to a host that is not on the loopback interface is
//! refused before it is sent, with an error naming `PORTIA_OFFLINE`. Offline mode is
//! an explicit setting, off unless asked for: `PORTIA_OFFLINE=1` in the environment
//! (CI sets it, so a test that forgot to point a client at its in-process mock
//! server fails instead of reaching the internet), or [`set_offline`] in code (the
//! keyless demo uses it), which wins over the variable.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The environment variable that turns offline mode on (`1`) or off (`0`).
pub const OFFLINE_VAR: &str = "PORTIA_OFFLINE";

/// An HTTP client (rustls, connection pooling) with a per-request timeout: the LLM
/// providers' and the tools'.
pub(crate) fn client(timeout: Duration) -> reqwest::Client {
    builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()
        // Only fails if the TLS backend cannot initialise, which is a broken build, not bad input.
        .expect("the HTTP client could not be built")
}

/// A client builder with the crate's TLS policy, which every HTTP client it builds
/// (LLM, tools, MCP; OTLP through `blocking_builder`) starts from: rustls with ring,
/// and a server certificate is trusted when it chains to a root in the OS trust store
/// (on Linux as `SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle name it;
/// macOS and Windows verify through the OS itself) or to one of Mozilla's roots, which
/// are built in. A corporate CA installed in the OS is trusted, and a machine with no
/// CA bundle still reaches public services.
pub(crate) fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder().tls_certs_merge(webpki_roots())
}

/// The MCP streamable HTTP transport's client: rmcp's own default (no idle connections
/// kept, as a reused one can stall; only same-origin 307 and 308 redirects followed,
/// which keep the JSON-RPC body and send the session and custom headers nowhere else;
/// no overall timeout, as a server's event stream stays open), on [`builder`]'s TLS.
#[cfg(feature = "mcp")]
pub(crate) fn mcp_client() -> reqwest::Client {
    const MAX_REDIRECTS: usize = 10;
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(
            attempt.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if !keeps_body || !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("exceeded {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    });
    builder().pool_max_idle_per_host(0).redirect(redirects).build().expect("the MCP HTTP client could not be built")
}

/// [`builder`] for the blocking client (the OTLP exporter's, on its own thread).
#[cfg(feature = "otel")]
pub(crate) fn blocking_builder() -> reqwest::blocking::ClientBuilder {
    install_crypto_provider();
    reqwest::blocking::Client::builder().tls_certs_merge(webpki_roots())
}

/// Mozilla's root certificates (the `webpki-root-certs` crate), added to the OS store's.
fn webpki_roots() -> impl Iterator<Item = reqwest::Certificate> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().filter_map(|der| reqwest::Certificate::from_der(der).ok())
}

/// reqwest is built without a rustls crypto provider of its own (its default, aws-lc,
/// is a C build): it takes rustls' process default, which is set here to ring. An
/// application that installed a default before keeps it.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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

/// [`set_offline`]'s choice: 0 when none was made, else 1 (off) or 2 (on).
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Turns offline mode on or off for the whole process, whatever `PORTIA_OFFLINE` says.
pub fn set_offline(on: bool) {
    OVERRIDE.store(if on { 2 } else { 1 }, Ordering::SeqCst);
}

/// Whether offline mode is on: as [`set_offline`] last said, else as `PORTIA_OFFLINE`
/// says (`1` on, `0` or unset off). Read on every call; the cost is nothing next to a request.
pub fn offline() -> bool {
    match OVERRIDE.load(Ordering::SeqCst) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    std::env::var(OFFLINE_VAR).is_ok_and(|value| !value.trim().is_empty() && value.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_mode_allows_only_loopback() {
        set_offline(true);
        assert!(offline());
        assert!(check_allowed("http://127.0.0.1:8099/v1").is_ok());
        assert!(check_allowed("http://localhost:1/x").is_ok());
        assert!(check_allowed("http://[::1]:80/").is_ok());
        let err = check_allowed("https://api.openai.com/v1").unwrap_err();
        assert!(err.contains("PORTIA_OFFLINE") && err.contains("api.openai.com"), "{err}");
    }
}
