//! A registration's snapshot, streamed by page in key order: shared clones of the partitions' views, or a list.
//!
//! Each partition's view is a persistent ordered map ([`View`]): a clone is a
//! pointer and a count, and shares every node with the view until the view
//! changes one (only that path is copied). So a snapshot of a whole topic,
//! or of a key prefix, is one clone per partition taken under the
//! registration's locks: it reflects exactly that position, costs no memory
//! per key however many subscribers take one, and is already in key order;
//! each page is read from the clones by key range and merged across
//! partitions. The memory concurrent snapshots hold is the view's nodes and
//! records that changed since they were taken, shared by all of them; each
//! page sent is removed from the clone (a path copy), so what a snapshot
//! already sent no longer keeps them.
//!
//! Snapshots that must evaluate each value (a value filter), name keys, or
//! read partitions from the source's stored view are a [`Snap`] list, sorted
//! once, as before.

use std::ops::Bound;
use std::sync::Arc;

use super::stored::Snap;
use crate::record::Record;

/// The latest record of each key of one partition, in key order.
pub type View = imbl::OrdMap<Arc<str>, Arc<Record>>;

/// What a snapshot streams, in key order, a page at a time.
#[derive(Clone)]
pub struct Snapshot {
    source: Source,
    /// Records left to send (the cap applied).
    left: usize,
}

#[derive(Clone)]
enum Source {
    /// Clones of the partitions' views; keys starting with `prefix` (all when
    /// `None`), after `after`.
    Shared {
        views: Vec<View>,
        prefix: Option<Box<str>>,
        after: Option<Arc<str>>,
        /// The topic's count of view bytes let go when the clones were taken:
        /// what was let go since, the clones may hold.
        let_go_at: u64,
        /// A cap applies (`left` counts down to it).
        capped: bool,
    },
    /// A sorted list and how much of it went out.
    Listed(Vec<Snap>, usize),
}

impl Snapshot {
    /// A snapshot with nothing to send.
    pub fn empty() -> Self {
        Self::listed(Vec::new())
    }

    /// A sorted, capped list.
    pub(super) fn listed(list: Vec<Snap>) -> Self {
        Self {
            left: list.len(),
            source: Source::Listed(list, 0),
        }
    }

    /// The views' keys starting with `prefix`, at most `cap` of them (0: all);
    /// and how many the cap left out.
    pub(super) fn shared(
        views: Vec<View>,
        let_go_at: u64,
        prefix: Option<Box<str>>,
        cap: usize,
    ) -> (Self, usize) {
        let total: usize = match &prefix {
            None => views.iter().map(View::len).sum(),
            Some(p) => views.iter().map(|v| with_prefix(v, p, None).count()).sum(),
        };
        let left = if cap > 0 { total.min(cap) } else { total };
        let snapshot = Self {
            source: Source::Shared {
                views,
                prefix,
                after: None,
                let_go_at,
                capped: cap > 0,
            },
            left,
        };
        (snapshot, total - left)
    }

    /// When it streams from clones that may hold more than `hold` bytes the
    /// views have let go since (`let_go` now): the last key it sent, where it
    /// can move on to the views as they are now ([`Snapshot::moved_to`]).
    pub fn holding_too_much(&self, let_go: u64, hold: u64) -> Option<Arc<str>> {
        match &self.source {
            Source::Shared {
                after: Some(after),
                let_go_at,
                capped: false,
                ..
            } if hold > 0 && self.left > 0 && let_go.saturating_sub(*let_go_at) > hold => {
                Some(Arc::clone(after))
            }
            _ => None,
        }
    }

    /// Counts what the views let go from `let_go` on (it could not move).
    pub fn held_from(&mut self, let_go: u64) {
        if let Source::Shared { let_go_at, .. } = &mut self.source {
            *let_go_at = let_go;
        }
    }

    /// The rest of it, after the last key it sent, from `views` (newer clones
    /// of the same partitions, taken when the count of bytes let go was
    /// `let_go_at`): its old clones, and what only they held, are let go.
    /// `None` for a capped snapshot or when the partitions changed.
    pub(super) fn moved_to(&self, views: Vec<View>, let_go_at: u64) -> Option<Self> {
        let Source::Shared {
            views: old,
            prefix,
            after: Some(after),
            capped: false,
            ..
        } = &self.source
        else {
            return None;
        };
        if views.len() != old.len() {
            return None;
        }
        let (mut moved, _) = Self::shared(views, let_go_at, prefix.clone(), 0);
        moved.skip_through(after);
        Some(moved)
    }

