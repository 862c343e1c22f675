//! A terminal loop that answers every kind of clarification and resumes the
//! workflow until it is COMPLETE or FAILED. Questions go to stderr, so stdout holds
//! only the final workflow JSON.
//!
//! ```sh
//! PORTIA_AGENT=verifier cargo run --example clarifications -- "Read the file notes.txt and summarize it"
//! ```

use std::io::Write;
use std::process::ExitCode;

use portia::runner::ReadyPolicy;
use portia::tools::open_source_tool_registry;
use portia::{Clarification, ClarificationKind, Config, Runner, Workflow, WorkflowState};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

type Input = Lines<BufReader<Stdin>>;

#[tokio::main]
async fn main() -> ExitCode {
    let query =
        std::env::args().nth(1).unwrap_or_else(|| "What is 12 times 7, and what is the weather in Oslo?".to_owned());
    match run(&query).await {
        Ok(workflow) => {
            println!("{}", serde_json::to_string_pretty(&workflow).unwrap_or_default());
            if workflow.state() == WorkflowState::Complete { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(message) => {
            eprintln!("clarifications: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(query: &str) -> Result<Workflow, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    config.init_logging();
    let tools = open_source_tool_registry(&config);
    let runner = Runner::new(config, tools).map_err(|e| e.to_string())?;
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut workflow = runner.execute_query(query).await.map_err(|e| e.to_string())?;
    while workflow.state() == WorkflowState::NeedClarification {
        let open: Vec<Clarification> = workflow.outstanding_clarifications().cloned().collect();
        for clarification in open {
            workflow = answer(&runner, &clarification, &mut input).await?;
            if workflow.state() == WorkflowState::Failed {
                return Ok(workflow);
            }
        }
        workflow = runner.execute_workflow(workflow).await.map_err(|e| e.to_string())?;
    }
    Ok(workflow)
}

/// Asks the human and records the answer; returns the workflow as stored afterwards.
async fn answer(runner: &Runner, clarification: &Clarification, input: &mut Input) -> Result<Workflow, String> {
    eprintln!("\n{}", clarification.user_guidance);
    let response: Value = match &clarification.kind {
        ClarificationKind::Input { argument_name } => ask(input, &format!("{argument_name}> ")).await?.into(),
        ClarificationKind::MultipleChoice { options, .. } => choose(input, options).await?,
        ClarificationKind::ValueConfirmation { argument_name } => {
            let value = clarification.response.clone().unwrap_or_default();
            let reply = ask(input, &format!("Use {value} for {argument_name}? [y/n] ")).await?;
            if !reply.eq_ignore_ascii_case("y") {
                return runner
                    .cancel_workflow(clarification.workflow_id, "the user rejected the value")
                    .await
                    .map_err(|e| e.to_string());
            }
            value
        }
        ClarificationKind::Action { action_url } => {
            eprintln!("Open {action_url} and finish there; waiting...");
            return runner
                .wait_for_ready(clarification.workflow_id, ReadyPolicy::default())
                .await
                .map_err(|e| e.to_string());
        }
        ClarificationKind::Custom { name, data } => {
            eprintln!("{name}: {data}");
            let text = ask(input, "answer (JSON or text)> ").await?;
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        }
        other => return Err(format!("this example does not handle {other:?}")),
    };
    runner.resolve_clarification(clarification, response).await.map_err(|e| e.to_string())
}

async fn choose(input: &mut Input, options: &[Value]) -> Result<Value, String> {
    for (i, option) in options.iter().enumerate() {
        eprintln!("  {}. {option}", i + 1);
    }
    loop {
        let reply = ask(input, "number> ").await?;
        match reply.parse::<usize>().ok().and_then(|n| options.get(n.wrapping_sub(1))) {
            Some(choice) => return Ok(choice.clone()),
            None => eprintln!("Type a number from 1 to {}.", options.len()),
        }
    }
}

async fn ask(input: &mut Input, prompt: &str) -> Result<String, String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    match input.next_line().await {
        Ok(Some(line)) => Ok(line.trim().to_owned()),
        Ok(None) => Err("standard input closed before every clarification was answered".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
