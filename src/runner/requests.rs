//! Requests a [`Runner`] makes: each is built with setters and runs when awaited,
//! so `runner.execute_query(q).await` and
//! `runner.execute_query(q).tools(["search_tool"]).await` are one method.

use std::borrow::Cow;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::inputs::Inputs;
use super::{Placement, PlanOptions, Planning, Runner, TypedWorkflow};
use crate::Result;
use crate::execution_context::ExecutionContext;
use crate::ids::WorkflowId;
use crate::plan::{Plan, schema_of};
use crate::workflow::Workflow;

type Running<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// The setters every request about a query shares: which tools the planner is
/// offered, example plans, and who the plan (and its workflow) is for.
macro_rules! query_request {
    ($(#[$doc:meta])* $name:ident -> $output:ty, |$runner:ident, $query:ident, $options:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a request does nothing until it is awaited"]
        pub struct $name<'a> {
            runner: &'a Runner,
            query: String,
            options: PlanOptions,
        }

        impl<'a> $name<'a> {
            pub(super) fn new(runner: &'a Runner, query: String) -> Self {
                Self { runner, query, options: PlanOptions::new() }
            }

            /// Offers the planner only these tools (every tool the registry matches
            /// otherwise).
            pub fn tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
                self.options = self.options.tools(ids);
                self
            }

            /// Example plans for the planner to imitate.
            pub fn examples(mut self, examples: Vec<Plan>) -> Self {
                self.options = self.options.examples(examples);
                self
            }

            /// Who the plan, and the workflow made from it, is for.
            pub fn execution_context(mut self, context: ExecutionContext) -> Self {
                self.options = self.options.execution_context(context);
                self
            }

            /// Replaces every option at once.
            pub fn options(mut self, options: PlanOptions) -> Self {
                self.options = options;
                self
            }
        }

        impl<'a> IntoFuture for $name<'a> {
            type Output = Result<$output>;
            type IntoFuture = Running<'a, $output>;

            fn into_future(self) -> Self::IntoFuture {
                let Self { runner: $runner, query: $query, options: $options } = self;
                Box::pin(async move { $body })
            }
        }
    };
}

/// The setters every request about a plan shares: who its workflow is for,
/// whether the workflow pays for the plan's planning, and the plan's inputs.
macro_rules! plan_request {
    ($(#[$doc:meta])* $name:ident -> $output:ty, |$runner:ident, $plan:ident, $context:ident, $planning:ident, $inputs:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a request does nothing until it is awaited"]
        pub struct $name<'a> {
            runner: &'a Runner,
            plan: &'a Plan,
            context: ExecutionContext,
            planning: Planning,
            inputs: Inputs,
        }

        impl<'a> $name<'a> {
            pub(super) fn new(runner: &'a Runner, plan: &'a Plan) -> Self {
                let (context, planning, inputs) = (ExecutionContext::default(), Planning::Referenced, Inputs::new());
                Self { runner, plan, context, planning, inputs }
            }

            /// Gives the plan's input `name` (with or without its `$`) a value. An
            /// input the plan declares without a default must be given; one it does
            /// not declare is refused ([`Error::PlanInputs`](crate::Error::PlanInputs)).
            pub fn input(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
                self.inputs.insert(name.into(), value.into());
                self
            }

            /// Gives the plan's inputs their values, by name, as [`input`](Self::input) does.
            pub fn inputs(mut self, inputs: Map<String, Value>) -> Self {
                self.inputs.extend(inputs);
                self
            }

            /// Who the workflow is for (an empty context otherwise).
            pub fn execution_context(mut self, context: ExecutionContext) -> Self {
                self.context = context;
                self
            }

            /// Counts the plan's planning calls in this workflow's usage, cost and
            /// budget, as [`Runner::execute_query`] does: for a plan written just for
            /// this workflow. Without it they are only a reference
            /// ([`WorkflowUsage::planning`](crate::workflow::WorkflowUsage::planning)),
            /// so the workflows of one plan do not each count them.
            pub fn count_planning(mut self) -> Self {
                self.planning = Planning::Counted;
                self
            }
        }

        impl<'a> IntoFuture for $name<'a> {
            type Output = Result<$output>;
            type IntoFuture = Running<'a, $output>;

            fn into_future(self) -> Self::IntoFuture {
                let Self { runner: $runner, plan: $plan, context: $context, planning: $planning, inputs: $inputs } = self;
                Box::pin(async move { $body })
            }
        }
    };
}

query_request!(
    /// Plans a query and saves the plan: [`Runner::generate_plan`].
    GeneratePlan -> Plan,
    |runner, query, options| runner.plan_query(query, options).await
);

query_request!(
    /// Plans a query, creates its workflow and runs it: [`Runner::execute_query`].
    ExecuteQuery -> Workflow,
    |runner, query, options| {
        let context = options.execution_context.clone();
        let plan = runner.make_plan(query, options).await?;
        runner.place_new_workflow(Cow::Owned(plan), context, Planning::Counted, &Inputs::new(), Placement::Started).await
    }
);

