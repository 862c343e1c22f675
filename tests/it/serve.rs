//! `portia serve`'s JSON API, driven in-process over loopback HTTP: workflows from a
//! query, a plan or a stored plan's id, run at once or queued for in-process
//! workers; lists, answers, cancel, resume, delete; errors as JSON; the OpenAPI
//! document; tokens; CORS only when configured.

use std::sync::Arc;
use std::time::Duration;

use portia::config::ExecutionMode;
use portia::runner::serve::{ServeOptions, Server, ServerToken, Tokens};
use portia::storage::{InMemoryStorage, Storage};
use portia::testing::{MockBehavior, MockTool, ScriptedLlm};
use portia::{Config, InMemoryToolRegistry, Runner, WorkflowId, WorkflowState};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A server on 127.0.0.1 with a port of its own, stopped when dropped.
pub(crate) struct Served {
    pub(crate) base: String,
    pub(crate) runner: Runner,
    pub(crate) http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Served {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path))).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.http.post(self.url(path)).json(&body)).await
    }

    /// A GET with `token` as the bearer token.
    pub(crate) async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path)).bearer_auth(token)).await
    }

    /// A POST with `token` as the bearer token.
    pub(crate) async fn post_as(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.http.post(self.url(path)).bearer_auth(token).json(&body)).await
    }

    /// Waits (on the workflow's own events, not the clock) until it rests.
    pub(crate) async fn rest(&self, id: &str) -> portia::Workflow {
        let id: WorkflowId = id.parse().unwrap();
        let mut watch = self.runner.watch(id);
        while let Some(event) = watch.next().await {
            event.unwrap();
        }
        self.runner.get_workflow(id).await.unwrap()
    }
}

/// The status and JSON body of `request`'s answer (null for a body that is not JSON).
async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub(crate) fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub(crate) async fn serve(runner: Runner, options: ServeOptions) -> Served {
    let server = Server::bind(runner.clone(), "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let base = format!("http://{}", server.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    Served { base, runner, http: http_client(), stop: Some(stop) }
}

pub(crate) fn config() -> Config {
    Config::builder().execution(ExecutionMode::Sequential).summarize_final_output(false).build().unwrap()
}

/// A runner on its own in-memory store with `tools`, answering from `llm`.
pub(crate) fn runner_with(tools: Vec<MockTool>, llm: ScriptedLlm) -> Runner {
    let storage: Arc<dyn Storage> = Arc::new(InMemoryStorage::new());
    let tools =
        InMemoryToolRegistry::from_tools(tools.into_iter().map(|t| Arc::new(t) as Arc<dyn portia::Tool>)).unwrap();
    Runner::builder(config()).tools(tools).llm(Arc::new(llm)).storage(storage).build().unwrap()
}

/// A one-step plan calling `tool` with fixed arguments: no model needed.
pub(crate) fn tool_plan(query: &str, tool: &str) -> Value {
    json!({
        "plan_context": {"query": query, "tool_ids": [tool]},
        "steps": [{"task": query, "inputs": [], "tool_id": tool, "output": "$out", "args": {"city": "Oslo"}}]
    })
}

fn weather() -> MockTool {
    MockTool::returning("weather_tool", json!("-3°C"))
}

#[tokio::test]
async fn a_plan_posted_runs_in_the_server_and_is_listed_complete() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool")})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["id"].as_str().unwrap();
    assert_eq!(served.rest(id).await.state(), WorkflowState::Complete);

    let (status, workflow) = served.get(&format!("/v1/workflows/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(workflow["state"], "COMPLETE");
    assert_eq!(workflow["outputs"]["final_output"]["value"], "-3°C");
    let (_, listed) = served.get("/v1/workflows?state=complete").await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["results"][0]["id"], id);
    assert_eq!(listed["results"][0]["query"], "Weather?");
    let (_, none) = served.get("/v1/workflows?state=FAILED").await;
    assert_eq!(none["count"], 0);
}

#[tokio::test]
async fn a_query_is_planned_and_a_stored_plan_is_started_by_id() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let llm = ScriptedLlm::new().json(plan_reply.clone()).text("Hello!").json(plan_reply).text("Hi again!");
    let served = serve(runner_with(vec![], llm), ServeOptions::new()).await;
    let (status, created) = served.post("/v1/workflows", json!({"query": "Say hello"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let done = served.rest(created["id"].as_str().unwrap()).await;
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, "Hello!");
    assert_eq!(done.usage().total.llm_calls, 2, "the plan written for it, and its step");

    let (status, plan) = served.post("/v1/plans", json!({"query": "Say hello"})).await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    let (status, created) = served.post("/v1/workflows", json!({"plan_id": plan["id"]})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["plan_id"], plan["id"]);
    let done = served.rest(created["id"].as_str().unwrap()).await;
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.usage().total.llm_calls, 1, "its step; the stored plan's planning is a reference");
    assert_eq!(done.usage().planning.llm_calls, 1);
}

#[tokio::test]
async fn with_workers_a_new_workflow_is_queued_and_run_by_them() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().workers(2)).await;
    let (status, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool")})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(created["state"], "NOT_STARTED", "queued, not run by the request");
    assert_eq!(served.rest(created["id"].as_str().unwrap()).await.state(), WorkflowState::Complete);
}

