//! Test doubles, shipped as a product (feature `testing`).
//!
//! - [`ScriptedLlm`]: an [`LlmClient`](crate::llm::LlmClient) that returns queued
//!   replies in order, records every request, and panics on a call nothing was
//!   scripted for or when dropped with replies left over.
//! - [`MockTool`]: a configurable tool that echoes, returns a value, fails soft or
//!   hard, or raises a clarification, and records its calls.
//!
//! ```
//! use portia::testing::{MockTool, ScriptedLlm};
//! use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowState};
//! use portia::serde_json::json;
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> portia::Result<()> {
//! let llm = Arc::new(
//!     ScriptedLlm::new()
//!         .tool_call("weather_tool", json!({"city": "Paris"}))
//!         .text("It is sunny in Paris."),
//! );
//! let tools = InMemoryToolRegistry::new().with(MockTool::returning("weather_tool", json!("sunny, 21°C")))?;
//! let runner = Runner::builder(Config::default()).tools(tools).llm(llm.clone()).build()?;
//! let plan = PlanBuilder::new("Weather in Paris?").step("Get the weather in Paris", Some("weather_tool"), "$weather").build();
//! let workflow = runner.run_plan(&plan).await?;
//! assert_eq!(workflow.state(), WorkflowState::Complete);
//! assert_eq!(llm.requests().len(), 2); // one tool call, one final summary
//! # Ok(()) }
//! ```

mod conformance;
mod scripted;
mod tools;

pub use conformance::{ConformanceStore, StorageConformance, storage_conformance};
pub use scripted::{ScriptedLlm, estimate_tokens};
pub use tools::{MockBehavior, MockCall, MockTool};

pub use crate::cassette::{
    Cassette, CassetteTools, FORMAT as CASSETTE_FORMAT, LlmExchange, REDACTED, Recorder, Replayer, ToolExchange,
    ToolOutcome,
};

/// The keyless demo: the seed scenario ("Which stock price grew faster in 2024,
/// Amazon or Google?") replayed from the recording shipped with the crate, as
/// `portia demo` and `cargo run --example stock_compare -- --demo` run it.
pub mod demo {
    pub use crate::demo::{CASSETTE, QUERY, cassette, runner};
}
