//! `calculator_tool`: arithmetic asked in words or symbols.
//!
//! The question is split into numbers, symbols and words; words and phrases become
//! operators through fixed tables; the resulting expression, made of numbers,
//! operators and parentheses only, is evaluated by `evalexpr` in floating point
//! with no variables or functions available. Nothing else from the question ever
//! reaches the evaluator, and a word the tables do not know is an error rather than
//! something silently dropped (dropping "square root of" would answer 16 to
//! "the square root of 16").
//!
//! A question the calculator cannot read (an unknown word or character, unbalanced
//! parentheses, a dangling operator, too long or too deeply nested) is a
//! [`ToolError::Soft`] error whose message says how to rephrase, so the model can
//! try again. A question with no calculation in it, a division by zero and a result
//! that is not a finite number are [`ToolError::Hard`]: rephrasing cannot fix them.

use evalexpr::{EmptyContext, Node, Operator};
use schemars::JsonSchema;
use serde::Deserialize;

use super::json_number;
use crate::tool::{ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

/// Longer questions are refused: arithmetic does not need them, and parsing has a cost.
const MAX_QUESTION_CHARS: usize = 1000;
/// Deeper nesting is refused, so evaluation cannot exhaust the stack.
const MAX_NESTING: usize = 32;
/// How to rephrase a question the calculator could not read; ends every soft error.
const REPHRASE: &str = "rephrase it with digits and + - * / ^ ( ), or with words such as plus, minus, \
                        times, divided by, to the power of";

/// "subtract A from B" and friends: leading words, the word between A and B, the
/// operator, and whether B comes first in the expression.
const VERB_FORMS: &[(&[&str], &str, &str, bool)] = &[
    (&["subtract"], "from", "-", true),
    (&["divide"], "by", "/", false),
    (&["multiply"], "by", "*", false),
    (&["add"], "to", "+", false),
    (&["add"], "and", "+", false),
    (&["sum", "of"], "and", "+", false),
    (&["product", "of"], "and", "*", false),
    (&["difference", "between"], "and", "-", false),
];

/// Words and phrases that stand for operators, longest first where they share a start.
/// An empty operator means the phrase carries no meaning ("equal to").
const PHRASES: &[(&[&str], &str)] = &[
    (&["raised", "to", "the", "power", "of"], "^"),
    (&["to", "the", "power", "of"], "^"),
    (&["raised", "to"], "^"),
    (&["multiplied", "by"], "*"),
    (&["divided", "by"], "/"),
    (&["added", "to"], "+"),
    (&["percent", "of"], "/ 100 *"),
    (&["equal", "to"], ""),
    (&["plus"], "+"),
    (&["and"], "+"),
    (&["minus"], "-"),
    (&["negative"], "-"),
    (&["times"], "*"),
    (&["over"], "/"),
    (&["mod"], "%"),
    (&["modulo"], "%"),
    (&["squared"], "^ 2"),
    (&["cubed"], "^ 3"),
    (&["percent"], "/ 100"),
];

/// Words that only dress a question up.
const FILLERS: &[&str] = &[
    "what",
    "what's",
    "whats",
    "how",
    "much",
    "is",
    "are",
    "the",
    "of",
    "result",
    "value",
    "answer",
    "calculate",
    "compute",
    "evaluate",
    "please",
    "equal",
    "equals",
    "thanks",
];

/// Evaluates arithmetic given in words or symbols.
///
/// Understands numbers (`1,000` and `.5` included), `+ - * / ^ ( ) %` (and `×`,
/// `÷`, `**`), "plus", "minus", "times", "x" between numbers, "multiplied by",
/// "divided by", "over", "to the power of", "squared", "cubed", "percent (of)",
/// "mod", and the forms "add A to B", "subtract A from B", "multiply A by B",
/// "divide A by B", "the sum/product of A and B", "the difference between A and B".
#[derive(Debug, Clone, Copy, Default)]
pub struct CalculatorTool;

/// The arguments of [`CalculatorTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CalculatorArgs {
    /// The calculation, in words or symbols, such as "What is 3 plus 4 times 2?" or "(1+2)*3".
    pub math_question: String,
}

