//! Server CPU seconds and resident memory, read from /proc for a set of
//! root pids and all their descendants (nginx workers, Pushpin's services).

use std::collections::HashMap;
use std::fs;

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// user + system CPU seconds, summed over the process tree.
    pub cpu_secs: f64,
    /// The user-space part of `cpu_secs`.
    #[serde(default)]
    pub user_secs: f64,
    /// The kernel part of `cpu_secs` (for a push server: mostly socket writes).
    #[serde(default)]
    pub sys_secs: f64,
    /// VmRSS summed over the process tree, KiB.
    pub rss_kib: u64,
    /// Processes counted.
    pub processes: usize,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime+stime ticks) of one process.
fn stat(pid: u32) -> Option<(u32, u64)> {
    stat_split(pid).map(|(ppid, user, sys)| (ppid, user + sys))
}

/// (ppid, utime ticks, stime ticks) of one process.
fn stat_split(pid: u32) -> Option<(u32, u64, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime, stime))
}

fn rss_kib(pid: u32) -> u64 {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The roots and every process descending from them.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    if roots.is_empty() {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(pid) = todo.pop() {
        if out.contains(&pid) || out.len() > 10_000 {
            continue;
        }
        out.push(pid);
        if let Some(kids) = children.get(&pid) {
            todo.extend(kids);
        }
    }
    out
}

pub fn sample(roots: &[u32]) -> Sample {
    let ticks = clock_ticks();
    let mut s = Sample::default();
    for pid in tree(roots) {
        if let Some((_, user, sys)) = stat_split(pid) {
            s.user_secs += user as f64 / ticks;
            s.sys_secs += sys as f64 / ticks;
            s.cpu_secs += (user + sys) as f64 / ticks;
            s.rss_kib += rss_kib(pid);
            s.processes += 1;
        }
    }
    s
}

/// CPU seconds used by this load generator itself.
pub fn self_cpu_secs() -> f64 {
    stat(std::process::id()).map_or(0.0, |(_, t)| t as f64 / clock_ticks())
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}
