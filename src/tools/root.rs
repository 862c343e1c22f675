//! Confinement of the file tools to `files_root`.
//!
//! A requested path is joined to the root and normalised lexically (`.` dropped,
//! `..` applied), and refused if that leaves the root. Then the deepest part of it
//! that exists is canonicalised, so a symbolic link inside the root that points
//! outside is refused too. (A link swapped in between this check and the file
//! access is not caught: the tools guard against a model's mistakes, not against a
//! hostile process on the same machine.)

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::tool::ToolError;

/// The search for a file by name looks this many directories deep at most.
const SEARCH_DEPTH: usize = 8;
/// ...and at this many directory entries at most.
const SEARCH_ENTRIES: usize = 10_000;
/// ...and offers this many matches at most, the best ones.
const SEARCH_MATCHES: usize = 20;

/// The root directory of the file tools.
#[derive(Debug, Clone)]
pub(super) struct FilesRoot {
    /// The root as configured, for messages.
    shown: PathBuf,
    /// The root made absolute, without symbolic links.
    canonical: PathBuf,
    /// The root made absolute lexically, as an absolute request may spell it.
    absolute: PathBuf,
}

/// A path inside the root.
#[derive(Debug, Clone)]
pub(super) struct RootedPath {
    /// Where the file is.
    pub(super) full: PathBuf,
    /// The path from the root, with `/` separators, for messages and results.
    pub(super) relative: String,
}

impl FilesRoot {
    /// The root at `root` (relative to the working directory if relative).
    pub(super) fn open(root: &Path) -> Result<Self, ToolError> {
        let canonical = root.canonicalize().map_err(|e| {
            ToolError::hard(format!(
                "the files root {} cannot be used ({e}); set PORTIA_FILES_ROOT to an existing directory",
                root.display()
            ))
        })?;
        if !canonical.is_dir() {
            return Err(ToolError::hard(format!(
                "the files root {} is not a directory; set PORTIA_FILES_ROOT to a directory",
                root.display()
            )));
        }
        let absolute = std::path::absolute(root).ok().and_then(|p| normalize(&p)).unwrap_or_else(|| canonical.clone());
        Ok(Self { shown: root.to_path_buf(), canonical, absolute })
    }

    /// Resolves `requested` inside the root.
    ///
    /// # Errors
    /// Soft for an empty name; hard for a path that leaves the root, lexically or
    /// through a symbolic link, or that names the root itself.
    pub(super) fn resolve(&self, requested: &str) -> Result<RootedPath, ToolError> {
        let requested = requested.trim();
        if requested.is_empty() {
            return Err(ToolError::soft("the file name is empty; give a path relative to the files root"));
        }
        let relative = self.relative_part(requested)?;
        if relative.as_os_str().is_empty() {
            return Err(ToolError::hard(format!("{requested:?} is the files root itself, not a file")));
        }
        let full = self.canonical.join(&relative);
        self.check_links(&full, requested)?;
        Ok(RootedPath { full, relative: slash_path(&relative) })
    }

    /// The request as a normalised path relative to the root.
    fn relative_part(&self, requested: &str) -> Result<PathBuf, ToolError> {
        let path = Path::new(requested);
        let outside = || {
            ToolError::hard(format!(
                "{requested:?} is outside the files root {}; give a path inside it, relative to it",
                self.shown.display()
            ))
        };
        if path.has_root() {
            let normalized = normalize(path).ok_or_else(outside)?;
            let inside = normalized.strip_prefix(&self.canonical).or_else(|_| normalized.strip_prefix(&self.absolute));
            return inside.map(Path::to_path_buf).map_err(|_| outside());
        }
        normalize(path).ok_or_else(outside)
    }