impl CalculatorTool {
    /// The expression `question` is read as, such as `3.0 + 4.0 * 2.0` for
    /// "What is 3 plus 4 times 2?".
    ///
    /// # Errors
    /// [`ToolError::Soft`] saying what could not be understood and how to rephrase;
    /// [`ToolError::Hard`] when the question holds no calculation at all.
    pub fn expression(question: &str) -> Result<String, ToolError> {
        if question.chars().count() > MAX_QUESTION_CHARS {
            return Err(rephrase(format!(
                "the question is longer than {MAX_QUESTION_CHARS} characters, more than a calculation needs"
            )));
        }
        let tokens = lex(question)?;
        let expression = translate(&tokens)?;
        if expression.is_empty() {
            return Err(ToolError::hard(format!(
                "no calculation found in {question:?}; give numbers and operators, such as \"3 + 4\""
            )));
        }
        Ok(expression)
    }

    /// The answer to `question`.
    ///
    /// # Errors
    /// [`ToolError::Soft`] for a question that cannot be understood, with a hint on
    /// how to rephrase it; [`ToolError::Hard`] for an empty one, a division by zero,
    /// or a result that is not a finite number (too large, or not real).
    pub fn evaluate(question: &str) -> Result<f64, ToolError> {
        evaluate(&Self::expression(question)?)
    }
}

#[async_trait::async_trait]
impl TypedTool for CalculatorTool {
    type Args = CalculatorArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new(
            "calculator_tool",
            "Calculator Tool",
            "Evaluates arithmetic written in words or symbols: + - * / ^, parentheses, percent, \
             such as \"What is 3 plus 4 times 2?\" or \"subtract 3 from 10\".",
        )
        .output_description("The result, as a number.")
        .read_only()
    }

    async fn call(&self, _ctx: &ToolRunContext, args: CalculatorArgs) -> Result<ToolOutput, ToolError> {
        Self::evaluate(&args.math_question).map(|value| ToolOutput::value(json_number(value)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(String),
    Symbol(char),
    Word(String),
}

fn lex(question: &str) -> Result<Vec<Token>, ToolError> {
    let chars: Vec<char> = question.to_lowercase().chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let starts_number = c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if starts_number {
            let (number, next) = read_number(&chars, i);
            tokens.push(Token::Number(number));
            i = next;
        } else if c.is_alphabetic() {
            let end = (i..chars.len()).find(|&j| !is_word_char(chars[j])).unwrap_or(chars.len());
            tokens.push(Token::Word(chars[i..end].iter().collect::<String>().replace('’', "'")));
            i = end;
        } else if c == '*' && chars.get(i + 1) == Some(&'*') {
            tokens.push(Token::Symbol('^'));
            i += 2;
        } else {
            if let Some(symbol) = symbol(c)? {
                tokens.push(Token::Symbol(symbol));
            }
            i += 1;
        }
    }
    Ok(tokens)
}

fn is_word_char(c: char) -> bool {
    c.is_alphabetic() || c == '\'' || c == '’'
}

/// The operator or parenthesis `c` stands for; `None` for punctuation that means nothing.
fn symbol(c: char) -> Result<Option<char>, ToolError> {
    Ok(Some(match c {
        '+' | '-' | '*' | '/' | '^' | '(' | ')' | '%' => c,
        '×' | '·' | '∙' => '*',
        '÷' => '/',
        '−' | '–' => '-',
        '[' | '{' => '(',
        ']' | '}' => ')',
        _ if c.is_whitespace() || "?!.,:;=\"'".contains(c) => return Ok(None),
        _ => return Err(rephrase(format!("the calculator does not understand the character {c:?}"))),
    }))
}

/// Digits with at most one decimal point; a comma followed by three digits is a
/// thousands separator ("1,000"), any other comma ends the number.
fn read_number(chars: &[char], start: usize) -> (String, usize) {
    let mut text = String::new();
    let mut i = start;
    let mut seen_point = false;
    while let Some(&c) = chars.get(i) {
        let digit_follows = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() {
            text.push(c);
        } else if c == '.' && !seen_point && digit_follows {
            seen_point = true;
            text.push(c);
        } else if !(c == ',' && !seen_point && is_thousands_group(chars, i + 1)) {
            break;
        }
        i += 1;
    }
    (text, i)
}

fn is_thousands_group(chars: &[char], start: usize) -> bool {
    let digits = chars.get(start..start + 3).is_some_and(|group| group.iter().all(char::is_ascii_digit));
    digits && !chars.get(start + 3).is_some_and(char::is_ascii_digit)
}

/// Written with a decimal point so that `evalexpr` computes in floating point
/// (its integers divide with truncation: `10 / 4` would be 2).
fn float_literal(number: &str) -> String {
    match number.split_once('.') {
        Some(("", fraction)) => format!("0.{fraction}"),
        Some(_) => number.to_owned(),
        None => format!("{number}.0"),
    }
}

fn translate(tokens: &[Token]) -> Result<String, ToolError> {
    let start = tokens.iter().position(|t| !matches!(t, Token::Word(w) if FILLERS.contains(&w.as_str())));
    let tokens = start.map_or(&[][..], |start| &tokens[start..]);
    match verb_form(tokens)? {
        Some(expression) => Ok(expression),
        None => infix(tokens),
    }
}

/// Reads "subtract A from B" and the other [`VERB_FORMS`], if `tokens` start with one.
fn verb_form(tokens: &[Token]) -> Result<Option<String>, ToolError> {
    let mut expected = None;
    for &(lead, separator, operator, swap) in VERB_FORMS {
        if !starts_with_words(tokens, lead) {
            continue;
        }
        let Some(split) = find_word(tokens, lead.len(), separator) else {
            expected.get_or_insert((lead, separator));
            continue;
        };
        let (a, b) = (&tokens[lead.len()..split], &tokens[split + 1..]);
        if a.is_empty() || b.is_empty() {
            return Err(rephrase(format!(
                "\"{} A {separator} B\" needs a number on each side of \"{separator}\"",
                lead.join(" ")
            )));
        }
        let (first, second) = if swap { (b, a) } else { (a, b) };
        return Ok(Some(format!("({}) {operator} ({})", translate(first)?, translate(second)?)));
    }
    match expected {
        Some((lead, separator)) => Err(rephrase(format!(
            "\"{}\" must be followed by \"A {separator} B\", such as \"{} 10 {separator} 4\"",
            lead.join(" "),
            lead.join(" ")
        ))),
        None => Ok(None),
    }
}

fn starts_with_words(tokens: &[Token], words: &[&str]) -> bool {
    words.len() <= tokens.len() && words.iter().zip(tokens).all(|(w, t)| matches!(t, Token::Word(x) if x == w))
}

/// The first `word` at or after `from` that is not inside parentheses.
fn find_word(tokens: &[Token], from: usize, word: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate().skip(from) {
        match token {
            Token::Symbol('(') => depth += 1,
            Token::Symbol(')') => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 && w == word => return Some(i),
            _ => {}
        }
    }
    None
}

/// Reads "3 plus 4 times 2" and "3 + 4 * 2" alike.
fn infix(tokens: &[Token]) -> Result<String, ToolError> {
    let mut out = Expression::default();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        let next = tokens.get(i + 1);
        i += match token {
            Token::Number(number) => out.number(number)?,
            Token::Symbol('(') => out.open(),
            Token::Symbol(')') => out.close(),
            Token::Symbol('%') => out.percent(next),
            Token::Symbol(op) => out.operator(&op.to_string()),
            Token::Word(word) if word == "x" && out.operand_end && starts_operand(next) => out.operator("*"),
            Token::Word(word) => out.word(word, &tokens[i..])?,
        };
    }
    Ok(out.parts.join(" "))
}

