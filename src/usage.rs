//! Tokens and calls spent: the one measure of LLM cost that plans, workflows,
//! events, budgets and stores all share.
//!
//! `prompt_tokens` counts every input token, whether the provider read it from its
//! prompt cache, wrote it there, or neither: figures stay comparable with those
//! taken before cached tokens were counted, and with a provider that caches
//! nothing. The cached ones are counted again, apart, in `cache_read_tokens` and
//! `cache_write_tokens`, so [`Price`](crate::config::Price) can bill them at their
//! own rates.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Tokens and calls spent.
///
/// ```
/// use portia::llm::Usage;
///
/// // 1,200 input tokens, of which 1,024 came from the provider's prompt cache.
/// let usage = Usage::call(1_200, 40).with_cache(1_024, 0);
/// assert_eq!(usage.prompt_tokens, 1_200);
/// assert_eq!(usage.uncached_prompt_tokens(), 176);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Usage {
    /// How many LLM calls were made.
    pub llm_calls: u32,
    /// Tokens sent: every input token, the cached ones included.
    pub prompt_tokens: u64,
    /// Tokens received.
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those the provider read from its prompt cache (OpenAI's
    /// `cached_tokens`, Anthropic's `cache_read_input_tokens`, Gemini's
    /// `cachedContentTokenCount`). Zero in usage stored by 0.3 and earlier.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    /// Of `prompt_tokens`, those the provider wrote to its prompt cache, where it
    /// reports them and bills them apart (Anthropic's `cache_creation_input_tokens`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

impl Usage {
    /// The usage of one call.
    pub fn call(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { llm_calls: 1, prompt_tokens, completion_tokens, ..Self::default() }
    }

    /// This usage, with `read` of its prompt tokens read from the provider's prompt
    /// cache and `written` written to it. Both are part of `prompt_tokens` already.
    #[must_use]
    pub fn with_cache(mut self, read: u64, written: u64) -> Self {
        self.cache_read_tokens = read;
        self.cache_write_tokens = written;
        self
    }

    /// The prompt tokens neither read from nor written to a prompt cache: those
    /// billed at the plain input rate.
    pub fn uncached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_sub(self.cache_read_tokens).saturating_sub(self.cache_write_tokens)
    }

    /// Whether nothing was spent.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// This usage less `other`, each count stopping at zero: takes back a figure
    /// added earlier (a child workflow's, replaced by its newer one).
    pub(crate) fn saturating_sub(self, other: Self) -> Self {
        Self {
            llm_calls: self.llm_calls.saturating_sub(other.llm_calls),
            prompt_tokens: self.prompt_tokens.saturating_sub(other.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_sub(other.completion_tokens),
            cache_read_tokens: self.cache_read_tokens.saturating_sub(other.cache_read_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_sub(other.cache_write_tokens),
        }
    }
}

impl Add for Usage {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            llm_calls: self.llm_calls + other.llm_calls,
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
            cache_read_tokens: self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens: self.cache_write_tokens + other.cache_write_tokens,
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_stored_without_cache_counts_reads_as_uncached() {
        let old: Usage = serde_json::from_str(r#"{"llm_calls":1,"prompt_tokens":900,"completion_tokens":50}"#).unwrap();
        assert_eq!((old.cache_read_tokens, old.cache_write_tokens), (0, 0));
        assert_eq!(old.uncached_prompt_tokens(), 900);
        let json = serde_json::to_value(old).unwrap();
        assert!(json.get("cache_read_tokens").is_none(), "zero cache counts are left out: {json}");
    }

    #[test]
    fn cache_counts_add_up_and_round_trip() {
        let total = Usage::call(1000, 10).with_cache(800, 0) + Usage::call(1000, 10).with_cache(0, 900);
        assert_eq!((total.prompt_tokens, total.cache_read_tokens, total.cache_write_tokens), (2000, 800, 900));
        assert_eq!(total.uncached_prompt_tokens(), 300);
        let back: Usage = serde_json::from_value(serde_json::to_value(total).unwrap()).unwrap();
        assert_eq!(back, total);
    }
}
