//! The seed scenario: plan "Which stock price grew faster in 2024, Amazon or Google?",
//! print the plan, run it, print the finished workflow.
//!
//! ```sh
//! cp .env.example .env   # then set OPENAI_API_KEY (or ANTHROPIC_API_KEY) and TAVILY_API_KEY
//! cargo run --example stock_compare
//! ```
//! Logs go to stderr (`PORTIA_LOG_LEVEL=debug` shows every step), JSON to stdout.
//!
//! `cargo run --example stock_compare -- --demo` needs no key and no network: it
//! replays the recording shipped in `demo/` (see `portia::testing::demo`), as `portia demo` does.

use std::io::Write;
use std::process::ExitCode;

use portia::tools::example_tool_registry;
use portia::{Config, Runner, WorkflowState};

const QUERY: &str = "Which stock price grew faster in 2024, Amazon or Google?";

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--demo") {
        return report(demo(&mut std::io::stdout()).await);
    }
    // Reads .env (if present) and the environment.
    let result = match Config::from_env() {
        Ok(config) => {
            config.init_logging();
            run(config, &mut std::io::stdout()).await
        }
        Err(e) => Err(e.to_string()),
    };
    report(result)
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("stock_compare: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Plans, prints the plan, runs it and prints the workflow to `out`. Apart from
/// `main` so that the end-to-end test can drive it against mock servers.
pub(crate) async fn run(config: Config, out: &mut impl Write) -> Result<(), String> {
    let missing = missing_keys(&config);
    if !missing.is_empty() {
        return Err(format!("set {} (see .env.example)", missing.join(" and ")));
    }
    let tools = example_tool_registry(&config);
    let runner = Runner::new(config, tools).map_err(|e| e.to_string())?;

    let plan = runner.generate_plan(QUERY).await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", pretty(&plan)).map_err(|e| e.to_string())?;
    // This is where an application would show the plan to the user, or edit it.
    let workflow = runner.create_workflow(&plan).count_planning().await.map_err(|e| e.to_string())?;
    let workflow = runner.execute_workflow(workflow).await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", pretty(&workflow)).map_err(|e| e.to_string())?;

    match (workflow.state(), &workflow.failure()) {
        (WorkflowState::Complete, _) => Ok(()),
        (state, Some(failure)) => Err(format!("the workflow ended {state}: {}", failure.message)),
        (state, None) => Err(format!("the workflow ended {state}")),
    }
}

/// The seed scenario replayed from the shipped cassette: the plan, then the workflow.
pub(crate) async fn demo(out: &mut impl Write) -> Result<(), String> {
    let (runner, replayer) = portia::testing::demo::runner(Config::default()).map_err(|e| e.to_string())?;
    let tools = replayer.cassette().tool_ids.clone();
    let plan = runner.generate_plan(portia::testing::demo::QUERY).tools(tools).await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", pretty(&plan)).map_err(|e| e.to_string())?;
    let workflow = runner.run_plan(&plan).count_planning().await.map_err(|e| e.to_string())?;
    writeln!(out, "{}", pretty(&workflow)).map_err(|e| e.to_string())
}

/// The variables this example needs that are not set: the LLM provider's key and Tavily's.
fn missing_keys(config: &Config) -> Vec<&'static str> {
    let mut missing = Vec::new();
    if let Some(var) = config.llm_provider.api_key_var()
        && config.api_key(config.llm_provider).is_none()
    {
        missing.push(var);
    }
    if config.tavily_api_key.is_none() {
        missing.push("TAVILY_API_KEY");
    }
    missing
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(could not serialize: {e})"))
}
