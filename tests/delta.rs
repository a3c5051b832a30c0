//! JSON Patch deltas (issue 11, stage 6): a client applying the patches with an independent RFC 6902 implementation (the `json-patch` crate) always holds the value a subscriber without `delta` holds.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use pushgate::cursor::Cursor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        // Binary fractions: exact through any JSON text round trip.
        (-8i32..8).prop_map(|i| json!(f64::from(i) / 4.0)),
        "[a-c~/]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::hash_map("[a-d~/]{0,2}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn patches_apply_with_an_independent_implementation(a in arb_json(), b in arb_json()) {
        let patch: json_patch::Patch = serde_json::from_str(&pushgate::delta::diff(&a, &b)).unwrap();
        let mut doc = a.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        prop_assert_eq!(doc, b);
    }
}

/// A client's view of a topic: whole values, patches applied as they come.
#[derive(Default)]
struct Client {
    values: HashMap<String, Value>,
    patches: usize,
    wholes: usize,
}

impl Client {
    fn apply(&mut self, record: &Value) {
        let key = record["key"].as_str().unwrap().to_owned();
        if record["op"] == "leave" || record["op"] == "delete" {
            self.values.remove(&key);
            return;
        }
        if let Some(ops) = record.get("patch") {
            assert!(record.get("data").is_none(), "{record}");
            let patch: json_patch::Patch = serde_json::from_value(ops.clone()).unwrap();
            let doc = self.values.get_mut(&key).unwrap_or_else(|| {
                panic!("a patch for {key}, whose value the client lacks: {record}")
            });
            json_patch::patch(doc, &patch).unwrap();
            self.patches += 1;
        } else {
            self.values.insert(key, record["data"].clone());
            self.wholes += 1;
        }
    }
}

