//! The calculator tool: its phrase table, its number output and its errors.

use std::sync::Arc;

use portia::tools::CalculatorTool;
use portia::{Config, Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId};
use serde_json::{Value, json};

async fn ask(question: &str) -> Result<Value, ToolError> {
    let ctx = ToolRunContext::new(WorkflowId::new(), Arc::new(Config::default()));
    match CalculatorTool.run(&ctx, json!({ "math_question": question })).await? {
        ToolOutput::Value(value) => Ok(value),
        other => panic!("expected a value for {question:?}, got {other:?}"),
    }
}

async fn hard_error(question: &str) -> String {
    match ask(question).await {
        Err(ToolError::Hard(message)) => message,
        other => panic!("expected a hard error for {question:?}, got {other:?}"),
    }
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
    let message = hard_error("max of 3 and 4").await;
    assert!(message.contains("\"max\""), "{message}");
    let message = hard_error("x plus 2").await;
    assert!(message.contains("\"x\""), "{message}");
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
    for question in ["10 / 0", "divide 5 by (2 - 2)", "7 mod 0"] {
        let message = hard_error(question).await;
        assert!(message.contains("division by zero"), "{question}: {message}");
    }
}

#[tokio::test]
async fn empty_question_is_a_hard_error() {
    for question in ["", "   ", "What is?"] {
        let message = hard_error(question).await;
        assert!(message.contains("no calculation found"), "{question:?}: {message}");
    }
}

#[tokio::test]
async fn unparseable_questions_are_hard_errors_that_say_what_was_wrong() {
    let message = hard_error("3 plus").await;
    assert!(message.starts_with("could not evaluate 3.0 +"), "{message}");
    let message = hard_error("3 4").await;
    assert!(message.contains("no operator between them (3.0 and 4.0)"), "{message}");
    let message = hard_error("What is the square root of 16?").await;
    assert!(message.contains("\"square\""), "not silently 16: {message}");
    let message = hard_error("3 $ 4").await;
    assert!(message.contains("'$'"), "{message}");
    let message = hard_error("subtract 3").await;
    assert!(message.contains("\"subtract\" must be followed by \"A from B\""), "{message}");
    let message = hard_error("divide by 4").await;
    assert!(message.contains("needs a number on each side of \"by\""), "{message}");
}

#[tokio::test]
async fn nothing_but_numbers_and_operators_reaches_the_evaluator() {
    for question in ["a = 5; a", "\"text\"", "math::sqrt(4)", "true && false"] {
        assert!(matches!(ask(question).await, Err(ToolError::Hard(_))), "{question}");
    }
}

#[tokio::test]
async fn oversized_or_deeply_nested_questions_are_refused() {
    let message = hard_error(&"1 + ".repeat(300)).await;
    assert!(message.contains("longer than 1000 characters"), "{message}");
    let nested = format!("{}1{}", "(".repeat(40), ")".repeat(40));
    let message = hard_error(&nested).await;
    assert!(message.contains("nests deeper"), "{message}");
    let message = hard_error("10 ^ 400").await;
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn schema_describes_the_question_argument() {
    let tool = CalculatorTool;
    assert_eq!((tool.id(), tool.name()), ("calculator_tool", "Calculator Tool"));
    let schema = tool.args_schema();
    assert_eq!(schema["required"], json!(["math_question"]));
    let description = schema["properties"]["math_question"]["description"].as_str().unwrap();
    assert!(description.contains("in words or symbols"), "{description}");
    assert!(!tool.should_summarize());
}
