//! Clarifications on the terminal: shown, asked, and answered.

use std::io::Write;

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
        loop {
            eprintln!("? {}", describe(&clarification));
            eprint!("{}", hint(&clarification));
            let _ = std::io::stderr().flush();
            let Some(line) = read_line().await? else { return Ok(false) };
            let answer = answer(&clarification, &line);
            match runner.resolve_clarification(&clarification, answer).await {
                Ok(_) => break,
                Err(e @ portia::Error::InvalidClarificationResponse { .. }) => eprintln!("{e}"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(true)
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
async fn read_line() -> Result<Option<String>, Failure> {
    let read = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|n| (n > 0).then_some(line))
    });
    Ok(read.await.map_err(|e| Failure(format!("reading the terminal failed: {e}")))??)
}
