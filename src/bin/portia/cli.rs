//! The command line's arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use portia::{ClarificationId, PlanId, WorkflowId, WorkflowState};

const AFTER_HELP: &str = "\
Exit codes: 0 COMPLETE (or done), 1 FAILED or an error, 2 a usage error, 3 waiting for a clarification.
Settings come from the environment and .env, with --config FILE over them, as for the library; the
store is SQLite in .portia/portia.db unless PORTIA_STORAGE says otherwise.";

/// Plan-then-execute LLM agents: plan a query, run it, answer its questions.
#[derive(Debug, Parser)]
#[command(name = "portia", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Read settings from this TOML or JSON file, over the environment's (what it leaves out comes from the environment and .env).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Replay LLM replies and read-only tool calls from this cassette: no key, no network.
    #[arg(long, global = true, value_name = "FILE", conflicts_with = "record")]
    pub(crate) cassette: Option<PathBuf>,
    /// Record LLM exchanges and read-only tool calls to this cassette (API keys blanked out).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) record: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Plan a query and print the plan (nothing is run).
    Plan {
        /// The query.
        #[arg(value_parser = parse_query)]
        query: String,
        /// JSON, or a Mermaid or Graphviz graph of the steps and their `$name` dependencies.
        #[arg(long, value_enum, default_value_t = PlanFormat::Json)]
        format: PlanFormat,
    },
    /// Plan (unless --plan is given) and run a query; prints the workflow JSON.
    Run(Source),
    /// Store a workflow for the workers and print its id.
    Submit(Source),
    /// Run a stored workflow on (after its clarifications are answered, say).
    Resume {
        /// The workflow.
        id: WorkflowId,
    },
    /// Take a FAILED workflow up again as a new one, keeping what its finished steps
    /// did, and run it (or, with --submit, queue it and print its id). A workflow is
    /// retried once: asked again, this is about the same retry.
    Retry {
        /// The FAILED workflow.
        #[arg(required_unless_present = "all_failed")]
        id: Option<WorkflowId>,
        /// Queue the retry for the workers instead of running it here.
        #[arg(long)]
        submit: bool,
        /// Queue a retry of every FAILED workflow not retried yet (after an outage,
        /// say), printing each retry's id; a sub-plan's run goes with its parent's.
        #[arg(long, conflicts_with = "id", requires = "submit")]
        all_failed: bool,
    },
    /// Answer a clarification; VALUE is read as JSON when it parses, else as a string.
    Answer {
        /// The workflow.
        id: WorkflowId,
        /// The clarification.
        clarification_id: ClarificationId,
        /// The answer.
        value: String,
    },
    /// Cancel a workflow that is not finished.
    Cancel {
        /// The workflow.
        id: WorkflowId,
        /// Why, as kept in the workflow's failure.
        #[arg(long, default_value = "cancelled from the command line")]
        reason: String,
    },
    /// List stored workflows.
    List {
        /// Only workflows in this state (complete, failed, need_clarification, ...).
        #[arg(long, value_parser = parse_state)]
        state: Option<WorkflowState>,
        /// Only workflows run for this end user.
        #[arg(long)]
        end_user: Option<String>,
        /// A table, or JSON.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a stored workflow.
    Show {
        /// The workflow.
        id: WorkflowId,
        /// JSON, or a table of its steps.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Follow a workflow's events, one JSON line each, from its first to its rest
    /// (finished, or waiting for a human); it may run in any process sharing the store.
    Watch {
        /// The workflow.
        id: WorkflowId,
    },
    /// Put a workflow set aside (its run met a row that could not be read) back,
    /// once the row is fixed, without running it: the workers take it if it was
    /// queued. Prints the ids put back.
    PutBack {
        /// The workflow set aside.
        #[arg(required_unless_present = "all")]
        id: Option<WorkflowId>,
        /// Every workflow set aside.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Delete a stored workflow with its journal, whatever its state, even one that
    /// can no longer be read; one a run holds only with --force.
    Delete {
        /// The workflow.
        id: WorkflowId,
        /// Delete it even while a run holds it (that run then fails at its next save).
        #[arg(long)]
        force: bool,
    },
    /// Delete finished workflows older than AGE (such as 7d, 12h, 30m).
    Prune {
        /// How old a finished workflow must be to go.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        older_than: Duration,
    },
    /// List the tools: ids, descriptions, argument schemas and flags.
    Tools {
        /// A table, or JSON.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Run submitted workflows until SIGTERM or ctrl-c.
    Worker {
        /// How many workflows to run at once (at least 1).
        #[arg(long, default_value_t = 8, value_parser = at_least_one)]
        concurrency: usize,
        /// Stop once no workflow is queued or running (for scripts and CI).
        #[arg(long)]
        exit_when_idle: bool,
        /// Seconds running workflows may go on after SIGTERM or ctrl-c; those still
        /// running then are stopped, their leases released, for another worker to resume.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        grace: u64,
        /// Start even without a key for the model: only for queues of plans that
        /// need none (their tools' arguments fixed, no LLM steps, no summaries);
        /// any other workflow would FAIL.
        #[arg(long)]
        without_model: bool,
    },
    /// Run the seed scenario from a recording shipped with portia: no key, no network.
    Demo,
    /// Serve this SDK over MCP on stdin and stdout, for an MCP client such as Claude
    /// Desktop (tools to plan, run, list, show and answer).
    #[cfg(feature = "mcp")]
    Mcp,
    /// Serve the JSON API, AG-UI event streams, /metrics and the web inspector over
    /// HTTP until SIGTERM or ctrl-c. Beyond loopback it needs PORTIA_SERVER_TOKENS.
    #[cfg(feature = "server")]
    Serve {
        /// The address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Run this many queued workflows at once in this process (0: new workflows
        /// run in the server's own tasks, and queued ones wait for `portia worker`).
        #[arg(long, value_name = "N", default_value_t = 0)]
        workers: usize,
        /// Seconds running workflows may go on after SIGTERM or ctrl-c; those still
        /// running then are stopped, their leases released, and each named in the
        /// log with how to resume it.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        grace: u64,
    },
}

/// Where a workflow's plan comes from.
#[derive(Debug, Args)]
pub(crate) struct Source {
    /// The query to plan.
    #[arg(
        required_unless_present_any = ["plan", "plan_id"],
        conflicts_with_all = ["plan", "plan_id"],
        value_parser = parse_query
    )]
    pub(crate) query: Option<String>,
    /// Run this plan (JSON, as `portia plan` prints it) instead of planning.
    #[arg(long, value_name = "FILE", conflicts_with = "plan_id")]
    pub(crate) plan: Option<PathBuf>,
    /// Run this stored plan instead of planning.
    #[arg(long, value_name = "ID")]
    pub(crate) plan_id: Option<PlanId>,
    /// Give the plan's input NAME a value (repeat for each input); VALUE is read as
    /// JSON when it parses, else as a string.
    #[arg(long = "input", value_name = "NAME=VALUE", value_parser = parse_input)]
    pub(crate) inputs: Vec<(String, serde_json::Value)>,
}

impl Source {
    /// The values given with `--input`, by name; an input given twice is a usage
    /// error, as neither value can be told to be the one meant.
    pub(crate) fn input_map(&self) -> Result<serde_json::Map<String, serde_json::Value>, crate::Failure> {
        let mut map = serde_json::Map::new();
        for (name, value) in &self.inputs {
            let bare = name.trim_start_matches('$');
            if map.keys().any(|given| given.trim_start_matches('$') == bare) {
                return Err(crate::Failure::usage(format!("--input {bare} is given twice: give each input once")));
            }
            map.insert(name.clone(), value.clone());
        }
        Ok(map)
    }
}

/// A count of at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A query with something in it: a blank one would be planned (and paid for) all the same.
fn parse_query(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(portia::Error::EmptyQuery.to_string());
    }
    Ok(text.to_owned())
}

