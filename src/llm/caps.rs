//! Completion caps that fit: each call's `max_tokens` is its purpose's cap, lowered
//! so that the prompt and the cap fit the model's context window where that is
//! known or configured; a server that still refuses for context length gets the
//! call once more with a cap that fits.
//!
//! Servers that check the prompt plus the cap against the context (vLLM, OpenAI)
//! answer 400 when they exceed it; others (llama.cpp) cut the reply short.

use super::LlmError;

/// Tokens kept free between the estimated prompt and the context's end: the
/// estimate (four characters a token) is rough, and chat templates add their own.
const MARGIN_TOKENS: u32 = 64;

/// The smallest cap worth sending: a reply needs room to say anything.
pub(crate) const MIN_CAP: u32 = 256;

/// The context windows of well-known models, in tokens, by name prefix.
const KNOWN_CONTEXTS: [(&str, u32); 13] = [
    ("gpt-4.1", 1_047_576),
    ("gpt-4o", 128_000),
    ("o3", 200_000),
    ("o4-mini", 200_000),
    ("claude-", 200_000),
    ("gemini-2.5", 1_048_576),
    ("gemini-2.0", 1_048_576),
    ("mistral-large", 128_000),
    ("llama-3.3-70b", 128_000),
    // Bedrock's model ids, and its cross-region inference profiles (`us.anthropic.`).
    ("anthropic.claude-", 200_000),
    ("us.anthropic.claude-", 200_000),
    ("amazon.nova-micro", 128_000),
    ("amazon.nova-", 300_000),
];

/// The context window of `model` when it is a well-known one.
pub(crate) fn known_context(model: &str) -> Option<u32> {
    KNOWN_CONTEXTS.iter().find(|(prefix, _)| model.starts_with(prefix)).map(|(_, tokens)| *tokens)
}

/// `cap`, lowered so that a prompt of `prompt` estimated tokens and the reply fit
/// `context` (never below [`MIN_CAP`], and never above `cap`).
pub(crate) fn fit(cap: u32, context: Option<u32>, prompt: u32) -> u32 {
    let Some(context) = context else { return cap };
    // A quarter more than the estimate: tokenizers split JSON and code finer than prose.
    let prompt = prompt.saturating_add(prompt / 4).saturating_add(MARGIN_TOKENS);
    cap.min(context.saturating_sub(prompt).max(MIN_CAP))
}

/// Whether `error` is a refusal because the prompt and the cap exceed the context.
pub(crate) fn is_context_overflow(error: &LlmError) -> bool {
    let LlmError::Http { status: 400 | 413 | 422, message, .. } = error else { return false };
    let message = message.to_lowercase();
    [
        "context length",
        "context_length",
        "context window",
        "context size",
        "maximum context",
        "prompt is too long",
        "too many tokens",
        "max_tokens",
        "max_completion_tokens",
        "maxoutputtokens",
    ]
    .iter()
    .any(|phrase| message.contains(phrase))
}

/// A cap that fits after a context-length refusal of `sent`: from the context and
/// prompt sizes the server's message gives when it gives them (vLLM and OpenAI:
/// "maximum context length is 8192 tokens. However, you requested 8757 tokens (565
/// in the messages, 8192 in the completion)"), else from `context` and the
/// `prompt` estimate, else a quarter of what was sent. `None` when nothing smaller fits.
pub(crate) fn after_refusal(error: &LlmError, sent: u32, context: Option<u32>, prompt: u32) -> Option<u32> {
    let LlmError::Http { message, .. } = error else { return None };
    let message = message.to_lowercase();
    let stated_context = number_after(&message, "context length is ").or(context);
    let stated_prompt =
        number_before(&message, " in the messages").or_else(|| number_before(&message, " in the prompt"));
    let cap = match (stated_context, stated_prompt) {
        (Some(context), Some(prompt)) => context.saturating_sub(prompt).saturating_sub(MARGIN_TOKENS / 4),
        (Some(context), None) => fit(sent, Some(context), prompt),
        (None, _) => sent / 4,
    };
    let cap = cap.min(sent.saturating_sub(1));
    (cap >= MIN_CAP.min(sent.saturating_sub(1)) && cap > 0).then_some(cap)
}

fn number_after(text: &str, marker: &str) -> Option<u32> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == ',').filter(|c| *c != ',').collect();
    digits.parse().ok()
}

fn number_before(text: &str, marker: &str) -> Option<u32> {
    let head = &text[..text.find(marker)?];
    let digits: String = head.chars().rev().take_while(char::is_ascii_digit).collect();
    digits.chars().rev().collect::<String>().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(message: &str) -> LlmError {
        LlmError::Http {
            provider: "openai-compatible".into(),
            model: "m".into(),
            status: 400,
            message: message.into(),
            retry_after: None,
            key_var: None,
        }
    }

    #[test]
    fn caps_fit_the_context_when_it_is_known() {
        assert_eq!(fit(8192, None, 565), 8192);
        assert_eq!(fit(8192, Some(8192), 565), 8192 - 565 - 141 - 64);
        assert_eq!(fit(2048, Some(8192), 565), 2048);
        assert_eq!(fit(8192, Some(1000), 5000), MIN_CAP);
        assert_eq!(known_context("claude-haiku-4-5"), Some(200_000));
        assert_eq!(known_context("my-finetune"), None);
    }

    #[test]
    fn a_context_refusal_is_recognised_and_answered_with_a_cap_that_fits() {
        let vllm = refusal(
            "This model's maximum context length is 8192 tokens. However, you requested 8757 tokens \
             (565 in the messages, 8192 in the completion). Please reduce the length of the messages or completion.",
        );
        assert!(is_context_overflow(&vllm));
        assert_eq!(after_refusal(&vllm, 8192, None, 500), Some(8192 - 565 - 16));
        let llama = refusal("the request exceeds the available context size, try increasing it");
        assert!(is_context_overflow(&llama));
        assert_eq!(after_refusal(&llama, 8192, Some(4096), 565), Some(fit(8192, Some(4096), 565)));
        assert_eq!(after_refusal(&llama, 8192, None, 565), Some(2048));
        assert!(!is_context_overflow(&refusal("Invalid schema for response_format")));
        let LlmError::Http { provider, model, message, .. } = refusal("maximum context length") else { unreachable!() };
        let server_error = LlmError::Http { provider, model, status: 500, message, retry_after: None, key_var: None };
        assert!(!is_context_overflow(&server_error));
    }
}
