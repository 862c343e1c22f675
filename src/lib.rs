//! # portia: plan-then-execute LLM agents
//!
//! An LLM turns a goal into an inspectable [`Plan`]; a [`Runner`] then carries the
//! plan out step by step as a [`Workflow`], one agent per step, each calling its
//! step's tool. When a step needs a human (a missing value, a choice, a sign-in),
//! the workflow stops in `NEED_CLARIFICATION` until someone answers.
//!
//! ```no_run
//! use portia::{Config, InMemoryToolRegistry, Runner};
//!
//! # #[tokio::main] async fn main() -> portia::Result<()> {
//! let runner = Runner::new(Config::from_env()?, InMemoryToolRegistry::new())?;
//! let plan = runner.generate_plan("Which stock price grew faster in 2024, Amazon or Google?").await?;
//! println!("{}", serde_json::to_string_pretty(&plan).unwrap());
//! let workflow = runner.create_workflow(&plan).await?;
//! let workflow = runner.execute_workflow(workflow).await?;
//! println!("{}", serde_json::to_string_pretty(&workflow).unwrap());
//! # Ok(()) }
//! ```
//!
//! ## Modules
//! - [`plan`]: plans, steps, [`PlanBuilder`] and validation.
//! - [`workflow`]: workflows, their state machine and outputs.
//! - [`clarification`]: questions for humans.
//! - [`config`]: settings from the environment, files or code.
//! - [`runner`]: the [`Runner`] and its builder.
//! - [`planner`] and [`agent`]: the planning and execution strategies.
//! - [`tool`]: the [`Tool`] trait and registries.
//! - [`tools`]: the built-in tools (search, weather, calculator, LLM, files) and registries of them.
//! - [`llm`]: the [`LlmClient`](llm::LlmClient) seam.
//! - [`storage`]: memory and disk storage.
//! - `testing` (feature `testing`): a scripted LLM and mock tools.

pub mod agent;
pub mod clarification;
pub mod config;
mod error;
pub mod execution_context;
pub mod http;
pub mod ids;
pub mod llm;
pub mod plan;
pub mod planner;
pub mod runner;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
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
pub use tool::{InMemoryToolRegistry, Tool, ToolError, ToolOutput, ToolRegistry, ToolRunContext, TypedTool};
pub use workflow::{Output, Workflow, WorkflowState};
