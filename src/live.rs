//! Questions a running tool puts to a person while its call stays open.
//!
//! A tool asks with [`ToolRunContext::ask`](crate::tool::ToolRunContext::ask). The
//! question waits in the runner's [`LiveQuestions`] until
//! [`Runner::resolve_clarification`](crate::Runner::resolve_clarification) answers it,
//! the tool's wait ends or the workflow is cancelled. Each question asked this way is
//! kept in its step's [`StepQuestions`], so the runner stores it with the step's
//! outcome: answered, as a record (and so that a call made again after a crash finds
//! the answer); unanswered, as the question the workflow then waits for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::call::ToolCallKey;
use crate::clarification::Clarification;
use crate::events::{EventKind, RunEvents};
use crate::ids::ClarificationId;

/// The questions waiting for a person in this process, by id: one registry per runner.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveQuestions(Arc<Mutex<HashMap<ClarificationId, Waiting>>>);

#[derive(Debug)]
struct Waiting {
    question: Clarification,
    answer: oneshot::Sender<Value>,
}

impl LiveQuestions {
    /// Gives `response` to the tool waiting on question `id`. `Ok(true)` when it was
    /// delivered, `Ok(false)` when no tool here waits on that question (any more).
    ///
    /// # Errors
    /// [`Error::InvalidClarificationResponse`](crate::Error::InvalidClarificationResponse)
    /// when the response does not fit the question; it keeps waiting.
    pub(crate) fn answer(&self, id: ClarificationId, response: &Value) -> Result<bool> {
        let mut waiting = self.lock();
        let Some(entry) = waiting.remove(&id) else { return Ok(false) };
        if let Err(e) = entry.question.clone().resolve(response.clone()) {
            waiting.insert(id, entry);
            return Err(e);
        }
        // Sent under the lock: a tool whose wait ends meanwhile finds it (see `Registered::close`).
        Ok(entry.answer.send(response.clone()).is_ok())
    }

    /// A handle for one tool call to ask through, announcing on `events` and keeping
    /// what it asks in `step`.
    pub(crate) fn asker(&self, events: RunEvents, call: ToolCallKey, step: StepQuestions) -> Asker {
        Asker(Some(CallAsker { live: self.clone(), events, call, step }))
    }