async fn drain_into(ws: &mut WsClient, client: &mut Client) -> Option<String> {
    let mut cursor = None;
    while let Some(ev) = ws.event_within(Duration::from_millis(250)).await {
        match ev {
            WsEvent::Json(v) if v["type"] == "record" => {
                client.apply(&v);
                cursor = v["cursor"].as_str().map(str::to_owned);
            }
            WsEvent::Json(v) if v["type"] == "gap" => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    cursor
}

/// A CDC-like row: 12 fields, one or two change per update.
fn mutate(rng: &mut StdRng, row: &mut Value) {
    for _ in 0..rng.random_range(1..=2) {
        let field = format!("f{}", rng.random_range(0..12));
        let value = match rng.random_range(0..5) {
            0 => json!(rng.random_range(0..100)),
            1 => json!(format!("s{}", rng.random_range(0..5))),
            2 => json!({"nested": rng.random_range(0..3), "list": [1, rng.random_range(0..3)]}),
            3 => json!(vec![rng.random_range(0..3); 2]),
            _ => Value::Null,
        };
        row[field] = value;
    }
    if rng.random_range(0..6) == 0 {
        let field = format!("f{}", rng.random_range(0..12));
        row.as_object_mut().unwrap().remove(&field);
    }
}

#[tokio::test]
async fn delta_clients_always_hold_the_full_value_through_joins_resumes_gaps_and_filters() {
    let server = TestServer::start().await;
    let mut rng = StdRng::seed_from_u64(11);
    let keys = ["a", "b", "c", "d"];
    let mut rows: HashMap<&str, Value> = keys.iter().map(|k| (*k, json!({"f0": 0}))).collect();
    let mut publish = |rng: &mut StdRng, n: usize| {
        let mut batch = Vec::new();
        for _ in 0..n {
            let key = keys[rng.random_range(0..keys.len())];
            let row = rows.get_mut(key).unwrap();
            mutate(rng, row);
            batch.push((key.to_owned(), row.clone()));
        }
        batch
    };

    let mut plain = server.ws().await;
    plain
        .subscribe(json!({"topic": "one", "snapshot": false}))
        .await;
    let mut delta = server.ws().await;
    delta
        .subscribe(json!({"topic": "one", "snapshot": false, "delta": "json-patch"}))
        .await;
    // Filtered and projected: rows whose f1 is a number below 50, fields f1..f4.
    let filter = json!({"f1": {"lt": 50}});
    let fields = ["f1", "f2", "f3", "f4"];
    let mut shaped = server.ws().await;
    shaped
        .subscribe(json!({"topic": "one", "snapshot": false, "delta": "json-patch", "filter": filter, "fields": fields}))
        .await;
    let mut rated = server.ws().await;
    rated
        .subscribe(
            json!({"topic": "one", "snapshot": false, "delta": "json-patch", "max_rate": 20}),
        )
        .await;
    let mut c_rated = Client::default();
    let mut sse = server
        .sse("topic=one&snapshot=false&delta=json-patch", None)
        .await;
    assert_eq!(sse.next().await.event, "subscribed");

    let (mut c_plain, mut c_delta, mut c_shaped, mut c_sse) = (
        Client::default(),
        Client::default(),
        Client::default(),
        Client::default(),
    );
    let mut joined: Option<(WsClient, Client)> = None;
    let mut resume_at: Option<(String, HashMap<String, Value>)> = None;
    for round in 0..6 {
        for chunk in 0..3 {
            let batch = publish(&mut rng, 15);
            server.publish_batch("one", &batch).await;
            if round == 1 && chunk == 1 {
                // Joins mid-stream with a snapshot.
                let mut ws = server.ws().await;
                ws.subscribe(json!({"topic": "one", "delta": "json-patch"}))
                    .await;
                joined = Some((ws, Client::default()));
            }
        }
        drain_into(&mut plain, &mut c_plain).await;
        let cursor = drain_into(&mut delta, &mut c_delta).await;
        drain_into(&mut shaped, &mut c_shaped).await;
        drain_into(&mut rated, &mut c_rated).await;
        assert_eq!(c_rated.values, c_plain.values, "round {round}, conflated");
        while let Some(ev) = sse.next_within(Duration::from_millis(250)).await {
            c_sse.apply(&ev.json());
        }
        assert_eq!(c_delta.values, c_plain.values, "round {round}");
        assert_eq!(c_sse.values, c_plain.values, "round {round} over SSE");
        let expected: HashMap<String, Value> = c_plain
            .values
            .iter()
            .filter(|(_, v)| v["f1"].as_f64().is_some_and(|n| n < 50.0))
            .map(|(k, v)| {
                let projected: serde_json::Map<String, Value> = fields
                    .iter()
                    .filter_map(|f| v.get(*f).map(|x| ((*f).to_owned(), x.clone())))
                    .collect();
                (k.clone(), Value::Object(projected))
            })
            .collect();
        // Keys the filtered client saw leave are gone; those never seen are absent too.
        assert_eq!(
            c_shaped.values, expected,
            "round {round} filtered+projected"
        );
        if let Some((ws, client)) = joined.as_mut() {
            drain_into(ws, client).await;
            assert_eq!(client.values, c_plain.values, "round {round}, joined later");
        }
        if round == 2 {
            // The delta client drops, keeping its values and cursor; a new one joins.
            resume_at = Some((cursor.unwrap(), c_delta.values.clone()));
            delta = server.ws().await;
            delta
                .subscribe(json!({"topic": "one", "delta": "json-patch"}))
                .await;
            c_delta = Client::default();
        }
        if round == 3 {
            // It comes back from its cursor: every value it ends with is exact.
            let (cursor, values) = resume_at.take().unwrap();
            let mut back = server.ws().await;
            back.subscribe(json!({"topic": "one", "delta": "json-patch", "cursor": cursor}))
                .await;
            let mut client = Client {
                values,
                ..Client::default()
            };
            drain_into(&mut back, &mut client).await;
            assert_eq!(client.values, c_plain.values, "resumed");
            // A cursor of another epoch: gap, then a snapshot and whole values.
            let foreign = Cursor::new(7, vec![0]).encode();
            let mut gap = server.ws().await;
            let reply = gap
                .subscribe(json!({"topic": "one", "delta": "json-patch", "cursor": foreign}))
                .await;
            assert_eq!(reply["recovered"], false);
            let mut client = Client::default();
            drain_into(&mut gap, &mut client).await;
            assert_eq!(client.values, c_plain.values, "after a gap");
        }
    }
    assert!(
        c_delta.patches > c_delta.wholes * 5,
        "mostly patches: {} / {}",
        c_delta.patches,
        c_delta.wholes
    );
    server.stop().await;
}

/// The JavaScript client's `applyPatch` (static/pushgate.js) rebuilds every
/// value from the gateway's patches. Needs `node` (the `node` test tier).
#[test]
fn the_js_client_applies_the_gateways_patches() {
    if !tiers(&["node"]) {
        return;
    }
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut cases = Vec::new();
    for _ in 0..500 {
        let a = arb_json().new_tree(&mut runner).unwrap().current();
        let b = arb_json().new_tree(&mut runner).unwrap().current();
        let patch: Value = serde_json::from_str(&pushgate::delta::diff(&a, &b)).unwrap();
        cases.push(json!({"a": a, "b": b, "patch": patch}));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, Value::from(cases).to_string()).unwrap();
    let module = concat!(env!("CARGO_MANIFEST_DIR"), "/static/pushgate.js");
    let script = format!(
        "import {{ applyPatch }} from 'file://{module}';
         import {{ readFileSync }} from 'node:fs';
         const cases = JSON.parse(readFileSync({file:?}, 'utf8'));
         const canon = (v) => JSON.stringify(v, (k, x) => x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x);
         let bad = 0;
         for (const c of cases) {{
           const before = canon(c.a);
           const got = applyPatch(c.a, c.patch);
           if (canon(got) !== canon(c.b) || canon(c.a) !== before) {{ bad++; console.error(JSON.stringify(c)); }}
         }}
         console.log(cases.length - bad, 'ok');
         process.exit(bad ? 1 : 0);"
    );
    let out = std::process::Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("500 ok"));
}
