//! Every refusal of `portia serve` is the JSON error body, with a code that agrees
//! with its status and a message in JSON's terms, not Rust's.

use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::testing::ScriptedLlm;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::serve::{runner_with, serve, tool_plan};

/// The status, the `Content-Type`, and the JSON body (null if it is not JSON).
async fn sent(request: reqwest::RequestBuilder) -> (StatusCode, String, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (status, content_type.unwrap_or_default(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_400_invalid_id_as_json() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, content_type, body) = sent(served.http.get(served.url("/v1/workflows/%FF"))).await;
    assert_eq!((status, content_type.as_str()), (StatusCode::BAD_REQUEST, "application/json"), "{body}");
    assert_eq!(body["error"]["code"], "invalid_id");
}

#[tokio::test]
async fn a_cancel_body_past_the_limit_is_413_body_too_large_as_json() {
    let weather = portia::testing::MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new().body_limit(1024)).await;
    let (_, created) =
        served.post("/v1/workflows", json!({"plan": tool_plan("W", "weather_tool"), "mode": "queue"})).await;
    let id = created["id"].as_str().unwrap();
    let big = json!({"reason": "x".repeat(4096)});
    let (status, _, body) = sent(served.http.post(served.url(&format!("/v1/workflows/{id}/cancel"))).json(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn another_plan_under_a_stored_plans_id_is_409_plan_id_taken() {
    let weather = portia::testing::MockTool::returning("weather_tool", json!("-3°C"));
    let served = serve(runner_with(vec![weather], ScriptedLlm::new()), ServeOptions::new()).await;
    let mut plan = tool_plan("W", "weather_tool");
    plan["id"] = json!("plan-01a24d37-0000-7000-8000-00000000abce");
    let (status, body) = served.post("/v1/workflows", json!({"plan": plan, "mode": "queue"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut changed = plan.clone();
    changed["plan_context"]["query"] = json!("Another question");
    let (status, body) = served.post("/v1/workflows", json!({"plan": changed, "mode": "queue"})).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::CONFLICT, &json!("plan_id_taken")), "{body}");
}

#[tokio::test]
async fn a_method_a_route_does_not_take_is_405_method_not_allowed_with_allow() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    for (path, allowed) in [("/v1/tools", "GET"), ("/healthz", "GET")] {
        let response = served.http.put(served.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        let allow = response.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        assert!(allow.contains(allowed), "{path}: Allow {allow:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "method_not_allowed", "{path}");
    }
}

#[tokio::test]
async fn a_body_of_the_wrong_shape_is_400_bad_request_in_json_terms() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, body) = served.post("/v1/workflows", json!({"plan": "not a plan"})).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("expected an object") && !message.contains("struct"), "{message}");
    let (status, body) = served.post("/v1/workflows", json!({"qurey": "x"})).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown field `qurey`"), "{body}");
    let not_json = served.http.post(served.url("/v1/workflows")).header("content-type", "application/json");
    let (status, _, body) = sent(not_json.body("{\"query\":")).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body}");
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_415_unsupported_media_type() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, _, body) = sent(served.http.post(served.url("/v1/workflows")).body(r#"{"query": "x"}"#)).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
}

/// A queued workflow on a server without tokens, and the path of its cancel.
async fn queued_weather(served: &crate::serve::Served) -> String {
    let (_, created) =
        served.post("/v1/workflows", json!({"plan": tool_plan("W", "weather_tool"), "mode": "queue"})).await;
    format!("/v1/workflows/{}/cancel", created["id"].as_str().unwrap())
}

fn weather() -> portia::testing::MockTool {
    portia::testing::MockTool::returning("weather_tool", json!("-3°C"))
}

/// A body a cancel or retry may leave out is still refused when it says it is not
/// JSON, empty or not: a web page posts forms and text without asking first.
#[tokio::test]
async fn an_optional_body_that_is_not_json_is_415_even_empty() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new()).await;
    let cancel = queued_weather(&served).await;
    for (content_type, body) in [
        ("text/plain", r#"{"reason": "plain text"}"#),
        ("application/x-www-form-urlencoded", r#"{"reason": "a form"}"#),
        ("text/plain", ""),
    ] {
        let request = served.http.post(served.url(&cancel)).header("content-type", content_type).body(body);
        let (status, _, answer) = sent(request).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{content_type} {body:?}: {answer}");
        assert_eq!(answer["error"]["code"], "unsupported_media_type");
    }
    let (status, _, answer) = sent(served.http.post(served.url(&cancel))).await;
    assert_eq!(status, StatusCode::OK, "an empty body with no Content-Type takes the defaults: {answer}");
}

/// A page of another origin cannot change anything on a server without tokens; the
/// server's own pages, the origins CORS lists and clients that send no `Origin` can.
#[tokio::test]
async fn a_change_asked_by_a_page_of_another_origin_is_403_cross_origin() {
    let options = ServeOptions::new().cors_origins(["https://app.example"]);
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), options).await;
    let cancel = queued_weather(&served).await;
    let from = |origin: &str, path: &str| served.http.post(served.url(path)).header("origin", origin);

    for origin in ["https://evil.example", "null", "http://localhost.evil.example"] {
        let (status, _, body) = sent(from(origin, &cancel)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}: {body}");
        assert_eq!(body["error"]["code"], "cross_origin");
        assert!(body["error"]["message"].as_str().unwrap().contains("PORTIA_SERVER_CORS_ORIGINS"), "{body}");
    }
    let (status, _, _) = sent(served.http.get(served.url("/v1/tools")).header("origin", "https://evil.example")).await;
    assert_eq!(status, StatusCode::OK, "reading is left to CORS");

    let own = served.url("/").trim_end_matches('/').to_owned();
    let (status, _, body) = sent(from(&own, &cancel)).await;
    assert_eq!(status, StatusCode::OK, "the server's own pages: {body}");
    let (status, _, body) = sent(from("https://app.example", &queued_weather(&served).await)).await;
    assert_eq!(status, StatusCode::OK, "an origin CORS lists: {body}");
    let (status, _, body) = sent(served.http.post(served.url(&queued_weather(&served).await))).await;
    assert_eq!(status, StatusCode::OK, "no Origin, as from a command line: {body}");

    // Behind a proxy: the first X-Forwarded-Host, its port the scheme's default.
    let proxied =
        |forwarded: &str, path: &str| from("https://portia.example", path).header("x-forwarded-host", forwarded);
    let (status, _, body) = sent(proxied("portia.example:443, proxy.internal", &queued_weather(&served).await)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = sent(proxied("portia.example:8443", &queued_weather(&served).await)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another port is another origin: {body}");
}

/// A page can have a name of its own resolve to 127.0.0.1 (DNS rebinding): its
/// requests then name the page's host, which a server without tokens refuses, reads
/// too. With tokens, the token is what is checked.
#[tokio::test]
async fn a_server_without_tokens_answers_to_loopback_names_only() {
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), ServeOptions::new()).await;
    let port = served.url("/").rsplit(':').next().unwrap().trim_end_matches('/').to_owned();
    let rebound = format!("evil.example:{port}");
    let request = served.http.get(served.url("/v1/tools")).header("host", &rebound);
    let (status, _, body) = sent(request).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::FORBIDDEN, &json!("host_not_allowed")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("PORTIA_SERVER_TOKENS"), "{body}");
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, _, body) = sent(served.http.get(served.url("/v1/tools")).header("host", &host)).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }

    let options = ServeOptions::new().tokens(Tokens::new([ServerToken::new("s3cret")]));
    let served = serve(runner_with(vec![weather()], ScriptedLlm::new()), options).await;
    let request = served.http.get(served.url("/v1/tools")).header("host", "portia.example").bearer_auth("s3cret");
    assert_eq!(sent(request).await.0, StatusCode::OK);
}

