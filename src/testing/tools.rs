use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

use crate::clarification::Clarification;
use crate::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};

/// What a [`MockTool`] does when run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum MockBehavior {
    /// Returns its arguments.
    Echo,
    /// Returns this value.
    Return(Value),
    /// Fails soft this many times, then returns the value.
    SoftErrorsThen(usize, Value),
    /// Always fails soft with this message.
    AlwaysSoft(String),
    /// Fails hard with this message.
    Hard(String),
    /// Asks for `argument` with an Input clarification until the step has a resolved
    /// answer for it, then returns `{"argument": answer}`.
    ClarifyInput(String),
    /// Asks to pick one of the options for `argument` until answered, then returns the choice.
    ClarifyChoice(String, Vec<Value>),
    /// Asks the human to act at the URL (an Action clarification) until the step has a
    /// resolved one, then returns the value. Its `ready()` answers what
    /// [`MockTool::set_ready`] last set (false at first).
    Action(String, Value),
}

/// One recorded call of a [`MockTool`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MockCall {
    /// The arguments it was given.
    pub args: Value,
    /// The step's clarifications it was given.
    pub clarifications: Vec<Clarification>,
    /// The step context it was given.
    pub step_context: String,
}

/// A tool double. Its schema takes any object and its spec has the defaults of
/// [`ToolSpec::new`] unless replaced; its calls are recorded.
pub struct MockTool {
    spec: ToolSpec,
    behavior: MockBehavior,
    calls: Mutex<Vec<MockCall>>,
    ready: Mutex<bool>,
}

impl fmt::Debug for MockTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockTool").field("id", &self.spec.id).field("behavior", &self.behavior).finish_non_exhaustive()
    }
}

impl MockTool {
    /// A tool with this id and behaviour.
    pub fn new(id: impl Into<String>, behavior: MockBehavior) -> Self {
        let id = id.into();
        Self {
            spec: ToolSpec::new(id.clone(), id, "A mock tool for tests."),
            behavior,
            calls: Mutex::new(Vec::new()),
            ready: Mutex::new(false),
        }
    }

    /// A tool that returns its arguments.
    pub fn echo(id: impl Into<String>) -> Self {
        Self::new(id, MockBehavior::Echo)
    }

    /// A tool that returns `value`.
    pub fn returning(id: impl Into<String>, value: Value) -> Self {
        Self::new(id, MockBehavior::Return(value))
    }

    /// Replaces the argument schema (default: any object).
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<crate::SharedValue>) -> Self {
        self.spec.args_schema = schema.into();
        self
    }

    /// Replaces the whole spec (id, flags, task argument, schema). The default is
    /// [`ToolSpec::new`] with the id as the name, as for any custom tool.
    #[must_use]
    pub fn with_spec(mut self, spec: ToolSpec) -> Self {
        self.spec = spec;
        self
    }

    /// Makes `ready()` answer `ready` from now on (for Action behaviour).
    pub fn set_ready(&self, ready: bool) {
        *self.ready.lock().unwrap_or_else(PoisonError::into_inner) = ready;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<MockCall> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn answered(ctx: &ToolRunContext, argument: &str) -> Option<Value> {
        ctx.clarified(argument).cloned()
    }
}

#[async_trait::async_trait]
impl Tool for MockTool {
    fn spec(&self) -> ToolSpec {
        self.spec.clone()
    }
    async fn ready(&self, _ctx: &ToolRunContext) -> Result<bool, ToolError> {
        Ok(*self.ready.lock().unwrap_or_else(PoisonError::into_inner))
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let attempt = {
            let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
            calls.push(MockCall {
                args: args.clone(),
                clarifications: ctx.clarifications.clone(),
                step_context: ctx.step_context.clone(),
            });
            calls.len()
        };
        match &self.behavior {
            MockBehavior::Echo => Ok(ToolOutput::Value(args.into())),
            MockBehavior::Return(value) => Ok(ToolOutput::Value(value.clone().into())),
            MockBehavior::SoftErrorsThen(n, value) if attempt > *n => Ok(ToolOutput::Value(value.clone().into())),
            MockBehavior::SoftErrorsThen(..) => Err(ToolError::soft(format!("transient failure #{attempt}"))),
            MockBehavior::AlwaysSoft(message) => Err(ToolError::soft(format!("{message} #{attempt}"))),
            MockBehavior::Hard(message) => Err(ToolError::hard(message)),
            MockBehavior::ClarifyInput(argument) => Ok(match Self::answered(ctx, argument) {
                Some(answer) => ToolOutput::value(json!({ argument.as_str(): answer })),
                None => ToolOutput::clarification(Clarification::input(
                    ctx.workflow_id,
                    argument,
                    format!("What is {argument}?"),
                )),
            }),
            MockBehavior::ClarifyChoice(argument, options) => Ok(match Self::answered(ctx, argument) {
                Some(choice) => ToolOutput::Value(choice.into()),
                None => ToolOutput::clarification(Clarification::multiple_choice(
                    ctx.workflow_id,
                    argument,
                    options.clone(),
                    format!("Which {argument}?"),
                )),
            }),
            MockBehavior::Action(url, value) => {
                let done = ctx.clarifications.iter().any(|c| c.resolved && c.category() == "Action");
                Ok(if done {
                    ToolOutput::Value(value.clone().into())
                } else {
                    ToolOutput::clarification(Clarification::action(ctx.workflow_id, url, "Sign in to continue"))
                })
            }
        }
    }
}
