//! Budgets: what one workflow may spend, and what models cost.
//!
//! A [`Budget`] caps a workflow's LLM calls, tokens, running time and cost. The
//! runner checks it before every LLM call a step or a tool makes (through the metered
//! client they are given, so nothing can go around it): the call that crosses a
//! limit is let through, since its size is unknown in advance, and the next one is
//! refused, ending the workflow FAILED with
//! [`FailureKind::BudgetExceeded`](crate::workflow::FailureKind). Running time counts
//! only while the workflow runs, not while it waits for a human. Planning counts
//! against the budget of a workflow whose plan was written for it (see
//! [`WorkflowUsage`](crate::workflow::WorkflowUsage)), not of every workflow
//! made from an existing plan.
//!
//! Cost comes from [`Prices`]: US dollars per million input and output tokens, per
//! model. The defaults are list prices of a few common models at the time of
//! writing; check them, and add or replace entries for yours.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// Limits on what one workflow may spend; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Budget {
    /// LLM calls, planning included when counted (`PORTIA_BUDGET_LLM_CALLS`).
    pub llm_calls: Option<u32>,
    /// Prompt plus completion tokens, planning included when counted (`PORTIA_BUDGET_TOKENS`).
    pub tokens: Option<u64>,
    /// Seconds spent running, over all its runs (`PORTIA_BUDGET_SECONDS`).
    pub seconds: Option<u64>,
    /// US dollars, by [`Prices`], planning included when counted (`PORTIA_BUDGET_USD`).
    pub usd: Option<f64>,
}

impl Budget {
    /// At most this many LLM calls.
    #[must_use]
    pub fn llm_calls(mut self, calls: u32) -> Self {
        self.llm_calls = Some(calls);
        self
    }

    /// At most this many tokens, prompt and completion together.
    #[must_use]
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// At most this many seconds of running.
    #[must_use]
    pub fn seconds(mut self, seconds: u64) -> Self {
        self.seconds = Some(seconds);
        self
    }

    /// At most this many US dollars of LLM cost.
    #[must_use]
    pub fn usd(mut self, usd: f64) -> Self {
        self.usd = Some(usd);
        self
    }

    /// The first limit that `spent` has reached, described with the figure reached;
    /// `None` while every limit still has room.
    pub fn exceeded(&self, spent: &Usage, cost_usd: f64, running: Duration) -> Option<String> {
        let tokens = spent.prompt_tokens + spent.completion_tokens;
        if let Some(limit) = self.llm_calls.filter(|&limit| spent.llm_calls >= limit) {
            return Some(format!("the LLM call budget of {limit} is spent ({} calls made)", spent.llm_calls));
        }
        if let Some(limit) = self.tokens.filter(|&limit| tokens >= limit) {
            return Some(format!("the token budget of {limit} is spent ({tokens} tokens used)"));
        }
        if let Some(limit) = self.seconds.filter(|&limit| running.as_secs_f64() >= limit as f64) {
            return Some(format!("the time budget of {limit} s is spent ({:.1} s running)", running.as_secs_f64()));
        }
        if let Some(limit) = self.usd.filter(|&limit| cost_usd >= limit) {
            return Some(format!("the cost budget of ${limit} is spent (${cost_usd:.4} so far)"));
        }
        None
    }
}

/// What a model costs, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Price {
    /// Per million prompt (input) tokens.
    pub input_per_mtok: f64,
    /// Per million completion (output) tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// A price in US dollars per million prompt and per million completion tokens.
    pub fn new(input_per_mtok: f64, output_per_mtok: f64) -> Self {
        Self { input_per_mtok, output_per_mtok }
    }

    /// The cost of `usage` at this price.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_mtok + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// Prices by model name (without a `provider/` prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Prices(BTreeMap<String, Price>);

impl Default for Prices {
    fn default() -> Self {
        let list = [
            ("gpt-4.1", 2.0, 8.0),
            ("gpt-4.1-mini", 0.4, 1.6),
            ("gpt-4.1-nano", 0.1, 0.4),
            ("gpt-4o", 2.5, 10.0),
            ("gpt-4o-mini", 0.15, 0.6),
            ("claude-sonnet-4-5", 3.0, 15.0),
            ("claude-haiku-4-5", 1.0, 5.0),
            ("claude-opus-4-1", 15.0, 75.0),
            ("gemini-2.5-pro", 1.25, 10.0),
            ("gemini-2.5-flash", 0.3, 2.5),
            ("gemini-2.5-flash-lite", 0.1, 0.4),
            ("gemini-2.0-flash", 0.1, 0.4),
        ];
        let prices = list
            .into_iter()
            .map(|(model, input, output)| (model.to_owned(), Price { input_per_mtok: input, output_per_mtok: output }));
        Self(prices.collect())
    }
}

impl Prices {
    /// No prices at all: every call costs nothing.
    pub fn none() -> Self {
        Self(BTreeMap::new())
    }

    /// Adds or replaces the price of `model`.
    #[must_use]
    pub fn with(mut self, model: impl Into<String>, price: Price) -> Self {
        self.0.insert(model.into(), price);
        self
    }

    /// The price of `model`, if known.
    pub fn get(&self, model: &str) -> Option<Price> {
        self.0.get(model).copied()
    }

    /// The cost of `usage` on `model`; zero for a model without a price.
    pub fn cost(&self, model: &str, usage: &Usage) -> f64 {
        self.get(model).map_or(0.0, |price| price.cost(usage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_limit_reached_is_named_with_its_figure() {
        let budget = Budget { llm_calls: Some(3), tokens: Some(1000), ..Budget::default() };
        let spent = Usage { llm_calls: 2, prompt_tokens: 900, completion_tokens: 50 };
        assert_eq!(budget.exceeded(&spent, 0.0, Duration::ZERO), None);
        let spent = Usage { llm_calls: 2, prompt_tokens: 900, completion_tokens: 100 };
        let reason = budget.exceeded(&spent, 0.0, Duration::ZERO).unwrap();
        assert!(reason.contains("token budget of 1000") && reason.contains("1000 tokens used"), "{reason}");
        let budget = Budget { seconds: Some(10), usd: Some(0.01), ..Budget::default() };
        assert!(budget.exceeded(&Usage::default(), 0.0, Duration::from_secs(10)).unwrap().contains("10.0 s running"));
        assert!(budget.exceeded(&Usage::default(), 0.02, Duration::ZERO).unwrap().contains("cost budget of $0.01"));
    }

    #[test]
    fn cost_follows_the_price_table() {
        let prices = Prices::none().with("m", Price { input_per_mtok: 2.0, output_per_mtok: 8.0 });
        let usage = Usage { llm_calls: 1, prompt_tokens: 1_000_000, completion_tokens: 500_000 };
        assert!((prices.cost("m", &usage) - 6.0).abs() < 1e-9);
        assert_eq!(prices.cost("unknown", &usage), 0.0);
        assert!(Prices::default().get("gpt-4.1-mini").is_some());
    }
}
