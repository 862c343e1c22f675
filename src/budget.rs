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
//! A budget covers a workflow with its child workflows (of sub-plan and block
//! steps): a child checks the spending of every workflow above it too, each of
//! which counts its children's, so one budget caps the whole run.
//!
//! Cost comes from [`Prices`]: US dollars per million input and output tokens, per
//! model, with the rates of prompt tokens read from (and written to) the provider's
//! prompt cache where they differ. The defaults are list prices of a few common
//! models at the time of writing; check them, and add or replace entries for yours.
//!
//! The token budget counts every prompt token, cached or not (a cached token still
//! fills the model's context); the cost budget prices cached ones at their rate.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// Limits on what one workflow, with its child workflows, may spend; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Budget {
    /// LLM calls, planning included when counted (`PORTIA_BUDGET_LLM_CALLS`).
    pub llm_calls: Option<u32>,
    /// Prompt plus completion tokens, planning included when counted, cached prompt
    /// tokens counted like any other (`PORTIA_BUDGET_TOKENS`).
    pub tokens: Option<u64>,
    /// Seconds spent running, over all its runs (`PORTIA_BUDGET_SECONDS`).
    pub seconds: Option<u64>,
    /// US dollars, by [`Prices`], planning included when counted (`PORTIA_BUDGET_USD`).
    pub usd: Option<f64>,
}

impl Budget {
    /// At most this many LLM calls, above 0 (a configuration with 0 is refused:
    /// leave the limit unset for none).
    #[must_use]
    pub fn llm_calls(mut self, calls: u32) -> Self {
        self.llm_calls = Some(calls);
        self
    }

    /// At most this many tokens, prompt and completion together, above 0.
    #[must_use]
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// At most this many seconds of running, above 0.
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
///
/// ```
/// use portia::config::Price;
/// use portia::llm::Usage;
///
/// // Cached reads at a tenth of the input rate, cache writes at 1.25 times it.
/// let price = Price::new(3.0, 15.0).cache_read(0.3).cache_write(3.75);
/// let usage = Usage::call(1_000_000, 0).with_cache(800_000, 100_000);
/// assert!((price.cost(&usage) - (0.3 + 0.24 + 0.375)).abs() < 1e-9);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Price {
    /// Per million prompt (input) tokens.
    pub input_per_mtok: f64,
    /// Per million completion (output) tokens.
    pub output_per_mtok: f64,
    /// Per million prompt tokens read from the provider's prompt cache; `None`
    /// bills them as plain input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_mtok: Option<f64>,
    /// Per million prompt tokens written to the provider's prompt cache, where it
    /// bills them apart (Anthropic); `None` bills them as plain input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
}

impl Price {
    /// A price in US dollars per million prompt and per million completion tokens;
    /// cached prompt tokens cost as much as others until set apart.
    pub fn new(input_per_mtok: f64, output_per_mtok: f64) -> Self {
        Self { input_per_mtok, output_per_mtok, cache_read_per_mtok: None, cache_write_per_mtok: None }
    }

    /// Prompt tokens read from the prompt cache cost `per_mtok` per million.
    #[must_use]
    pub fn cache_read(mut self, per_mtok: f64) -> Self {
        self.cache_read_per_mtok = Some(per_mtok);
        self
    }

    /// Prompt tokens written to the prompt cache cost `per_mtok` per million.
    #[must_use]
    pub fn cache_write(mut self, per_mtok: f64) -> Self {
        self.cache_write_per_mtok = Some(per_mtok);
        self
    }

    /// The cost of `usage` at this price: uncached prompt tokens at the input rate,
    /// cached ones at theirs, completion tokens at the output rate.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let read = self.cache_read_per_mtok.unwrap_or(self.input_per_mtok);
        let write = self.cache_write_per_mtok.unwrap_or(self.input_per_mtok);
        (usage.uncached_prompt_tokens() as f64 * self.input_per_mtok
            + usage.cache_read_tokens as f64 * read
            + usage.cache_write_tokens as f64 * write
            + usage.completion_tokens as f64 * self.output_per_mtok)
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
        let mut prices: BTreeMap<String, Price> = list
            .into_iter()
            .chain(BEDROCK_PRICES)
            .map(|(model, input, output)| (model.to_owned(), Price::new(input, output)))
            .collect();
        for (model, read, write) in CACHE_RATES {
            if let Some(price) = prices.get_mut(model) {
                price.cache_read_per_mtok = Some(read);
                price.cache_write_per_mtok = write;
            }
        }
        Self(prices)
    }
}

