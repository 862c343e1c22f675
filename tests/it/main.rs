//! The integration tests, as one test binary (linking the crate once, not once per
//! file): each file here is a module, run by its path, e.g.
//! `cargo test --test it durability::` or `cargo test -- storage_conformance::sqlite`.
//!
//! Four test files stay binaries of their own, as they need a process to themselves:
//! `tests/llm_logging.rs`, `tests/logging.rs` and `tests/tracing_spans.rs` read what
//! a run logs through a subscriber of their own, and `tracing` caches per call site
//! (and in one process-wide maximum level) whether anyone listens: a test elsewhere
//! registering a call site while one of these installs its subscriber can make it
//! miss its lines (seen here: `logging::step_outputs_are_logged_at_debug_and_keys_never`
//! failed one full run in three). `tests/otel.rs` installs the process's global
//! subscriber, which every other test's spans and logs would then go to.
//!
//! A module that needs a feature is compiled only with it, so `cargo test` with the
//! default features runs what it can.
//!
//! Tests that need a real service (Postgres, the third-party MCP servers) are
//! `#[ignore]`d, naming the variable that points at it and the script that provides
//! it, so a plain `cargo test` lists them as ignored rather than passing them unrun.
//! Run on purpose without the service, they fail. `.ci/run` provides the services and
//! runs `cargo test --all-features -- --include-ignored`.
//!
//! `durability::crash_child` and `workers_distributed::worker_child` are `#[ignore]`d
//! too: they are the child processes their modules' tests start (this binary again,
//! `--exact --ignored`, with variables saying what to do), and return at once when
//! those are not set, as under `--include-ignored`.

// Shared helpers.
mod common;
#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/support/fake_apis.rs"]
mod fake_apis;
#[cfg(feature = "postgres")]
mod pg;

mod agents;
mod architecture;
mod blocks;
mod budgets;
mod cassette_protocols;
mod child_usage;
#[cfg(feature = "cli")]
mod cli;
mod control_flow;
mod data_model;
#[cfg(feature = "sqlite")]
mod durability;
mod e2e_stock_compare;
mod e2e_triage;
#[cfg(feature = "sqlite")]
mod events_hooks;
mod leases;
mod llm_anthropic;
mod llm_azure;
mod llm_bedrock;
mod llm_bedrock_stream;
mod llm_caps;
mod llm_fallback;
mod llm_gemini;
mod llm_layers;
mod llm_openai;
mod llm_rate_limit;
mod llm_retry;
mod llm_stream;
#[cfg(feature = "mcp")]
mod mcp_server;
#[cfg(feature = "mcp")]
mod mcp_servers;
mod parallel;
mod plan_args;
mod plan_inputs;
mod react;
mod runner;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
mod serve_browser;
#[cfg(feature = "server")]
mod serve_changes;
#[cfg(all(feature = "server", feature = "cli"))]
mod serve_cli;
#[cfg(feature = "server")]
mod serve_errors;
#[cfg(feature = "server")]
mod serve_events;
#[cfg(feature = "server")]
mod serve_plans;
#[cfg(feature = "server")]
mod serve_runs;
#[cfg(feature = "sqlite")]
mod storage_conformance;
mod storage_import;
#[cfg(feature = "postgres")]
mod storage_postgres;
mod storage_rows;
#[cfg(feature = "sqlite")]
mod storage_sqlite;
mod sub_plans;
mod tool_api;
mod tool_retries;
mod tools_calculator;
mod tools_files;
mod tools_llm;
mod tools_registry;
mod tools_search;
mod tools_weather;
mod typed_results;
mod workers;
#[cfg(all(feature = "sqlite", feature = "postgres"))]
mod workers_distributed;
