//! `GET /v1/events`: the workflows a caller may see, as they change, over
//! Server-Sent Events, so that a list stays current without reading it again and
//! again.
//!
//! A stream knows the version of each workflow it has told of. It looks again at a
//! workflow as soon as this process hears of a change to it: a run here announces
//! an event, or a request here creates or deletes it. Changes made by other
//! processes sharing the store (workers, the command line) reach it every
//! [`RECHECK`], when it reads the caller's unfinished workflows (a finished one no
//! longer changes) and how many there are in all: only when that number is not the
//! one it knows does it read the whole listing again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::auth::Caller;
use super::errors::{ApiError, ErrorBody};
use super::router::AppState;
use crate::events::EventStream;
use crate::ids::WorkflowId;
use crate::storage::WorkflowQuery;
use crate::workflow::{Workflow, WorkflowState};

/// How often a stream re-reads the caller's listing, for changes made by other processes.
const RECHECK: Duration = Duration::from_secs(5);

/// How many workflows a read takes from the store at a time.
const LISTING_PAGE: usize = 500;

/// Where requests of this process say that they created or deleted a workflow.
pub(super) type Touched = broadcast::Sender<WorkflowId>;

/// A channel for [`Touched`] news; a stream that falls this far behind re-reads the listing.
pub(super) fn touched() -> Touched {
    broadcast::channel(256).0
}

/// The workflows the caller may see, as they change: first `ready` once the
/// stream listens (a client reads the list then), then `workflow` with a
/// workflow's summary (as `GET /v1/workflows` lists it) each time one is created
/// or changes, and `workflow_deleted` with `{"id": ...}` when one is deleted.
#[utoipa::path(get, path = "/v1/events", tag = "workflows",
    responses((status = 200, description = "`ready`, then `workflow` and `workflow_deleted` events",
               content_type = "text/event-stream", body = String),
              (status = "4XX", body = ErrorBody)))]
