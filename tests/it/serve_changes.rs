//! `portia serve`'s stream of workflow changes, `GET /v1/events`: `ready` once it
//! listens, then each workflow the caller may see as it is created, changes and
//! is deleted; a token bound to an end user hears of that user's workflows only.

use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::testing::{MockTool, ScriptedLlm};
use serde_json::json;

use crate::serve::{Served, runner_with, serve, tool_plan};
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