    /// Refuses a path whose deepest existing part resolves outside the root.
    fn check_links(&self, full: &Path, requested: &str) -> Result<(), ToolError> {
        let Some(existing) = full.ancestors().find(|p| p.symlink_metadata().is_ok()) else {
            return Ok(());
        };
        let resolved = existing.canonicalize().map_err(|_| {
            ToolError::hard(format!(
                "{requested:?} goes through a symbolic link that points nowhere; refusing to follow it"
            ))
        })?;
        if resolved.starts_with(&self.canonical) {
            Ok(())
        } else {
            Err(ToolError::hard(format!(
                "{requested:?} leads outside the files root {} through a symbolic link; refusing to follow it",
                self.shown.display()
            )))
        }
    }

    /// Files under the root whose name resembles `name` (see [`Similarity`]), as
    /// root-relative paths, best first: the same name, then the same stem, then one
    /// stem inside the other, then near misses by fewest edits; within each kind,
    /// files with the requested extension first, then by path. Only files ending in
    /// one of `extensions` are offered, at most [`SEARCH_MATCHES`] of them.
    pub(super) fn find_similar(&self, name: &str, extensions: &[&str]) -> Vec<String> {
        let wanted = FileName::new(name);
        let mut found = Vec::new();
        self.for_each_file(|relative, file_name| {
            let candidate = FileName::new(file_name);
            if let Some(similarity) = wanted.similarity(&candidate, extensions) {
                found.push((similarity, candidate.extension != wanted.extension, relative));
            }
        });
        found.sort();
        found.into_iter().take(SEARCH_MATCHES).map(|(_, _, relative)| relative).collect()
    }

    /// Calls `visit` with the root-relative path and the name of each file under the
    /// root, within [`SEARCH_DEPTH`] and [`SEARCH_ENTRIES`]. Hidden directories are
    /// skipped and links are not followed.
    fn for_each_file(&self, mut visit: impl FnMut(String, &str)) {
        let mut queue = vec![(self.canonical.clone(), 0usize)];
        let mut seen = 0usize;
        while let Some((dir, depth)) = queue.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                seen += 1;
                if seen > SEARCH_ENTRIES {
                    return;
                }
                let Ok(kind) = entry.file_type() else { continue };
                let file_name: OsString = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if kind.is_dir() && depth < SEARCH_DEPTH && !file_name.starts_with('.') {
                    queue.push((entry.path(), depth + 1));
                } else if kind.is_file()
                    && let Ok(relative) = entry.path().strip_prefix(&self.canonical)
                {
                    visit(slash_path(relative), &file_name);
                }
            }
        }
    }
}

/// How a file's name resembles the requested one; the earlier kinds rank first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Similarity {
    /// The same name, ignoring case.
    SameName,
    /// The same stem, ignoring case, with another extension.
    SameStem,
    /// One stem contains the other, the shorter having at least
    /// [`MIN_CONTAINED_CHARS`] characters.
    Containment,
    /// The stems are this many edits apart (see [`max_edits`]).
    NearMiss(usize),
}

/// A stem shorter than this is not looked for inside others: "q" is in too many names.
const MIN_CONTAINED_CHARS: usize = 3;

/// A file name, lower-cased and split into stem and extension.
#[derive(Debug)]
struct FileName {
    name: String,
    stem: String,
    extension: String,
}

impl FileName {
    /// `name` split at its last dot (a leading dot does not start an extension).
    fn new(name: &str) -> Self {
        let name = name.to_lowercase();
        let (stem, extension) = match name.rfind('.') {
            Some(dot) if dot > 0 => (name[..dot].to_owned(), name[dot + 1..].to_owned()),
            _ => (name.clone(), String::new()),
        };
        Self { name, stem, extension }
    }

    /// How `candidate` resembles this name, if enough to be offered. Files the
    /// reader cannot read, and hidden files other than an exact match, are not.
    fn similarity(&self, candidate: &Self, extensions: &[&str]) -> Option<Similarity> {
        if !extensions.contains(&candidate.extension.as_str()) {
            return None;
        }
        if candidate.name == self.name {
            return Some(Similarity::SameName);
        }
        if candidate.name.starts_with('.') {
            return None;
        }
        if candidate.stem == self.stem {
            return Some(Similarity::SameStem);
        }
        if contains_either(&self.stem, &candidate.stem) {
            return Some(Similarity::Containment);
        }
        edit_distance_within(&self.stem, &candidate.stem, max_edits(&self.stem)).map(Similarity::NearMiss)
    }
}

