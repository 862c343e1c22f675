//! Support triage: for each ticket (a file shipped with the example), classify it
//! with a typed LLM step; draft a reply only for the urgent ones; ask a person before
//! "sending" each reply; return a typed `TriageReport`.
//!
//! ```sh
//! cargo run --example triage -- --demo   # offline, no key: a simulated model answers
//! cargo run --example triage             # with OPENAI_API_KEY (or ANTHROPIC_API_KEY) set
//! ```
//! Prints the plan, the finished workflow, and the typed report as JSON on the last
//! line. In the demo every reply is approved; otherwise each is asked on the terminal.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;

use portia::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, Usage};
use portia::runner::{ApprovalGate, TypedWorkflow};
use portia::testing::estimate_tokens;
use portia::tool::{Tool, ToolError, ToolOutput, ToolRunContext, ToolSpec};
use portia::{Config, InMemoryToolRegistry, Plan, PlanBuilder, Runner, WorkflowState};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const TICKETS: &str = include_str!("triage/tickets.json");

/// One ticket, as the classifying step sees it.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Classification {
    /// The ticket's id.
    ticket_id: String,
    /// Whether it needs a reply today.
    urgent: bool,
    /// outage, billing, account or other.
    category: String,
}

/// A reply to an urgent ticket.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct Draft {
    ticket_id: String,
    reply: String,
}

