//! `file_reader_tool` and `file_writer_tool`: files under `files_root`, and nowhere else.

use std::path::{Path, PathBuf};

use calamine::{Data, Reader};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::json_number;
use super::root::{FilesRoot, RootedPath};
use crate::clarification::Clarification;
use crate::config::Config;
use crate::tool::{ToolError, ToolOutput, ToolRunContext, ToolSpec, TypedTool};

/// The clarification argument that carries a chosen file.
const FILENAME: &str = "filename";
/// The extensions the reader understands, in the order the error message lists them.
const SUPPORTED: &[&str] = &["txt", "log", "md", "json", "csv", "xlsx", "xls"];
/// Larger files are refused: their content would not fit an LLM's context anyway.
const MAX_READ_BYTES: u64 = 10 * 1024 * 1024;

/// Reads a file under its root directory, and nowhere else.
///
/// `txt`, `log` and `md` files come back as text, `json` as the parsed value, `csv`
/// as a list of objects keyed by the header row (values as strings), `xlsx` and
/// `xls` as `{sheet name: [[cell, ...], ...]}`. When the file does not exist but
/// files with a similar name do under the root (the same name elsewhere, the same
/// stem with another supported extension, a name containing the stem or contained
/// in it, or a near miss such as `reprot.csv` for `report.csv`), the tool asks the
/// user to pick one, best matches first (a Multiple Choice clarification on
/// `filename`). A file picked that way and then missing is a hard error.
#[derive(Debug, Clone)]
pub struct FileReaderTool {
    root: PathBuf,
}

/// The arguments of [`FileReaderTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FileReaderArgs {
    /// The file's path relative to the files root, such as "reports/q1.csv".
    pub filename: String,
}

/// Writes a text file under its root directory, and nowhere else, replacing any file
/// of the same name and creating missing directories.
#[derive(Debug, Clone)]
pub struct FileWriterTool {
    root: PathBuf,
}

/// The arguments of [`FileWriterTool`].
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct FileWriterArgs {
    /// The file's path relative to the files root, such as "notes/summary.md".
    pub filename: String,
    /// The text to write.
    pub content: String,
}

impl FileReaderTool {
    /// A reader of files under `root` (relative to the working directory if relative).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A reader of files under the config's `files_root` (`PORTIA_FILES_ROOT`).
    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.files_root)
    }
}

impl FileWriterTool {
    /// A writer of files under `root` (relative to the working directory if relative).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A writer of files under the config's `files_root` (`PORTIA_FILES_ROOT`).
    pub fn from_config(config: &Config) -> Self {
        Self::new(&config.files_root)
    }
}

/// What reading found.
enum Read {
    Value(Value),
    /// The file does not exist; these root-relative paths have similar names, best first.
    Missing {
        relative: String,
        matches: Vec<String>,
    },
}

#[async_trait::async_trait]
impl TypedTool for FileReaderTool {
    type Args = FileReaderArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new(
            "file_reader_tool",
            "File Reader Tool",
            "Reads a local file: txt, log, md, json, csv, xlsx or xls.",
        )
        .output_description("Text; parsed JSON; CSV rows as objects keyed by header; spreadsheets as {sheet: rows}.")
        .read_only()
    }

    async fn call(&self, ctx: &ToolRunContext, args: FileReaderArgs) -> Result<ToolOutput, ToolError> {
        // The user's pick answers a previous call that asked which file was meant.
        let chosen = ctx.clarified(FILENAME).and_then(Value::as_str).map(str::to_owned);
        let was_chosen = chosen.is_some();
        let filename = chosen.unwrap_or(args.filename);
        let root = self.root.clone();
        match blocking(move || read(&root, &filename)).await? {
            Read::Value(value) => Ok(ToolOutput::Value(value.into())),
            Read::Missing { relative, matches } if matches.is_empty() || was_chosen => {
                Err(ToolError::hard(format!("{relative} was not found under the files root")))
            }
            Read::Missing { relative, matches } => {
                let guidance = format!(
                    "{relative} was not found. Files with the same or a similar name: {}. Which one should be read?",
                    matches.join(", ")
                );
                let options = matches.into_iter().map(Value::String).collect();
                Ok(ToolOutput::clarification(Clarification::multiple_choice(
                    ctx.workflow_id,
                    FILENAME,
                    options,
                    guidance,
                )))
            }
        }
    }
}

#[async_trait::async_trait]
impl TypedTool for FileWriterTool {
    type Args = FileWriterArgs;

    fn spec(&self) -> ToolSpec {
        ToolSpec::new("file_writer_tool", "File Writer Tool", "Writes text to a local file, replacing it if it exists.")
            .output_description("A confirmation with the number of bytes written and the path.")
            // It changes the disk, but it replaces the whole file: writing the same
            // content to the same path twice leaves what writing it once does.
            .side_effects(true)
            .idempotent(true)
    }

    async fn call(&self, _ctx: &ToolRunContext, args: FileWriterArgs) -> Result<ToolOutput, ToolError> {
        let root = self.root.clone();
        let message = blocking(move || write(&root, &args.filename, &args.content)).await?;
        Ok(ToolOutput::value(message))
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ToolError> + Send + 'static,
) -> Result<T, ToolError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ToolError::hard(format!("the file operation did not finish: {e}")))?
}

