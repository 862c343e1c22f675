//! The live view on stderr: a spinner while planning, then a line per step with
//! its tool, elapsed time, tokens and any waits for the client-side rate limit,
//! from the run's event stream. Shown only when
//! stderr is a terminal; otherwise the run goes on silently. Watching the run
//! makes its text replies stream (`PORTIA_LLM_STREAM=auto`): a step's spinner
//! shows the end of its reply (or of the tool call it is writing) as it comes, and
//! the final answer is printed as it is written.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use portia::runner::EventKind;
use portia::workflow::StepOutcome;
use portia::{Clarification, Plan, Runner, Workflow};

use crate::{Failure, prompt};

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

/// Runs `workflow`, with a line per step on stderr when `show`. A question a tool
/// asks while its call stays open (an MCP server's, say) is asked on the terminal at
/// once when stdin is one, so the call can carry on with the answer.
pub(crate) async fn execute(runner: &Runner, plan: &Plan, workflow: Workflow, show: bool) -> Result<Workflow, Failure> {
    if !show {
        return Ok(runner.execute_workflow(workflow).await?);
    }
    let (mut events, mut task) = runner.execute_workflow_stream(workflow);
    let mut view = View::new(plan);
    let mut live = LiveQuestions::new(runner, std::io::stdin().is_terminal());
    // The stream ends when the workflow rests; a run that errors first ends the task instead.
    let result = loop {
        tokio::select! {
            biased;
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if let Some(question) = view.on(&event.kind) {
                        live.queue(question, &view.bars);
                    }
                }
                Some(Err(_missed)) => {}
                None => break (&mut task).await,
            },
            () = live.next_answered() => live.done(&view.bars),
            result = &mut task => {
                while let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::ZERO, events.next()).await {
                    view.on(&event.kind);
                }
                break result;
            }
        }
    };
    live.done(&view.bars);
    view.close();
    Ok(result.map_err(|e| Failure::new(format!("the run stopped abnormally: {e}")))??)
}

type Asking = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The questions asked live during a run, one on the terminal at a time; the step
/// lines are hidden meanwhile, so they do not draw over the prompt.
struct LiveQuestions {
    runner: Runner,
    enabled: bool,
    waiting: VecDeque<Clarification>,
    asking: Option<Asking>,
}

impl LiveQuestions {
    fn new(runner: &Runner, enabled: bool) -> Self {
        Self { runner: runner.clone(), enabled, waiting: VecDeque::new(), asking: None }
    }

    fn queue(&mut self, question: Clarification, bars: &MultiProgress) {
        if self.enabled {
            self.waiting.push_back(question);
            self.ask_next(bars);
        }
    }

    fn ask_next(&mut self, bars: &MultiProgress) {
        if self.asking.is_some() {
            return;
        }
        let Some(question) = self.waiting.pop_front() else { return };
        let _ = bars.clear();
        bars.set_draw_target(ProgressDrawTarget::hidden());
        let runner = self.runner.clone();
        self.asking = Some(Box::pin(async move {
            match prompt::ask(&runner, &question).await {
                Ok(prompt::Asked::Refused(_)) => {
                    // The tool stopped waiting just before the answer: the question
                    // is asked again once the run pauses for it.
                    eprintln!("(that question was withdrawn; it comes back when the run pauses)");
                }
                Ok(_) => {}
                Err(e) => eprintln!("{}", e.line),
            }
        }));
    }

    /// Waits for the question on the terminal to be answered; never, when none is.
    async fn next_answered(&mut self) {
        match &mut self.asking {
            Some(asking) => asking.await,
            None => std::future::pending().await,
        }
    }

    /// The question on the terminal is over: show the step lines, or ask the next.
    fn done(&mut self, bars: &MultiProgress) {
        self.asking = None;
        bars.set_draw_target(ProgressDrawTarget::stderr());
        self.ask_next(bars);
    }
}

