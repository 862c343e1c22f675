//! Checking a tool's arguments against its JSON schema before the call, in full
//! (nested objects, arrays, enums, bounds, patterns, `$ref`s), for every caller: the
//! agents (a model's or a plan's arguments) and the MCP client (before sending).
//!
//! What is wrong goes back to the model, so each problem names the path of the value
//! (`items/0/price`: a JSON Pointer into the arguments without its leading `/`, so a
//! top-level argument reads as its name) and what it must be.
//!
//! Deliberate choices:
//! - A `null` the schema refuses for an optional property counts as leaving it out:
//!   models often write `null` for "not given". For a required property it is missing.
//! - Formats (`date-time`, `email`, ...) are not asserted, as JSON Schema 2020-12 has
//!   it by default: a tool that needs one parses the value itself, and a strict check
//!   here would refuse values tools take (a date-time without its offset).
//! - A schema that cannot be compiled (a bad MCP server or custom tool) lets the call
//!   through with a warning, once per schema: the tool, or its server, checks too, and
//!   a broken schema must not make the tool unusable.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::paths::{Location, LocationSegment};
use jsonschema::{ValidationError, Validator};
use serde_json::{Map, Value};

use crate::SharedValue;
use crate::text::clip;

/// Problems listed in one message; the others are counted.
const MAX_PROBLEMS: usize = 5;
/// Characters of a value, or of a list of names, quoted in a message.
const MAX_QUOTED_CHARS: usize = 80;
/// Characters of an invalid schema shown in the warning.
const MAX_LOGGED_SCHEMA_CHARS: usize = 300;
/// Invalid schemas remembered so each is warned about once; past this, no more warnings.
const MAX_WARNED_SCHEMAS: usize = 1024;

/// Checks `args` against `schema`. `Ok` holds the arguments to send: `args` less any
/// `null` the schema refuses for an optional property.
///
/// # Errors
/// A message for the model: every problem (up to [`MAX_PROBLEMS`]) with the path of
/// the value and what it must be, joined by `; `.
pub(crate) fn check(schema: &SharedValue, args: &Value) -> Result<Map<String, Value>, String> {
    let Value::Object(object) = args else {
        return Err(format!("the arguments must be a JSON object, not {}", quoted(args)));
    };
    let compiled = compile_shared(schema);
    let Some(validator) = compiled.as_ref() else { return Ok(object.clone()) };
    // The common case: valid as given, with nothing to drop or describe.
    if validator.is_valid(args) {
        return Ok(object.clone());
    }
    let mut args = Value::Object(object.clone());
    drop_refused_nulls(validator, &mut args);
    let problems = problems(validator, schema, &args, ARGUMENTS);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(args.as_object_mut().map(std::mem::take).unwrap_or_default())
}

/// Checks a whole value (a step's output, a workflow's final output) against
/// `schema`. Unlike arguments, nothing is dropped: a `null` is a value here.
///
/// # Errors
/// A message for the model, worded as [`check`]'s, about "the output".
pub(crate) fn check_value(schema: &Value, value: &Value) -> Result<(), String> {
    let compiled = compile(schema);
    let Some(validator) = compiled.as_ref() else { return Ok(()) };
    if validator.is_valid(value) { Ok(()) } else { Err(problems(validator, schema, value, OUTPUT)) }
}

/// Why `schema` is not a schema this crate can check values against, if it is not
/// (a type that does not exist, a keyword of the wrong kind, a reference elsewhere).
pub(crate) fn schema_problem(schema: &Value) -> Option<String> {
    let options = jsonschema::options().offline().should_validate_formats(false);
    options.build(schema).err().map(|error| error.to_string())
}

/// How a message names what is checked: the whole, and a top-level property.
#[derive(Debug, Clone, Copy)]
struct Wording {
    whole: &'static str,
    top: &'static str,
}

const ARGUMENTS: Wording = Wording { whole: "the arguments", top: "argument" };
const OUTPUT: Wording = Wording { whole: "the output", top: "property" };

/// The validator for `schema`, or `None` (with a warning the first time) when the
/// schema itself is invalid or refers to a document elsewhere: nothing is fetched.
/// Compiled once per schema: the same few are checked on every step.
fn compile(schema: &Value) -> Arc<Option<Validator>> {
    COMPILED.get(schema, compile_now)
}

/// [`compile`] for a shared schema (a tool's), found by its address.
fn compile_shared(schema: &SharedValue) -> Arc<Option<Validator>> {
    COMPILED.get_shared(schema, compile_now)
}

static COMPILED: std::sync::LazyLock<crate::memo::SchemaMemo<Option<Validator>>> =
    std::sync::LazyLock::new(Default::default);