#[tokio::test]
async fn an_answer_is_checked_and_resumes_the_workflow_to_complete() {
    let options = vec![json!("a.csv"), json!("b.csv")];
    let picker = MockTool::new("pick_tool", MockBehavior::ClarifyChoice("file".into(), options));
    let served = serve(runner_with(vec![picker], ScriptedLlm::new()), ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pick a file", "pick_tool")})).await;
    let id = created["id"].as_str().unwrap();
    let waiting = served.rest(id).await;
    assert_eq!(waiting.state(), WorkflowState::NeedClarification);
    let question = waiting.outstanding_clarifications().next().unwrap().id;
    let path = format!("/v1/workflows/{id}/clarifications/{question}");

    let (status, refused) = served.post(&path, json!({"response": "c.csv", "resume": true})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_clarification_response");
    let (status, resumed) = served.post(&format!("/v1/workflows/{id}/resume"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an open question blocks a resume: {resumed}");

    let (status, answered) = served.post(&path, json!({"response": "b.csv", "resume": true})).await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    let done = served.rest(id).await;
    assert_eq!(done.state(), WorkflowState::Complete, "{:?}", done.failure());
    assert_eq!(done.outputs().final_output.as_ref().unwrap().value, "b.csv");
}

#[tokio::test]
async fn cancel_resume_and_delete_act_on_the_stored_workflow() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().workers(0)).await;
    let (_, queued) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"})).await;
    let id = queued["id"].as_str().unwrap();
    assert_eq!(queued["state"], "NOT_STARTED");
    // Nothing runs a queued workflow here until it is resumed.
    let (status, _) = served.post(&format!("/v1/workflows/{id}/resume"), Value::Null).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(served.rest(id).await.state(), WorkflowState::Complete);
    let (status, refused) = served.post(&format!("/v1/workflows/{id}/cancel"), json!({"reason": "late"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(refused["error"]["message"].as_str().unwrap().contains("cannot cancel it while it is COMPLETE"));

    let (_, other) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"})).await;
    let other = other["id"].as_str().unwrap();
    let (status, cancelled) = served.post(&format!("/v1/workflows/{other}/cancel"), json!({"reason": "no"})).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "FAILED");
    assert_eq!(cancelled["failure"]["message"], "no");

    let response = served.http.delete(served.url(&format!("/v1/workflows/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(served.get(&format!("/v1/workflows/{id}")).await.0, StatusCode::NOT_FOUND);
}

/// A FAILED workflow (here cancelled before it ran) is retried as a new workflow,
/// which names it and runs; a workflow that did not fail is not retried.
#[tokio::test]
async fn a_failed_workflow_is_retried_as_a_new_workflow_that_runs() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().workers(0)).await;
    let (_, queued) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"})).await;
    let id = queued["id"].as_str().unwrap();
    let (status, _) = served.post(&format!("/v1/workflows/{id}/cancel"), json!({"reason": "too soon"})).await;
    assert_eq!(status, StatusCode::OK);

    let (status, retry) = served.post(&format!("/v1/workflows/{id}/retry"), Value::Null).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retry}");
    assert_eq!((&retry["state"], &retry["retry_of"]), (&json!("NOT_STARTED"), &json!(id)));
    let retry = retry["id"].as_str().unwrap();
    assert_eq!(served.rest(retry).await.state(), WorkflowState::Complete);
    assert_eq!(served.rest(id).await.state(), WorkflowState::Failed, "the failed one is kept as it was");
    let (status, refused) = served.post(&format!("/v1/workflows/{retry}/retry"), json!({})).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::CONFLICT, &json!("invalid_workflow_state")));
}

/// Asked to queue, a retry is left for the workers, as a new workflow would be: the
/// server does not run it. Asked again, the answer is the same retry, queued once.
#[tokio::test]
async fn a_retry_asked_to_queue_is_left_for_the_workers() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().workers(0)).await;
    let (_, queued) =
        served.post("/v1/workflows", json!({"plan": tool_plan("Weather?", "weather_tool"), "mode": "queue"})).await;
    let id = queued["id"].as_str().unwrap();
    served.post(&format!("/v1/workflows/{id}/cancel"), json!({})).await;
    let (status, bad) = served.post(&format!("/v1/workflows/{id}/retry"), json!({"mode": "later"})).await;
    assert_eq!((status, &bad["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{bad}");

    let (status, retry) = served.post(&format!("/v1/workflows/{id}/retry"), json!({"mode": "queue"})).await;
    assert_eq!((status, &retry["state"]), (StatusCode::ACCEPTED, &json!("NOT_STARTED")), "{retry}");
    let (_, again) = served.post(&format!("/v1/workflows/{id}/retry"), json!({"mode": "queue"})).await;
    assert_eq!(again["id"], retry["id"]);
    let storage = served.runner.storage();
    let ttl = Duration::from_secs(60);
    let claimed = storage.claim_runnable("worker", ttl).await.unwrap().expect("queued, and no run of the server's");
    assert_eq!(json!(claimed.workflow.id()), retry["id"]);
}

#[tokio::test]
async fn errors_are_json_worded_as_the_command_line_words_them() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().body_limit(4096)).await;
    let missing = WorkflowId::new();
    let (status, body) = served.get(&format!("/v1/workflows/{missing}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "workflow_not_found");
    assert_eq!(body["error"]["message"], format!("workflow {missing} not found in storage"));

    assert_eq!(served.get("/v1/workflows/not-an-id").await.1["error"]["code"], "invalid_id");
    let (status, both) =
        served.post("/v1/workflows", json!({"query": "x", "plan": tool_plan("x", "weather_tool")})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(both["error"]["message"], "give exactly one of `query`, `plan` or `plan_id`");
    let (status, bad_tool) = served.post("/v1/workflows", json!({"plan": tool_plan("x", "nope_tool")})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad_tool["error"]["message"].as_str().unwrap().starts_with("the plan is invalid"), "{bad_tool}");
    let (status, state) = served.get("/v1/workflows?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(state["error"]["message"].as_str().unwrap().starts_with("valid states:"));

    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("W", "weather_tool")})).await;
    let id = created["id"].as_str().unwrap();
    let unknown = portia::ClarificationId::new();
    let (status, body) =
        served.post(&format!("/v1/workflows/{id}/clarifications/{unknown}"), json!({"response": 1})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["message"], format!("workflow {id} has no clarification {unknown}"));

    let big = json!({"query": "x".repeat(5000)});
    let (status, body) = served.post("/v1/workflows", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn the_openapi_document_is_3_1_and_lists_every_route() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, doc) = served.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/plans", "post"),
        ("/v1/workflows", "post"),
        ("/v1/workflows", "get"),
        ("/v1/workflows/{id}", "get"),
        ("/v1/workflows/{id}", "delete"),
        ("/v1/workflows/{id}/clarifications/{clarification_id}", "post"),
        ("/v1/workflows/{id}/cancel", "post"),
        ("/v1/workflows/{id}/resume", "post"),
        ("/v1/workflows/{id}/retry", "post"),
        ("/v1/workflows/{id}/put-back", "post"),
        ("/v1/set-aside", "get"),
        ("/v1/tools", "get"),
        ("/v1/events", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
    ] {
        let operation = paths.get(path).and_then(|p| p.get(method));
        assert!(operation.is_some(), "{method} {path} missing");
        // Generated clients send the token where it is needed, and know a 401.
        let open = path == "/healthz" || path == "/readyz";
        let operation = operation.unwrap();
        assert_eq!(operation["security"] == json!([{}]), open, "{method} {path}: {}", operation["security"]);
        assert_eq!(operation["responses"].get("401").is_some(), !open, "{method} {path}");
        // A change a page of another origin asks for is refused.
        assert_eq!(operation["responses"].get("403").is_some(), method != "get", "{method} {path}");
        // Every route taking a workflow id refuses one that is not, and says so.
        if path.contains("/workflows/{id}") {
            let codes = operation["responses"].as_object().unwrap();
            assert!(codes.contains_key("400") || codes.contains_key("4XX"), "{method} {path}: {codes:?}");
        }
    }
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    let list = &paths["/v1/workflows"]["get"]["parameters"];
    let page = list.as_array().unwrap().iter().find(|p| p["name"] == "page").unwrap();
    assert_eq!(page["schema"]["minimum"], 1, "page 0 is refused: {page}");
    let (_, tools) = served.get("/v1/tools").await;
    assert_eq!(tools[0]["id"], "weather_tool");
    assert_eq!(served.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(served.get("/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn no_response_holds_a_secret() {
    let config = Config::builder().summarize_final_output(false).openai_api_key("sk-very-secret-key").build().unwrap();
    let runner = Runner::builder(config)
        .tools(InMemoryToolRegistry::new().with(weather()).unwrap())
        .llm(Arc::new(ScriptedLlm::new()))
        .build()
        .unwrap();
    let served = serve(runner, ServeOptions::new()).await;
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("W", "weather_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    served.rest(&id).await;
    for path in ["/v1/openapi.json", "/v1/tools", "/v1/workflows", &format!("/v1/workflows/{id}"), "/healthz"] {
        let text = served.http.get(served.url(path)).send().await.unwrap().text().await.unwrap();
        assert!(!text.contains("sk-very-secret-key"), "{path} shows the key");
    }
}

#[tokio::test]
async fn with_tokens_every_route_but_health_needs_one_and_bound_users_see_only_their_own() {
    let tokens = Tokens::new([ServerToken::new("admin-token"), ServerToken::for_end_user("ann-token", "ann")]);
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new().tokens(tokens)).await;
    assert_eq!(served.get("/healthz").await.0, StatusCode::OK);
    let (status, body) = served.get("/v1/workflows").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(served.get("/v1/openapi.json").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(served.get_as("nope", "/v1/workflows").await.0, StatusCode::UNAUTHORIZED);

    let post = |token: &'static str, body: Value| served.post_as(token, "/v1/workflows", body);
    let (_, bob) = post("admin-token", json!({"plan": tool_plan("Bob's", "weather_tool"), "end_user_id": "bob"})).await;
    let (_, ann) = post("ann-token", json!({"plan": tool_plan("Ann's", "weather_tool")})).await;
    assert_eq!(ann["execution_context"]["end_user_id"], "ann", "a bound token starts its user's workflows");
    let for_bob = post("ann-token", json!({"plan": tool_plan("x", "weather_tool"), "end_user_id": "bob"})).await;
    assert_eq!(for_bob.0, StatusCode::FORBIDDEN);

    let (_, listed) = served.get_as("ann-token", "/v1/workflows").await;
    assert_eq!(listed["count"], 1);
    assert_eq!(listed["results"][0]["id"], ann["id"]);
    let bobs = served.get_as("ann-token", &format!("/v1/workflows/{}", bob["id"].as_str().unwrap())).await;
    assert_eq!(bobs.0, StatusCode::NOT_FOUND, "another user's workflow is not there");
    let bobs_retry = format!("/v1/workflows/{}/retry", bob["id"].as_str().unwrap());
    let retried = served.post_as("ann-token", &bobs_retry, json!({})).await;
    assert_eq!(retried.0, StatusCode::NOT_FOUND, "nor can it be retried");
    let (_, all) = served.get_as("admin-token", "/v1/workflows").await;
    assert_eq!(all["count"], 2);
}

#[tokio::test]
async fn listening_beyond_loopback_needs_tokens() {
    let runner = runner_with(vec![], ScriptedLlm::new());
    let err = Server::bind(runner.clone(), "0.0.0.0:0".parse().unwrap(), ServeOptions::new()).await.unwrap_err();
    assert!(err.to_string().contains("PORTIA_SERVER_TOKENS"), "{err}");
    let tokens = Tokens::parse("t1, ann:t2").unwrap();
    assert_eq!(format!("{tokens:?}"), "Tokens(2 set)", "no token, nor its digest, in Debug");
    assert!(Server::bind(runner, "0.0.0.0:0".parse().unwrap(), ServeOptions::new().tokens(tokens)).await.is_ok());
    assert!(Tokens::parse("ann:").is_err());
}

#[tokio::test]
async fn no_cors_header_unless_origins_are_configured() {
    let runner = runner_with(vec![], ScriptedLlm::new());
    let plain = serve(runner.clone(), ServeOptions::new()).await;
    let allowed = serve(runner, ServeOptions::new().cors_origins(["https://app.example"])).await;
    for (served, expected) in [(&plain, None), (&allowed, Some("https://app.example"))] {
        let response =
            served.http.get(served.url("/v1/tools")).header("Origin", "https://app.example").send().await.unwrap();
        let header = response.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(header.as_deref(), expected);
    }
}

/// The value of the sample `name` (with its labels) in a Prometheus text page.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A stored workflow that cannot be read (here its JSON is cut short) is counted
/// apart, never in a state, so an operator sees it on a dashboard; asked for by id,
/// it is 500 `unreadable`, naming it. It cannot be told whose it is, so a token
/// bound to an end user is not given the count.
#[tokio::test]
async fn metrics_count_unreadable_workflows_for_callers_who_see_every_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = Arc::new(portia::storage::SqliteStorage::open(&path).unwrap());
    let runner = Runner::builder(config()).llm(Arc::new(ScriptedLlm::new())).storage(storage).build().unwrap();
    let plan = portia::PlanBuilder::new("W").step("W", None, "$w").build();
    let (good, bad) = (runner.create_workflow(&plan).await.unwrap(), runner.create_workflow(&plan).await.unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("UPDATE workflows SET body = '{\"id\": 4' WHERE id = ?1", [bad.id().to_string()]).unwrap();
    let tokens = Tokens::new([ServerToken::new("admin-token"), ServerToken::for_end_user("ann-token", "ann")]);
    let served = serve(runner, ServeOptions::new().tokens(tokens)).await;
    let metrics = |token| served.http.get(served.url("/metrics")).bearer_auth(token).send();
    let text = metrics("admin-token").await.unwrap().text().await.unwrap();
    assert_eq!(sample(&text, "portia_workflows_unreadable"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "portia_workflows{state=\"NOT_STARTED\"}"), Some(1.0), "only {}: {text}", good.id());
    let text = metrics("ann-token").await.unwrap().text().await.unwrap();
    assert!(!text.contains("portia_workflows_unreadable"), "{text}");
    let response = served
        .http
        .get(served.url(&format!("/v1/workflows/{}", bad.id())))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unreadable");
    assert!(body["error"]["message"].as_str().unwrap().contains(&bad.id().to_string()), "{body}");
}

/// A workflow set aside (its run met a row it cannot read) is counted on its own
/// gauge, so that an operator sees what no worker will take; once resumed it is not.
#[tokio::test]
async fn metrics_count_workflows_set_aside() {
    let runner = Runner::builder(config()).llm(Arc::new(ScriptedLlm::new())).build().unwrap();
    let plan = portia::PlanBuilder::new("W").step("W", None, "$w").build();
    let storage = Arc::clone(runner.storage());
    runner.submit_plan(&plan).await.unwrap();
    runner.submit_plan(&plan).await.unwrap();
    let ttl = Duration::from_secs(60);
    let claimed = storage.claim_runnable("worker", ttl).await.unwrap().expect("queued");
    storage.set_aside(&claimed.lease, "plan p cannot be read").await.unwrap();
    let served = serve(runner, ServeOptions::new()).await;
    let gauge = || async {
        let text = served.http.get(served.url("/metrics")).send().await.unwrap().text().await.unwrap();
        sample(&text, "portia_workflows_set_aside").unwrap_or_else(|| panic!("no gauge in {text}"))
    };
    assert_eq!(gauge().await, 1.0);
    storage.acquire_lease(claimed.workflow.id(), "resumer", ttl).await.expect("resumed");
    assert_eq!(gauge().await, 0.0, "put back by the resume");
}

/// The workflows set aside are listed with why, each to whoever may see it, and put
/// back over HTTP: then a worker claims it.
#[tokio::test]
async fn set_aside_workflows_are_listed_and_put_back_over_http() {
    let tokens = Tokens::new([ServerToken::new("admin-token"), ServerToken::for_end_user("ann-token", "ann")]);
    let runner = runner_with(vec![weather()], ScriptedLlm::new());
    let storage = Arc::clone(runner.storage());
    let served = serve(runner, ServeOptions::new().tokens(tokens).workers(0)).await;
    let body = json!({"plan": tool_plan("Bob's", "weather_tool"), "end_user_id": "bob", "mode": "queue"});
    let (_, bob) = served.post_as("admin-token", "/v1/workflows", body).await;
    let ttl = Duration::from_secs(60);
    let claimed = storage.claim_runnable("worker", ttl).await.unwrap().expect("queued");
    storage.set_aside(&claimed.lease, "plan p cannot be read").await.unwrap();

    let (status, listed) = served.get_as("admin-token", "/v1/set-aside").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed, json!([{"workflow_id": bob["id"], "reason": "plan p cannot be read", "queued": true}]));
    assert_eq!(served.get_as("ann-token", "/v1/set-aside").await.1, json!([]), "not ann's to see");
    let path = format!("/v1/workflows/{}/put-back", bob["id"].as_str().unwrap());
    assert_eq!(served.post_as("ann-token", &path, json!({})).await.0, StatusCode::NOT_FOUND);

    let (status, put) = served.post_as("admin-token", &path, json!({})).await;
    assert_eq!((status, &put["id"]), (StatusCode::OK, &bob["id"]));
    assert_eq!(served.get_as("admin-token", "/v1/set-aside").await.1, json!([]));
    let (status, again) = served.post_as("admin-token", &path, json!({})).await;
    assert_eq!((status, &again["error"]["code"]), (StatusCode::CONFLICT, &json!("not_set_aside")));
    let back = storage.claim_runnable("worker", ttl).await.unwrap().expect("back on the queue");
    assert_eq!(json!(back.workflow.id()), bob["id"]);
}

#[tokio::test]
async fn metrics_count_workflows_llm_calls_tokens_and_latencies_from_the_store() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    // The step's prompt came mostly from the provider's cache.
    let cached = portia::llm::Usage::call(40, 3).with_cache(32, 0);
    let hello = portia::llm::LlmResponse { usage: cached, ..portia::llm::LlmResponse::text("Hello!") };
    let llm = ScriptedLlm::new().json(plan_reply).respond(hello);
    let tokens = Tokens::new([ServerToken::new("admin"), ServerToken::for_end_user("ann-token", "ann")]);
    let served = serve(runner_with(vec![weather()], llm), ServeOptions::new().tokens(tokens)).await;
    let post = |token: &'static str, body: Value| {
        served.http.post(served.url("/v1/workflows")).bearer_auth(token).json(&body).send()
    };
    let ann: Value =
        post("ann-token", json!({"plan": tool_plan("W", "weather_tool")})).await.unwrap().json().await.unwrap();
    let said: Value = post("admin", json!({"query": "Say hello"})).await.unwrap().json().await.unwrap();
    served.rest(ann["id"].as_str().unwrap()).await;
    let planning = served.rest(said["id"].as_str().unwrap()).await.usage().planning;

    let served = &served;
    let scrape = |token: &'static str| async move {
        let response = served.http.get(served.url("/metrics")).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
        response.text().await.unwrap()
    };
    let text = scrape("admin").await;
    assert_eq!(sample(&text, "portia_workflows{state=\"COMPLETE\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "portia_workflows{state=\"FAILED\"}"), Some(0.0));
    let calls: Vec<&str> = text.lines().filter(|l| l.starts_with("portia_llm_calls_total{")).collect();
    assert_eq!(calls.len(), 1, "one model: {calls:?}");
    assert!(calls[0].ends_with(" 2"), "the plan written for the workflow, and its step: {calls:?}");
    let tokens = |kind: &str| {
        let line = text.lines().find(|l| l.starts_with("portia_llm_tokens_total{") && l.contains(kind));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(tokens("kind=\"prompt\""), Some(40.0 + planning.prompt_tokens as f64), "{text}");
    assert_eq!(tokens("kind=\"completion\""), Some(3.0 + planning.completion_tokens as f64), "{text}");
    assert_eq!(tokens("kind=\"cache_read\""), Some(32.0), "cached tokens by kind: {text}");
    assert_eq!(tokens("kind=\"cache_write\""), Some(0.0), "{text}");
    assert_eq!(sample(&text, "portia_tool_call_duration_seconds_count{tool=\"weather_tool\"}"), Some(1.0));
    assert_eq!(sample(&text, "portia_step_duration_seconds_count"), Some(2.0));
    assert_eq!(sample(&text, "portia_step_duration_seconds_bucket{le=\"+Inf\"}"), Some(2.0));
    // Read again from the cache: the same figures.
    assert_eq!(scrape("admin").await, text);

    let anns = scrape("ann-token").await;
    assert_eq!(sample(&anns, "portia_workflows{state=\"COMPLETE\"}"), Some(1.0), "a bound token counts its own");
    assert!(!anns.contains("portia_llm_calls_total{"), "{anns}");
    assert_eq!(served.get("/metrics").await.0, StatusCode::UNAUTHORIZED);
}

/// Prometheus reads a counter that falls as a restart and counts what remains again:
/// deleting a workflow leaves the `portia_workflows` gauge and nothing else, for a
/// caller bound to an end user as for one who sees every workflow, and a row that
/// cannot be read for a while counts as it was last read.
#[tokio::test]
async fn deleting_a_workflow_or_losing_its_row_for_a_while_keeps_what_it_spent_in_the_counters() {
    let hello =
        || portia::llm::LlmResponse { usage: portia::llm::Usage::call(40, 3), ..portia::llm::LlmResponse::text("Hi") };
    let llm = ScriptedLlm::new().respond(hello()).respond(hello()).respond(hello());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portia.db");
    let storage = Arc::new(portia::storage::SqliteStorage::open(&path).unwrap());
    let runner = Runner::builder(config()).llm(Arc::new(llm)).storage(storage).build().unwrap();
    let tokens = Tokens::new([ServerToken::new("admin"), ServerToken::for_end_user("ann-token", "ann")]);
    let served = serve(runner, ServeOptions::new().tokens(tokens)).await;
    let plan = json!({
        "plan_context": {"query": "Say hello", "tool_ids": []},
        "steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]
    });
    let served = &served;
    let start = |token: &'static str| {
        let plan = plan.clone();
        async move {
            let url = served.url("/v1/workflows");
            let made: Value = served
                .http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"plan": plan}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = made["id"].as_str().unwrap().to_owned();
            served.rest(&id).await;
            id
        }
    };
    let (anns, admins) = (start("ann-token").await, start("admin").await);
    let scrape = |token: &'static str| async move {
        let text =
            served.http.get(served.url("/metrics")).bearer_auth(token).send().await.unwrap().text().await.unwrap();
        let figure = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no {name} in {text}"));
        let calls: f64 = text
            .lines()
            .filter(|l| l.starts_with("portia_llm_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (figure("portia_workflows{state=\"COMPLETE\"}"), calls, figure("portia_step_duration_seconds_count"))
    };
    assert_eq!(scrape("admin").await, (2.0, 2.0, 2.0));
    assert_eq!(scrape("ann-token").await, (1.0, 1.0, 1.0));

    let raw = rusqlite::Connection::open(&path).unwrap();
    let body: String = raw.query_row("SELECT body FROM workflows WHERE id = ?1", [&admins], |row| row.get(0)).unwrap();
    raw.execute("UPDATE workflows SET body = '{\"id\": 4' WHERE id = ?1", [&admins]).unwrap();
    assert_eq!(scrape("admin").await, (1.0, 2.0, 2.0), "an unreadable row still counts what it spent");
    raw.execute("UPDATE workflows SET body = ?2 WHERE id = ?1", [&admins, &body]).unwrap();
    assert_eq!(scrape("admin").await, (2.0, 2.0, 2.0), "and only once when it reads again");

    let delete = |token: &'static str, id: String| async move {
        let url = served.url(&format!("/v1/workflows/{id}"));
        assert_eq!(served.http.delete(url).bearer_auth(token).send().await.unwrap().status(), StatusCode::NO_CONTENT);
    };
    delete("ann-token", anns).await;
    assert_eq!(scrape("ann-token").await, (0.0, 1.0, 1.0), "a bound caller's own deleted workflow still counts");
    assert_eq!(scrape("admin").await, (1.0, 2.0, 2.0));
    delete("admin", admins).await;
    assert_eq!(scrape("admin").await, (0.0, 2.0, 2.0), "every deleted workflow still counts");
    assert_eq!(scrape("ann-token").await, (0.0, 1.0, 1.0), "another's deleted workflow is not a bound caller's");
    start("admin").await;
    assert_eq!(scrape("admin").await, (1.0, 3.0, 3.0), "a new workflow counts on top");
}

