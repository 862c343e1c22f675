//! The `portia` binary, run as a user would: each subcommand and exit code (0
//! COMPLETE, 1 failed or error, 2 usage, 3 waiting for a clarification), the
//! keyless demo, record then replay, and a clarification answered on a terminal.
//!
//! Every run gets a fresh directory (its `.portia/` store, its files) and an
//! environment without keys; most plans fix their tools' arguments and summaries
//! are off, so they need no model at all.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

use crate::fake_apis;

const KEY_VARS: [&str; 12] = [
    "OPENAI_API_KEY",
    "GEMINI_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_AD_TOKEN",
    "ANTHROPIC_API_KEY",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "OPENROUTER_API_KEY",
    "PORTIA_LLM_API_KEY",
    "TAVILY_API_KEY",
    "OPENWEATHERMAP_API_KEY",
    "PORTIA_LLM_PROVIDER",
];

/// A fresh working directory with `files/report.csv` in it (`files/` is the files root).
pub(crate) fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    std::fs::write(dir.path().join("files/report.csv"), "city,temp\nOslo,-3\n").unwrap();
    dir
}

/// The binary in `dir`, with no keys, offline, no summaries, stdin not a terminal.
pub(crate) fn portia(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portia"));
    for var in KEY_VARS.iter().chain(&["PORTIA_STORAGE", "PORTIA_STORAGE_DIR", "RUST_LOG"]) {
        command.env_remove(var);
    }
    command
        .current_dir(dir)
        .env("PORTIA_OFFLINE", "1")
        .env("PORTIA_SUMMARIZE", "false")
        .env("PORTIA_FILES_ROOT", dir.join("files"))
        .env("PORTIA_LOG_LEVEL", "error")
        .stdin(Stdio::null());
    command
}

fn run(dir: &Path, args: &[&str]) -> Output {
    portia(dir).args(args).output().unwrap()
}

/// Submits `plan` for the workers and returns the new workflow's id.
fn submit(dir: &Path, plan: &Path) -> String {
    let submitted = run(dir, &["submit", "--plan", plan.to_str().unwrap()]);
    assert_eq!(code(&submitted), 0, "{}", stderr(&submitted));
    String::from_utf8_lossy(&submitted.stdout).trim().to_owned()
}

pub(crate) fn code(output: &Output) -> i32 {
    output.status.code().expect("an exit code")
}

pub(crate) fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A one-step plan reading `filename` with arguments fixed in the plan: no model needed.
fn read_plan(dir: &Path, filename: &str) -> PathBuf {
    let plan = json!({
        "plan_context": {"query": "Read the report", "tool_ids": ["file_reader_tool"]},
        "steps": [{"task": "Read the report", "inputs": [], "tool_id": "file_reader_tool",
                   "output": "$report", "args": {"filename": filename}}]
    });
    let path = dir.join(format!("plan-{filename}.json"));
    std::fs::write(&path, plan.to_string()).unwrap();
    path
}

/// Runs a plan that asks which file was meant; returns the workflow and clarification ids.
fn waiting_workflow(dir: &Path) -> (String, String) {
    let plan = read_plan(dir, "reprot.csv");
    let output = run(dir, &["run", "--plan", plan.to_str().unwrap()]);
    assert_eq!(code(&output), 3, "{}", stderr(&output));
    let workflow = stdout_json(&output);
    assert_eq!(workflow["state"], "NEED_CLARIFICATION");
    let id = workflow["id"].as_str().unwrap().to_owned();
    let clarification = workflow["outputs"]["clarifications"][0]["id"].as_str().unwrap().to_owned();
    let err = stderr(&output);
    assert!(err.contains(&format!("portia answer {id}")) && err.contains(&clarification), "{err}");
    assert!(err.contains("(options: report.csv)"), "the clarifications are listed: {err}");
    (id, clarification)
}

