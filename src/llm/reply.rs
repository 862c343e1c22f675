//! The parts of requests and replies that the providers shape alike: the system
//! text and turns of alternating roles sent, and a tool call block (a name, an
//! arguments object, an id) and usage counts with cached prompt tokens read.

use serde_json::{Value, json};

use super::{ToolCall, Usage};

/// Where a provider puts a tool call's parts, and what its blocks are called.
pub(super) struct CallShape {
    /// What a block is called in messages: `tool_use block`, `function call`.
    pub(super) block: &'static str,
    /// The field holding the arguments object.
    pub(super) arguments: &'static str,
    /// The field holding the call's id.
    pub(super) id: &'static str,
    /// The id given to a call that came without one: `{prefix}_{index}`.
    pub(super) id_prefix: &'static str,
}

impl CallShape {
    /// The tool call in `block`, the `index`th of its reply. Missing arguments are
    /// none (`{}`); arguments that are not an object are an error naming the call.
    pub(super) fn read(&self, index: usize, block: &Value) -> Result<ToolCall, String> {
        let name = block.get("name").and_then(Value::as_str);
        let name = name.ok_or_else(|| format!("{} {index} has no name", self.block))?;
        let arguments = match block.get(self.arguments) {
            Some(arguments @ Value::Object(_)) => arguments.clone(),
            None | Some(Value::Null) => json!({}),
            Some(other) => {
                let (field, block) = (self.arguments, self.block);
                return Err(format!("the {field} of {block} {index} ({name}) is not an object: {other}"));
            }
        };
        let id = block.get(self.id).and_then(Value::as_str);
        let id = id.map_or_else(|| format!("{}_{index}", self.id_prefix), str::to_owned);
        Ok(ToolCall { id, name: name.to_owned(), arguments })
    }
}

/// The usage in `counts` whose input count leaves out the prompt tokens read from
/// and written to the cache (Anthropic, Bedrock): they were sent all the same, so
/// they are added back, making `prompt_tokens` the whole input as with every
/// provider, and also counted apart. The fields are named input, output, cache
/// read, cache write.
pub(super) fn usage_with_cache_apart(counts: Option<&Value>, [input, output, read, write]: [&str; 4]) -> Usage {
    let count = |field: &str| counts.and_then(|u| u.get(field)).and_then(Value::as_u64).unwrap_or(0);
    let (read, write) = (count(read), count(write));
    Usage::call(count(input) + read + write, count(output)).with_cache(read, write)
}

/// The system messages as one text, blank ones left out.
pub(super) fn system_text(parts: &[&str]) -> String {
    parts.iter().filter(|s| !s.trim().is_empty()).copied().collect::<Vec<_>>().join("\n\n")
}

/// A conversation's turns in the alternating roles Gemini and Converse want: blocks
/// of one role in a row share a turn, and a message with no blocks adds none.
#[derive(Debug, Default)]
pub(super) struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    pub(super) fn push(&mut self, role: &'static str, blocks: Vec<Value>) {
        if blocks.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => self.0.push((role, blocks)),
        }
    }

    /// The turns as JSON, each `{"role": ..., content_field: [blocks]}`.
    pub(super) fn into_json(self, content_field: &str) -> Vec<Value> {
        self.0.into_iter().map(|(role, blocks)| json!({"role": role, content_field: blocks})).collect()
    }
}
