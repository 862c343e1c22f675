//! References to outputs, and to values inside them: `$name`, `$name.field`,
//! `$name.items[0]`, `$name[-1]` (a negative index counts from the end).
//!
//! The same syntax is read wherever a plan names an output: a step's inputs, its
//! plan-time `args`, its `condition` and its `for_each`.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

/// One step into a value: an object's field, or a list's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `.field`
    Field(String),
    /// `[i]`; negative counts from the end.
    Index(i64),
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A parsed reference: the output's name (with its `$`) and the path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `$name`.
    pub(crate) name: String,
    /// The path inside the output's value; empty for the whole value.
    pub(crate) path: Vec<Segment>,
}

impl Reference {
    /// `text` read as one whole reference, or `None` when it is something else.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (reference, len) = Self::parse_prefix(text)?;
        (len == text.len()).then_some(reference)
    }

    /// The reference at the start of `text`, with its length in bytes.
    pub(crate) fn parse_prefix(text: &str) -> Option<(Self, usize)> {
        let rest = text.strip_prefix('$')?;
        let name_len = identifier_len(rest);
        if name_len == 0 {
            return None;
        }
        let mut at = 1 + name_len;
        let mut path = Vec::new();
        while let Some((segment, len)) = segment_at(&text[at..]) {
            path.push(segment);
            at += len;
        }
        Some((Self { name: text[..=name_len].to_owned(), path }, at))
    }

    /// The value this reference points at inside `value` (the output's value), or
    /// `None` when the path leads nowhere. A string holding JSON (an untyped LLM
    /// step's answer) is read as that JSON when a path goes into it.
    pub(crate) fn select(&self, value: &Value) -> Option<Value> {
        match self.walk(value) {
            Walked::To(found) => Some(found.into_owned()),
            Walked::ThroughNull | Walked::Nowhere => None,
        }
    }

    /// Whether the path leads nowhere in `value`: to a field or item it does not
    /// have. A path that meets `null` on the way (a skipped output, or a skipped
    /// item of a loop's) does not miss: there is nothing to look into.
    pub(crate) fn misses(&self, value: &Value) -> bool {
        matches!(self.walk(value), Walked::Nowhere)
    }

    fn walk<'a>(&self, value: &'a Value) -> Walked<'a> {
        // Walked borrowed, so that only what the path leads to is copied (a field of a
        // search result, say), unless a string has to be parsed on the way.
        let mut current = Cow::Borrowed(value);
        for segment in &self.path {
            if let Value::String(text) = current.as_ref()
                && let Some(parsed) = crate::text::json_in(text)
            {
                current = Cow::Owned(parsed);
            }
            if current.is_null() {
                return Walked::ThroughNull;
            }
            let next = match current {
                Cow::Borrowed(value) => segment.within(value).map(Cow::Borrowed),
                Cow::Owned(value) => segment.within(&value).cloned().map(Cow::Owned),
            };
            match next {
                Some(next) => current = next,
                None => return Walked::Nowhere,
            }
        }
        Walked::To(current)
    }
}

/// Where a path led.
enum Walked<'a> {
    To(Cow<'a, Value>),
    ThroughNull,
    Nowhere,
}

impl Segment {
    /// The field or item of `value` this segment names (an index below 0 counts from the end).
    fn within<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        match (self, value) {
            (Segment::Field(name), Value::Object(map)) => map.get(name),
            (Segment::Index(i), Value::Array(items)) => {
                let len = i64::try_from(items.len()).ok()?;
                let index = if *i < 0 { len + i } else { *i };
                items.get(usize::try_from(index).ok()?)
            }
            _ => None,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        self.path.iter().try_for_each(|s| s.fmt(f))
    }
}

