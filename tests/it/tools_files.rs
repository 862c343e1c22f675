//! The file reader and writer: formats, confinement to the files root, and the
//! clarification for a missing file whose name, or a similar one, is found under
//! the root.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use portia::tools::{FileReaderTool, FileWriterTool};
use portia::{Config, Tool, ToolError, ToolOutput, ToolRunContext, WorkflowId};
use serde_json::{Value, json};
use tempfile::TempDir;

/// A temporary directory holding `root` (the files root) and `outside` beside it.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/secret.txt"), "do not read").unwrap();
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn put(&self, relative: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.root().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        path
    }

    fn ctx(&self) -> ToolRunContext {
        ToolRunContext::new(WorkflowId::new())
    }

    /// A reader built as `default_tool_registry` builds it, from a config naming the root.
    fn reader(&self) -> FileReaderTool {
        FileReaderTool::from_config(&Config::builder().files_root(self.root()).build().unwrap())
    }
}

async fn read_with(sandbox: &Sandbox, ctx: &ToolRunContext, filename: &str) -> Result<ToolOutput, ToolError> {
    sandbox.reader().run(ctx, json!({ "filename": filename })).await
}

async fn read(sandbox: &Sandbox, filename: &str) -> Result<Value, ToolError> {
    match read_with(sandbox, &sandbox.ctx(), filename).await? {
        ToolOutput::Value(value) => Ok(value.into_value()),
        other => panic!("expected a value for {filename}, got {other:?}"),
    }
}

async fn write(sandbox: &Sandbox, filename: &str, content: &str) -> Result<Value, ToolError> {
    match FileWriterTool::new(sandbox.root())
        .run(&sandbox.ctx(), json!({ "filename": filename, "content": content }))
        .await?
    {
        ToolOutput::Value(value) => Ok(value.into_value()),
        other => panic!("expected a value for {filename}, got {other:?}"),
    }
}

/// The options and guidance of the Multiple Choice clarification reading `filename` raises.
async fn offered(sandbox: &Sandbox, filename: &str) -> (Vec<String>, String) {
    let output = read_with(sandbox, &sandbox.ctx(), filename).await.unwrap();
    let ToolOutput::Clarifications(clarifications) = output else { panic!("expected a clarification, got {output:?}") };
    let [clarification] = clarifications.as_slice() else { panic!("expected one clarification: {clarifications:?}") };
    assert_eq!(clarification.argument_name(), Some("filename"));
    let portia::ClarificationKind::MultipleChoice { options, .. } = &clarification.kind else {
        panic!("expected a multiple choice: {clarification:?}")
    };
    let options = options.iter().map(|o| o.as_str().unwrap().to_owned()).collect();
    (options, clarification.user_guidance.clone())
}

fn hard(result: Result<Value, ToolError>) -> String {
    match result {
        Err(ToolError::Hard(message)) => message,
        other => panic!("expected a hard error, got {other:?}"),
    }
}

#[tokio::test]
async fn text_files_are_read_as_text() {
    let sandbox = Sandbox::new();
    sandbox.put("notes.txt", "plain\ntext");
    sandbox.put("logs/app.LOG", "started");
    sandbox.put("README.md", "# Title");
    assert_eq!(read(&sandbox, "notes.txt").await.unwrap(), json!("plain\ntext"));
    assert_eq!(read(&sandbox, "logs/app.LOG").await.unwrap(), json!("started"));
    assert_eq!(read(&sandbox, "./README.md").await.unwrap(), json!("# Title"));
}