/// An array is not read field by field, in order, as the request object.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let (status, body) = served.post("/v1/plans", json!(["Say hello"])).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{body}");
    assert_eq!(body["error"]["message"], "the body must be a JSON object, not an array");
}

/// An empty query is refused before any model is asked (this one has no reply scripted).
#[tokio::test]
async fn an_empty_query_is_400_before_planning() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    for (path, body) in [("/v1/plans", json!({"query": "  "})), ("/v1/workflows", json!({"query": ""}))] {
        let (status, refused) = served.post(path, body).await;
        assert_eq!((status, &refused["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{path}");
    }
    let (_, listed) = served.get("/v1/workflows").await;
    assert_eq!(listed["count"], 0);
}

/// A plan posted with a misspelt key is refused naming it: read leniently, a
/// `conditon` dropped the step's guard and the step ran.
#[tokio::test]
async fn a_posted_plan_with_a_key_no_field_takes_is_422_naming_it() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let mut plan = crate::serve::tool_plan("Say hi", "weather_tool");
    plan["steps"][0]["conditon"] = json!("false");
    let (status, refused) = served.post("/v1/workflows", json!({"plan": plan})).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid_plan")));
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("`steps.0.conditon` (did you mean `condition`?)"), "{message}");
    let (_, listed) = served.get("/v1/workflows").await;
    assert_eq!(listed["count"], 0, "nothing was created");
}

