//! Revocations in force on this node: subjects and token ids (`jti`) refused until a time, as the control topic says.
//!
//! Every node builds this from the control topic (see `admin::control`), so
//! it is the same on every node. Checking a token is two `DashMap` reads,
//! made when a token is verified (a connect, a publish, a refresh); expired
//! entries are dropped when met and by [`Revocations::sweep`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use dashmap::DashMap;
use serde_json::{json, Value};

use super::unix_now;

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Subject(String),
    Jti(String),
}

impl Target {
    /// The control topic's record key: `subject:<sub>` or `jti:<jti>`.
    pub fn key(&self) -> String {
        match self {
            Target::Subject(s) => format!("subject:{s}"),
            Target::Jti(j) => format!("jti:{j}"),
        }
    }

    /// The target a control record's key names, if it names one.
    pub fn from_key(key: &str) -> Option<Self> {
        if let Some(s) = key.strip_prefix("subject:") {
            return Some(Target::Subject(s.to_owned()));
        }
        key.strip_prefix("jti:").map(|j| Target::Jti(j.to_owned()))
    }
}

/// One revocation: until when (Unix seconds; `None`: until lifted), and when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub until: Option<u64>,
    pub at: u64,
}

impl Entry {
    fn in_force(&self, now: u64) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// Where the control topic's reader stands, for `POST` to wait on: per partition, the next offset not yet applied.
#[derive(Default)]
pub struct Progress {
    next: Mutex<Vec<u64>>,
    moved: Notify,
}

impl Progress {
    fn applied(&self, partition: u32, offset: u64) -> bool {
        let next = self.next.lock().expect("progress lock");
        next.get(partition as usize).is_some_and(|n| *n > offset)
    }

    pub fn set(&self, next: &[u64]) {
        *self.next.lock().expect("progress lock") = next.to_vec();
        self.moved.notify_waiters();
    }

    /// Waits (at most `limit`) until the record at `partition`/`offset` is applied.
    pub async fn wait(&self, partition: u32, offset: u64, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let moved = self.moved.notified();
            if self.applied(partition, offset) {
                return true;
            }
            if tokio::time::timeout_at(until, moved).await.is_err() {
                return self.applied(partition, offset);
            }
        }
    }
}

#[derive(Default)]
pub struct Revocations {
    subjects: DashMap<String, Entry>,
    jtis: DashMap<String, Entry>,
    /// Set once the control topic has been read to its end (or there is none):
    /// the node reports ready only then.
    loaded: AtomicBool,
    /// How far the control topic has been applied.
    pub progress: Progress,
}

impl Revocations {
    /// Whether a token of `subject` with id `jti` is refused now.
    pub fn refuses(&self, subject: Option<&str>, jti: Option<&str>) -> bool {
        let now = unix_now();
        let hit = |map: &DashMap<String, Entry>, name: Option<&str>| {
            let Some(name) = name else { return false };
            // Copied out: no guard is held past this line.
            let entry = map.get(name).map(|e| *e);
            match entry {
                Some(e) if e.in_force(now) => true,
                Some(_) => {
                    map.remove_if(name, |_, e| !e.in_force(now));
                    false
                }
                None => false,
            }
        };
        // Both maps are empty on nearly every node nearly always.
        (!self.subjects.is_empty() && hit(&self.subjects, subject))
            || (!self.jtis.is_empty() && hit(&self.jtis, jti))
    }

    /// Puts `target` in force (a record of the control topic); an `until`
    /// already past lifts it instead. True when it is in force now.
    pub fn revoke(&self, target: &Target, entry: Entry) -> bool {
        if !entry.in_force(unix_now()) {
            self.lift(target);
            return false;
        }
        match target {
            Target::Subject(s) => self.subjects.insert(s.clone(), entry),
            Target::Jti(j) => self.jtis.insert(j.clone(), entry),
        };
        true
    }

    pub fn lift(&self, target: &Target) {
        match target {
            Target::Subject(s) => self.subjects.remove(s),
            Target::Jti(j) => self.jtis.remove(j),
        };
    }

    /// Drops the entries whose `until` has passed.
    pub fn sweep(&self) {
        let now = unix_now();
        self.subjects.retain(|_, e| e.in_force(now));
        self.jtis.retain(|_, e| e.in_force(now));
    }

    /// Everything in force, as `GET /admin/revocations` lists it (subjects, then token ids, each sorted).
    pub fn list(&self) -> Vec<Value> {
        let now = unix_now();
        let mut out = Vec::new();
        for (map, member) in [(&self.subjects, "subject"), (&self.jtis, "jti")] {
            let mut entries: Vec<(String, Entry)> = map
                .iter()
                .filter(|e| e.value().in_force(now))
                .map(|e| (e.key().clone(), *e.value()))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            out.extend(
                entries
                    .into_iter()
                    .map(|(name, e)| json!({member: name, "until": e.until, "revoked_at": e.at})),
            );
        }
        out
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_is_refused_until_its_time_and_a_jti_alone_hits_one_token() {
        let r = Revocations::default();
        let now = unix_now();
        assert!(!r.refuses(Some("alice"), None));
        let alice = Target::Subject("alice".into());
        assert!(r.revoke(
            &alice,
            Entry {
                until: Some(now + 60),
                at: now
            }
        ));
        assert!(r.refuses(Some("alice"), Some("t1")));
        assert!(!r.refuses(Some("bob"), None));
        r.lift(&alice);
        assert!(!r.refuses(Some("alice"), None));

        let jti = Target::Jti("t1".into());
        assert!(r.revoke(
            &jti,
            Entry {
                until: None,
                at: now
            }
        ));
        assert!(r.refuses(Some("alice"), Some("t1")));
        assert!(!r.refuses(Some("alice"), Some("t2")));
        assert_eq!(r.list().len(), 1);

        // An `until` already past lifts.
        assert!(!r.revoke(
            &jti,
            Entry {
                until: Some(now - 1),
                at: now
            }
        ));
        assert!(!r.refuses(None, Some("t1")));
        assert!(r.list().is_empty());
    }

    #[test]
    fn keys_name_their_target() {
        let t = Target::from_key("subject:a:b").unwrap();
        assert_eq!(t, Target::Subject("a:b".into()));
        assert_eq!(t.key(), "subject:a:b");
        assert_eq!(Target::from_key("jti:x"), Some(Target::Jti("x".into())));
        assert_eq!(Target::from_key("grants:x"), None);
    }
}
