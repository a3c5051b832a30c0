//! Value filters: the JSON filter language on a record's `data`, compiled once at subscribe into a small evaluator.
//!
//! A filter is a JSON object whose members are ANDed. A member's name is a
//! field path with dots (`"customer.id"`), or a combinator (`and`, `or`:
//! lists of filters; `not`: a filter). A field's value is an operator object
//! (`{"gte": 10, "lt": 20}`: operators ANDed) or a plain JSON value (`eq`).
//! Operator objects take the combinators too (`{"not": {"in": [1, 2]}}`).
//!
//! Values compare as JSON: numbers by value (`1` equals `1.0`), strings by
//! code point, objects and arrays by deep equality, and a number never equals
//! or orders against a string. A missing field matches only `exists: false`,
//! `ne` and `nin`. A record whose data cannot be read as JSON matches nothing.
//!
//! Compiling checks the configured limits and builds a canonical form (sorted,
//! deduplicated), so equal filters written differently group together.

use std::cmp::Ordering;
use std::sync::Arc;

use serde_json::{json, Map, Number, Value};

/// Bounds on what a client may send as a filter (`[limits]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Compact JSON size of the filter.
    pub max_bytes: usize,
    /// Nesting of combinators and operator objects.
    pub max_depth: usize,
    /// Operators, combinators and plain values, all counted.
    pub max_operators: usize,
    /// Elements of one `in`, `nin`, `and` or `or` list.
    pub max_list: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_bytes: 4096,
            max_depth: 8,
            max_operators: 64,
            max_list: 256,
        }
    }
}

/// Why a filter was refused; the message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn fail<T>(message: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(message.into()))
}

/// What a grant's key part allows; turned into a filter node so a token's
/// grants become one filter ANDed with the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTest {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
}

/// A compiled filter: evaluate with [`ValueFilter::matches`].
#[derive(Debug, Clone)]
pub struct ValueFilter {
    root: Node,
    canonical: Arc<str>,
}

#[derive(Debug, Clone)]
enum Node {
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Field { path: Box<[Box<str>]>, test: Test },
    Key(KeyTest),
}

#[derive(Debug, Clone)]
enum Test {
    Eq(Value),
    Ne(Value),
    Cmp(CmpOp, Value),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Between(Value, Value),
    Prefix(Box<str>),
    Contains(Value),
    Exists(bool),
    All(Vec<Test>),
    Any(Vec<Test>),
    Not(Box<Test>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

const OPERATORS: [&str; 15] = [
    "eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "between", "prefix", "contains", "exists",
    "and", "or", "not",
];

impl ValueFilter {
    /// Compiles a client's filter within `limits`.
    pub fn compile(value: &Value, limits: &FilterLimits) -> Result<Self, FilterError> {
        let bytes = value.to_string().len();
        if bytes > limits.max_bytes {
            return fail(format!(
                "filter is {bytes} bytes; at most {} allowed",
                limits.max_bytes
            ));
        }
        let Value::Object(members) = value else {
            return fail("a filter is a JSON object, e.g. {\"price\": {\"gt\": 100}}");
        };
        let mut compiler = Compiler {
            limits,
            operators: 0,
        };
        let root = compiler.filter(members, 1)?;
        Ok(Self::from_node(root))
    }

    /// A filter on the record key alone (the key part of a grant).
    pub fn key(test: KeyTest) -> Self {
        Self::from_node(Node::Key(test))
    }

    /// Both filters must match.
    pub fn and(&self, other: &ValueFilter) -> Self {
        Self::from_node(Node::All(vec![self.root.clone(), other.root.clone()]))
    }

    /// Any of the filters matches (none: nothing matches).
    pub fn any(filters: &[ValueFilter]) -> Self {
        Self::from_node(Node::Any(filters.iter().map(|f| f.root.clone()).collect()))
    }

    fn from_node(root: Node) -> Self {
        let root = root.normalize();
        let canonical = root.canon().to_string().into();
        Self { root, canonical }
    }

    /// The normalized form: equal for filters that differ only in member
    /// order, duplicates or nesting of `and`s.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Does a record with `key` and `data` match? `data` is `None` when the
    /// record's data is not readable JSON: such a record matches nothing.
    pub fn matches(&self, key: Option<&str>, data: Option<&Value>) -> bool {
        match data {
            Some(data) => self.root.eval(key, data),
            None => false,
        }
    }
}

struct Compiler<'a> {
    limits: &'a FilterLimits,
    operators: usize,
}

impl Compiler<'_> {
    fn count(&mut self) -> Result<(), FilterError> {
        self.operators += 1;
        if self.operators > self.limits.max_operators {
            return fail(format!(
                "filter has more than {} operators",
                self.limits.max_operators
            ));
        }
        Ok(())
    }

