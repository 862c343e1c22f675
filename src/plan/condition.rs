//! Step conditions: an expression the crate evaluates itself, or plain words an
//! LLM call decides.
//!
//! An expression compares references and literals: `$ticket.urgent == true and
//! $score >= 3`, `not $done`, `$tier != "free" or $count > 10`. It may use `==`,
//! `!=`, `<`, `<=`, `>`, `>=`, `and`/`&&`, `or`/`||`, `not`/`!`, parentheses,
//! numbers, `"strings"`, `true`, `false` and `null`. Text holding any other word
//! ("the ticket is urgent") is plain words.
//!
//! An expression has at most [`MAX_PARTS`] parts (operators, parentheses and
//! operands): the evaluator reads it recursively, and a condition of thousands of
//! nested `not`s would overflow the stack of the thread that runs the step.

use evalexpr::{ContextWithMutableVariables, EvalexprError, HashMapContext, Value as ExprValue};
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
    /// Text that cannot be a condition, with why.
    Invalid(String),
}

/// The most parts (operators, parentheses, operands) an expression may have.
pub(crate) const MAX_PARTS: usize = 256;

impl Condition {
    /// Reads `text`.
    pub(crate) fn parse(text: &str) -> Self {
        if text.trim().is_empty() {
            return Self::Invalid("it is empty; write what must hold, or drop the condition".to_owned());
        }
        translate(text).unwrap_or_else(|| Self::Words(text.trim().to_owned()))
    }

    /// The outputs `text` tests, by name (`$ticket` for `$ticket.urgent`).
    pub(crate) fn tested_outputs(text: &str) -> Vec<String> {
        references(text).iter().filter_map(|token| Reference::parse(token)).map(|r| r.name).collect()
    }

    /// Why `text` cannot be a condition, if it cannot: it is empty, too long an
    /// expression, or an expression that does not parse (an operator without an
    /// operand, a parenthesis not closed).
    pub(crate) fn problem(text: &str) -> Option<String> {
        match Self::parse(text) {
            Self::Invalid(reason) => Some(reason),
            Self::Expression { text, bindings } => malformed(&text, &bindings),
            Self::Words(_) => None,
        }
    }

