//! The plain setting enums of the configuration.

use crate::macros::config_enum;

config_enum!(
    /// Where workflows and plans are stored, chosen by `PORTIA_STORAGE`.
    StorageKind {
        /// In memory, lost when the process ends.
        Memory => ["memory", "mem"],
        /// One SQLite database, `<storage_dir>/portia.db`, that several processes can share.
        Sqlite => ["sqlite", "sqlite3"],
        /// One Postgres database (`PORTIA_DATABASE_URL`) that processes on many machines share.
        Postgres => ["postgres", "postgresql", "pg"],
    }
);

config_enum!(
    /// The execution agent, chosen by `PORTIA_AGENT`.
    AgentKind {
        /// One tool-calling LLM call per step.
        OneShot => ["one_shot", "oneshot"],
        /// Checks each argument's origin first and asks a human for missing or invented ones.
        Verifier => ["verifier"],
    }
);

config_enum!(
    /// How steps are scheduled, chosen by `PORTIA_EXECUTION`.
    ExecutionMode {
        /// Steps whose inputs are ready run at the same time, up to `max_parallel_steps`.
        Parallel => ["parallel"],
        /// One step at a time, in plan order.
        Sequential => ["sequential"],
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_with_aliases_and_either_separator() {
        assert_eq!("ONE-SHOT".parse::<AgentKind>(), Ok(AgentKind::OneShot));
        assert_eq!("oneshot".parse::<AgentKind>(), Ok(AgentKind::OneShot));
        assert_eq!(" SQLite3 ".parse::<StorageKind>(), Ok(StorageKind::Sqlite));
        let err = "later".parse::<ExecutionMode>().unwrap_err();
        assert!(err.contains("parallel, sequential"), "{err}");
    }

    #[test]
    fn values_serialize_as_their_first_name() {
        assert_eq!(serde_json::to_string(&AgentKind::OneShot).unwrap(), "\"one_shot\"");
        assert_eq!(serde_json::from_str::<StorageKind>("\"MEM\"").unwrap(), StorageKind::Memory);
        assert_eq!(AgentKind::ALL, &[AgentKind::OneShot, AgentKind::Verifier]);
    }
}
