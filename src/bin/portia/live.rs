//! The live view on stderr: a spinner while planning, then a line per step with
//! its tool, elapsed time and tokens, from the run's event stream. Shown only when
//! stderr is a terminal; otherwise the run goes on silently.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use portia::agent::StepOutcome;
use portia::events::EventKind;
use portia::{Plan, Runner, Workflow};

use crate::Failure;

const TICK: Duration = Duration::from_millis(100);

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// The spinner shown while the planner works.
#[derive(Debug)]
pub(crate) struct Planning(Option<ProgressBar>);

impl Planning {
    pub(crate) fn start(show: bool) -> Self {
        Self(show.then(|| {
            let bar = ProgressBar::new_spinner().with_style(spinner_style()).with_prefix("planning");
            bar.enable_steady_tick(TICK);
            bar
        }))
    }

    pub(crate) fn finish(self, plan: Option<&Plan>) {
        let Some(bar) = self.0 else { return };
        // Cleared and printed as a plain line, so that what follows starts on a line of its own.
        bar.finish_and_clear();
        match plan {
            Some(plan) => eprintln!("planning ✓ {} steps · {:.1?}", plan.steps.len(), bar.elapsed()),
            None => eprintln!("planning ✗"),
        }
    }
}

/// Runs `workflow`, with a line per step on stderr when `show`.
pub(crate) async fn execute(runner: &Runner, plan: &Plan, workflow: Workflow, show: bool) -> Result<Workflow, Failure> {
    if !show {
        return Ok(runner.execute_workflow(workflow).await?);
    }
    let (mut events, mut task) = runner.execute_workflow_stream(workflow);
    let mut view = View::new(plan);
    // The stream ends when the workflow rests; a run that errors first ends the task instead.
    let result = loop {
        tokio::select! {
            biased;
            event = events.next() => match event {
                Some(Ok(event)) => view.on(&event.kind),
                Some(Err(_missed)) => {}
                None => break (&mut task).await,
            },
            result = &mut task => {
                while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::ZERO, events.next()).await {
                    view.on(&event.kind);
                }
                break result;
            }
        }
    };
    view.close();
    Ok(result.map_err(|e| Failure(format!("the run stopped abnormally: {e}")))??)
}

/// The lines of a run in progress.
struct View<'a> {
    plan: &'a Plan,
    bars: MultiProgress,
    steps: HashMap<usize, ProgressBar>,
    tokens: HashMap<String, u64>,
}

impl<'a> View<'a> {
    fn new(plan: &'a Plan) -> Self {
        Self { plan, bars: MultiProgress::new(), steps: HashMap::new(), tokens: HashMap::new() }
    }

    fn on(&mut self, kind: &EventKind) {
        match kind {
            EventKind::StepStarted { step, tool_id, .. } => {
                let bar = self.bars.add(ProgressBar::new_spinner().with_style(spinner_style()));
                bar.set_prefix(self.label(*step));
                bar.set_message(tool_id.clone().unwrap_or_else(|| "llm".to_owned()));
                bar.enable_steady_tick(TICK);
                self.steps.insert(*step, bar);
            }
            EventKind::LlmCallFinished { step_output, usage, .. } => {
                let key = step_output.clone().unwrap_or_default();
                *self.tokens.entry(key).or_default() += usage.prompt_tokens + usage.completion_tokens;
            }
            EventKind::ToolProgress { call, tool_id, progress, total, message } => {
                let Some(bar) = self.steps.get(&call.step) else { return };
                let done = total.map_or_else(|| format!("{progress}"), |total| format!("{progress}/{total}"));
                bar.set_message(format!("{tool_id} · {done} {}", message.as_deref().unwrap_or_default()));
            }
            EventKind::StepFinished { step, outcome } => self.finish(*step, outcome),
            _ => {}
        }
    }

    fn label(&self, step: usize) -> String {
        let output = self.plan.steps.get(step).map_or("", |s| s.output.as_str());
        format!("[{}/{}] {output}", step + 1, self.plan.steps.len())
    }

    fn finish(&mut self, step: usize, outcome: &StepOutcome) {
        let Some(bar) = self.steps.remove(&step) else { return };
        let output = self.plan.steps.get(step).map_or("", |s| s.output.as_str());
        let tool = self.plan.steps.get(step).and_then(|s| s.tool_id.clone()).unwrap_or_else(|| "llm".to_owned());
        let tokens = self.tokens.get(output).copied().unwrap_or_default();
        let mark = match outcome {
            StepOutcome::Output(_) => "✓",
            StepOutcome::Clarifications(_) => "?",
            _ => "✗",
        };
        let line = format!("{} {mark} {tool} · {:.1?} · {tokens} tokens", self.label(step), bar.elapsed());
        // Printed above the spinners still running, as a finished line of its own.
        let _ = self.bars.println(line);
        bar.finish_and_clear();
    }

    fn close(self) {
        let Self { bars, steps, tokens, .. } = self;
        for bar in steps.into_values() {
            bar.finish_and_clear();
        }
        let _ = bars.clear();
        drop(bars);
        // A plain line once the spinners are gone, so that stdout's JSON starts on its own line.
        if let Some(tokens) = tokens.get("").filter(|t| **t > 0) {
            eprintln!("summary ✓ llm · {tokens} tokens");
        }
    }
}