fn starts_operand(token: Option<&Token>) -> bool {
    matches!(token, Some(Token::Number(_) | Token::Symbol('(')))
}

/// The expression being written, and whether its last part ends an operand.
#[derive(Debug, Default)]
struct Expression {
    parts: Vec<String>,
    operand_end: bool,
}

impl Expression {
    /// Each method returns how many tokens it consumed.
    fn number(&mut self, number: &str) -> Result<usize, ToolError> {
        if self.operand_end {
            if self.parts.last().is_some_and(|p| p == ")") {
                self.parts.push("*".to_owned()); // "(1 + 2) 3" multiplies, as written maths does.
            } else {
                let previous = self.parts.last().map_or("", String::as_str);
                return Err(rephrase(format!(
                    "two numbers with no operator between them ({previous} and {})",
                    float_literal(number)
                )));
            }
        }
        self.parts.push(float_literal(number));
        self.operand_end = true;
        Ok(1)
    }

    fn open(&mut self) -> usize {
        if self.operand_end {
            self.parts.push("*".to_owned()); // "2(3 + 4)"
        }
        self.parts.push("(".to_owned());
        self.operand_end = false;
        1
    }

    fn close(&mut self) -> usize {
        self.parts.push(")".to_owned());
        self.operand_end = true;
        1
    }

    fn operator(&mut self, operator: &str) -> usize {
        if !operator.is_empty() {
            self.parts.push(operator.to_owned());
            self.operand_end = operator.ends_with(|c: char| c.is_ascii_digit());
        }
        1
    }

