//! The provider catalogue: which providers exist, their default models, base URLs
//! and key variables, and how a model is named ([`ModelRole`], [`ModelRef`]).

use serde::{Deserialize, Serialize};

use crate::macros::config_enum;

config_enum!(
    /// The LLM provider, chosen by `PORTIA_LLM_PROVIDER`.
    LlmProvider {
        /// OpenAI's Chat Completions API.
        OpenAi => ["openai", "open-ai"],
        /// Anthropic's Messages API.
        Anthropic => ["anthropic", "claude"],
        /// Mistral's OpenAI-compatible API.
        Mistral => ["mistral", "mistralai"],
        /// Any OpenAI-compatible server at `PORTIA_LLM_BASE_URL` (vLLM, LM Studio, ...).
        OpenAiCompatible => ["openai-compatible", "compatible"],
        /// A local Ollama server.
        Ollama => ["ollama"],
        /// Groq's OpenAI-compatible API.
        Groq => ["groq"],
        /// OpenRouter's OpenAI-compatible API.
        OpenRouter => ["openrouter"],
    }
);

impl LlmProvider {
    /// The model used when none is configured.
    pub fn default_model(self) -> &'static str {
        match self {
            Self::OpenAi => "gpt-4.1-mini",
            Self::Anthropic => "claude-sonnet-4-5",
            Self::Mistral => "mistral-large-latest",
            Self::OpenAiCompatible | Self::Ollama => "llama3.1",
            Self::Groq => "llama-3.3-70b-versatile",
            Self::OpenRouter => "openai/gpt-4.1-mini",
        }
    }

    /// The base URL used when none is configured.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::OpenAi => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Mistral => "https://api.mistral.ai/v1",
            Self::OpenAiCompatible | Self::Ollama => "http://localhost:11434/v1",
            Self::Groq => "https://api.groq.com/openai/v1",
            Self::OpenRouter => "https://openrouter.ai/api/v1",
        }
    }

    /// The environment variable holding this provider's API key, if it needs one.
    pub fn api_key_var(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("OPENAI_API_KEY"),
            Self::Anthropic => Some("ANTHROPIC_API_KEY"),
            Self::Mistral => Some("MISTRAL_API_KEY"),
            Self::Groq => Some("GROQ_API_KEY"),
            Self::OpenRouter => Some("OPENROUTER_API_KEY"),
            Self::OpenAiCompatible | Self::Ollama => None,
        }
    }

    /// Whether the provider speaks the OpenAI Chat Completions protocol.
    pub fn is_openai_protocol(self) -> bool {
        self != Self::Anthropic
    }
}

/// What an LLM call is for; each purpose can use its own model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelRole {
    /// Writing plans.
    Planning,
    /// Running steps.
    Execution,
    /// Summarizing step and final outputs.
    Summary,
}

/// A provider and one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// The provider that serves the model.
    pub provider: LlmProvider,
    /// The model's name as the provider knows it.
    pub model: String,
}

/// Splits `provider/model` when the prefix names a provider; otherwise the whole
/// string is the model (OpenRouter models contain slashes of their own).
pub(crate) fn split_provider(name: &str) -> (Option<LlmProvider>, &str) {
    match name.split_once('/') {
        Some((head, model)) => match head.parse() {
            Ok(provider) => (Some(provider), model),
            Err(_) => (None, name),
        },
        None => (None, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_prefix_is_split_off_and_any_other_slash_is_kept() {
        assert_eq!(split_provider("anthropic/claude-haiku-4-5"), (Some(LlmProvider::Anthropic), "claude-haiku-4-5"));
        assert_eq!(split_provider("meta/llama-4"), (None, "meta/llama-4"));
        assert_eq!(split_provider("gpt-4.1-mini"), (None, "gpt-4.1-mini"));
    }

    #[test]
    fn only_anthropic_speaks_its_own_protocol() {
        let own: Vec<_> = LlmProvider::ALL.iter().filter(|p| !p.is_openai_protocol()).collect();
        assert_eq!(own, [&LlmProvider::Anthropic]);
    }
}
