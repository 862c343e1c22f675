//! Token streaming: whether a call streams, and where its pieces go.
//!
//! A streamed reply is assembled into the same [`LlmResponse`](super::LlmResponse)
//! as an unstreamed one (text, tool calls, exact usage), so nothing above the
//! provider changes. Whoever wants the pieces as they come (the runner, for its
//! subscribers) runs the call inside [`Deltas::scope`]; the built-in providers
//! stream exactly when such a scope is around them, and otherwise send the plain
//! request. The scope travels with the task rather than through every layer, so
//! [`Retry`](super::Retry), [`Fallback`](super::Fallback), rate limits and a
//! client's own layers pass it on untouched. A client of one's own streams the
//! same way, through [`Deltas::current`].

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::macros::config_enum;

config_enum!(
    /// When LLM replies are streamed, chosen by `PORTIA_LLM_STREAM`.
    ///
    /// Streaming changes what a subscriber sees, not what a run does: the reply is
    /// assembled whole either way. Structured replies (plans, argument checks) are
    /// never streamed, as their JSON is nothing to show a person.
    #[derive(Default)]
    StreamMode {
        /// Stream replies (their text and tool calls) while anyone subscribes to the runner's events
        /// ([`Runner::subscribe`](crate::Runner::subscribe), a `portia serve` event
        /// stream, `portia run` on a terminal). The default: a watcher sees the
        /// answer come in, and an unwatched runner sends the plain request as before.
        #[default]
        Auto => ["auto", "when-watched"],
        /// Stream every reply but structured ones, watched or not.
        On => ["on", "always", "true", "1"],
        /// Never stream.
        Off => ["off", "never", "false", "0"],
    }
);