fn compile_now(schema: &Value) -> Option<Validator> {
    let options = jsonschema::options().offline().should_validate_formats(false);
    match options.build(schema) {
        Ok(validator) => Some(validator),
        Err(error) => {
            if first_warning(schema) {
                let schema = clip(&schema.to_string(), MAX_LOGGED_SCHEMA_CHARS, "…");
                tracing::warn!(%error, %schema, "a tool's argument schema is invalid; its arguments are not checked");
            }
            None
        }
    }
}

/// Whether `schema` has not been warned about yet (and now has).
fn first_warning(schema: &Value) -> bool {
    static WARNED: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
    let mut hasher = DefaultHasher::new();
    schema.to_string().hash(&mut hasher);
    let mut warned = WARNED.get_or_init(Mutex::default).lock().unwrap_or_else(PoisonError::into_inner);
    warned.len() < MAX_WARNED_SCHEMAS && warned.insert(hasher.finish())
}

/// Removes every object property whose `null` the schema refuses, so that it counts
/// as not given: fine when optional, "missing" when required.
fn drop_refused_nulls(validator: &Validator, args: &mut Value) {
    let refused: Vec<Location> = validator
        .iter_errors(args)
        .filter(|error| error.instance().is_null())
        .map(|error| error.instance_path().clone())
        .collect();
    for path in refused {
        let segments: Vec<LocationSegment<'_>> = path.segments().collect();
        let Some((last, parents)) = segments.split_last() else { continue };
        // A `null` in an array is an item, not an argument left out: it stays refused.
        if let Some(Value::Object(parent)) = value_at(args, parents) {
            parent.remove(&last.to_string());
        }
    }
}

fn value_at<'v>(value: &'v mut Value, segments: &[LocationSegment<'_>]) -> Option<&'v mut Value> {
    segments.iter().try_fold(value, |value, segment| match (value, segment) {
        // A segment that looks like an index may still be an object's key (`"0"`).
        (Value::Object(object), segment) => object.get_mut(&segment.to_string()),
        (Value::Array(items), LocationSegment::Index(index)) => items.get_mut(*index),
        _ => None,
    })
}

/// Every problem with `args`, in one message; empty when there is none.
fn problems(validator: &Validator, schema: &Value, args: &Value, wording: Wording) -> String {
    let mut found: Vec<String> = Vec::new();
    for error in validator.iter_errors(args) {
        let problem = describe(&error, schema, wording);
        if !found.contains(&problem) {
            found.push(problem);
        }
    }
    let more = found.len().saturating_sub(MAX_PROBLEMS);
    found.truncate(MAX_PROBLEMS);
    let mut message = found.join("; ");
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    message
}

/// One problem, worded for the model.
fn describe(error: &ValidationError<'_>, schema: &Value, wording: Wording) -> String {
    let at = error.instance_path();
    // Not for `required` and unknown properties, whose instance is the whole object.
    let value = || quoted(error.instance());
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
            let noun = if at.is_empty() { wording.top } else { "property" };
            format!("the required {noun} `{}` is missing", joined(at, &name))
        }
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => unknown(at, unexpected, error, schema, wording),
        ValidationErrorKind::Type { kind } => {
            format!("{} must be of type {}, got {}", subject(at, wording), types(kind), value())
        }
        ValidationErrorKind::Enum { options } => {
            let options = options.as_array().map(|o| o.iter().map(Value::to_string).collect::<Vec<_>>());
            let options = clip(&options.unwrap_or_default().join(", "), MAX_QUOTED_CHARS, "…");
            format!("{} must be one of {options}, got {}", subject(at, wording), value())
        }
        ValidationErrorKind::Constant { expected_value } => {
            format!("{} must be {}, got {}", subject(at, wording), quoted(expected_value), value())
        }
        // The crate's own wording names the value by the placeholder, and says what it
        // must be ("is less than the minimum of 1"); a scalar is shown as well.
        _ => {
            let problem = error.masked_with(subject(at, wording)).to_string();
            if error.instance().is_object() || error.instance().is_array() {
                problem
            } else {
                format!("{problem} (got {})", value())
            }
        }
    }
}

/// Names properties that are not allowed, with those that are when the schema lists them.
fn unknown(
    at: &Location,
    unexpected: &[String],
    error: &ValidationError<'_>,
    schema: &Value,
    wording: Wording,
) -> String {
    let noun = if at.is_empty() { wording.top } else { "property" };
    let names: Vec<String> = unexpected.iter().map(|name| format!("`{}`", joined(at, name))).collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    let mut message = format!("unknown {noun}{plural} {}", names.join(", "));
    let known = known_properties(schema, error.schema_path());
    if !known.is_empty() {
        let known: Vec<String> = known.iter().map(|name| format!("`{name}`")).collect();
        message.push_str(&format!(" (the known ones are {})", clip(&known.join(", "), MAX_QUOTED_CHARS, "…")));
    }
    message
}

