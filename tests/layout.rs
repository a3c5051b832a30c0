//! The layout invariant: imports between the top-level modules of `src/`
//! point one way. A module that reaches `crate::x` depends on `x`; the graph
//! of those dependencies must have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module -> the top-level modules it names as `crate::x`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let first = relative.components().next().unwrap();
            let module = first
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let deps = graph.entry(module.clone()).or_default();
            // A unit-test module may build what it tests from the whole config
            // (as a user writes it): the rule is for the code that ships.
            let shipped = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => &text[..at],
                None => &text[..],
            };
            for line in shipped.lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for (at, _) in code.match_indices("crate::") {
                    let rest = &code[at + "crate::".len()..];
                    let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                        // `use crate::{a, b::c}`: every top-level name in the group.
                        group
                            .split(['}', ','])
                            .map(|n| n.trim().split("::").next().unwrap_or(""))
                            .collect()
                    } else {
                        vec![rest
                            .split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                            .unwrap_or("")]
                    };
                    for name in names {
                        if !name.is_empty()
                            && name != module
                            && name
                                .chars()
                                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
                        {
                            deps.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(found) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(found);
        }
    }
    None
}

#[test]
fn imports_between_modules_point_one_way() {
    let graph = dependencies();
    assert!(
        graph.contains_key("hub") && graph.contains_key("transport"),
        "{graph:?}"
    );
    assert!(
        graph["transport"].contains("session"),
        "the scan sees imports: {graph:?}"
    );
    if let Some(found) = cycle(&graph) {
        panic!("import circle: {}", found.join(" -> "));
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}

/// The edge knows the core, never the reverse. Only the router (`http`) and
/// the accept loop (`server`) reach a transport; nothing but `lib.rs` reaches
/// those two; and the core (the log, the hub and what they share) reaches
/// nothing that serves clients. Other imports between edge modules are fine
/// (`auth` compiles grants into `hub::Filter` and `shaping` filters).
#[test]
fn the_edge_imports_the_core_and_never_the_reverse() {
    const EDGE: [&str; 8] = [
        "http",
        "server",
        "transport",
        "session",
        "publish",
        "admission",
        "reply",
        "state",
    ];
    const CORE: [&str; 7] = [
        "hub", "source", "shaping", "record", "cursor", "outbox", "protocol",
    ];
    let graph = dependencies();
    let importers = |target: &str| -> Vec<&str> {
        graph
            .iter()
            .filter(|(_, deps)| deps.contains(target))
            .map(|(module, _)| module.as_str())
            .collect()
    };
    assert_eq!(
        importers("http"),
        Vec::<&str>::new(),
        "only lib.rs wires the router"
    );
    assert_eq!(
        importers("server"),
        Vec::<&str>::new(),
        "only lib.rs runs the accept loop"
    );
    assert_eq!(
        importers("transport"),
        ["http", "server"],
        "transports are reached from the router and the accept loop (bare SSE) only"
    );
    for module in EDGE.iter().chain(&CORE) {
        assert!(
            graph.contains_key(*module),
            "no module `{module}` in src/: renamed? update tests/layout.rs and docs/ARCHITECTURE.md"
        );
    }
    for core in CORE {
        let reaching: Vec<&&str> = EDGE.iter().filter(|e| graph[core].contains(**e)).collect();
        assert!(reaching.is_empty(), "`{core}` imports {reaching:?}");
    }
}

/// A file a reader can hold in their head: no source file under `src/` is
/// longer than about 800 lines before its unit tests (`#[cfg(test)]`).
#[test]
fn no_source_file_is_longer_than_about_800_lines_apart_from_its_tests() {
    const LIMIT: usize = 850;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src];
    let mut long = Vec::new();
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                seen += 1;
                let text = std::fs::read_to_string(&path).unwrap();
                let shipped = match text.find("#[cfg(test)]\nmod tests") {
                    Some(at) => &text[..at],
                    None => &text[..],
                };
                let lines = shipped.lines().count();
                if lines > LIMIT {
                    long.push(format!("{} ({lines})", path.display()));
                }
            }
        }
    }
    assert!(seen > 40, "the walk sees the source files: {seen}");
    assert!(
        long.is_empty(),
        "over {LIMIT} lines before the tests: {long:?}"
    );
}
