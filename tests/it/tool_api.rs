//! The tools API: typed tools, specs and their flags, registries and their errors.

use std::sync::Arc;

use portia::testing::MockTool;
use portia::tool::{AggregatedToolRegistry, ToolRunContext};
use portia::tools::{CalculatorTool, FileReaderTool, FileWriterTool, LlmTool, SearchTool, WeatherTool};
use portia::{Error, InMemoryToolRegistry, Tool, ToolError, ToolOutput, ToolRegistry, ToolSpec, TypedTool, WorkflowId};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize, JsonSchema)]
struct AddArgs {
    /// The first number.
    a: f64,
    /// The second number.
    b: f64,
}

#[derive(Debug)]
struct AddTool;

#[async_trait::async_trait]
impl TypedTool for AddTool {
    type Args = AddArgs;
    fn spec(&self) -> ToolSpec {
        // The schema set here is overwritten by the one of `AddArgs`.
        ToolSpec::new("add_tool", "Add Tool", "Adds two numbers.")
            .output_description("The sum.")
            .args_schema(json!({"type": "object", "properties": {"ignored": {"type": "string"}}}))
    }
    async fn call(&self, _ctx: &ToolRunContext, args: AddArgs) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput::value(args.a + args.b))
    }
}

fn ctx() -> ToolRunContext {
    ToolRunContext::new(WorkflowId::new())
}

#[tokio::test]
async fn typed_tool_gets_its_schema_and_parsing_for_free() {
    let spec = Tool::spec(&AddTool);
    let schema = &spec.args_schema;
    assert_eq!(schema["type"], "object");
    assert!(schema["properties"].get("ignored").is_none(), "the Args schema replaces the one in the spec");
    assert_eq!(schema["properties"]["a"]["description"], "The first number.");
    assert_eq!(schema["required"], json!(["a", "b"]));
    assert_eq!(AddTool.run(&ctx(), json!({"a": 1, "b": 2.5})).await.unwrap(), ToolOutput::value(3.5));
    let definition = spec.definition();
    assert_eq!(definition.name, "add_tool");
    assert_eq!(definition.description, "Adds two numbers. Returns: The sum.");
}

#[tokio::test]
async fn arguments_that_do_not_fit_are_a_soft_error_with_serdes_message() {
    let err = AddTool.run(&ctx(), json!({"a": "one"})).await.unwrap_err();
    let ToolError::Soft(message) = err else { panic!("expected a soft error") };
    assert!(message.contains("add_tool"), "{message}");
    assert!(message.contains("invalid type: string \"one\", expected f64"), "{message}");
}

#[test]
fn registering_an_existing_id_is_an_error() {
    let mut registry = InMemoryToolRegistry::new();
    registry.register(Arc::new(AddTool)).unwrap();
    let err = registry.register(Arc::new(AddTool)).unwrap_err();
    assert!(matches!(&err, Error::DuplicateTool(id) if id == "add_tool"), "{err}");
    assert_eq!(registry.get_tools().len(), 1);
}

#[test]
fn lookup_by_id_falls_back_to_the_display_name_and_reports_unknown_ids() {
    let registry = InMemoryToolRegistry::new().with(AddTool).unwrap();
    assert_eq!(registry.get_tool("add_tool").unwrap().spec().id, "add_tool");
    assert_eq!(registry.get_tool("add tool").unwrap().spec().id, "add_tool", "older plans name tools by display name");
    let err = registry.get_tool("subtract_tool").unwrap_err();
    assert!(matches!(&err, Error::ToolNotFound(id) if id == "subtract_tool"), "{err}");
}

#[test]
fn aggregation_prefers_the_first_registry_and_reports_duplicates() {
    let first = InMemoryToolRegistry::new().with(MockTool::returning("shared", json!("first"))).unwrap();
    let second = InMemoryToolRegistry::new()
        .with(MockTool::returning("shared", json!("second")))
        .unwrap()
        .with(MockTool::echo("only_second"))
        .unwrap();
    let combined = AggregatedToolRegistry::default().and(first).and(second);
    assert_eq!(combined.duplicate_ids(), ["shared"]);
    let ids: Vec<String> = combined.get_tools().iter().map(|t| t.spec().id).collect();
    assert_eq!(ids, ["shared", "only_second"]);
    assert_eq!(combined.match_tools("anything").len(), 2);
}

#[tokio::test]
async fn first_match_wins_when_running_an_aggregated_tool() {
    let first = InMemoryToolRegistry::new().with(MockTool::returning("shared", json!("first"))).unwrap();
    let second = InMemoryToolRegistry::new().with(MockTool::returning("shared", json!("second"))).unwrap();
    let combined = AggregatedToolRegistry::new(vec![Arc::new(first), Arc::new(second)]);
    let output = combined.get_tool("shared").unwrap().run(&ctx(), json!({})).await.unwrap();
    assert_eq!(output, ToolOutput::value("first"));
}

#[test]
fn a_custom_tool_is_assumed_unsafe_to_repeat_until_it_says_otherwise() {
    let spec = Tool::spec(&AddTool);
    assert!(!spec.idempotent && spec.side_effects, "{spec:?}");
    assert!(!spec.summarize);
    assert_eq!(spec.task_argument, None);
    assert_eq!(spec.direct_args("Add 1 and 2"), None);
    let mock = MockTool::echo("mock_tool").spec();
    assert!(!mock.idempotent && mock.side_effects, "{mock:?}");
    assert_eq!(ToolSpec::new("a", "A", "d").args_schema, json!({"type": "object", "properties": {}}));
}