#[tokio::test]
async fn json_is_read_as_the_parsed_value() {
    let sandbox = Sandbox::new();
    sandbox.put("data.json", r#"{"prices": [1.5, 2], "ok": true}"#);
    sandbox.put("broken.json", "{ not json");
    assert_eq!(read(&sandbox, "data.json").await.unwrap(), json!({"prices": [1.5, 2], "ok": true}));
    let message = hard(read(&sandbox, "broken.json").await);
    assert!(message.starts_with("broken.json is not valid JSON"), "{message}");
}

#[tokio::test]
async fn csv_is_read_as_objects_keyed_by_header() {
    let sandbox = Sandbox::new();
    sandbox.put("people.csv", "name,age,city\nAda,36,\"London, UK\"\nAlan,41,\n");
    sandbox.put("ragged.csv", "a,b\n1,2,3\n");
    assert_eq!(
        read(&sandbox, "people.csv").await.unwrap(),
        json!([
            {"name": "Ada", "age": "36", "city": "London, UK"},
            {"name": "Alan", "age": "41", "city": ""}
        ])
    );
    let message = hard(read(&sandbox, "ragged.csv").await);
    assert!(message.starts_with("ragged.csv is not valid CSV"), "{message}");
}

#[tokio::test]
async fn xlsx_is_read_as_rows_per_sheet() {
    let sandbox = Sandbox::new();
    let path = sandbox.root().join("book.xlsx");
    let mut workbook = rust_xlsxwriter::Workbook::new();
    let sales = workbook.add_worksheet().set_name("Sales").unwrap();
    sales.write_string(0, 0, "region").unwrap();
    sales.write_string(0, 1, "amount").unwrap();
    sales.write_string(1, 0, "north").unwrap();
    sales.write_number(1, 1, 12.5).unwrap();
    sales.write_string(2, 0, "south").unwrap();
    sales.write_number(2, 1, 3).unwrap();
    let notes = workbook.add_worksheet().set_name("Notes").unwrap();
    let date = rust_xlsxwriter::ExcelDateTime::from_ymd(2025, 1, 31).unwrap();
    let date_format = rust_xlsxwriter::Format::new().set_num_format("yyyy-mm-dd");
    notes.write_boolean(0, 0, true).unwrap();
    notes.write_datetime_with_format(0, 1, &date, &date_format).unwrap();
    notes.write_string(0, 3, "after a gap").unwrap();
    workbook.save(&path).unwrap();

    assert_eq!(
        read(&sandbox, "book.xlsx").await.unwrap(),
        json!({
            "Sales": [["region", "amount"], ["north", 12.5], ["south", 3]],
            "Notes": [[true, "2025-01-31", null, "after a gap"]]
        })
    );
}

#[tokio::test]
async fn unreadable_spreadsheet_and_unsupported_extension_are_hard_errors() {
    let sandbox = Sandbox::new();
    sandbox.put("fake.xlsx", "not a zip file");
    sandbox.put("image.png", [0x89, b'P', b'N', b'G']);
    let message = hard(read(&sandbox, "fake.xlsx").await);
    assert!(message.starts_with("fake.xlsx could not be read as a spreadsheet"), "{message}");
    let message = hard(read(&sandbox, "image.png").await);
    assert!(message.contains("supports files ending in .txt, .log, .md, .json, .csv, .xlsx, .xls"), "{message}");
}

#[tokio::test]
async fn paths_climbing_out_of_the_root_are_refused() {
    let sandbox = Sandbox::new();
    sandbox.put("notes.txt", "inside");
    for path in ["../outside/secret.txt", "docs/../../outside/secret.txt", ".."] {
        let message = hard(read(&sandbox, path).await);
        assert!(message.contains("is outside the files root"), "{path}: {message}");
    }
    assert_eq!(read(&sandbox, "sub/../notes.txt").await.unwrap(), json!("inside"), "staying inside is fine");
}

#[tokio::test]
async fn absolute_paths_are_accepted_only_inside_the_root() {
    let sandbox = Sandbox::new();
    let inside = sandbox.put("notes.txt", "inside");
    let outside = sandbox.outside().join("secret.txt");
    assert_eq!(read(&sandbox, inside.to_str().unwrap()).await.unwrap(), json!("inside"));
    let message = hard(read(&sandbox, outside.to_str().unwrap()).await);
    assert!(message.contains("is outside the files root"), "{message}");
    let message = hard(read(&sandbox, sandbox.root().to_str().unwrap()).await);
    assert!(message.contains("is the files root itself"), "{message}");
}

#[cfg(unix)]
#[tokio::test]
async fn symbolic_links_leading_out_of_the_root_are_refused() {
    use std::os::unix::fs::symlink;
    let sandbox = Sandbox::new();
    symlink(sandbox.outside(), sandbox.root().join("door")).unwrap();
    symlink(sandbox.outside().join("secret.txt"), sandbox.root().join("alias.txt")).unwrap();
    symlink(sandbox.outside().join("missing.txt"), sandbox.root().join("dangling.txt")).unwrap();
    sandbox.put("real.txt", "inside");
    symlink(sandbox.root().join("real.txt"), sandbox.root().join("shortcut.txt")).unwrap();

    for path in ["door/secret.txt", "alias.txt"] {
        let message = hard(read(&sandbox, path).await);
        assert!(
            message.contains("leads outside the files root") && message.contains("through a symbolic link"),
            "{path}: {message}"
        );
    }
    let message = hard(write(&sandbox, "door/planted.txt", "x").await);
    assert!(message.contains("through a symbolic link"), "{message}");
    assert!(!sandbox.outside().join("planted.txt").exists());
    let message = hard(write(&sandbox, "dangling.txt", "x").await);
    assert!(message.contains("points nowhere"), "{message}");
    assert!(!sandbox.outside().join("missing.txt").exists());
    assert_eq!(read(&sandbox, "shortcut.txt").await.unwrap(), json!("inside"), "links within the root are fine");
}

#[tokio::test]
async fn missing_file_found_elsewhere_asks_which_one_and_reads_the_choice() {
    let sandbox = Sandbox::new();
    sandbox.put("docs/report.txt", "the 2025 report");
    sandbox.put("docs/2024/REPORT.txt", "the 2024 report");
    sandbox.put(".cache/report.txt", "hidden directories are not searched");
    sandbox.put("docs/report.txt.bak", "other names are not matches");
    let mut ctx = sandbox.ctx();

    let output = read_with(&sandbox, &ctx, "report.txt").await.unwrap();
    let ToolOutput::Clarifications(clarifications) = output else { panic!("expected a clarification, got {output:?}") };
    let [clarification] = clarifications.as_slice() else { panic!("expected one clarification: {clarifications:?}") };
    assert_eq!(clarification.category(), "Multiple Choice");
    assert_eq!(clarification.argument_name(), Some("filename"));
    assert_eq!(clarification.workflow_id, ctx.workflow_id);
    let portia::ClarificationKind::MultipleChoice { options, .. } = &clarification.kind else { unreachable!() };
    assert_eq!(options, &vec![json!("docs/2024/REPORT.txt"), json!("docs/report.txt")]);
    let guidance = &clarification.user_guidance;
    assert!(guidance.starts_with("report.txt was not found"), "{guidance}");
    assert!(guidance.contains("similar name: docs/2024/REPORT.txt, docs/report.txt."), "{guidance}");

    let mut answered = clarification.clone();
    answered.resolve(json!("docs/2024/REPORT.txt")).unwrap();
    ctx.clarifications = vec![answered];
    let output = read_with(&sandbox, &ctx, "report.txt").await.unwrap();
    assert_eq!(output, ToolOutput::value("the 2024 report"));
}

#[tokio::test]
async fn each_kind_of_similar_name_is_offered() {
    let cases = [
        ("Report.CSV", "data/report.csv", "the same name, ignoring case"),
        ("report.csv", "report.xlsx", "the same stem, another extension"),
        ("report.csv", "Report.JSON", "the same stem ignoring case, another extension"),
        ("report.csv", "report-2024.csv", "a name containing the stem"),
        ("report.csv", "archive/q3_report.csv", "a name containing the stem"),
        ("report-2024.csv", "report.csv", "a stem contained in the requested one"),
        ("reprot.csv", "report.csv", "two edits away"),
        ("reprt.csv", "report.csv", "one edit away"),
        ("data.json", "date.json", "one edit away, four characters"),
    ];
    for (requested, present, kind) in cases {
        let sandbox = Sandbox::new();
        sandbox.put(present, "x");
        let (options, guidance) = offered(&sandbox, requested).await;
        assert_eq!(options, [present], "{kind}: {requested} -> {present}");
        assert_eq!(
            guidance,
            format!(
                "{requested} was not found. Files with the same or a similar name: {present}. Which one should be read?"
            )
        );
    }
}

#[tokio::test]
async fn similar_names_are_offered_best_first() {
    let sandbox = Sandbox::new();
    for name in [
        "b/rpeort.json",
        "repotr.csv",
        "reprt.csv",
        "a/report_draft.json",
        "report-2024.csv",
        "q3_report.csv",
        "report.xlsx",
        "zz/REPORT.csv",
    ] {
        sandbox.put(name, "x");
    }
    let (options, _) = offered(&sandbox, "report.csv").await;
    assert_eq!(
        options,
        [
            "zz/REPORT.csv",       // the same name
            "report.xlsx",         // the same stem
            "q3_report.csv",       // containment, the requested extension first, then by path
            "report-2024.csv",     //
            "a/report_draft.json", // containment, another extension
            "reprt.csv",           // one edit
            "repotr.csv",          // two edits, the requested extension first
            "b/rpeort.json",       // two edits, another extension
        ]
    );
}

#[tokio::test]
async fn only_the_twenty_best_matches_are_offered() {
    let sandbox = Sandbox::new();
    for n in 1..=25 {
        sandbox.put(&format!("report-{n:02}.csv"), "x");
    }
    sandbox.put("reprt.csv", "x");
    sandbox.put("zz/report.csv", "x");
    let (options, _) = offered(&sandbox, "report.csv").await;
    assert_eq!(options.len(), 20);
    assert_eq!(options[0], "zz/report.csv", "the best match is kept though found last");
    assert_eq!(options[19], "report-19.csv");
    assert!(!options.contains(&"reprt.csv".to_owned()), "near misses rank below containment");
}

#[tokio::test]
async fn unrelated_hidden_unreadable_or_too_deep_files_are_not_offered() {
    let sandbox = Sandbox::new();
    for name in [
        "summary.csv",                  // unrelated
        "export_data.csv",              // unrelated
        "rpt.csv",                      // three edits away
        "re.csv",                       // too short to be looked for inside "report"
        "report.png",                   // an extension the reader does not support
        "report.csv.bak",               // likewise
        ".report-old.csv",              // a hidden file
        ".cache/report.csv",            // in a hidden directory
        "a/b/c/d/e/f/g/h/i/report.csv", // deeper than the search goes
        "q2.csv",                       // one edit from "q1", but too short for near misses
    ] {
        sandbox.put(name, "x");
    }
    fs::write(sandbox.outside().join("report.csv"), "x").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(sandbox.outside(), sandbox.root().join("linked")).unwrap();
    for requested in ["report.csv", "q1.csv"] {
        let message = hard(read(&sandbox, requested).await);
        assert_eq!(message, format!("{requested} was not found under the files root"));
    }
}

#[tokio::test]
async fn a_similar_file_picked_by_the_user_is_read() {
    let sandbox = Sandbox::new();
    sandbox.put("data/report.json", r#"{"ok": true}"#);
    let mut ctx = sandbox.ctx();
    let ToolOutput::Clarifications(mut asked) = read_with(&sandbox, &ctx, "reprot.json").await.unwrap() else {
        panic!()
    };
    asked[0].resolve(json!("data/report.json")).unwrap();
    ctx.clarifications = asked;
    assert_eq!(read_with(&sandbox, &ctx, "reprot.json").await.unwrap(), ToolOutput::value(json!({"ok": true})));
}

#[tokio::test]
async fn missing_file_found_nowhere_is_a_hard_error() {
    let sandbox = Sandbox::new();
    let message = hard(read(&sandbox, "nowhere.csv").await);
    assert_eq!(message, "nowhere.csv was not found under the files root");
}

#[tokio::test]
async fn a_chosen_file_that_has_gone_is_a_hard_error_not_another_question() {
    let sandbox = Sandbox::new();
    sandbox.put("a/data.json", "{}");
    let mut ctx = sandbox.ctx();
    let ToolOutput::Clarifications(mut asked) = read_with(&sandbox, &ctx, "data.json").await.unwrap() else { panic!() };
    asked[0].resolve(json!("a/data.json")).unwrap();
    fs::remove_file(sandbox.root().join("a/data.json")).unwrap();
    sandbox.put("b/data.json", "{}");
    ctx.clarifications = asked;
    let err = read_with(&sandbox, &ctx, "data.json").await.unwrap_err();
    assert!(matches!(&err, ToolError::Hard(m) if m == "a/data.json was not found under the files root"), "{err:?}");
}

#[tokio::test]
async fn writer_creates_directories_inside_the_root_and_reports_bytes() {
    let sandbox = Sandbox::new();
    let result = write(&sandbox, "notes/deep/summary.md", "héllo").await.unwrap();
    assert_eq!(result, json!("Wrote 6 bytes to notes/deep/summary.md"));
    assert_eq!(fs::read_to_string(sandbox.root().join("notes/deep/summary.md")).unwrap(), "héllo");

    let result = write(&sandbox, "notes/deep/summary.md", "new").await.unwrap();
    assert_eq!(result, json!("Wrote 3 bytes to notes/deep/summary.md"));
    assert_eq!(fs::read_to_string(sandbox.root().join("notes/deep/summary.md")).unwrap(), "new");
}

#[tokio::test]
async fn writer_refuses_paths_outside_the_root_and_directories() {
    let sandbox = Sandbox::new();
    let message = hard(write(&sandbox, "../outside/planted.txt", "x").await);
    assert!(message.contains("is outside the files root"), "{message}");
    let absolute = sandbox.outside().join("planted.txt");
    let message = hard(write(&sandbox, absolute.to_str().unwrap(), "x").await);
    assert!(message.contains("is outside the files root"), "{message}");
    assert!(!absolute.exists());
    fs::create_dir(sandbox.root().join("folder")).unwrap();
    let message = hard(write(&sandbox, "folder", "x").await);
    assert_eq!(message, "folder is a directory; give a file name");
}

#[tokio::test]
async fn empty_name_is_soft_and_a_missing_root_is_hard() {
    let sandbox = Sandbox::new();
    let err = read(&sandbox, " ").await.unwrap_err();
    assert!(matches!(&err, ToolError::Soft(m) if m.contains("file name is empty")), "{err:?}");

    let reader = FileReaderTool::new(Path::new("/definitely/not/here"));
    let err = reader.run(&sandbox.ctx(), json!({ "filename": "a.txt" })).await.unwrap_err();
    assert!(matches!(&err, ToolError::Hard(m) if m.contains("PORTIA_FILES_ROOT")), "{err:?}");
}

#[test]
fn file_tools_describe_their_arguments() {
    let reader = FileReaderTool::new(".").spec();
    let writer = FileWriterTool::new(".").spec();
    assert_eq!((reader.id.as_str(), reader.name.as_str()), ("file_reader_tool", "File Reader Tool"));
    assert_eq!((writer.id.as_str(), writer.name.as_str()), ("file_writer_tool", "File Writer Tool"));
    assert_eq!(reader.args_schema["required"], json!(["filename"]));
    assert_eq!(writer.args_schema["required"], json!(["filename", "content"]));
}

#[tokio::test]
async fn a_workflow_waits_for_the_users_pick_and_then_reads_that_file() {
    use portia::testing::ScriptedLlm;
    use portia::{PlanBuilder, Runner, WorkflowState};

    let sandbox = Sandbox::new();
    sandbox.put("docs/report.txt", "the 2025 report");
    sandbox.put("old/report.txt", "the 2024 report");
    let llm = Arc::new(
        ScriptedLlm::new()
            .tool_call("file_reader_tool", json!({"filename": "report.txt"}))
            .tool_call("file_reader_tool", json!({"filename": "report.txt"})),
    );
    let config = Config::builder().summarize_final_output(false).build().unwrap();
    let tools = portia::InMemoryToolRegistry::new().with(FileReaderTool::new(sandbox.root())).unwrap();
    let runner = Runner::builder(config).tools(tools).llm(llm.clone()).build().unwrap();
    let plan = PlanBuilder::new("Read the report").step("Read report.txt", Some("file_reader_tool"), "$report").build();

    let workflow = runner.run_plan(&plan).await.unwrap();
    assert_eq!(workflow.state(), WorkflowState::NeedClarification, "{:?}", workflow.failure());
    let question = workflow.outputs().clarifications[0].clone();
    runner.resolve_clarification(&question, json!("old/report.txt")).await.unwrap();
    let workflow = runner.execute_workflow_by_id(workflow.id()).await.unwrap();

    assert_eq!(workflow.state(), WorkflowState::Complete, "{:?}", workflow.failure());
    assert_eq!(workflow.outputs().step_outputs.get("$report").unwrap().value, json!("the 2024 report"));
}