/// The lines of a run in progress.
struct View<'a> {
    plan: &'a Plan,
    bars: MultiProgress,
    steps: HashMap<usize, ProgressBar>,
    tokens: HashMap<String, u64>,
    /// How many calls waited for the rate limit, and how long in all, by step output.
    throttled: HashMap<String, Throttled>,
    /// The text each step's reply has streamed so far, by step output.
    streamed: HashMap<String, String>,
    /// The arguments each step's streamed tool call has so far, by step output.
    calling: HashMap<String, String>,
    /// Whether the final answer is being printed as it streams.
    answering: bool,
}

/// The calls of a step that waited for the client-side rate limit.
#[derive(Debug, Default, Clone, Copy)]
struct Throttled {
    calls: u32,
    waited_ms: u64,
}

impl Throttled {
    /// ` · 2 calls waited 3.1 s for the rate limit`, or nothing.
    fn note(self) -> String {
        match self.calls {
            0 => String::new(),
            1 => format!(" · 1 call waited {:.1} s for the rate limit", self.waited_ms as f64 / 1000.0),
            n => format!(" · {n} calls waited {:.1} s for the rate limit", self.waited_ms as f64 / 1000.0),
        }
    }
}

/// How much of a streaming reply a step's line shows: its end.
const TAIL_CHARS: usize = 48;

impl<'a> View<'a> {
    fn new(plan: &'a Plan) -> Self {
        Self {
            plan,
            bars: MultiProgress::new(),
            steps: HashMap::new(),
            tokens: HashMap::new(),
            throttled: HashMap::new(),
            streamed: HashMap::new(),
            calling: HashMap::new(),
            answering: false,
        }
    }

    /// Shows `kind`; returns a question a tool asks while its step runs.
    fn on(&mut self, kind: &EventKind) -> Option<Clarification> {
        match kind {
            EventKind::StepStarted { step, tool_id, .. } => {
                let bar = self.bars.add(ProgressBar::new_spinner().with_style(spinner_style()));
                bar.set_prefix(self.label(*step));
                bar.set_message(self.doer(*step, tool_id.as_deref()));
                bar.enable_steady_tick(TICK);
                self.steps.insert(*step, bar);
            }
            EventKind::LlmTextDelta { step_output: Some(output), text, .. } => self.step_text(output, text),
            EventKind::LlmTextDelta { step_output: None, text, .. } => self.answer_text(text),
            EventKind::LlmToolCallDelta { step_output: Some(output), tool_id, arguments, .. } => {
                self.step_call(output, tool_id, arguments);
            }
            EventKind::LlmStreamRestarted { step_output: Some(output), .. } => {
                self.streamed.remove(output);
                self.calling.remove(output);
            }
            EventKind::LlmStreamRestarted { step_output: None, .. } => self.end_answer(" (interrupted; starting over)"),
            EventKind::LlmCallFinished { step_output, usage, .. } => {
                match step_output {
                    None => self.end_answer(""),
                    // The next call's tool call is written afresh.
                    Some(output) => _ = self.calling.remove(output),
                }
                let key = step_output.clone().unwrap_or_default();
                *self.tokens.entry(key).or_default() += usage.prompt_tokens + usage.completion_tokens;
            }
            EventKind::LlmCallThrottled { step_output, waited_ms, .. } => {
                let throttled = self.throttled.entry(step_output.clone().unwrap_or_default()).or_default();
                throttled.calls += 1;
                throttled.waited_ms += waited_ms;
            }
            EventKind::ToolProgress { call, tool_id, progress, total, message } => {
                let bar = self.steps.get(&call.step)?;
                let done = total.map_or_else(|| format!("{progress}"), |total| format!("{progress}/{total}"));
                bar.set_message(format!("{tool_id} · {done} {}", message.as_deref().unwrap_or_default()));
            }
            EventKind::SubPlanStarted { step, item, child, plan_id } => {
                let bar = self.steps.get(step)?;
                let item = item.map(|i| format!(" item {i}")).unwrap_or_default();
                bar.set_message(format!("sub-plan {plan_id}{item} · workflow {child}"));
            }
            EventKind::StepFinished { step, outcome } => self.finish(*step, outcome),
            EventKind::LoopItemFinished { step, item, outcome } => self.item_finished(*step, *item, outcome),
            // Raised while its step runs: asked live. Questions a step ends with are
            // raised after it finished, and asked once the run pauses.
            EventKind::ClarificationRaised { clarification }
                if clarification.step.is_some_and(|step| self.steps.contains_key(&step)) =>
            {
                return Some(Clarification::clone(clarification));
            }
            _ => {}
        }
        None
    }

