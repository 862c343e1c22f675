//! Guides: one page per feature, longer than a type's documentation and shorter
//! than the source. The crate-level page is the tutorial; start there.
//!
//! | guide | covers |
//! |---|---|
//! | [`cli`] | the `portia` command line, its exit codes, the keyless demo |
//! | [`configuration`] | every setting, the LLM providers, retries, logging |
//! | [`plan_json`] | plans and workflows as JSON, plan-time arguments, parallel steps, states |
//! | [`tools`] | writing a tool, and the built-in tools |
//! | [`clarifications`] | asking a human and going on |
//! | [`durability`] | storage, leases, the tool-call journal, typed failures |
//! | [`workers`] | queueing workflows for worker processes |
//! | [`hooks`] | hooks, approvals, watching a run, tracing |
//! | [`budgets`] | capping what a workflow spends |
//! | [`mcp`] | MCP servers' tools, and this SDK as an MCP server (feature `mcp`) |
//! | [`testing`] | the scripted LLM, mock tools, record and replay, this crate's tests |
//! | [`performance`] | the benchmark and its figures |
//!
//! The pages are the markdown files in `src/docs/`, which the README links to.

#[doc = include_str!("docs/cli.md")]
pub mod cli {}

#[doc = include_str!("docs/configuration.md")]
pub mod configuration {}

#[doc = include_str!("docs/plan-json.md")]
pub mod plan_json {}

#[doc = include_str!("docs/tools.md")]
pub mod tools {}

#[doc = include_str!("docs/clarifications.md")]
pub mod clarifications {}

/// Durable runs: the page is the [`storage`](crate::storage) module's documentation
/// (`src/docs/durability.md`): versions and leases, the tool-call journal, typed
/// failures, the stores (memory, SQLite, Postgres and TLS), watching, retention, and
/// writing a store of your own.
pub mod durability {}

#[doc = include_str!("docs/workers.md")]
pub mod workers {}

#[doc = include_str!("docs/hooks.md")]
pub mod hooks {}

#[doc = include_str!("docs/budgets.md")]
pub mod budgets {}

#[doc = include_str!("docs/mcp.md")]
pub mod mcp {}

#[doc = include_str!("docs/testing.md")]
pub mod testing {}

#[doc = include_str!("docs/performance.md")]
pub mod performance {}