/// The cached-prompt rates of the default models: cache reads, and cache writes
/// where they are billed apart. OpenAI and Gemini cache on their own and bill only
/// reads (a quarter or a tenth of the input rate); Anthropic bills reads at a tenth
/// and five-minute cache writes at 1.25 times the input rate.
const CACHE_RATES: [(&str, f64, Option<f64>); 12] = [
    ("gpt-4.1", 0.5, None),
    ("gpt-4.1-mini", 0.1, None),
    ("gpt-4.1-nano", 0.025, None),
    ("gpt-4o", 1.25, None),
    ("gpt-4o-mini", 0.075, None),
    ("claude-sonnet-4-5", 0.3, Some(3.75)),
    ("claude-haiku-4-5", 0.1, Some(1.25)),
    ("claude-opus-4-1", 1.5, Some(18.75)),
    ("gemini-2.5-pro", 0.125, None),
    ("gemini-2.5-flash", 0.03, None),
    ("gemini-2.5-flash-lite", 0.01, None),
    ("gemini-2.0-flash", 0.025, None),
];

/// Bedrock's on-demand prices in US regions, by model id; a cross-region inference
/// profile (`us.` prefix) costs the same as the model.
const BEDROCK_PRICES: [(&str, f64, f64); 10] = [
    ("anthropic.claude-3-5-haiku-20241022-v1:0", 0.8, 4.0),
    ("us.anthropic.claude-3-5-haiku-20241022-v1:0", 0.8, 4.0),
    ("anthropic.claude-3-haiku-20240307-v1:0", 0.25, 1.25),
    ("anthropic.claude-3-5-sonnet-20241022-v2:0", 3.0, 15.0),
    ("us.anthropic.claude-sonnet-4-20250514-v1:0", 3.0, 15.0),
    ("us.anthropic.claude-sonnet-4-5-20250929-v1:0", 3.0, 15.0),
    ("amazon.nova-micro-v1:0", 0.035, 0.14),
    ("amazon.nova-lite-v1:0", 0.06, 0.24),
    ("amazon.nova-pro-v1:0", 0.8, 3.2),
    ("meta.llama3-3-70b-instruct-v1:0", 0.72, 0.72),
];

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
        let spent = Usage { llm_calls: 2, ..Usage::call(900, 50) };
        assert_eq!(budget.exceeded(&spent, 0.0, Duration::ZERO), None);
        let spent = Usage { llm_calls: 2, ..Usage::call(900, 100).with_cache(800, 0) };
        let reason = budget.exceeded(&spent, 0.0, Duration::ZERO).unwrap();
        assert!(reason.contains("token budget of 1000") && reason.contains("1000 tokens used"), "{reason}");
        let budget = Budget { seconds: Some(10), usd: Some(0.01), ..Budget::default() };
        assert!(budget.exceeded(&Usage::default(), 0.0, Duration::from_secs(10)).unwrap().contains("10.0 s running"));
        assert!(budget.exceeded(&Usage::default(), 0.02, Duration::ZERO).unwrap().contains("cost budget of $0.01"));
    }

    #[test]
    fn cost_follows_the_price_table() {
        let prices = Prices::none().with("m", Price::new(2.0, 8.0));
        let usage = Usage::call(1_000_000, 500_000);
        assert!((prices.cost("m", &usage) - 6.0).abs() < 1e-9);
        assert_eq!(prices.cost("unknown", &usage), 0.0);
        assert!(Prices::default().get("gpt-4.1-mini").is_some());
    }

    #[test]
    fn cached_prompt_tokens_are_priced_at_their_rates() {
        // Without cache rates, cached tokens cost what any prompt token does.
        let usage = Usage::call(1_000_000, 0).with_cache(600_000, 200_000);
        assert!((Price::new(2.0, 8.0).cost(&usage) - 2.0).abs() < 1e-9);
        let price = Price::new(2.0, 8.0).cache_read(0.5).cache_write(2.5);
        // 200k plain at $2, 600k read at $0.5, 200k written at $2.5.
        assert!((price.cost(&usage) - (0.4 + 0.3 + 0.5)).abs() < 1e-9);
        let defaults = Prices::default();
        assert_eq!(defaults.get("gpt-4.1").unwrap().cache_read_per_mtok, Some(0.5));
        assert_eq!(defaults.get("claude-sonnet-4-5").unwrap().cache_write_per_mtok, Some(3.75));
        assert!(CACHE_RATES.iter().all(|(model, ..)| defaults.get(model).is_some()), "a rate for an unlisted model");
    }

    #[test]
    fn a_price_stored_without_cache_rates_still_reads() {
        let price: Price = serde_json::from_str(r#"{"input_per_mtok":1.0,"output_per_mtok":2.0}"#).unwrap();
        assert_eq!(price, Price::new(1.0, 2.0));
    }
}