    /// "20% of 50" is a percentage, "10 % 3" a remainder, "50%" alone a percentage.
    fn percent(&mut self, next: Option<&Token>) -> usize {
        match next {
            Some(Token::Word(w)) if w == "of" => self.operator("/ 100 *") + 1,
            _ if starts_operand(next) => self.operator("%"),
            _ => self.operator("/ 100"),
        }
    }

    fn word(&mut self, word: &str, rest: &[Token]) -> Result<usize, ToolError> {
        if let Some((words, operator)) = PHRASES.iter().find(|(words, _)| starts_with_words(rest, words)) {
            self.operator(operator);
            return Ok(words.len());
        }
        if FILLERS.contains(&word) {
            return Ok(1);
        }
        Err(rephrase(format!("the calculator does not understand {word:?}")))
    }
}

/// A soft error: `problem`, then how to rephrase the question.
fn rephrase(problem: impl std::fmt::Display) -> ToolError {
    ToolError::soft(format!("{problem}; {REPHRASE}"))
}

/// Evaluates a translated expression. Shape errors (unbalanced or too deep
/// parentheses, an expression `evalexpr` cannot read) are soft; a division by zero
/// and a non-finite result are hard.
fn evaluate(expression: &str) -> Result<f64, ToolError> {
    check_parentheses(expression)?;
    let unreadable = |e: evalexpr::EvalexprError| {
        let reason = e.to_string();
        rephrase(format!("could not evaluate {expression}: {}", reason.trim_end_matches('.')))
    };
    let tree = evalexpr::build_operator_tree(expression).map_err(unreadable)?;
    if let Some(name) = tree.iter_identifiers().next() {
        // The translation emits no names; this guards against it ever doing so.
        return Err(ToolError::hard(format!("could not evaluate {expression}: unexpected name {name:?}")));
    }
    check_divisors(&tree, expression)?;
    let value = tree.eval_number_with_context(&EmptyContext).map_err(unreadable)?;
    if value.is_finite() {
        Ok(value)
    } else if value.is_nan() {
        Err(ToolError::hard(format!("the result of {expression} is not a real number")))
    } else {
        Err(ToolError::hard(format!("the result of {expression} is too large to represent")))
    }
}

/// Refuses parentheses that do not pair up or nest deeper than [`MAX_NESTING`].
fn check_parentheses(expression: &str) -> Result<(), ToolError> {
    let opened = expression.chars().filter(|&c| c == '(').count();
    let closed = expression.chars().filter(|&c| c == ')').count();
    if opened != closed || !closes_in_order(expression) {
        return Err(rephrase(format!(
            "the parentheses do not pair up ({opened} opened, {closed} closed) in {expression}"
        )));
    }
    if nesting(expression) > MAX_NESTING {
        return Err(rephrase(format!("the calculation nests parentheses deeper than {MAX_NESTING} levels")));
    }
    Ok(())
}

/// Whether no `)` comes before the `(` it would close.
fn closes_in_order(expression: &str) -> bool {
    let mut depth = 0usize;
    for c in expression.chars() {
        match c {
            '(' => depth += 1,
            ')' => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => {}
        }
    }
    true
}

/// The deepest nesting of parentheses in `expression`.
fn nesting(expression: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0;
    for c in expression.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        deepest = deepest.max(depth);
    }
    deepest
}

/// Floating-point division by zero gives infinity rather than an error, so divisors
/// are checked first.
fn check_divisors(node: &Node, expression: &str) -> Result<(), ToolError> {
    if matches!(node.operator(), Operator::Div | Operator::Mod)
        && let [_, divisor] = node.children()
        && divisor.eval_number_with_context(&EmptyContext).is_ok_and(|d| d == 0.0)
    {
        return Err(ToolError::hard(format!("division by zero in {expression}")));
    }
    node.children().iter().try_for_each(|child| check_divisors(child, expression))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_float_literals() {
        assert_eq!(float_literal("3"), "3.0");
        assert_eq!(float_literal(".5"), "0.5");
        assert_eq!(float_literal("1.25"), "1.25");
    }

    #[test]
    fn thousands_separators_and_sentence_ends_are_read() {
        assert_eq!(
            lex("1,000.5 and 3,4.").unwrap(),
            [
                Token::Number("1000.5".into()),
                Token::Word("and".into()),
                Token::Number("3".into()),
                Token::Number("4".into()),
            ]
        );
    }

    #[test]
    fn nesting_is_measured() {
        assert_eq!(nesting("((1) + (2))"), 2);
    }

    #[test]
    fn parentheses_must_close_in_order() {
        assert!(closes_in_order("(1) + ((2))"));
        assert!(!closes_in_order(") 1 ("));
    }
}
