//! [`SharedValue`]: a JSON value that many owners read and none copies.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// A JSON value behind a reference count: cloning one shares it instead of copying
/// it.
///
/// A tool's output is kept by its journal record, announced in an event, stored as
/// the step's output and shown to later steps; a tool's schema goes out with every
/// call that offers the tool. Each of these holds a `SharedValue`, so a search
/// result or a schema is in memory once however many places hold it.
///
/// It reads as a [`serde_json::Value`] (it dereferences to one), compares equal
/// with one, prints and serializes as one, and is made from one with
/// [`From`]/[`Into`]:
///
/// ```
/// use portia::SharedValue;
/// use portia::serde_json::json;
///
/// let value = SharedValue::from(json!({"price": 3.5}));
/// let copy = value.clone(); // no copy of the JSON: both share it
/// assert_eq!(copy["price"], 3.5);
/// assert_eq!(copy, json!({"price": 3.5}));
/// assert_eq!(copy.to_string(), r#"{"price":3.5}"#);
/// assert_eq!(copy.into_value(), json!({"price": 3.5}));
/// ```
#[derive(Clone, Default)]
pub struct SharedValue(Arc<Value>);

impl SharedValue {
    /// Shares `value`.
    pub fn new(value: Value) -> Self {
        Self(Arc::new(value))
    }

    /// The value, moved out when this is its only holder and copied otherwise.
    pub fn into_value(self) -> Value {
        Arc::unwrap_or_clone(self.0)
    }

    /// The value to change in place: copied first when others hold it too, so
    /// they keep seeing what they saw.
    pub fn make_mut(&mut self) -> &mut Value {
        Arc::make_mut(&mut self.0)
    }

    /// The shared value itself.
    pub fn as_arc(&self) -> &Arc<Value> {
        &self.0
    }
}

impl Deref for SharedValue {
    type Target = Value;

    fn deref(&self) -> &Value {
        &self.0
    }
}

impl AsRef<Value> for SharedValue {
    fn as_ref(&self) -> &Value {
        &self.0
    }
}

impl From<Value> for SharedValue {
    fn from(value: Value) -> Self {
        Self::new(value)
    }
}

impl From<Arc<Value>> for SharedValue {
    fn from(value: Arc<Value>) -> Self {
        Self(value)
    }
}

impl From<SharedValue> for Value {
    fn from(value: SharedValue) -> Self {
        value.into_value()
    }
}

// Whatever a `Value` compares with (another value, a string, a number, a shared
// value), a shared one compares with too.
impl<T: ?Sized> PartialEq<T> for SharedValue
where
    Value: PartialEq<T>,
{
    fn eq(&self, other: &T) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<SharedValue> for Value {
    fn eq(&self, other: &SharedValue) -> bool {
        *self == *other.0
    }
}

// Shown exactly as the value is, so that logs and `Debug` output read as before.
impl fmt::Debug for SharedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for SharedValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_clone_shares_the_value_and_a_change_copies_it_first() {
        let mut value = SharedValue::from(json!({"a": 1}));
        let kept = value.clone();
        assert!(Arc::ptr_eq(value.as_arc(), kept.as_arc()));
        value.make_mut()["a"] = json!(2);
        assert_eq!(value, json!({"a": 2}));
        assert_eq!(kept, json!({"a": 1}));
    }

    #[test]
    fn it_reads_prints_and_serializes_as_the_value() {
        let value = SharedValue::from(json!(["x", 1]));
        assert_eq!(format!("{value:?}"), format!("{:?}", json!(["x", 1])));
        assert_eq!(serde_json::to_string(&value).unwrap(), r#"["x",1]"#);
        let back: SharedValue = serde_json::from_str(r#"["x",1]"#).unwrap();
        assert_eq!(back, value);
        assert_eq!(json!(["x", 1]), back);
        assert_eq!(SharedValue::default(), Value::Null);
    }
}
