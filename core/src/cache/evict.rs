//! Eviction: the least recently used blobs not in use go once the cache
//! is over its budget, partial blobs first.

use super::*;

impl Inner {
    /// Evicts what is not in use (partial blobs first) until `room` more
    /// bytes would fit in the budget: after the filesystem said it is full.
    pub(super) async fn evict_for(self: &Arc<Self>, store: &Arc<DiskStore>, room: u64) {
        let inner = self.clone();
        let s = store.clone();
        let target = self.options.disk_budget.saturating_sub(room);
        let done = tokio::task::spawn_blocking(move || {
            let freed = s.evict_to(target, &|d| inner.is_pinned(d));
            inner
                .disk_usage
                .store(s.usage().unwrap_or(0), Ordering::Relaxed);
            freed
        })
        .await;
        match done {
            Ok(Ok(freed)) => tracing::info!(freed, "evicted for room"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cache eviction failed"),
            Err(e) => tracing::warn!(error = %e, "cache eviction task failed"),
        }
    }

    pub(super) fn maybe_evict(self: &Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let budget = self.options.disk_budget;
        if self.disk_usage.load(Ordering::Relaxed) <= budget
            || self.evicting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        // Our own cached handles hold shared locks, which would keep the
        // evictor off every blob this process ever read: let go of those
        // not in use (they reopen on demand).
        if let Ok(mut handles) = self.handles.lock() {
            let idle: Vec<Digest> = handles
                .iter()
                .map(|(d, _)| d.clone())
                .filter(|d| !self.is_pinned(d))
                .collect();
            for d in idle {
                handles.pop(&d);
            }
        }
        let inner = self.clone();
        tokio::task::spawn_blocking(move || {
            // Down to 90%, so that eviction does not run on every chunk.
            let target = budget - budget / 10;
            match store.evict_to(target, &|d| inner.is_pinned(d)) {
                Ok(freed) => tracing::debug!(freed, "cache eviction"),
                Err(e) => tracing::warn!(error = %e, "cache eviction failed"),
            }
            inner
                .disk_usage
                .store(store.usage().unwrap_or(0), Ordering::Relaxed);
            inner.evicting.store(false, Ordering::Release);
        });
    }
}
