//! Step conditions: an expression the crate evaluates itself, or plain words an
//! LLM call decides.
//!
//! An expression compares references and literals: `$ticket.urgent == true and
//! $score >= 3`, `not $done`, `$tier != "free" or $count > 10`. It may use `==`,
//! `!=`, `<`, `<=`, `>`, `>=`, `and`/`&&`, `or`/`||`, `not`/`!`, parentheses,
//! numbers, `"strings"`, `true`, `false` and `null`. Text holding any other word
//! ("the ticket is urgent") is plain words.

use evalexpr::{ContextWithMutableVariables, HashMapContext, Value as ExprValue};
use serde_json::Value;

use super::reference::{Reference, identifier_len};

/// A condition, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    /// An expression: evalexpr's text, and each variable with the reference it stands for.
    Expression {
        /// The expression in evalexpr's syntax.
        text: String,
        /// `(variable, reference)` pairs.
        bindings: Vec<(String, String)>,
    },
    /// Plain words, for a model to decide.
    Words(String),
}

impl Condition {
    /// Reads `text`.
    pub(crate) fn parse(text: &str) -> Self {
        translate(text).unwrap_or_else(|| Self::Words(text.trim().to_owned()))
    }

    /// Evaluates an expression with `lookup` giving each reference's value (`None`
    /// when it has none: a skipped or missing output reads as `null`). `None` for
    /// words.
    ///
    /// # Errors
    /// Why the expression could not be evaluated (comparing a string with a number, say).
    pub(crate) fn evaluate(&self, lookup: impl Fn(&str) -> Option<Value>) -> Option<Result<bool, String>> {
        let Self::Expression { text, bindings } = self else { return None };
        let mut context = HashMapContext::new();
        for (variable, reference) in bindings {
            let value = to_expr(&lookup(reference).unwrap_or(Value::Null));
            if let Err(e) = context.set_value(variable.clone(), value) {
                return Some(Err(e.to_string()));
            }
        }
        Some(evalexpr::eval_boolean_with_context(text, &context).map_err(|e| e.to_string()))
    }
}

/// The reference tokens in a condition's text (expression or words), each once.
pub(crate) fn references(text: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(offset) = text[at..].find('$') {
        let start = at + offset;
        match Reference::parse_prefix(&text[start..]) {
            Some((_, len)) => {
                let token = text[start..start + len].to_owned();
                if !found.contains(&token) {
                    found.push(token);
                }
                at = start + len;
            }
            None => at = start + 1,
        }
    }
    found
}

/// `text` in evalexpr's syntax, or `None` when it holds a word that is not part of
/// an expression.
fn translate(text: &str) -> Option<Condition> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut bindings: Vec<(String, String)> = Vec::new();
    let mut rest = text;
    let mut operands = 0;
    while let Some(c) = rest.chars().next() {
        let taken = match c {
            '$' => {
                let (_, len) = Reference::parse_prefix(rest)?;
                let token = &rest[..len];
                let variable = match bindings.iter().find(|(_, r)| r == token) {
                    Some((variable, _)) => variable.clone(),
                    None => {
                        let variable = format!("ref_{}", bindings.len());
                        bindings.push((variable.clone(), token.to_owned()));
                        variable
                    }
                };
                out.push_str(&variable);
                operands += 1;
                len
            }
            '"' | '\'' => {
                let close = rest[1..].find(c)? + 1;
                out.push('"');
                out.push_str(&rest[1..close].replace('"', "\\\""));
                out.push('"');
                operands += 1;
                close + 1
            }
            '0'..='9' => {
                let len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
                out.push_str(&rest[..len]);
                // Numbers compare as floats, whatever their spelling.
                if !rest[..len].contains('.') {
                    out.push_str(".0");
                }
                operands += 1;
                len
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let len = identifier_len(rest);
                let word = &rest[..len];
                out.push_str(match word.to_ascii_lowercase().as_str() {
                    "and" => "&&",
                    "or" => "||",
                    "not" => "!",
                    "true" => "true",
                    "false" => "false",
                    "null" | "none" => "()",
                    _ => return None,
                });
                len
            }
            c if "=!<>&|() \t\n".contains(c) => {
                out.push(c);
                c.len_utf8()
            }
            _ => return None,
        };
        rest = &rest[taken..];
        out.push(' ');
    }
    // Glue split two-character operators back together (`= =` cannot occur: each
    // character was copied next to its neighbour).
    let text = out.replace("= =", "==").replace("! =", "!=").replace("< =", "<=").replace("> =", ">=");
    let text = text.replace("& &", "&&").replace("| |", "||");
    (operands > 0).then_some(Condition::Expression { text, bindings })
}

/// A JSON value as evalexpr sees it: numbers as floats, lists as tuples, objects as
/// their JSON text.
fn to_expr(value: &Value) -> ExprValue {
    match value {
        Value::Null => ExprValue::Empty,
        Value::Bool(b) => ExprValue::Boolean(*b),
        Value::Number(n) => ExprValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => ExprValue::String(s.clone()),
        Value::Array(items) => ExprValue::Tuple(items.iter().map(to_expr).collect()),
        Value::Object(_) => ExprValue::String(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn holds(text: &str) -> Result<bool, String> {
        let values = json!({"$t": {"urgent": true, "score": 4, "tier": "pro"}, "$n": 0, "$skipped": null});
        let lookup = |token: &str| {
            let r = Reference::parse(token)?;
            r.select(values.get(&r.name)?)
        };
        Condition::parse(text).evaluate(lookup).expect("an expression")
    }

    #[test]
    fn expressions_compare_references_and_literals() {
        assert_eq!(holds("$t.urgent == true"), Ok(true));
        assert_eq!(holds("$t.urgent and $t.score >= 3"), Ok(true));
        assert_eq!(holds("not $t.urgent or $n > 0"), Ok(false));
        assert_eq!(holds("$t.tier != 'free' && $t.score == 4"), Ok(true));
        assert_eq!(holds("$skipped == null"), Ok(true));
        assert_eq!(holds("($n < 1) || false"), Ok(true));
        assert!(holds("$t.tier > 3").is_err(), "a string is not a number");
    }

    #[test]
    fn other_words_are_for_the_model() {
        for words in ["the ticket is urgent", "urgent", "$t says it is urgent", "$t.score is high"] {
            assert_eq!(Condition::parse(words), Condition::Words(words.to_owned()), "{words}");
        }
        assert_eq!(references("$t says $n and $t"), ["$t", "$n"]);
    }
}
