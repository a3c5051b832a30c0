//! Topics by pattern: the `[[topics]] pattern` regex, and which `[[topics]]` entry serves a topic name.
//!
//! A pattern must match the **whole** topic name: pushgate wraps it as
//! `^(?:pattern)$`, as Kafka's Java client does with `subscribe(Pattern)`, so
//! `db\.inventory\..*` and `^db\.inventory\..*$` mean the same. Names starting
//! with `__` (Kafka's internal topics, `__consumer_offsets` and the like) never
//! match unless the pattern itself starts with `__` (after an optional `^`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{valid_topic_name, TopicConfig};

/// A `[[topics]]` `pattern` as written, and compiled.
#[derive(Clone)]
pub struct TopicPattern {
    source: String,
    /// `None` when `source` is not a valid regex; `Config::validate` reports it with its key.
    regex: Option<regex::Regex>,
}

impl TopicPattern {
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            source: source.to_owned(),
            regex: Some(compile(source)?),
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Why the pattern cannot be used, if it cannot.
    pub fn error(&self) -> Option<String> {
        match &self.regex {
            Some(_) => None,
            None => compile(&self.source).err().map(|e| e.to_string()),
        }
    }

    /// True when the whole of `name` matches (internal `__` names only if the pattern names them).
    pub fn matches(&self, name: &str) -> bool {
        if name.starts_with("__") && !self.names_internal() {
            return false;
        }
        self.regex.as_ref().is_some_and(|r| r.is_match(name))
    }

    fn names_internal(&self) -> bool {
        self.source
            .strip_prefix('^')
            .unwrap_or(&self.source)
            .starts_with("__")
    }
}

fn compile(source: &str) -> Result<regex::Regex, regex::Error> {
    // Compiled alone first: wrapping `a)|(b` would otherwise yield a valid, unanchored regex.
    regex::Regex::new(source)?;
    regex::Regex::new(&format!("^(?:{source})$"))
}

impl std::fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TopicPattern").field(&self.source).finish()
    }
}

impl Serialize for TopicPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for TopicPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        // A bad regex is kept (uncompiled) so that validation can name its key.
        let regex = compile(&source).ok();
        Ok(Self { source, regex })
    }
}

/// The entry of `topics` that serves `name`: the one that names it, else the
/// first whose pattern matches it (in config order). `excluded` is never
/// served by a pattern (the Kafka dead-letter topic).
pub fn select<'a>(
    topics: &'a [TopicConfig],
    name: &str,
    excluded: Option<&str>,
) -> Option<&'a TopicConfig> {
    if let Some(named) = topics
        .iter()
        .find(|t| t.pattern.is_none() && t.name == name)
    {
        return Some(named);
    }
    if !valid_topic_name(name) || excluded == Some(name) {
        return None;
    }
    topics
        .iter()
        .find(|t| t.pattern.as_ref().is_some_and(|p| p.matches(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(source: &str) -> TopicConfig {
        TopicConfig {
            pattern: Some(TopicPattern::new(source).unwrap()),
            ..TopicConfig::default()
        }
    }

    #[test]
    fn matches_the_whole_name() {
        let p = TopicPattern::new(r"dbserver1\.inventory\..*").unwrap();
        assert!(p.matches("dbserver1.inventory.customers"));
        assert!(
            !p.matches("xdbserver1.inventory.customers"),
            "anchored at the start"
        );
        assert!(!p.matches("dbserver1.inventory"));
        let p = TopicPattern::new(r"^orders-\d+$").unwrap();
        assert!(p.matches("orders-12"));
        assert!(!p.matches("orders-12x"), "anchored at the end");
        // Alternation is wrapped, not just prefixed: `a|ab` must match "ab" whole.
        let p = TopicPattern::new("a|ab").unwrap();
        assert!(p.matches("ab"));
        assert!(!p.matches("abc"));
    }

    #[test]
    fn internal_topics_only_when_named() {
        let any = TopicPattern::new(".*").unwrap();
        assert!(any.matches("prices"));
        assert!(!any.matches("__consumer_offsets"));
        assert!(!any.matches("__transaction_state"));
        let internal = TopicPattern::new("^__consumer_.*").unwrap();
        assert!(internal.matches("__consumer_offsets"));
        let internal = TopicPattern::new("__.*").unwrap();
        assert!(internal.matches("__transaction_state"));
    }

    #[test]
    fn bad_regex_is_kept_for_validation() {
        for bad in ["(", "a)|(b", "[z-a]", r"\p{Nope}"] {
            assert!(TopicPattern::new(bad).is_err(), "{bad}");
            let p: TopicPattern = serde_json::from_value(serde_json::json!(bad)).unwrap();
            assert!(p.error().is_some(), "{bad}");
            assert!(!p.matches("a"), "{bad}: a bad pattern matches nothing");
        }
        let p: TopicPattern = serde_json::from_value(serde_json::json!("a.*")).unwrap();
        assert!(p.error().is_none());
        assert_eq!(serde_json::to_value(&p).unwrap(), serde_json::json!("a.*"));
    }

    #[test]
    fn a_name_wins_over_patterns_and_the_first_pattern_wins() {
        let topics = vec![
            pattern("db\\..*"),
            TopicConfig {
                name: "db.special".into(),
                ring_records: 7,
                ..TopicConfig::default()
            },
            TopicConfig {
                ring_records: 9,
                ..pattern("db\\.x.*")
            },
        ];
        assert_eq!(select(&topics, "db.special", None).unwrap().ring_records, 7);
        assert!(select(&topics, "db.xyz", None).unwrap().pattern.is_some());
        assert_eq!(
            select(&topics, "db.xyz", None).unwrap().ring_records,
            1024,
            "the first matching pattern"
        );
        assert!(select(&topics, "other", None).is_none());
        assert!(
            select(&topics, "db.dlq", Some("db.dlq")).is_none(),
            "excluded"
        );
        assert!(
            select(&topics, "db.has space", None).is_none(),
            "never a name Kafka would refuse"
        );
        assert!(select(&topics, &format!("db.{}", "x".repeat(300)), None).is_none());
    }
}
