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
        /// Google's Gemini API (`generateContent`).
        Gemini => ["gemini", "google"],
        /// Azure OpenAI: Chat Completions on a deployment of your resource.
        AzureOpenAi => ["azure", "azure-openai"],
        /// AWS Bedrock through the Converse API, signed with AWS credentials.
        Bedrock => ["bedrock", "aws-bedrock"],
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
            Self::Gemini => "gemini-2.5-flash",
            // Azure names deployments, not models: this is the deployment's name.
            Self::AzureOpenAi => "gpt-4.1-mini",
            Self::Bedrock => "anthropic.claude-3-5-haiku-20241022-v1:0",
        }
    }

    /// The base URL used when none is configured (none for Azure OpenAI, whose
    /// endpoint is the resource's own: `AZURE_OPENAI_ENDPOINT`, nor for Bedrock,
    /// whose endpoint is the region's).
    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::OpenAi => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Mistral => "https://api.mistral.ai/v1",
            Self::OpenAiCompatible | Self::Ollama => "http://localhost:11434/v1",
            Self::Groq => "https://api.groq.com/openai/v1",
            Self::OpenRouter => "https://openrouter.ai/api/v1",
            Self::Gemini => "https://generativelanguage.googleapis.com",
            Self::AzureOpenAi | Self::Bedrock => "",
        }
    }

    /// The environment variable holding this provider's API key, if it needs one
    /// (for Bedrock, the first of the AWS credential variables).
    pub fn api_key_var(self) -> Option<&'static str> {
        match self {
            Self::OpenAi => Some("OPENAI_API_KEY"),
            Self::Anthropic => Some("ANTHROPIC_API_KEY"),
            Self::Mistral => Some("MISTRAL_API_KEY"),
            Self::Groq => Some("GROQ_API_KEY"),
            Self::OpenRouter => Some("OPENROUTER_API_KEY"),
            Self::Gemini => Some("GEMINI_API_KEY"),
            Self::AzureOpenAi => Some("AZURE_OPENAI_API_KEY"),
            Self::Bedrock => Some("AWS_ACCESS_KEY_ID"),
            Self::OpenAiCompatible | Self::Ollama => None,
        }
    }

    /// Whether the provider speaks the OpenAI Chat Completions protocol.
    pub fn is_openai_protocol(self) -> bool {
        !matches!(self, Self::Anthropic | Self::Gemini | Self::Bedrock)
    }

    /// Whether the provider's own model names contain slashes (`meta-llama/...`), so
    /// that an unknown `name/` prefix is part of the model name rather than a typo
    /// for a provider. Bedrock's inference profile ARNs have one.
    pub fn takes_slashed_models(self) -> bool {
        matches!(self, Self::OpenAiCompatible | Self::Ollama | Self::Groq | Self::OpenRouter | Self::Bedrock)
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

/// Why `name` cannot be a model of `default` (the provider that serves names without
/// a prefix): a `prefix/` that names no provider, on a provider whose own model
/// names have no slash, is taken for a mistyped provider.
pub(crate) fn unknown_provider(default: LlmProvider, name: &str) -> Option<String> {
    let (provider, _) = split_provider(name);
    let (prefix, _) = name.split_once('/')?;
    if provider.is_some() || default.takes_slashed_models() {
        return None;
    }
    let known: Vec<&str> = LlmProvider::ALL.iter().map(|p| p.as_str()).collect();
    Some(format!(
        "{name:?} names the provider {prefix:?}, which is not one of the known providers ({}); \
         write provider/model, such as gemini/gemini-2.5-flash, or a model of {default} without a prefix",
        known.join(", ")
    ))
}

/// Why `name` is taken for a provider with its model left out: it is a provider's
/// name alone (`anthropic`), and `default` has a fixed list of models (unlike
/// Ollama, which serves a model called `mistral`, or an Azure deployment).
pub(crate) fn provider_without_model(default: LlmProvider, name: &str) -> Option<String> {
    if default.takes_slashed_models() || default == LlmProvider::AzureOpenAi || name.contains('/') {
        return None;
    }
    let named = name.trim().parse::<LlmProvider>().ok()?;
    Some(format!(
        "{name:?} names the provider {named} but no model; write {named}/ and a model, such as {named}/{}, \
         or a model of {default} without a prefix",
        named.default_model()
    ))
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
    fn an_unknown_prefix_is_refused_listing_the_known_providers_unless_names_have_slashes() {
        let problem = unknown_provider(LlmProvider::OpenAi, "gemnii/gemini-2.5-flash").unwrap();
        assert!(problem.contains("\"gemnii\"") && problem.contains("openai, anthropic") && problem.contains("gemini"));
        assert_eq!(unknown_provider(LlmProvider::OpenAi, "gemini/gemini-2.5-flash"), None);
        assert_eq!(unknown_provider(LlmProvider::OpenAi, "gpt-4.1"), None);
        assert_eq!(unknown_provider(LlmProvider::OpenRouter, "meta/llama-4"), None);
    }

    #[test]
    fn a_providers_name_alone_is_refused_where_model_names_are_not_free() {
        let problem = provider_without_model(LlmProvider::OpenAi, "gemini").unwrap();
        assert!(problem.contains("\"gemini\" names the provider gemini but no model"), "{problem}");
        assert!(problem.contains("such as gemini/gemini-2.5-flash"), "{problem}");
        assert!(provider_without_model(LlmProvider::Anthropic, "openai").is_some());
        assert_eq!(provider_without_model(LlmProvider::OpenAi, "gpt-4.1"), None);
        // Ollama serves a model called mistral; an Azure deployment is named freely.
        assert_eq!(provider_without_model(LlmProvider::Ollama, "mistral"), None);
        assert_eq!(provider_without_model(LlmProvider::AzureOpenAi, "openai"), None);
    }

    #[test]
    fn only_anthropic_gemini_and_bedrock_speak_their_own_protocols() {
        let own: Vec<_> = LlmProvider::ALL.iter().filter(|p| !p.is_openai_protocol()).collect();
        assert_eq!(own, [&LlmProvider::Anthropic, &LlmProvider::Gemini, &LlmProvider::Bedrock]);
    }
}
