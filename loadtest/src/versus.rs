//! The Centrifugo tables of the report: every scenario with the floor, pushgate,
//! Nchan and Centrifugo side by side, pushgate's ratios to Centrifugo against
//! issue 29's targets, and what the resume scenario lost or repeated.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::stats::Percentiles;
use crate::{RunResult, StepResult};

const SYSTEMS: [&str; 4] = ["floor", "pushgate", "nchan", "centrifugo"];

/// The step a scenario is compared at: broadcast, the highest rate every
/// system sustained (best step); otherwise the last step.
fn step_at(results: &BTreeMap<(String, String), RunResult>, sc: &str) -> Option<f64> {
    let runs = SYSTEMS
        .iter()
        .filter_map(|s| results.get(&(s.to_string(), sc.to_owned())));
    if sc.starts_with("broadcast") {
        runs.filter_map(|r| r.best_step.map(|i| r.steps[i].rate))
            .reduce(f64::min)
    } else {
        runs.filter_map(|r| r.steps.last().map(|s| s.rate))
            .reduce(f64::min)
    }
}

fn find(r: &RunResult, rate: f64) -> Option<&StepResult> {
    r.steps.iter().find(|s| s.rate == rate)
}

fn lat(p: &Percentiles) -> String {
    format!("{:.2} / {:.2} / {:.2}", p.p50_ms, p.p99_ms, p.p999_ms)
}

/// One table, a row per (scenario, system), and pushgate's ratios to Centrifugo.
pub fn table(results: &BTreeMap<(String, String), RunResult>) -> String {
    if !results.keys().any(|(s, _)| s == "centrifugo") {
        return String::new();
    }
    let mut out = String::from(
        "| scenario | load (msg/s) | system | idle B/conn | delivered | user µs / delivery | system µs / delivery | deliveries / CPU-s | p50 / p99 / p99.9 ms |\n|---|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut verdicts = String::new();
    let scenarios: std::collections::BTreeSet<&String> = results.keys().map(|(_, sc)| sc).collect();
    for sc in scenarios {
        let idle = sc.starts_with("idle");
        let rate = step_at(results, sc);
        let mut pg: Option<(f64, f64, f64)> = None;
        let mut cf: Option<(f64, f64, f64)> = None;
        for system in SYSTEMS {
            let Some(r) = results.get(&(system.to_owned(), sc.clone())) else {
                continue;
            };
            let step = rate.and_then(|rate| find(r, rate));
            let cells = match step {
                Some(s) => format!(
                    "{:.1}% | {:.2} | {:.2} | {:.0} | {}",
                    s.delivery_ratio * 100.0,
                    s.user_us_per_delivery,
                    s.sys_us_per_delivery,
                    s.deliveries_per_cpu_sec,
                    lat(&s.latency)
                ),
                None => "- | - | - | - | -".to_owned(),
            };
            let _ = writeln!(
                out,
                "| {sc} | {} | {system} | {:.0} | {cells} |",
                rate.map_or("-".to_owned(), |r| format!("{r:.0}")),
                r.rss_per_conn_bytes
            );
            let key = (
                r.rss_per_conn_bytes,
                step.map_or(0.0, |s| s.deliveries_per_cpu_sec),
                step.map_or(0.0, |s| s.latency.p99_ms),
            );
            match system {
                "pushgate" => pg = Some(key),
                "centrifugo" => cf = Some(key),
                _ => {}
            }
        }
        if let (Some(p), Some(c)) = (pg, cf) {
            let mut parts = Vec::new();
            if idle {
                parts.push(format!(
                    "idle memory {:.2}x Centrifugo's (target <= 0.5: {})",
                    p.0 / c.0.max(1.0),
                    if p.0 <= c.0 / 2.0 { "met" } else { "missed" }
                ));
            } else if c.1 > 0.0 && c.2 > 0.0 {
                parts.push(format!(
                    "deliveries per CPU-second {:.2}x (target >= 1.3: {})",
                    p.1 / c.1,
                    if p.1 >= 1.3 * c.1 { "met" } else { "missed" }
                ));
                parts.push(format!(
                    "p99 {:.2} vs {:.2} ms ({})",
                    p.2,
                    c.2,
                    if p.2 <= c.2 {
                        "at or below: met"
                    } else {
                        "above: missed"
                    }
                ));
            }
            if !parts.is_empty() {
                let _ = writeln!(verdicts, "- {sc}: pushgate {}", parts.join("; "));
            }
        }
    }
    out.push('\n');
    out.push_str(&verdicts);
    let resumes: Vec<(&(String, String), &RunResult)> = results
        .iter()
        .filter(|(_, r)| r.errors.resumes > 0)
        .collect();
    if !resumes.is_empty() {
        out.push_str("\nResume runs: reconnects, resumes the server did not honour (`recovered: false`), duplicate deliveries, and deliveries against those expected (every record of a subscriber's key, once).\n\n| system | scenario | resumes | not recovered | duplicates | delivered |\n|---|---|---:|---:|---:|---:|\n");
        for ((system, sc), r) in resumes {
            let expected: u64 = r.steps.iter().map(|s| s.expected_deliveries).sum();
            let got: u64 = r.steps.iter().map(|s| s.deliveries).sum();
            let _ = writeln!(
                out,
                "| {system} | {sc} | {} | {} | {} | {:.2}% |",
                r.errors.resumes,
                r.errors.not_recovered,
                r.errors.duplicates,
                got as f64 * 100.0 / expected.max(1) as f64
            );
        }
    }
    out
}
