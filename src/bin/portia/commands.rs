//! What each subcommand does.

use std::io::IsTerminal;
use std::time::Duration;

use portia::runner::{WorkerOptions, shutdown_signal};
use portia::storage::WorkflowQuery;
use portia::{Plan, Runner, Workflow, WorkflowId, WorkflowState};

use crate::cli::{Cli, Command, Format, PlanFormat, Source};
use crate::setup::{self, Setup};
use crate::{Exit, Failure, emit, graph, live, prompt, table};

/// Runs the command `cli` names.
pub(crate) async fn dispatch(cli: Cli) -> Result<Exit, Failure> {
    if matches!(cli.command, Command::Demo) {
        setup::logging(&portia::Config::default(), false);
        return demo().await;
    }
    let config = setup::config(&cli)?;
    setup::logging(&config, matches!(cli.command, Command::Worker { .. }));
    if matches!(cli.command, Command::Worker { without_model: false, .. }) && cli.cassette.is_none() {
        model_for_worker(&config)?;
    }
    let setup = setup::runner(&cli, config).await?;
    let exit = command(&setup, cli.command).await;
    // A recording is saved even when the run failed: it shows what happened.
    setup.finish()?;
    exit
}

async fn command(setup: &Setup, command: Command) -> Result<Exit, Failure> {
    let runner = &setup.runner;
    match command {
        Command::Plan { query, format } => {
            let plan = plan(setup, &query).await?;
            match format {
                PlanFormat::Json => print_json(&plan)?,
                PlanFormat::Mermaid => emit(graph::mermaid(&plan))?,
                PlanFormat::Dot => emit(graph::dot(&plan))?,
            }
            Ok(Exit::Ok)
        }
        Command::Run(source) => {
            let inputs = source.input_map()?;
            let plan = load_or_plan(setup, runner, &source).await?;
            // A plan written for this run is paid for by it; a given plan is not.
            let create = runner.create_workflow(&plan).inputs(inputs);
            let workflow =
                if source.query.is_some() { create.count_planning() } else { create }.await.map_err(given_wrongly)?;
            run(runner, &plan, workflow).await
        }
        Command::Submit(source) => {
            // Checked before planning, which would be paid for and then lost.
            refuse_memory_store(runner)?;
            let inputs = source.input_map()?;
            let plan = load_or_plan(setup, runner, &source).await?;
            let submit = runner.submit_plan(&plan).inputs(inputs);
            let id =
                if source.query.is_some() { submit.count_planning() } else { submit }.await.map_err(given_wrongly)?;
            emit(format_args!("{id}\n")).map_err(|e| e.naming(id))?;
            Ok(Exit::Ok)
        }
        Command::Resume { id } => {
            let workflow = runner.get_workflow(id).await?;
            let plan = runner.get_plan(workflow.plan_id()).await?;
            run(runner, &plan, workflow).await
        }
        Command::Retry { all_failed: true, .. } => retry_all_failed(runner).await,
        Command::Retry { id: None, .. } => {
            Err(Failure::usage("give the FAILED workflow's id, or --all-failed --submit"))
        }
        Command::Retry { id: Some(id), submit: true, .. } => {
            refuse_memory_store(runner)?;
            let retry = runner.submit_retry(id).await?;
            emit(format_args!("{}\n", retry.id())).map_err(|e| e.naming(retry.id()))?;
            if retry.state().is_terminal() {
                eprintln!(
                    "portia: workflow {id} was retried before as {} ({}), which has ended: it is not queued again",
                    retry.id(),
                    retry.state()
                );
            } else if retry.state() != WorkflowState::NotStarted {
                // Retried before, and that retry has run: a run that died left it to the workers.
                eprintln!(
                    "portia: workflow {id} was retried before as {} ({}); it is queued for the workers, who take it \
                     once no run holds it",
                    retry.id(),
                    retry.state()
                );
            }
            Ok(Exit::Ok)
        }
        Command::Retry { id: Some(id), submit: false, .. } => {
            let retry = runner.retry_workflow(id).await?;
            if retry.state().is_terminal() {
                // Retried before, and that retry has ended: it is the answer.
                print_json(&retry).map_err(|e| e.naming(retry.id()))?;
                return Ok(report(&retry));
            }
            let plan = runner.get_plan(retry.plan_id()).await?;
            run(runner, &plan, retry).await
        }
        Command::Answer { id, clarification_id, value } => {
            let workflow = runner.get_workflow(id).await?;
            let Some(clarification) = workflow.outputs().clarifications.iter().find(|c| c.id == clarification_id)
            else {
                return Err(Failure::new(format!("workflow {id} has no clarification {clarification_id}")));
            };
            let workflow = runner.resolve_clarification(clarification, prompt::parse_value(&value)).await?;
            print_json(&workflow)?;
            if workflow.state() == WorkflowState::ReadyToResume {
                eprintln!("portia: every clarification is answered; run it on with `portia resume {id}`");
            }
            Ok(Exit::Ok)
        }
        Command::Cancel { id, reason } => {
            let workflow = runner.cancel_workflow(id, &reason).await?;
            let workflow = if workflow.state().is_terminal() { workflow } else { acknowledged(runner, id).await? };
            print_json(&workflow)?;
            if !workflow.state().is_terminal() {
                eprintln!(
                    "portia: workflow {id} is still {}: the run in another process was asked to stop, and stops at its next step",
                    workflow.state()
                );
            }
            Ok(Exit::Ok)
        }
        Command::List { state, end_user, format } => list(runner, state, end_user, format).await,
        Command::Delete { id, force } => {
            // An unreadable row is still deleted; only one that is not there is an error.
            if let Err(e @ portia::Error::WorkflowNotFound(_)) = runner.get_workflow(id).await {
                return Err(e.into());
            }
            if !force {
                refuse_if_running(runner, id).await?;
            }
            runner.delete_workflow(id).await?;
            eprintln!("portia: deleted workflow {id}");
            Ok(Exit::Ok)
        }
        Command::Show { id, format } => {
            let _ = say_if_set_aside(runner, id).await;
            let workflow = runner.get_workflow(id).await?;
            match format {
                Format::Json => print_json(&workflow)?,
                Format::Table => {
                    let plan = runner.get_plan(workflow.plan_id()).await?;
                    emit(table::workflow(&plan, &workflow))?;
                }
            }
            Ok(Exit::Ok)
        }
        Command::Watch { id } => watch(runner, id).await,
        Command::PutBack { id, all } => put_back(runner, id.filter(|_| !all)).await,
        Command::Prune { older_than } => {
            let pruned = runner.prune_finished(older_than).await?;
            emit(format_args!("{pruned}\n"))?;
            eprintln!("portia: deleted {pruned} finished workflow(s)");
            Ok(Exit::Ok)
        }
        Command::Tools { format } => {
            let available = &setup.plan_tools;
            match format {
                Format::Json => print_json(&table::tools_json(runner.tools().as_ref(), available))?,
                Format::Table => emit(table::tools(runner.tools().as_ref(), available))?,
            }
            Ok(Exit::Ok)
        }
        Command::Worker { concurrency, exit_when_idle, grace, without_model: _ } => {
            let options = WorkerOptions::new().concurrency(concurrency).shutdown_grace(Duration::from_secs(grace));
            let worker = runner.worker(options);
            let report = if exit_when_idle {
                // Idle or asked to stop, whichever comes first: both shut down gracefully.
                worker
                    .run_until(async {
                        tokio::select! { () = idle(runner.clone()) => {}, () = shutdown_signal() => {} }
                    })
                    .await
            } else {
                worker.run().await
            };
            print_json(&report)?;
            Ok(if report.errors > 0 || report.stopped_on.is_some() { Exit::Failed } else { Exit::Ok })
        }
        Command::Demo => demo().await,
        #[cfg(feature = "mcp")]
        Command::Mcp => {
            portia::tools::mcp::serve_stdio(std::sync::Arc::new(runner.clone())).await?;
            Ok(Exit::Ok)
        }
        #[cfg(feature = "server")]
        Command::Serve { listen, workers, grace } => serve(setup, listen, workers, Duration::from_secs(grace)).await,
    }
}

