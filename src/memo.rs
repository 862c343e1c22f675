//! What the crate makes from a JSON schema (the form sent to a provider, a compiled
//! validator), kept so that each schema is worked on once per process rather than
//! on every call: the same few schemas come back on every step of every workflow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use foldhash::fast::RandomState;
use serde_json::Value;

use crate::SharedValue;

/// Schemas kept per memo. Past it the memo starts afresh, so a process that makes
/// schemas without end (one per query, say) holds a bounded number.
const MAX_KEPT: usize = 256;

/// Values made from schemas, by the schema. A lookup by content hashes the whole
/// schema, so the hasher is a fast one (seeded per process, so schemas from a server
/// cannot be made to collide on purpose). A shared schema is looked up by its
/// address first, which costs no hashing of its content at all.
#[derive(Debug)]
pub(crate) struct SchemaMemo<T> {
    made: Mutex<Made<T>>,
}

#[derive(Debug)]
struct Made<T> {
    by_content: HashMap<Arc<Value>, Arc<T>, RandomState>,
    /// Keyed by a shared schema's address. The entry holds that schema, so no other
    /// schema can be given its address while the entry is kept.
    by_address: HashMap<usize, (Arc<Value>, Arc<T>), RandomState>,
}

impl<T> Default for SchemaMemo<T> {
    fn default() -> Self {
        Self { made: Mutex::new(Made { by_content: HashMap::default(), by_address: HashMap::default() }) }
    }
}

impl<T> SchemaMemo<T> {
    /// What `make` made of `schema`, made now if this memo has not kept it.
    pub(crate) fn get(&self, schema: &Value, make: impl FnOnce(&Value) -> T) -> Arc<T> {
        if let Some(made) = self.lock().by_content.get(schema) {
            return Arc::clone(made);
        }
        self.make_and_keep(Arc::new(schema.clone()), make)
    }

    /// [`get`](Self::get) for a shared schema: the schemas of tools and of outputs
    /// are shared, so the same few addresses come back on every call.
    pub(crate) fn get_shared(&self, schema: &SharedValue, make: impl FnOnce(&Value) -> T) -> Arc<T> {
        let schema = schema.as_arc();
        let address = Arc::as_ptr(schema) as usize;
        {
            let mut kept = self.lock();
            if let Some((_, made)) = kept.by_address.get(&address) {
                return Arc::clone(made);
            }
            if let Some(made) = kept.by_content.get(&**schema).cloned() {
                if kept.by_address.len() >= MAX_KEPT {
                    kept.by_address.clear();
                }
                kept.by_address.insert(address, (Arc::clone(schema), Arc::clone(&made)));
                return made;
            }
        }
        self.make_and_keep(Arc::clone(schema), make)
    }

    fn make_and_keep(&self, schema: Arc<Value>, make: impl FnOnce(&Value) -> T) -> Arc<T> {
        // Made unlocked: two callers may both make a new schema's value, and one is kept.
        let made = Arc::new(make(&schema));
        let mut kept = self.lock();
        if kept.by_content.len() >= MAX_KEPT || kept.by_address.len() >= MAX_KEPT {
            kept.by_content.clear();
            kept.by_address.clear();
        }
        kept.by_address.insert(Arc::as_ptr(&schema) as usize, (Arc::clone(&schema), Arc::clone(&made)));
        kept.by_content.insert(schema, Arc::clone(&made));
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
        assert!(memo.lock().by_content.len() <= MAX_KEPT);
    }

    #[test]
    fn a_shared_schema_is_found_by_address_and_an_equal_one_by_content() {
        let memo = SchemaMemo::default();
        let schema = SharedValue::from(json!({"type": "string"}));
        let mut made = 0;
        let first = memo.get_shared(&schema, |_| {
            made += 1;
            made
        });
        let again = memo.get_shared(&schema, |_| unreachable!("kept by address"));
        let equal = memo.get_shared(&json!({"type": "string"}).into(), |_| unreachable!("kept by content"));
        let plain = memo.get(&json!({"type": "string"}), |_| unreachable!("kept by content"));
        assert_eq!((*first, *again, *equal, *plain, made), (1, 1, 1, 1, 1));
        assert_eq!(memo.lock().by_address.len(), 2);
    }

    #[test]
    fn a_kept_address_always_names_the_schema_kept_under_it() {
        // The entry holds its schema, so a schema made after another is dropped cannot
        // take a kept address and be given the other's value.
        let memo = SchemaMemo::default();
        for n in 0..MAX_KEPT * 2 {
            let schema = SharedValue::from(json!({"maxLength": n}));
            let made = memo.get_shared(&schema, |s| s["maxLength"].clone());
            assert_eq!(*made, json!(n));
        }
        let kept = memo.lock();
        assert!(kept.by_address.len() <= MAX_KEPT && kept.by_content.len() <= MAX_KEPT);
        assert!(kept.by_address.iter().all(|(address, (schema, _))| Arc::as_ptr(schema) as usize == *address));
    }
}
