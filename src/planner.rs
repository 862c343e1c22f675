//! Planners: from a query and a set of tools to a [`Plan`].
//!
//! [`OneShotPlanner`] asks the LLM for the whole plan in one structured call, checks
//! it with [`Plan::validate`], and re-asks with the list of problems until it is
//! valid or the configured number of attempts is spent. Implement [`Planner`] to
//! bring your own.

use std::fmt::{self, Write};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::execution_context::ExecutionContext;
use crate::llm::{LlmClient, LlmRequest, Message, ModelRole, OutputSchema, Usage, structured_ref};
use crate::plan::{AskUser, Exit, Plan, PlanContext, PlanProblem, Step, ToolLookup, Variable};
use crate::tool::{Tool, ToolSpec};
use crate::{Error, Result};

/// What a planner is asked.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlanningRequest {
    /// The user's query.
    pub query: String,
    /// The tools the plan may use.
    pub tools: Vec<Arc<dyn Tool>>,
    /// Example plans to imitate.
    pub examples: Vec<Plan>,
    /// Who the plan is for, and extra planner instructions.
    pub execution_context: ExecutionContext,
    /// Today's date, `YYYY-MM-DD`.
    pub today: String,
    /// The JSON Schema the plan's final output must fit, when the caller wants a
    /// typed result.
    pub output_schema: Option<Value>,
}

/// Turns a query into a plan.
#[async_trait::async_trait]
pub trait Planner: Send + Sync + fmt::Debug {
    /// Makes a plan, with what it cost in [`Plan::usage`].
    ///
    /// # Errors
    /// [`Error::Planning`] when no valid plan could be made.
    async fn plan(&self, request: PlanningRequest) -> Result<Plan>;
}

// A step as the planning LLM writes it. (Plain comments on these types: a doc
// comment would be sent, and paid for, as a description in every planning call.)
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct PlannedStep {
    task: String,
    #[serde(default)]
    inputs: Vec<PlannedInput>,
    #[serde(default)]
    tool_id: Option<String>,
    output: String,
    // The tool's arguments when the query fixes them; null otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args: Option<Value>,
    // Plain strings, left out when empty: the schema stays short.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    condition: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    for_each: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct PlannedInput {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Value>,
}

