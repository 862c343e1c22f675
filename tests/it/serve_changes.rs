//! `portia serve`'s stream of workflow changes, `GET /v1/events`: `ready` once it
//! listens, then each workflow the caller may see as it is created, changes and
//! is deleted; a token bound to an end user hears of that user's workflows only.

use std::sync::Arc;

use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::{MockTool, ScriptedLlm};
use portia::{InMemoryToolRegistry, Runner, WorkflowId};
use serde_json::json;

use crate::serve::{Served, config, runner_with, serve, tool_plan};
use crate::serve_events::{Sse, SseReader};

async fn changes(served: &Served, token: Option<&str>) -> SseReader {
    let mut request = served.http.get(served.url("/v1/events"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = SseReader::new(response);
    let ready = stream.next().await.expect("the stream says it is ready");
    assert_eq!(ready.event.as_deref(), Some("ready"));
    stream
}

/// Events until the one `stop` matches (by its name and data).
async fn until(stream: &mut SseReader, stop: impl Fn(&Sse) -> bool) -> Vec<Sse> {
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("the stream ended first: {seen:#?}");
}

fn weather() -> MockTool {
    MockTool::returning("weather_tool", json!("-3°C"))
}

#[tokio::test]
async fn the_stream_tells_of_a_workflow_created_run_to_the_end_and_deleted() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new()).await;
    let mut stream = changes(&served, None).await;
    let (_, created) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather in Oslo?", "weather_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();

    let told = until(&mut stream, |e| e.data["id"] == id && e.data["state"] == "COMPLETE").await;
    assert!(told.iter().all(|e| e.event.as_deref() == Some("workflow") && e.data["id"] == id), "{told:#?}");
    let last = &told.last().unwrap().data;
    assert_eq!(last["query"], "Weather in Oslo?", "a summary as the list gives it: {last}");
    assert!(last["started_at"].is_string(), "{last}");

    let response = served.http.delete(served.url(&format!("/v1/workflows/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 204);
    let deleted = stream.next().await.unwrap();
    assert_eq!((deleted.event.as_deref(), &deleted.data), (Some("workflow_deleted"), &json!({"id": id})));
}

#[tokio::test]
async fn a_token_bound_to_an_end_user_hears_only_of_that_users_workflows() {
    let tokens =
        Tokens::new([ServerToken::for_end_user("ann-token", "ann"), ServerToken::for_end_user("bob-token", "bob")]);
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().tokens(tokens)).await;
    let mut bobs_stream = changes(&served, Some("bob-token")).await;
    let plan = json!({"plan": tool_plan("Weather?", "weather_tool")});
    let (_, anns) = served.post_as("ann-token", "/v1/workflows", plan.clone()).await;
    served.rest(anns["id"].as_str().unwrap()).await;
    let (_, bobs) = served.post_as("bob-token", "/v1/workflows", plan).await;
    let bobs_id = bobs["id"].as_str().unwrap();

    let told = until(&mut bobs_stream, |e| e.data["id"] == bobs_id && e.data["state"] == "COMPLETE").await;
    assert!(told.iter().all(|e| e.data["id"] == bobs_id && e.data["end_user_id"] == "bob"), "{told:#?}");
}

/// Another process on the same store (here a second runner, whose events this
/// server never hears) runs a workflow the stream knows and creates one: both
/// reach the stream when it reads the store again, on tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn changes_made_by_another_process_reach_the_stream() {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let runner_on = |storage: &Arc<dyn Storage>| {
        let tools = InMemoryToolRegistry::from_tools([Arc::new(weather()) as Arc<dyn portia::Tool>]).unwrap();
        Runner::builder(config()).tools(tools).llm(Arc::new(ScriptedLlm::new())).storage(Arc::clone(storage)).build()
    };
    let served = serve(runner_on(&storage).unwrap(), ServeOptions::new()).await;
    let other = runner_on(&storage).unwrap();
    // Queued, with no worker here: it waits, known to the stream, for the other process.
    let plan = json!({"plan": tool_plan("Weather in Oslo?", "weather_tool"), "mode": "queue"});
    let (_, queued) = served.post("/v1/workflows", plan).await;
    let queued_id: WorkflowId = queued["id"].as_str().unwrap().parse().unwrap();
    let mut stream = changes(&served, None).await;

    other.execute_workflow_by_id(queued_id).await.unwrap();
    let told = until(&mut stream, |e| e.data["state"] == "COMPLETE").await;
    assert_eq!(told.last().unwrap().data["id"], queued_id.to_string(), "{told:#?}");

    let plan: portia::Plan = serde_json::from_value(tool_plan("Weather in Bergen?", "weather_tool")).unwrap();
    let created = other.create_workflow(&plan).await.unwrap();
    let told = until(&mut stream, |e| e.data["id"] == created.id().to_string()).await;
    assert_eq!(told.last().unwrap().data["state"], "NOT_STARTED");
}
