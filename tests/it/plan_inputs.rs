//! Plan inputs for top-level workflows: given through the runner's requests, the
//! command line's `--input` and the HTTP API's `inputs`, with defaults; a missing or
//! unknown input is a typed error that says how to give it, the same on each surface.

use std::sync::Arc;

use portia::testing::{MockTool, ScriptedLlm};
use portia::{Config, Error, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowState};
use serde_json::json;

/// Echoes the ticket and the language it is given; `$lang` defaults to "en".
fn reply_plan() -> Plan {
    let mut plan = PlanBuilder::new("Reply to a ticket")
        .plan_input("$ticket", "the ticket's text")
        .plan_input("$lang", "the reply's language")
        .step("Echo the ticket", Some("echo_tool"), "$reply")
        .args(json!({"text": "$ticket", "lang": "$lang"}))
        .build();
    plan.inputs[1].value = Some(json!("en"));
    plan
}

fn runner() -> Runner {
    let tools = InMemoryToolRegistry::new().with(MockTool::echo("echo_tool")).unwrap();
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    Runner::builder(config).tools(tools).llm(Arc::new(ScriptedLlm::new())).build().unwrap()
}

#[tokio::test]
async fn a_top_level_run_takes_its_inputs_and_the_defaults_of_those_not_given() {
    let runner = runner();
    let workflow = runner.run_plan(&reply_plan()).input("ticket", "card charged twice").await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let reply = &workflow.outputs().step_outputs.get("$reply").unwrap().value;
    assert_eq!(reply["text"], json!("card charged twice"));
    assert_eq!(reply["lang"], json!("en"), "the default");

    let mut given = serde_json::Map::new();
    given.insert("$lang".into(), json!("fr"));
    given.insert("ticket".into(), json!("carte débitée deux fois"));
    let created = runner.create_workflow(&reply_plan()).inputs(given).await.unwrap();
    assert_eq!(created.outputs().step_outputs.get("$lang").unwrap().value, json!("fr"));
}

#[tokio::test]
async fn a_missing_or_unknown_input_is_refused_naming_it_and_how_to_give_it() {
    let runner = runner();
    let plan = reply_plan();
    let err = runner.run_plan(&plan).input("tone", "warm").await.unwrap_err();
    let Error::PlanInputs { plan_id, missing, unknown, declared } = &err else { panic!("{err}") };
    assert_eq!(
        (*plan_id, missing.as_slice(), unknown.as_slice()),
        (plan.id, &["ticket".to_owned()][..], &["tone".to_owned()][..])
    );
    assert_eq!(declared, &["ticket", "lang"]);
    let message = err.to_string();
    assert!(message.contains("needs the input `ticket`"), "{message}");
    assert!(
        message.contains("--input ticket=VALUE") && message.contains(r#""inputs": {"ticket": VALUE}"#),
        "{message}"
    );
    assert!(message.contains("has no input `tone` (its inputs: ticket, lang)"), "{message}");
    assert!(runner.list_workflows(&Default::default()).await.unwrap().results.is_empty(), "nothing stored");

    let queued = runner.submit_plan(&plan).await.unwrap_err();
    assert!(matches!(queued, Error::PlanInputs { .. }), "{queued}");
}

#[cfg(feature = "server")]
#[tokio::test]
async fn the_http_api_takes_inputs_and_answers_400_for_a_missing_one() {
    let runner = runner();
    let plan = reply_plan();
    runner.storage().save_plan(&plan).await.unwrap();
    use reqwest::StatusCode;
    let served = crate::serve::serve(runner, portia::runner::serve::ServeOptions::new()).await;

    let body = json!({"plan_id": plan.id, "inputs": {"ticket": "card charged twice"}});
    let (status, created) = served.post("/v1/workflows", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let done = served.rest(created["id"].as_str().unwrap()).await;
    assert_eq!(done.outputs().step_outputs.get("$reply").unwrap().value["text"], json!("card charged twice"));

    let (status, error) = served.post("/v1/workflows", json!({"plan_id": plan.id})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert_eq!(error["error"]["code"], "invalid_inputs");
    let expected = runner_error_for(&plan).await;
    assert_eq!(error["error"]["message"], json!(expected), "worded as everywhere else");

    let (_, doc) = served.get("/v1/openapi.json").await;
    let inputs = &doc["components"]["schemas"]["CreateWorkflow"]["properties"]["inputs"];
    assert!(inputs.is_object(), "{}", doc["components"]["schemas"]["CreateWorkflow"]);
}

#[cfg(feature = "server")]
async fn runner_error_for(plan: &Plan) -> String {
    runner().create_workflow(plan).await.unwrap_err().to_string()
}

#[cfg(feature = "cli")]
#[test]
fn the_command_line_takes_a_stored_plan_and_its_inputs_and_refuses_inputs_that_do_not_fit() {
    let dir = crate::cli::workdir();
    let plan = json!({
        "plan_context": {"query": "Read a report", "tool_ids": ["file_reader_tool"]},
        "inputs": [{"name": "$file", "description": "the file to read"}],
        "steps": [{"task": "Read the file", "inputs": [], "tool_id": "file_reader_tool",
                   "output": "$report", "args": {"filename": "$file"}}]
    });
    let path = dir.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let path = path.to_str().unwrap();

    let missing = crate::cli::portia(dir.path()).args(["run", "--plan", path]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "inputs that do not fit the plan are a usage error");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("needs the input `file`") && stderr.contains("--input file=VALUE"), "{stderr}");
    let unknown = crate::cli::portia(dir.path())
        .args(["run", "--plan", path, "--input", "file=report.csv", "--input", "fiel=x"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2), "{}", String::from_utf8_lossy(&unknown.stderr));
    let twice = crate::cli::portia(dir.path())
        .args(["run", "--plan", path, "--input", "file=a.csv", "--input", "$file=report.csv"])
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(2), "an input given twice is refused, not the last one kept");
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(stderr.contains("--input file is given twice"), "{stderr}");
    assert!(twice.stdout.is_empty(), "nothing ran");

    let ran =
        crate::cli::portia(dir.path()).args(["run", "--plan", path, "--input", "file=report.csv"]).output().unwrap();
    assert_eq!(ran.status.code(), Some(0), "{}", String::from_utf8_lossy(&ran.stderr));
    let workflow: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    assert_eq!(workflow["outputs"]["final_output"]["value"], json!([{"city": "Oslo", "temp": "-3"}]));

    let plan_id = workflow["plan_id"].as_str().unwrap();
    let again = crate::cli::portia(dir.path())
        .args(["run", "--plan-id", plan_id, "--input", "$file=report.csv"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", String::from_utf8_lossy(&again.stderr));
    let bad = crate::cli::portia(dir.path()).args(["run", "--plan-id", plan_id, "--input", "file"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2), "a malformed --input is a usage error");
}
