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
