//! Tokens and calls spent: the one measure of LLM cost that plans, workflows,
//! events, budgets and stores all share.

use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// Tokens and calls spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Usage {
    /// How many LLM calls were made.
    pub llm_calls: u32,
    /// Tokens sent.
    pub prompt_tokens: u64,
    /// Tokens received.
    pub completion_tokens: u64,
}

impl Usage {
    /// The usage of one call.
    pub fn call(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self { llm_calls: 1, prompt_tokens, completion_tokens }
    }

    /// Whether nothing was spent.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

impl Add for Usage {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            llm_calls: self.llm_calls + other.llm_calls,
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        *self = *self + other;
    }
}