    fn depth(&self, depth: usize) -> Result<(), FilterError> {
        if depth > self.limits.max_depth {
            return fail(format!(
                "filter nests deeper than {} levels",
                self.limits.max_depth
            ));
        }
        Ok(())
    }

    fn list<'v>(&self, what: &str, value: &'v Value) -> Result<&'v Vec<Value>, FilterError> {
        let Value::Array(items) = value else {
            return fail(format!("`{what}` takes a list"));
        };
        if items.len() > self.limits.max_list {
            return fail(format!(
                "`{what}` has {} elements; at most {} allowed",
                items.len(),
                self.limits.max_list
            ));
        }
        Ok(items)
    }

    fn filter(&mut self, members: &Map<String, Value>, depth: usize) -> Result<Node, FilterError> {
        self.depth(depth)?;
        let mut all = Vec::with_capacity(members.len());
        for (name, value) in members {
            match name.as_str() {
                "and" | "or" => {
                    self.count()?;
                    let items = self.list(name, value)?;
                    if items.is_empty() {
                        return fail(format!("`{name}` needs at least one filter"));
                    }
                    let mut nodes = Vec::with_capacity(items.len());
                    for item in items {
                        let Value::Object(m) = item else {
                            return fail(format!("`{name}` takes a list of filter objects"));
                        };
                        nodes.push(self.filter(m, depth + 1)?);
                    }
                    all.push(if name == "and" {
                        Node::All(nodes)
                    } else {
                        Node::Any(nodes)
                    });
                }
                "not" => {
                    self.count()?;
                    let Value::Object(m) = value else {
                        return fail("`not` takes a filter object");
                    };
                    all.push(Node::Not(Box::new(self.filter(m, depth + 1)?)));
                }
                path => {
                    let segments = parse_path(path)?;
                    let test = self.test(path, value, depth + 1)?;
                    all.push(Node::Field {
                        path: segments,
                        test,
                    });
                }
            }
        }
        Ok(Node::All(all))
    }

    fn test(&mut self, field: &str, value: &Value, depth: usize) -> Result<Test, FilterError> {
        self.depth(depth)?;
        let ops = match value {
            Value::Object(m) if !m.is_empty() => {
                let known = m.keys().filter(|k| OPERATORS.contains(&k.as_str())).count();
                if known == 0 {
                    None
                } else if known < m.len() {
                    let other: Vec<&str> = m
                        .keys()
                        .filter(|k| !OPERATORS.contains(&k.as_str()))
                        .map(|k| k.as_str())
                        .take(3)
                        .collect();
                    return fail(format!(
                        "`{}`: operators mixed with other members ({}); to compare with an object write {{\"eq\": {{…}}}}",
                        shown(field),
                        other.join(", ")
                    ));
                } else {
                    Some(m)
                }
            }
            _ => None,
        };
        let Some(ops) = ops else {
            self.count()?;
            return Ok(Test::Eq(value.clone()));
        };
        let mut all = Vec::with_capacity(ops.len());
        for (op, operand) in ops {
            self.count()?;
            let f = shown(field);
            all.push(match op.as_str() {
                "eq" => Test::Eq(operand.clone()),
                "ne" => Test::Ne(operand.clone()),
                "gt" | "gte" | "lt" | "lte" => {
                    if !matches!(operand, Value::Number(_) | Value::String(_)) {
                        return fail(format!("`{f}`: `{op}` needs a number or a string"));
                    }
                    let cmp = match op.as_str() {
                        "gt" => CmpOp::Gt,
                        "gte" => CmpOp::Gte,
                        "lt" => CmpOp::Lt,
                        _ => CmpOp::Lte,
                    };
                    Test::Cmp(cmp, operand.clone())
                }
                "in" | "nin" => {
                    let items = self.list(op, operand)?.clone();
                    if op == "in" {
                        Test::In(items)
                    } else {
                        Test::Nin(items)
                    }
                }
                "between" => {
                    let ok = match operand {
                        Value::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                            (lo @ Value::Number(_), hi @ Value::Number(_))
                            | (lo @ Value::String(_), hi @ Value::String(_)) => {
                                order(lo, hi).is_some_and(|o| o != Ordering::Greater)
                            }
                            _ => false,
                        },
                        _ => false,
                    };
                    if !ok {
                        return fail(format!(
                            "`{f}`: `between` takes [low, high], two numbers or two strings, low <= high"
                        ));
                    }
                    Test::Between(operand[0].clone(), operand[1].clone())
                }
                "prefix" => match operand {
                    Value::String(p) => Test::Prefix(p.as_str().into()),
                    _ => return fail(format!("`{f}`: `prefix` takes a string")),
                },
                "contains" => Test::Contains(operand.clone()),
                "exists" => match operand {
                    Value::Bool(b) => Test::Exists(*b),
                    _ => return fail(format!("`{f}`: `exists` takes true or false")),
                },
                "and" | "or" => {
                    let items = self.list(op, operand)?;
                    if items.is_empty() {
                        return fail(format!("`{f}`: `{op}` needs at least one condition"));
                    }
                    let mut tests = Vec::with_capacity(items.len());
                    for item in items {
                        tests.push(self.test(field, item, depth + 1)?);
                    }
                    if op == "and" {
                        Test::All(tests)
                    } else {
                        Test::Any(tests)
                    }
                }
                _ => Test::Not(Box::new(self.test(field, operand, depth + 1)?)),
            });
        }
        Ok(if all.len() == 1 {
            all.pop().expect("one")
        } else {
            Test::All(all)
        })
    }
}

