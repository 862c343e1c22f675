//! Shared HTTP plumbing for LLM providers and tools.
//!
//! In offline mode every request to a host that is not on the loopback interface is
//! refused before it is sent, with an error naming `PORTIA_OFFLINE`. Offline mode is
//! an explicit setting, off unless asked for: `PORTIA_OFFLINE=1` in the environment
//! (CI sets it, so a test that forgot to point a client at its in-process mock
//! server fails instead of reaching the internet), or [`set_offline`] in code (the
//! keyless demo uses it), which wins over the variable.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

/// The environment variable that turns offline mode on (`1`) or off (`0`).
pub const OFFLINE_VAR: &str = "PORTIA_OFFLINE";

/// How many idle connections a client keeps per host once a burst is over, and for
/// how long. A burst of N concurrent calls opens N connections; unbounded, every one
/// stayed open (reqwest keeps them all for 90 s), and 500 concurrent workflows left
/// about 1,500 descriptors behind. Too tight a bound costs the other way: a service
/// that keeps N calls in flight reopens a connection for most calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pool {
    /// The most idle connections kept per host.
    pub(crate) max_idle_per_host: usize,
    /// How long an idle connection is kept for reuse.
    pub(crate) idle_timeout: Duration,
}

impl Default for Pool {
    fn default() -> Self {
        Self { max_idle_per_host: default_max_idle_per_host(), idle_timeout: DEFAULT_IDLE_TIMEOUT }
    }
}

/// [`Pool::max_idle_per_host`] unless configured (`PORTIA_HTTP_MAX_IDLE_PER_HOST`):
/// a sixteenth of the process's limit on open files, at least 64 and at most 512.
/// Under the common limit of 1,024 that is 64, which keeps a burst from leaving the
/// process short of descriptors; a process allowed more reuses more connections
/// under load, where reopening one for most calls cost a third of its CPU.
pub(crate) fn default_max_idle_per_host() -> usize {
    static DEFAULT: LazyLock<usize> = LazyLock::new(|| idle_bound_for(open_file_limit()));
    *DEFAULT
}

/// The idle bound for a process that may open `open_files` files (`None`: unknown).
fn idle_bound_for(open_files: Option<u64>) -> usize {
    let share = open_files.map_or(0, |limit| limit / 16);
    usize::try_from(share).unwrap_or(usize::MAX).clamp(64, 512)
}

/// The soft limit on open files, from Linux's `/proc/self/limits`; `None` where
/// there is no such file.
fn open_file_limit() -> Option<u64> {
    soft_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    match line.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

/// [`Pool::idle_timeout`] unless configured (`PORTIA_HTTP_IDLE_TIMEOUT_SECS`).
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTP client (rustls, connection pooling) with a per-request timeout: the LLM
/// providers' and the tools'. Its pool keeps idle connections as `pool` says.
pub(crate) fn client(timeout: Duration, pool: Pool) -> reqwest::Client {
    builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout(timeout))
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_idle_timeout(pool.idle_timeout)
        .build()
        // Only fails if the TLS backend cannot initialise, which is a broken build, not bad input.
        .expect("the HTTP client could not be built")
}

/// How long a client made with request timeout `timeout` waits for a connection
/// (TCP and TLS): at most 10 s, so an unreachable host fails well before a slow answer.
pub(crate) fn connect_timeout(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(10))
}

/// The URL last parsed, kept with its text: a client sends to the same URL call
/// after call, and parsing it again (its host through IDNA) cost more than the rest
/// of building a request. A clone starts empty.
#[derive(Debug, Default)]
pub(crate) struct UrlMemo(Mutex<Option<(String, reqwest::Url)>>);

impl Clone for UrlMemo {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl UrlMemo {
    /// A `method` request of `client` to `url`. A URL that does not parse is left to
    /// reqwest, whose error the caller already words (naming the setting to fix).
    pub(crate) fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        match self.parse(url) {
            Some(parsed) => client.request(method, parsed),
            None => client.request(method, url),
        }
    }

    fn parse(&self, url: &str) -> Option<reqwest::Url> {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((text, parsed)) = last.as_ref()
            && text == url
        {
            return Some(parsed.clone());
        }
        let parsed = reqwest::Url::parse(url).ok()?;
        *last = Some((url.to_owned(), parsed.clone()));
        Some(parsed)
    }
}

