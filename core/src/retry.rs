//! The one retry policy: exponential backoff with jitter, bounded in attempts
//! and in total time, applied to transient errors only
//! ([`Error::is_transient`]).

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How often and how long to retry.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The delay before the second attempt; doubled each time.
    pub base_delay: Duration,
    /// The longest single delay.
    pub max_delay: Duration,
    /// No attempt starts after this much time since the first one, and each
    /// attempt is cut off when it would run past it.
    pub total: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            total: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// A policy that tries once.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.max_delay);
        // Full jitter in [capped/2, capped]: spreads the retries of many
        // readers that failed together.
        let nanos = capped.as_nanos() as u64;
        // Wall-clock nanoseconds differ between the processes and tasks that
        // failed together, which is all the jitter needs.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = now.as_nanos() as u64 ^ (u64::from(attempt) << 32) ^ std::process::id() as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            splitmix(seed) % (nanos / 2 + 1)
        };
        Duration::from_nanos(nanos / 2 + jitter)
    }

    /// Runs `op` until it succeeds, fails for good, or the budget is spent.
    /// `what` names the operation in a timeout error.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let start = Instant::now();
        let mut attempt = 0;
        loop {
            let left = self.total.saturating_sub(start.elapsed());
            let result = match tokio::time::timeout(left, op()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout {
                    what: what.to_owned(),
                    after: start.elapsed(),
                }),
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt + 1 < self.max_attempts => {
                    let delay = self.delay(attempt);
                    if start.elapsed() + delay >= self.total {
                        tracing::debug!(what, attempt, error = %e, "retry budget spent");
                        return Err(e);
                    }
                    tracing::debug!(what, attempt, ?delay, error = %e, "transient error, retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RetryPolicy {
    /// The retries of one transfer that resumes where it broke.
    pub fn resumption(&self) -> Resumption {
        Resumption {
            policy: *self,
            since: Instant::now(),
            attempt: 0,
        }
    }
}

/// The retries of one transfer that resumes where it broke (a whole-blob
/// stream): the policy's attempts count from the last progress and its time
/// from the last byte, so that a download of any length goes on while it
/// advances, and ends when it stalls for the policy's time or breaks its
/// attempts over without advancing.
#[derive(Debug)]
pub struct Resumption {
    policy: RetryPolicy,
    since: Instant,
    attempt: u32,
}

impl Resumption {
    /// Bytes arrived: the time budget counts afresh (the attempts do not,
    /// so that a transfer that keeps breaking before it gets anywhere still
    /// ends).
    pub fn alive(&mut self) {
        self.since = Instant::now();
    }

    /// The transfer moved forward (the bytes that came were kept): the
    /// attempts count afresh. The time still counts from the last
    /// [`alive`](Self::alive), so that a transfer that stalls fails the
    /// policy's time after its last byte, however far it got.
    pub fn progress(&mut self) {
        self.attempt = 0;
    }

    /// The time left before the transfer is given up without progress.
    pub fn left(&self) -> Duration {
        self.policy.total.saturating_sub(self.since.elapsed())
    }

    /// `op`, cut off with [`Error::Timeout`] when the time left runs out.
    pub async fn within<T>(&self, what: &str, op: impl Future<Output = T>) -> Result<T> {
        match tokio::time::timeout(self.left(), op).await {
            Ok(r) => Ok(r),
            Err(_) => Err(Error::Timeout {
                what: what.to_owned(),
                after: self.since.elapsed(),
            }),
        }
    }

    /// Whether to try again after `error` (transient, attempts and time
    /// left); if so, waits the backoff first.
    pub async fn again(&mut self, what: &str, error: &Error) -> bool {
        if !error.is_transient() || self.attempt + 1 >= self.policy.max_attempts {
            return false;
        }
        let delay = self.policy.delay(self.attempt);
        if self.since.elapsed() + delay >= self.policy.total {
            tracing::debug!(what, attempt = self.attempt, error = %error, "retry budget spent");
            return false;
        }
        tracing::debug!(what, attempt = self.attempt, ?delay, error = %error, "transient error, retrying");
        tokio::time::sleep(delay).await;
        self.attempt += 1;
        true
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            total: Duration::from_secs(5),
        }
    }

    fn unavailable() -> Error {
        Error::Registry {
            registry: "r".into(),
            status: 503,
            what: "x".into(),
            detail: String::new(),
            source: None,
        }
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let v = fast(5)
            .run("op", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(unavailable())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (7, 4));
    }

    #[tokio::test]
    async fn stops_at_max_attempts_and_on_permanent_errors() {
        let calls = AtomicU32::new(0);
        let r: Result<()> = fast(3)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(unavailable())
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<()> = fast(3)
            .run("op", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::PathNotFound { path: "x".into() })
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for attempt in 0..10 {
            let full =
                Duration::from_millis(100 * (1 << attempt.min(4))).min(Duration::from_secs(1));
            let d = p.delay(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                full / 2
            );
        }
        let distinct: std::collections::HashSet<Duration> = (0..20).map(|_| p.delay(3)).collect();
        assert!(distinct.len() > 1, "no jitter");
    }

    #[tokio::test]
    async fn a_resumption_counts_attempts_from_progress_and_time_from_the_last_byte() {
        let policy = RetryPolicy {
            total: Duration::from_millis(300),
            ..fast(3)
        };
        let mut r = policy.resumption();
        assert!(r.again("x", &unavailable()).await);
        assert!(r.again("x", &unavailable()).await);
        assert!(!r.again("x", &unavailable()).await, "3 attempts in all");
        r.alive();
        assert!(
            !r.again("x", &unavailable()).await,
            "bytes alone are no progress"
        );
        r.progress();
        assert!(
            r.again("x", &unavailable()).await,
            "progress restarts the count"
        );
        // Progress without a byte for the whole time is no reprieve.
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.progress();
        assert!(!r.again("x", &unavailable()).await);
        r.alive();
        let permanent = Error::PathNotFound { path: "p".into() };
        assert!(!r.again("x", &permanent).await);
        // Time: a stalled attempt is cut off when the budget runs out, and
        // then nothing is tried again.
        let start = Instant::now();
        let stalled = r.within("stall", std::future::pending::<()>()).await;
        assert!(matches!(stalled, Err(Error::Timeout { .. })), "{stalled:?}");
        assert!(start.elapsed() < Duration::from_millis(400));
        assert!(!r.again("x", &stalled.unwrap_err()).await);
        assert_eq!(r.left(), Duration::ZERO);
        r.alive();
        assert!(r.left() > Duration::from_millis(200));
    }

    #[tokio::test]
    async fn total_time_is_bounded() {
        let policy = RetryPolicy {
            total: Duration::from_millis(100),
            ..fast(1000)
        };
        let start = Instant::now();
        let r: Result<()> = policy.run("stall", std::future::pending).await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }
}