#[test]
fn run_stops_with_3_then_answer_and_resume_in_other_processes_complete_it() {
    let dir = workdir();
    let (id, clarification) = waiting_workflow(dir.path());

    let listed = run(dir.path(), &["list", "--state", "need-clarification"]);
    assert_eq!(code(&listed), 0);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&id));

    let answered = run(dir.path(), &["answer", &id, &clarification, "report.csv"]);
    assert_eq!(code(&answered), 0, "{}", stderr(&answered));
    assert_eq!(stdout_json(&answered)["state"], "READY_TO_RESUME");

    let resumed = run(dir.path(), &["resume", &id]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    let workflow = stdout_json(&resumed);
    assert_eq!(workflow["state"], "COMPLETE");
    assert_eq!(workflow["outputs"]["final_output"]["value"], json!([{"city": "Oslo", "temp": "-3"}]));

    let shown = run(dir.path(), &["show", &id]);
    assert_eq!(stdout_json(&shown), workflow);
    let table = run(dir.path(), &["show", &id, "--format", "table"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("COMPLETE") && table.contains("file_reader_tool  done"), "{table}");
    assert!(table.contains("answered \"report.csv\""), "{table}");
}

#[test]
fn a_changed_plan_file_keeping_its_id_is_refused_rather_than_the_stored_plan_run() {
    let dir = workdir();
    let path = read_plan(dir.path(), "report.csv");
    let mut plan: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    plan["id"] = json!("plan-01a24d37-0000-7000-8000-00000000abcd");
    std::fs::write(&path, plan.to_string()).unwrap();
    let first = run(dir.path(), &["run", "--plan", path.to_str().unwrap()]);
    assert_eq!(code(&first), 0, "{}", stderr(&first));

    std::fs::write(dir.path().join("files/other.csv"), "city,temp\nLima,19\n").unwrap();
    plan["steps"][0]["args"]["filename"] = json!("other.csv");
    std::fs::write(&path, plan.to_string()).unwrap();
    let changed = run(dir.path(), &["run", "--plan", path.to_str().unwrap()]);
    assert_eq!(code(&changed), 1, "the stored plan was run instead: {}", String::from_utf8_lossy(&changed.stdout));
    let err = stderr(&changed);
    assert!(err.contains("plan-01a24d37-0000-7000-8000-00000000abcd is already stored with other content"), "{err}");
    assert!(err.contains("new id"), "says how to fix it: {err}");
}

/// `--config FILE` read the file alone: the store the environment named, its
/// budget and its base URLs were dropped, so a worker started with a one-line
/// config file looked at another store than `submit` had used.
#[test]
fn a_config_file_sets_what_it_names_and_the_environment_gives_the_rest() {
    let dir = workdir();
    let store = dir.path().join("elsewhere");
    std::fs::write(dir.path().join("portia.toml"), "max_retries = 2\n[budget]\nllm_calls = 7\n").unwrap();
    let plan = read_plan(dir.path(), "report.csv");
    let with_file = |args: &[&str]| {
        let mut command = portia(dir.path());
        command.env("PORTIA_STORAGE_DIR", &store).env("PORTIA_MAX_RETRIES", "5").env("PORTIA_BUDGET_USD", "1.5");
        command.args(["--config", "portia.toml"]).args(args).output().unwrap()
    };
    let submitted = with_file(&["submit", "--plan", plan.to_str().unwrap()]);
    assert_eq!(code(&submitted), 0, "{}", stderr(&submitted));
    assert!(store.join("portia.db").exists(), "the environment's store was used");

    let mut listed = portia(dir.path());
    let listed =
        stdout_json(&listed.env("PORTIA_STORAGE_DIR", &store).args(["list", "--format", "json"]).output().unwrap());
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");

    // An invalid value in the environment is read, and refused, under a file too.
    let mut refused = portia(dir.path());
    let refused =
        refused.env("PORTIA_LOG_LEVEL", "verbose").args(["--config", "portia.toml", "list"]).output().unwrap();
    assert_eq!(code(&refused), 1);
    assert!(stderr(&refused).contains("PORTIA_LOG_LEVEL"), "{}", stderr(&refused));
}

#[test]
fn a_plan_file_with_a_misspelt_key_is_refused_naming_it() {
    let dir = workdir();
    let path = read_plan(dir.path(), "report.csv");
    let mut plan: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    plan["steps"][0]["conditon"] = json!("false");
    std::fs::write(&path, plan.to_string()).unwrap();
    let output = run(dir.path(), &["run", "--plan", path.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    assert!(stderr(&output).contains("`steps.0.conditon` (did you mean `condition`?)"), "{}", stderr(&output));
    assert!(output.stdout.is_empty(), "nothing ran");
}

#[test]
fn a_blank_query_is_a_usage_error() {
    let dir = workdir();
    for args in [&["plan", ""][..], &["run", "   "], &["submit", "\t"]] {
        let output = run(dir.path(), args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("the query is empty"), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn submit_refuses_the_memory_store_where_no_worker_would_see_the_workflow() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let output = portia(dir.path())
        .args(["submit", "--plan", plan.to_str().unwrap()])
        .env("PORTIA_STORAGE", "memory")
        .output()
        .unwrap();
    assert_eq!(code(&output), 1, "{}", String::from_utf8_lossy(&output.stdout));
    assert!(output.stdout.is_empty(), "no id is printed for a workflow that would be lost");
    assert!(stderr(&output).contains("PORTIA_STORAGE"), "{}", stderr(&output));
}

#[test]
fn a_rust_log_that_cannot_be_read_is_said_not_ignored() {
    let output = portia(workdir().path()).args(["list"]).env("RUST_LOG", "[[[").output().unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stderr(&output).contains("RUST_LOG is not a valid filter"), "{}", stderr(&output));
}

#[test]
fn a_worker_of_no_concurrency_is_a_usage_error() {
    let output = run(workdir().path(), &["worker", "--concurrency", "0", "--without-model"]);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(stderr(&output).contains("must be at least 1"), "{}", stderr(&output));
}

#[test]
fn a_failed_workflow_exits_1_with_one_line_naming_the_cause() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "missing.txt");
    let output = run(dir.path(), &["run", "--plan", plan.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    assert_eq!(stdout_json(&output)["state"], "FAILED");
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("failed (TOOL_ERROR)") && err.contains("missing.txt was not found"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let dir = workdir();
    for args in [&["bogus"][..], &["run"], &["prune", "--older-than", "7y"], &["show", "not-an-id"], &["watch"]] {
        let output = run(dir.path(), args);
        assert_eq!(code(&output), 2, "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn planning_without_a_key_exits_1_naming_the_variable() {
    let dir = workdir();
    let output =
        portia(dir.path()).args(["plan", "What is 2 plus 2?"]).env("PORTIA_LLM_PROVIDER", "openai").output().unwrap();
    assert_eq!(code(&output), 1);
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("OPENAI_API_KEY"), "{err}");
}

/// `portia args` in `dir` with `vars` set, which must fail with one line on stderr
/// (not a panic's several) that shows none of the secrets the tests plant.
fn refused_in_one_line(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> String {
    let output = portia(dir).args(args).envs(vars.iter().copied()).output().unwrap();
    let err = stderr(&output);
    assert_eq!((code(&output), err.lines().count()), (1, 1), "{args:?} {vars:?}: {err}");
    assert!(!err.contains("LEAKCANARY") && !err.contains("panicked"), "{args:?} {vars:?}: {err}");
    err
}

/// The tester's reports, run as they were: each bad setting is named, where it is
/// wrong, and its secret is not shown.
#[test]
fn bad_settings_are_refused_in_one_line_that_shows_no_secret() {
    let dir = workdir();
    std::fs::write(dir.path().join(".env"), "A=1\nOPENAI_API_KEY=sk-LEAKCANARY dotenv\n").unwrap();
    let err = refused_in_one_line(dir.path(), &["plan", "x"], &[]);
    assert!(err.contains(".env`: line 2 (OPENAI_API_KEY) cannot be parsed"), "{err}");
    std::fs::remove_file(dir.path().join(".env")).unwrap();

    std::fs::write(dir.path().join("c3.toml"), "openai_api_key = sk-LEAKCANARY-file\n").unwrap();
    let err = refused_in_one_line(dir.path(), &["--config", "c3.toml", "plan", "x"], &[]);
    assert!(err.contains("c3.toml`: line 1, column 18"), "{err}");

    // A misspelt setting was ignored, and the run went on without it.
    std::fs::write(dir.path().join("c4.toml"), "max_retries = 2\nopenai_apikey = \"sk-LEAKCANARY\"\n").unwrap();
    let err = refused_in_one_line(dir.path(), &["--config", "c4.toml", "plan", "x"], &[]);
    assert!(err.contains("unknown setting `openai_apikey` (did you mean `openai_api_key`?)"), "{err}");

    let err = refused_in_one_line(dir.path(), &["plan", "x"], &[("OPENAI_BASE_URL", "ftp://u:LEAKCANARYPW@host/v1")]);
    assert!(err.contains("ftp://***@host/v1"), "{err}");
    let err =
        refused_in_one_line(dir.path(), &["plan", "x"], &[("OPENAI_BASE_URL", "http://127.0.0.1:1/v1?key=LEAKCANARY")]);
    assert!(err.contains("`OPENAI_BASE_URL`") && err.contains("query string"), "{err}");

    let forever = [("OPENAI_API_KEY", "sk-test"), ("PORTIA_HTTP_IDLE_TIMEOUT_SECS", "18446744073709551615")];
    let err = refused_in_one_line(dir.path(), &["plan", "What is 3+4?"], &forever);
    assert!(err.contains("`PORTIA_HTTP_IDLE_TIMEOUT_SECS`"), "{err}");
}

#[test]
fn commands_that_need_no_model_need_no_key() {
    let dir = workdir();
    let listed = run(dir.path(), &["list", "--format", "json"]);
    assert_eq!((code(&listed), stdout_json(&listed)), (0, json!([])));

    let tools = run(dir.path(), &["tools", "--format", "json"]);
    assert_eq!(code(&tools), 0);
    let tools = stdout_json(&tools);
    let ids: Vec<&str> = tools.as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["calculator_tool", "weather_tool", "search_tool", "llm_tool", "file_reader_tool", "file_writer_tool"]
    );
    let search = &tools[2];
    assert_eq!((&search["available"], &search["key_var"]), (&json!(false), &json!("TAVILY_API_KEY")));
    assert_eq!(search["args_schema"]["required"], json!(["search_query"]));
    let table = run(dir.path(), &["tools"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("file_writer_tool  [side effects, idempotent]"), "{table}");
    assert!(table.contains("set TAVILY_API_KEY to use it"), "{table}");
}

/// `portia tools | head -1` and the like: the reader has gone before the command
/// writes. The command ends quietly with exit 1, never with a panic and a backtrace.
#[test]
fn a_closed_stdout_ends_the_command_quietly_without_a_panic() {
    let dir = workdir();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    for args in [&["tools", "--format", "json"][..], &["list", "--format", "json"], &["tools"]] {
        let output = portia(dir.path()).args(args).stdout(writer.try_clone().unwrap()).output().unwrap();
        assert_eq!((code(&output), stderr(&output)), (1, String::new()), "{args:?}");
    }
}

/// `portia tools > /dev/full`: the write fails, and the command says so in one line.
#[test]
fn a_full_stdout_ends_the_command_with_one_line() {
    let dir = workdir();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let output = portia(dir.path()).args(["tools"]).stdout(full).output().unwrap();
    let message = stderr(&output);
    assert_eq!(code(&output), 1, "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("portia: cannot write to standard output: No space left on device"), "{message}");
}

/// A workflow submitted (or run) whose id could not be written out is stored all
/// the same: the line says which, so a script does not submit it twice.
#[test]
fn a_submission_whose_id_cannot_be_written_names_it_on_stderr() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let output = portia(dir.path()).args(["submit", "--plan", plan.to_str().unwrap()]).stdout(full).output().unwrap();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let listed = stdout_json(&run(dir.path(), &["list", "--format", "json"]));
    let id = listed[0]["id"].as_str().expect("the workflow is stored").to_owned();
    assert!(stderr(&output).contains(&format!("workflow {id} is stored all the same")), "{}", stderr(&output));
}

/// A stored row that no longer parses is listed as unreadable, with its id, and the
/// others are listed as usual; `show` names the row and `delete` removes it.
#[test]
fn list_shows_an_unreadable_row_and_delete_removes_it() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..2).map(|_| submit(dir.path(), &plan)).collect();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    db.execute("UPDATE workflows SET body = '{}' WHERE id = ?1", [&ids[0]]).unwrap();

    let table = run(dir.path(), &["list"]);
    assert_eq!(code(&table), 0, "{}", stderr(&table));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    let unreadable: Vec<&str> = table.lines().filter(|l| l.starts_with("UNREADABLE")).collect();
    assert_eq!(unreadable.len(), 1, "{table}");
    assert!(unreadable[0].contains(&ids[0]), "{table}");
    assert!(table.lines().any(|l| l.starts_with(&ids[1]) && l.contains("NOT_STARTED")), "{table}");

    let json = run(dir.path(), &["list", "--format", "json"]);
    assert_eq!(stdout_json(&json).as_array().unwrap().len(), 1);
    assert!(stderr(&json).contains(&format!("portia: unreadable: workflow {}", ids[0])), "{}", stderr(&json));

    let shown = run(dir.path(), &["show", &ids[0]]);
    assert_eq!(code(&shown), 1);
    assert!(stderr(&shown).contains(&ids[0]), "{}", stderr(&shown));
    let deleted = run(dir.path(), &["delete", &ids[0]]);
    assert_eq!(code(&deleted), 0, "{}", stderr(&deleted));
    let table = run(dir.path(), &["list"]);
    assert!(!String::from_utf8_lossy(&table.stdout).contains("UNREADABLE"));
}

/// `portia delete` refuses a workflow a run holds, as the HTTP API does: deleted
/// under its run, the run failed at its next save. `--force` deletes it anyway.
#[tokio::test]
async fn delete_refuses_a_workflow_a_run_holds_unless_forced() {
    use portia::storage::LeaseQueue as _;
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let id = submit(dir.path(), &plan);
    let storage = portia::storage::SqliteStorage::open(dir.path().join(".portia/portia.db")).unwrap();
    let held = storage.claim_runnable("a worker elsewhere", std::time::Duration::from_secs(600)).await.unwrap();
    assert_eq!(held.expect("the submitted workflow").workflow.id().to_string(), id);

    let refused = run(dir.path(), &["delete", &id]);
    assert_eq!(code(&refused), 1);
    let said = stderr(&refused);
    assert!(said.contains("is being run by a worker elsewhere") && said.contains("--force"), "{said}");
    assert_eq!(code(&run(dir.path(), &["show", &id])), 0, "still stored");

    let forced = run(dir.path(), &["delete", "--force", &id]);
    assert_eq!(code(&forced), 0, "{}", stderr(&forced));
    assert_eq!(code(&run(dir.path(), &["show", &id])), 1, "deleted");
}

/// A queued workflow that cannot be read does not stop the workers: it is set aside
/// (and listed so), the one behind it runs, and `--exit-when-idle` does not wait
/// for it.
#[test]
fn a_worker_skips_an_unreadable_queued_workflow_and_runs_the_next() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..2).map(|_| submit(dir.path(), &plan)).collect();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    db.execute("UPDATE workflows SET body = '{}' WHERE id = ?1", [&ids[0]]).unwrap();

    let worker = portia(dir.path())
        .args(["worker", "--exit-when-idle", "--without-model"])
        .env("PORTIA_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    let shown = stdout_json(&run(dir.path(), &["show", &ids[1]]));
    assert_eq!(shown["state"], json!("COMPLETE"));
    let listed = String::from_utf8(run(dir.path(), &["list"]).stdout).unwrap();
    let row = listed.lines().find(|l| l.starts_with("UNREADABLE")).unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains(&ids[0]) && row.ends_with("(set aside)"), "{listed}");
}

/// A queued workflow whose plan cannot be read does not hold the workers up either:
/// its run sets it aside, the worker says which row and what to do, and runs the
/// next without backing off. `portia list` and `portia show` say why it is set
/// aside. Once the plan's row is put back, `portia resume` completes the workflow,
/// which was kept as it was.
#[test]
fn a_worker_sets_aside_a_workflow_whose_plan_cannot_be_read_and_runs_the_next() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..2).map(|_| submit(dir.path(), &plan)).collect();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    let plan_id: String = db.query_row("SELECT plan_id FROM workflows WHERE id = ?1", [&ids[0]], |r| r.get(0)).unwrap();
    let body: String = db.query_row("SELECT body FROM plans WHERE id = ?1", [&plan_id], |r| r.get(0)).unwrap();
    db.execute("UPDATE plans SET body = '{}' WHERE id = ?1", [&plan_id]).unwrap();

    let worker = portia(dir.path())
        .args(["worker", "--exit-when-idle", "--without-model"])
        .env("PORTIA_LOG_LEVEL", "warn")
        .output()
        .unwrap();
    let log = stderr(&worker);
    assert_eq!(code(&worker), 1, "a run stopped on an error: {log}");
    let said: Vec<&str> = log.lines().filter(|l| l.contains("so it is set aside")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains(&ids[0]) && said[0].contains(&plan_id) && said[0].contains("portia resume"), "{log}");
    assert!(!log.contains("the store failed"), "a row that cannot be read is not a failing store: {log}");
    assert_eq!(stdout_json(&run(dir.path(), &["show", &ids[1]]))["state"], json!("COMPLETE"));
    let shown = run(dir.path(), &["show", &ids[0]]);
    assert_eq!(stdout_json(&shown)["state"], json!("NOT_STARTED"));
    let why = stderr(&shown);
    assert!(why.contains("is set aside") && why.contains(&plan_id) && why.contains("portia resume"), "{why}");
    let listed = String::from_utf8(run(dir.path(), &["list"]).stdout).unwrap();
    let row = listed.lines().find(|l| l.starts_with(&ids[0])).unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("NOT_STARTED, set aside"), "{listed}");
    let reason = listed.lines().find(|l| l.starts_with("SET ASIDE")).unwrap_or_else(|| panic!("{listed}"));
    assert!(reason.contains(&ids[0]) && reason.contains(&plan_id), "{listed}");
    let json_list = run(dir.path(), &["list", "--format", "json"]);
    assert!(stderr(&json_list).contains(&format!("set aside: {}", ids[0])), "{}", stderr(&json_list));

    db.execute("UPDATE plans SET body = ?2 WHERE id = ?1", [&plan_id, &body]).unwrap();
    let resumed = run(dir.path(), &["resume", &ids[0]]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert_eq!(stdout_json(&resumed)["state"], json!("COMPLETE"));
    let listed = String::from_utf8(run(dir.path(), &["list"]).stdout).unwrap();
    assert!(!listed.contains("set aside") && !listed.contains("SET ASIDE"), "put back by the resume: {listed}");
}

/// Workflows set aside are put back, once the row is fixed, with `portia put-back`:
/// no run here, and the workers take them again.
#[test]
fn put_back_returns_workflows_set_aside_to_the_workers() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..2).map(|_| submit(dir.path(), &plan)).collect();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    db.execute_batch("CREATE TABLE kept AS SELECT * FROM plans; UPDATE plans SET body = '{}';").unwrap();
    let worker = || portia(dir.path()).args(["worker", "--exit-when-idle", "--without-model"]).output().unwrap();
    assert_eq!(code(&worker()), 1, "both set aside");
    let listed = String::from_utf8(run(dir.path(), &["list"]).stdout).unwrap();
    assert_eq!(listed.lines().filter(|l| l.starts_with("SET ASIDE")).count(), 2, "{listed}");

    // Not fixed yet: put back, the worker would only set them aside again.
    let early = run(dir.path(), &["put-back", "--all"]);
    assert_eq!(code(&early), 1);
    assert!(String::from_utf8_lossy(&early.stdout).trim().is_empty(), "none put back");
    assert_eq!(stderr(&early).matches("stays set aside").count(), 2, "{}", stderr(&early));
    let listed = String::from_utf8(run(dir.path(), &["list"]).stdout).unwrap();
    assert_eq!(listed.lines().filter(|l| l.starts_with("SET ASIDE")).count(), 2, "{listed}");

    db.execute_batch("UPDATE plans SET body = (SELECT body FROM kept WHERE kept.id = plans.id)").unwrap();
    let one = run(dir.path(), &["put-back", &ids[0]]);
    assert_eq!((code(&one), String::from_utf8_lossy(&one.stdout).trim()), (0, ids[0].as_str()), "{}", stderr(&one));
    let again = run(dir.path(), &["put-back", &ids[0]]);
    assert_eq!(code(&again), 1);
    assert!(stderr(&again).contains("is not set aside"), "{}", stderr(&again));
    let rest = run(dir.path(), &["put-back", "--all"]);
    assert_eq!(String::from_utf8_lossy(&rest.stdout).trim(), ids[1], "{}", stderr(&rest));
    assert_eq!(code(&worker()), 0);
    for id in &ids {
        assert_eq!(stdout_json(&run(dir.path(), &["show", id]))["state"], json!("COMPLETE"));
    }
}

