//! JSON shapes: the seed document's plan and workflow, and round trips of every type.

use portia::{Clarification, ExecutionContext, Output, Plan, PlanBuilder, Workflow, WorkflowState};
use serde_json::{Value, json};

const SEED_PLAN: &str = include_str!("../fixtures/seed_plan.json");
const SEED_WORKFLOW: &str = include_str!("../fixtures/seed_workflow.json");

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
    serde_json::from_str(&serde_json::to_string_pretty(value).unwrap()).unwrap()
}

#[test]
fn seed_plan_deserializes_with_tool_name_and_bare_id() {
    let plan: Plan = serde_json::from_str(SEED_PLAN).unwrap();
    assert_eq!(plan.id.to_string(), "plan-1dcd74a4-0af5-490a-a7d0-0df4fd983977");
    assert_eq!(plan.plan_context.tool_ids, ["calculator_tool", "weather_tool", "search_tool"]);
    assert_eq!(plan.steps.len(), 3);
    assert_eq!(plan.steps[0].tool_id.as_deref(), Some("Search Tool"));
    assert_eq!(plan.steps[2].tool_id, None);
    assert_eq!(plan.steps[2].inputs[1].name, "$google_stock_growth");
    assert!(plan.steps[2].inputs.iter().all(|v| v.is_reference()));
}

#[test]
fn seed_workflow_deserializes_and_keeps_output_order() {
    let workflow: Workflow = serde_json::from_str(SEED_WORKFLOW).unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete);
    assert_eq!(workflow.current_step_index(), 2);
    assert_eq!(workflow.plan_id().to_string(), "plan-a89efeb0-51ef-4f2c-b435-a936c27c3cfc");
    let names: Vec<&str> = workflow.outputs().step_outputs.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["$amazon_stock_growth", "$google_stock_growth", "$faster_growth"]);
    let last = workflow.outputs().final_output.as_ref().unwrap();
    assert!(last.value.as_str().unwrap().starts_with("In 2024, Amazon's stock price grew by 52%"));
    assert_eq!(workflow.execution_context(), &ExecutionContext::default());
}

/// A workflow and an LLM-call event as 0.3 stored them, before cached prompt tokens
/// were counted: they read with none, and write back in the same shape.
#[test]
fn usage_stored_by_0_3_reads_with_no_cached_tokens() {
    let mut value: Value = serde_json::from_str(SEED_WORKFLOW).unwrap();
    let call = json!({"llm_calls": 1, "prompt_tokens": 600, "completion_tokens": 40});
    value["usage"] = json!({"total": {"llm_calls": 2, "prompt_tokens": 900, "completion_tokens": 50},
                            "planning": call, "steps": {"$faster_growth": call}, "cost_usd": 0.0012, "running_ms": 850});
    let workflow: Workflow = serde_json::from_value(value.clone()).unwrap();
    let usage = workflow.usage();
    assert_eq!((usage.total.prompt_tokens, usage.total.cache_read_tokens, usage.total.cache_write_tokens), (900, 0, 0));
    assert_eq!(usage.steps["$faster_growth"].uncached_prompt_tokens(), 600);
    assert_eq!(serde_json::to_value(&workflow).unwrap()["usage"], value["usage"], "the same shape written back");

    let event = json!({"seq": 3, "workflow_id": workflow.id(), "at": "2026-11-25T10:00:00Z", "event": "llm_call_finished",
                       "step_output": "$faster_growth", "model": "gpt-4.1-mini", "usage": call, "cost_usd": 0.0003,
                       "latency_ms": 420});
    let stored: portia::runner::StoredEvent = serde_json::from_value(event).unwrap();
    let portia::runner::EventKind::LlmCallFinished { usage, .. } = stored.event.kind else { panic!("{stored:?}") };
    assert_eq!((usage.prompt_tokens, usage.cache_read_tokens), (600, 0));
}