/// Splits `a.b.c`; every segment must be non-empty.
fn parse_path(path: &str) -> Result<Box<[Box<str>]>, FilterError> {
    if path.split('.').any(str::is_empty) {
        return fail(format!(
            "`{}` is not a field path (names joined by dots)",
            shown(path)
        ));
    }
    Ok(path.split('.').map(Box::from).collect())
}

/// A field name as quoted in messages, cut short.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The value at `path` inside `data`; paths address object members only.
pub(crate) fn lookup<'v>(data: &'v Value, path: &[Box<str>]) -> Option<&'v Value> {
    let mut at = data;
    for segment in path {
        at = at.as_object()?.get(&**segment)?;
    }
    Some(at)
}

impl Node {
    fn eval(&self, key: Option<&str>, data: &Value) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.eval(key, data)),
            Node::Any(nodes) => nodes.iter().any(|n| n.eval(key, data)),
            Node::Not(node) => !node.eval(key, data),
            Node::Field { path, test } => test.eval(lookup(data, path)),
            Node::Key(test) => match (test, key) {
                (KeyTest::Any, _) => true,
                (KeyTest::Exact(e), Some(k)) => **e == *k,
                (KeyTest::Prefix(p), Some(k)) => k.starts_with(&**p),
                (_, None) => false,
            },
        }
    }

    /// Flattens nested `all`/`any` of one kind and unwraps single children.
    fn normalize(self) -> Node {
        match self {
            Node::All(nodes) => {
                let mut flat = Vec::with_capacity(nodes.len());
                for n in nodes {
                    match n.normalize() {
                        Node::All(inner) => flat.extend(inner),
                        other => flat.push(other),
                    }
                }
                dedupe(&mut flat);
                if flat.len() == 1 {
                    flat.pop().expect("one")
                } else {
                    Node::All(flat)
                }
            }
            Node::Any(nodes) => {
                let mut flat = Vec::with_capacity(nodes.len());
                for n in nodes {
                    match n.normalize() {
                        Node::Any(inner) => flat.extend(inner),
                        other => flat.push(other),
                    }
                }
                dedupe(&mut flat);
                if flat.len() == 1 {
                    flat.pop().expect("one")
                } else {
                    Node::Any(flat)
                }
            }
            Node::Not(inner) => Node::Not(Box::new(inner.normalize())),
            other => other,
        }
    }

    fn canon(&self) -> Value {
        match self {
            Node::All(nodes) => json!(["and", sorted(nodes.iter().map(Node::canon))]),
            Node::Any(nodes) => json!(["or", sorted(nodes.iter().map(Node::canon))]),
            Node::Not(node) => json!(["not", node.canon()]),
            Node::Field { path, test } => json!(["field", path.join("."), test.canon()]),
            Node::Key(KeyTest::Any) => json!(["key", "any"]),
            Node::Key(KeyTest::Exact(k)) => json!(["key", "exact", &**k]),
            Node::Key(KeyTest::Prefix(p)) => json!(["key", "prefix", &**p]),
        }
    }
}

