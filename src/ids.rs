//! Prefixed identifiers: `plan-<uuid>`, `wkfl-<uuid>` and `clar-<uuid>`.
//!
//! Each kind of id is its own type, so a workflow id can never be passed where a
//! plan id is expected. Ids print and serialize as `<prefix>-<uuid>`; on input a
//! bare UUID is accepted too, because plans written by older SDKs have them.
//!
//! A new id is a time-ordered UUID (version 7): ids made later sort after those made
//! before, so a listing in id order is in the order things were made, and a store's
//! indexes keyed by id take new rows at one end rather than all over.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid id of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {input:?}: expected \"{prefix}-<uuid>\" or a bare UUID ({reason})")]
pub struct IdParseError {
    /// The kind of id that was expected (`plan`, `workflow`, `clarification`).
    pub kind: &'static str,
    /// The prefix the id must carry.
    pub prefix: &'static str,
    /// The text that failed to parse.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// The prefix this kind of id carries, without the dash.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id: a time-ordered (v7) UUID, so that ids made one after
            /// another sort together and a store's indexes grow at one end.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID without its prefix.
            pub const fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}-{}", $prefix, self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(input: &str) -> Result<Self, Self::Err> {
                parse_prefixed(input, $prefix, $kind).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(
    /// Identifies a [`Plan`](crate::Plan): `plan-<uuid>`.
    PlanId,
    "plan",
    "plan"
);
prefixed_id!(
    /// Identifies a [`Workflow`](crate::Workflow): `wkfl-<uuid>`.
    WorkflowId,
    "wkfl",
    "workflow"
);
prefixed_id!(
    /// Identifies a [`Clarification`](crate::Clarification): `clar-<uuid>`.
    ClarificationId,
    "clar",
    "clarification"
);

fn parse_prefixed(input: &str, prefix: &'static str, kind: &'static str) -> Result<Uuid, IdParseError> {
    let error = |reason: String| IdParseError { kind, prefix, input: input.to_owned(), reason };
    // A bare UUID is 36 characters; anything longer must carry our prefix. No prefix
    // is hexadecimal, so one is never mistaken for a bare UUID's first group.
    let uuid_text = match input.split_once('-') {
        Some((head, rest)) if head == prefix => rest,
        Some((head, _)) if input.len() > 36 => return Err(error(format!("the prefix is {head:?}, not {prefix:?}"))),
        _ => input,
    };
    // The parser counts positions from the start of the UUID, after any prefix.
    let after = if uuid_text.len() == input.len() { String::new() } else { format!("after \"{prefix}-\": ") };
    Uuid::parse_str(uuid_text).map_err(|e| error(format!("{after}{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = WorkflowId::new();
        let text = id.to_string();
        assert!(text.starts_with("wkfl-"));
        assert_eq!(text.parse::<WorkflowId>().unwrap(), id);
    }

    #[test]
    fn ids_made_one_after_another_sort_in_the_order_they_were_made() {
        let made: Vec<WorkflowId> = (0..1000).map(|_| WorkflowId::new()).collect();
        let texts: Vec<String> = made.iter().map(ToString::to_string).collect();
        assert!(made.windows(2).all(|pair| pair[0] < pair[1]), "as ids");
        assert!(texts.windows(2).all(|pair| pair[0] < pair[1]), "as text, as a store sorts them");
        assert!(made.iter().all(|id| id.uuid().get_version_num() == 7));
    }

    #[test]
    fn bare_uuid_is_accepted() {
        let id: PlanId = "1dcd74a4-0af5-490a-a7d0-0df4fd983977".parse().unwrap();
        assert_eq!(id.to_string(), "plan-1dcd74a4-0af5-490a-a7d0-0df4fd983977");
    }

    #[test]
    fn wrong_prefix_names_the_expected_one() {
        let err = "wkfl-1dcd74a4-0af5-490a-a7d0-0df4fd983977".parse::<PlanId>().unwrap_err();
        assert_eq!(err.prefix, "plan");
        let message = err.to_string();
        assert!(message.contains("\"plan-<uuid>\""), "{message}");
        assert!(message.contains("\"wkfl\""), "{message}");
    }

    #[test]
    fn a_short_id_with_the_right_prefix_is_faulted_after_it() {
        let message = "wkfl-xyz".parse::<WorkflowId>().unwrap_err().to_string();
        assert!(message.contains("after \"wkfl-\"") && !message.contains("found 'w'"), "{message}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!("clar-not-a-uuid-at-all-but-long-enough-to-try".parse::<ClarificationId>().is_err());
        assert!("".parse::<ClarificationId>().is_err());
    }

    #[test]
    fn serializes_as_prefixed_string() {
        let id = ClarificationId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        let back: ClarificationId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }
}
