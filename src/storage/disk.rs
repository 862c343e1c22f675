use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use super::{Storage, ToolCallRecord, WorkflowPage, WorkflowQuery};
use crate::ids::{PlanId, WorkflowId};
use crate::plan::Plan;
use crate::workflow::Workflow;
use crate::{Error, Result};

/// Keeps one pretty JSON file per object in a directory: `plan-<uuid>.json`,
/// `wkfl-<uuid>.json`, and tool calls appended to `tool-calls.jsonl`.
///
/// Writes are atomic (a temporary file, then a rename), so a crash never leaves a
/// half-written workflow behind. The directory is created on first write.
#[derive(Debug, Clone)]
pub struct DiskStorage {
    dir: PathBuf,
}

impl DiskStorage {
    /// Storage in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory the files live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: impl std::fmt::Display) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    async fn write_atomically(&self, path: &Path, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::storage(Some(path.to_owned()), e))?;
        let io_error = |e: std::io::Error| Error::storage(Some(path.to_owned()), e);
        tokio::fs::create_dir_all(&self.dir).await.map_err(io_error)?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("object");
        // A unique temporary name keeps two writers of the same object from sharing one.
        let temp = self.dir.join(format!(".{file_name}.{:016x}.tmp", fastrand::u64(..)));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(&text).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temp, path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result.map_err(io_error)
    }

    async fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>> {
        match tokio::fs::read(path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::storage(Some(path.to_owned()), format!("not a valid stored object: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::storage(Some(path.to_owned()), e)),
        }
    }

    async fn workflow_files(&self) -> Result<Vec<PathBuf>> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::storage(Some(self.dir.clone()), e)),
        };
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(|e| Error::storage(Some(self.dir.clone()), e))? {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("wkfl-") && name.ends_with(".json") {
                files.push(entry.path());
            }
        }
        Ok(files)
    }
}

#[async_trait::async_trait]
impl Storage for DiskStorage {
    async fn save_plan(&self, plan: &Plan) -> Result<()> {
        self.write_atomically(&self.path_of(plan.id), plan).await
    }

    async fn get_plan(&self, id: PlanId) -> Result<Plan> {
        self.read(&self.path_of(id)).await?.ok_or(Error::PlanNotFound(id))
    }

    async fn save_workflow(&self, workflow: &Workflow) -> Result<()> {
        self.write_atomically(&self.path_of(workflow.id), workflow).await
    }

    async fn get_workflow(&self, id: WorkflowId) -> Result<Workflow> {
        self.read(&self.path_of(id)).await?.ok_or(Error::WorkflowNotFound(id))
    }

    async fn list_workflows(&self, query: &WorkflowQuery) -> Result<WorkflowPage> {
        let mut workflows = Vec::new();
        let mut unreadable = Vec::new();
        for path in self.workflow_files().await? {
            match self.read::<Workflow>(&path).await {
                Ok(Some(workflow)) => workflows.push(workflow),
                Ok(None) => {} // removed while listing
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable workflow file");
                    unreadable.push(e.to_string());
                }
            }
        }
        Ok(WorkflowPage::from_all(workflows, query, unreadable))
    }

    async fn save_tool_call(&self, record: &ToolCallRecord) -> Result<()> {
        let path = self.dir.join("tool-calls.jsonl");
        let io_error = |e: std::io::Error| Error::storage(Some(path.clone()), e);
        let mut line = serde_json::to_vec(record).map_err(|e| Error::storage(Some(path.clone()), e))?;
        line.push(b'\n');
        tokio::fs::create_dir_all(&self.dir).await.map_err(io_error)?;
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(&path).await.map_err(io_error)?;
        file.write_all(&line).await.map_err(io_error)?;
        // tokio hands writes to a blocking thread; without a flush the line may not be
        // written yet when this returns, and a reader would miss it.
        file.flush().await.map_err(io_error)
    }
}
