//! The crate's top-level modules form layers: no module imports, directly or through
//! others, a module that imports it back. A cycle is how a layered core erodes, one
//! convenient import at a time, so a new one fails here with the imports that make it.
//!
//! The check reads `src/` as text: every `crate::name` path outside comments, string
//! literals and `#[cfg(test)]` modules is an import of the top-level module `name`,
//! and a path through a root re-export (`crate::Error`) counts as an import of the
//! module that defines it (`error`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Imports between top-level modules: importer -> imported -> files that import it.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn the_top_level_modules_import_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    // The checker sees the crate as it is: the runner drives agents and stores.
    for (from, to) in [("runner", "storage"), ("runner", "agent"), ("llm", "error")] {
        assert!(graph.get(from).is_some_and(|m| m.contains_key(to)), "expected {from} to import {to}: {graph:#?}");
    }
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "import cycles between top-level modules:\n{}", describe(&graph, &cycles));
}

#[test]
fn a_cycle_through_a_root_re_export_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::write(src.join("lib.rs"), "mod low;\nmod high;\npub use high::Thing;\n").unwrap();
    fs::create_dir(src.join("high")).unwrap();
    fs::write(src.join("high/mod.rs"), "mod part;\npub struct Thing;\n").unwrap();
    fs::write(src.join("high/part.rs"), "use crate::low::Base;\n").unwrap();
    // A comment, a string and a test module that name `high` are no imports; the
    // re-exported `Thing` is.
    let low = "// crate::high::Thing\nconst S: &str = \"crate::high\";\n\
               #[cfg(test)]\nmod tests { use crate::high::Thing; }\n\
               pub struct Base;\nfn f(_: crate::Thing) {}\n";
    fs::write(src.join("low.rs"), low).unwrap();
    let graph = module_graph(src);
    assert_eq!(cycles(&graph), [vec!["high".to_owned(), "low".to_owned()]]);
    assert_eq!(graph["low"]["high"], BTreeSet::from(["low.rs".to_owned()]));

    fs::write(src.join("low.rs"), low.replace("fn f(_: crate::Thing) {}", "")).unwrap();
    assert!(cycles(&module_graph(src)).is_empty());
}

/// The imports between the top-level modules of the crate whose `lib.rs` is in `src`.
fn module_graph(src: &Path) -> Graph {
    let lib = code_of(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let modules = top_level_modules(&lib);
    let re_exports = root_re_exports(&lib, &modules);
    let mut graph = Graph::new();
    for module in &modules {
        let edges = graph.entry(module.clone()).or_default();
        for file in module_files(src, module) {
            let code = code_of(&fs::read_to_string(&file).unwrap());
            let name = file.strip_prefix(src).unwrap().to_string_lossy().into_owned();
            for target in crate_paths(&code) {
                let target = re_exports.get(&target).unwrap_or(&target);
                if target != module && modules.contains(target) {
                    edges.entry(target.clone()).or_default().insert(name.clone());
                }
            }
        }
    }
    graph
}

/// `mod name;` and `pub mod name;` declarations in `lib.rs`, file modules only.
fn top_level_modules(lib: &str) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    for statement in lib.split(';') {
        let words: Vec<&str> = statement.split_whitespace().collect();
        if let [.., "mod", name] = words.as_slice() {
            modules.insert((*name).to_owned());
        }
    }
    modules
}

/// Items re-exported at the root (`pub use error::{Error, Result};`), mapped to their module.
fn root_re_exports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        if !modules.contains(module.trim()) {
            continue;
        }
        for item in items.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()) {
            map.insert(item.to_owned(), module.trim().to_owned());
        }
    }
    map
}

/// Every `.rs` file of a top-level module, less the files of its `#[cfg(test)]` modules.
fn module_files(src: &Path, module: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{module}.rs"));
    if single.is_file() {
        files.push(single);
    }
    collect_rs(&src.join(module), &mut files);
    let test_only: BTreeSet<PathBuf> = files.iter().flat_map(|file| test_module_files(file)).collect();
    files.retain(|f| !test_only.contains(f));
    files
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The files that `#[cfg(test)] mod name;` in `file` declares.
fn test_module_files(file: &Path) -> Vec<PathBuf> {
    let code = strip_comments_and_strings(&fs::read_to_string(file).unwrap());
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs") => file.parent().unwrap().to_path_buf(),
        _ => file.with_extension(""),
    };
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        rest = &rest[at + "#[cfg(test)]".len()..];
        let words: Vec<&str> = rest.split_whitespace().take(2).collect();
        if let ["mod", name] = words.as_slice()
            && let Some(name) = name.strip_suffix(';')
        {
            found.push(dir.join(format!("{name}.rs")));
            found.push(dir.join(name).join("mod.rs"));
        }
    }
    found
}