pub(super) async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let mut watch = Watch {
        local: Some(state.runner.subscribe_unwatching()),
        touched: state.touched.subscribe(),
        state,
        caller,
        known: HashMap::new(),
        ready: VecDeque::new(),
        next_recheck: Instant::now() + RECHECK,
    };
    watch.relist(false).await?;
    watch.ready.push_back(Event::default().event("ready").data("{}"));
    let stream =
        futures_util::stream::unfold(
            watch,
            |mut watch| async move { watch.next().await.map(|event| (Ok(event), watch)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One stream's view of the listing.
struct Watch {
    state: AppState,
    caller: Caller,
    /// Each workflow told of (or there when the stream started), as it was then.
    known: HashMap<WorkflowId, Known>,
    ready: VecDeque<Event>,
    /// The runner's events, heard at once; `None` once they ended.
    local: Option<EventStream>,
    touched: broadcast::Receiver<WorkflowId>,
    next_recheck: Instant,
}

/// What a stream knows of a workflow it told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    version: u64,
    finished: bool,
}

impl Known {
    fn of(workflow: &Workflow) -> Self {
        Self { version: workflow.version(), finished: workflow.state().is_terminal() }
    }
}

/// What woke a stream.
enum Woken {
    /// Something may have happened to this workflow.
    Workflow(WorkflowId),
    /// News may have been missed, or it is time to re-read the listing.
    Recheck,
    /// Nothing to look at.
    Nothing,
}

impl Watch {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if *self.state.stopping.borrow() {
                return None;
            }
            let result = match self.wait().await {
                Woken::Workflow(id) => self.look_at(id).await,
                Woken::Recheck => self.recheck().await,
                Woken::Nothing => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "workflow change stream ended");
                return None;
            }
        }
    }

    async fn wait(&mut self) -> Woken {
        let mut stopping = self.state.stopping.clone();
        let recheck = tokio::time::sleep_until(self.next_recheck);
        let local = async {
            match &mut self.local {
                Some(local) => local.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = local => match event {
                // A streamed reply's pieces change nothing listed.
                Some(Ok(event)) if event.kind.is_live_only() => Woken::Nothing,
                Some(Ok(event)) => Woken::Workflow(event.workflow_id),
                Some(Err(_missed)) => Woken::Recheck,
                None => {
                    self.local = None;
                    Woken::Nothing
                }
            },
            id = self.touched.recv() => match id {
                Ok(id) => Woken::Workflow(id),
                Err(_) => Woken::Recheck,
            },
            () = recheck => Woken::Recheck,
            _ = stopping.changed() => Woken::Nothing,
        }
    }

    /// Tells of workflow `id` if it changed since last told, or is gone. One that
    /// cannot be read is left to the next re-read, which lists it as unreadable.
    async fn look_at(&mut self, id: WorkflowId) -> crate::Result<()> {
        match self.state.runner.get_workflow(id).await {
            Ok(workflow) if self.caller.sees(workflow.execution_context().end_user_id.as_deref()) => {
                self.tell(workflow).await;
            }
            Ok(_) => {}
            Err(crate::Error::WorkflowNotFound(_)) => self.tell_deleted(id),
            Err(e) => tracing::debug!(workflow = %id, error = %e, "a changed workflow could not be read"),
        }
        Ok(())
    }

    /// Tells of what other processes changed since the last look: the caller's
    /// unfinished workflows are read again, and those known unfinished that are no
    /// longer listed so are looked at one by one (finished, or deleted). When the
    /// caller has more or fewer workflows than known, the whole listing is read.
    async fn recheck(&mut self) -> crate::Result<()> {
        self.next_recheck = Instant::now() + RECHECK;
        let mine = WorkflowQuery::default().end_user(self.caller.end_user_id.clone());
        let count = self.state.runner.list_workflows(&mine.clone().page_size(1)).await?.count;
        if count != self.known.len() {
            return self.relist(true).await;
        }
        let mut unfinished = HashSet::new();
        for state in WorkflowState::ALL.into_iter().filter(|s| !s.is_terminal()) {
            for workflow in self.read_all(mine.clone().state(Some(state))).await? {
                unfinished.insert(workflow.id());
                self.tell(workflow).await;
            }
        }
        let left: Vec<WorkflowId> = self
            .known
            .iter()
            .filter(|(id, known)| !known.finished && !unfinished.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in left {
            self.look_at(id).await?;
        }
        Ok(())
    }

    /// Reads the caller's whole listing and tells of what changed since; with
    /// `tell` false, only learns what is there.
    async fn relist(&mut self, tell: bool) -> crate::Result<()> {
        let mine = WorkflowQuery::default().end_user(self.caller.end_user_id.clone());
        let listed: HashMap<WorkflowId, Workflow> =
            self.read_all(mine).await?.into_iter().map(|w| (w.id(), w)).collect();
        if !tell {
            self.known = listed.iter().map(|(id, w)| (*id, Known::of(w))).collect();
            return Ok(());
        }
        let gone: Vec<WorkflowId> = self.known.keys().filter(|id| !listed.contains_key(id)).copied().collect();
        for id in gone {
            self.tell_deleted(id);
        }
        for workflow in listed.into_values() {
            self.tell(workflow).await;
        }
        Ok(())
    }

    /// Every readable workflow `query` lists, page by page.
    async fn read_all(&self, query: WorkflowQuery) -> crate::Result<Vec<Workflow>> {
        let query = query.page_size(LISTING_PAGE);
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let found = self.state.runner.list_workflows(&query.clone().page(page)).await?;
            all.extend(found.results);
            if found.current_page >= found.total_pages {
                return Ok(all);
            }
            page += 1;
        }
    }

    async fn tell(&mut self, workflow: Workflow) {
        let known = Known::of(&workflow);
        if self.known.get(&workflow.id()) == Some(&known) {
            return;
        }
        self.known.insert(workflow.id(), known);
        let summary = self.state.summary(workflow).await;
        let data = serde_json::to_string(&summary).unwrap_or_default();
        self.ready.push_back(Event::default().event("workflow").data(data));
    }

    fn tell_deleted(&mut self, id: WorkflowId) {
        if self.known.remove(&id).is_some() {
            self.ready.push_back(Event::default().event("workflow_deleted").data(json!({"id": id}).to_string()));
        }
    }
}
