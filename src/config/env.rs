//! Environment overrides: `PUSHGATE__SECTION__KEY=value` set into the parsed file's table.

use super::{invalid, ConfigError, ENV_PREFIX};

/// Sets `section.key` (written `SECTION__KEY`, or `SECTION__SUB__KEY` for
/// `[section.sub]`, e.g. `PUSHGATE__KAFKA__SASL__PASSWORD`) in `table` from an environment value.
/// The value is read as TOML when it parses (numbers, booleans, arrays), else as a string.
pub(super) fn apply_override(
    table: &mut toml::Table,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    let key_name = format!("{ENV_PREFIX}{path}");
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(key_name, "is not SECTION__KEY"));
    }
    let dotted = parts.join(".");
    // Credentials and paths are taken verbatim: a password such as `12345`,
    // `true` or `[x]` must not turn into a number, a boolean or an array.
    let verbatim = dotted.starts_with("kafka.sasl.")
        || (dotted.starts_with("kafka.tls.") && dotted != "kafka.tls.enabled")
        || dotted == "admin.token"
        || matches!(
            dotted.as_str(),
            "schema_registry.username"
                | "schema_registry.password"
                | "schema_registry.bearer_token"
        )
        || dotted.starts_with("schema_registry.tls.");
    let parsed = if verbatim {
        toml::Value::String(value.to_owned())
    } else {
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_owned()))
    };
    let (last, sections) = parts.split_last().expect("non-empty");
    let mut current = table;
    for section in sections {
        current = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| invalid(key_name.clone(), format!("`{section}` is not a section")))?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}
