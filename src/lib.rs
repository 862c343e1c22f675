#![doc = include_str!("docs/tutorial.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The public modules, one per concept; everything else is the crate's own.
pub mod agent;
pub mod clarification;
pub mod config;
pub mod llm;
pub mod plan;
pub mod planner;
pub mod runner;
pub mod storage;
pub mod testing;
pub mod tool;
pub mod tools;
pub mod workflow;

// Guides: documentation pages, no items.
pub mod guide;

// The ground floor: vocabulary every layer shares, importing nothing above it.
mod call;
mod error;
mod execution_context;
mod ids;
mod macros;
mod secret;
mod state;
mod text;
mod usage;
mod value;

// Machinery behind the public modules, reached through their re-exports.
mod budget;
mod cassette;
mod demo;
mod events;
mod hooks;
mod http;
mod live;
mod logging;
mod memo;
mod schema_check;

pub use clarification::{Clarification, ClarificationKind};
pub use config::Config;
pub use error::{Error, Result};
pub use execution_context::ExecutionContext;
pub use ids::{ClarificationId, IdParseError, PlanId, WorkflowId};
pub use plan::{Exit, Plan, PlanBuilder, PlanContext, Step, Variable};
pub use runner::{PlanOptions, Runner};
pub use tool::{
    InMemoryToolRegistry, RetryHint, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec, TypedTool,
};
pub use value::SharedValue;
pub use workflow::{FailureKind, Output, Workflow, WorkflowState};

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
    // The storage roles, unnamed: they put the store's methods in scope.
    pub use crate::storage::{Journal as _, LeaseQueue as _, PlanStore as _, Retention as _, WorkflowStore as _};
    pub use crate::tool::{
        InMemoryToolRegistry, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec, TypedTool,
    };
    pub use crate::{
        Clarification, Config, Error, FailureKind, Plan, PlanBuilder, Result, Runner, Workflow, WorkflowState,
        async_trait,
    };
}

// The README's Rust examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