#[test]
fn read_only_means_idempotent_without_side_effects() {
    let spec = ToolSpec::new("a", "A", "d").read_only();
    assert!(spec.idempotent && !spec.side_effects);
}

#[test]
fn built_in_tools_carry_their_flags() {
    let read_only: [&dyn Tool; 5] =
        [&SearchTool::new("k"), &WeatherTool::new("k"), &CalculatorTool, &FileReaderTool::new("."), &LlmTool::new()];
    for tool in read_only {
        let spec = tool.spec();
        assert!(spec.idempotent && !spec.side_effects, "{} should be read-only", spec.id);
        assert!(!spec.summarize, "{}", spec.id);
    }
    let writer = Tool::spec(&FileWriterTool::new("."));
    assert!(writer.side_effects && writer.idempotent, "{writer:?}");
    assert_eq!(Tool::spec(&LlmTool::new()).task_argument.as_deref(), Some("task"));
    assert_eq!(Tool::spec(&SearchTool::new("k")).task_argument, None);
}

#[test]
fn a_task_argument_makes_the_call_direct() {
    let spec = ToolSpec::new("ask_tool", "Ask Tool", "Asks.").task_argument("task");
    assert_eq!(spec.direct_args("Sum up"), Some(json!({"task": "Sum up"})));
    let other = ToolSpec::new("ask_tool", "Ask Tool", "Asks.").task_argument("question");
    assert_eq!(other.direct_args("Why?"), Some(json!({"question": "Why?"})));
}

#[test]
fn specs_round_trip_through_json() {
    let spec = ToolSpec::new("pay_tool", "Pay Tool", "Pays.").summarize(true).task_argument("task");
    let back: ToolSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
}

/// Forwards only `spec` and `run`, as a logging or approval wrapper would.
#[derive(Debug)]
struct Wrapper(Arc<dyn Tool>);

#[async_trait::async_trait]
impl Tool for Wrapper {
    fn spec(&self) -> ToolSpec {
        self.0.spec()
    }
    async fn run(&self, ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        self.0.run(ctx, args).await
    }
}

#[tokio::test]
async fn a_wrapper_forwarding_spec_keeps_every_flag() {
    let spec = ToolSpec::new("odd_tool", "Odd Tool", "Has every flag away from its default.")
        .args_schema(json!({"type": "object", "properties": {"task": {"type": "string"}}}))
        .output_description("Its arguments.")
        .idempotent(true)
        .side_effects(false)
        .summarize(true)
        .task_argument("task");
    let wrapped = Wrapper(Arc::new(MockTool::echo("odd_tool").with_spec(spec.clone())));
    assert_eq!(wrapped.spec(), spec);
    assert_eq!(wrapped.run(&ctx(), json!({"task": "x"})).await.unwrap(), ToolOutput::value(json!({"task": "x"})));
    let typed = Wrapper(Arc::new(AddTool));
    assert_eq!(typed.spec(), Tool::spec(&AddTool), "the wrapper keeps the Args schema too");
}

/// Everything a tool can see of its run, written down as text.
#[derive(Debug, Default)]
struct Snoop(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Tool for Snoop {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("snoop_tool", "Snoop", "Looks around.").task_argument("task").read_only()
    }

    async fn run(&self, ctx: &ToolRunContext, _args: serde_json::Value) -> Result<ToolOutput, ToolError> {
        let mut seen = self.0.lock().unwrap();
        seen.push(format!("{ctx:?}"));
        seen.push(format!("{:?}", ctx.llm));
        seen.push(format!("{:?}", ctx.events));
        seen.push(ctx.step_context.clone());
        seen.push(serde_json::to_string(&ctx.execution_context).unwrap());
        Ok(ToolOutput::value("looked"))
    }
}

#[tokio::test]
async fn a_custom_tool_cannot_reach_any_key_of_the_config() {
    use portia::testing::ScriptedLlm;
    use portia::{Config, PlanBuilder, Runner, WorkflowState};

    const KEYS: [&str; 5] = ["sk-openai-SECRET", "sk-ant-SECRET", "tvly-SECRET", "owm-SECRET", "postgres-SECRET"];
    let config = Config::builder()
        .openai_api_key(KEYS[0])
        .anthropic_api_key(KEYS[1])
        .tavily_api_key(KEYS[2])
        .openweathermap_api_key(KEYS[3])
        .database_url(format!("postgres://u:{}@localhost/db", KEYS[4]))
        .summarize_final_output(false)
        .build()
        .unwrap();
    let snoop = Arc::new(Snoop::default());
    let tools = InMemoryToolRegistry::from_tools([snoop.clone() as Arc<dyn Tool>]).unwrap();
    let runner = Runner::builder(config).tools(tools).llm(Arc::new(ScriptedLlm::new())).build().unwrap();
    let plan = PlanBuilder::new("look").step("Look around", Some("snoop_tool"), "$seen").build();

    let workflow = runner.run_plan(&plan).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    let seen = snoop.0.lock().unwrap().join("\n");
    assert!(seen.contains("snoop_tool"), "the tool ran with a context of its call: {seen}");
    for key in KEYS {
        assert!(!seen.contains(key), "{key} reached the tool:\n{seen}");
    }
}
