#![doc = include_str!("docs/tutorial.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod agent;
pub mod budget;
mod call;
pub mod cassette;
pub mod clarification;
pub mod config;
pub mod demo;
mod error;
pub mod events;
pub mod execution_context;
pub mod guide;
pub mod hooks;
pub mod http;
pub mod ids;
mod live;
pub mod llm;
pub mod logging;
mod macros;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod plan;
pub mod planner;
pub mod runner;
mod schema_check;
mod secret;
mod state;
pub mod storage;
pub mod testing;
mod text;
pub mod tool;
pub mod tools;
mod usage;
pub mod workflow;

pub use clarification::{Clarification, ClarificationKind};
pub use config::Config;
pub use error::{Error, Result};
pub use execution_context::ExecutionContext;
pub use ids::{ClarificationId, PlanId, WorkflowId};
pub use plan::{Plan, PlanBuilder, PlanContext, Step, Variable};
pub use runner::{PlanOptions, Runner};
pub use tool::{
    InMemoryToolRegistry, RetryHint, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec, TypedTool,
};
pub use workflow::{Output, Workflow, WorkflowState};

/// What a tool author needs besides this crate, re-exported so that its versions
/// always fit: `#[portia::async_trait]` on a `TypedTool` impl, and
/// `#[derive(portia::schemars::JsonSchema)] #[schemars(crate = "portia::schemars")]`
/// on its argument struct (this crate uses schemars 1.x; a 0.8 derive does not fit).
pub use async_trait::async_trait;
pub use schemars;
pub use serde_json;

/// The names most programs use: `use portia::prelude::*;`.
pub mod prelude {
    pub use crate::llm::LlmClient;
    pub use crate::tool::{
        InMemoryToolRegistry, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec, TypedTool,
    };
    pub use crate::{
        Clarification, Config, Error, Plan, PlanBuilder, Result, Runner, Workflow, WorkflowState, async_trait,
    };
}

// The README's Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
