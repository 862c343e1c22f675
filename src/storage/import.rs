//! Moves a directory written by the retired JSON-file store into any [`Storage`].

use std::path::Path;

use serde::de::DeserializeOwned;

use super::Storage;
use crate::plan::Plan;
use crate::workflow::Workflow;
use crate::{Error, Result};

/// What [`import_json_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ImportReport {
    /// Plans imported.
    pub plans: usize,
    /// Workflows imported.
    pub workflows: usize,
    /// Files not imported, each with the reason (unreadable, or an id already stored).
    pub skipped: Vec<String>,
}

/// Imports every `plan-*.json` and `wkfl-*.json` file of `dir` (the layout of the
/// JSON-file store of portia 0.1) into `storage`, plans first. A workflow whose id
/// is already stored is skipped, so importing twice is harmless.
///
/// # Errors
/// A storage error if `dir` cannot be read or a write fails.
pub async fn import_json_dir(dir: impl AsRef<Path>, storage: &dyn Storage) -> Result<ImportReport> {
    let dir = dir.as_ref();
    let mut report = ImportReport::default();
    for plan in read_all::<Plan>(dir, "plan-", &mut report.skipped).await? {
        storage.save_plan(&plan).await?;
        report.plans += 1;
    }
    for workflow in read_all::<Workflow>(dir, "wkfl-", &mut report.skipped).await? {
        let workflow = workflow.imported();
        match storage.create_workflow(&workflow).await {
            Ok(()) => report.workflows += 1,
            Err(Error::VersionConflict { .. }) => report.skipped.push(format!("{}: already stored", workflow.id())),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

async fn read_all<T: DeserializeOwned>(dir: &Path, prefix: &str, skipped: &mut Vec<String>) -> Result<Vec<T>> {
    let io_error = |e| Error::storage_source(Some(dir.to_owned()), "cannot read the directory", e);
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io_error)?;
    let mut paths = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".json") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut items = Vec::new();
    for path in paths {
        let parsed = tokio::fs::read(&path)
            .await
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
        match parsed {
            Ok(item) => items.push(item),
            Err(reason) => skipped.push(format!("{}: {reason}", path.display())),
        }
    }
    Ok(items)
}
