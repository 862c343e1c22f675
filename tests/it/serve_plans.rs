//! `portia serve` keeps plans to the end user they were made for: a token bound to
//! an end user uses by id, or reads through a workflow, only the plans it may see.

use portia::runner::serve::{ServeOptions, ServerToken, Tokens};
use portia::testing::ScriptedLlm;
use reqwest::StatusCode;
use serde_json::json;

use crate::serve::{runner_with, serve};

fn tokens() -> Tokens {
    Tokens::new([
        ServerToken::new("admin-token"),
        ServerToken::for_end_user("ann-token", "ann"),
        ServerToken::for_end_user("bob-token", "bob"),
    ])
}

/// Ann's query may hold private data: bob, given her plan's id, can neither start
/// it, nor start it again by posting it whole under its id, nor read it.
#[tokio::test]
async fn a_plan_made_for_an_end_user_is_hers_alone() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let llm = ScriptedLlm::new().json(plan_reply).text("Hello, ann").text("Hello, admin");
    let served = serve(runner_with(vec![], llm), ServeOptions::new().tokens(tokens())).await;
    let (status, plan) = served.post_as("ann-token", "/v1/plans", json!({"query": "My card is 4242"})).await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert_eq!(plan["plan_context"]["end_user_id"], "ann", "the plan records who it was made for");
    let plan_id = plan["id"].as_str().unwrap();

    let (status, refused) = served.post_as("bob-token", "/v1/workflows", json!({"plan_id": plan_id})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(refused["error"]["code"], "plan_not_found");
    assert!(!refused.to_string().contains("4242"), "{refused}");
    // Posted whole under its id, the stored plan (hers) is the one a workflow would run.
    let (status, refused) = served.post_as("bob-token", "/v1/workflows", json!({"plan": plan})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "it names her: {refused}");
    let mut unnamed = plan.clone();
    unnamed["plan_context"].as_object_mut().unwrap().remove("end_user_id");
    let (status, refused) = served.post_as("bob-token", "/v1/workflows", json!({"plan": unnamed})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{refused}");
    assert_eq!(refused["error"]["code"], "plan_not_found");
    let (_, listed) = served.get_as("bob-token", "/v1/workflows").await;
    assert_eq!(listed["count"], 0, "bob started nothing: {listed}");

    let (status, hers) = served.post_as("ann-token", "/v1/workflows", json!({"plan_id": plan_id})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{hers}");
    let hers = hers["id"].as_str().unwrap();
    served.rest(hers).await;
    let (status, read) = served.get_as("ann-token", &format!("/v1/workflows/{hers}/plan")).await;
    assert_eq!((status, &read["plan_context"]["query"]), (StatusCode::OK, &json!("My card is 4242")));
    assert_eq!(served.get_as("bob-token", &format!("/v1/workflows/{hers}/plan")).await.0, StatusCode::NOT_FOUND);
    // A token bound to no one sees every plan.
    let (status, admins) = served.post_as("admin-token", "/v1/workflows", json!({"plan_id": plan_id})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{admins}");
    served.rest(admins["id"].as_str().unwrap()).await;
}

/// A plan made for no one (by a token bound to no one) is not a bound token's
/// either: the same rule as for workflows.
#[tokio::test]
async fn a_bound_token_cannot_use_a_plan_made_for_no_one() {
    let plan_reply = json!({"steps": [{"task": "Say hello", "inputs": [], "output": "$hello"}]});
    let served =
        serve(runner_with(vec![], ScriptedLlm::new().json(plan_reply)), ServeOptions::new().tokens(tokens())).await;
    let (status, plan) = served.post_as("admin-token", "/v1/plans", json!({"query": "Say hello"})).await;
    assert_eq!(status, StatusCode::CREATED, "{plan}");
    assert!(plan["plan_context"].get("end_user_id").is_none(), "none is written for no one: {plan}");
    let (status, refused) = served.post_as("ann-token", "/v1/workflows", json!({"plan_id": plan["id"]})).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::NOT_FOUND, &json!("plan_not_found")));
}

/// A plan a bound token posts whole becomes its end user's, and may not claim another's.
#[tokio::test]
async fn a_plan_posted_by_a_bound_token_is_its_end_users() {
    let served = serve(runner_with(vec![], ScriptedLlm::new()), ServeOptions::new().tokens(tokens())).await;
    let plan = json!({"plan_context": {"query": "Hi"}, "steps": [{"task": "Hi", "inputs": [], "output": "$hi", "exit": {"complete": "hi"}}]});
    let (status, created) = served.post_as("ann-token", "/v1/workflows", json!({"plan": plan, "mode": "queue"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let (_, stored) =
        served.get_as("ann-token", &format!("/v1/workflows/{}/plan", created["id"].as_str().unwrap())).await;
    assert_eq!(stored["plan_context"]["end_user_id"], "ann", "{stored}");

    let mut bobs = plan.clone();
    bobs["plan_context"]["end_user_id"] = json!("bob");
    let (status, refused) = served.post_as("ann-token", "/v1/workflows", json!({"plan": bobs})).await;
    assert_eq!((status, &refused["error"]["code"]), (StatusCode::FORBIDDEN, &json!("forbidden")));
}
