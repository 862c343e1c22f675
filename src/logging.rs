//! Logging set-up: the [`LogLevel`] and [`LogFormat`] settings and the `tracing`
//! subscriber portia installs.

use crate::macros::config_enum;

config_enum!(
    /// The log level, chosen by `PORTIA_LOG_LEVEL`.
    LogLevel {
        /// Everything, plan and step outputs included.
        Trace => ["trace"],
        /// Plans and step outputs.
        Debug => ["debug"],
        /// State changes.
        Info => ["info"],
        /// Problems that did not stop the run.
        Warn => ["warn", "warning"],
        /// Failures only.
        Error => ["error"],
    }
);

config_enum!(
    /// How log lines are written, chosen by `PORTIA_LOG_FORMAT`.
    #[derive(Default)]
    LogFormat {
        /// One readable line per event, coloured on a terminal.
        #[default]
        Text => ["text", "human", "pretty"],
        /// One JSON object per line, for a log collector: `timestamp`, `level`,
        /// `target`, `fields` (the message and every field) and the enclosing `spans`.
        Json => ["json"],
    }
);

/// Installs a `tracing` subscriber that logs portia's events to stderr at `level`,
/// as text or JSON lines (`RUST_LOG`, if set, wins over `level`). Stdout stays free
/// for your program's output.
/// At `trace`, each span (workflow, step, tool call, LLM call) is logged as it
/// closes, with its OpenTelemetry attributes (`gen_ai.request.model`,
/// `gen_ai.usage.input_tokens`, `gen_ai.tool.name`...) and its duration.
/// Does nothing if a subscriber is already installed.
///
/// [`Config::init_logging`](crate::Config::init_logging) calls this with the configured level.
///
/// Events of the AWS crates (targets `aws_*`) are kept at INFO and above whatever
/// `RUST_LOG` or `level` asks: at TRACE, aws-sigv4 writes out the canonical request
/// it signs, the session token included.
pub fn init_logging(level: LogLevel, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let spans = match level {
        LogLevel::Trace => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        _ => tracing_subscriber::fmt::format::FmtSpan::NONE,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter(level))
        .with_writer(std::io::stderr)
        .with_span_events(spans);
    // Already installed is not an error: the application's own subscriber wins.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(credential_cap())
            .try_init(),
        LogFormat::Json => builder.json().with_current_span(false).finish().with(credential_cap()).try_init(),
    };
    warn_of_a_bad_rust_log();
}

/// Says so when `RUST_LOG` is set but cannot be read: its filter is then ignored,
/// and logging at `PORTIA_LOG_LEVEL` instead without a word would be a puzzle.
fn warn_of_a_bad_rust_log() {
    if let Some(problem) = rust_log_problem(std::env::var("RUST_LOG").ok()) {
        // An error, so that it shows at any level the fallback filter may have.
        tracing::error!(error = %problem, "RUST_LOG is not a valid filter; logging at PORTIA_LOG_LEVEL instead");
    }
}

fn rust_log_problem(rust_log: Option<String>) -> Option<String> {
    tracing_subscriber::EnvFilter::try_new(rust_log?).err().map(|e| e.to_string())
}

/// `RUST_LOG` when set, else portia's own events at `level`.
fn env_filter(level: LogLevel) -> tracing_subscriber::EnvFilter {
    env_filter_from(std::env::var("RUST_LOG").ok(), level)
}

fn env_filter_from(rust_log: Option<String>, level: LogLevel) -> tracing_subscriber::EnvFilter {
    rust_log
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(format!("portia={level}")))
}

/// The AWS crates' events at INFO and above only. A filter of its own rather than a
/// directive added to `RUST_LOG`'s, which a more specific one
/// (`aws_sigv4::http_request=trace`) would win over.
fn credential_cap<S: tracing::Subscriber>() -> impl tracing_subscriber::Layer<S> {
    tracing_subscriber::filter::filter_fn(|meta| {
        !meta.target().starts_with("aws_") || *meta.level() <= tracing::Level::INFO
    })
}

/// Spans exported over OTLP until this is dropped; dropping it sends what is left.
#[cfg(feature = "otel")]
#[derive(Debug)]
#[must_use = "spans stop being exported when the guard is dropped"]
pub struct OtlpGuard {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

#[cfg(feature = "otel")]
impl Drop for OtlpGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("portia: could not send the last spans over OTLP: {e}");
        }
    }
}