    /// Records left to send.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Every key it has left to send, in order (a copy is paged through).
    #[cfg(test)]
    pub fn keys(&self) -> Vec<String> {
        let mut rest = self.clone();
        let mut keys = Vec::new();
        loop {
            let page = rest.next_page(3);
            if page.is_empty() {
                return keys;
            }
            keys.extend(page.iter().map(|s| s.key().unwrap_or_default().to_owned()));
        }
    }

    /// Leaves out the keys up to `after` (a client resuming mid-snapshot holds them).
    pub fn skip_through(&mut self, after: &str) {
        let sent = match &mut self.source {
            Source::Listed(list, at) => {
                let sent = list[*at..].partition_point(|r| r.key().is_some_and(|k| k <= after));
                *at += sent;
                sent
            }
            Source::Shared {
                views,
                prefix,
                after: from,
                ..
            } => {
                let lower = from.as_deref();
                if lower.is_some_and(|l| after <= l) {
                    return;
                }
                // The keys in (the last one skipped or sent, `after`].
                let range = (
                    lower.map_or(Bound::Unbounded, Bound::Excluded),
                    Bound::Included(after),
                );
                let sent = views
                    .iter()
                    .map(|v| match prefix {
                        None => v.range::<_, str>(range).count(),
                        Some(p) => with_prefix(v, p, lower)
                            .take_while(|(k, _)| &***k <= after)
                            .count(),
                    })
                    .sum();
                *from = Some(Arc::from(after));
                sent
            }
        };
        self.left = self.left.saturating_sub(sent);
    }

    /// The next page of at most `n` entries, in key order; empty when done.
    pub fn next_page(&mut self, n: usize) -> Vec<Snap> {
        let n = n.min(self.left);
        let page: Vec<Snap> = match &mut self.source {
            Source::Listed(list, at) => {
                let until = (*at + n).min(list.len());
                let page = list[*at..until].to_vec();
                *at = until;
                page
            }
            Source::Shared {
                views,
                prefix,
                after,
                ..
            } => {
                // Each partition's first `n` keys after the last one sent: the
                // topic's first `n` are among them.
                let prefix = prefix.as_deref();
                let mut merged: Vec<(usize, &Arc<str>, &Arc<Record>)> = Vec::new();
                for (i, view) in views.iter().enumerate() {
                    let from = after.as_deref();
                    let tagged = |(k, r)| (i, k, r);
                    match prefix {
                        None => {
                            let range = (
                                from.map_or(Bound::Unbounded, Bound::Excluded),
                                Bound::Unbounded,
                            );
                            merged.extend(view.range::<_, str>(range).take(n).map(tagged));
                        }
                        Some(p) => merged.extend(with_prefix(view, p, from).take(n).map(tagged)),
                    }
                }
                merged.sort_unstable_by(|a, b| a.1.cmp(b.1));
                merged.truncate(n);
                let page: Vec<Snap> = merged
                    .iter()
                    .map(|(_, _, r)| Snap::Held(Arc::clone(r)))
                    .collect();
                let sent: Vec<(usize, Arc<str>)> =
                    merged.iter().map(|(i, k, _)| (*i, Arc::clone(k))).collect();
                if let Some((_, key)) = sent.last() {
                    *after = Some(Arc::clone(key));
                }
                // What went out leaves this clone, so the records and nodes
                // the view has replaced since are freed as soon as every
                // snapshot holding them has sent them, not when the last one
                // ends: concurrent snapshots of a view under writes hold what
                // changed ahead of the slowest, not all of it.
                for (i, key) in sent {
                    views[i].remove::<str>(&key);
                }
                page
            }
        };
        self.left -= page.len();
        if self.left == 0 {
            // Done: let go of the views' nodes (or the list) now, not when the
            // subscription ends.
            self.source = Source::Listed(Vec::new(), 0);
        }
        page
    }
}

