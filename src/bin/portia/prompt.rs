//! Clarifications on the terminal: shown, asked, and answered.

use std::io::Write;
use std::sync::OnceLock;

use tokio::sync::mpsc;

use portia::{Clarification, ClarificationKind, Runner, Workflow};
use serde_json::Value;

use crate::Failure;

/// An answer as typed: JSON when it parses (`42`, `true`, `{"a": 1}`), else the text itself.
pub(crate) fn parse_value(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|_| Value::String(text.trim().to_owned()))
}

/// One line: id, category, question, and what an answer may be.
pub(crate) fn describe(clarification: &Clarification) -> String {
    let category = serde_json::to_value(clarification)
        .ok()
        .and_then(|v| v["category"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let extra = match &clarification.kind {
        ClarificationKind::MultipleChoice { options, .. } => {
            let options: Vec<String> = options.iter().map(show).collect();
            format!(" (options: {})", options.join(", "))
        }
        ClarificationKind::ValueConfirmation { .. } => {
            clarification.response.as_ref().map(|v| format!(" (value: {})", show(v))).unwrap_or_default()
        }
        ClarificationKind::Action { action_url } => format!(" (at {action_url})"),
        _ => String::new(),
    };
    format!("{} [{category}] {}{extra}", clarification.id, clarification.user_guidance)
}

fn show(value: &Value) -> String {
    value.as_str().map_or_else(|| value.to_string(), str::to_owned)
}

/// Asks each open clarification on the terminal and answers it. `false` when stdin
/// ended before every one was answered.
pub(crate) async fn ask_all(runner: &Runner, workflow: &Workflow) -> Result<bool, Failure> {
    let open: Vec<Clarification> = workflow.outstanding_clarifications().cloned().collect();
    for clarification in open {
        match ask(runner, &clarification).await? {
            Asked::Answered => {}
            Asked::EndOfInput => return Ok(false),
            Asked::Refused(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// How asking one question ended.
pub(crate) enum Asked {
    Answered,
    EndOfInput,
    /// The runner would not take an answer (not a wrong one: that is asked again).
    Refused(portia::Error),
}

/// Shows `clarification` on stderr and reads answers until one is taken.
pub(crate) async fn ask(runner: &Runner, clarification: &Clarification) -> Result<Asked, Failure> {
    loop {
        eprint!("? {}\n{}", describe(clarification), hint(clarification));
        let _ = std::io::stderr().flush();
        let Some(line) = read_line().await? else { return Ok(Asked::EndOfInput) };
        match runner.resolve_clarification(clarification, answer(clarification, &line)).await {
            Ok(_) => return Ok(Asked::Answered),
            Err(e @ portia::Error::InvalidClarificationResponse { .. }) => eprintln!("{e}"),
            Err(e) => return Ok(Asked::Refused(e)),
        }
    }
}

fn hint(clarification: &Clarification) -> &'static str {
    match clarification.kind {
        ClarificationKind::MultipleChoice { .. } => "choose (a number or a value)> ",
        ClarificationKind::ValueConfirmation { .. } => "confirm (y, or another value)> ",
        ClarificationKind::Action { .. } => "press enter once done> ",
        _ => "answer> ",
    }
}

/// What the typed `line` means for this clarification: an option's number, a yes, or a value.
fn answer(clarification: &Clarification, line: &str) -> Value {
    let text = line.trim();
    match &clarification.kind {
        ClarificationKind::MultipleChoice { options, .. } => {
            let picked = text.parse::<usize>().ok().and_then(|n| n.checked_sub(1)).and_then(|i| options.get(i));
            picked.cloned().unwrap_or_else(|| parse_value(text))
        }
        ClarificationKind::ValueConfirmation { .. } if matches!(text, "" | "y" | "yes") => {
            clarification.response.clone().unwrap_or(Value::Bool(true))
        }
        ClarificationKind::Action { .. } if text.is_empty() => Value::from("complete"),
        _ => parse_value(text),
    }
}

/// A line from stdin, or `None` at its end.
///
/// One thread reads stdin for the whole process and hands the lines out in order, so a
/// question given up on (a live one whose wait ended) leaves no read behind that would
/// swallow the answer to the next.
async fn read_line() -> Result<Option<String>, Failure> {
    static LINES: OnceLock<tokio::sync::Mutex<mpsc::UnboundedReceiver<std::io::Result<String>>>> = OnceLock::new();
    let lines = LINES.get_or_init(|| {
        let (sender, receiver) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        tokio::sync::Mutex::new(receiver)
    });
    match lines.lock().await.recv().await {
        Some(Ok(line)) => Ok(Some(line)),
        Some(Err(e)) => Err(Failure::new(format!("reading the terminal failed: {e}"))),
        None => Ok(None),
    }
}
