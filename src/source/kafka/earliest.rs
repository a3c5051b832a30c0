//! Each topic's low watermarks, asked of the broker at most once per `FRESH` and shared by every resume.
//!
//! A resume that reads the log asks where each partition begins, to tell a
//! retention gap from a readable range. That is one `ListOffsets` round trip
//! per partition; a reconnect storm of thousands of resumes made it thousands
//! of blocking requests a second against the same answer. Sharing a recent
//! answer is safe because a low watermark only rises: a stale one can only say
//! "readable" for a range retention removed meanwhile, and the read itself
//! then fails with `OffsetOutOfRange`, which is answered as a gap (see
//! [`super::catchup`]), never as records silently skipped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::source::SourceError;

/// How long one answer is shared.
const FRESH: Duration = Duration::from_secs(1);

/// One question to the broker: asked once, its answer (or its failure) shared
/// by every resume that came while it was fresh.
struct Asked {
    at: Instant,
    answer: OnceCell<Vec<u64>>,
}

#[derive(Default)]
pub(super) struct EarliestCache {
    topics: Mutex<HashMap<String, Arc<Asked>>>,
}

impl EarliestCache {
    /// The low watermarks of `topic`: a fresh shared answer, or `ask`'s.
    /// Resumes that arrive while a question is in flight wait for its answer;
    /// a failed question is not kept, so the next resume asks again.
    pub(super) async fn get<F, Fut>(&self, topic: &str, ask: F) -> Result<Vec<u64>, SourceError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u64>, SourceError>>,
    {
        let asked = {
            let mut topics = self.topics.lock().expect("earliest lock");
            match topics.get(topic) {
                Some(asked) if asked.at.elapsed() < FRESH => Arc::clone(asked),
                _ => {
                    let asked = Arc::new(Asked {
                        at: Instant::now(),
                        answer: OnceCell::new(),
                    });
                    topics.insert(topic.to_owned(), Arc::clone(&asked));
                    asked
                }
            }
        };
        asked.answer.get_or_try_init(ask).await.cloned()
    }

    /// Forget `topic`'s answer (a recreated topic starts from its own offsets).
    pub(super) fn forget(&self, topic: &str) {
        self.topics.lock().expect("earliest lock").remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_resumes_share_one_question_and_failures_are_not_kept() {
        let cache = Arc::new(EarliestCache::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (cache, asked) = (Arc::clone(&cache), Arc::clone(&asked));
            tasks.push(tokio::spawn(async move {
                cache
                    .get("t", || async {
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(vec![3, 4])
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), vec![3, 4]);
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one question for 50 resumes"
        );

        // Another topic is asked on its own; a failure is answered and not kept.
        let failed = cache
            .get("u", || async {
                Err(SourceError::Unavailable("down".into()))
            })
            .await;
        assert!(failed.is_err());
        let again = cache.get("u", || async { Ok(vec![7]) }).await.unwrap();
        assert_eq!(again, vec![7]);

        // Forgotten (or stale), the topic is asked again.
        cache.forget("t");
        let fresh = cache.get("t", || async { Ok(vec![5, 6]) }).await.unwrap();
        assert_eq!(fresh, vec![5, 6]);
    }

    #[tokio::test]
    async fn an_answer_older_than_fresh_is_asked_again() {
        let cache = EarliestCache::default();
        assert_eq!(
            cache.get("t", || async { Ok(vec![1]) }).await.unwrap(),
            vec![1]
        );
        assert_eq!(
            cache.get("t", || async { Ok(vec![9]) }).await.unwrap(),
            vec![1]
        );
        tokio::time::sleep(FRESH + Duration::from_millis(50)).await;
        assert_eq!(
            cache.get("t", || async { Ok(vec![2]) }).await.unwrap(),
            vec![2]
        );
    }
}
