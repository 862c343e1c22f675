//! Reading settings files (`.env`, a TOML or JSON config) with errors that say
//! where a file is wrong but never what it holds there: a line of such a file is
//! often a key.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use serde::de::DeserializeOwned;

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

/// Reads a configuration file's `text`, TOML when `toml` and JSON otherwise, into
/// `T`, refusing keys that no setting takes (a typo, or a setting of another
/// version), nested ones too, rather than ignoring them. The error says where, or
/// which keys, without quoting the file, which may hold a key.
pub(super) fn read_settings<T: DeserializeOwned>(text: &str, toml: bool) -> std::result::Result<T, String> {
    let mut unknown = Vec::new();
    let note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let settings = if toml {
        let reader = toml::Deserializer::parse(text).map_err(|e| toml_problem(text, &e))?;
        serde_ignored::deserialize(reader, note).map_err(|e| toml_problem(text, &e))?
    } else {
        let mut reader = serde_json::Deserializer::from_str(text);
        let settings = serde_ignored::deserialize(&mut reader, note).map_err(|e| json_problem(&e))?;
        reader.end().map_err(|e| json_problem(&e))?;
        settings
    };
    if unknown.is_empty() { Ok(settings) } else { Err(unknown_settings::<T>(&unknown)) }
}

/// Names the keys no setting takes, with the setting each top-level one most likely
/// meant.
fn unknown_settings<T: DeserializeOwned>(keys: &[String]) -> String {
    let known = field_names::<T>();
    let named: Vec<String> = keys
        .iter()
        .map(|key| {
            let nearest = known
                .iter()
                .map(|field| (strsim::jaro_winkler(key, field), field))
                .filter(|(likeness, _)| *likeness > 0.85)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match nearest {
                Some((_, field)) if !key.contains('.') => format!("`{key}` (did you mean `{field}`?)"),
                _ => format!("`{key}`"),
            }
        })
        .collect();
    let noun = if keys.len() == 1 { "setting" } else { "settings" };
    format!("unknown {noun} {}; the settings are listed in the configuration guide", named.join(", "))
}

/// The fields of struct `T`, as its derived `Deserialize` names them to a reader.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    /// A reader that reads nothing: it notes the fields a struct asks for, and stops.
    struct Fields<'a>(&'a Cell<&'static [&'static str]>);

    impl<'de> serde::Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(serde::de::Error::custom("fields noted"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }

    let fields = Cell::new(&[][..]);
    let _ = T::deserialize(Fields(&fields));
    fields.get()
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

    #[test]
    fn unknown_settings_are_refused_by_name_with_the_likely_one() {
        let text = "max_retries = 2\ndefualt_model = \"openai/gpt-4o\"\n[budget]\nllm_call = 3\n";
        let message = read_settings::<crate::Config>(text, true).unwrap_err();
        assert_eq!(
            message,
            "unknown settings `budget.llm_call`, `defualt_model` (did you mean `default_model`?); \
             the settings are listed in the configuration guide"
        );
        let text = r#"{"openai_apikey": "sk-LEAKCANARY", "max_retries": 2}"#;
        let message = read_settings::<crate::Config>(text, false).unwrap_err();
        assert!(message.starts_with("unknown setting `openai_apikey` (did you mean `openai_api_key`?)"), "{message}");
        assert!(!message.contains("LEAKCANARY"), "{message}");
    }

    #[test]
    fn a_saved_config_reads_back_with_every_key_known() {
        let config = crate::Config::builder().max_retries(5_u32).build().unwrap();
        for (text, toml) in [(config.to_toml(), true), (config.to_json(), false)] {
            let read: crate::Config = read_settings(&text, toml).unwrap();
            assert_eq!(read.max_retries, 5);
        }
        assert!(field_names::<crate::Config>().contains(&"openai_api_key"), "secrets are settings too");
    }
}