/// The first segment of every `crate::` path: `crate::a::b` and `crate::{a, b::c}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident =
            rest[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            names.extend(group_heads(group));
        } else {
            names.push(ident_at(rest));
        }
    }
    names
}

/// The first segment of each top-level entry of a `{...}` use group.
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = vec![ident_at(group.trim_start())];
    let mut depth = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => heads.push(ident_at(group[i + 1..].trim_start())),
            _ => {}
        }
    }
    heads.retain(|h| !h.is_empty());
    heads
}

fn ident_at(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The code of a file with its comments, string literals and `#[cfg(test)]` modules removed.
fn code_of(source: &str) -> String {
    remove_test_modules(&strip_comments_and_strings(source))
}

fn remove_test_modules(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        if !declares_inline_module(after) {
            out.push_str("#[cfg(test)]");
            rest = after;
            continue;
        }
        let open = after.find('{').unwrap();
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Whether `code` (what follows `#[cfg(test)]`) starts with `mod name {`, perhaps
/// after more attributes.
fn declares_inline_module(code: &str) -> bool {
    let Some(end) = code.find(['{', ';']) else { return false };
    let words: Vec<&str> = code[..end].split_whitespace().collect();
    code[end..].starts_with('{') && matches!(words.as_slice(), [.., "mod", _])
}

/// Replaces comments by nothing and string and char literals by `""`, so that
/// neither a doc link nor a message is read as an import.
fn strip_comments_and_strings(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&chars, i);
        } else if c == '"' {
            i = skip_string(&chars, i + 1);
            out.push_str("\"\"");
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !continues_ident(&chars, i) {
            match skip_raw_string(&chars, i + 1) {
                Some(end) => {
                    i = end;
                    out.push_str("\"\"");
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else if c == '\'' {
            match char_literal_end(&chars, i) {
                Some(end) => {
                    i = end;
                    out.push_str("\"\"");
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn continues_ident(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn skip_block_comment(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i + 1 < chars.len() {
        if chars[i] == '/' && chars[i + 1] == '*' {
            depth += 1;
            i += 2;
        } else if chars[i] == '*' && chars[i + 1] == '/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    chars.len()
}

/// The index after the closing quote of a string whose body starts at `i`.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

/// The index after a raw string `r#"..."#` whose `#`s or quote start at `i`.
fn skip_raw_string(chars: &[char], mut i: usize) -> Option<usize> {
    let hashes = chars[i..].iter().take_while(|&&c| c == '#').count();
    i += hashes;
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|&&c| c == '#').count() == hashes {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// The index after a char literal starting at `i` (`'a'`, `'\n'`, `'\u{1F600}'`);
/// `None` for a lifetime or label.
fn char_literal_end(chars: &[char], i: usize) -> Option<usize> {
    match (chars.get(i + 1), chars.get(i + 2)) {
        (Some('\\'), _) => chars[i + 2..].iter().position(|&c| c == '\'').map(|p| i + 3 + p),
        (Some(_), Some('\'')) => Some(i + 3),
        _ => None,
    }
}

/// The strongly connected components of more than one module, each sorted.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let nodes: Vec<&String> = graph.keys().collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(node) = stack.pop() {
            for next in graph.get(&node).into_iter().flat_map(|m| m.keys()) {
                if seen.insert(next.clone()) {
                    stack.push(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|&n| (n, reach(n))).collect();
    let mut found: BTreeSet<Vec<String>> = BTreeSet::new();
    for &node in &nodes {
        let component: Vec<String> = nodes
            .iter()
            .filter(|&&other| reachable[node].contains(other) && reachable[other].contains(node))
            .map(|&other| other.clone())
            .collect();
        if component.len() > 1 {
            found.insert(component);
        }
    }
    found.into_iter().collect()
}

fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut text = String::new();
    for component in cycles {
        text.push_str(&format!("- {}\n", component.join(", ")));
        for from in component {
            for (to, files) in &graph[from] {
                if component.contains(to) {
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    text.push_str(&format!("    {from} -> {to}  ({})\n", files.join(", ")));
                }
            }
        }
    }
    text
}