impl StreamMode {
    /// Whether a call streams under this mode, given whether anyone is watching.
    pub(crate) fn streams(self, watched: bool) -> bool {
        match self {
            Self::Auto => watched,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// A piece of a streamed reply, as a provider hands it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delta {
    /// More of the reply's text.
    Text(String),
    /// More of a tool call's arguments.
    ToolArguments {
        /// Which of the reply's tool calls, as the provider numbers them.
        index: usize,
        /// The tool the model calls.
        tool: String,
        /// The next piece of the arguments' JSON text (empty when the call is first named).
        arguments: String,
    },
    /// An attempt that had sent pieces failed and the call starts over: the text
    /// and tool calls sent so far are void.
    Restarted,
}

tokio::task_local! {
    static DELTAS: Deltas;
}

/// Where the pieces of a streamed reply (its text, and its tool calls' arguments) go: what an [`LlmClient`](super::LlmClient)
/// of one's own uses to stream, as the built-in providers do.
///
/// The runner asks for a stream when someone watches (see [`StreamMode`]); a client
/// then finds [`Deltas::current`] set during its `chat` call, hands it each piece
/// of text and of tool-call arguments as it arrives, and still returns the whole reply. Outside such a call
/// there is none, and the client sends its plain request.
///
/// ```
/// use portia::llm::{Deltas, LlmClient, LlmError, LlmRequest, LlmResponse};
///
/// #[derive(Debug)]
/// struct Echo;
///
/// #[portia::async_trait]
/// impl LlmClient for Echo {
///     async fn chat(&self, request: LlmRequest) -> Result<LlmResponse, LlmError> {
///         let words = ["Hello", ", ", "world"];
///         if let Some(stream) = Deltas::current() {
///             stream.begin_attempt();
///             for word in words {
///                 stream.text(word);
///             }
///         }
///         Ok(LlmResponse::text(words.concat()))
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Deltas {
    send: Arc<dyn Fn(Delta) + Send + Sync>,
    /// Whether the current attempt has sent any piece (so a new attempt voids it).
    sent: Arc<AtomicBool>,
    /// The tool calls (by index) the current attempt has named with an empty piece.
    named: Arc<Mutex<HashSet<usize>>>,
}

impl fmt::Debug for Deltas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deltas").field("sent", &self.sent.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Deltas {
    /// Pieces handed to `send`.
    pub(crate) fn new(send: impl Fn(Delta) + Send + Sync + 'static) -> Self {
        Self { send: Arc::new(send), sent: Arc::default(), named: Arc::default() }
    }

    /// Runs `call` with its replies streamed to these deltas.
    pub(crate) async fn scope<F: Future>(self, call: F) -> F::Output {
        DELTAS.scope(self, call).await
    }

    /// The stream of the call this task is making, if its caller wants one.
    #[must_use]
    pub fn current() -> Option<Self> {
        DELTAS.try_with(Clone::clone).ok()
    }

    /// Starts an attempt at the reply: call it before each try. If an earlier try
    /// had sent pieces, subscribers are told to drop them.
    pub fn begin_attempt(&self) {
        self.named.lock().unwrap_or_else(PoisonError::into_inner).clear();
        if self.sent.swap(false, Ordering::Relaxed) {
            (self.send)(Delta::Restarted);
        }
    }

    /// Hands on more of the reply's text, as it arrives.
    pub fn text(&self, text: &str) {
        if !text.is_empty() {
            self.sent.store(true, Ordering::Relaxed);
            (self.send)(Delta::Text(text.to_owned()));
        }
    }

    /// Hands on the next piece of the arguments of the reply's tool call `index`
    /// (the provider's numbering: the same for every piece of one call), which
    /// calls `tool`. The pieces of one call, joined, are its arguments as JSON text.
    /// Call it with an empty piece as soon as the call is named, so that watchers
    /// see it start before its arguments come; a call's first piece is preceded by
    /// an empty one all the same (a watcher that missed it knows it joined late).
    pub fn tool_arguments(&self, index: usize, tool: &str, arguments: &str) {
        self.sent.store(true, Ordering::Relaxed);
        let newly_named = self.named.lock().unwrap_or_else(PoisonError::into_inner).insert(index);
        let piece =
            |arguments: &str| Delta::ToolArguments { index, tool: tool.to_owned(), arguments: arguments.to_owned() };
        if newly_named && !arguments.is_empty() {
            (self.send)(piece(""));
        }
        (self.send)(piece(arguments));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// What `stream` sends to a watcher, inside a call's scope.
    async fn sent(stream: impl FnOnce(Deltas)) -> Vec<Delta> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let deltas = Deltas::new(move |d| sink.lock().unwrap().push(d));
        deltas.scope(async { stream(Deltas::current().unwrap()) }).await;
        std::mem::take(&mut *seen.lock().unwrap())
    }

    #[tokio::test]
    async fn a_new_attempt_after_text_is_a_restart_and_only_then() {
        let seen = sent(|deltas| {
            deltas.begin_attempt();
            deltas.begin_attempt();
            deltas.text("Hel");
            deltas.begin_attempt();
            deltas.text("Hello");
        })
        .await;
        assert_eq!(seen, [Delta::Text("Hel".into()), Delta::Restarted, Delta::Text("Hello".into())]);
        assert!(Deltas::current().is_none(), "outside the scope nothing streams");
    }

    /// Watchers tell a call they joined late by a first piece that is not empty, so
    /// every call starts with an empty one, even a client's that sends none.
    #[tokio::test]
    async fn every_tool_call_of_an_attempt_is_named_with_an_empty_piece_first() {
        let seen = sent(|deltas| {
            deltas.begin_attempt();
            deltas.tool_arguments(0, "t", "{\"a\":");
            deltas.tool_arguments(0, "t", " 1}");
            deltas.tool_arguments(1, "t", "");
            deltas.tool_arguments(1, "t", "{}");
            deltas.begin_attempt();
            deltas.tool_arguments(0, "t", "{}");
        })
        .await;
        let pieces: Vec<String> = seen
            .iter()
            .map(|d| match d {
                Delta::ToolArguments { index, arguments, .. } => format!("{index}:{arguments}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(pieces, ["0:", "0:{\"a\":", "0: 1}", "1:", "1:{}", "Restarted", "0:", "0:{}"]);
    }

    #[test]
    fn auto_streams_only_when_watched() {
        assert!(StreamMode::default().streams(true) && !StreamMode::default().streams(false));
        assert!(StreamMode::On.streams(false) && !StreamMode::Off.streams(true));
        assert_eq!("always".parse::<StreamMode>(), Ok(StreamMode::On));
    }
}