fn read(root: &Path, filename: &str) -> Result<Read, ToolError> {
    let root = FilesRoot::open(root)?;
    let target = root.resolve(filename)?;
    let extension = extension(&target)?;
    if !target.full.exists() {
        let name = target.full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Ok(Read::Missing { matches: root.find_similar(&name, SUPPORTED), relative: target.relative });
    }
    let metadata = std::fs::metadata(&target.full).map_err(|e| io_error("read", &target, &e))?;
    if metadata.is_dir() {
        return Err(ToolError::hard(format!("{} is a directory, not a file", target.relative)));
    }
    if metadata.len() > MAX_READ_BYTES {
        return Err(ToolError::hard(format!(
            "{} is {} bytes; the reader takes files up to {MAX_READ_BYTES} bytes",
            target.relative,
            metadata.len()
        )));
    }
    let value = match extension.as_str() {
        "xlsx" | "xls" => read_spreadsheet(&target)?,
        other => {
            let bytes = std::fs::read(&target.full).map_err(|e| io_error("read", &target, &e))?;
            match other {
                "json" => serde_json::from_slice(&bytes)
                    .map_err(|e| ToolError::hard(format!("{} is not valid JSON: {e}", target.relative)))?,
                "csv" => read_csv(&bytes, &target)?,
                _ => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
            }
        }
    };
    Ok(Read::Value(value))
}

/// The lower-cased extension, if the reader supports it.
fn extension(target: &RootedPath) -> Result<String, ToolError> {
    let extension = target.full.extension().map(|e| e.to_string_lossy().to_lowercase()).unwrap_or_default();
    if SUPPORTED.contains(&extension.as_str()) {
        Ok(extension)
    } else {
        Err(ToolError::hard(format!(
            "{} cannot be read: the reader supports files ending in .{}",
            target.relative,
            SUPPORTED.join(", .")
        )))
    }
}

fn read_csv(bytes: &[u8], target: &RootedPath) -> Result<Value, ToolError> {
    let invalid = |e: csv::Error| ToolError::hard(format!("{} is not valid CSV: {e}", target.relative));
    let mut reader = csv::Reader::from_reader(bytes);
    let headers = reader.headers().map_err(invalid)?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(invalid)?;
        let row: Map<String, Value> =
            headers.iter().zip(record.iter()).map(|(h, v)| (h.to_owned(), Value::String(v.to_owned()))).collect();
        rows.push(Value::Object(row));
    }
    Ok(Value::Array(rows))
}

fn read_spreadsheet(target: &RootedPath) -> Result<Value, ToolError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        ToolError::hard(format!("{} could not be read as a spreadsheet: {e}", target.relative))
    };
    let mut workbook = calamine::open_workbook_auto(&target.full).map_err(|e| unreadable(&e))?;
    let mut sheets = Map::new();
    for name in workbook.sheet_names() {
        let range = workbook.worksheet_range(&name).map_err(|e| unreadable(&e))?;
        let rows = range.rows().map(|row| Value::Array(row.iter().map(cell_value).collect())).collect();
        sheets.insert(name, Value::Array(rows));
    }
    Ok(Value::Object(sheets))
}

fn cell_value(cell: &Data) -> Value {
    match cell {
        Data::Empty => Value::Null,
        Data::Int(i) => Value::from(*i),
        Data::Float(x) => json_number(*x),
        Data::Bool(b) => Value::Bool(*b),
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => Value::String(s.clone()),
        Data::DateTime(date) => Value::String(excel_date(date)),
        Data::Error(e) => Value::String(e.to_string()),
    }
}

/// An Excel date as ISO 8601 (`2025-01-31`, or with `T12:30:00` when it has a time);
/// a duration as `hours:minutes:seconds`.
fn excel_date(date: &calamine::ExcelDateTime) -> String {
    if date.is_duration() {
        // Whole seconds are enough for a model to read; the cast saturates on absurd values.
        #[allow(clippy::cast_possible_truncation)]
        let seconds = (date.as_f64() * 86_400.0).round() as i64;
        return format!("{}:{:02}:{:02}", seconds / 3600, (seconds % 3600).abs() / 60, seconds.abs() % 60);
    }
    let (year, month, day, hour, minute, second, _) = date.to_ymd_hms_milli();
    if (hour, minute, second) == (0, 0, 0) {
        format!("{year:04}-{month:02}-{day:02}")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")
    }
}

fn write(root: &Path, filename: &str, content: &str) -> Result<String, ToolError> {
    let root = FilesRoot::open(root)?;
    let target = root.resolve(filename)?;
    if target.full.is_dir() {
        return Err(ToolError::hard(format!("{} is a directory; give a file name", target.relative)));
    }
    if let Some(parent) = target.full.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create the directory of", &target, &e))?;
    }
    std::fs::write(&target.full, content).map_err(|e| io_error("write", &target, &e))?;
    Ok(format!("Wrote {} bytes to {}", content.len(), target.relative))
}

/// A file system failure; retrying the same call would meet it again.
fn io_error(action: &str, target: &RootedPath, error: &std::io::Error) -> ToolError {
    ToolError::hard(format!("could not {action} {}: {error}", target.relative))
}