/// `NAME=VALUE`, the value read as JSON when it parses, else as a string.
fn parse_input(text: &str) -> Result<(String, serde_json::Value), String> {
    let usage = || format!("{text:?} is not an input: write NAME=VALUE, such as ticket=\"My card was charged twice\"");
    let (name, value) = text.split_once('=').ok_or_else(usage)?;
    let name = name.trim();
    if name.trim_start_matches('$').is_empty() {
        return Err(usage());
    }
    Ok((name.to_owned(), crate::prompt::parse_value(value)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PlanFormat {
    Json,
    Mermaid,
    Dot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Json,
    Table,
}

/// A state in any case, with `-` or `_`: `need-clarification`, `COMPLETE`.
fn parse_state(text: &str) -> Result<WorkflowState, String> {
    let name = text.trim().to_uppercase().replace('-', "_");
    serde_json::from_value(serde_json::Value::String(name)).map_err(|_| {
        "valid states: not_started, in_progress, need_clarification, ready_to_resume, complete, failed".to_owned()
    })
}

/// An age such as `7d`, `12h`, `30m`, `45s` or `2w`.
pub(crate) fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let usage = || format!("{text:?} is not an age: write a number and a unit, such as 7d, 12h, 30m, 45s or 2w");
    let number: u64 = number.parse().map_err(|_| usage())?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(usage()),
    };
    number.checked_mul(seconds).map(Duration::from_secs).ok_or_else(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_read_as_a_name_and_a_json_or_text_value() {
        assert_eq!(parse_input("count=3"), Ok(("count".to_owned(), serde_json::json!(3))));
        assert_eq!(parse_input("$ticket=a=b"), Ok(("$ticket".to_owned(), serde_json::json!("a=b"))));
        assert!(parse_input("ticket").is_err() && parse_input("=3").is_err());
    }

    #[test]
    fn ages_read_as_durations() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_age("7").is_err() && parse_age("d").is_err() && parse_age("7y").is_err());
    }

    #[test]
    fn states_read_in_any_case() {
        assert_eq!(parse_state("need-clarification"), Ok(WorkflowState::NeedClarification));
        assert_eq!(parse_state("COMPLETE"), Ok(WorkflowState::Complete));
        assert!(parse_state("done").is_err());
    }
}
