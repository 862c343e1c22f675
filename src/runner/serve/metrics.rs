//! `GET /metrics`: Prometheus text, derived from the store, so that it counts every
//! process's runs: workflows by state, LLM calls, tokens and cost by model, and step,
//! tool-call and LLM-call latencies.
//!
//! The LLM figures agree with the workflows' own usage: the calls of their runs,
//! from their stored events, and the planning calls of the workflows that paid for
//! their plan (one written for them), which come with no event as the plan is made
//! before its workflow. Those are put down to this server's planning model and
//! priced as the workflow priced them; having no recorded latency, they are not in
//! the latency histogram.
//!
//! A workflow's figures are read from its stored events once per version and kept:
//! a scrape reads again only the workflows that changed since the last. The counters
//! and histograms never fall while the server runs: what a workflow spent, as last
//! scraped, stays counted after it is deleted (Prometheus would read a fall as a
//! restart, and count every remaining call again), and a workflow whose row cannot
//! be read for a while counts as last read.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::auth::Caller;
use super::errors::ApiError;
use super::router::AppState;
use crate::events::EventKind;
use crate::ids::WorkflowId;
use crate::workflow::{Workflow, WorkflowState, WorkflowUsage};

/// Histogram bounds, in seconds.
const BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// What the scrapes so far have read, which the next one starts from. Scrapes take
/// turns: one that read the store before a workflow was made must not take it for
/// deleted when another scrape has seen it since.
pub(super) type MetricsCache = Arc<tokio::sync::Mutex<Scraped>>;

/// What each workflow contributed at the version last read, and what the workflows
/// deleted since had contributed.
#[derive(Debug, Default)]
pub(super) struct Scraped {
    workflows: HashMap<WorkflowId, Read>,
    /// By end user, as a caller bound to one sees only theirs.
    deleted: HashMap<Option<String>, Figures>,
}

/// One workflow's figures at one version.
#[derive(Debug, Clone)]
struct Read {
    version: u64,
    end_user: Option<String>,
    figures: Figures,
}

impl Scraped {
    /// The figures of `workflow`, if read at its version.
    fn figures(&self, workflow: &Workflow) -> Option<Figures> {
        let read = self.workflows.get(&workflow.id())?;
        (read.version == workflow.version()).then(|| read.figures.clone())
    }

    /// The workflows `caller` would have seen that an earlier scrape read and this
    /// one did not (`read`): deleted since, or missed (a row that cannot be read
    /// now, or one a page of the listing skipped as others were deleted).
    fn missing(&self, caller: &Caller, read: &HashMap<WorkflowId, Read>) -> Vec<WorkflowId> {
        let seen = |(id, old): (&WorkflowId, &Read)| caller.sees(old.end_user.as_deref()) && !read.contains_key(id);
        self.workflows.iter().filter(|entry| seen(*entry)).map(|(id, _)| *id).collect()
    }

    /// What workflow `id` contributed when last read.
    fn last_read(&self, id: WorkflowId) -> Option<&Figures> {
        self.workflows.get(&id).map(|read| &read.figures)
    }

    /// Moves what workflow `id`, deleted, contributed to the deleted workflows' figures.
    fn retire(&mut self, id: WorkflowId) {
        if let Some(old) = self.workflows.remove(&id) {
            self.deleted.entry(old.end_user).or_default().add(&old.figures);
        }
    }

    /// What the workflows `caller` would have seen had contributed before they were deleted.
    fn deleted_seen_by<'a>(&'a self, caller: &'a Caller) -> impl Iterator<Item = &'a Figures> {
        self.deleted.iter().filter(|(end_user, _)| caller.sees(end_user.as_deref())).map(|(_, figures)| figures)
    }
}

/// A latency histogram.
#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// LLM spending on one model.
#[derive(Debug, Clone, Default)]
struct ModelFigures {
    calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    cost_usd: f64,
    latency: Histogram,
}

impl ModelFigures {
    /// Counts `calls` calls that used `usage` and cost `cost_usd`.
    fn spend(&mut self, calls: u64, usage: &crate::usage::Usage, cost_usd: f64) {
        self.calls += calls;
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.cache_read_tokens += usage.cache_read_tokens;
        self.cache_write_tokens += usage.cache_write_tokens;
        self.cost_usd += cost_usd;
    }
}

/// The figures of one workflow, or of many added up.
#[derive(Debug, Clone, Default)]
pub(super) struct Figures {
    models: BTreeMap<String, ModelFigures>,
    tools: BTreeMap<String, Histogram>,
    steps: Histogram,
}

