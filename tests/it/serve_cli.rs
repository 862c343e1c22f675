//! `portia serve` as a user starts it: on the store the other commands use, and
//! refusing an address beyond loopback without tokens.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

/// The binary as the CLI tests run it, with no server tokens either.
fn portia(dir: &std::path::Path) -> Command {
    let mut command = crate::cli::portia(dir);
    command.env_remove("PORTIA_SERVER_TOKENS");
    command
}

#[tokio::test]
async fn serve_shares_the_store_of_the_other_commands() {
    let dir = crate::cli::workdir();
    let mut server = crate::common::ChildGuard(
        portia(dir.path()).args(["serve", "--listen", "127.0.0.1:0"]).stderr(Stdio::piped()).spawn().unwrap(),
    );
    // It says where it listens once it does.
    let mut stderr = BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("portia: serving on ").unwrap_or_else(|| panic!("{line}")).to_owned();

    let http = crate::serve::http_client();
    let plan = json!({
        "plan_context": {"query": "Read the report", "tool_ids": ["file_reader_tool"]},
        "steps": [{"task": "Read the report", "inputs": [], "tool_id": "file_reader_tool",
                   "output": "$report", "args": {"filename": "report.csv"}}]
    });
    let response = http.post(format!("{base}/v1/workflows")).json(&json!({"plan": plan})).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let events = http.get(format!("{base}/v1/workflows/{id}/events")).send().await.unwrap().text().await.unwrap();
    assert!(events.contains("RUN_FINISHED"), "{events}");

    // `portia show`, another process on the same SQLite store, sees it finished.
    let shown = portia(dir.path()).args(["show", &id]).output().unwrap();
    let workflow: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(workflow["state"], "COMPLETE", "{}", String::from_utf8_lossy(&shown.stderr));
}

#[test]
fn serve_beyond_loopback_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let output = portia(dir.path()).args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PORTIA_SERVER_TOKENS"), "{stderr}");
}

/// SIGTERM stops `portia serve` as it stops a worker: past its grace the run the
/// server started in a task of its own is stopped, its lease released at once, and
/// it is logged with how to resume it; `portia resume` in another process finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_servers_runs_and_names_each_to_resume() {
    use crate::cli::{Silent, code, llm_plan, signal, stderr, stdout_json, with_model};
    let dir = crate::cli::workdir();
    let silent = Silent::start();
    let mut command = with_model(dir.path(), &silent.base_url());
    command.env_remove("PORTIA_SERVER_TOKENS").env("PORTIA_LOG_LEVEL", "warn");
    command.args(["serve", "--listen", "127.0.0.1:0", "--grace", "0"]).stderr(Stdio::piped());
    let mut server = crate::common::ChildGuard(command.spawn().unwrap());
    let mut stderr_lines = BufReader::new(server.0.stderr.take().unwrap());
    let mut line = String::new();
    stderr_lines.read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("portia: serving on ").unwrap_or_else(|| panic!("{line}")).to_owned();

    let plan: Value = serde_json::from_str(&std::fs::read_to_string(llm_plan(dir.path())).unwrap()).unwrap();
    let http = crate::serve::http_client();
    let response = http.post(format!("{base}/v1/workflows")).json(&json!({"plan": plan})).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    // The run is inside its LLM call, which never answers.
    let _request = tokio::task::spawn_blocking(move || silent.wait_for_request()).await.unwrap();

    signal(&server.0, "TERM");
    let logged = std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr_lines, &mut rest).unwrap();
        rest
    });
    let status = server.0.wait().unwrap();
    let logged = logged.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logged}");
    let named = logged.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{id} is not named: {logged}"));
    assert!(named.contains(&format!("portia resume {id}")), "{named}");
    assert!(named.contains(&format!("POST /v1/workflows/{id}/resume")), "{named}");
    assert!(logged.contains("1 workflow(s)"), "a summary: {logged}");

    // Resumed at once, in another process: the lease was released, not left to lapse.
    let fake = crate::fake_apis::start(std::time::Duration::ZERO, std::time::Duration::ZERO).await;
    let mut resume = with_model(dir.path(), &format!("{}/v1", fake.uri()));
    resume.args(["resume", &id]).env("PORTIA_LEASE_TTL_SECS", "3600");
    let resumed = tokio::task::spawn_blocking(move || resume.output().unwrap()).await.unwrap();
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert_eq!(stdout_json(&resumed)["state"], "COMPLETE");
}