/// Logs as [`init_logging`] does, and also exports every span (workflow, step, tool
/// call, LLM call, with their GenAI attributes) over OTLP/HTTP to `endpoint`, such
/// as `http://localhost:4318/v1/traces`; with `None`, the `OTEL_EXPORTER_OTLP_*`
/// variables decide, as the OpenTelemetry SDK reads them. Keep the guard for as long
/// as spans should go out.
///
/// # Errors
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the endpoint when the
/// exporter cannot be built, or when a subscriber is already installed.
#[cfg(feature = "otel")]
pub fn init_otlp(level: LogLevel, endpoint: Option<&str>) -> crate::Result<OtlpGuard> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_otlp::WithHttpConfig as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let setting = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_http_client(otlp_client(setting)?);
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .map_err(|e| crate::Error::invalid_config(setting, masked_endpoints(&e.to_string(), endpoint)))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().with_batch_exporter(exporter).build();
    let tracer = provider.tracer("portia");
    tracing_subscriber::registry()
        .with(env_filter(level))
        .with(credential_cap())
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(tracer))
        .try_init()
        .map_err(|e| crate::Error::invalid_config(setting, format!("cannot install the tracing subscriber: {e}")))?;
    warn_of_a_bad_rust_log();
    Ok(OtlpGuard { provider })
}

/// `message` with each OTLP endpoint it may quote (the one given, or those the
/// variables give) shown without its user info and query values, as every URL in an
/// error is ([`crate::http::shown_url`]).
#[cfg(feature = "otel")]
fn masked_endpoints(message: &str, given: Option<&str>) -> String {
    use opentelemetry_otlp::{OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT};
    let from_variables =
        [OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT].map(|v| std::env::var(v).ok());
    (given.map(str::to_owned).into_iter().chain(from_variables.into_iter().flatten()))
        .filter(|endpoint| !endpoint.is_empty())
        .fold(message.to_owned(), |text, endpoint| text.replace(&endpoint, &crate::http::shown_url(&endpoint)))
}

/// The exporter's blocking HTTP client, as opentelemetry-otlp would build it (the
/// timeout its variables give, 10 s by default; built on a thread of its own, as a
/// blocking client may not be made inside an async runtime), but with the crate's TLS
/// policy ([`crate::http::builder`]).
#[cfg(feature = "otel")]
fn otlp_client(setting: &str) -> crate::Result<reqwest::blocking::Client> {
    use opentelemetry_otlp::{
        OTEL_EXPORTER_OTLP_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
    };
    let timeout = [OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.parse().ok())
        .map_or(OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT, std::time::Duration::from_millis);
    let failed = |e: String| crate::Error::invalid_config(setting, format!("cannot build the OTLP HTTP client: {e}"));
    std::thread::spawn(move || crate::http::blocking_builder().timeout(timeout).build())
        .join()
        .map_err(|_| failed("its thread panicked".into()))?
        .map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// The SDK's error quotes the endpoint whole; the password in it is not shown.
    #[cfg(feature = "otel")]
    #[test]
    fn an_otlp_endpoint_that_cannot_be_used_is_named_without_its_credentials() {
        let endpoint = "http://user:LEAKCANARY@ho st:4318/v1/traces";
        let err = init_otlp(LogLevel::Info, Some(endpoint)).expect_err("not a URI").to_string();
        assert!(err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("http://***@ho st:4318"), "{err}");
        assert!(!err.contains("LEAKCANARY"), "{err}");
    }

    #[test]
    fn a_rust_log_that_cannot_be_read_is_a_problem_to_tell() {
        assert!(rust_log_problem(Some("[[[".to_owned())).is_some());
        assert_eq!(rust_log_problem(Some("portia=debug,hyper=warn".to_owned())), None);
        assert_eq!(rust_log_problem(None), None);
    }

    #[test]
    fn aws_crates_log_at_info_at_most_whatever_rust_log_asks() {
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = lines.clone();
        let rust_log = "trace,aws_sigv4=trace,aws_sigv4::http_request=trace".to_owned();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(env_filter_from(Some(rust_log), LogLevel::Trace))
            .with_ansi(false)
            .with_writer(move || WriteTo(writer.clone()))
            .finish()
            .with(credential_cap());
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "aws_sigv4::http_request::sign", canonical_request = "x-amz-security-token:LEAK");
            tracing::debug!(target: "aws_credential_types", "LEAK too");
            tracing::info!(target: "aws_sigv4", "signing kept at info");
            tracing::trace!(target: "portia::llm", "portia's own trace");
        });
        let logged = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert!(!logged.contains("LEAK"), "{logged}");
        assert!(logged.contains("signing kept at info") && logged.contains("portia's own trace"), "{logged}");
    }

    struct WriteTo(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for WriteTo {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
