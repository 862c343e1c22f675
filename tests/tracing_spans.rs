//! Tracing: a workflow span holds a span per step, which holds its LLM and tool
//! calls, named and attributed after OpenTelemetry's GenAI conventions.

use std::sync::{Arc, Mutex};

use portia::config::ExecutionMode;
use portia::testing::{MockTool, ScriptedLlm};
use portia::{Config, InMemoryToolRegistry, PlanBuilder, Runner, WorkflowState};
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// One span as the test saw it: its name, its parent's, and its attributes.
#[derive(Debug, Clone, Default)]
struct Seen {
    name: String,
    parent: Option<String>,
    fields: Vec<(String, String)>,
}

impl Seen {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}").trim_matches('"').to_owned()));
    }
}

/// Records every span with the name of its parent.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(Id, Seen)>>>);

impl<S> Layer<S> for Recorder
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = ctx.span(id).and_then(|span| span.parent()).map(|p| p.name().to_owned());
        let mut seen = Seen { name: attrs.metadata().name().to_owned(), parent, fields: Vec::new() };
        attrs.record(&mut Fields(&mut seen.fields));
        self.0.lock().unwrap().push((id.clone(), seen));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some((_, seen)) = spans.iter_mut().find(|(i, _)| i == id) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

#[test]
fn the_span_tree_follows_workflow_step_and_call() {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let done = runtime.block_on(async {
        let llm = ScriptedLlm::new().tool_call("search_tool", json!({"query": "AMZN 2024"})).text("Amazon.");
        let tools = InMemoryToolRegistry::new().with(MockTool::returning("search_tool", json!("+44%"))).unwrap();
        let config =
            Config::builder().execution(ExecutionMode::Sequential).summarize_final_output(false).build().unwrap();
        let runner = Runner::builder(config).tools(tools).llm(Arc::new(llm)).build().unwrap();
        let plan = PlanBuilder::new("q")
            .step("Find Amazon's growth", Some("search_tool"), "$amazon")
            .step("Say which grew", None, "$answer")
            .input("$amazon", "Amazon's growth")
            .build();
        runner.run_plan(&plan).await.unwrap()
    });
    assert_eq!(done.state(), WorkflowState::Complete);

    let spans: Vec<Seen> = recorder.0.lock().unwrap().iter().map(|(_, s)| s.clone()).collect();
    let tree: Vec<(String, Option<String>)> = spans.iter().map(|s| (s.name.clone(), s.parent.clone())).collect();
    let (workflow, step) = (Some("workflow".to_owned()), Some("step".to_owned()));
    assert_eq!(
        tree,
        [
            ("workflow".to_owned(), None),
            ("step".to_owned(), workflow.clone()),
            ("llm_call".to_owned(), step.clone()),
            ("tool_call".to_owned(), step.clone()),
            ("step".to_owned(), workflow),
            ("llm_call".to_owned(), step),
        ]
    );
    assert_eq!(spans[0].field("portia.workflow.id"), Some(done.id().to_string().as_str()));
    assert_eq!(spans[0].field("gen_ai.operation.name"), Some("invoke_agent"));
    let llm = &spans[2];
    assert_eq!(llm.field("otel.name"), Some("chat gpt-4.1-mini"));
    assert_eq!(llm.field("gen_ai.request.model"), Some("gpt-4.1-mini"));
    assert!(llm.field("gen_ai.usage.input_tokens").is_some_and(|t| t.parse::<u64>().unwrap() > 0));
    let tool = &spans[3];
    assert_eq!(
        (tool.field("gen_ai.operation.name"), tool.field("gen_ai.tool.name")),
        (Some("execute_tool"), Some("search_tool"))
    );
}
