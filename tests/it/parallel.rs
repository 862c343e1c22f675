//! Independent steps run at the same time; outputs stay in plan order; a failure or
//! a clarification in one branch lets running steps finish and stops new ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{config, harness, last_user_text};
use portia::config::ExecutionMode;
use portia::llm::{LlmRequest, LlmResponse, ToolCall};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::tool::ToolRunContext;
use portia::{InMemoryToolRegistry, PlanBuilder, Tool, ToolError, ToolOutput, ToolSpec, WorkflowState};
use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::common;

/// A tool that records how many of its calls are in flight at once and, when given
/// a barrier, waits at it (so two calls can only finish if both run together).
#[derive(Debug)]
struct GateTool {
    id: &'static str,
    barrier: Option<Arc<Barrier>>,
    delay: Duration,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    result: Result<Value, ToolError>,
}

impl GateTool {
    fn new(id: &'static str, counters: &(Arc<AtomicUsize>, Arc<AtomicUsize>)) -> Self {
        Self {
            id,
            barrier: None,
            delay: Duration::ZERO,
            in_flight: counters.0.clone(),
            max_in_flight: counters.1.clone(),
            result: Ok(json!(format!("{id} result"))),
        }
    }
}

#[async_trait::async_trait]
impl Tool for GateTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new(self.id, self.id, "A gate.").args_schema(json!({"type": "object"}))
    }
    async fn run(&self, _ctx: &ToolRunContext, _args: Value) -> Result<ToolOutput, ToolError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(barrier) = &self.barrier {
            barrier.wait().await;
        }
        tokio::time::sleep(self.delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.result.clone().map(ToolOutput::value)
    }
}

fn counters() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)))
}

/// Calls the tool named on the step's task line ("Task: use <tool>"), or answers in text.
fn call_named_tool(request: &LlmRequest) -> Result<LlmResponse, portia::llm::LlmError> {
    let prompt = last_user_text(request);
    match request.tools.first() {
        Some(tool) if prompt.contains(&tool.name) => Ok(LlmResponse {
            tool_calls: vec![ToolCall { id: "c".into(), name: tool.name.clone(), arguments: json!({}) }],
            ..LlmResponse::default()
        }),
        _ => Ok(LlmResponse::text("combined")),
    }
}

fn script(calls: usize) -> ScriptedLlm {
    (0..calls).fold(ScriptedLlm::new(), |llm, _| llm.respond_with(call_named_tool))
}

fn diamond() -> portia::Plan {
    PlanBuilder::new("q")
        .step("use left_tool", Some("left_tool"), "$left")
        .step("use right_tool", Some("right_tool"), "$right")
        .step("combine both", None, "$both")
        .input("$left", "left")
        .input("$right", "right")
        .build()
}

#[tokio::test]
async fn independent_steps_are_in_flight_at_the_same_time() {
    let c = counters();
    let barrier = Arc::new(Barrier::new(2));
    let mut left = GateTool::new("left_tool", &c);
    left.barrier = Some(barrier.clone());
    let mut right = GateTool::new("right_tool", &c);
    right.barrier = Some(barrier);
    let tools = InMemoryToolRegistry::new().with(left).unwrap().with(right).unwrap();
    let h = harness(config(ExecutionMode::Parallel, false), tools, script(3));
    // Run one at a time, the barrier would never open: the timeout turns that into a failure.
    let done = tokio::time::timeout(Duration::from_secs(10), h.runner.run_plan(&diamond()))
        .await
        .expect("steps ran one at a time");
    let done = done.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(c.1.load(Ordering::SeqCst), 2);
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, json!("combined"));
}

#[tokio::test(start_paused = true)]
async fn outputs_are_recorded_in_plan_order_whichever_finishes_first() {
    let c = counters();
    let mut left = GateTool::new("left_tool", &c);
    left.delay = Duration::from_millis(300);
    let mut right = GateTool::new("right_tool", &c);
    right.delay = Duration::from_millis(10);
    let tools = InMemoryToolRegistry::new().with(left).unwrap().with(right).unwrap();
    let h = harness(config(ExecutionMode::Parallel, false), tools, script(3));
    let started = tokio::time::Instant::now();
    let done = h.runner.run_plan(&diamond()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(300), "the latency is the slower branch, not the sum");
    let names: Vec<&str> = done.outputs().step_outputs.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["$left", "$right", "$both"]);
    // The right branch finished first: the saved snapshot after it holds only $right.
    let first_output_save = h.storage.snapshots().into_iter().find(|w| !w.outputs().step_outputs.is_empty()).unwrap();
    assert!(first_output_save.outputs().step_outputs.contains("$right"));
    assert_eq!(first_output_save.current_step_index(), 0, "the lowest step not yet done");
}