/// Sorts by canonical text and drops repeats (order never changes a result).
fn dedupe(nodes: &mut Vec<Node>) {
    let mut keyed: Vec<(String, Node)> = nodes
        .drain(..)
        .map(|n| (n.canon().to_string(), n))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.dedup_by(|a, b| a.0 == b.0);
    nodes.extend(keyed.into_iter().map(|(_, n)| n));
}

fn sorted(values: impl Iterator<Item = Value>) -> Value {
    let mut items: Vec<(String, Value)> = values.map(|v| (v.to_string(), v)).collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.dedup_by(|a, b| a.0 == b.0);
    Value::Array(items.into_iter().map(|(_, v)| v).collect())
}

impl Test {
    fn eval(&self, value: Option<&Value>) -> bool {
        match self {
            Test::Eq(x) => value.is_some_and(|v| json_eq(v, x)),
            Test::Ne(x) => value.is_none_or(|v| !json_eq(v, x)),
            Test::Cmp(op, x) => value.and_then(|v| order(v, x)).is_some_and(|o| match op {
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Gte => o != Ordering::Less,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Lte => o != Ordering::Greater,
            }),
            Test::In(list) => value.is_some_and(|v| list.iter().any(|x| json_eq(v, x))),
            Test::Nin(list) => value.is_none_or(|v| !list.iter().any(|x| json_eq(v, x))),
            Test::Between(lo, hi) => value.is_some_and(|v| {
                order(v, lo).is_some_and(|o| o != Ordering::Less)
                    && order(v, hi).is_some_and(|o| o != Ordering::Greater)
            }),
            Test::Prefix(p) => value
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with(&**p)),
            Test::Contains(x) => match (value, x) {
                (Some(Value::String(s)), Value::String(sub)) => s.contains(sub.as_str()),
                (Some(Value::Array(items)), x) => items.iter().any(|i| json_eq(i, x)),
                _ => false,
            },
            Test::Exists(want) => value.is_some() == *want,
            Test::All(tests) => tests.iter().all(|t| t.eval(value)),
            Test::Any(tests) => tests.iter().any(|t| t.eval(value)),
            Test::Not(test) => !test.eval(value),
        }
    }

    fn canon(&self) -> Value {
        match self {
            Test::Eq(x) => json!(["eq", x]),
            Test::Ne(x) => json!(["ne", x]),
            Test::Cmp(op, x) => {
                let name = match op {
                    CmpOp::Gt => "gt",
                    CmpOp::Gte => "gte",
                    CmpOp::Lt => "lt",
                    CmpOp::Lte => "lte",
                };
                json!([name, x])
            }
            Test::In(list) => json!(["in", sorted(list.iter().cloned())]),
            Test::Nin(list) => json!(["nin", sorted(list.iter().cloned())]),
            Test::Between(lo, hi) => json!(["between", lo, hi]),
            Test::Prefix(p) => json!(["prefix", &**p]),
            Test::Contains(x) => json!(["contains", x]),
            Test::Exists(b) => json!(["exists", b]),
            Test::All(tests) => json!(["and", sorted(tests.iter().map(Test::canon))]),
            Test::Any(tests) => json!(["or", sorted(tests.iter().map(Test::canon))]),
            Test::Not(test) => json!(["not", test.canon()]),
        }
    }
}

/// Orders two numbers or two strings; anything else is unordered.
fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => number_order(a, b),
        (Value::String(a), Value::String(b)) => Some(a.as_str().cmp(b.as_str())),
        _ => None,
    }
}