/// The same for a workflow whose journal cannot be read: answered and queued again,
/// its run meets the journal's row, and the worker sets it aside and exits
/// when idle, leaving it READY_TO_RESUME; once the row is fixed, `portia resume`
/// completes it.
#[test]
fn a_worker_sets_aside_a_workflow_whose_journal_cannot_be_read() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "reprot.csv");
    let id = submit(dir.path(), &plan);
    let worker = || portia(dir.path()).args(["worker", "--exit-when-idle", "--without-model"]).output().unwrap();
    assert_eq!(code(&worker()), 0);
    let waiting = stdout_json(&run(dir.path(), &["show", &id]));
    let clarification = waiting["outputs"]["clarifications"][0]["id"].as_str().expect("a clarification").to_owned();
    let answered = run(dir.path(), &["answer", &id, &clarification, "report.csv"]);
    assert_eq!(code(&answered), 0, "{}", stderr(&answered));
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    let journaled = db.execute("UPDATE tool_calls SET status = 'MISLAID' WHERE workflow_id = ?1", [&id]).unwrap();
    assert_eq!(journaled, 1, "the call that asked is journaled");

    let stopped = worker();
    assert_eq!(code(&stopped), 1, "{}", stderr(&stopped));
    assert_eq!(stdout_json(&run(dir.path(), &["show", &id]))["state"], json!("READY_TO_RESUME"));
    let refused = run(dir.path(), &["resume", &id]);
    assert_eq!(code(&refused), 1);
    assert!(stderr(&refused).contains("unknown status \"MISLAID\""), "{}", stderr(&refused));

    db.execute("UPDATE tool_calls SET status = 'NEED_CLARIFICATION' WHERE workflow_id = ?1", [&id]).unwrap();
    let resumed = run(dir.path(), &["resume", &id]);
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert_eq!(stdout_json(&resumed)["state"], json!("COMPLETE"));
}