    /// Evaluates an expression with `lookup` giving each reference's value (`None`
    /// when it has none: a skipped or missing output reads as `null`). `None` for
    /// words.
    ///
    /// # Errors
    /// Why the expression could not be evaluated (comparing a string with a number, say).
    pub(crate) fn evaluate(&self, lookup: impl Fn(&str) -> Option<Value>) -> Option<Result<bool, String>> {
        let (text, bindings) = match self {
            Self::Expression { text, bindings } => (text, bindings),
            Self::Invalid(reason) => return Some(Err(reason.clone())),
            Self::Words(_) => return None,
        };
        let context = match context(bindings, |reference| to_expr(&lookup(reference).unwrap_or(Value::Null))) {
            Ok(context) => context,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(evalexpr::eval_boolean_with_context(text, &context).map_err(|e| describe(&e)))
    }
}

/// Why expression `text` does not parse, if it does not: it is evaluated with every
/// reference `null`, and only errors of its shape count (a `null` may well be of the
/// wrong type for an operator, where the real value will not be).
fn malformed(text: &str, bindings: &[(String, String)]) -> Option<String> {
    let tree = match evalexpr::build_operator_tree(text) {
        Ok(tree) => tree,
        Err(e) => return Some(describe(&e)),
    };
    let context = context(bindings, |_| ExprValue::Empty).ok()?;
    match tree.eval_with_context(&context) {
        Err(
            e @ (EvalexprError::WrongOperatorArgumentAmount { .. }
            | EvalexprError::AppendedToLeafNode
            | EvalexprError::UnmatchedLBrace
            | EvalexprError::UnmatchedRBrace
            | EvalexprError::UnmatchedPartialToken { .. }),
        ) => Some(describe(&e)),
        _ => None,
    }
}

/// The evaluator's variables of an expression: each binding's, valued by
/// `value_of` its reference.
fn context(
    bindings: &[(String, String)],
    value_of: impl Fn(&str) -> ExprValue,
) -> Result<HashMapContext, EvalexprError> {
    let mut context = HashMapContext::new();
    for (variable, reference) in bindings {
        context.set_value(variable.clone(), value_of(reference))?;
    }
    Ok(context)
}

/// An evaluator's error in the words of a plan's author (the evaluator's own name
/// values by its types, such as `Float(5.0)`).
fn describe(error: &EvalexprError) -> String {
    match error {
        EvalexprError::ExpectedBoolean { actual } => {
            format!("it comes to {}, not true or false; compare it, as in `$n > 0`", kind_of(actual))
        }
        EvalexprError::ExpectedNumber { actual } | EvalexprError::ExpectedFloat { actual } => {
            format!("a comparison needs a number here, and got {}", kind_of(actual))
        }
        EvalexprError::ExpectedNumberOrString { actual } => {
            format!("a comparison needs a number or a string here, and got {}", kind_of(actual))
        }
        EvalexprError::WrongTypeCombination { operator, actual } => {
            let kinds: Vec<String> = actual.iter().map(|t| format!("{t:?}").to_lowercase()).collect();
            format!("`{operator}` cannot compare {}", kinds.join(" with "))
        }
        EvalexprError::WrongOperatorArgumentAmount { .. } | EvalexprError::AppendedToLeafNode => {
            "an operator is missing a value on one side, or two values have no operator between them".to_owned()
        }
        EvalexprError::UnmatchedLBrace => "a `(` is not closed".to_owned(),
        EvalexprError::UnmatchedRBrace => "a `)` has no `(` to close".to_owned(),
        EvalexprError::UnmatchedPartialToken { first, .. } => format!("`{first}` is not an operator"),
        other => other.to_string(),
    }
}

/// What kind of value the evaluator got, as a plan's author would name it.
fn kind_of(value: &ExprValue) -> String {
    match value {
        ExprValue::Empty => "null (a skipped or missing output)".to_owned(),
        ExprValue::Boolean(b) => b.to_string(),
        ExprValue::Float(n) => format!("the number {n}"),
        ExprValue::Int(n) => format!("the number {n}"),
        ExprValue::String(s) => format!("the string {s:?}"),
        ExprValue::Tuple(_) => "a list".to_owned(),
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
    let (mut operands, mut parts) = (0, 0);
    while let Some(c) = rest.chars().next() {
        if !c.is_whitespace() {
            parts += 1;
        }
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
                let (operator, literal) = match word.to_ascii_lowercase().as_str() {
                    "and" => ("&&", false),
                    "or" => ("||", false),
                    "not" => ("!", false),
                    "true" => ("true", true),
                    "false" => ("false", true),
                    "null" | "none" => ("()", true),
                    _ => return None,
                };
                out.push_str(operator);
                operands += usize::from(literal);
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
    if parts > MAX_PARTS {
        let reason = format!("the expression has {parts} parts, more than the {MAX_PARTS} allowed; split the step");
        return Some(Condition::Invalid(reason));
    }
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
    fn literals_alone_are_expressions_the_crate_decides() {
        for (text, expected) in [("true", true), ("false", false), ("not false", true), ("null == null", true)] {
            assert!(matches!(Condition::parse(text), Condition::Expression { .. }), "{text}");
            assert_eq!(holds(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn an_empty_or_malformed_expression_is_a_problem_named_in_plain_words() {
        assert!(Condition::problem("  ").unwrap().contains("empty"));
        assert!(Condition::problem("$n >").unwrap().contains("missing a value"), "{:?}", Condition::problem("$n >"));
        assert!(Condition::problem("($n > 1").unwrap().contains("not closed"));
        assert_eq!(Condition::problem("$n > 1 and not $done"), None);
        assert_eq!(Condition::problem("the ticket is urgent"), None, "words are for the model");
        let not_boolean = holds("$n").unwrap_err();
        assert!(not_boolean.contains("the number 0, not true or false"), "{not_boolean}");
    }

    /// Thousands of nested `not`s overflowed the stack of the thread evaluating
    /// them (and of every process that resumed the workflow).
    #[test]
    fn an_expression_past_the_limit_is_refused_and_one_at_it_evaluates_on_a_small_stack() {
        let deep = format!("{}$n == 0", "not ".repeat(50_000));
        let reason = Condition::problem(&deep).expect("refused");
        assert!(reason.contains("more than the 256 allowed"), "{reason}");
        assert!(holds(&deep).unwrap_err().contains("256"));
        // 126 parentheses each side of `$n`, `=`, `=` and `0`.
        let at_limit = format!("{}$n == 0{}", "( ".repeat(126), " )".repeat(126));
        // Tokio's worker threads have 2 MiB stacks; this runs on a quarter of that.
        let evaluated = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || (Condition::problem(&at_limit), holds(&at_limit)))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(evaluated, (None, Ok(true)));
    }

    #[test]
    fn other_words_are_for_the_model() {
        for words in ["the ticket is urgent", "urgent", "$t says it is urgent", "$t.score is high"] {
            assert_eq!(Condition::parse(words), Condition::Words(words.to_owned()), "{words}");
        }
        assert_eq!(references("$t says $n and $t"), ["$t", "$n"]);
    }
}
