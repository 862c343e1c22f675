#![doc = include_str!("docs/tutorial.md")]

pub mod agent;
pub mod clarification;
pub mod config;
mod error;
pub mod execution_context;
pub mod http;
pub mod ids;
pub mod llm;
pub mod logging;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod plan;
pub mod planner;
pub mod runner;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
mod text;
pub mod tool;
pub mod tools;
pub mod workflow;

pub use clarification::{Clarification, ClarificationKind};
pub use config::Config;
pub use error::{Error, Result};
pub use execution_context::ExecutionContext;
pub use ids::{ClarificationId, PlanId, WorkflowId};
pub use plan::{Plan, PlanBuilder, PlanContext, Step, Variable};
pub use runner::{PlanOptions, Runner};
pub use tool::{InMemoryToolRegistry, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, ToolSpec, TypedTool};
pub use workflow::{Output, Workflow, WorkflowState};

// The README's Rust examples are compiled and run as doctests.
#[cfg(all(doctest, feature = "testing"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