#[test]
fn seed_workflow_serializes_to_the_documented_keys() {
    let workflow: Workflow = serde_json::from_str(SEED_WORKFLOW).unwrap();
    let value = serde_json::to_value(&workflow).unwrap();
    let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    for key in ["id", "plan_id", "current_step_index", "state", "execution_context", "outputs", "usage"] {
        assert!(keys.contains(&key), "missing {key} in {keys:?}");
    }
    assert!(value["id"].as_str().unwrap().starts_with("wkfl-"));
    assert_eq!(value["state"], "COMPLETE");
    let mut outputs: Vec<&str> = value["outputs"].as_object().unwrap().keys().map(String::as_str).collect();
    outputs.sort_unstable();
    assert_eq!(outputs, ["clarifications", "final_output", "step_outputs"]);
    let text = serde_json::to_string(&workflow).unwrap();
    let at = |key: &str| text.find(key).unwrap();
    assert!(
        at("\"$amazon_stock_growth\"") < at("\"$google_stock_growth\"")
            && at("\"$google_stock_growth\"") < at("\"$faster_growth\"")
    );
    assert_eq!(round_trip(&workflow), workflow);
}

#[test]
fn plan_round_trips_and_writes_tool_id() {
    let plan = PlanBuilder::new("q")
        .step("search", Some("search_tool"), "$a")
        .step("use", None, "$b")
        .input("$a", "the search result")
        .constant("year", 2024, "the year")
        .build();
    let value = serde_json::to_value(&plan).unwrap();
    assert_eq!(value["steps"][0]["tool_id"], "search_tool");
    assert!(value.get("usage").is_none(), "a hand-written plan cost nothing and says nothing about it");
    assert_eq!(value["steps"][1]["tool_id"], Value::Null);
    assert_eq!(value["steps"][1]["inputs"][1], json!({"name": "year", "value": 2024, "description": "the year"}));
    assert_eq!(round_trip(&plan), plan);
}

#[test]
fn workflow_with_everything_round_trips() {
    let id = portia::WorkflowId::new();
    let workflow: Workflow = serde_json::from_value(json!({
        "id": id,
        "plan_id": portia::PlanId::new(),
        "state": "FAILED",
        "version": 7,
        "execution_context": ExecutionContext::for_end_user("u1").with_data("tier", "gold"),
        "outputs": {
            "step_outputs": {"$a": Output::new(json!({"n": 1.5, "ok": true})).with_summary("one and a half")},
            "clarifications": [Clarification::input(id, "x", "x?")],
            "final_output": Output::new(42),
        },
        "failure": {"step": 1, "kind": "TOOL_RETRIES_EXHAUSTED", "message": "gave up"},
    }))
    .unwrap();
    assert_eq!(workflow.version(), 7);
    assert_eq!(workflow.failure().unwrap().kind, portia::workflow::FailureKind::ToolRetriesExhausted);
    let back = round_trip(&workflow);
    assert_eq!(back, workflow);
    assert_eq!(back.outputs().final_output.as_ref().unwrap().value, json!(42), "numbers stay numbers");
}

#[test]
fn execution_context_round_trips() {
    let context = ExecutionContext::for_end_user("u")
        .with_data("k", "v")
        .with_planner_instruction("plan tersely")
        .with_agent_instruction("answer in French");
    assert_eq!(round_trip(&context), context);
    let empty: ExecutionContext = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, ExecutionContext::default());
}

#[test]
fn unknown_workflow_state_is_an_error() {
    let mut value: Value = serde_json::from_str(SEED_WORKFLOW).unwrap();
    value["state"] = json!("HALF_DONE");
    let err = serde_json::from_value::<Workflow>(value).unwrap_err();
    assert!(err.to_string().contains("HALF_DONE"), "{err}");
}

#[test]
fn a_workflow_id_is_refused_as_a_plan_id() {
    let mut value: Value = serde_json::from_str(SEED_WORKFLOW).unwrap();
    value["plan_id"] = json!("wkfl-a89efeb0-51ef-4f2c-b435-a936c27c3cfc");
    let err = serde_json::from_value::<Workflow>(value).unwrap_err();
    assert!(err.to_string().contains("plan-<uuid>"), "{err}");
}
