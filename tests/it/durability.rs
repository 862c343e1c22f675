//! Durability: a workflow survives `kill -9` at any point. Each test runs the
//! workflow in a child process (this test binary, re-run as `durability::crash_child`),
//! kills it with SIGKILL at an injected point, and resumes it here, counting the
//! effects each tool had (appended to a file, so the killed process's effects count
//! too).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use portia::clarification::ClarificationKind;
use portia::storage::{LeaseQueue, ManualClock, SqliteStorage, Storage};
use portia::testing::ScriptedLlm;
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, Workflow, WorkflowId, WorkflowState};
use serde_json::{Value, json};

use crate::common;

/// The child process's test, by its path in this test binary.
const CRASH_CHILD: &str = "durability::crash_child";
const MARKER: &str = "CRASH-POINT";

/// A tool whose every call is an effect, appended (and synced) to a file as
/// `task idempotency-key`. It can stop the process dead before or after its effect.
#[derive(Debug)]
struct EffectTool {
    effects: PathBuf,
    idempotent: bool,
    hang: Option<&'static str>,
}

#[async_trait::async_trait]
impl Tool for EffectTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("effect_tool", "Effect Tool", "Does something that must happen once.")
            .args_schema(json!({"type": "object", "properties": {"what": {"type": "string"}}, "required": ["what"]}))
            .idempotent(self.idempotent)
            .side_effects(true)
    }

    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        let what = args["what"].as_str().unwrap_or_default().to_owned();
        if self.hang == Some("after_intent") && what == "charge" {
            common::print_marker_and_wait(MARKER);
        }
        let key = ctx.idempotency_key.clone().unwrap_or_default();
        append_line(&self.effects, &format!("{what} {key}"));
        if self.hang == Some("after_effect") && what == "charge" {
            common::print_marker_and_wait(MARKER);
        }
        Ok(ToolOutput::value(json!({"done": what})))
    }
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    writeln!(file, "{line}").unwrap();
    file.sync_all().unwrap();
}