/// The property names declared next to the keyword at `keyword_path` in `schema`:
/// none when the path cannot be followed (through a `$ref` to another document).
fn known_properties<'s>(schema: &'s Value, keyword_path: &Location) -> Vec<&'s String> {
    let object_schema = keyword_path.as_str().rsplit_once('/').and_then(|(parent, _)| schema.pointer(parent));
    object_schema
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().collect())
        .unwrap_or_default()
}

/// The path of a value for a message: `the arguments` (or `the output`) for the whole, else the path
/// in backticks.
fn subject(at: &Location, wording: Wording) -> String {
    if at.is_empty() { wording.whole.to_owned() } else { format!("`{}`", joined(at, "")) }
}

/// The path of `at`'s property `name` (or of `at` itself when `name` is empty), its
/// segments joined by `/` as they are, without JSON Pointer's escapes.
fn joined(at: &Location, name: &str) -> String {
    let mut segments: Vec<String> = at.segments().map(|segment| segment.to_string()).collect();
    if !name.is_empty() {
        segments.push(name.to_owned());
    }
    segments.join("/")
}

fn types(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(one) => one.to_string(),
        TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(" or "),
    }
}

/// `value` as JSON, clipped.
fn quoted(value: &Value) -> String {
    clip(&value.to_string(), MAX_QUOTED_CHARS, "…")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn order_schema() -> SharedValue {
        SharedValue::from(json!({
            "type": "object",
            "properties": {
                "customer": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"}},
                    "required": ["name"],
                },
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "price": {"type": "number", "minimum": 0}},
                        "required": ["name", "price"],
                        "additionalProperties": false,
                    },
                },
                "unit": {"enum": ["C", "F"]},
                "count": {"type": "integer"},
                "note": {"type": "string"},
            },
            "required": ["customer", "items"],
        }))
    }

    fn order() -> Value {
        json!({"customer": {"name": "Ada"}, "items": [{"name": "tea", "price": 3.5}], "unit": "C"})
    }

    fn problems_with(args: Value) -> String {
        check(&order_schema(), &args).unwrap_err()
    }

    #[test]
    fn fitting_arguments_come_back_as_they_are() {
        assert_eq!(check(&order_schema(), &order()).map(Value::Object), Ok(order()));
    }

    #[test]
    fn nested_objects_are_checked_and_named_by_their_path() {
        let mut args = order();
        args["customer"] = json!({"name": 7});
        assert_eq!(problems_with(args.clone()), "`customer/name` must be of type string, got 7");
        args["customer"] = json!({});
        assert_eq!(problems_with(args), "the required property `customer/name` is missing");
    }

    #[test]
    fn arrays_of_objects_are_checked_item_by_item() {
        let mut args = order();
        args["items"] = json!([{"name": "tea", "price": 3}, {"name": "cake", "price": "3"}]);
        assert_eq!(problems_with(args.clone()), r#"`items/1/price` must be of type number, got "3""#);
        args["items"] = json!([{"name": "tea", "price": -1}]);
        assert_eq!(problems_with(args.clone()), "`items/0/price` is less than the minimum of 0 (got -1)");
        args["items"] = json!([]);
        assert_eq!(problems_with(args), "`items` has less than 1 item");
    }

    #[test]
    fn closed_nested_objects_name_the_unknown_property_and_the_known_ones() {
        let mut args = order();
        args["items"][0]["colour"] = json!("green");
        assert_eq!(problems_with(args), "unknown property `items/0/colour` (the known ones are `name`, `price`)");
        let closed =
            SharedValue::from(json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false}));
        assert_eq!(
            check(&closed, &json!({"b": 1, "c": 2})).unwrap_err(),
            "unknown arguments `b`, `c` (the known ones are `a`)"
        );
    }

    #[test]
    fn enums_list_their_options() {
        let mut args = order();
        args["unit"] = json!("K");
        assert_eq!(problems_with(args), r#"`unit` must be one of "C", "F", got "K""#);
    }

    #[test]
    fn several_problems_are_listed_up_to_a_cap() {
        let args = json!({"items": [{"price": "x", "extra": 1}], "unit": "K", "count": "2", "note": 3});
        let message = problems_with(args);
        let parts: Vec<&str> = message.split("; ").collect();
        assert_eq!(parts.len(), MAX_PROBLEMS + 1, "{message}");
        assert!(parts[0].contains("`customer` is missing"), "{message}");
        assert!(parts[MAX_PROBLEMS].starts_with("and ") && parts[MAX_PROBLEMS].ends_with(" more"), "{message}");
    }

    #[test]
    fn whole_values_are_checked_and_worded_as_outputs() {
        let schema = json!({"type": "object", "properties": {"urgent": {"type": "boolean"}}, "required": ["urgent"]});
        assert_eq!(check_value(&schema, &json!({"urgent": true})), Ok(()));
        assert_eq!(check_value(&schema, &json!({})).unwrap_err(), "the required property `urgent` is missing");
        assert_eq!(check_value(&schema, &json!("yes")).unwrap_err(), r#"the output must be of type object, got "yes""#);
        assert_eq!(check_value(&json!({"type": "array"}), &json!([1])), Ok(()));
    }

    #[test]
    fn formats_are_not_asserted() {
        let mut args = order();
        args["customer"]["email"] = json!("ada at example");
        assert!(check(&order_schema(), &args).is_ok());
    }

    #[test]
    fn a_refused_null_counts_as_not_given() {
        let mut args = order();
        args["note"] = Value::Null;
        args["items"][0]["name"] = Value::Null;
        assert_eq!(problems_with(args.clone()), "the required property `items/0/name` is missing");
        args["items"][0]["name"] = json!("tea");
        let sent = check(&order_schema(), &args).unwrap();
        assert_eq!(Value::Object(sent), order(), "the optional null is left out of what is sent");
        let nullable =
            SharedValue::from(json!({"type": "object", "properties": {"days": {"type": ["integer", "null"]}}}));
        let sent = check(&nullable, &json!({"days": null})).unwrap();
        assert_eq!(Value::Object(sent), json!({"days": null}), "a null the schema allows stays");
        let list = SharedValue::from(
            json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}),
        );
        assert_eq!(
            check(&list, &json!({"tags": ["a", null]})).unwrap_err(),
            "`tags/1` must be of type string, got null"
        );
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let mut args = order();
        args["count"] = json!(3.0);
        assert!(check(&order_schema(), &args).is_ok());
        args["count"] = json!(3.5);
        assert_eq!(problems_with(args), "`count` must be of type integer, got 3.5");
    }

    #[test]
    fn local_references_are_followed() {
        let schema = SharedValue::from(json!({
            "type": "object",
            "properties": {"point": {"$ref": "#/$defs/Point"}},
            "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "additionalProperties": false}},
        }));
        assert_eq!(
            check(&schema, &json!({"point": {"x": 1, "y": 2}})).unwrap_err(),
            "unknown property `point/y` (the known ones are `x`)"
        );
    }

    #[test]
    fn arguments_must_be_an_object_and_long_values_are_clipped() {
        assert_eq!(
            check(&SharedValue::from(json!({})), &json!([1])).unwrap_err(),
            "the arguments must be a JSON object, not [1]"
        );
        let schema = SharedValue::from(json!({"type": "object", "properties": {"n": {"type": "number"}}}));
        let message = check(&schema, &json!({"n": "x".repeat(500)})).unwrap_err();
        assert!(message.len() < 200 && message.ends_with('…'), "{message}");
    }

    #[test]
    fn the_schemas_of_the_crates_own_tools_compile() {
        use crate::tool::ToolRegistry;
        let specs = crate::tools::open_source_tool_registry(&crate::Config::default())
            .get_tools()
            .iter()
            .map(|tool| tool.spec())
            .collect::<Vec<_>>();
        let with_required =
            specs.iter().filter(|spec| spec.args_schema["required"].as_array().is_some_and(|r| !r.is_empty()));
        let mut checked = 0;
        for spec in with_required {
            let problem = check(&spec.args_schema, &json!({})).unwrap_err();
            assert!(problem.contains("is missing"), "{}: {problem}", spec.id);
            checked += 1;
        }
        assert!(checked >= 4, "only {checked} tools with required arguments");
    }

    #[test]
    fn an_invalid_schema_lets_the_arguments_through() {
        let args = json!({"a": 1});
        for schema in [
            json!({"type": "object", "properties": {"a": {"type": "strnig"}}}),
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}),
            json!({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}),
            json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}),
            json!("not a schema"),
        ] {
            assert_eq!(
                check(&SharedValue::from(schema.clone()), &args).map(Value::Object),
                Ok(args.clone()),
                "{schema}"
            );
        }
        assert!(!first_warning(&json!({"type": "object", "properties": {"a": {"type": "strnig"}}})), "warned once");
    }
}