/// The entries of `view` whose keys start with `prefix` and sort after `after`.
fn with_prefix<'a>(
    view: &'a View,
    prefix: &'a str,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a Arc<str>, &'a Arc<Record>)> + 'a {
    // Keys with a prefix are one range, from the prefix itself on.
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    view.range::<_, str>((start, Bound::Unbounded))
        .take_while(move |(k, _)| k.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Filter, Hub, SubscribeOptions, TopicSettings};
    use crate::outbox::Outbox;
    use crate::record::LogRecord;

    fn log(partition: u32, offset: u64, key: &str, n: u64) -> LogRecord {
        LogRecord {
            partition,
            offset,
            timestamp: 0,
            key: Some(key.into()),
            data: format!("{n}").into(),
            extra: None,
            delete: false,
            position: None,
            trace: None,
        }
    }

    /// Topic "t" with `partitions` partitions, a small ring, all keys in the view.
    fn small_topic(hub: &Hub, partitions: u32) -> Arc<super::super::Topic> {
        let settings = TopicSettings {
            ring_records: 8,
            view_max_keys: 100,
            view_max_bytes: 0,
        };
        hub.add_topic("t", 1, partitions, settings)
    }

    #[test]
    fn a_shared_snapshot_pages_in_key_order_at_its_position() {
        let hub = Hub::new();
        let topic = small_topic(&hub, 3);
        let mut next = [0u64; 3];
        let mut write = |i: usize, n: u64| {
            let p = i % 3;
            topic.ingest(&log(p as u32, next[p], &format!("k{i:02}"), n));
            next[p] += 1;
        };
        for i in 0..30 {
            write(i, 0);
        }
        let register = |filter: Filter, max: usize| {
            topic.register(SubscribeOptions {
                snapshot: true,
                max_snapshot: max,
                ..SubscribeOptions::plain(filter, Arc::new(Outbox::new(1 << 20)))
            })
        };
        let all = register(Filter::default(), 0);
        let prefixed = register(Filter::new(None, Some("k1".into())), 0);
        let capped = register(Filter::default(), 7);
        assert!(!all.needs_store(), "no list to sort: the views are shared");
        // Written after: updates of taken keys, a delete, new keys.
        for i in 0..40 {
            write(i, 1);
        }
        topic.ingest(&LogRecord {
            delete: true,
            ..log(0, next[0], "k00", 2)
        });
        let want: Vec<String> = (0..30).map(|i| format!("k{i:02}")).collect();
        assert_eq!(all.snapshot.len(), 30);
        assert_eq!(all.snapshot.keys(), want, "all keys, in order, as taken");
        let mut pages = all.snapshot.clone();
        let values: Vec<String> = std::iter::from_fn(|| {
            let page = pages.next_page(4);
            (!page.is_empty()).then_some(page)
        })
        .flatten()
        .map(|s| match s {
            super::Snap::Held(r) => r.data().to_owned(),
            super::Snap::Stored { .. } => unreachable!("nothing stored"),
        })
        .collect();
        assert_eq!(values, vec!["0"; 30], "the values at registration");
        assert!(pages.is_empty());
        assert_eq!(prefixed.snapshot.len(), 10);
        assert_eq!(prefixed.snapshot.keys(), want[10..20].to_vec());
        assert_eq!(capped.snapshot.len(), 7);
        assert_eq!(capped.snapshot.keys(), want[..7].to_vec());
        assert_eq!(capped.partial.map(|p| p.skipped), Some(23));
        // A resume mid-snapshot: the keys after the one the client holds.
        let mut rest = all.snapshot.clone();
        rest.skip_through("k11");
        assert_eq!(rest.len(), 18);
        assert_eq!(rest.keys(), want[12..].to_vec());
        let mut rest = prefixed.snapshot.clone();
        rest.skip_through("k04");
        assert_eq!(rest.keys(), want[10..20].to_vec(), "before the prefix");
        rest.skip_through("k15");
        assert_eq!(rest.len(), 4);
        assert_eq!(rest.keys(), want[16..20].to_vec());
    }

    /// A page sent lets go of its records: one the view replaced since the
    /// snapshot was taken is freed once every snapshot holding it sent it.
    #[test]
    fn a_sent_page_lets_go_of_the_records_it_held() {
        let hub = Hub::new();
        let topic = small_topic(&hub, 1);
        for i in 0..10u64 {
            topic.ingest(&log(0, i, &format!("k{i}"), 0));
        }
        let old = topic.latest("k1").unwrap();
        let mut snapshot = topic
            .register(SubscribeOptions {
                snapshot: true,
                ..SubscribeOptions::plain(Filter::default(), Arc::new(Outbox::new(1 << 20)))
            })
            .snapshot;
        topic.ingest(&log(0, 10, "k1", 1));
        // The test, the ring and the snapshot hold it; the view no longer does.
        let held = Arc::strong_count(&old);
        let page = snapshot.next_page(3);
        assert_eq!(page.len(), 3);
        drop(page);
        assert_eq!(
            Arc::strong_count(&old),
            held - 1,
            "the snapshot let go of k1 once sent"
        );
        let rest: Vec<String> = snapshot.keys();
        assert_eq!(rest, (3..10).map(|i| format!("k{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn every_change_counts_the_tree_path_a_clone_keeps() {
        let hub = Hub::new();
        let topic = small_topic(&hub, 1);
        topic.ingest(&log(0, 0, "k0", 0));
        let before = topic.view_let_go();
        // A new key replaces no entry, but under a clone it copies a path.
        topic.ingest(&log(0, 1, "k1", 0));
        let path = topic.view_let_go() - before;
        assert_eq!(path, super::super::partition::path_copy_cost(1) as u64);
        // Deeper views copy longer paths: one node per level of about 12.
        let cost = super::super::partition::path_copy_cost;
        assert_eq!(cost(12), cost(1));
        assert_eq!(cost(250_000), 5 * cost(1));
        assert!(cost(1_000_000) > cost(250_000));
    }

    /// Past `hold` bytes let go since it was taken, a snapshot that sent some
    /// keys moves on: the changes of the keys it sent are replayed from its
    /// position to the new one, the rest comes from the view as it is now
    /// (new keys in, deleted ones out), and its old clones let go of what
    /// only they held. A capped snapshot stays as it is.
    #[test]
    fn a_snapshot_holding_too_much_moves_on_to_the_view_as_it_is_now() {
        let hub = Hub::new();
        let topic = small_topic(&hub, 1);
        for i in 0..10u64 {
            topic.ingest(&log(0, i, &format!("k{i}"), 0));
        }
        let register = |max_snapshot| {
            topic.register(SubscribeOptions {
                snapshot: true,
                max_snapshot,
                ..SubscribeOptions::plain(Filter::default(), Arc::new(Outbox::new(1 << 20)))
            })
        };
        let reg = register(0);
        let capped = register(9);
        let (sub, mut snapshot) = (reg.sub, reg.snapshot);
        assert_eq!(reg.high, vec![10]);
        let sent: Vec<String> = snapshot
            .next_page(3)
            .iter()
            .map(|s| s.key().unwrap().to_owned())
            .collect();
        assert_eq!(sent, ["k0", "k1", "k2"]);
        assert_eq!(snapshot.holding_too_much(topic.view_let_go(), 1), None);
        let old_k5 = topic.latest("k5").unwrap();
        topic.ingest(&log(0, 10, "k1", 1));
        topic.ingest(&log(0, 11, "k5", 1));
        topic.ingest(&log(0, 12, "k99", 1));
        topic.ingest(&LogRecord {
            delete: true,
            ..log(0, 13, "k7", 1)
        });
        let let_go = topic.view_let_go();
        assert!(let_go > 0);
        assert_eq!(
            snapshot.holding_too_much(let_go, let_go),
            None,
            "not past the bound"
        );
        let after = snapshot.holding_too_much(let_go, 1).expect("past it");
        assert_eq!(&*after, "k2");
        assert_eq!(capped.snapshot.holding_too_much(let_go, 1), None, "capped");

        let (high, replay, rest) = topic.rebase(&sub, &snapshot, &after, &reg.high).unwrap();
        assert_eq!(high, vec![14]);
        let replayed: Vec<(String, u64)> = replay
            .iter()
            .flat_map(|r| match r {
                super::super::Replay::Ring { records, .. } => records.clone(),
                super::super::Replay::Log { .. } => panic!("the ring holds them"),
            })
            .map(|r| (r.key.as_deref().unwrap().to_owned(), r.offset))
            .collect();
        assert_eq!(replayed, [("k1".to_owned(), 10)], "only the keys sent");
        assert_eq!(rest.keys(), ["k3", "k4", "k5", "k6", "k8", "k9", "k99"]);
        let held = Arc::strong_count(&old_k5);
        drop(snapshot);
        assert_eq!(
            Arc::strong_count(&old_k5),
            held - 1,
            "the old clone let go of k5"
        );
        let mut rest = rest;
        let k5 = rest
            .next_page(3)
            .into_iter()
            .find_map(|s| match s {
                super::Snap::Held(r) if r.key.as_deref() == Some("k5") => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(k5.data(), "1", "the value now");
        assert_eq!(
            rest.holding_too_much(topic.view_let_go(), 1),
            None,
            "counted from the move"
        );
    }
}