/// The length in bytes of the identifier at the start of `text` (0 if there is none).
///
/// Read as bytes: an identifier is ASCII, and the first byte of any other character
/// is not, so it ends there as it would by characters, without decoding each one.
pub(crate) fn identifier_len(text: &str) -> usize {
    let bytes = text.as_bytes();
    match bytes.first() {
        Some(&b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return 0,
    }
    bytes.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_')).unwrap_or(bytes.len())
}

/// The path segment at the start of `text`: `.identifier` or `[integer]`.
fn segment_at(text: &str) -> Option<(Segment, usize)> {
    if let Some(rest) = text.strip_prefix('.') {
        let len = identifier_len(rest);
        return (len > 0).then(|| (Segment::Field(rest[..len].to_owned()), 1 + len));
    }
    let inner = text.strip_prefix('[')?;
    let close = inner.find(']')?;
    let index = inner[..close].trim().parse::<i64>().ok()?;
    Some((Segment::Index(index), close + 2))
}

/// Whether `schema` (with its `$defs` in `root`) admits `path`; `Err` names the
/// first segment it does not have. A schema that does not say (no `properties`,
/// or a combination the walk cannot follow) admits anything below it.
pub(crate) fn schema_admits(root: &Value, path: &[Segment]) -> Result<(), String> {
    let mut schema = root;
    for (i, segment) in path.iter().enumerate() {
        schema = follow_ref(root, schema);
        let next = match segment {
            Segment::Field(name) => match schema.get("properties").and_then(Value::as_object) {
                Some(properties) => match properties.get(name) {
                    Some(sub) => Some(sub),
                    None if schema.get("additionalProperties").is_none_or(|a| a == false) => {
                        let known: Vec<&str> = properties.keys().map(String::as_str).collect();
                        return Err(format!("{} (its fields are {})", at(path, i), known.join(", ")));
                    }
                    None => None,
                },
                None => match schema.get("type").and_then(Value::as_str) {
                    Some(kind) if kind != "object" => return Err(format!("{} (it is a {kind})", at(path, i))),
                    _ => None,
                },
            },
            Segment::Index(_) => match (schema.get("type").and_then(Value::as_str), schema.get("items")) {
                (_, Some(items)) => Some(items),
                (Some(kind), None) if kind != "array" => {
                    return Err(format!("{} (it is a {kind}, not a list)", at(path, i)));
                }
                _ => None,
            },
        };
        match next {
            Some(sub) => schema = sub,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// The `type` the schema declares at `path`, when it declares one the walk can reach.
pub(crate) fn schema_type_at(root: &Value, path: &[Segment]) -> Option<String> {
    let mut schema = follow_ref(root, root);
    for segment in path {
        let next = match segment {
            Segment::Field(name) => schema.get("properties")?.get(name)?,
            Segment::Index(_) => schema.get("items")?,
        };
        schema = follow_ref(root, next);
    }
    schema.get("type")?.as_str().map(str::to_owned)
}

/// The path up to and including segment `i`, as written.
fn at(path: &[Segment], i: usize) -> String {
    path[..=i].iter().map(ToString::to_string).collect()
}

/// `schema` itself, or what its local `$ref` (`#/$defs/...`) points at in `root`.
fn follow_ref<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
        .unwrap_or(schema)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn references_read_fields_indexes_and_negative_indexes() {
        let value = json!({"items": [{"id": 1}, {"id": 2}], "name": "x"});
        let get = |text: &str| Reference::parse(text).and_then(|r| r.select(&value));
        assert_eq!(get("$a"), Some(value.clone()));
        assert_eq!(get("$a.name"), Some(json!("x")));
        assert_eq!(get("$a.items[0].id"), Some(json!(1)));
        assert_eq!(get("$a.items[-1]"), Some(json!({"id": 2})));
        assert_eq!(get("$a.items[2]"), None);
        assert_eq!(get("$a.items[-3]"), None);
        assert_eq!(get("$a.missing"), None);
        assert_eq!(Reference::parse("$a.items[-1].id").unwrap().to_string(), "$a.items[-1].id");
    }

    #[test]
    fn a_path_reads_into_json_text() {
        let r = Reference::parse("$a.urgent").unwrap();
        assert_eq!(r.select(&json!("{\"urgent\": true}")), Some(json!(true)));
        let deep = Reference::parse("$a.list[-1].n").unwrap();
        assert_eq!(deep.select(&json!({"list": [{"n": 1}, "{\"n\": 2}"]})), Some(json!(2)), "text inside a value");
    }

    #[test]
    fn a_sentence_ending_after_a_reference_is_not_a_path() {
        let (r, len) = Reference::parse_prefix("$city. Then").unwrap();
        assert_eq!((r.name.as_str(), r.path.len(), len), ("$city", 0, 5));
        assert!(Reference::parse("$9").is_none());
    }

    #[test]
    fn schemas_admit_only_their_fields() {
        let schema = json!({
            "type": "object",
            "properties": {"tickets": {"type": "array", "items": {"$ref": "#/$defs/T"}}, "n": {"type": "integer"}},
            "$defs": {"T": {"type": "object", "properties": {"urgent": {"type": "boolean"}}}}
        });
        let path = |text: &str| Reference::parse(text).unwrap().path;
        assert!(schema_admits(&schema, &path("$a.tickets[0].urgent")).is_ok());
        assert!(schema_admits(&schema, &path("$a.tickets[0].colour")).unwrap_err().starts_with(".tickets[0].colour"));
        assert!(schema_admits(&schema, &path("$a.nope")).is_err());
        assert!(schema_admits(&schema, &path("$a.n[0]")).is_err());
        assert!(schema_admits(&json!({}), &path("$a.anything[3]")).is_ok());
    }
}
