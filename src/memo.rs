//! What the crate makes from a JSON schema (the form sent to a provider, a compiled
//! validator), kept so that each schema is worked on once per process rather than
//! on every call: the same few schemas come back on every step of every workflow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;
use serde_json::Value;

/// Schemas kept per memo. Past it the memo starts afresh, so a process that makes
/// schemas without end (one per query, say) holds a bounded number.
const MAX_KEPT: usize = 256;

/// Values made from schemas, by the schema. A lookup hashes the whole schema, so
/// the hasher is a fast one (seeded per process, so schemas from a server cannot be
/// made to collide on purpose).
#[derive(Debug)]
pub(crate) struct SchemaMemo<T> {
    made: Mutex<Made<T>>,
}

type Made<T> = HashMap<Value, Arc<T>, RandomState>;

impl<T> Default for SchemaMemo<T> {
    fn default() -> Self {
        Self { made: Mutex::new(HashMap::default()) }
    }
}

impl<T> SchemaMemo<T> {
    /// What `make` made of `schema`, made now if this memo has not kept it.
    pub(crate) fn get(&self, schema: &Value, make: impl FnOnce(&Value) -> T) -> Arc<T> {
        if let Some(made) = self.lock().get(schema) {
            return Arc::clone(made);
        }
        // Made unlocked: two callers may both make a new schema's value, and one is kept.
        let made = Arc::new(make(schema));
        let mut kept = self.lock();
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        kept.insert(schema.clone(), Arc::clone(&made));
        made
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Made<T>> {
        self.made.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_schema_is_made_once_and_the_memo_stays_bounded() {
        let memo = SchemaMemo::default();
        let mut made = 0;
        for _ in 0..3 {
            memo.get(&json!({"type": "string"}), |_| made += 1);
        }
        assert_eq!(made, 1);
        for n in 0..MAX_KEPT * 2 {
            memo.get(&json!({"maxLength": n}), |_| ());
        }
        assert!(memo.lock().len() <= MAX_KEPT);
    }
}
