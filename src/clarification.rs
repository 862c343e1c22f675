//! Clarifications: questions a workflow puts to a human before it can go on.
//!
//! A tool or an agent raises a [`Clarification`]; the workflow stops in
//! NEED_CLARIFICATION until every open one is resolved with
//! [`Runner::resolve_clarification`](crate::Runner::resolve_clarification), then runs on.
//! In JSON a clarification is one flat object whose `category` says which kind it is,
//! so it reads back as exactly the kind it was written as.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::call::ToolCallKey;
use crate::ids::{ClarificationId, WorkflowId};
use crate::{Error, Result};

/// A question to a human, with the answer once given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Clarification {
    /// The clarification's id.
    #[serde(default)]
    pub id: ClarificationId,
    /// The workflow that raised it.
    pub workflow_id: WorkflowId,
    /// The index of the step that raised it (set by the runner).
    #[serde(default)]
    pub step: Option<usize>,
    /// What to tell the human.
    pub user_guidance: String,
    /// Whether a response has been given.
    #[serde(default)]
    pub resolved: bool,
    /// The human's response (for a value confirmation, the value to confirm until resolved).
    #[serde(default)]
    pub response: Option<Value>,
    /// The journaled tool call the question is about, when it is about one (an
    /// approval, or a call whose outcome is unknown). Answering it does not start the
    /// step afresh: the call is decided again with the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<ToolCallKey>,
    /// The kind of question and its own fields.
    #[serde(flatten)]
    pub kind: ClarificationKind,
}

/// The kinds of clarification, tagged in JSON by `category`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "category")]
#[non_exhaustive]
pub enum ClarificationKind {
    /// A value for an argument is needed.
    #[serde(rename = "Input")]
    Input {
        /// The argument the value is for.
        argument_name: String,
    },
    /// One of a list of options must be chosen.
    #[serde(rename = "Multiple Choice")]
    MultipleChoice {
        /// The argument the choice is for.
        argument_name: String,
        /// The options; a response must be one of them.
        options: Vec<Value>,
    },
    /// A value (in `response`) must be confirmed before it is used.
    #[serde(rename = "Value Confirmation")]
    ValueConfirmation {
        /// The argument the value is for.
        argument_name: String,
    },
    /// The human must do something at a URL (for example sign in); the tool's
    /// `ready` check tells when it is done.
    #[serde(rename = "Action")]
    Action {
        /// Where the human acts.
        action_url: String,
    },
    /// A tool call's outcome is unknown: the run stopped after the call was made and
    /// before its result was recorded, and the tool is not safe to call twice. The
    /// response says what happened; see [`CallVerdict`].
    #[serde(rename = "Tool Call Outcome")]
    ToolCallOutcome {
        /// Which call it was.
        call: ToolCallKey,
        /// The tool called.
        tool_id: String,
        /// The arguments it was called with.
        arguments: Value,
    },
    /// Anything else, described by a name and free data.
    #[serde(rename = "Custom")]
    Custom {
        /// What the clarification is about.
        name: String,
        /// Free data for the front end that shows it.
        #[serde(default)]
        data: Value,
    },
}

impl Clarification {
    fn new(workflow_id: WorkflowId, user_guidance: impl Into<String>, kind: ClarificationKind) -> Self {
        Self {
            id: ClarificationId::new(),
            workflow_id,
            step: None,
            user_guidance: user_guidance.into(),
            resolved: false,
            response: None,
            tool_call: None,
            kind,
        }
    }

    /// Asks for a value for `argument_name`.
    pub fn input(workflow_id: WorkflowId, argument_name: impl Into<String>, user_guidance: impl Into<String>) -> Self {
        Self::new(workflow_id, user_guidance, ClarificationKind::Input { argument_name: argument_name.into() })
    }

    /// Asks the human to pick one of `options` for `argument_name`.
    pub fn multiple_choice(
        workflow_id: WorkflowId,
        argument_name: impl Into<String>,
        options: Vec<Value>,
        user_guidance: impl Into<String>,
    ) -> Self {
        let kind = ClarificationKind::MultipleChoice { argument_name: argument_name.into(), options };
        Self::new(workflow_id, user_guidance, kind)
    }

