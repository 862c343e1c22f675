//! The stock_compare example end to end: the real OpenAI provider and the real search
//! tool against in-process mock servers, checking the JSON the example prints.

use std::time::Duration;

use portia::Config;
use serde_json::Value;

use crate::fake_apis;

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/stock_compare.rs"]
mod stock_compare;

/// The two pretty JSON documents the example prints, one after the other.
fn two_documents(text: &str) -> (Value, Value) {
    let mut documents = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let plan = documents.next().expect("a plan").expect("valid JSON");
    let workflow = documents.next().expect("a workflow").expect("valid JSON");
    assert!(documents.next().is_none(), "nothing else is printed on stdout");
    (plan, workflow)
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().expect("an object").keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn stock_compare_prints_the_plan_then_a_complete_workflow() {
    let server = fake_apis::start(Duration::ZERO, Duration::ZERO).await;
    let config = Config::builder()
        .openai_api_key("sk-test")
        .openai_base_url(format!("{}/v1", server.uri()))
        .tavily_api_key("tvly-test")
        .tavily_base_url(server.uri())
        .build()
        .unwrap();
    let mut out = Vec::new();
    stock_compare::run(config, &mut out).await.unwrap();
    let (plan, workflow) = two_documents(std::str::from_utf8(&out).unwrap());

    assert_eq!(keys(&plan), ["id", "plan_context", "steps", "usage"]);
    assert!(plan["id"].as_str().unwrap().starts_with("plan-"));
    assert_eq!(plan["plan_context"]["query"], "Which stock price grew faster in 2024, Amazon or Google?");
    assert_eq!(plan["plan_context"]["tool_ids"], serde_json::json!(["calculator_tool", "weather_tool", "search_tool"]));
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    assert_eq!(keys(&steps[2]), ["inputs", "output", "task", "tool_id"]);
    assert_eq!(steps[0]["tool_id"], "search_tool");
    assert_eq!(steps[2]["tool_id"], Value::Null);
    assert_eq!(keys(&steps[2]["inputs"][0]), ["description", "name", "value"]);

    assert_eq!(
        keys(&workflow),
        ["current_step_index", "execution_context", "id", "outputs", "plan_id", "state", "usage", "version"]
    );
    assert_eq!(workflow["state"], "COMPLETE");
    assert_eq!(workflow["plan_id"], plan["id"]);
    assert_eq!(workflow["current_step_index"], 2);
    assert_eq!(
        keys(&workflow["execution_context"]),
        ["additional_data", "agent_system_context_extension", "end_user_id", "planner_system_context_extension"]
    );
    let outputs = &workflow["outputs"];
    assert_eq!(keys(outputs), ["clarifications", "final_output", "step_outputs"]);
    assert_eq!(keys(&outputs["step_outputs"]), ["$amazon_stock_growth", "$faster_growth", "$google_stock_growth"]);
    let amazon = &outputs["step_outputs"]["$amazon_stock_growth"]["value"];
    assert_eq!(keys(amazon), ["answer", "results"], "the search tool's compact JSON, not text");
    assert_eq!(keys(&amazon["results"][0]), ["content", "title", "url"]);
    assert!(amazon["answer"].as_str().unwrap().contains("AMZN"));
    assert!(outputs["step_outputs"]["$google_stock_growth"]["value"]["answer"].as_str().unwrap().contains("GOOGL"));
    let final_output = &outputs["final_output"];
    assert_eq!(final_output["value"], outputs["step_outputs"]["$faster_growth"]["value"]);
    assert!(final_output["summary"].as_str().unwrap().contains("Amazon"));
    assert_eq!(steps[0]["args"], serde_json::json!({"search_query": "Amazon AMZN stock price growth 2024"}));
    assert_eq!(
        workflow["usage"]["total"]["llm_calls"], 2,
        "planning, then the comparison with its summary: the plan fixed the searches' arguments"
    );
    assert_eq!(workflow["usage"]["planning"], plan["usage"], "the plan says what it cost");
    assert_eq!(plan["usage"]["llm_calls"], 1);

    let requests = server.received();
    let llm_calls = requests.iter().filter(|r| r.path == "/v1/chat/completions").count();
    let searches: Vec<&fake_apis::Received> = requests.iter().filter(|r| r.path == "/search").collect();
    assert_eq!((llm_calls, searches.len()), (2, 2));
    assert!(searches.iter().all(|r| r.header("authorization") == Some("Bearer tvly-test")));
}

#[tokio::test]
async fn stock_compare_without_keys_names_the_variables_to_set() {
    let mut out = Vec::new();
    let err = stock_compare::run(Config::default(), &mut out).await.unwrap_err();
    assert_eq!(err, "set OPENAI_API_KEY and TAVILY_API_KEY (see .env.example)");
    assert!(out.is_empty(), "nothing is printed before the keys are checked");
}

#[tokio::test]
async fn stock_compare_demo_replays_the_shipped_cassette_with_no_key() {
    let mut out = Vec::new();
    stock_compare::demo(&mut out).await.unwrap();
    let (plan, workflow) = two_documents(std::str::from_utf8(&out).unwrap());
    assert_eq!(plan["steps"].as_array().unwrap().len(), 3);
    assert_eq!(workflow["state"], "COMPLETE");
    assert_eq!(workflow["usage"]["total"]["llm_calls"], 2);
}
