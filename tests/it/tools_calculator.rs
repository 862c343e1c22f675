//! The calculator tool: its phrase table, its number output and its errors: soft
//! (with a hint on how to rephrase) for questions it cannot read, hard for an empty
//! question, a division by zero and a result out of range.

use portia::tools::CalculatorTool;
use portia::{Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId};
use serde_json::{Value, json};

async fn ask(question: &str) -> Result<Value, ToolError> {
    let ctx = ToolRunContext::new(WorkflowId::new());
    match CalculatorTool.run(&ctx, json!({ "math_question": question })).await? {
        ToolOutput::Value(value) => Ok(value.into_value()),
        other => panic!("expected a value for {question:?}, got {other:?}"),
    }
}

/// The advice that ends every soft error.
const REPHRASE: &str = "rephrase it with digits and + - * / ^ ( ), or with words such as plus, minus, \
                        times, divided by, to the power of";

async fn hard_error(question: &str) -> String {
    match ask(question).await {
        Err(ToolError::Hard(message)) => message,
        other => panic!("expected a hard error for {question:?}, got {other:?}"),
    }
}

async fn soft_error(question: &str) -> String {
    match ask(question).await {
        Err(ToolError::Soft(message)) => message,
        other => panic!("expected a soft error for {question:?}, got {other:?}"),
    }
}

/// Asserts that `question` is a soft error saying `problem`, then how to rephrase.
async fn assert_soft(question: &str, problem: &str) {
    assert_eq!(soft_error(question).await, format!("{problem}; {REPHRASE}"), "{question:?}");
}

#[tokio::test]
async fn phrase_table_turns_words_and_symbols_into_arithmetic() {
    let cases = [
        ("What is 3 plus 4 times 2?", json!(11)),
        ("divide 10 by 4", json!(2.5)),
        ("subtract 3 from 10", json!(7)),
        ("multiply 6 by 7", json!(42)),
        ("2 to the power of 3", json!(8)),
        ("(1+2)*3", json!(9)),
        ("10 divided by 4", json!(2.5)),
        ("6 multiplied by 7", json!(42)),
        ("5 minus 8", json!(-3)),
        ("3 added to 4", json!(7)),
        ("add 3 to 4", json!(7)),
        ("What is the sum of 1 and 2?", json!(3)),
        ("the product of 4 and 5", json!(20)),
        ("the difference between 10 and 4", json!(6)),
        ("multiply the sum of 1 and 2 by 3", json!(9)),
        ("What's 20% of 50?", json!(10)),
        ("15 percent of 200", json!(30)),
        ("5 squared", json!(25)),
        ("2 cubed", json!(8)),
        ("2 raised to the power of 10", json!(1024)),
        ("2 ** 10", json!(1024)),
        ("10 mod 3", json!(1)),
        ("9 over 2", json!(4.5)),
        ("1,000 + 0.5", json!(1000.5)),
        (".5 + .25", json!(0.75)),
        ("2(3 + 4)", json!(14)),
        ("7 ÷ 2", json!(3.5)),
        ("3 × 4", json!(12)),
        ("negative 4 plus 10", json!(6)),
        ("Calculate 3 - -2, please.", json!(5)),
    ];
    for (question, expected) in cases {
        assert_eq!(ask(question).await.unwrap(), expected, "{question}");
    }
}

#[tokio::test]
async fn x_means_times_only_between_numbers_and_words_stay_whole() {
    assert_eq!(ask("3 x 4").await.unwrap(), json!(12));
    assert_eq!(ask("What is 3x4?").await.unwrap(), json!(12));
    assert_eq!(CalculatorTool::expression("What is 6 x (1 + 1)?").unwrap(), "6.0 * ( 1.0 + 1.0 )");
    // The Python tool turned every "x" into "*", so "max" became "ma*" and vanished.
    assert_soft("max of 3 and 4", "the calculator does not understand \"max\"").await;
    assert_soft("x plus 2", "the calculator does not understand \"x\"").await;
}