fn effects(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

fn count(effects: &[String], what: &str) -> usize {
    effects.iter().filter(|line| line.starts_with(&format!("{what} "))).count()
}

fn config() -> Config {
    Config::builder().summarize_final_output(false).build().unwrap()
}

/// The model's replies for a whole run: it picks each step's arguments. With
/// `hang_on_receipt`, the second step's choice never comes back.
fn llm(charge: bool, receipt: bool, hang_on_receipt: bool) -> ScriptedLlm {
    let mut llm = ScriptedLlm::new();
    if charge {
        llm = llm.tool_call("effect_tool", json!({"what": "charge"}));
    }
    if hang_on_receipt {
        llm = llm.respond_with(|_| common::print_marker_and_wait(MARKER));
    } else if receipt {
        llm = llm.tool_call("effect_tool", json!({"what": "receipt"}));
    }
    llm
}

fn runner(storage: Arc<dyn Storage>, tool: EffectTool, llm: ScriptedLlm) -> Runner {
    let tools = InMemoryToolRegistry::new().with(tool).unwrap();
    Runner::builder(config()).tools(tools).llm(Arc::new(llm)).storage(storage).build().unwrap()
}

struct Scenario {
    _dir: tempfile::TempDir,
    db: PathBuf,
    effects: PathBuf,
    id: WorkflowId,
}

/// A stored, not yet started workflow: charge, then send a receipt.
async fn scenario() -> Scenario {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portia.db");
    let effects = dir.path().join("effects.txt");
    let storage = Arc::new(SqliteStorage::open(&db).unwrap());
    let tool = EffectTool { effects: effects.clone(), idempotent: false, hang: None };
    let plan = PlanBuilder::new("Charge the card, then send the receipt")
        .step("Charge the card", Some("effect_tool"), "$charge")
        .step("Send the receipt", Some("effect_tool"), "$receipt")
        .input("$charge", "the charge")
        .build();
    let workflow = runner(storage, tool, ScriptedLlm::new()).create_workflow(&plan).await.unwrap();
    Scenario { _dir: dir, db, effects, id: workflow.id() }
}

fn spawn_child(s: &Scenario, point: &str, idempotent: bool) -> common::ChildGuard {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([CRASH_CHILD, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
        .env("CRASH_DB", &s.db)
        .env("CRASH_EFFECTS", &s.effects)
        .env("CRASH_WORKFLOW", s.id.to_string())
        .env("CRASH_POINT", point)
        .env("CRASH_IDEMPOTENT", if idempotent { "1" } else { "0" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::ChildGuard(child)
}

/// Reads the child's stdout until it reports `wanted`, and returns that line.
fn wait_for_line(child: &mut Child, wanted: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.starts_with(wanted) {
            return line;
        }
    }
    panic!("the child ended without printing {wanted}");
}

/// Runs the child until it reaches `point`, then kills it with SIGKILL.
fn kill_at(s: &Scenario, point: &str, idempotent: bool) {
    let mut child = spawn_child(s, point, idempotent);
    wait_for_line(&mut child, MARKER);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
}

/// A store on the same file whose clock is past the dead child's lease.
fn store_after_lease_expiry(s: &Scenario) -> Arc<dyn Storage> {
    let clock = ManualClock::new(chrono::Utc::now() + chrono::Duration::hours(1));
    Arc::new(SqliteStorage::open_with_clock(&s.db, Arc::new(clock)).unwrap())
}

/// The child process: runs the workflow and hangs where it is told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by the crash tests"]
async fn crash_child() {
    // Run by the harness (`--include-ignored`), not by `spawn_child`: nothing to do.
    if std::env::var_os("CRASH_DB").is_none() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap();
    let point: &'static str = Box::leak(var("CRASH_POINT").into_boxed_str());
    let sqlite = Arc::new(SqliteStorage::open(var("CRASH_DB")).unwrap());
    // "mid_save": the parent is told as the save that records the charge begins, and
    // kills this process while that save is under way (or just before or after it).
    let hook = (point == "mid_save").then(|| {
        Box::new(|workflow: &Workflow| {
            if workflow.outputs().step_outputs.contains("$charge") {
                println!("{MARKER}");
            }
        }) as Box<dyn Fn(&Workflow) + Send + Sync>
    });
    let storage = Arc::new(common::RecordingStorage::wrapping(sqlite, hook));
    let hang = matches!(point, "after_intent" | "after_effect").then_some(point);
    let tool = EffectTool { effects: var("CRASH_EFFECTS").into(), idempotent: var("CRASH_IDEMPOTENT") == "1", hang };
    let llm = llm(true, true, matches!(point, "between_steps" | "mid_save"));
    let runner = runner(storage, tool, llm);
    let id: WorkflowId = var("CRASH_WORKFLOW").parse().unwrap();
    match runner.execute_workflow_by_id(id).await {
        Ok(workflow) => println!("RESULT {}", workflow.state()),
        Err(e) => println!("RESULT error {e}"),
    }
}

#[tokio::test]
async fn killed_after_the_intent_asks_a_person_and_retry_runs_the_call_once() {
    let s = scenario().await;
    kill_at(&s, "after_intent", false);
    assert!(effects(&s.effects).is_empty());

    let storage = store_after_lease_expiry(&s);
    let tool = || EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let paused = runner(storage.clone(), tool(), llm(false, false, false)).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(paused.state(), WorkflowState::NeedClarification);
    let question = paused.outstanding_clarifications().next().unwrap().clone();
    let ClarificationKind::ToolCallOutcome { tool_id, arguments, .. } = &question.kind else {
        panic!("expected a tool-call outcome question, got {question:?}");
    };
    assert_eq!((tool_id.as_str(), arguments), ("effect_tool", &json!({"what": "charge"})));

    // The journaled arguments are used: no model call for the charge.
    let resumed = runner(storage, tool(), llm(false, true, false));
    resumed.resolve_clarification(&question, "retry").await.unwrap();
    let done = resumed.execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
}

#[tokio::test]
async fn killed_after_the_effect_takes_the_persons_word_and_never_repeats_it() {
    let s = scenario().await;
    kill_at(&s, "after_effect", false);
    assert_eq!(count(&effects(&s.effects), "charge"), 1);

    let storage = store_after_lease_expiry(&s);
    let tool = || EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let paused = runner(storage.clone(), tool(), llm(false, false, false)).execute_workflow_by_id(s.id).await.unwrap();
    let question = paused.outstanding_clarifications().next().unwrap().clone();

    let resumed = runner(storage.clone(), tool(), llm(false, true, false));
    resumed.resolve_clarification(&question, json!({"result": {"charged": 5}})).await.unwrap();
    let done = resumed.execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$charge").unwrap().value, json!({"charged": 5}));
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
    // The dead process's model call still counts.
    assert_eq!(done.usage().steps["$charge"].llm_calls, 1);
    assert_eq!(done.usage().total.llm_calls, 2);
}

#[tokio::test]
async fn an_idempotent_call_with_unknown_outcome_runs_again_with_the_same_key() {
    let s = scenario().await;
    kill_at(&s, "after_effect", true);

    let storage = store_after_lease_expiry(&s);
    let tool = EffectTool { effects: s.effects.clone(), idempotent: true, hang: None };
    let done = runner(storage, tool, llm(false, true, false)).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let effects = effects(&s.effects);
    let charges: Vec<_> = effects.iter().filter(|l| l.starts_with("charge ")).collect();
    assert_eq!(charges.len(), 2, "{effects:?}");
    assert_eq!(charges[0], charges[1], "both tries carry one idempotency key");
    assert!(charges[0].contains(&s.id.to_string()));
}

#[tokio::test]
async fn killed_between_steps_resumes_without_repeating_the_finished_step() {
    let s = scenario().await;
    kill_at(&s, "between_steps", false);
    assert_eq!(count(&effects(&s.effects), "charge"), 1);

    let storage = store_after_lease_expiry(&s);
    let tool = EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let done = runner(storage.clone(), tool, llm(false, true, false)).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
    let calls = storage.tool_calls(s.id).await.unwrap();
    assert_eq!(calls.len(), 2, "one journaled call per step: {calls:?}");
}

/// After `kill -9`, a resume on the same host does not wait for the dead run's lease
/// to expire: its holder's process is gone, so the lease is taken over at once.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_resume_on_the_same_host_takes_over_from_a_killed_run_at_once() {
    let s = scenario().await;
    kill_at(&s, "between_steps", false);

    // The store's own clock: the dead run's lease has not expired.
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&s.db).unwrap());
    let grant = storage.acquire_lease(s.id, "probe", Duration::from_secs(1)).await.unwrap();
    assert!(grant.reclaimed, "the dead run's lease was taken over, not found released");
    assert!(grant.lease.expires_at > chrono::Utc::now());
    storage.release_lease(&grant.lease).await.unwrap();

    let tool = EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let done = runner(storage, tool, llm(false, true, false)).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
}

/// A live run's lease is still respected: only a holder that is gone is taken over.
#[tokio::test]
async fn a_live_runs_lease_is_not_taken_over() {
    let s = scenario().await;
    let storage: Arc<dyn Storage> = Arc::new(SqliteStorage::open(&s.db).unwrap());
    let owner = portia::storage::local_owner("this-test");
    storage.acquire_lease(s.id, &owner, Duration::from_secs(60)).await.unwrap();
    let err = storage.acquire_lease(s.id, "another", Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(&err, portia::Error::AlreadyRunning { owner: holder, .. } if *holder == owner), "{err}");
}

#[tokio::test]
async fn killed_in_the_middle_of_a_save_loses_nothing_and_repeats_nothing() {
    let s = scenario().await;
    kill_at(&s, "mid_save", false);
    assert_eq!(count(&effects(&s.effects), "charge"), 1);

    // Whether or not the save committed, the journal holds the charge's outcome.
    let storage = store_after_lease_expiry(&s);
    let tool = EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let done = runner(storage, tool, llm(false, true, false)).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(done.state(), WorkflowState::Complete);
    assert_eq!(done.outputs().step_outputs.get("$charge").unwrap().value, json!({"done": "charge"}));
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
}

#[tokio::test]
async fn two_processes_resuming_one_workflow_run_it_once() {
    let s = scenario().await;
    let mut first = spawn_child(&s, "none", false);
    let mut second = spawn_child(&s, "none", false);
    let results = [wait_for_line(&mut first, "RESULT"), wait_for_line(&mut second, "RESULT")];
    first.wait().unwrap();
    second.wait().unwrap();
    let completed = results.iter().filter(|r| r.as_str() == "RESULT COMPLETE").count();
    assert_eq!(completed, 1, "{results:?}");
    let refused = results.iter().filter(|r| r.contains("is being run by") || r.contains("while it is COMPLETE"));
    assert_eq!(refused.count(), 1, "the other run is refused with a typed error: {results:?}");
    let effects = effects(&s.effects);
    assert_eq!((count(&effects, "charge"), count(&effects, "receipt")), (1, 1), "{effects:?}");
}

#[tokio::test]
async fn a_workflow_whose_runs_keep_dying_fails_after_the_attempt_limit() {
    let s = scenario().await;
    let storage = store_after_lease_expiry(&s);
    let owner = "a run that dies";
    // Each acquisition that is never released is a run that died.
    let clock = ManualClock::new(chrono::Utc::now());
    let dying = Arc::new(SqliteStorage::open_with_clock(&s.db, Arc::new(clock.clone())).unwrap());
    for _ in 0..=config().max_run_attempts {
        dying.acquire_lease(s.id, owner, Duration::from_secs(1)).await.unwrap();
        clock.advance(Duration::from_secs(2));
    }
    let tool = EffectTool { effects: s.effects.clone(), idempotent: false, hang: None };
    let failed = runner(storage, tool, ScriptedLlm::new()).execute_workflow_by_id(s.id).await.unwrap();
    assert_eq!(failed.state(), WorkflowState::Failed);
    let failure = failed.failure().unwrap();
    assert_eq!(failure.kind, portia::workflow::FailureKind::AttemptsExhausted);
    assert!(failure.message.contains("PORTIA_MAX_RUN_ATTEMPTS"), "{}", failure.message);
    assert!(effects(&s.effects).is_empty());
}