/// A client builder with the crate's TLS policy, which every HTTP client it builds
/// (LLM, tools, MCP; OTLP through `blocking_builder`) starts from: rustls with ring,
/// and a server certificate is trusted when it chains to a root in the OS trust store
/// (on Linux as `SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's bundle name it;
/// macOS and Windows verify through the OS itself) or to one of Mozilla's roots, which
/// are built in. A corporate CA installed in the OS is trusted, and a machine with no
/// CA bundle still reaches public services.
pub(crate) fn builder() -> reqwest::ClientBuilder {
    match shared_tls() {
        Some(tls) => reqwest::Client::builder().tls_backend_preconfigured(tls),
        None => reqwest::Client::builder().tls_certs_merge(webpki_roots()),
    }
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
    match shared_tls() {
        Some(tls) => reqwest::blocking::Client::builder().tls_backend_preconfigured(tls),
        None => reqwest::blocking::Client::builder().tls_certs_merge(webpki_roots()),
    }
}

/// The TLS policy of [`builder`] as one rustls configuration, made once per process
/// and shared by every client: making it reads and parses the OS's whole CA bundle,
/// which was most of the cost of building a client (a runner builds several).
/// `None` where it cannot be made here; each client then makes its own through
/// reqwest, which reports the failure as it did before.
fn shared_tls() -> Option<rustls::ClientConfig> {
    static TLS: LazyLock<Option<rustls::ClientConfig>> = LazyLock::new(|| {
        install_crypto_provider();
        let tls = tls_config();
        if let Err(e) = &tls {
            tracing::debug!(error = %e, "no shared TLS configuration; each HTTP client makes its own");
        }
        tls.ok()
    });
    TLS.clone()
}

/// What reqwest makes of `tls_certs_merge(webpki_roots())`: the platform verifier
/// with Mozilla's roots added, TLS 1.2 and 1.3, and HTTP/2 offered before HTTP/1.1.
#[cfg(any(all(unix, not(target_os = "android")), target_os = "windows"))]
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let provider = rustls::crypto::CryptoProvider::get_default().ok_or("no rustls crypto provider")?;
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned();
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(roots, std::sync::Arc::clone(provider))
        .map_err(|e| e.to_string())?;
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(provider))
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

#[cfg(not(any(all(unix, not(target_os = "android")), target_os = "windows")))]
fn tls_config() -> Result<rustls::ClientConfig, String> {
    Err("the platform verifier takes no extra roots here".into())
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

/// `url` as a message may show it: its user info (a password, or a token given as
/// the user) and the values of its query (where keys travel) as `***`, and its
/// fragment dropped. Works on the text, so a URL that does not parse is masked too.
pub(crate) fn shown_url(url: &str) -> String {
    let without_fragment = url.split_once('#').map_or(url, |(before, _)| before);
    let (base, query) = match without_fragment.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (without_fragment, None),
    };
    let authority_start = base.find("://").map_or(0, |at| at + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |at| authority_start + at);
    let mut shown = base[..authority_start].to_owned();
    match base[authority_start..authority_end].rsplit_once('@') {
        Some((_, host)) => shown.push_str(&format!("***@{host}")),
        None => shown.push_str(&base[authority_start..authority_end]),
    }
    shown.push_str(&base[authority_end..]);
    if let Some(query) = query {
        let masked: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').map_or_else(|| "***".to_owned(), |(name, _)| format!("{name}=***")))
            .collect();
        shown.push('?');
        shown.push_str(&masked.join("&"));
    }
    if without_fragment.len() < url.len() {
        shown.push_str("#***");
    }
    shown
}