#[tokio::test]
async fn results_are_json_numbers_integral_when_exact() {
    let eleven = ask("What is 3 plus 4 times 2?").await.unwrap();
    assert!(eleven.is_i64(), "{eleven}");
    let fraction = ask("1 / 3").await.unwrap();
    assert!((fraction.as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12, "{fraction}");
    assert!(ask("10 / 4").await.unwrap().is_f64(), "division is floating point, not truncating");
}

#[tokio::test]
async fn division_by_zero_is_a_hard_error() {
    let cases = [
        ("10 / 0", "division by zero in 10.0 / 0.0"),
        ("divide 5 by (2 - 2)", "division by zero in (5.0) / (( 2.0 - 2.0 ))"),
        ("7 mod 0", "division by zero in 7.0 % 0.0"),
    ];
    for (question, message) in cases {
        assert_eq!(hard_error(question).await, message, "{question:?}");
    }
}

#[tokio::test]
async fn empty_question_is_a_hard_error() {
    for question in ["", "   ", "What is?"] {
        let message = format!("no calculation found in {question:?}; give numbers and operators, such as \"3 + 4\"");
        assert_eq!(hard_error(question).await, message, "{question:?}");
    }
}

#[tokio::test]
async fn results_out_of_range_are_hard_errors() {
    assert_eq!(hard_error("10 ^ 400").await, "the result of 10.0 ^ 400.0 is too large to represent");
    assert_eq!(hard_error("(-8) ^ (1/3)").await, "the result of ( - 8.0 ) ^ ( 1.0 / 3.0 ) is not a real number");
}

#[tokio::test]
async fn unknown_words_and_characters_are_soft_errors_that_say_how_to_rephrase() {
    // Not silently 16: the words the tables do not know are named.
    assert_soft("What is the square root of 16?", "the calculator does not understand \"square\"").await;
    assert_soft("3 $ 4", "the calculator does not understand the character '$'").await;
    assert_soft("3 4", "two numbers with no operator between them (3.0 and 4.0)").await;
}

#[tokio::test]
async fn malformed_verb_forms_are_soft_errors() {
    let must_follow = "\"subtract\" must be followed by \"A from B\", such as \"subtract 10 from 4\"";
    assert_soft("subtract 3", must_follow).await;
    assert_soft("divide by 4", "\"divide A by B\" needs a number on each side of \"by\"").await;
}

#[tokio::test]
async fn unparseable_expressions_are_soft_errors() {
    let cases = [
        ("3 plus", "could not evaluate 3.0 +: An operator expected 2 arguments, but got 1"),
        ("3 + * 4", "could not evaluate 3.0 + * 4.0: An operator expected 2 arguments, but got 1"),
        ("2 * ()", "could not evaluate 2.0 * ( ): Expected a Value::Float or Value::Int, but got Empty"),
        ("(1 + 2", "the parentheses do not pair up (1 opened, 0 closed) in ( 1.0 + 2.0"),
        ("1 + 2)", "the parentheses do not pair up (0 opened, 1 closed) in 1.0 + 2.0 )"),
        (") 1 + 2 (", "the parentheses do not pair up (1 opened, 1 closed) in ) * 1.0 + 2.0 * ("),
    ];
    for (question, problem) in cases {
        assert_soft(question, problem).await;
    }
}

#[tokio::test]
async fn a_soft_error_can_be_rephrased_into_an_answer() {
    assert_soft("What is 2 plus 2 and then doubled?", "the calculator does not understand \"then\"").await;
    assert_eq!(ask("What is (2 plus 2) times 2?").await.unwrap(), json!(8));
}

#[tokio::test]
async fn nothing_but_numbers_and_operators_reaches_the_evaluator() {
    let cases = [
        ("a = 5; a", "the calculator does not understand \"a\""),
        ("\"text\"", "the calculator does not understand \"text\""),
        ("math::sqrt(4)", "the calculator does not understand \"math\""),
        ("true && false", "the calculator does not understand the character '&'"),
    ];
    for (question, problem) in cases {
        assert_soft(question, problem).await;
    }
}

#[tokio::test]
async fn oversized_or_deeply_nested_questions_are_soft_errors() {
    let long = "the question is longer than 1000 characters, more than a calculation needs";
    assert_soft(&"1 + ".repeat(300), long).await;
    let nested = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    assert_soft(&nested, "the calculation nests parentheses deeper than 32 levels").await;
}

#[test]
fn schema_describes_the_question_argument() {
    let tool = CalculatorTool;
    let spec = tool.spec();
    assert_eq!((spec.id.as_str(), spec.name.as_str()), ("calculator_tool", "Calculator Tool"));
    let schema = spec.args_schema;
    assert_eq!(schema["required"], json!(["math_question"]));
    let description = schema["properties"]["math_question"]["description"].as_str().unwrap();
    assert!(description.contains("in words or symbols"), "{description}");
    assert!(!spec.summarize);
}
