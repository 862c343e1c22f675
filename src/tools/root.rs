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
/// ...and stops after this many matches.
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

    /// Files under the root named `name` (ignoring case), as root-relative paths,
    /// sorted. The search skips hidden directories and does not follow links.
    pub(super) fn find_by_name(&self, name: &str) -> Vec<String> {
        let wanted = name.to_lowercase();
        let mut found = Vec::new();
        let mut queue = vec![(self.canonical.clone(), 0usize)];
        let mut seen = 0usize;
        while let Some((dir, depth)) = queue.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                seen += 1;
                if seen > SEARCH_ENTRIES || found.len() >= SEARCH_MATCHES {
                    return sorted(found);
                }
                let Ok(kind) = entry.file_type() else { continue };
                let file_name: OsString = entry.file_name();
                let file_name = file_name.to_string_lossy();
                if kind.is_dir() && depth < SEARCH_DEPTH && !file_name.starts_with('.') {
                    queue.push((entry.path(), depth + 1));
                } else if kind.is_file() && file_name.to_lowercase() == wanted {
                    if let Ok(relative) = entry.path().strip_prefix(&self.canonical) {
                        found.push(slash_path(relative));
                    }
                }
            }
        }
        sorted(found)
    }
}

fn sorted(mut paths: Vec<String>) -> Vec<String> {
    paths.sort();
    paths
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
}