/// Refuses `url` when offline mode is on and it does not point at a loopback host.
pub(crate) fn check_allowed(url: &str) -> Result<(), String> {
    if !offline() {
        return Ok(());
    }
    let shown = shown_url(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    let host = parsed.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("{OFFLINE_VAR} is set, so only loopback hosts may be called; refusing {shown}"))
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
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn shown_urls_mask_user_info_query_values_and_fragments() {
        for (url, shown) in [
            ("ftp://user:LEAKCANARYPW@host/v1", "ftp://***@host/v1"),
            ("https://ghp_LEAKCANARY@github.com/x?y=1", "https://***@github.com/x?y=***"),
            ("http://127.0.0.1:1/v1?key=LEAKCANARY&flag&&b=", "http://127.0.0.1:1/v1?key=***&***&b=***"),
            ("https://host/v1#access_token=LEAKCANARY", "https://host/v1#***"),
            ("user:LEAKCANARY@host:80/x", "***@host:80/x"),
            ("localhost:8080/v1", "localhost:8080/v1"),
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ] {
            assert_eq!(shown_url(url), shown, "{url}");
        }
    }

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

    #[test]
    fn a_request_goes_to_the_url_given_parsed_or_not() {
        let (memo, client) = (UrlMemo::default(), client(Duration::from_secs(5), Pool::default()));
        let url_of =
            |text: &str| memo.request(&client, reqwest::Method::POST, text).build().map(|r| r.url().to_string());
        assert_eq!(url_of("http://127.0.0.1:9/v1/a").unwrap(), "http://127.0.0.1:9/v1/a");
        assert_eq!(url_of("http://127.0.0.1:9/v1/a").unwrap(), "http://127.0.0.1:9/v1/a", "kept");
        assert_eq!(url_of("http://127.0.0.1:9/v1/b").unwrap(), "http://127.0.0.1:9/v1/b", "replaced");
        let refused = url_of("/v1/a").unwrap_err();
        assert!(refused.is_builder(), "reqwest's own error, as before: {refused}");
    }

    /// The TLS configuration every client shares is made on this platform, offers
    /// HTTP/2 first as reqwest's own would, and reqwest takes it (one built for
    /// another rustls would be refused as an unknown backend).
    #[test]
    fn the_shared_tls_configuration_offers_http2_first_and_reqwest_takes_it() {
        let tls = shared_tls().expect("the shared TLS configuration is made on this platform");
        assert_eq!(tls.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        let built = builder().build();
        assert!(built.is_ok(), "{built:?}");
    }

    /// After a burst of concurrent requests, the pool closes every connection beyond
    /// its idle bound at once, so descriptors go back to a small number.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_leaves_at_most_the_idle_bound_of_connections_open() {
        let client = client(Duration::from_secs(60), Pool::default());
        let burst = default_max_idle_per_host() + 8;
        assert_eq!(closed_after_burst(&client, burst, 8).await, 8, "the idle ones stay for reuse");
    }

    #[test]
    fn the_default_idle_bound_is_a_sixteenth_of_the_open_file_limit_within_64_to_512() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63432                63432                processes\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(soft_open_files(limits), Some(20_000));
        assert_eq!(soft_open_files(&limits.replace("20000 ", "unlimited ")), Some(u64::MAX));
        assert_eq!(soft_open_files("Max processes 10 10 processes"), None);
        let bounds: Vec<usize> = [None, Some(256), Some(1024), Some(4096), Some(20_000), Some(u64::MAX)]
            .into_iter()
            .map(idle_bound_for)
            .collect();
        assert_eq!(bounds, [64, 64, 64, 256, 512, 512]);
        assert_eq!(default_max_idle_per_host(), idle_bound_for(open_file_limit()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_idle_bound_is_the_pools_own() {
        let pool = Pool { max_idle_per_host: 3, idle_timeout: Duration::from_secs(60) };
        assert_eq!(closed_after_burst(&client(Duration::from_secs(60), pool), 10, 7).await, 7);
    }

    /// Sends `burst` requests at once through `client`, to a server that answers none
    /// until all are in (so each has its own connection), waits until the client has
    /// closed at least `closing` connections and returns how many it closed.
    pub(crate) async fn closed_after_burst(client: &reqwest::Client, burst: usize, closing: usize) -> usize {
        use std::sync::atomic::AtomicUsize;
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let closed = Arc::new((AtomicUsize::new(0), tokio::sync::Notify::new()));
        let all_in = Arc::new(tokio::sync::Barrier::new(burst));
        let server_closed = Arc::clone(&closed);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (closed, all_in) = (Arc::clone(&server_closed), Arc::clone(&all_in));
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    let mut line = String::new();
                    while stream.read_line(&mut line).await.unwrap_or(0) > 0 {
                        if line == "\r\n" {
                            all_in.wait().await;
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            stream.get_mut().write_all(reply).await.unwrap();
                        }
                        line.clear();
                    }
                    closed.0.fetch_add(1, Ordering::SeqCst);
                    closed.1.notify_one();
                });
            }
        });
        let requests = (0..burst).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.unwrap().text().await.unwrap() })
        });
        for request in requests.collect::<Vec<_>>() {
            assert_eq!(request.await.unwrap(), "ok");
        }
        // The connections past the bound are closed as they come back to the pool.
        while closed.0.load(Ordering::SeqCst) < closing {
            closed.1.notified().await;
        }
        closed.0.load(Ordering::SeqCst)
    }

    /// The TLS policy, proven offline where `SSL_CERT_FILE` names the OS store (Unix
    /// but Apple and Android; elsewhere the OS verifies, and cannot be pointed at a
    /// test CA without changing the machine). A test may not set its own environment
    /// (that is `unsafe`, which the crate forbids, and races other tests), so each test
    /// runs itself again as a child process with the variable set.
    ///
    /// The certificates in tests/fixtures/tls are valid from 2020 to 2120 (so no
    /// machine's clock is behind them): `ca.pem`, a self-signed P-256 CA, and `server.pem`/`server.key`, a
    /// certificate it signed for `localhost` and 127.0.0.1 (serverAuth).
    #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
    mod tls {
        use std::process::Command;
        use std::sync::Arc;
        use std::time::Duration;

        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        /// Set in the child, which then runs the test's body.
        const CHILD: &str = "PORTIA_TLS_TEST_CHILD";
        const CA: &str = include_str!("../tests/fixtures/tls/ca.pem");
        const SERVER_CERT: &str = include_str!("../tests/fixtures/tls/server.pem");
        const SERVER_KEY: &str = include_str!("../tests/fixtures/tls/server.key");

        /// Runs the test `name` (this module's) in a child of this test binary, with
        /// `SSL_CERT_FILE` holding `certs` and no `SSL_CERT_DIR`, and fails if it does.
        fn run_child(name: &str, certs: &str) {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("roots.pem");
            std::fs::write(&file, certs).unwrap();
            let output = Command::new(std::env::current_exe().unwrap())
                .args([&format!("http::tests::tls::{name}"), "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .env("SSL_CERT_FILE", &file)
                .env_remove("SSL_CERT_DIR")
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&output.stdout);
            let err = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "the child run failed:\n{out}\n{err}");
            // A filter that matched nothing would pass too.
            assert!(out.contains("1 passed"), "the child ran no test:\n{out}");
        }

        /// An HTTPS server on 127.0.0.1 answering `ok` to every request, with the test
        /// CA's certificate for `localhost`; its port.
        async fn serve() -> u16 {
            let certs = vec![CertificateDer::from_pem_slice(SERVER_CERT.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(SERVER_KEY.as_bytes()).unwrap();
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // A refused handshake (the client does not trust us) just ends here.
                        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => request.extend_from_slice(&buf[..n]),
                            }
                        }
                        let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                        let _ = tls.write_all(reply.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
            port
        }

        async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
            let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
            response.text().await.map_err(|e| format!("{e:?}"))
        }

        /// A CA in the OS store (here `SSL_CERT_FILE`) is trusted by every client the
        /// crate builds: the LLM providers' and tools' (`client`), MCP's, OTLP's.
        #[tokio::test]
        async fn every_client_trusts_a_ca_in_the_os_store() {
            if std::env::var_os(CHILD).is_none() {
                // Without the CA in the store, the same server is refused: what passes
                // in the child is the store, not a lax verifier.
                let port = serve().await;
                let err = get(
                    &super::client(Duration::from_secs(5), super::Pool::default()),
                    &format!("https://localhost:{port}/"),
                )
                .await
                .unwrap_err();
                assert!(err.contains("UnknownIssuer"), "{err}");
                return run_child("every_client_trusts_a_ca_in_the_os_store", CA);
            }
            let port = serve().await;
            let url = format!("https://localhost:{port}/");
            let llm_and_tools = super::client(Duration::from_secs(5), super::Pool::default());
            assert_eq!(get(&llm_and_tools, &url).await.unwrap(), "ok");
            #[cfg(feature = "mcp")]
            assert_eq!(get(&super::mcp_client(), &url).await.unwrap(), "ok");
            #[cfg(feature = "otel")]
            {
                // The blocking client runs a runtime of its own, so it lives on a thread
                // of its own, while this runtime serves.
                let url = url.clone();
                let body = tokio::task::spawn_blocking(move || {
                    let otlp = super::blocking_builder().timeout(Duration::from_secs(5)).build().unwrap();
                    otlp.get(&url).send().and_then(reqwest::blocking::Response::text)
                });
                assert_eq!(body.await.unwrap().unwrap(), "ok");
            }
        }

        /// Mozilla's roots are there too: with an empty OS store, reqwest's own default
        /// (the OS store alone) cannot even be built, while every client of the crate is.
        #[tokio::test]
        async fn every_client_has_mozillas_roots_without_an_os_store() {
            if std::env::var_os(CHILD).is_none() {
                return run_child("every_client_has_mozillas_roots_without_an_os_store", "");
            }
            let _ = super::client(Duration::from_secs(5), super::Pool::default());
            #[cfg(feature = "mcp")]
            let _ = super::mcp_client();
            #[cfg(feature = "otel")]
            tokio::task::spawn_blocking(|| super::blocking_builder().build().unwrap()).await.unwrap();
            // ring is the process default by now, so this fails on the roots alone.
            let err = reqwest::Client::builder().build().unwrap_err();
            assert!(format!("{err:?}").contains("No CA certificates"), "{err:?}");
            // And the test CA, not in the store, is not trusted.
            let port = serve().await;
            let err = get(
                &super::client(Duration::from_secs(5), super::Pool::default()),
                &format!("https://localhost:{port}/"),
            )
            .await
            .unwrap_err();
            assert!(err.contains("UnknownIssuer"), "{err}");
        }
    }
}