// The planning LLM's reply: steps, or why it cannot plan.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("required" = ["steps"]))]
struct StepsOrError {
    // Required in the schema so a model always answers with a list, yet read as empty
    // when a model that cannot plan answers with only an error.
    #[serde(default)]
    steps: Vec<PlannedStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

const SYSTEM: &str = "Plan the query in the fewest steps with the listed tools; invent nothing. If impossible: \
{\"steps\":[],\"error\":\"why\"}. Step: task (self-contained); tool_id (a listed tool; \"a,b\": calls them as \
needed; ask_user: asks the task; exit/fail: ends ok/failed with the task; null: reasons over outputs); inputs \
(outputs read, {\"name\":\"$output\",\"description\":\"..\"}, or constants with \"value\"); output (new \
$snake_case); args (tool arguments if the query fixes all, else null; strings may hold $outputs); condition \
(\"$out.x>1\" or words); for_each (\"$list\": runs per $item).";

/// Plans with one structured LLM call, re-asking while the plan is invalid.
#[derive(Debug, Clone)]
pub struct OneShotPlanner {
    llm: Arc<dyn LlmClient>,
    attempts: u32,
}

impl OneShotPlanner {
    /// A planner that calls `llm` and makes at most `config.planner_attempts` attempts.
    pub fn new(llm: Arc<dyn LlmClient>, config: &Config) -> Self {
        Self { llm, attempts: config.planner_attempts.max(1) }
    }
}

#[async_trait::async_trait]
impl Planner for OneShotPlanner {
    async fn plan(&self, request: PlanningRequest) -> Result<Plan> {
        // A spec (and its schema) per tool, once per plan.
        let offered = Offered(request.tools.iter().map(|t| t.spec()).collect());
        let tool_ids: Vec<String> = offered.0.iter().map(|spec| spec.id.clone()).collect();
        let system = instructions(&offered.0, &request.examples);
        let messages = vec![Message::system(system), Message::user(prompt(&request))];
        // One request, which each attempt extends with what was wrong with the last plan.
        let mut llm_request = LlmRequest::new(ModelRole::Planning, messages).with_output_schema(output_schema());
        let mut usage = Usage::default();
        let mut problems = Vec::new();
        for attempt in 1..=self.attempts {
            let (reply, spent): (StepsOrError, Usage) = structured_ref(self.llm.as_ref(), &llm_request).await?;
            usage += spent;
            if let Some(error) = reply.error.filter(|e| !e.trim().is_empty())
                && reply.steps.is_empty()
            {
                return Err(Error::planning(format!("the planner could not plan: {error}")));
            }
            if reply.steps.is_empty() {
                problems = vec![PlanProblem::NoSteps];
            } else {
                let mut plan = to_plan(&request.query, &tool_ids, &reply.steps);
                plan.output_schema.clone_from(&request.output_schema);
                problems = plan.problems(&offered);
                if problems.is_empty() {
                    tracing::info!(plan = %plan.id, steps = plan.steps.len(), attempt, "plan created");
                    plan.usage = usage;
                    return Ok(plan);
                }
            }
            tracing::warn!(attempt, ?problems, "planner returned an invalid plan; asking again");
            let reply_json = serde_json::to_string(&reply.steps).unwrap_or_default();
            let messages = &mut llm_request.messages;
            messages.push(Message::assistant(format!("{{\"steps\":{reply_json}}}"), Vec::new()));
            let listed: Vec<String> = problems.iter().map(ToString::to_string).collect();
            messages.push(Message::user(format!(
                "That plan is invalid: {}. Reply with a corrected plan.",
                listed.join("; ")
            )));
        }
        Err(Error::Planning { message: format!("no valid plan after {} attempts", self.attempts), problems })
    }
}

/// The specs of the tools offered to the planner, which a plan may use.
struct Offered(Vec<ToolSpec>);

impl ToolLookup for Offered {
    fn has_tool(&self, id: &str) -> bool {
        self.0.iter().any(|spec| spec.id == id || spec.name.eq_ignore_ascii_case(id))
    }
}

/// The shape of the planner's reply.
pub(crate) fn output_schema() -> OutputSchema {
    static MADE: std::sync::LazyLock<OutputSchema> = std::sync::LazyLock::new(|| {
        let mut schema = (*crate::llm::schema_value::<StepsOrError>()).clone();
        strip_defaults(&mut schema);
        OutputSchema::new("StepsOrError", schema)
    });
    MADE.clone()
}

/// Serde fills the defaults in; the model gains nothing from reading them.
fn strip_defaults(schema: &mut Value) {
    match schema {
        Value::Object(node) => {
            node.remove("default");
            node.values_mut().for_each(strip_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_defaults),
        _ => {}
    }
}

fn to_plan(query: &str, tool_ids: &[String], steps: &[PlannedStep]) -> Plan {
    let steps = steps
        .iter()
        .map(|s| Step {
            task: s.task.clone(),
            inputs: s
                .inputs
                .iter()
                .map(|i| Variable { name: i.name.clone(), value: i.value.clone(), description: i.description.clone() })
                .collect(),
            tool_id: None,
            output: s.output.clone(),
            args: s.args.clone(),
            output_schema: None,
            condition: Some(s.condition.trim().to_owned()).filter(|c| !c.is_empty()),
            for_each: Some(s.for_each.trim().to_owned()).filter(|c| !c.is_empty()),
            function: None,
            model: None,
            ask_user: None,
            exit: None,
            tools: Vec::new(),
            max_tool_calls: None,
            plan: None,
            steps: Vec::new(),
        })
        .zip(steps)
        .map(|(step, planned)| with_kind(step, planned.tool_id.as_deref(), tool_ids))
        .collect();
    Plan::new(PlanContext::new(query, tool_ids.iter().cloned()), steps)
}

/// Reads the planner's `tool_id`: a tool; several (`"a,b"`), for a ReAct step;
/// `ask_user`, `exit` or `fail` (unless a tool has that id), for a user step whose
/// task is the question, or an exit step ending COMPLETE or FAILED whose task is the
/// message or the error; or none.
fn with_kind(mut step: Step, tool_id: Option<&str>, tool_ids: &[String]) -> Step {
    let Some(tool_id) = tool_id.map(str::trim).filter(|t| !t.is_empty() && *t != "null") else { return step };
    let listed = tool_ids.iter().any(|id| id == tool_id);
    match tool_id {
        "ask_user" if !listed => step.ask_user = Some(AskUser::Input),
        "exit" if !listed => step.exit = Some(Exit::Complete(step.task.clone())),
        "fail" if !listed => step.exit = Some(Exit::Failed(step.task.clone())),
        several if !listed && several.contains(',') => {
            step.tools = several.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        }
        one => step.tool_id = Some(one.to_owned()),
    }
    step
}

/// The planner's system message: how to plan, the tools with their arguments and
/// the example plans. It is the same for every query planned with one set of tools,
/// so it is the prefix the providers' prompt caches keep (Anthropic's breakpoint
/// and Bedrock's cache point sit at its end).
fn instructions(tools: &[ToolSpec], examples: &[Plan]) -> String {
    // Sized for a few lines per tool: grown from empty, the text was copied at every doubling.
    let mut out = String::with_capacity(SYSTEM.len() + 256 * tools.len());
    out.push_str(SYSTEM);
    out.push_str("\nTools:\n");
    for spec in tools {
        let _ = write!(out, "- {}: {} Arguments: ", spec.id, spec.description);
        write_args(&mut out, &spec.args_schema);
        out.push('\n');
    }
    if !examples.is_empty() {
        out.push_str("Example plans:\n");
        for example in examples {
            let steps = serde_json::to_string(&example.steps).unwrap_or_default();
            let _ = writeln!(out, "Query: {} -> {{\"steps\":{steps}}}", example.plan_context.query);
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// The planner's user message: what changes from query to query (who asks,
/// context, the wanted schema, the date and the query).
fn prompt(request: &PlanningRequest) -> String {
    let mut out = String::new();
    let ec = &request.execution_context;
    if let Some(user) = &ec.end_user_id {
        let _ = writeln!(out, "End user: {user}");
    }
    for (key, value) in &ec.additional_data {
        let _ = writeln!(out, "{key}: {value}");
    }
    for line in ec.planner_system_context_extension.iter().flatten() {
        let _ = writeln!(out, "Note: {line}");
    }
    if let Some(schema) = &request.output_schema {
        let _ = writeln!(out, "The last step must answer with JSON of this schema: {schema}");
    }
    let _ = write!(out, "Today: {}\nQuery: {}", request.today, request.query);
    out
}

/// Appends `name (type, required): description` for each argument, compactly,
/// or `none`. Written straight into the instructions: a string per argument and
/// their join cost more allocations than the rest of the planning prompt.
fn write_args(out: &mut String, schema: &Value) {
    let properties = schema.get("properties").and_then(Value::as_object).filter(|p| !p.is_empty());
    let Some(properties) = properties else { return out.push_str("none") };
    let required = schema.get("required").and_then(Value::as_array);
    for (i, (name, p)) in properties.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "{name} (");
        match p.get("type") {
            None => out.push_str("any"),
            Some(Value::String(kind)) => out.push_str(kind),
            Some(kind) => {
                let _ = write!(out, "{kind}");
            }
        }
        if required.is_some_and(|r| r.iter().any(|v| v == name)) {
            out.push_str(", required");
        }
        out.push(')');
        if let Some(about) = p.get("description").and_then(Value::as_str) {
            let _ = write!(out, ": {about}");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn steps_are_required_in_the_schema_but_an_error_alone_parses() {
        let schema = crate::llm::schema_value::<StepsOrError>();
        assert_eq!(schema["required"], json!(["steps"]));
        let reply: StepsOrError = serde_json::from_value(json!({"error": "no tool books flights"})).unwrap();
        assert!(reply.steps.is_empty());
        assert_eq!(reply.error.as_deref(), Some("no tool books flights"));
    }

    #[test]
    fn planned_conditions_and_loops_reach_the_plan_and_blank_ones_do_not() {
        let steps: Vec<PlannedStep> = serde_json::from_value(json!([
            {"task": "List", "output": "$list", "condition": " "},
            {"task": "Each", "output": "$each", "for_each": "$list", "condition": "$item.urgent"}
        ]))
        .unwrap();
        let plan = to_plan("q", &[], &steps);
        assert_eq!((plan.steps[0].condition.as_deref(), plan.steps[0].for_each.as_deref()), (None, None));
        assert_eq!(plan.steps[1].for_each.as_deref(), Some("$list"));
        assert_eq!(plan.steps[1].condition.as_deref(), Some("$item.urgent"));
        assert!(plan.problems(&crate::tool::InMemoryToolRegistry::new()).is_empty());
    }

    #[test]
    fn the_planners_tool_id_makes_react_user_and_exit_steps() {
        let steps: Vec<PlannedStep> = serde_json::from_value(json!([
            {"task": "Look it up and add", "tool_id": "search_tool, calculator_tool", "output": "$sum"},
            {"task": "Which account?", "tool_id": "ask_user", "output": "$account"},
            {"task": "Nothing to do", "tool_id": "exit", "output": "$done", "condition": "$sum == 0"},
            {"task": "Search", "tool_id": "search_tool", "output": "$found"},
            {"task": "No such account", "tool_id": "fail", "output": "$failed"}
        ]))
        .unwrap();
        let plan = to_plan("q", &["search_tool".into(), "calculator_tool".into()], &steps);
        assert_eq!(
            (plan.steps[0].tools.as_slice(), plan.steps[0].tool_id.as_deref()),
            (&["search_tool".to_owned(), "calculator_tool".to_owned()][..], None)
        );
        assert_eq!((plan.steps[1].ask_user.as_ref(), plan.steps[1].tool_id.as_deref()), (Some(&AskUser::Input), None));
        assert_eq!(plan.steps[2].exit, Some(Exit::Complete("Nothing to do".into())));
        assert_eq!(plan.steps[3].tool_id.as_deref(), Some("search_tool"));
        assert_eq!(plan.steps[4].exit, Some(Exit::Failed("No such account".into())));
        let exit_tool = to_plan("q", &["exit".into()], &steps[2..3]);
        assert_eq!(
            (exit_tool.steps[0].tool_id.as_deref(), exit_tool.steps[0].exit.as_ref()),
            (Some("exit"), None),
            "a real tool wins"
        );
    }

    #[test]
    fn arguments_are_described_compactly() {
        let schema = json!({
            "properties": {"city": {"type": "string", "description": "The city"}, "days": {"type": ["integer", "null"]}},
            "required": ["city"]
        });
        let described = |schema: &Value| {
            let mut out = String::new();
            write_args(&mut out, schema);
            out
        };
        assert_eq!(described(&schema), "city (string, required): The city; days ([\"integer\",\"null\"])");
        assert_eq!(described(&json!({})), "none");
        assert_eq!(described(&json!({"properties": {}})), "none");
    }
}