/// A 401 says how to authenticate, and the scheme's name is read in any case (RFC 7235).
#[tokio::test]
async fn a_401_asks_for_a_bearer_token_and_the_scheme_is_read_in_any_case() {
    let tokens = Tokens::new([ServerToken::new("s3cret")]);
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new().tokens(tokens)).await;
    // The API's 401, and the inspector's sign-in page.
    for path in ["/v1/tools", "/"] {
        let response = served.http.get(served.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "{path}");
    }
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let request = served.http.get(served.url("/v1/tools")).header("authorization", format!("{scheme} s3cret"));
        assert_eq!(request.send().await.unwrap().status(), StatusCode::OK, "{scheme}");
    }
}

/// A workflow waiting on a choice: a run of a picker tool's one-step plan.
async fn waiting_on_a_choice(served: &crate::serve::Served) -> (String, String) {
    let (_, created) = served.post("/v1/workflows", json!({"plan": tool_plan("Pick a file", "pick_tool")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let waiting = served.rest(&id).await;
    let question = waiting.outstanding_clarifications().next().unwrap().id.to_string();
    (id, question)
}

fn picker() -> portia::testing::MockTool {
    let options = vec![json!("a.csv"), json!("b.csv")];
    portia::testing::MockTool::new("pick_tool", portia::testing::MockBehavior::ClarifyChoice("file".into(), options))
}

#[tokio::test]
async fn answering_a_finished_workflow_speaks_of_answering() {
    let served = serve(runner_with(vec![picker()], ScriptedLlm::new()), ServeOptions::new()).await;
    let (id, question) = waiting_on_a_choice(&served).await;
    let (status, _) = served.post(&format!("/v1/workflows/{id}/cancel"), json!({"reason": "no"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, refused) =
        served.post(&format!("/v1/workflows/{id}/clarifications/{question}"), json!({"response": "a.csv"})).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::CONFLICT, &json!("invalid_workflow_state")));
    assert_eq!(
        refused["error"]["message"],
        format!("workflow {id}: cannot answer its clarification while it is FAILED"),
        "{refused}"
    );
}

/// Only `resolved` and `cancelled` are statuses of a resume entry: another is not
/// taken as an answer.
#[tokio::test]
async fn an_ag_ui_resume_entry_of_an_unknown_status_is_400() {
    let served = serve(runner_with(vec![picker()], ScriptedLlm::new()), ServeOptions::new()).await;
    let (id, question) = waiting_on_a_choice(&served).await;
    let input = json!({"threadId": id, "runId": "run-2", "messages": [],
                       "resume": [{"interruptId": question, "status": "bogus", "payload": "a.csv"}]});
    let (status, refused) = served.post("/v1/agui", input).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("resolved") && message.contains("cancelled") && message.contains("bogus"), "{message}");
    let (_, workflow) = served.get(&format!("/v1/workflows/{id}")).await;
    assert_eq!(workflow["state"], "NEED_CLARIFICATION", "nothing was answered");
}

#[tokio::test]
async fn page_and_page_size_of_0_are_refused() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    for query in ["page=0", "page_size=0"] {
        let (status, refused) = served.get(&format!("/v1/workflows?{query}")).await;
        assert_eq!((status, &refused["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("bad_request")), "{query}");
    }
    assert_eq!(served.get("/v1/workflows?page=1&page_size=1").await.0, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_lists_metrics() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new()).await;
    let (_, doc) = served.get("/v1/openapi.json").await;
    assert!(doc["paths"]["/metrics"]["get"].is_object(), "{}", doc["paths"]);
}
