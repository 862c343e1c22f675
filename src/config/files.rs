//! Reading settings files (`.env`, a TOML or JSON config) with errors that say
//! where a file is wrong but never what it holds there: a line of such a file is
//! often a key.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use crate::secret::Secret;
use crate::{Error, Result};

/// The variables of the dotenv file at `path`, or none when there is no file.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the file, the line and its variable (never its
/// value) when a line cannot be parsed.
pub(super) fn read_dotenv(path: &Path) -> Result<BTreeMap<String, Secret>> {
    let invalid = |message: String| Error::invalid_config(path.display().to_string(), message);
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(invalid(format!("cannot be read: {e}"))),
    };
    let reader = LineCounter::new(file);
    let lines_read = reader.lines.clone();
    let mut vars = BTreeMap::new();
    // How many lines the entries parsed so far took.
    let mut lines_used = 0;
    for entry in dotenvy::from_read_iter(reader) {
        match entry {
            Ok((name, value)) => vars.insert(name, Secret::new(value)),
            Err(e) => return Err(invalid(dotenv_problem(path, lines_used, &e))),
        };
        lines_used = lines_read.get();
    }
    Ok(vars)
}

/// What is wrong with the first entry after line `lines_used`: its line number and
/// variable, and how to fix it. dotenvy's own message quotes the line (or, for an
/// unclosed quote, the rest of the file), so it is not used.
fn dotenv_problem(path: &Path, lines_used: usize, error: &dotenvy::Error) -> String {
    let text = std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    // dotenvy passes over blank lines and comments on its way to the next entry.
    let entry = text
        .lines()
        .enumerate()
        .skip(lines_used)
        .find(|(_, line)| !line.trim().is_empty() && !line.trim_start().starts_with('#'));
    let line = entry.map_or(lines_used + 1, |(index, _)| index + 1);
    let name = entry.and_then(|(_, text)| variable_name(text));
    match (error, name) {
        (dotenvy::Error::LineParse(..), Some(name)) => format!(
            "line {line} ({name}) cannot be parsed: put a value holding spaces or `#` in quotes, and close \
             every quote; the value is not shown"
        ),
        (dotenvy::Error::LineParse(..), None) => {
            format!("line {line} cannot be parsed: write it as NAME=value; the line is not shown")
        }
        (dotenvy::Error::Io(e), _) => format!("line {line} cannot be read: {e}"),
        // dotenvy gives no other error for a file already open; worded all the same.
        _ => format!("line {line} cannot be read"),
    }
}

/// The variable a dotenv line sets (`NAME=`, `export NAME =`), if it reads as one.
fn variable_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    let line = line.strip_prefix("export").filter(|rest| rest.starts_with([' ', '\t'])).unwrap_or(line).trim_start();
    let end = line.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    (starts_well && rest.trim_start().starts_with('=')).then(|| name.to_owned())
}

/// A reader that hands out at most one line per read, counting the lines handed
/// out: dotenvy reads through a buffer that then holds only that line, so the count
/// says how many lines the entries parsed so far took.
struct LineCounter<R> {
    inner: std::io::BufReader<R>,
    lines: Rc<Cell<usize>>,
}

impl<R: Read> LineCounter<R> {
    fn new(inner: R) -> Self {
        Self { inner: std::io::BufReader::new(inner), lines: Rc::default() }
    }
}

impl<R: Read> Read for LineCounter<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = std::io::BufRead::fill_buf(&mut self.inner)?;
        let line_end = available.iter().position(|&b| b == b'\n').map_or(available.len(), |at| at + 1);
        let n = line_end.min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        if n > 0 && out[n - 1] == b'\n' {
            self.lines.set(self.lines.get() + 1);
        }
        std::io::BufRead::consume(&mut self.inner, n);
        Ok(n)
    }
}

/// A TOML file's parse error: the line, column and the parser's words, without the
/// snippet of the file the error's `Display` quotes.
pub(crate) fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let words = one_line(error.message());
    match error.span() {
        Some(span) => {
            let (line, column) = line_and_column(text, span.start);
            format!("line {line}, column {column}: {words}")
        }
        None => words,
    }
}

/// A JSON file's parse error, worded as a TOML one's.
pub(crate) fn json_problem(error: &serde_json::Error) -> String {
    let (line, column) = (error.line(), error.column());
    let shown = error.to_string();
    let words = shown.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&shown);
    if line == 0 { one_line(words) } else { format!("line {line}, column {column}: {}", one_line(words)) }
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dotenv_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, text).unwrap();
        read_dotenv(&path).unwrap_err().to_string()
    }

    #[test]
    fn a_dotenv_line_that_cannot_be_parsed_is_named_by_number_and_variable_never_value() {
        let unquoted = "# keys\nPORTIA_AGENT=verifier\n\nOPENAI_API_KEY=sk-LEAKCANARY dotenv\nLATER=1\n";
        let message = dotenv_error(unquoted);
        assert!(message.contains("line 4 (OPENAI_API_KEY) cannot be parsed"), "{message}");
        assert!(message.contains("the value is not shown") && !message.contains("LEAKCANARY"), "{message}");

        let multi_line_first = "A=\"one\ntwo\"\nexport TAVILY_API_KEY='tvly-LEAKCANARY\nB=after\nC=more\n";
        let message = dotenv_error(multi_line_first);
        assert!(message.contains("line 3 (TAVILY_API_KEY) cannot be parsed"), "{message}");
        assert!(!message.contains("LEAKCANARY") && !message.contains("after"), "{message}");

        let message = dotenv_error("A=1\nsk-LEAKCANARY\n");
        assert!(message.contains("line 2 cannot be parsed: write it as NAME=value"), "{message}");
        assert!(!message.contains("LEAKCANARY"), "{message}");
    }

    #[test]
    fn a_dotenv_file_parses_as_before_across_long_and_multi_line_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        let long = "k".repeat(20_000);
        std::fs::write(&path, format!("A=\"one\ntwo\"\r\nLONG={long}\nexport B = 'b' # note\nC=$A")).unwrap();
        let vars = read_dotenv(&path).unwrap();
        let shown: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
        assert_eq!(shown, [("A", "one\ntwo"), ("B", "b"), ("C", "one\ntwo"), ("LONG", long.as_str())]);
    }

    #[test]
    fn file_parse_errors_give_line_and_column_but_no_snippet() {
        let text = "max_retries = 2\nopenai_api_key = sk-LEAKCANARY-file\n";
        let error = toml::from_str::<toml::Value>(text).unwrap_err();
        let message = toml_problem(text, &error);
        assert!(message.starts_with("line 2, column 18: ") && !message.contains("LEAKCANARY"), "{message}");
        assert!(!message.contains('\n'), "{message}");

        let text = "{\n  \"openai_api_key\": sk-LEAKCANARY\n}";
        let error = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
        let message = json_problem(&error);
        assert_eq!(message, "line 2, column 21: expected value");
    }
}