/// The workflow once the run in another process has seen its cancellation (it does
/// when it next renews its lease), or as stored when that takes longer than a lease.
async fn acknowledged(runner: &Runner, id: WorkflowId) -> Result<Workflow, Failure> {
    match runner.wait_for_completion(id, runner.config().lease_ttl()).await {
        Err(portia::Error::WaitTimedOut { .. }) => Ok(runner.get_workflow(id).await?),
        waited => Ok(waited?),
    }
}

/// Serves the runner over HTTP until SIGTERM or ctrl-c.
#[cfg(feature = "server")]
async fn serve(setup: &Setup, listen: std::net::SocketAddr, workers: usize, grace: Duration) -> Result<Exit, Failure> {
    use portia::runner::serve::{ServeOptions, Server};
    let options = ServeOptions::from_config(setup.runner.config())?
        .workers(workers)
        .shutdown_grace(grace)
        .plan_tools(setup.plan_tools.clone());
    let server = Server::bind(setup.runner.clone(), listen, options).await?;
    eprintln!("portia: serving on http://{}", server.local_addr()?);
    server.run().await?;
    Ok(Exit::Ok)
}

/// Refuses to delete workflow `id` while a run holds it, as `DELETE
/// /v1/workflows/{id}` does: deleted under it, the run would fail at its next save.
async fn refuse_if_running(runner: &Runner, id: portia::WorkflowId) -> Result<(), Failure> {
    match runner.storage().lease_holder(id).await {
        Ok(Some(holder)) => {
            let running = portia::Error::AlreadyRunning { workflow_id: id, owner: holder.owner, until: holder.until };
            Err(Failure::new(format!("{running}; `portia delete --force` deletes it all the same")))
        }
        // A row that cannot be read has no run to hold it.
        Ok(None) | Err(portia::Error::Unreadable { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `error`, a usage error when it says the `--input`s do not fit the plan.
fn given_wrongly(error: portia::Error) -> Failure {
    match error {
        portia::Error::PlanInputs { .. } => Failure::usage(error.to_string()),
        other => other.into(),
    }
}

/// Refuses to queue a workflow in the memory store, where no worker would see it.
fn refuse_memory_store(runner: &Runner) -> Result<(), Failure> {
    if runner.config().storage != portia::config::StorageKind::Memory {
        return Ok(());
    }
    Err(Failure::new(
        "a submitted workflow waits in the store for a worker, and the memory store ends with this process: \
         set PORTIA_STORAGE to sqlite (the default) or postgres",
    ))
}

/// How long a watch goes without an event before it looks again at whether anything
/// is running the workflow.
const WATCH_QUIET: Duration = Duration::from_secs(10);

/// Prints each of a workflow's events as a JSON line until it rests, then exits as
/// its state says. When nothing is running the workflow (at the start, or after a
/// quiet spell: its run died, say), it says so on stderr, once until events come
/// again, and goes on watching.
async fn watch(runner: &Runner, id: WorkflowId) -> Result<Exit, Failure> {
    let mut events = runner.watch(id);
    let mut said = say_if_unrun(runner, id, false).await;
    loop {
        let next = events.next();
        tokio::pin!(next);
        let event = loop {
            tokio::select! {
                event = &mut next => break event,
                () = tokio::time::sleep(WATCH_QUIET) => said = say_if_unrun(runner, id, said).await,
            }
        };
        let Some(event) = event else { break };
        said = false;
        emit(format_args!("{}\n", serde_json::to_string(&event?).unwrap_or_default()))?;
    }
    Ok(report(&runner.get_workflow(id).await?))
}

/// Says on stderr that no run holds workflow `id` although it is yet to finish,
/// unless `said` already; returns whether that is the case. A store that cannot
/// tell just now changes nothing: the watch itself reports a store that fails.
async fn say_if_unrun(runner: &Runner, id: WorkflowId, said: bool) -> bool {
    let Ok(workflow) = runner.get_workflow(id).await else { return said };
    let state = workflow.state();
    match runner.storage().lease_holder(id).await {
        Ok(None) if state.is_runnable() => {}
        Ok(_) => return false,
        Err(_) => return said,
    }
    if !said && !say_if_set_aside(runner, id).await {
        eprintln!(
            "portia: nothing is running workflow {id} ({state}): a worker takes it on if it is queued, \
             else `portia resume {id}` runs it; still watching"
        );
    }
    true
}

/// Says on stderr why workflow `id` is set aside, if it is, and what to do; whether
/// it said so. Silent when the store cannot say (the command meets that error itself).
async fn say_if_set_aside(runner: &Runner, id: WorkflowId) -> bool {
    let Ok(aside) = runner.storage().set_aside_workflows().await else { return false };
    let Some(entry) = aside.iter().find(|entry| entry.workflow_id == id.to_string()) else { return false };
    eprintln!(
        "portia: workflow {id} is set aside, and no worker takes it: {}; fix or restore what it names, then \
         `portia put-back {id}` for the workers or `portia resume {id}` to run it here, or `portia delete {id}`",
        entry.reason
    );
    true
}

/// Plans `query`, offering the tools that work with the settings, with a spinner on a terminal.
async fn plan(setup: &Setup, query: &str) -> Result<Plan, Failure> {
    let planning = live::Planning::start(std::io::stderr().is_terminal());
    let plan = setup.runner.generate_plan(query).tools(setup.plan_tools.clone()).await;
    planning.finish(plan.as_ref().ok());
    Ok(plan?)
}

async fn load_or_plan(setup: &Setup, runner: &Runner, source: &Source) -> Result<Plan, Failure> {
    if let Some(id) = source.plan_id {
        return Ok(runner.get_plan(id).await?);
    }
    match (&source.plan, &source.query) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
            Plan::from_json(&text).map_err(|e| Failure::new(format!("{}: {e}", path.display())))
        }
        (None, Some(query)) => plan(setup, query).await,
        (None, None) => Err(Failure::usage("give a query, --plan FILE or --plan-id ID")),
    }
}

/// Runs `workflow` to rest, asking its questions on the terminal when there is one,
/// prints it, and says how it ended. SIGTERM or ctrl-c stops the run as a worker's
/// shutdown does, leaving the workflow to `portia resume`.
async fn run(runner: &Runner, plan: &Plan, workflow: Workflow) -> Result<Exit, Failure> {
    let id = workflow.id();
    let running = run_to_rest(runner, plan, workflow);
    tokio::pin!(running);
    let workflow = tokio::select! {
        workflow = &mut running => workflow?,
        () = shutdown_signal() => {
            // A run in progress ends promptly once interrupted; a question being asked
            // on the terminal is simply dropped.
            if runner.interrupt(id) {
                let _stopped = running.await;
            }
            let workflow = runner.get_workflow(id).await?;
            print_json(&workflow).map_err(|e| e.naming(id))?;
            eprintln!(
                "portia: stopped workflow {id} ({}); resume it with `portia resume {id}`: no finished tool call is repeated",
                workflow.state()
            );
            return Ok(Exit::Interrupted);
        }
    };
    print_json(&workflow).map_err(|e| e.naming(id))?;
    Ok(report(&workflow))
}

async fn run_to_rest(runner: &Runner, plan: &Plan, mut workflow: Workflow) -> Result<Workflow, Failure> {
    let interactive = std::io::stdin().is_terminal();
    loop {
        workflow = live::execute(runner, plan, workflow, std::io::stderr().is_terminal()).await?;
        if workflow.state() != WorkflowState::NeedClarification || !interactive {
            break;
        }
        if !prompt::ask_all(runner, &workflow).await? {
            break; // stdin ended: leave the rest for `portia answer`.
        }
        workflow = runner.get_workflow(workflow.id()).await?;
    }
    Ok(workflow)
}

/// The exit code of a workflow at rest, with its one line on stderr.
fn report(workflow: &Workflow) -> Exit {
    let id = workflow.id();
    match workflow.state() {
        WorkflowState::Complete => Exit::Ok,
        WorkflowState::Failed => {
            let (kind, message) = workflow.failure().map_or_else(
                || ("FAILED".to_owned(), String::new()),
                |f| {
                    (
                        serde_json::to_value(f.kind)
                            .ok()
                            .and_then(|k| k.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        f.message.clone(),
                    )
                },
            );
            eprintln!("portia: workflow {id} failed ({kind}): {message}");
            Exit::Failed
        }
        WorkflowState::NeedClarification => {
            let open: Vec<_> = workflow.outstanding_clarifications().collect();
            eprintln!(
                "portia: workflow {id} is waiting for {} clarification(s); answer with `portia answer {id} CLARIFICATION_ID VALUE`, then `portia resume {id}`",
                open.len()
            );
            for clarification in open {
                eprintln!("  {}", prompt::describe(clarification));
            }
            Exit::Waiting
        }
        state => {
            eprintln!("portia: workflow {id} is {state}");
            Exit::Ok
        }
    }
}

/// Queues a retry of every FAILED workflow not retried yet, printing each retry's
/// id. They are all listed first, so that a retry that fails meanwhile is not
/// retried in the same go. A sub-plan's run is retried with its parent. One that
/// cannot be retried is said, and the others are retried all the same.
async fn retry_all_failed(runner: &Runner) -> Result<Exit, Failure> {
    refuse_memory_store(runner)?;
    let (failed, unreadable) = every_page(runner, WorkflowQuery::in_state(WorkflowState::Failed)).await?;
    let (mut queued, mut before, mut requeued, mut children, mut refused) = (0, 0, 0, 0, unreadable.len());
    for row in &unreadable {
        eprintln!("portia: unreadable, not retried: {row}");
    }
    for workflow in failed {
        if workflow.parent().is_some() {
            children += 1;
            continue;
        }
        let id = workflow.id();
        let retried = match runner.get_workflow(workflow.retry_id()).await {
            // Retried before: one made to run elsewhere, not finished, goes to the workers too.
            Ok(retry) => runner.storage().queue(retry.id()).await.map(|now| Retried::Before(now.then_some(retry))),
            Err(portia::Error::WorkflowNotFound(_)) => runner.submit_retry(id).await.map(Retried::Now),
            Err(e) => Err(e),
        };
        let printed = match retried {
            Ok(Retried::Now(retry)) => {
                queued += 1;
                Some(retry)
            }
            Ok(Retried::Before(requeued_now)) => {
                before += 1;
                requeued += usize::from(requeued_now.is_some());
                requeued_now
            }
            Err(e) => {
                eprintln!("portia: cannot retry workflow {id}: {}", Failure::from(e).line);
                refused += 1;
                None
            }
        };
        if let Some(retry) = printed {
            emit(format_args!("{}\n", retry.id())).map_err(|e| e.naming(retry.id()))?;
        }
    }
    eprintln!(
        "portia: retries queued: {queued}; FAILED workflows retried before: {before} (their retries queued \
         now, made to run elsewhere and not finished: {requeued}); sub-plan runs left to their parents' retries: \
         {children}; not retried: {refused}"
    );
    Ok(if refused == 0 { Exit::Ok } else { Exit::Failed })
}

/// What `retry --all-failed` did with one FAILED workflow.
enum Retried {
    /// Its retry, made and queued now.
    Now(Workflow),
    /// It was retried before; its retry if it was queued now.
    Before(Option<Workflow>),
}

/// Puts workflow `id` back, or every workflow set aside for `None`, printing the ids
/// put back and saying who runs each.
async fn put_back(runner: &Runner, id: Option<WorkflowId>) -> Result<Exit, Failure> {
    let aside = runner.storage().set_aside_workflows().await?;
    let wanted: Vec<_> = match id {
        Some(id) => aside.into_iter().filter(|entry| entry.workflow_id == id.to_string()).collect(),
        None => aside,
    };
    if let (Some(id), true) = (id, wanted.is_empty()) {
        return Err(Failure::new(format!("workflow {id} is not set aside (`portia list` shows those that are)")));
    }
    let mut exit = Exit::Ok;
    for entry in wanted {
        let Ok(id) = entry.workflow_id.parse::<WorkflowId>() else {
            eprintln!("portia: {} is no workflow id: fix or `portia delete` that row", entry.workflow_id);
            exit = Exit::Failed;
            continue;
        };
        match runner.put_back(id).await {
            Ok(true) => {
                emit(format_args!("{id}\n"))?;
                if !entry.queued {
                    eprintln!("portia: workflow {id} was not queued: `portia resume {id}` runs it");
                }
            }
            // Put back, or deleted, since the list was read.
            Ok(false) | Err(portia::Error::WorkflowNotFound(_)) => {}
            Err(e @ portia::Error::Unreadable { .. }) => {
                eprintln!("portia: workflow {id} stays set aside: {}", Failure::from(e).line);
                exit = Exit::Failed;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(exit)
}

/// Every workflow `query` matches, page after page, and the rows that cannot be read.
async fn every_page(runner: &Runner, query: WorkflowQuery) -> Result<(Vec<Workflow>, Vec<String>), Failure> {
    let (mut workflows, mut unreadable) = (Vec::new(), Vec::new());
    let mut page_number = 1;
    loop {
        let page = runner.list_workflows(&query.clone().page(page_number)).await?;
        workflows.extend(page.results);
        unreadable.extend(page.unreadable);
        if page.current_page >= page.total_pages {
            return Ok((workflows, unreadable));
        }
        page_number += 1;
    }
}

async fn list(
    runner: &Runner,
    state: Option<WorkflowState>,
    end_user: Option<String>,
    format: Format,
) -> Result<Exit, Failure> {
    let (workflows, unreadable) = every_page(runner, WorkflowQuery::default().state(state).end_user(end_user)).await?;
    let aside = runner.storage().set_aside_workflows().await?;
    match format {
        Format::Json => {
            print_json(&workflows)?;
            // The JSON stays a list of workflows; what is not in one is said apart.
            for workflow in &workflows {
                let id = workflow.id().to_string();
                if let Some(entry) = aside.iter().find(|entry| entry.workflow_id == id) {
                    eprintln!("portia: set aside: {id}: {}", entry.reason);
                }
            }
            for row in &unreadable {
                let mark = if table::is_set_aside(row, &aside) { " (set aside)" } else { "" };
                eprintln!("portia: unreadable{mark}: {row}");
            }
        }
        Format::Table => {
            let mut rows = Vec::new();
            for workflow in &workflows {
                let query = runner.get_plan(workflow.plan_id()).await.map(|p| p.plan_context.query).unwrap_or_default();
                rows.push((workflow, query));
            }
            emit(table::workflows(&rows, &aside, &unreadable))?;
        }
    }
    Ok(Exit::Ok)
}

/// Refuses to start a worker that has no key for the model: each workflow it took
/// would FAIL for want of it, and a FAILED workflow cannot be resumed once the key is
/// set. Left queued, the workflows wait for a worker that has one.
fn model_for_worker(config: &portia::Config) -> Result<(), Failure> {
    config.llm_client().map(drop).map_err(|e| {
        Failure::new(format!(
            "{e}; a worker without it would fail every workflow that calls the model (pass --without-model \
             for a queue of plans that need none)"
        ))
    })
}

/// Completes once no queued workflow is left for a worker to run: none waiting,
/// running, or left by a run that died. A store error counts as work left, so that a
/// worker never takes an outage for idleness.
async fn idle(runner: Runner) {
    while runner.storage().has_queued_work().await.unwrap_or(true) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The seed scenario replayed from the shipped cassette: the plan, then the workflow.
async fn demo() -> Result<Exit, Failure> {
    // The recording's own settings, whatever the environment says: the replay must match it.
    let (runner, replayer) = portia::testing::demo::runner(portia::Config::default())?;
    eprintln!(
        "portia demo: {QUERY:?}, replayed from a recording made on {} against portia's simulated OpenAI and Tavily APIs; no key and no network are used",
        replayer.today().unwrap_or_default(),
        QUERY = portia::testing::demo::QUERY
    );
    let tools = replayer.cassette().tool_ids.clone();
    let terminal = std::io::stderr().is_terminal();
    let planning = live::Planning::start(terminal);
    let plan = runner.generate_plan(portia::testing::demo::QUERY).tools(tools).await;
    planning.finish(plan.as_ref().ok());
    let plan = plan?;
    print_json(&plan)?;
    let workflow = runner.create_workflow(&plan).count_planning().await?;
    let workflow = live::execute(&runner, &plan, workflow, terminal).await?;
    print_json(&workflow)?;
    Ok(report(&workflow))
}

fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    emit(format_args!("{text}\n"))
}