impl Figures {
    /// A workflow's figures: from its stored events, and its planning calls when it paid for them.
    async fn of(state: &AppState, workflow: &Workflow) -> crate::Result<Self> {
        let id = workflow.id();
        let mut figures = Self::default();
        figures.add_planning(&state.runner, workflow.usage());
        let mut step_started = HashMap::new();
        for stored in state.runner.storage().events(id, 0).await? {
            let at = stored.event.at;
            match stored.event.kind {
                EventKind::StepStarted { step, .. } => {
                    step_started.insert(step, at);
                }
                EventKind::StepFinished { step, .. } => {
                    if let Some(started) = step_started.remove(&step) {
                        figures.steps.observe(seconds(at - started));
                    }
                }
                EventKind::ToolCallFinished { tool_id, latency_ms, replayed: false, .. } => {
                    figures.tools.entry(tool_id).or_default().observe(latency_ms as f64 / 1000.0);
                }
                EventKind::LlmCallFinished { model, usage, cost_usd, latency_ms, .. } => {
                    let model = figures.models.entry(model).or_default();
                    model.spend(1, &usage, cost_usd);
                    model.latency.observe(latency_ms as f64 / 1000.0);
                }
                _ => {}
            }
        }
        Ok(figures)
    }

    /// The calls that wrote the workflow's plan, when its usage counts them (see the module docs).
    fn add_planning(&mut self, runner: &crate::runner::Runner, usage: &WorkflowUsage) {
        if !usage.planning_counted || usage.planning.llm_calls == 0 {
            return;
        }
        let planning = usage.planning;
        let model = self.models.entry(runner.planning_model()).or_default();
        model.spend(u64::from(planning.llm_calls), &planning, runner.planning_cost(planning));
    }

    fn add(&mut self, other: &Self) {
        for (name, theirs) in &other.models {
            let mine = self.models.entry(name.clone()).or_default();
            mine.calls += theirs.calls;
            mine.prompt_tokens += theirs.prompt_tokens;
            mine.completion_tokens += theirs.completion_tokens;
            mine.cache_read_tokens += theirs.cache_read_tokens;
            mine.cache_write_tokens += theirs.cache_write_tokens;
            mine.cost_usd += theirs.cost_usd;
            mine.latency.add(&theirs.latency);
        }
        for (tool, theirs) in &other.tools {
            self.tools.entry(tool.clone()).or_default().add(theirs);
        }
        self.steps.add(&other.steps);
    }
}

fn seconds(duration: chrono::TimeDelta) -> f64 {
    duration.num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6
}

/// The metrics of the workflows the caller may see, as Prometheus text (see the module docs).
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, description = "Prometheus text, format 0.0.4", content_type = "text/plain", body = String),
              (status = "4XX", body = super::errors::ErrorBody)))]
