//! Field projection: a subscriber's `fields` list, normalized, and the projection of a record's `data` onto it.

use serde_json::{Map, Value};

/// Field paths (names joined by dots), sorted, each covered path dropped
/// (`a` covers `a.b`), so equal lists written differently are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    paths: Vec<Vec<String>>,
}

impl Fields {
    /// Checks and normalizes a client's list; at most `max` paths.
    pub fn new(list: &[String], max: usize) -> Result<Fields, String> {
        if list.is_empty() {
            return Err("`fields` is empty: leave it out to receive whole values".into());
        }
        if list.len() > max {
            return Err(format!("`fields` has {} paths; at most {max}", list.len()));
        }
        let mut paths = Vec::with_capacity(list.len());
        for path in list {
            if path.split('.').any(str::is_empty) {
                let shown: String = path.chars().take(64).collect();
                return Err(format!(
                    "`fields`: `{shown}` is not a field path (names joined by dots)"
                ));
            }
            paths.push(path.split('.').map(str::to_owned).collect::<Vec<_>>());
        }
        paths.sort();
        paths.dedup();
        // Sorted, a covering path comes right before the paths it covers.
        let mut kept: Vec<Vec<String>> = Vec::with_capacity(paths.len());
        for path in paths {
            if kept.last().is_some_and(|k| path.starts_with(k)) {
                continue;
            }
            kept.push(path);
        }
        Ok(Fields { paths: kept })
    }

    /// The normalized list as JSON text, for a spec's canonical form.
    pub fn canonical(&self) -> String {
        let joined: Vec<String> = self.paths.iter().map(|p| p.join(".")).collect();
        Value::from(joined).to_string()
    }

    /// `data` holding only these paths, nested as in the original; absent
    /// ones are left out (`{}` when none is there, or `data` is not an
    /// object). `null` stays `null`: a tombstone's data says the key is gone.
    pub fn project(&self, data: &Value) -> Value {
        let Value::Object(source) = data else {
            return if data.is_null() {
                Value::Null
            } else {
                Value::Object(Map::new())
            };
        };
        let mut out = Map::new();
        for path in &self.paths {
            copy_path(source, path, &mut out);
        }
        Value::Object(out)
    }
}

fn copy_path(source: &Map<String, Value>, path: &[String], out: &mut Map<String, Value>) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = source.get(first) else {
        return;
    };
    if rest.is_empty() {
        out.insert(first.clone(), value.clone());
        return;
    }
    let Value::Object(inner) = value else {
        return;
    };
    let mut nested = Map::new();
    copy_path(inner, rest, &mut nested);
    if nested.is_empty() {
        return;
    }
    match out.entry(first.clone()) {
        serde_json::map::Entry::Occupied(mut slot) => {
            if let Value::Object(existing) = slot.get_mut() {
                existing.extend(nested);
            }
        }
        serde_json::map::Entry::Vacant(slot) => {
            slot.insert(Value::Object(nested));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(list: &[&str]) -> Fields {
        let owned: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        Fields::new(&owned, 10).unwrap()
    }

    #[test]
    fn projects_nested_paths() {
        let data = json!({"price": 1, "change": 2, "meta": {"ts": 3, "src": "x", "deep": {"a": 1, "b": 2}}, "other": 4});
        assert_eq!(
            fields(&["price", "meta.ts", "meta.deep.b", "missing", "other.no"]).project(&data),
            json!({"price": 1, "meta": {"ts": 3, "deep": {"b": 2}}})
        );
        assert_eq!(fields(&["nope"]).project(&data), json!({}));
        assert_eq!(fields(&["a"]).project(&json!(5)), json!({}));
        assert_eq!(fields(&["a"]).project(&Value::Null), Value::Null);
        assert_eq!(
            fields(&["meta", "meta.ts"]).project(&data)["meta"]["src"],
            "x",
            "a path covers its sub-paths"
        );
    }

    #[test]
    fn normalizes_and_refuses_bad_lists() {
        assert_eq!(fields(&["b", "a.x", "a", "b"]), fields(&["a", "b"]));
        assert_eq!(fields(&["b", "a"]).canonical(), "[\"a\",\"b\"]");
        assert!(Fields::new(&[], 10).is_err());
        assert!(Fields::new(&["a..b".into()], 10).is_err());
        assert!(Fields::new(&["".into()], 10).is_err());
        let many: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        assert!(Fields::new(&many, 10).unwrap_err().contains("at most 10"));
    }
}