#[tokio::test]
async fn sequential_mode_runs_one_step_at_a_time() {
    let c = counters();
    let mut left = GateTool::new("left_tool", &c);
    left.delay = Duration::from_millis(20);
    let right = GateTool::new("right_tool", &c);
    let tools = InMemoryToolRegistry::new().with(left).unwrap().with(right).unwrap();
    let h = harness(config(ExecutionMode::Sequential, false), tools, script(3));
    let done = h.runner.run_plan(&diamond()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(c.1.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failure_lets_running_steps_finish_and_stops_new_ones() {
    let c = counters();
    let mut left = GateTool::new("left_tool", &c);
    left.result = Err(ToolError::hard("left exploded"));
    let mut right = GateTool::new("right_tool", &c);
    right.delay = Duration::from_millis(200);
    let later = Arc::new(MockTool::returning("later_tool", json!("never")));
    let mut tools = InMemoryToolRegistry::new().with(left).unwrap().with(right).unwrap();
    tools.register(later.clone()).unwrap();
    // Three independent steps, two at a time: the third could start once the first
    // ends, but that one fails, so it must not.
    let plan = PlanBuilder::new("q")
        .step("use left_tool", Some("left_tool"), "$left")
        .step("use right_tool", Some("right_tool"), "$right")
        .step("use later_tool", Some("later_tool"), "$later")
        .build();
    let config = portia::Config::builder().max_parallel_steps(2usize).summarize_final_output(false).build().unwrap();
    let h = harness(config, tools, script(2));
    let done = h.runner.run_plan(&plan).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Failed);
    let failure = done.failure().unwrap();
    assert_eq!((failure.step, failure.message.as_str()), (Some(0), "Tool left_tool failed: left exploded"));
    assert!(done.outputs().step_outputs.contains("$right"), "the running branch finished and was kept");
    assert!(later.calls().is_empty(), "no step started after the failure");
    assert_eq!(h.llm.requests().len(), 2);
    let stored = h.runner.get_workflow(done.id()).await.unwrap();
    assert_eq!(stored, done);
}

#[tokio::test]
async fn clarifications_from_parallel_branches_are_all_listed_and_resume_runs_only_what_is_left() {
    let ask_left = Arc::new(MockTool::new("left_tool", MockBehavior::ClarifyInput("colour".into())));
    let ask_right = Arc::new(MockTool::new("right_tool", MockBehavior::ClarifyInput("size".into())));
    let tools = InMemoryToolRegistry::from_tools([ask_left.clone() as Arc<dyn Tool>, ask_right.clone()]).unwrap();
    let h = harness(config(ExecutionMode::Parallel, false), tools, script(5));
    let waiting = h.runner.run_plan(&diamond()).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let mut asked: Vec<(Option<usize>, Option<&str>)> =
        waiting.outputs().clarifications.iter().map(|c| (c.step, c.argument_name())).collect();
    asked.sort();
    assert_eq!(asked, [(Some(0), Some("colour")), (Some(1), Some("size"))]);

    let left = waiting.outputs().clarifications.iter().find(|c| c.step == Some(0)).unwrap().clone();
    let partly = h.runner.resolve_clarification(&left, "red").await.unwrap();
    assert_eq!(partly.state(), WorkflowState::NeedClarification, "one answer is still missing");
    let right = waiting.outputs().clarifications.iter().find(|c| c.step == Some(1)).unwrap().clone();
    let ready = h.runner.resolve_clarification(&right, "large").await.unwrap();
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$left").unwrap().value, json!({"colour": "red"}));
    assert_eq!(done.outputs().step_outputs.get("$right").unwrap().value, json!({"size": "large"}));
    assert_eq!((ask_left.calls().len(), ask_right.calls().len()), (2, 2));
}

#[tokio::test]
async fn a_clarification_in_one_branch_keeps_the_other_branchs_output_and_does_not_rerun_it() {
    let c = counters();
    let ask = Arc::new(MockTool::new("left_tool", MockBehavior::ClarifyInput("colour".into())));
    let right = Arc::new(GateTool::new("right_tool", &c));
    let tools = InMemoryToolRegistry::from_tools([ask.clone() as Arc<dyn Tool>, right]).unwrap();
    let h = harness(config(ExecutionMode::Parallel, false), tools, script(4));
    let waiting = h.runner.run_plan(&diamond()).await.unwrap();
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    assert!(waiting.outputs().step_outputs.contains("$right"));
    let clarification = waiting.outputs().clarifications[0].clone();
    let ready = h.runner.resolve_clarification(&clarification, "blue").await.unwrap();
    let done = h.runner.execute_workflow(ready).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(c.0.load(Ordering::SeqCst), 0);
    assert_eq!(c.1.load(Ordering::SeqCst), 1, "the finished branch ran once");
    assert_eq!(h.llm.requests().len(), 4, "left twice, right once, combine once");
}

#[tokio::test]
async fn the_parallel_limit_is_respected() {
    let c = counters();
    let ids = ["t0", "t1", "t2", "t3", "t4", "t5"];
    let mut tools = InMemoryToolRegistry::new();
    let mut builder = PlanBuilder::new("q");
    for id in ids {
        let mut tool = GateTool::new(id, &c);
        tool.delay = Duration::from_millis(20);
        tools.register(Arc::new(tool)).unwrap();
        builder = builder.step(format!("use {id}"), Some(id), format!("${id}"));
    }
    let config = portia::Config::builder().max_parallel_steps(3usize).summarize_final_output(false).build().unwrap();
    let h = harness(config, tools, script(ids.len()));
    let done = h.runner.run_plan(&builder.build()).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(c.1.load(Ordering::SeqCst), 3);
}
