//! The `config_enum!` macro and the plain setting enums it declares.

/// Declares a config enum that parses case-insensitively from its documented names
/// (`-` and `_` are interchangeable) and serializes as the first name.
///
/// Used here and by the enums other modules own (`LlmProvider`, `LogLevel`); every
/// path it expands to is absolute, so it works in any module.
macro_rules! config_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => [$main:literal $(, $alias:literal)*]),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The documented name of this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $main),+ }
            }

            fn names() -> ::std::string::String {
                [$($main),+].join(", ")
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::string::String;

            fn from_str(text: &str) -> ::std::result::Result<Self, ::std::string::String> {
                let wanted = text.trim().to_ascii_lowercase().replace('_', "-");
                $(if wanted == $main.replace('_', "-") $(|| wanted == $alias)* {
                    return Ok(Self::$variant);
                })+
                Err(format!("unknown value {text:?}; valid values are: {}", Self::names()))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> ::std::result::Result<Self, D::Error> {
                let text = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

pub(crate) use config_enum;

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