/// What the run gives back, typed.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
struct TriageReport {
    /// Ids of the urgent tickets.
    urgent: Vec<String>,
    /// Ids of the tickets that were answered.
    replied: Vec<String>,
    /// One line for the support lead.
    note: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let demo = std::env::args().any(|a| a == "--demo");
    match run(demo, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("triage: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the triage, printing the plan, the workflow and the report to `out`. Apart
/// from `main` so that a test can drive it.
pub(crate) async fn run(demo: bool, out: &mut impl Write) -> Result<(), String> {
    let config = if demo { Config::default() } else { Config::from_env().map_err(|e| e.to_string())? };
    let tools =
        InMemoryToolRegistry::new().with(TicketsTool).and_then(|t| t.with(SendTool)).map_err(|e| e.to_string())?;
    let mut builder = Runner::builder(config).tools(tools).hook(ApprovalGate::for_side_effects());
    if demo {
        builder = builder.llm(Arc::new(SimulatedModel));
    }
    let runner = builder.build().map_err(|e| e.to_string())?;
    let plan = triage_plan();
    plan.validate(runner.tools()).map_err(|e| e.to_string())?;
    writeln!(out, "{}", pretty(&plan)).map_err(|e| e.to_string())?;

    let mut run = runner.run_plan_as::<TriageReport>(&plan).await.map_err(|e| e.to_string())?;
    while run.workflow.state() == WorkflowState::NeedClarification {
        for question in run.workflow.outstanding_clarifications().cloned().collect::<Vec<_>>() {
            let approved = demo || ask(&format!("{} (y/n)", question.user_guidance));
            if demo {
                eprintln!("triage: approving in the demo: {}", question.user_guidance);
            }
            runner.resolve_clarification(&question, approved).await.map_err(|e| e.to_string())?;
        }
        let workflow = runner.execute_workflow(run.workflow).await.map_err(|e| e.to_string())?;
        run = TypedWorkflow::from_workflow(workflow).map_err(|e| e.to_string())?;
    }
    writeln!(out, "{}", pretty(&run.workflow)).map_err(|e| e.to_string())?;
    let report = run.into_output().map_err(|e| e.to_string())?;
    writeln!(out, "{}", serde_json::to_string(&report).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// The plan, written in code: the same steps every run.
fn triage_plan() -> Plan {
    PlanBuilder::new("Triage the open support tickets and answer the urgent ones")
        .step("Read the open support tickets", Some("tickets_tool"), "$tickets")
        .args(json!({}))
        .step("Classify the support ticket: is it urgent (needs a reply today), and its category", None, "$classes")
        .for_each("$tickets")
        .step_output::<Classification>()
        .step("Draft a short, kind reply to the urgent ticket", None, "$drafts")
        .for_each("$classes")
        .condition("$item.urgent")
        .input("$tickets", "The tickets")
        .step_output::<Draft>()
        .step("Send the reply to the ticket", Some("send_reply_tool"), "$sent")
        .for_each("$drafts")
        .condition("$item != null")
        .args(json!({"ticket_id": "$item.ticket_id", "reply": "$item.reply"}))
        .step("Report which tickets were urgent and which were answered", None, "$report")
        .input("$classes", "The classifications")
        .input("$sent", "The replies sent (null where none was)")
        .output::<TriageReport>()
        .build()
}

fn ask(question: &str) -> bool {
    eprint!("{question} ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim().eq_ignore_ascii_case("y")
}

fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(could not serialize: {e})"))
}

/// Reads the tickets shipped with the example.
#[derive(Debug)]
struct TicketsTool;

#[portia::async_trait]
impl Tool for TicketsTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("tickets_tool", "Tickets", "Lists the open support tickets.").idempotent(true).side_effects(false)
    }

    async fn run(&self, _ctx: &ToolRunContext, _args: Value) -> Result<ToolOutput, ToolError> {
        let tickets: Value = serde_json::from_str(TICKETS).map_err(|e| ToolError::hard(e.to_string()))?;
        Ok(ToolOutput::value(tickets))
    }
}

/// "Sends" a reply: prints it. It has side effects, so the approval gate asks first.
#[derive(Debug)]
struct SendTool;

#[portia::async_trait]
impl Tool for SendTool {
    fn spec(&self) -> ToolSpec {
        ToolSpec::new("send_reply_tool", "Send reply", "Sends a reply to a support ticket.")
            .args_schema(json!({
                "type": "object",
                "properties": {"ticket_id": {"type": "string"}, "reply": {"type": "string"}},
                "required": ["ticket_id", "reply"]
            }))
            .side_effects(true)
    }

    async fn run(&self, _ctx: &ToolRunContext, args: Value) -> Result<ToolOutput, ToolError> {
        eprintln!("triage: sent to {}: {}", args["ticket_id"], args["reply"]);
        Ok(ToolOutput::value(json!({"sent": args["ticket_id"]})))
    }
}

/// The demo's model: answers each request from what it asks, as a model would.
#[derive(Debug)]
struct SimulatedModel;

#[portia::async_trait]
impl LlmClient for SimulatedModel {
    async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
        let prompt = request.messages.last().map(|m| m.content.clone()).unwrap_or_default();
        let schema = request.output_schema.as_ref().map(|s| s.schema.to_string()).unwrap_or_default();
        let ticket = ["T-101", "T-102", "T-103"].into_iter().find(|id| item_line(&prompt).contains(id));
        let reply = if schema.contains("\"note\"") {
            json!({"answer": {"urgent": ["T-101", "T-103"], "replied": ["T-101", "T-103"],
                   "note": "Two urgent tickets (an outage, a double charge) were answered; one billing change waits."},
                   "summary": "T-101 and T-103 were urgent and answered; T-102 can wait."})
        } else if schema.contains("\"urgent\"") {
            let id = ticket.unwrap_or("T-102");
            let (urgent, category) = match id {
                "T-101" => (true, "outage"),
                "T-103" => (true, "billing"),
                _ => (false, "account"),
            };
            json!({"ticket_id": id, "urgent": urgent, "category": category})
        } else {
            let id = ticket.unwrap_or("T-101");
            json!({"ticket_id": id, "reply": format!("We are on it: {id} has our full attention and you will hear from us today.")})
        };
        let text = reply.to_string();
        let sent = serde_json::to_string(&request.messages).unwrap_or_default() + &schema;
        let usage = Usage::call(estimate_tokens(&sent), estimate_tokens(&text));
        Ok(LlmResponse { usage, ..LlmResponse::text(text) })
    }
}

/// The line of the prompt that shows the loop's current item.
fn item_line(prompt: &str) -> &str {
    prompt.lines().find(|l| l.starts_with("- $item (item")).unwrap_or_default()
}
