//! Plan and run a query in one call, then print the finished workflow.
//!
//! ```sh
//! cargo run --example execute_query
//! cargo run --example execute_query -- "What is the weather in Lisbon?"
//! ```

use std::process::ExitCode;

use portia::tools::example_tool_registry;
use portia::{Config, Runner};

#[tokio::main]
async fn main() -> ExitCode {
    let query = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Which stock price grew faster in 2024, Amazon or Google?".to_owned());
    let result = async {
        let config = Config::from_env()?;
        config.init_logging();
        let tools = example_tool_registry(&config);
        let runner = Runner::new(config, tools)?;
        runner.execute_query(&query).await
    }
    .await;
    match result {
        Ok(workflow) => {
            println!("{}", serde_json::to_string_pretty(&workflow).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("execute_query: {e}");
            ExitCode::FAILURE
        }
    }
}