    /// What carries step `step` out, for its line: its tool, its ReAct tools, its
    /// sub-plan, or the LLM.
    fn doer(&self, step: usize, tool_id: Option<&str>) -> String {
        let planned = self.plan.steps.get(step);
        match (tool_id, planned) {
            (Some(tool), _) => tool.to_owned(),
            (None, Some(s)) if s.is_react() => format!("llm with {}", s.tools.join(", ")),
            (None, Some(s)) if s.plan.is_some() => "sub-plan".to_owned(),
            _ => "llm".to_owned(),
        }
    }

    /// Shows the end of a step's reply so far on its line.
    fn step_text(&mut self, output: &str, text: &str) {
        let so_far = self.streamed.entry(output.to_owned()).or_default();
        so_far.push_str(text);
        let (_, end) = tail(so_far);
        if let Some(bar) = self.bar_of(output) {
            bar.set_message(format!("llm · …{end}"));
        }
    }

    /// Shows a step's tool call as the model writes it, `→ tool {arguments…}`,
    /// on its line: the end of the arguments so far.
    fn step_call(&mut self, output: &str, tool_id: &str, arguments: &str) {
        let so_far = self.calling.entry(output.to_owned()).or_default();
        so_far.push_str(arguments);
        let (clipped, end) = tail(so_far);
        if let Some(bar) = self.bar_of(output) {
            let more = if clipped { "…" } else { "" };
            bar.set_message(format!("→ {tool_id} {more}{end}…"));
        }
    }

    /// The line of the step that writes `output`, once it has one.
    fn bar_of(&self, output: &str) -> Option<&ProgressBar> {
        let step = self.plan.steps.iter().position(|s| s.output == output)?;
        self.steps.get(&step)
    }

    /// Prints more of the final answer (the run's own call, once the steps are done).
    fn answer_text(&mut self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        if !self.answering {
            self.answering = true;
            let _ = write!(stderr, "answer: ");
        }
        let _ = write!(stderr, "{text}");
        let _ = stderr.flush();
    }

    /// Ends the answer's line, with `note` when it was cut short.
    fn end_answer(&mut self, note: &str) {
        if std::mem::take(&mut self.answering) {
            eprintln!("{note}");
        }
    }

    fn label(&self, step: usize) -> String {
        let output = self.plan.steps.get(step).map_or("", |s| s.output.as_str());
        format!("[{}/{}] {output}", step + 1, self.plan.steps.len())
    }

    /// One line per finished loop item; the step's spinner runs on until the last.
    fn item_finished(&self, step: usize, item: usize, outcome: &StepOutcome) {
        let how = match outcome {
            StepOutcome::Output(_) => "✓".to_owned(),
            StepOutcome::Skipped(reason) => format!("↷ skipped: {reason}"),
            StepOutcome::Clarifications(_) => "?".to_owned(),
            _ => "✗".to_owned(),
        };
        let _ = self.bars.println(format!("{} item {item} {how}", self.label(step)));
    }

