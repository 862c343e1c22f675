//! Plan-time arguments: a step may carry its tool's arguments, with `$name`
//! references to earlier outputs inside string values.
//!
//! A reference may reach inside an output (`$quote.price`, `$list[0]`, `$list[-1]`;
//! see the [plan module](super)). A string that is exactly one reference
//! (`"$amazon"`) becomes the referenced
//! value with its JSON type (an object stays an object); a reference inside a
//! longer string is replaced by the value's text. A `$word` that names no output of
//! the plan is plain text (`"$USD"`, `"costs $5"`).

use serde_json::{Map, Value};

use super::reference::{Reference, identifier_len};
use crate::text::render_value;

/// Whether `name` is an output name: `$` followed by an identifier (a letter or `_`,
/// then letters, digits and `_`).
pub fn is_output_name(name: &str) -> bool {
    name.strip_prefix('$').is_some_and(|rest| identifier_len(rest) == rest.len() && !rest.is_empty())
}

/// Every reference token in `text` (`$name`, with any path such as `.field[0]`), in
/// order, as `(start, token)`.
fn tokens(text: &str) -> Vec<(usize, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find('$') {
        let start = from + offset;
        match Reference::parse_prefix(&text[start..]) {
            Some((_, len)) => {
                found.push((start, &text[start..start + len]));
                from = start + len;
            }
            None => from = start + 1,
        }
    }
    found
}

/// Calls `visit` with every string inside `value`, however deeply nested.
fn each_string<'a>(value: &'a Value, visit: &mut impl FnMut(&'a str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|v| each_string(v, visit)),
        Value::Object(map) => map.values().for_each(|v| each_string(v, visit)),
        _ => {}
    }
}

/// The reference tokens in `args` (`$name` with any path), each once, flagged when
/// some string is that token alone: such a token is meant as a reference even when
/// no output has the name.
pub(crate) fn tokens_in(args: &Value) -> Vec<(String, bool)> {
    let mut found: Vec<(String, bool)> = Vec::new();
    each_string(args, &mut |text| {
        let whole = Reference::parse(text).is_some();
        for (_, name) in tokens(text) {
            match found.iter_mut().find(|(seen, _)| seen == name) {
                Some((_, was_whole)) => *was_whole |= whole,
                None => found.push((name.to_owned(), whole)),
            }
        }
    });
    found
}

/// `args` with every reference that `lookup` knows replaced by its value.
pub(crate) fn resolve(args: &Value, lookup: &impl Fn(&str) -> Option<Value>) -> Value {
    match args {
        Value::String(text) => resolve_text(text, lookup),
        Value::Array(items) => Value::Array(items.iter().map(|v| resolve(v, lookup)).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), resolve(v, lookup))).collect::<Map<_, _>>())
        }
        other => other.clone(),
    }
}

fn resolve_text(text: &str, lookup: &impl Fn(&str) -> Option<Value>) -> Value {
    if Reference::parse(text).is_some()
        && let Some(value) = lookup(text)
    {
        return value;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, name) in tokens(text) {
        if let Some(value) = lookup(name) {
            out.push_str(&text[copied..start]);
            out.push_str(&render_value(&value));
            copied = start + name.len();
        }
    }
    out.push_str(&text[copied..]);
    Value::String(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn output_names_are_a_dollar_and_an_identifier() {
        for good in ["$a", "$step_one", "$_x9"] {
            assert!(is_output_name(good), "{good}");
        }
        for bad in ["", "$", "a", "plain", "$9lives", "$a-b", "$ a", "$é"] {
            assert!(!is_output_name(bad), "{bad}");
        }
    }

    #[test]
    fn whole_string_references_keep_their_type_and_embedded_ones_become_text() {
        let lookup = |name: &str| match name {
            "$growth" => Some(json!({"amazon": 44.4})),
            "$city" => Some(json!("Oslo")),
            _ => None,
        };
        let args = json!({
            "data": "$growth",
            "query": "weather in $city, costs $5 or $USD",
            "list": ["$city", 3],
        });
        assert_eq!(
            resolve(&args, &lookup),
            json!({
                "data": {"amazon": 44.4},
                "query": "weather in Oslo, costs $5 or $USD",
                "list": ["Oslo", 3],
            })
        );
        let found = tokens_in(&args);
        assert!(found.contains(&("$growth".into(), true)) && found.contains(&("$city".into(), true)), "{found:?}");
        assert!(found.contains(&("$USD".into(), false)), "{found:?}");
        assert_eq!(found.len(), 3);
    }
}