pub(super) async fn metrics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<impl IntoResponse, ApiError> {
    let mut scraped = state.metrics.lock().await;
    let (workflows, unreadable) = state.all_workflows(None).await?;
    let workflows: Vec<Workflow> =
        workflows.into_iter().filter(|w| caller.sees(w.execution_context().end_user_id.as_deref())).collect();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = Figures::default();
    let mut read = HashMap::new();
    for workflow in &workflows {
        // A page of the listing may repeat a row of the last as others are deleted.
        if read.contains_key(&workflow.id()) {
            continue;
        }
        *by_state.entry(workflow.state().to_string()).or_default() += 1;
        let figures = match scraped.figures(workflow) {
            Some(figures) => figures,
            None => Figures::of(&state, workflow).await?,
        };
        total.add(&figures);
        let end_user = workflow.execution_context().end_user_id.clone();
        read.insert(workflow.id(), Read { version: workflow.version(), end_user, figures });
    }
    for id in scraped.missing(&caller, &read) {
        match state.runner.get_workflow(id).await {
            Err(crate::Error::WorkflowNotFound(_)) => scraped.retire(id),
            // Still stored, though not read now: counted as last read.
            _ => scraped.last_read(id).into_iter().for_each(|figures| total.add(figures)),
        }
    }
    scraped.workflows.extend(read);
    scraped.deleted_seen_by(&caller).for_each(|deleted| total.add(deleted));
    drop(scraped);
    let set_aside = set_aside_seen(&state, &caller, &workflows).await?;
    // A row that cannot be read cannot be told whose it is: counted for a caller who
    // sees every workflow only.
    let unreadable = caller.end_user_id.is_none().then_some(unreadable);
    let text = render(&by_state, Stranded { unreadable, set_aside }, &total);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

/// How many of the workflows set aside the caller may see: those among `workflows`,
/// and for a caller not bound to an end user, those that cannot be read as well.
async fn set_aside_seen(state: &AppState, caller: &Caller, workflows: &[Workflow]) -> Result<usize, ApiError> {
    let aside = state.runner.storage().set_aside_workflows().await?;
    let seen: std::collections::HashSet<String> = workflows.iter().map(|w| w.id().to_string()).collect();
    Ok(aside.iter().filter(|entry| caller.end_user_id.is_none() || seen.contains(&entry.workflow_id)).count())
}

/// The stored workflows no worker runs as they are.
#[derive(Debug, Clone, Copy)]
struct Stranded {
    /// `None` for a caller bound to an end user.
    unreadable: Option<usize>,
    set_aside: usize,
}

fn render(by_state: &BTreeMap<String, u64>, stranded: Stranded, total: &Figures) -> String {
    let mut out = String::new();
    header(&mut out, "portia_workflows", "gauge", "Stored workflows by state.");
    for workflow_state in [
        WorkflowState::NotStarted,
        WorkflowState::InProgress,
        WorkflowState::NeedClarification,
        WorkflowState::ReadyToResume,
        WorkflowState::Complete,
        WorkflowState::Failed,
    ] {
        let name = workflow_state.to_string();
        let count = by_state.get(&name).copied().unwrap_or(0);
        let _ = writeln!(out, "portia_workflows{{state=\"{}\"}} {count}", escape(&name));
    }
    if let Some(unreadable) = stranded.unreadable {
        header(
            &mut out,
            "portia_workflows_unreadable",
            "gauge",
            "Stored workflows that cannot be read (a queued one is set aside; `portia list` names them).",
        );
        let _ = writeln!(out, "portia_workflows_unreadable {unreadable}");
    }
    header(
        &mut out,
        "portia_workflows_set_aside",
        "gauge",
        "Stored workflows set aside: their runs met a row that cannot be read, and no worker takes them \
         until they are put back or resumed (`portia list` says why).",
    );
    let _ = writeln!(out, "portia_workflows_set_aside {}", stranded.set_aside);

    header(
        &mut out,
        "portia_llm_calls_total",
        "counter",
        "LLM calls by model, of the workflows stored while this server ran, deleted ones included (their runs, \
         and the planning of those whose plan was written for them).",
    );
    for (model, figures) in &total.models {
        let _ = writeln!(out, "portia_llm_calls_total{{model=\"{}\"}} {}", escape(model), figures.calls);
    }
    header(
        &mut out,
        "portia_llm_tokens_total",
        "counter",
        "LLM tokens by model and kind, of the workflows stored while this server ran (prompt counts every input token; \
         cache_read and cache_write count again those the provider's prompt cache served or stored).",
    );
    for (model, figures) in &total.models {
        let model = escape(model);
        let kinds = [
            ("prompt", figures.prompt_tokens),
            ("completion", figures.completion_tokens),
            ("cache_read", figures.cache_read_tokens),
            ("cache_write", figures.cache_write_tokens),
        ];
        for (kind, count) in kinds {
            let _ = writeln!(out, "portia_llm_tokens_total{{model=\"{model}\",kind=\"{kind}\"}} {count}");
        }
    }
    header(
        &mut out,
        "portia_llm_cost_usd_total",
        "counter",
        "LLM cost in US dollars by model, of the workflows stored while this server ran.",
    );
    for (model, figures) in &total.models {
        let _ = writeln!(out, "portia_llm_cost_usd_total{{model=\"{}\"}} {}", escape(model), figures.cost_usd);
    }
    header(
        &mut out,
        "portia_llm_call_duration_seconds",
        "histogram",
        "LLM call latency by model, of the calls of the workflows' runs (planning calls have no recorded latency).",
    );
    for (model, figures) in &total.models {
        histogram(
            &mut out,
            "portia_llm_call_duration_seconds",
            &format!("model=\"{}\"", escape(model)),
            &figures.latency,
        );
    }
    header(&mut out, "portia_tool_call_duration_seconds", "histogram", "Tool call latency by tool (replays excluded).");
    for (tool, latency) in &total.tools {
        histogram(&mut out, "portia_tool_call_duration_seconds", &format!("tool=\"{}\"", escape(tool)), latency);
    }
    header(&mut out, "portia_step_duration_seconds", "histogram", "Step latency, from start to end.");
    histogram(&mut out, "portia_step_duration_seconds", "", &total.steps);
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, labels: &str, histogram: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in BUCKETS.iter().zip(histogram.counts) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", histogram.count);
    let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
    let _ = writeln!(out, "{name}_sum{braces} {}", histogram.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", histogram.count);
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
