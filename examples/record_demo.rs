//! Records the cassette `portia demo` replays: the seed scenario run against the
//! repository's simulated OpenAI and Tavily APIs (the benchmark's server), with the
//! real OpenAI provider and the real search tool, every exchange kept.
//!
//! ```sh
//! cargo run --example record_demo                       # rewrites demo/stock_compare.cassette.json
//! cargo run --example record_demo -- --real my.json     # with the real APIs and your keys (.env)
//! ```
//! With `--real` the keys come from the environment and `.env` as for any run, and
//! are blanked out of the file.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use portia::testing::Recorder;
use portia::testing::demo::QUERY;
use portia::tool::ToolRegistry;
use portia::tools::example_tool_registry;
use portia::{Config, Runner};

#[allow(dead_code)]
#[path = "support/fake_apis.rs"]
mod fake_apis;

const DEFAULT_OUT: &str = "demo/stock_compare.cassette.json";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let real = args.iter().any(|a| a == "--real");
    let out = args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| DEFAULT_OUT.to_owned());
    match record(real, &out).await {
        Ok(()) => {
            eprintln!("record_demo: wrote {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("record_demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn record(real: bool, out: &str) -> portia::Result<()> {
    // The simulated server lives as long as the recording; with `--real` it is not started.
    let server = if real { None } else { Some(fake_apis::start(Duration::ZERO, Duration::ZERO).await) };
    let config = match &server {
        None => Config::from_env()?,
        Some(server) => Config::builder()
            .openai_api_key("sk-simulated")
            .openai_base_url(format!("{}/v1", server.uri()))
            .tavily_api_key("tvly-simulated")
            .tavily_base_url(server.uri())
            .build()?,
    };
    let today = chrono::Utc::now().date_naive().to_string();
    let tools: Arc<dyn ToolRegistry> = Arc::new(example_tool_registry(&config));
    let tool_ids: Vec<String> = tools.get_tools().iter().map(|t| t.spec().id).collect();
    let note = if real {
        format!("The seed scenario recorded from the real APIs on {today} by examples/record_demo.rs.")
    } else {
        format!(
            "The seed scenario recorded on {today} by examples/record_demo.rs from the repository's simulated \
             OpenAI and Tavily APIs (examples/support/fake_apis.rs): the figures are the simulation's."
        )
    };
    let recorder = Recorder::new(&config).today(&today).tool_ids(tool_ids).note(note);
    let runner = Runner::builder(config.clone())
        .llm(recorder.llm(config.llm_client()?))
        .shared_tools(Arc::new(recorder.tools(tools)))
        .storage(Arc::new(portia::storage::InMemoryStorage::new()))
        .today(&today)
        .build()?;
    let workflow = runner.execute_query(QUERY).await?;
    if workflow.state() != portia::WorkflowState::Complete {
        return Err(portia::Error::Planning {
            message: format!("the run ended {}", workflow.state()),
            problems: vec![],
        });
    }
    recorder.save(out)
}