/// A watch of a workflow that nothing runs says so, with what would run it, rather
/// than wait without a word; it goes on watching, and ends once a worker has run it.
#[test]
fn watch_says_when_nothing_runs_the_workflow_and_follows_the_worker_that_does() {
    use std::io::BufRead;
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let id = submit(dir.path(), &plan);
    let mut watch =
        portia(dir.path()).args(["watch", &id]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut said = String::new();
    std::io::BufReader::new(watch.stderr.take().unwrap()).read_line(&mut said).unwrap();
    assert!(said.starts_with(&format!("portia: nothing is running workflow {id} (NOT_STARTED)")), "{said}");
    assert!(said.contains(&format!("`portia resume {id}`")), "{said}");

    let worker = run(dir.path(), &["worker", "--exit-when-idle", "--without-model"]);
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    let watched = watch.wait_with_output().unwrap();
    assert_eq!(code(&watched), 0);
    let last =
        String::from_utf8_lossy(&watched.stdout).lines().last().map(|l| serde_json::from_str::<Value>(l).unwrap());
    assert_eq!(last.expect("the events")["to"], json!("COMPLETE"));
}

/// A workflow FAILED on a missing file is taken up again once the file is there:
/// `portia retry ID --submit` queues a new workflow that keeps the first step's
/// output, and a worker completes it; `portia retry ID` then gives that same retry
/// rather than a second one.
#[test]
fn retry_takes_a_failed_workflow_up_again_once() {
    let dir = workdir();
    let step = |file: &str| json!({"task": "Read", "inputs": [], "tool_id": "file_reader_tool", "output": format!("${}", &file[..5]), "args": {"filename": file}});
    let plan = json!({
        "plan_context": {"query": "Read two reports", "tool_ids": ["file_reader_tool"]},
        "steps": [step("report.csv"), step("zzzzz.csv")]
    });
    let path = dir.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let failed = run(dir.path(), &["run", "--plan", path.to_str().unwrap()]);
    assert_eq!(code(&failed), 1, "{}", stderr(&failed));
    let failed = stdout_json(&failed);
    let id = failed["id"].as_str().unwrap().to_owned();
    assert_eq!((&failed["state"], &failed["failure"]["step"]), (&json!("FAILED"), &json!(1)));
    std::fs::write(dir.path().join("files/zzzzz.csv"), "city,temp\nRome,12\n").unwrap();

    let queued = run(dir.path(), &["retry", &id, "--submit"]);
    assert_eq!(code(&queued), 0, "{}", stderr(&queued));
    let queued = String::from_utf8_lossy(&queued.stdout).trim().to_owned();
    let stored = stdout_json(&run(dir.path(), &["show", &queued]));
    assert_eq!((&stored["state"], &stored["retry_of"]), (&json!("NOT_STARTED"), &json!(id)));
    assert_eq!(stored["outputs"]["step_outputs"]["$repor"], failed["outputs"]["step_outputs"]["$repor"]);
    let worker = run(dir.path(), &["worker", "--exit-when-idle", "--without-model"]);
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    assert_eq!(stdout_json(&run(dir.path(), &["show", &queued]))["state"], json!("COMPLETE"));

    // Asked again, the same retry: it ran already, so nothing runs twice.
    let here = run(dir.path(), &["retry", &id]);
    assert_eq!(code(&here), 0, "{}", stderr(&here));
    let here = stdout_json(&here);
    assert_eq!((&here["id"], &here["state"], &here["retry_of"]), (&json!(queued), &json!("COMPLETE"), &json!(id)));
    assert!(here["outputs"]["step_outputs"]["$zzzzz"]["value"].to_string().contains("Rome"), "{here}");
    let requeued = run(dir.path(), &["retry", &id, "--submit"]);
    assert_eq!(String::from_utf8_lossy(&requeued.stdout).trim(), queued);
    assert!(stderr(&requeued).contains("(COMPLETE), which has ended: it is not queued again"), "{}", stderr(&requeued));
    let again = run(dir.path(), &["retry", here["id"].as_str().unwrap()]);
    assert_eq!(code(&again), 1);
    assert!(stderr(&again).contains("only a FAILED workflow is retried"), "{}", stderr(&again));
}

/// After an outage, `portia retry --all-failed --submit` queues a retry of each
/// FAILED workflow not retried yet, once: run again, it queues none. A retry made
/// before but not queued (made to run in its own process, whose run died) is queued.
#[test]
fn retry_all_failed_queues_one_retry_of_each_failed_workflow() {
    let dir = workdir();
    let plan = json!({
        "plan_context": {"query": "Read a report", "tool_ids": ["file_reader_tool"]},
        "steps": [{"task": "Read", "inputs": [], "tool_id": "file_reader_tool", "output": "$r", "args": {"filename": "later.csv"}}]
    });
    let path = dir.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let failed: Vec<String> = (0..3)
        .map(|_| {
            let out = run(dir.path(), &["run", "--plan", path.to_str().unwrap()]);
            assert_eq!(code(&out), 1, "{}", stderr(&out));
            stdout_json(&out)["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let one = run(dir.path(), &["retry", &failed[0], "--submit"]);
    let retried_before = String::from_utf8_lossy(&one.stdout).trim().to_owned();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    // As if made by `portia retry ID`, whose process died before it ran.
    assert_eq!(db.execute("UPDATE workflows SET queued = NULL WHERE id = ?1", [&retried_before]).unwrap(), 1);
    std::fs::write(dir.path().join("files/later.csv"), "city,temp\nRome,12\n").unwrap();

    let all = run(dir.path(), &["retry", "--all-failed", "--submit"]);
    assert_eq!(code(&all), 0, "{}", stderr(&all));
    let printed: Vec<String> = String::from_utf8_lossy(&all.stdout).lines().map(str::to_owned).collect();
    assert_eq!(printed.len(), 3, "{printed:?}");
    assert!(printed.contains(&retried_before), "{printed:?}");
    let expected = "retries queued: 2; FAILED workflows retried before: 1 (their retries queued now, made to run \
                    elsewhere and not finished: 1)";
    assert!(stderr(&all).contains(expected), "{}", stderr(&all));
    let queued: Vec<&String> = printed.iter().filter(|id| **id != retried_before).collect();
    for retry in &queued {
        let stored = stdout_json(&run(dir.path(), &["show", retry]));
        assert!(failed[1..].contains(&stored["retry_of"].as_str().unwrap().to_owned()), "{stored}");
    }
    let again = run(dir.path(), &["retry", "--all-failed", "--submit"]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), "", "each was retried once");
    let worker = run(dir.path(), &["worker", "--exit-when-idle", "--without-model"]);
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    for retry in queued.into_iter().chain([&retried_before]) {
        assert_eq!(stdout_json(&run(dir.path(), &["show", retry]))["state"], json!("COMPLETE"));
    }
    let refused = run(dir.path(), &["retry", "--all-failed"]);
    assert_eq!(code(&refused), 2, "queued only: {}", stderr(&refused));
}

#[test]
fn cancel_fails_a_waiting_workflow_and_resume_then_exits_1() {
    let dir = workdir();
    let (id, _) = waiting_workflow(dir.path());
    let cancelled = run(dir.path(), &["cancel", &id, "--reason", "not needed"]);
    assert_eq!(code(&cancelled), 0, "{}", stderr(&cancelled));
    let workflow = stdout_json(&cancelled);
    assert_eq!((&workflow["state"], &workflow["failure"]["kind"]), (&json!("FAILED"), &json!("CANCELLED")));
    let resumed = run(dir.path(), &["resume", &id]);
    assert_eq!(code(&resumed), 1);
    assert!(stderr(&resumed).contains("FAILED"), "{}", stderr(&resumed));
    let unknown = run(dir.path(), &["show", "wkfl-00000000-0000-0000-0000-000000000000"]);
    assert_eq!(code(&unknown), 1);
    assert!(stderr(&unknown).contains("not found"), "{}", stderr(&unknown));
}

/// The workers guide suggests one runtime thread per worker process
/// (`TOKIO_WORKER_THREADS=1`, which tokio reads); such a worker runs the whole
/// queue as any other does.
#[test]
fn a_worker_on_one_runtime_thread_runs_the_whole_queue() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..3).map(|_| submit(dir.path(), &plan)).collect();
    let worker = portia(dir.path())
        .args(["worker", "--concurrency", "3", "--exit-when-idle", "--without-model"])
        .env("TOKIO_WORKER_THREADS", "1")
        .output()
        .unwrap();
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    assert_eq!(stdout_json(&worker)["runs"], 3);
    for id in &ids {
        assert_eq!(stdout_json(&run(dir.path(), &["show", id]))["state"], "COMPLETE", "{id}");
    }
}

/// Without a key for the model, a worker would FAIL every workflow that calls it
/// (for good: a FAILED workflow is not resumed once the key is set), so it does not
/// start, and the queue waits for a worker that has one.
#[test]
fn a_worker_without_a_key_for_the_model_refuses_to_start_and_leaves_the_queue() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let id = submit(dir.path(), &plan);
    let worker = run(dir.path(), &["worker", "--exit-when-idle"]);
    assert_eq!(code(&worker), 1, "{}", stderr(&worker));
    let err = stderr(&worker);
    assert!(err.contains("OPENAI_API_KEY") && err.contains("--without-model"), "{err}");
    assert_eq!(stdout_json(&run(dir.path(), &["show", &id]))["state"], "NOT_STARTED", "the queue is untouched");
}

