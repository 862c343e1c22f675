//! The keyless demo: the seed scenario replayed from a cassette shipped in the crate.
//!
//! [`CASSETTE`] was recorded by `cargo run --example record_demo` from the
//! repository's own simulated OpenAI and Tavily APIs (`examples/support/fake_apis.rs`,
//! the benchmark's server), not from real services: the figures in it are the
//! simulation's. Its prompts hold the date it was recorded on, which the replay fixes.
//! `portia demo` and `cargo run --example stock_compare -- --demo` run it with no key
//! and no network (offline mode is switched on).

use std::sync::Arc;

use crate::cassette::{Cassette, Replayer};
use crate::storage::InMemoryStorage;
use crate::tool::ToolRegistry;
use crate::tools::example_tool_registry;
use crate::{Config, Result, Runner};

/// The seed scenario's query.
pub const QUERY: &str = "Which stock price grew faster in 2024, Amazon or Google?";

/// The shipped recording of [`QUERY`] (`demo/stock_compare.cassette.json`).
pub const CASSETTE: &str = include_str!("../demo/stock_compare.cassette.json");

/// The shipped cassette, read.
///
/// # Errors
/// Only if the shipped file were damaged.
pub fn cassette() -> Result<Cassette> {
    Cassette::from_json(CASSETTE)
}

/// A runner that replays the demo: offline, in-memory storage, the example tools
/// answering from the cassette, and the recording's date in its prompts. Settings
/// other than those come from `config`.
///
/// # Errors
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a bad `config`.
pub fn runner(mut config: Config) -> Result<(Runner, Replayer)> {
    crate::http::set_offline(true);
    config.storage = crate::config::StorageKind::Memory;
    let replayer = Replayer::new(cassette()?);
    let tools: Arc<dyn ToolRegistry> = Arc::new(example_tool_registry(&config));
    let mut builder = Runner::builder(config)
        .shared_tools(Arc::new(replayer.tools(tools)))
        .storage(Arc::new(InMemoryStorage::new()))
        .llm(replayer.llm());
    if let Some(today) = replayer.today() {
        builder = builder.today(today);
    }
    Ok((builder.build()?, replayer))
}