/// The LLM figures agree with the workflows' own usage: a workflow whose plan was
/// written for it pays for the planning calls, which come with no event, and the
/// metrics count them too; a plan stored apart is no workflow's.
#[tokio::test]
async fn metrics_agree_with_the_workflows_usage_planning_included() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let planned = portia::llm::LlmResponse {
        usage: portia::llm::Usage::call(1000, 200),
        ..portia::llm::LlmResponse::text(plan_reply.to_string())
    };
    let hello =
        portia::llm::LlmResponse { usage: portia::llm::Usage::call(40, 3), ..portia::llm::LlmResponse::text("Hi") };
    let llm = ScriptedLlm::new().respond(planned.clone()).respond(hello.clone()).respond(planned).respond(hello);
    let served = serve(runner_with(vec![], llm), ServeOptions::new()).await;
    let (_, said) = served.post("/v1/workflows", json!({"query": "Say hello"})).await;
    let said = served.rest(said["id"].as_str().unwrap()).await;
    let (_, plan) = served.post("/v1/plans", json!({"query": "Say hello"})).await;
    let (_, from_plan) = served.post("/v1/workflows", json!({"plan_id": plan["id"]})).await;
    let from_plan = served.rest(from_plan["id"].as_str().unwrap()).await;
    assert_eq!(said.usage().total.llm_calls, 2, "it paid for its plan");
    assert_eq!(from_plan.usage().total.llm_calls, 1, "a stored plan's planning is a reference");

    let text = served.http.get(served.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let total = |metric: &str, kind: &str| -> f64 {
        let of_metric = text.lines().filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(kind));
        of_metric.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let usages = [said.usage(), from_plan.usage()];
    let calls: u32 = usages.iter().map(|u| u.total.llm_calls).sum();
    let prompt: u64 = usages.iter().map(|u| u.total.prompt_tokens).sum();
    let completion: u64 = usages.iter().map(|u| u.total.completion_tokens).sum();
    let cost: f64 = usages.iter().map(|u| u.cost_usd).sum();
    assert_eq!(total("portia_llm_calls_total", ""), f64::from(calls), "{text}");
    assert_eq!(total("portia_llm_tokens_total", "kind=\"prompt\""), prompt as f64, "{text}");
    assert_eq!(total("portia_llm_tokens_total", "kind=\"completion\""), completion as f64, "{text}");
    assert!(cost > 0.0, "priced: {cost}");
    assert!((total("portia_llm_cost_usd_total", "") - cost).abs() < 1e-9, "{cost} in all: {text}");
}