#[test]
fn submit_then_a_worker_runs_it_and_prune_deletes_it() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let id = submit(dir.path(), &plan);
    assert!(id.starts_with("wkfl-"), "{id}");

    let worker = run(dir.path(), &["worker", "--concurrency", "2", "--exit-when-idle", "--without-model"]);
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    assert_eq!(stdout_json(&worker)["runs"], 1);
    assert_eq!(stdout_json(&run(dir.path(), &["show", &id]))["state"], "COMPLETE");

    // Another process follows what the worker did, from the stored events.
    let watched = run(dir.path(), &["watch", &id]);
    assert_eq!(code(&watched), 0, "{}", stderr(&watched));
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&watched.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"state_changed"));
    assert!(names.contains(&"tool_call_finished"), "{names:?}");
    assert_eq!(events.last().unwrap()["to"], "COMPLETE");
    assert_eq!(
        events.iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        (1..=events.len() as u64).collect::<Vec<_>>()
    );

    let kept = run(dir.path(), &["prune", "--older-than", "7d"]);
    assert_eq!(String::from_utf8_lossy(&kept.stdout).trim(), "0");
    let pruned = run(dir.path(), &["prune", "--older-than", "0s"]);
    assert_eq!((code(&pruned), String::from_utf8_lossy(&pruned.stdout).trim()), (0, "1"));
    assert_eq!(stdout_json(&run(dir.path(), &["list", "--format", "json"])), json!([]));
}