    /// Asks the human to confirm `value` for `argument_name`.
    pub fn value_confirmation(
        workflow_id: WorkflowId,
        argument_name: impl Into<String>,
        value: Value,
        user_guidance: impl Into<String>,
    ) -> Self {
        let kind = ClarificationKind::ValueConfirmation { argument_name: argument_name.into() };
        Self { response: Some(value), ..Self::new(workflow_id, user_guidance, kind) }
    }

    /// Asks the human to act at `action_url`.
    pub fn action(workflow_id: WorkflowId, action_url: impl Into<String>, user_guidance: impl Into<String>) -> Self {
        Self::new(workflow_id, user_guidance, ClarificationKind::Action { action_url: action_url.into() })
    }

    /// Asks whether a journaled call whose outcome is unknown took effect.
    pub fn tool_call_outcome(call: ToolCallKey, tool_id: impl Into<String>, arguments: Value) -> Self {
        let tool_id = tool_id.into();
        let guidance = format!(
            "The run stopped while {tool_id} was being called with {arguments}, so it is not known whether the call \
             took effect. Answer \"retry\" to call it again, \"done\" if it took effect, or {{\"result\": ...}} \
             with what it returned."
        );
        let kind = ClarificationKind::ToolCallOutcome { call, tool_id, arguments };
        Self { tool_call: Some(call), ..Self::new(call.workflow_id, guidance, kind) }
    }

    /// A clarification of your own kind.
    pub fn custom(
        workflow_id: WorkflowId,
        name: impl Into<String>,
        data: Value,
        user_guidance: impl Into<String>,
    ) -> Self {
        Self::new(workflow_id, user_guidance, ClarificationKind::Custom { name: name.into(), data })
    }

    /// The `category` string this kind is tagged with in JSON.
    pub fn category(&self) -> &'static str {
        match self.kind {
            ClarificationKind::Input { .. } => "Input",
            ClarificationKind::MultipleChoice { .. } => "Multiple Choice",
            ClarificationKind::ValueConfirmation { .. } => "Value Confirmation",
            ClarificationKind::Action { .. } => "Action",
            ClarificationKind::ToolCallOutcome { .. } => "Tool Call Outcome",
            ClarificationKind::Custom { .. } => "Custom",
        }
    }

    /// The argument this clarification supplies, for the argument kinds.
    pub fn argument_name(&self) -> Option<&str> {
        match &self.kind {
            ClarificationKind::Input { argument_name }
            | ClarificationKind::MultipleChoice { argument_name, .. }
            | ClarificationKind::ValueConfirmation { argument_name } => Some(argument_name),
            ClarificationKind::Action { .. }
            | ClarificationKind::ToolCallOutcome { .. }
            | ClarificationKind::Custom { .. } => None,
        }
    }

    /// Records the human's response and marks the clarification resolved.
    ///
    /// # Errors
    /// [`Error::InvalidClarificationResponse`] when a multiple-choice response is not one
    /// of the options, or a tool-call outcome response is not a [`CallVerdict`]; the
    /// clarification is then left unchanged.
    pub fn resolve(&mut self, response: Value) -> Result<()> {
        let refuse = |message: String| Error::InvalidClarificationResponse { clarification_id: self.id, message };
        match &self.kind {
            ClarificationKind::MultipleChoice { options, .. } if !options.contains(&response) => {
                return Err(refuse(format!("{response} is not one of the options {}", Value::Array(options.clone()))));
            }
            ClarificationKind::ToolCallOutcome { .. } if CallVerdict::parse(&response).is_none() => {
                return Err(refuse(format!(
                    "{response} does not say what happened: answer \"retry\", \"done\" or {{\"result\": ...}}"
                )));
            }
            _ => {}
        }
        self.response = Some(response);
        self.resolved = true;
        Ok(())
    }

    /// What a person said of a resolved [`ClarificationKind::ToolCallOutcome`].
    pub fn call_verdict(&self) -> Option<CallVerdict> {
        match (&self.kind, &self.response) {
            (ClarificationKind::ToolCallOutcome { .. }, Some(response)) if self.resolved => {
                CallVerdict::parse(response)
            }
            _ => None,
        }
    }
}

/// A person's answer about a tool call whose outcome was unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CallVerdict {
    /// It did not take effect (or should be made again): call it again. Answered `"retry"`.
    Retry,
    /// It took effect. Answered `"done"` (no result known) or `{"result": value}`.
    Done(Option<Value>),
}

