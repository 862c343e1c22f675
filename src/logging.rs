//! Logging set-up: the [`LogLevel`] setting and the `tracing` subscriber portia installs.

use crate::config::config_enum;

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

/// Installs a `tracing` subscriber that logs portia's events to stderr at `level`
/// (`RUST_LOG`, if set, wins). Stdout stays free for your program's output.
/// At `trace`, each span (workflow, step, tool call, LLM call) is logged as it
/// closes, with its OpenTelemetry attributes (`gen_ai.request.model`,
/// `gen_ai.usage.input_tokens`, `gen_ai.tool.name`...) and its duration.
/// Does nothing if a subscriber is already installed.
///
/// [`Config::init_logging`](crate::Config::init_logging) calls this with the configured level.
pub fn init_logging(level: LogLevel) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("portia={level}")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let spans = match level {
        LogLevel::Trace => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        _ => tracing_subscriber::fmt::format::FmtSpan::NONE,
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_span_events(spans)
        .try_init();
}