fn demo_cassette() -> String {
    format!("{}/demo/stock_compare.cassette.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn plan_prints_json_mermaid_and_dot_from_a_cassette() {
    let dir = workdir();
    let cassette = demo_cassette();
    let query = "Which stock price grew faster in 2024, Amazon or Google?";
    let plan = run(dir.path(), &["--cassette", &cassette, "plan", query]);
    assert_eq!(code(&plan), 0, "{}", stderr(&plan));
    assert_eq!(stdout_json(&plan)["steps"].as_array().unwrap().len(), 3);

    let mermaid = run(dir.path(), &["--cassette", &cassette, "plan", query, "--format", "mermaid"]);
    let mermaid = String::from_utf8_lossy(&mermaid.stdout);
    assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
    assert!(
        mermaid.contains("s0 -->|$amazon_stock_growth| s2") && mermaid.contains("s1 -->|$google_stock_growth| s2"),
        "{mermaid}"
    );

    let dot = run(dir.path(), &["--cassette", &cassette, "plan", query, "--format", "dot"]);
    let dot = String::from_utf8_lossy(&dot.stdout);
    assert!(dot.starts_with("digraph plan {") && dot.contains("s0 -> s2 [label=\"$amazon_stock_growth\"];"), "{dot}");

    let other = run(dir.path(), &["--cassette", &cassette, "plan", "Which grew faster, Apple or Microsoft?"]);
    assert_eq!(code(&other), 1);
    let err = stderr(&other);
    assert!(err.contains("no recorded LLM request matches; the nearest, #0") && err.contains("Apple"), "{err}");
}

#[test]
fn the_demo_runs_with_no_key_and_the_network_refused() {
    let dir = workdir();
    let output = run(dir.path(), &["demo"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let documents: Vec<Value> = serde_json::Deserializer::from_str(&text).into_iter().map(Result::unwrap).collect();
    let [plan, workflow] = &documents[..] else { panic!("a plan then a workflow: {text}") };
    assert_eq!(plan["plan_context"]["query"], "Which stock price grew faster in 2024, Amazon or Google?");
    assert_eq!(workflow["state"], "COMPLETE");
    assert_eq!(workflow["usage"]["total"]["llm_calls"], 2, "the plan, then the answer with its summary");
    assert!(workflow["outputs"]["final_output"]["summary"].as_str().unwrap().contains("Amazon"));
    assert!(!dir.path().join(".portia").exists(), "the demo keeps nothing");
}

/// The workflow without what differs between two runs: ids, timestamps and timings.
fn stable(mut value: Value) -> Value {
    fn walk(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.retain(|k, _| !matches!(k.as_str(), "id" | "plan_id" | "workflow_id" | "running_ms" | "at"));
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_gives_the_same_workflow() {
    let dir = workdir();
    let cassette = dir.path().join("run.cassette.json");
    let cassette_arg = cassette.to_str().unwrap().to_owned();
    let query = "Which stock price grew faster in 2024, Amazon or Google?";
    let server = fake_apis::start(std::time::Duration::ZERO, std::time::Duration::ZERO).await;
    let mut record = portia(dir.path());
    record
        .args(["--record", &cassette_arg, "run", query])
        .env("PORTIA_SUMMARIZE", "true")
        .env("OPENAI_API_KEY", "sk-recorded-secret")
        .env("OPENAI_BASE_URL", format!("{}/v1", server.uri()))
        .env("TAVILY_API_KEY", "tvly-recorded-secret")
        .env("TAVILY_BASE_URL", server.uri());
    let recorded = tokio::task::spawn_blocking(move || record.output().unwrap()).await.unwrap();
    drop(server);
    assert_eq!(code(&recorded), 0, "{}", stderr(&recorded));
    let text = std::fs::read_to_string(&cassette).unwrap();
    assert!(!text.contains("recorded-secret"), "keys are blanked out");

    // No key, no server: only the cassette.
    let replayed = portia(dir.path())
        .args(["--cassette", &cassette_arg, "run", query])
        .env("PORTIA_SUMMARIZE", "true")
        .output()
        .unwrap();
    assert_eq!(code(&replayed), 0, "{}", stderr(&replayed));
    let (recorded, replayed) = (stdout_json(&recorded), stdout_json(&replayed));
    assert_ne!(recorded["id"], replayed["id"]);
    assert_eq!(stable(recorded), stable(replayed));
}

/// A recording that cannot be written (a full disk) says so, naming the file and
/// the system's reason; it was worded as a configuration error to fix.
#[cfg(target_os = "linux")]
#[test]
fn a_recording_to_a_full_disk_fails_naming_the_file_and_the_cause() {
    let dir = workdir();
    let path = read_plan(dir.path(), "report.csv");
    let output = run(dir.path(), &["--record", "/dev/full", "run", "--plan", path.to_str().unwrap()]);
    assert_eq!(code(&output), 1);
    let said = stderr(&output);
    assert!(said.contains("cannot write the recording /dev/full: No space left on device"), "{said}");
    assert!(!said.contains("configuration"), "{said}");
    assert_eq!(stdout_json(&output)["state"], "COMPLETE", "the run itself is printed");
}

/// `portia ARGS` on a pseudo-terminal (util-linux `script`, installed by `.ci/run`),
/// with `envs` set: typed into and read from as a person would.
#[cfg(target_os = "linux")]
struct Terminal {
    child: std::process::Child,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

#[cfg(target_os = "linux")]
impl Terminal {
    fn start(dir: &Path, args: &str, envs: &[(&str, &str)]) -> Self {
        use std::io::Read;

        let line = format!("'{}' {args}", env!("CARGO_BIN_EXE_portia"));
        let base = portia(dir);
        let mut child = Command::new("script")
            .args(["-qfec", &line, "/dev/null"])
            .envs(base.get_envs().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))))
            .envs(envs.iter().copied())
            .env_remove("OPENAI_API_KEY")
            .env("TERM", "xterm")
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux `script` (bsdutils) is installed");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = [0; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 || tx.send(buffer[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self { child, output, seen: String::new() }
    }

    /// Reads until `text` has been shown.
    fn wait_for(&mut self, text: &str) {
        while !self.seen.contains(text) {
            // A guard against a hang, not a measurement: what is awaited comes at once.
            let chunk = self
                .output
                .recv_timeout(std::time::Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no {text:?} in {}", self.seen));
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        self.child.stdin.as_mut().unwrap().write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for the end; returns the exit code and everything shown.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = self.child.wait().unwrap();
        drop(self.child.stdin.take());
        // The rest of the output: the reader ends at the end of the child's output.
        for chunk in self.output.iter() {
            self.seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        (status.code(), self.seen)
    }
}

/// Drives `portia run` through a pseudo-terminal, answering the question when it is
/// asked, as a person would.
#[cfg(target_os = "linux")]
#[test]
fn a_clarification_is_asked_and_answered_on_a_terminal() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "reprot.csv");
    let mut terminal = Terminal::start(dir.path(), &format!("run --plan '{}'", plan.display()), &[]);
    terminal.wait_for("choose (a number or a value)>");
    let seen = &terminal.seen;
    assert!(seen.contains("[Multiple Choice] reprot.csv was not found"), "{seen}");
    assert!(seen.contains("✓ 1 steps") || seen.contains("$report ? file_reader_tool"), "a live line per step: {seen}");
    terminal.type_line("1");
    terminal.wait_for("\"state\": \"COMPLETE\"");
    let (code, seen) = terminal.finish();
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("\"temp\": \"-3\""), "{seen}");
}

/// server-everything's form, asked on the terminal while its call waits (for an
/// hour, so only a live answer can finish the run in time), and answered there.
#[cfg(all(target_os = "linux", feature = "mcp"))]
#[test]
#[ignore = "needs MCP test servers: .ci/install-mcp-servers installs them (PORTIA_MCP_EVERYTHING)"]
fn a_servers_question_is_asked_live_on_a_terminal_and_its_call_goes_on() {
    let Some(everything) = std::env::var("PORTIA_MCP_EVERYTHING").ok().filter(|p| Path::new(p).exists()) else {
        panic!(
            "needs MCP test servers: PORTIA_MCP_EVERYTHING does not name an installed MCP server; run \
             `eval \"$(bash .ci/install-mcp-servers)\"` first (needs npm and python3)"
        )
    };
    let dir = workdir();
    let servers = json!({"mcpServers": {"everything": {"command": everything, "elicitationWaitSecs": 3600}}});
    let config = dir.path().join("mcp.json");
    std::fs::write(&config, servers.to_string()).unwrap();
    let tool = "everything__trigger-elicitation-request";
    let plan = json!({
        "plan_context": {"query": "Ask me", "tool_ids": [tool]},
        "steps": [{"task": "Ask for my details", "inputs": [], "tool_id": tool, "output": "$details", "args": {}}]
    });
    let path = dir.path().join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let envs = [("PORTIA_MCP_CONFIG", config.to_str().unwrap())];
    let mut terminal = Terminal::start(dir.path(), &format!("run --plan '{}'", path.display()), &envs);

    terminal.wait_for("answer>");
    assert!(terminal.seen.contains("[Input] everything asks"), "{}", terminal.seen);
    terminal.type_line(r#"{"name": "Ada Lovelace", "check": true}"#);
    terminal.wait_for("\"state\": \"COMPLETE\"");
    let (code, seen) = terminal.finish();
    assert_eq!(code, Some(0), "{seen}");
    assert!(seen.contains("Ada Lovelace") && !seen.contains("is waiting for"), "{seen}");
}

#[cfg(feature = "mcp")]
#[test]
fn mcp_serves_the_sdk_over_stdio() {
    use std::io::{BufRead, BufReader, Write};
    let dir = workdir();
    let mut server = portia(dir.path())
        .arg("mcp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    let mut send = move |message: Value| writeln!(stdin, "{message}").unwrap();
    let mut line = String::new();
    send(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}));
    stdout.read_line(&mut line).unwrap();
    assert!(serde_json::from_str::<Value>(&line).unwrap()["result"]["serverInfo"].is_object(), "{line}");
    send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    send(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let listed: Value = serde_json::from_str(&line).unwrap();
    let names: Vec<&str> =
        listed["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"run_query") && names.contains(&"resolve_clarification"), "{names:?}");
    drop(send);
    assert!(server.wait().unwrap().success(), "the server ends when its client closes stdin");
}

/// A one-step plan whose step is an LLM call: it needs a model.
pub(crate) fn llm_plan(dir: &Path) -> PathBuf {
    let plan = json!({
        "plan_context": {"query": "Say hello", "tool_ids": []},
        "steps": [{"task": "Say hello", "inputs": [], "tool_id": null, "output": "$hello"}]
    });
    let path = dir.join("plan-llm.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    path
}

/// An OpenAI endpoint that takes requests and never answers, so that a run waits in
/// its LLM call until it is stopped.
pub(crate) struct Silent(std::net::TcpListener);

impl Silent {
    pub(crate) fn start() -> Self {
        Self(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/v1", self.0.local_addr().unwrap())
    }

    /// Returns once a request has come in: the run is then inside its LLM call.
    pub(crate) fn wait_for_request(&self) -> std::net::TcpStream {
        self.0.accept().unwrap().0
    }
}

/// `portia ARGS` in a child process with `envs` set and its model at `silent`,
/// returned once its LLM call is under way: it then waits until it is stopped, or
/// until the connection, returned with it, is dropped.
fn stuck_in_its_llm_call(
    dir: &Path,
    silent: &Silent,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (crate::common::ChildGuard, std::net::TcpStream) {
    let child = with_model(dir, &silent.base_url())
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = crate::common::ChildGuard(child);
    (child, silent.wait_for_request())
}

pub(crate) fn signal(child: &std::process::Child, name: &str) {
    let status = Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// The binary with a model whose endpoint is `base_url`.
pub(crate) fn with_model(dir: &Path, base_url: &str) -> Command {
    let mut command = portia(dir);
    command.env("OPENAI_API_KEY", "sk-test").env("OPENAI_BASE_URL", base_url).env("PORTIA_MAX_RETRIES", "0");
    command
}

/// ctrl-c in `portia run` stops the run as a worker's shutdown does: the workflow is
/// printed with its id and how to resume, the exit code is 130, the lease is released
/// at once, and `portia resume` in another process finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_a_run_with_130_leaving_it_for_resume() {
    let dir = workdir();
    let plan = llm_plan(dir.path());
    let silent = Silent::start();
    let (mut child, _request) =
        stuck_in_its_llm_call(dir.path(), &silent, &["run", "--plan", plan.to_str().unwrap()], &[]);
    signal(&child, "INT");
    let output = child.output();
    assert_eq!(code(&output), 130, "{}", stderr(&output));
    let workflow = stdout_json(&output);
    let id = workflow["id"].as_str().unwrap().to_owned();
    assert_eq!(workflow["state"], "IN_PROGRESS");
    let err = stderr(&output);
    assert!(err.contains(&format!("stopped workflow {id}")) && err.contains(&format!("portia resume {id}")), "{err}");

    // Resumed at once, in another process: the lease was released, not left to lapse.
    let server = fake_apis::start(std::time::Duration::ZERO, std::time::Duration::ZERO).await;
    let mut resume = with_model(dir.path(), &format!("{}/v1", server.uri()));
    resume.args(["resume", &id]).env("PORTIA_LEASE_TTL_SECS", "3600");
    let resumed = tokio::task::spawn_blocking(move || resume.output().unwrap()).await.unwrap();
    assert_eq!(code(&resumed), 0, "{}", stderr(&resumed));
    assert_eq!(stdout_json(&resumed)["state"], "COMPLETE");
}

/// SIGTERM reaches a worker started with `--exit-when-idle` as it does any worker:
/// past its grace the running workflow is handed back with its lease released, the
/// report is printed, and another worker takes the workflow over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_an_exit_when_idle_worker_gracefully() {
    let dir = workdir();
    let plan = llm_plan(dir.path());
    let id = submit(dir.path(), &plan);
    let silent = Silent::start();
    let (mut child, _request) =
        stuck_in_its_llm_call(dir.path(), &silent, &["worker", "--exit-when-idle", "--grace", "0"], &[]);
    signal(&child, "TERM");
    let output = child.output();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let report = stdout_json(&output);
    assert_eq!((report["runs"].clone(), report["handed_back"].clone()), (json!(1), json!(1)));

    let server = fake_apis::start(std::time::Duration::ZERO, std::time::Duration::ZERO).await;
    let mut next = with_model(dir.path(), &format!("{}/v1", server.uri()));
    next.args(["worker", "--exit-when-idle"]).env("PORTIA_LEASE_TTL_SECS", "3600");
    let next = tokio::task::spawn_blocking(move || next.output().unwrap()).await.unwrap();
    assert_eq!(code(&next), 0, "{}", stderr(&next));
    assert_eq!(stdout_json(&run(dir.path(), &["show", &id]))["state"], "COMPLETE");
}

/// The command logs from the library's settings: a worker, with no level named,
/// logs each failed run with its workflow id and a summary when it stops, and
/// `PORTIA_LOG_FORMAT=json` makes each line a JSON object.
#[test]
fn a_worker_logs_failed_runs_and_a_summary_as_json_lines() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "missing.txt");
    let id = submit(dir.path(), &plan);
    let output = portia(dir.path())
        .args(["worker", "--exit-when-idle", "--without-model"])
        .env_remove("PORTIA_LOG_LEVEL")
        .env("PORTIA_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let lines: Vec<Value> = stderr(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}")))
        .collect();
    let logged = |message: &str| lines.iter().find(|l| l["fields"]["message"] == message).cloned();
    let failed = logged("workflow FAILED").expect("the failed run is logged");
    assert_eq!((failed["level"].as_str(), failed["fields"]["workflow"].as_str()), (Some("WARN"), Some(id.as_str())));
    assert!(failed["fields"]["error"].as_str().unwrap().contains("missing.txt"), "{failed}");
    // Each event's own text stays its `message` (a field named so would replace it),
    // and a step is a number, not Rust's `Some(0)`.
    for event in ["step failed", "workflow failed"] {
        let line = logged(event).unwrap_or_else(|| panic!("{event:?} is logged under its own name"));
        assert_eq!(line["fields"]["step"], json!(0), "{line}");
        assert!(line["fields"]["error"].as_str().unwrap().contains("missing.txt"), "{line}");
    }
    let summary = logged("worker stopped").expect("a summary is logged");
    let counts = ["runs", "failed", "errors"].map(|count| summary["fields"][count].as_u64());
    assert_eq!(counts, [Some(1), Some(1), Some(0)], "{summary}");
    assert_eq!(stdout_json(&output)["failed"], 1, "the report counts the FAILED workflow");
}

/// `portia cancel` of a run in another process waits for that run to stop (it does
/// at its next lease renewal) and prints the FAILED workflow; the run exits 1.
#[test]
fn cancel_waits_for_a_run_in_another_process_to_stop() {
    let dir = workdir();
    let plan = llm_plan(dir.path());
    let silent = Silent::start();
    // A short lease: the run renews it, and sees the request, every second.
    let (mut child, _request) = stuck_in_its_llm_call(
        dir.path(),
        &silent,
        &["run", "--plan", plan.to_str().unwrap()],
        &[("PORTIA_LEASE_TTL_SECS", "3")],
    );
    let listed = stdout_json(&run(dir.path(), &["list", "--format", "json"]));
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    let cancelled = portia(dir.path()).args(["cancel", &id]).env("PORTIA_LEASE_TTL_SECS", "3").output().unwrap();
    assert_eq!(code(&cancelled), 0, "{}", stderr(&cancelled));
    let workflow = stdout_json(&cancelled);
    assert_eq!((&workflow["state"], &workflow["failure"]["kind"]), (&json!("FAILED"), &json!("CANCELLED")));
    let ran = child.output();
    assert_eq!(code(&ran), 1, "{}", stderr(&ran));
    assert_eq!(stdout_json(&ran)["state"], "FAILED");
}

/// `--exit-when-idle` waits only for queued work: a workflow that a killed
/// `portia run` left IN_PROGRESS is no worker's, and does not keep the worker up.
#[test]
fn a_worker_exits_when_idle_despite_a_workflow_no_worker_will_run() {
    let dir = workdir();
    let plan = llm_plan(dir.path());
    let silent = Silent::start();
    let (mut child, _request) =
        stuck_in_its_llm_call(dir.path(), &silent, &["run", "--plan", plan.to_str().unwrap()], &[]);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = stdout_json(&run(dir.path(), &["list", "--format", "json"]));
    assert_eq!(left[0]["state"], "IN_PROGRESS");

    let worker = run(dir.path(), &["worker", "--exit-when-idle", "--without-model"]);
    assert_eq!(code(&worker), 0, "{}", stderr(&worker));
    assert_eq!(stdout_json(&worker)["runs"], 0);
}

#[test]
fn list_shows_one_end_users_workflows() {
    let dir = workdir();
    let plan = read_plan(dir.path(), "report.csv");
    let ids: Vec<String> = (0..2).map(|_| submit(dir.path(), &plan)).collect();
    let db = rusqlite::Connection::open(dir.path().join(".portia/portia.db")).unwrap();
    db.execute(
        "UPDATE workflows SET end_user_id = 'ann', \
         body = json_set(body, '$.execution_context.end_user_id', 'ann') WHERE id = ?1",
        [&ids[1]],
    )
    .unwrap();

    let anns = run(dir.path(), &["list", "--end-user", "ann", "--format", "json"]);
    assert_eq!(code(&anns), 0, "{}", stderr(&anns));
    let listed: Vec<Value> = stdout_json(&anns).as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["id"], ids[1].as_str());
    let nobodys = run(dir.path(), &["list", "--end-user", "bob", "--format", "json"]);
    assert_eq!(stdout_json(&nobodys), json!([]));
}