/// Whether one of `a` and `b` contains the other, the shorter being at least
/// [`MIN_CONTAINED_CHARS`] characters long.
fn contains_either(a: &str, b: &str) -> bool {
    let (short, long) = if a.chars().count() <= b.chars().count() { (a, b) } else { (b, a) };
    short.chars().count() >= MIN_CONTAINED_CHARS && long.contains(short)
}

/// How many edits a near miss of `stem` may have: 2 from five characters on, 1 for
/// four, none below (a single edit makes "q1" into "q2", another file altogether).
fn max_edits(stem: &str) -> usize {
    match stem.chars().count() {
        0..=3 => 0,
        4 => 1,
        _ => 2,
    }
}

/// The Levenshtein distance between `a` and `b` in characters (insertions,
/// deletions and substitutions), if it is at most `max` (and more than zero
/// edits are allowed). File names are short, so the full table is cheap.
fn edit_distance_within(a: &str, b: &str, max: usize) -> Option<usize> {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if max == 0 || a.len().abs_diff(b.len()) > max {
        return None;
    }
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous.last().copied().filter(|&distance| distance <= max)
}

/// Applies `.` and `..` without touching the file system; `None` if `..` climbs
/// above the start of `path`.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut depth = 0usize;
    for component in path.components() {
        match component {
            Component::Prefix(_) | Component::RootDir => out.push(component),
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth.checked_sub(1)?;
                out.pop();
            }
            Component::Normal(part) => {
                depth += 1;
                out.push(part);
            }
        }
    }
    Some(out)
}

fn slash_path(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_applies_dots_and_refuses_climbing_out() {
        assert_eq!(normalize(Path::new("a/./b/../c")), Some(PathBuf::from("a/c")));
        assert_eq!(normalize(Path::new("a/../../x")), None);
        assert_eq!(normalize(Path::new("/r/a/..")), Some(PathBuf::from("/r")));
        assert_eq!(normalize(Path::new("/..")), None);
    }

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance_within("report", "report", 2), Some(0));
        assert_eq!(edit_distance_within("reprot", "report", 2), Some(2));
        assert_eq!(edit_distance_within("reprt", "report", 2), Some(1));
        assert_eq!(edit_distance_within("rapport", "report", 2), Some(2));
        assert_eq!(edit_distance_within("résumé", "resume", 2), Some(2));
        assert_eq!(edit_distance_within("kitten", "sitting", 2), None);
        assert_eq!(edit_distance_within("summary", "report", 2), None);
        assert_eq!(edit_distance_within("q1", "q2", 0), None);
    }

    #[test]
    fn names_split_at_the_last_dot_and_rank_by_kind() {
        let wanted = FileName::new("Report.CSV");
        assert_eq!((wanted.stem.as_str(), wanted.extension.as_str()), ("report", "csv"));
        assert_eq!(FileName::new(".env").stem, ".env");
        let rank = |name: &str| wanted.similarity(&FileName::new(name), &["csv", "xlsx"]);
        assert_eq!(rank("report.csv"), Some(Similarity::SameName));
        assert_eq!(rank("REPORT.xlsx"), Some(Similarity::SameStem));
        assert_eq!(rank("report.2024.csv"), Some(Similarity::Containment));
        assert_eq!(rank("repo.csv"), Some(Similarity::Containment));
        assert_eq!(rank("reprt.csv"), Some(Similarity::NearMiss(1)));
        assert_eq!(rank("report.txt"), None, "extension not offered");
        assert_eq!(rank(".report-old.csv"), None, "hidden");
        assert_eq!(rank("re.csv"), None, "too short to be looked for");
        assert!(Similarity::SameStem < Similarity::Containment);
        assert!(Similarity::Containment < Similarity::NearMiss(1));
        assert!(Similarity::NearMiss(1) < Similarity::NearMiss(2));
    }
}