query_request!(
    /// Plans a query here and queues its workflow for the workers: [`Runner::submit_query`].
    SubmitQuery -> WorkflowId,
    |runner, query, options| {
        let context = options.execution_context.clone();
        let plan = runner.make_plan(query, options).await?;
        runner.place_new_workflow(Cow::Owned(plan), context, Planning::Counted, &Inputs::new(), Placement::Queued).await.map(|w| w.id())
    }
);

plan_request!(
    /// Checks and saves a plan and creates its NOT_STARTED workflow: [`Runner::create_workflow`].
    CreateWorkflow -> Workflow,
    |runner, plan, context, planning, inputs| runner.place_new_workflow(Cow::Borrowed(plan), context, planning, &inputs, Placement::Stored).await
);

plan_request!(
    /// Creates a plan's workflow and runs it: [`Runner::run_plan`].
    RunPlan -> Workflow,
    |runner, plan, context, planning, inputs| {
        runner.place_new_workflow(Cow::Borrowed(plan), context, planning, &inputs, Placement::Started).await
    }
);

plan_request!(
    /// Queues a plan's workflow for the workers: [`Runner::submit_plan`].
    SubmitPlan -> WorkflowId,
    |runner, plan, context, planning, inputs| runner.place_new_workflow(Cow::Borrowed(plan), context, planning, &inputs, Placement::Queued).await.map(|w| w.id())
);

/// Plans a query for a typed result, runs it and reads the output:
/// [`Runner::execute_query_as`].
#[derive(Debug)]
#[must_use = "a request does nothing until it is awaited"]
pub struct ExecuteQueryAs<'a, T> {
    request: ExecuteQuery<'a>,
    output: PhantomData<fn() -> T>,
}

impl<'a, T> ExecuteQueryAs<'a, T> {
    pub(super) fn new(runner: &'a Runner, query: String) -> Self {
        Self { request: ExecuteQuery::new(runner, query), output: PhantomData }
    }

    /// Offers the planner only these tools (every tool the registry matches otherwise).
    pub fn tools<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.request = self.request.tools(ids);
        self
    }

    /// Example plans for the planner to imitate.
    pub fn examples(mut self, examples: Vec<Plan>) -> Self {
        self.request = self.request.examples(examples);
        self
    }

    /// Who the plan, and the workflow made from it, is for.
    pub fn execution_context(mut self, context: ExecutionContext) -> Self {
        self.request = self.request.execution_context(context);
        self
    }
}

impl<'a, T: JsonSchema + DeserializeOwned + Send + 'a> IntoFuture for ExecuteQueryAs<'a, T> {
    type Output = Result<TypedWorkflow<T>>;
    type IntoFuture = Running<'a, TypedWorkflow<T>>;

    fn into_future(self) -> Self::IntoFuture {
        let ExecuteQuery { runner, query, mut options } = self.request;
        if options.output_schema.is_none() {
            options = options.output_schema(schema_of::<T>());
        }
        Box::pin(async move { TypedWorkflow::from_workflow(ExecuteQuery { runner, query, options }.await?) })
    }
}

/// Runs a plan and reads its output as a type: [`Runner::run_plan_as`].
#[derive(Debug)]
#[must_use = "a request does nothing until it is awaited"]
pub struct RunPlanAs<'a, T> {
    request: RunPlan<'a>,
    output: PhantomData<fn() -> T>,
}

impl<'a, T> RunPlanAs<'a, T> {
    pub(super) fn new(runner: &'a Runner, plan: &'a Plan) -> Self {
        Self { request: RunPlan::new(runner, plan), output: PhantomData }
    }

    /// Who the workflow is for (an empty context otherwise).
    pub fn execution_context(mut self, context: ExecutionContext) -> Self {
        self.request = self.request.execution_context(context);
        self
    }

    /// Counts the plan's planning calls in the workflow's usage: [`RunPlan::count_planning`].
    pub fn count_planning(mut self) -> Self {
        self.request = self.request.count_planning();
        self
    }

    /// Gives the plan's input `name` a value: [`RunPlan::input`].
    pub fn input(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.request = self.request.input(name, value);
        self
    }

    /// Gives the plan's inputs their values: [`RunPlan::inputs`].
    pub fn inputs(mut self, inputs: Map<String, Value>) -> Self {
        self.request = self.request.inputs(inputs);
        self
    }
}

impl<'a, T: JsonSchema + DeserializeOwned + Send + 'a> IntoFuture for RunPlanAs<'a, T> {
    type Output = Result<TypedWorkflow<T>>;
    type IntoFuture = Running<'a, TypedWorkflow<T>>;

    fn into_future(self) -> Self::IntoFuture {
        let RunPlan { runner, plan, context, planning, inputs } = self.request;
        Box::pin(async move {
            let workflow = if plan.output_schema.is_some() {
                runner.place_new_workflow(Cow::Borrowed(plan), context, planning, &inputs, Placement::Started).await?
            } else {
                let mut typed = plan.clone();
                typed.output_schema = Some(schema_of::<T>());
                runner.place_new_workflow(Cow::Owned(typed), context, planning, &inputs, Placement::Started).await?
            };
            TypedWorkflow::from_workflow(workflow)
        })
    }
}
