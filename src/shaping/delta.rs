//! JSON Patch (RFC 6902) deltas: the operations that turn one value of a key into the next.
//!
//! The diff is plain and always correct: objects member by member, arrays of
//! equal length element by element, anything else replaced whole (an array
//! that changed length included). `add`, `remove` and `replace` are the only
//! operations it emits. [`bounded`] caps its size: when the operations would
//! take more bytes than the new value itself, the patch is one `replace` of
//! the root, so a delta subscriber never receives more than
//! [`ROOT_REPLACE_OVERHEAD`] bytes beyond what a whole-value subscriber does.

use serde_json::{json, Value};

/// What `[{"op":"replace","path":"","value":…}]` adds around the value.
pub const ROOT_REPLACE_OVERHEAD: usize = r#"[{"op":"replace","path":"","value":}]"#.len();

/// The patch from `old` to `new` as JSON text, never longer than replacing
/// the root with `new_text` (the new value's JSON text).
pub fn bounded(old: &Value, new: &Value, new_text: &str) -> String {
    let ops = diff(old, new);
    if ops.len() > new_text.len() + ROOT_REPLACE_OVERHEAD {
        format!(r#"[{{"op":"replace","path":"","value":{new_text}}}]"#)
    } else {
        ops
    }
}

/// The patch from `old` to `new`, as JSON text.
pub fn diff(old: &Value, new: &Value) -> String {
    let mut ops = Vec::new();
    let mut path = String::new();
    walk(old, new, &mut path, &mut ops);
    Value::Array(ops).to_string()
}

fn walk(old: &Value, new: &Value, path: &mut String, ops: &mut Vec<Value>) {
    if old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            for name in a.keys() {
                if !b.contains_key(name) {
                    ops.push(json!({"op": "remove", "path": format!("{path}/{}", escape(name))}));
                }
            }
            for (name, value) in b {
                let len = path.len();
                path.push('/');
                path.push_str(&escape(name));
                match a.get(name) {
                    Some(before) => walk(before, value, path, ops),
                    None => ops.push(json!({"op": "add", "path": &*path, "value": value})),
                }
                path.truncate(len);
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (before, after)) in a.iter().zip(b).enumerate() {
                let len = path.len();
                path.push('/');
                path.push_str(&i.to_string());
                walk(before, after, path, ops);
                path.truncate(len);
            }
        }
        _ => ops.push(json!({"op": "replace", "path": &*path, "value": new})),
    }
}

/// A member name as a JSON Pointer token (RFC 6901).
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_changes_make_small_patches() {
        let a = json!({"price": 1, "name": "x", "tags": [1, 2], "a/b": {"~": 1}});
        let b = json!({"price": 2, "tags": [1, 3], "a/b": {"~": 1}, "new": null});
        let patch: Value = serde_json::from_str(&diff(&a, &b)).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "remove", "path": "/name"},
                {"op": "add", "path": "/new", "value": null},
                {"op": "replace", "path": "/price", "value": 2},
                {"op": "replace", "path": "/tags/1", "value": 3}
            ])
        );
        assert_eq!(diff(&a, &a), "[]");
        assert_eq!(bounded(&a, &a, &a.to_string()), "[]");
        assert_eq!(
            diff(&json!(1), &json!([1])),
            r#"[{"op":"replace","path":"","value":[1]}]"#
        );
        assert_eq!(
            diff(&json!({"a~/": 1}), &json!({"a~/": 2})),
            r#"[{"op":"replace","path":"/a~0~1","value":2}]"#
        );
    }

    #[test]
    fn a_patch_is_never_much_longer_than_the_value() {
        let old = json!({"a": 1, "b": 2, "c": 3});
        let new = json!({"a": 10, "b": 20, "c": 30});
        let text = new.to_string();
        let patch = bounded(&old, &new, &text);
        assert_eq!(
            patch,
            format!(r#"[{{"op":"replace","path":"","value":{text}}}]"#)
        );
        assert_eq!(patch.len(), text.len() + ROOT_REPLACE_OVERHEAD);
        let ops: json_patch::Patch = serde_json::from_str(&patch).unwrap();
        let mut doc = old.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc, new);
        // A small change keeps its operations.
        let one = json!({"a": 1, "b": 2, "c": 4});
        assert_eq!(
            bounded(&old, &one, &one.to_string()),
            r#"[{"op":"replace","path":"/c","value":4}]"#
        );
    }
}