impl CallVerdict {
    /// Reads a response: `"retry"`, `"done"` or `{"result": value}`.
    pub fn parse(response: &Value) -> Option<Self> {
        match response {
            Value::String(s) if s.eq_ignore_ascii_case("retry") => Some(Self::Retry),
            Value::String(s) if s.eq_ignore_ascii_case("done") => Some(Self::Done(None)),
            Value::Object(map) => map.get("result").map(|result| Self::Done(Some(result.clone()))),
            _ => None,
        }
    }
}

/// The latest resolved answer for `argument_name` among `clarifications`, if any.
pub fn latest_answer<'a>(clarifications: &'a [Clarification], argument_name: &str) -> Option<&'a Value> {
    clarifications
        .iter()
        .rev()
        .find(|c| c.resolved && c.argument_name() == Some(argument_name))
        .and_then(|c| c.response.as_ref())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn round_trip(clarification: &Clarification) -> Clarification {
        let text = serde_json::to_string(clarification).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn every_kind_round_trips_losslessly() {
        let wf = WorkflowId::new();
        let all = [
            Clarification::input(wf, "city", "Which city?"),
            Clarification::multiple_choice(wf, "file", vec![json!("a.txt"), json!("b.txt")], "Which file?"),
            Clarification::value_confirmation(wf, "amount", json!(42), "Send 42?"),
            Clarification::action(wf, "https://example.com/auth", "Sign in"),
            Clarification::custom(wf, "approval", json!({"level": 2}), "Approve?"),
            Clarification::tool_call_outcome(
                ToolCallKey { workflow_id: wf, step: 1, attempt: 0, seq: 2 },
                "send_email",
                json!({"to": "a@b.c"}),
            ),
        ];
        for clarification in all {
            assert_eq!(round_trip(&clarification), clarification, "{}", clarification.category());
        }
    }

    #[test]
    fn json_is_flat_and_tagged_by_category() {
        let c = Clarification::multiple_choice(WorkflowId::new(), "file", vec![json!("a")], "Pick");
        let value = serde_json::to_value(&c).unwrap();
        assert_eq!(value["category"], "Multiple Choice");
        assert_eq!(value["argument_name"], "file");
        assert_eq!(value["options"], json!(["a"]));
        assert_eq!(value["resolved"], false);
    }

    #[test]
    fn value_confirmation_stays_value_confirmation() {
        let c = Clarification::value_confirmation(WorkflowId::new(), "x", json!(1), "ok?");
        assert_eq!(round_trip(&c).category(), "Value Confirmation");
    }

    #[test]
    fn multiple_choice_refuses_response_outside_options() {
        let mut c = Clarification::multiple_choice(WorkflowId::new(), "f", vec![json!("a"), json!("b")], "Pick");
        let err = c.resolve(json!("c")).unwrap_err();
        assert!(matches!(err, Error::InvalidClarificationResponse { .. }));
        assert!(err.to_string().contains("\"c\" is not one of the options"), "{err}");
        assert!(!c.resolved);
        c.resolve(json!("b")).unwrap();
        assert!(c.resolved);
        assert_eq!(c.response, Some(json!("b")));
    }

    #[test]
    fn tool_call_outcome_takes_only_a_verdict() {
        let key = ToolCallKey { workflow_id: WorkflowId::new(), step: 0, attempt: 0, seq: 0 };
        let mut c = Clarification::tool_call_outcome(key, "pay", json!({"amount": 5}));
        assert!(c.user_guidance.contains("pay"), "{}", c.user_guidance);
        assert!(c.resolve(json!("maybe")).unwrap_err().to_string().contains("\"retry\""));
        assert_eq!(c.call_verdict(), None);
        c.resolve(json!({"result": {"id": 7}})).unwrap();
        assert_eq!(c.call_verdict(), Some(CallVerdict::Done(Some(json!({"id": 7})))));
        assert_eq!(CallVerdict::parse(&json!("Retry")), Some(CallVerdict::Retry));
        assert_eq!(CallVerdict::parse(&json!("done")), Some(CallVerdict::Done(None)));
    }

    #[test]
    fn unknown_category_is_an_error() {
        let json = json!({"workflow_id": WorkflowId::new(), "user_guidance": "x", "category": "Telepathy"});
        assert!(serde_json::from_value::<Clarification>(json).is_err());
    }
}