fn number_order(a: &Number, b: &Number) -> Option<Ordering> {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return Some(x.cmp(&y));
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return Some(x.cmp(&y));
    }
    // A u64 above i64::MAX against a negative i64.
    match (a.as_u64(), b.as_i64(), a.as_i64(), b.as_u64()) {
        (Some(_), Some(y), _, _) if y < 0 => return Some(Ordering::Greater),
        (_, _, Some(x), Some(_)) if x < 0 => return Some(Ordering::Less),
        _ => {}
    }
    a.as_f64()?.partial_cmp(&b.as_f64()?)
}

/// JSON equality: numbers by value, objects and arrays deeply.
pub(crate) fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => number_order(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: Value) -> ValueFilter {
        ValueFilter::compile(&v, &FilterLimits::default()).unwrap()
    }

    fn err(v: Value) -> String {
        ValueFilter::compile(&v, &FilterLimits::default())
            .unwrap_err()
            .0
    }

    fn m(filter: &ValueFilter, data: Value) -> bool {
        filter.matches(Some("k"), Some(&data))
    }

    #[test]
    fn each_operator() {
        let d = json!({"price": 150, "name": "Apple Inc", "sector": "tech", "tags": ["a", "b"], "c": {"id": "42"}, "n": null});
        let cases = [
            (json!({"price": 150}), true),
            (json!({"price": 150.0}), true),
            (json!({"price": "150"}), false),
            (json!({"price": {"eq": 150}}), true),
            (json!({"price": {"ne": 150}}), false),
            (json!({"price": {"gt": 100}}), true),
            (json!({"price": {"gt": 150}}), false),
            (json!({"price": {"gte": 150}}), true),
            (json!({"price": {"lt": 150}}), false),
            (json!({"price": {"lte": 150}}), true),
            (json!({"price": {"gt": "100"}}), false),
            (json!({"name": {"gt": "Apple"}}), true),
            (json!({"name": {"lt": "apple"}}), true),
            (json!({"sector": {"in": ["tech", "energy"]}}), true),
            (json!({"sector": {"nin": ["tech", "energy"]}}), false),
            (json!({"price": {"between": [100, 150]}}), true),
            (json!({"price": {"between": [151, 200]}}), false),
            (json!({"name": {"prefix": "App"}}), true),
            (json!({"name": {"prefix": "app"}}), false),
            (json!({"name": {"contains": "le I"}}), true),
            (json!({"tags": {"contains": "b"}}), true),
            (json!({"tags": {"contains": "c"}}), false),
            (json!({"tags": ["a", "b"]}), true),
            (json!({"tags": ["b", "a"]}), false),
            (json!({"c": {"eq": {"id": "42"}}}), true),
            (json!({"c": {"id": "42"}}), true),
            (json!({"c.id": "42"}), true),
            (json!({"c.id": 42}), false),
            (json!({"n": null}), true),
            (json!({"n": {"exists": true}}), true),
            (json!({"price": {"gte": 10, "lt": 20}}), false),
            (json!({"price": {"gte": 100, "lt": 200}}), true),
            (json!({"price": {"not": {"gt": 200}}}), true),
            (json!({"price": {"or": [1, {"gt": 149}]}}), true),
            (json!({"price": {"and": [{"gt": 1}, {"lt": 100}]}}), false),
        ];
        for (filter, want) in cases {
            assert_eq!(m(&f(filter.clone()), d.clone()), want, "{filter}");
        }
    }

    #[test]
    fn missing_fields_match_only_exists_false_ne_and_nin() {
        let d = json!({"a": 1});
        for (filter, want) in [
            (json!({"x": {"exists": false}}), true),
            (json!({"x": {"ne": 1}}), true),
            (json!({"x": {"nin": [1]}}), true),
            (json!({"x": {"exists": true}}), false),
            (json!({"x": null}), false),
            (json!({"x": {"lt": 5}}), false),
            (json!({"x": {"in": [null]}}), false),
            (json!({"x": {"between": [0, 9]}}), false),
            (json!({"x": {"prefix": ""}}), false),
            (json!({"x": {"contains": 1}}), false),
            (json!({"a.b": {"exists": false}}), true),
            (json!({"not": {"x": {"gt": 5}}}), true),
        ] {
            assert_eq!(m(&f(filter.clone()), d.clone()), want, "{filter}");
        }
        // Data that is not an object: every path is missing.
        assert!(m(&f(json!({"a": {"ne": 1}})), json!(7)));
        assert!(!m(&f(json!({"a": 7})), json!(7)));
        // Unreadable data matches nothing, not even a negation.
        assert!(!f(json!({"not": {"a": 1}})).matches(Some("k"), None));
    }

    #[test]
    fn combinators_at_any_level() {
        let filter = f(json!({
            "or": [
                {"status": "open", "customer.id": {"in": ["42", "43"]}},
                {"and": [{"priority": {"gte": 5}}, {"not": {"status": "closed"}}]}
            ]
        }));
        assert!(m(
            &filter,
            json!({"status": "open", "customer": {"id": "42"}})
        ));
        assert!(!m(
            &filter,
            json!({"status": "open", "customer": {"id": 42}})
        ));
        assert!(m(&filter, json!({"status": "held", "priority": 9})));
        assert!(!m(&filter, json!({"status": "closed", "priority": 9})));
        assert!(f(json!({})).matches(None, Some(&json!(1))), "empty: all");
    }

    #[test]
    fn numbers_compare_by_value_across_representations() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
        assert!(!json_eq(&json!(u64::MAX), &json!(-1)));
        assert_eq!(order(&json!(u64::MAX), &json!(-1)), Some(Ordering::Greater));
        assert_eq!(order(&json!(-1), &json!(u64::MAX)), Some(Ordering::Less));
        assert_eq!(order(&json!(1.5), &json!(2)), Some(Ordering::Less));
        assert_eq!(order(&json!("b"), &json!(2)), None);
    }

    #[test]
    fn canonical_form_ignores_order_and_repeats() {
        let a = f(json!({"b": {"lt": 5, "gt": 1}, "a": {"in": [2, 1, 2]}}));
        let b = f(json!({"and": [{"a": {"in": [1, 2]}}, {"b": {"gt": 1, "lt": 5}}]}));
        assert_eq!(a.canonical(), b.canonical());
        assert_ne!(a.canonical(), f(json!({"a": 1})).canonical());
        let g = ValueFilter::key(KeyTest::Prefix("x".into()));
        assert!(a.and(&g).canonical().contains("prefix"));
        assert!(!a.and(&g).matches(Some("y"), Some(&json!({"a": 1, "b": 2}))));
        assert!(a
            .and(&g)
            .matches(Some("x1"), Some(&json!({"a": 1, "b": 2}))));
    }

    #[test]
    fn bad_filters_name_the_problem() {
        assert!(err(json!([1])).contains("JSON object"));
        assert!(err(json!({"a": {"gt": true}})).contains("`gt` needs a number or a string"));
        assert!(err(json!({"a": {"in": 5}})).contains("`in` takes a list"));
        assert!(err(json!({"a": {"between": [5, 1]}})).contains("between"));
        assert!(err(json!({"a": {"between": [1, "z"]}})).contains("between"));
        assert!(err(json!({"a": {"prefix": 1}})).contains("prefix"));
        assert!(err(json!({"a": {"exists": "yes"}})).contains("exists"));
        assert!(err(json!({"a": {"gt": 1, "color": 2}})).contains("mixed"));
        assert!(err(json!({"a..b": 1})).contains("field path"));
        assert!(err(json!({"or": []})).contains("at least one"));
        assert!(err(json!({"or": [1]})).contains("filter objects"));
        assert!(err(json!({"not": 1})).contains("filter object"));
        let mut deep = json!({"a": 1});
        for _ in 0..20 {
            deep = json!({"not": deep});
        }
        assert!(err(deep).contains("deeper than 8"));
        let many: Map<String, Value> = (0..100).map(|i| (format!("f{i}"), json!(i))).collect();
        assert!(err(Value::Object(many)).contains("more than 64 operators"));
        let long: Vec<u32> = (0..300).collect();
        assert!(err(json!({"a": {"in": long}})).contains("at most 256"));
        assert!(err(json!({"a": "x".repeat(5000)})).contains("bytes"));
    }
}