    fn register(&self, question: Clarification) -> Registered {
        let (answer, receiver) = oneshot::channel();
        self.lock().insert(question.id, Waiting { question: question.clone(), answer });
        Registered { live: self.clone(), id: question.id, receiver }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClarificationId, Waiting>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A registered question; dropping it withdraws the question.
struct Registered {
    live: LiveQuestions,
    id: ClarificationId,
    receiver: oneshot::Receiver<Value>,
}

impl Registered {
    /// Withdraws the question, returning the answer that came before it was withdrawn.
    fn close(mut self) -> Option<Value> {
        let _withdrawn = self.live.lock().remove(&self.id);
        self.receiver.try_recv().ok()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.live.lock().remove(&self.id);
    }
}

/// What one tool call may ask a person: nothing outside a run.
#[derive(Debug, Clone, Default)]
pub(crate) struct Asker(Option<CallAsker>);

#[derive(Debug, Clone)]
struct CallAsker {
    live: LiveQuestions,
    events: RunEvents,
    call: ToolCallKey,
    step: StepQuestions,
}

impl Asker {
    /// Asks `question` and waits up to `wait` for the answer; `None` at once outside
    /// a run or for a zero wait, and as soon as `cancellation` fires.
    pub(crate) async fn ask(
        &self,
        mut question: Clarification,
        wait: Duration,
        cancellation: &CancellationToken,
    ) -> Option<Value> {
        let asker = self.0.as_ref().filter(|_| !wait.is_zero())?;
        question.workflow_id = asker.call.workflow_id;
        question.step = Some(asker.call.step);
        let mut registered = asker.live.register(question.clone());
        asker.step.keep(question.clone());
        asker
            .events
            .emit(question.workflow_id, EventKind::ClarificationRaised { clarification: Box::new(question.clone()) });
        let answered = tokio::select! {
            answer = &mut registered.receiver => answer.ok(),
            () = tokio::time::sleep(wait) => None,
            () = cancellation.cancelled() => None,
        };
        let response = answered.or_else(|| registered.close())?;
        // Validated when it was given, so resolving the same question cannot fail.
        question.resolve(response.clone()).ok()?;
        asker.step.keep(question.clone());
        let resolved = EventKind::ClarificationResolved { clarification_id: question.id, response: response.clone() };
        asker.events.emit(question.workflow_id, resolved);
        Some(response)
    }
}

/// The questions one step asked live, each as it stands now (answered or not).
#[derive(Debug, Clone, Default)]
pub(crate) struct StepQuestions(Arc<Mutex<Vec<Clarification>>>);

impl StepQuestions {
    /// Keeps `question`, replacing an earlier state of it.
    fn keep(&self, question: Clarification) {
        let mut kept = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match kept.iter_mut().find(|c| c.id == question.id) {
            Some(earlier) => *earlier = question,
            None => kept.push(question),
        }
    }

    /// Every question kept so far, leaving none.
    pub(crate) fn take(&self) -> Vec<Clarification> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::events::EventSink;
    use crate::ids::WorkflowId;

    fn setup() -> (LiveQuestions, Asker, StepQuestions, crate::events::EventStream) {
        let live = LiveQuestions::default();
        let sink = EventSink::new(16);
        let stream = sink.subscribe(None);
        let step = StepQuestions::default();
        let call = ToolCallKey { workflow_id: WorkflowId::new(), step: 2, attempt: 0, seq: 0 };
        let asker = live.asker(sink.for_run(), call, step.clone());
        (live, asker, step, stream)
    }

    async fn raised(stream: &mut crate::events::EventStream) -> Clarification {
        match stream.next().await.unwrap().unwrap().kind {
            EventKind::ClarificationRaised { clarification } => *clarification,
            other => panic!("expected a raised question, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_answer_given_while_waiting_is_returned_and_kept_resolved() {
        let (live, asker, step, mut stream) = setup();
        let question = Clarification::multiple_choice(WorkflowId::new(), "colour", vec![json!("red")], "Pick");
        let token = CancellationToken::new();
        let asking = tokio::spawn(async move { asker.ask(question, Duration::from_secs(3600), &token).await });
        let asked = raised(&mut stream).await;
        assert_eq!(asked.step, Some(2), "stamped with the asking step");
        let refused = live.answer(asked.id, &json!("blue")).unwrap_err();
        assert!(refused.to_string().contains("not one of the options"), "{refused}");
        assert!(live.answer(asked.id, &json!("red")).unwrap(), "still waiting after a refused answer");
        assert_eq!(asking.await.unwrap(), Some(json!("red")));
        let kept = step.take();
        assert!(kept.len() == 1 && kept[0].resolved && kept[0].response == Some(json!("red")), "{kept:?}");
        let resolved = stream.next().await.unwrap().unwrap().kind;
        assert_eq!(resolved, EventKind::ClarificationResolved { clarification_id: asked.id, response: json!("red") });
        assert!(!live.answer(asked.id, &json!("red")).unwrap(), "answered questions are no longer waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_question_is_withdrawn_when_the_wait_ends() {
        let (live, asker, step, mut stream) = setup();
        let question = Clarification::input(WorkflowId::new(), "name", "Who?");
        let answer = asker.ask(question, Duration::from_secs(30), &CancellationToken::new()).await;
        assert_eq!(answer, None);
        let asked = raised(&mut stream).await;
        assert!(!live.answer(asked.id, &json!("Ada")).unwrap(), "withdrawn");
        assert_eq!(step.take(), vec![asked], "kept unanswered");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_ends_the_wait_at_once() {
        let (_live, asker, _step, _stream) = setup();
        let token = CancellationToken::new();
        token.cancel();
        let started = tokio::time::Instant::now();
        let question = Clarification::input(WorkflowId::new(), "name", "Who?");
        assert_eq!(asker.ask(question, Duration::from_secs(3600), &token).await, None);
        assert_eq!(started.elapsed(), Duration::ZERO, "no time passed, not even paused time");
    }

    #[tokio::test]
    async fn outside_a_run_or_with_no_wait_nobody_is_asked() {
        let question = Clarification::input(WorkflowId::new(), "name", "Who?");
        let token = CancellationToken::new();
        assert_eq!(Asker::default().ask(question.clone(), Duration::from_secs(3600), &token).await, None);
        let (_live, asker, step, _stream) = setup();
        assert_eq!(asker.ask(question, Duration::ZERO, &token).await, None);
        assert!(step.take().is_empty());
    }
}
