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
use crate::value::SharedValue;

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

/// The first reference in `args` along a path that an output `output` has does not
/// have (`$list[10]` of a three-item list), said as a sentence. Left as it is, such a
/// reference reached the tool as literal text. Only an output with a structure to
/// look into counts (a list or an object, or text that holds one): `$report.txt`
/// after a plain-text `$report` is a file name, and a path through `null` (a skipped
/// output) reads as null.
pub(crate) fn missed_path(args: &Value, output: &impl Fn(&str) -> Option<SharedValue>) -> Option<String> {
    tokens_in(args).into_iter().find_map(|(token, _)| {
        let reference = Reference::parse(&token).filter(|r| !r.path.is_empty())?;
        let value = output(&reference.name)?;
        // The path is walked first: the shape (text parsed as JSON again) is for a miss only.
        let shape = reference.misses(&value).then(|| shape(&value)).flatten()?;
        Some(format!("`{token}` leads nowhere: {} is {shape}", reference.name))
    })
}

/// What `value` is, in a few words, when it has a structure a path looks into.
fn shape(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => Some(format!("a list of {} items", items.len())),
        Value::Object(map) if map.is_empty() => Some("an empty object".to_owned()),
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().take(8).map(String::as_str).collect();
            let more = if map.len() > keys.len() { ", ..." } else { "" };
            Some(format!("an object with the fields {}{more}", keys.join(", ")))
        }
        Value::String(text) => {
            crate::text::json_in(text).and_then(|json| shape(&json)).map(|s| format!("text holding {s}"))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
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
    fn a_path_that_misses_its_output_is_named_with_what_the_output_holds() {
        let outputs = json!({
            "$list": [1, null, 3], "$quote": {"price": 5, "currency": "USD"}, "$text": "plain",
            "$json": "```json\n{\"a\": 1}\n```", "$skipped": null, "$count": 2
        });
        let output = |name: &str| outputs.get(name).cloned().map(SharedValue::new);
        let missed = |args: Value| missed_path(&args, &output);
        assert_eq!(missed(json!({"n": "$list[2]", "p": "$quote.price costs", "all": "$list", "j": "$json.a"})), None);
        assert_eq!(missed(json!({"n": "$list[-4]"})).unwrap(), "`$list[-4]` leads nowhere: $list is a list of 3 items");
        assert_eq!(
            missed(json!({"deep": [{"p": "it costs $quote.cost"}]})).unwrap(),
            "`$quote.cost` leads nowhere: $quote is an object with the fields currency, price"
        );
        assert_eq!(
            missed(json!("$json.b")).unwrap(),
            "`$json.b` leads nowhere: $json is text holding an object with the fields a"
        );
        assert_eq!(missed(json!({"file": "$text.txt", "n": "$count.x"})), None, "nothing to look into: plain text");
        assert_eq!(
            missed(json!({"a": "$skipped.price", "b": "$list[1].title"})),
            None,
            "a skipped value reads as null"
        );
        assert_eq!(missed(json!({"price": "$USD.rate", "other": "$nothing[0]"})), None, "no such outputs: plain text");
    }

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
