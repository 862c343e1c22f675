//! The triage example, offline: for_each with typed classifications, a condition on
//! urgency, an approval before each send, and a typed report on the last line.

use serde_json::{Value, json};

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/triage.rs"]
mod triage;

#[tokio::test]
async fn the_triage_demo_answers_only_the_urgent_tickets_and_ends_in_a_typed_report() {
    let mut out = Vec::new();
    triage::run(true, &mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();

    let documents: Vec<Value> = serde_json::Deserializer::from_str(&text).into_iter().map(Result::unwrap).collect();
    let [plan, workflow, report] = &documents[..] else { panic!("a plan, a workflow and a report: {text}") };
    assert_eq!(plan["steps"][1]["for_each"], "$tickets");
    assert_eq!(plan["steps"][2]["condition"], "$item.urgent");
    assert_eq!(workflow["state"], "COMPLETE");
    let outputs = &workflow["outputs"]["step_outputs"];
    let urgent: Vec<&Value> = outputs["$classes"]["value"].as_array().unwrap().iter().map(|c| &c["urgent"]).collect();
    assert_eq!(urgent, [&json!(true), &json!(false), &json!(true)]);
    assert_eq!(outputs["$drafts"]["value"][1], Value::Null, "no draft for the ticket that is not urgent");
    assert_eq!(outputs["$sent"]["value"], json!([{"sent": "T-101"}, null, {"sent": "T-103"}]));
    let approvals = workflow["outputs"]["clarifications"].as_array().unwrap();
    assert_eq!(approvals.len(), 2, "a person approved each send");
    assert_eq!(workflow["usage"]["total"]["llm_calls"], 6, "3 classifications, 2 drafts, the report");
    assert_eq!(report["replied"], json!(["T-101", "T-103"]));
    assert!(text.trim_end().lines().last().unwrap().starts_with("{\"urgent\""), "the report is the last line");
}
