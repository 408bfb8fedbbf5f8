//! Single-flight: one fetch per key in a process, the others waiting for
//! its result; a fetch that failed recently fails its key at once.

use super::*;

impl Inner {
    /// Runs `work` once per key: the first caller runs it in a task of its
    /// own (so a cancelled reader does not cancel the fetch others wait
    /// for); the others wait for its result.
    pub(super) async fn single_flight<F>(
        self: &Arc<Self>,
        key: (Digest, u64),
        work: F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        if let Some(e) = self.recent_failure(&key) {
            return Err(e);
        }
        let (mut rx, leader) = {
            let mut flights = self.flights.lock().map_err(|_| poisoned())?;
            match flights.get(&key) {
                Some(rx) => (rx.clone(), None),
                None => {
                    let (tx, rx) = watch::channel(None);
                    flights.insert(key.clone(), rx.clone());
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = leader {
            let inner = self.clone();
            tokio::spawn(async move {
                let result = work.await;
                inner.note_outcome(&key, &result);
                if let Ok(mut flights) = inner.flights.lock() {
                    flights.remove(&key);
                }
                let _ = tx.send(Some(result));
            });
        }
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            Err(_) => Err(Error::io(
                "a fetch task ended without a result",
                std::io::Error::other("task aborted"),
            )),
        }
    }

    /// Records how a fetch of `key` ended: one that failed for a transient
    /// reason fails its key at once for the grace period.
    pub(super) fn note_outcome(&self, key: &(Digest, u64), result: &Result<()>) {
        if let Ok(mut failed) = self.failed.lock() {
            failed.retain(|_, (at, _)| at.elapsed() < FAILED_FETCH_GRACE);
            match result {
                Err(e) if e.is_transient() => {
                    failed.insert(key.clone(), (Instant::now(), e.clone()));
                }
                _ => {
                    failed.remove(key);
                }
            }
        }
    }

    /// The error of a fetch of `key` that failed within the grace period.
    pub(super) fn recent_failure(&self, key: &(Digest, u64)) -> Option<Error> {
        let failed = self.failed.lock().ok()?;
        let (at, e) = failed.get(key)?;
        (at.elapsed() < FAILED_FETCH_GRACE).then(|| e.clone())
    }
}