    fn finish(&mut self, step: usize, outcome: &StepOutcome) {
        if let StepOutcome::Skipped(reason) = outcome {
            // A skipped step never started: it has no spinner, only this line.
            let _ = self.bars.println(format!("{} ↷ skipped: {reason}", self.label(step)));
            return;
        }
        let Some(bar) = self.steps.remove(&step) else { return };
        let output = self.plan.steps.get(step).map_or("", |s| s.output.as_str());
        let tool = self.plan.steps.get(step).and_then(|s| s.tool_id.clone()).unwrap_or_else(|| "llm".to_owned());
        let tokens = self.tokens.get(output).copied().unwrap_or_default();
        let throttled = self.throttled.get(output).copied().unwrap_or_default().note();
        let mark = match outcome {
            StepOutcome::Output(_) => "✓",
            StepOutcome::Clarifications(_) => "?",
            _ => "✗",
        };
        let line = format!("{} {mark} {tool} · {:.1?} · {tokens} tokens{throttled}", self.label(step), bar.elapsed());
        // Printed above the spinners still running, as a finished line of its own.
        let _ = self.bars.println(line);
        bar.finish_and_clear();
    }

    fn close(self) {
        let Self { bars, steps, tokens, throttled, .. } = self;
        for bar in steps.into_values() {
            bar.finish_and_clear();
        }
        let _ = bars.clear();
        drop(bars);
        // A plain line once the spinners are gone, so that stdout's JSON starts on its own line.
        if let Some(tokens) = tokens.get("").filter(|t| **t > 0) {
            let throttled = throttled.get("").copied().unwrap_or_default().note();
            eprintln!("summary ✓ llm · {tokens} tokens{throttled}");
        }
    }
}

/// The last [`TAIL_CHARS`] characters of `text` on one line, and whether any came before.
fn tail(text: &str) -> (bool, String) {
    let flat = text.replace(['\n', '\r'], " ");
    let skip = flat.chars().count().saturating_sub(TAIL_CHARS);
    (skip > 0, flat.chars().skip(skip).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_line_shows_the_tool_call_being_written_and_keeps_its_end() {
        let plan = portia::PlanBuilder::new("q").step("a", Some("echo_tool"), "$a").build();
        let mut view = View::new(&plan);
        view.on(&EventKind::StepStarted { step: 0, task: "a".into(), tool_id: Some("echo_tool".into()) });
        let piece = |arguments: &str| EventKind::LlmToolCallDelta {
            step_output: Some("$a".into()),
            call: 1,
            index: 0,
            tool_id: "echo_tool".into(),
            arguments: arguments.into(),
        };
        view.on(&piece("{\"text\":\n"));
        assert_eq!(view.steps[&0].message(), "→ echo_tool {\"text\": …");
        view.on(&piece(&format!("\"{}\"}}", "x".repeat(TAIL_CHARS))));
        let shown = view.steps[&0].message();
        assert!(shown.starts_with("→ echo_tool …") && shown.ends_with("xx\"}…"), "{shown}");
        assert_eq!(shown.chars().count(), "→ echo_tool …".chars().count() + TAIL_CHARS + 1);
        view.close();
    }

    #[test]
    fn the_tail_of_a_text_is_one_line_and_says_when_it_is_clipped() {
        assert_eq!(tail("a\nb"), (false, "a b".to_owned()));
        let long = "é".repeat(TAIL_CHARS + 3);
        assert_eq!(tail(&long), (true, "é".repeat(TAIL_CHARS)));
    }

    #[test]
    fn a_step_line_counts_its_waits_for_the_rate_limit() {
        let plan = portia::PlanBuilder::new("q").step("a", None, "$a").build();
        let mut view = View::new(&plan);
        let throttled = |waited_ms| EventKind::LlmCallThrottled {
            step_output: Some("$a".to_owned()),
            model: "gpt-4.1-mini".to_owned(),
            waited_ms,
        };
        view.on(&throttled(1200));
        view.on(&throttled(1900));
        assert_eq!(view.throttled["$a"].note(), " · 2 calls waited 3.1 s for the rate limit");
        assert_eq!(Throttled { calls: 1, waited_ms: 80 }.note(), " · 1 call waited 0.1 s for the rate limit");
        assert_eq!(Throttled::default().note(), "");
    }
}
