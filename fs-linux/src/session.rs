//! What a mount's session and its `Mount` share: the tree and reader, the
//! counters, and the replies of reads in flight, so that an unmount can
//! answer every read still waiting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fuser::{Errno, ReplyData};
use ocifs_core::{Reader, Tree};
use serde::Serialize;
use tokio::sync::watch;

/// Counters of one mount, for [`Mount::stats`](crate::Mount::stats) and
/// the [`STATS_FILE`](crate::STATS_FILE).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MountStats {
    /// `lookup` requests.
    pub lookups: u64,
    /// Successful `open`s of files (the stats file excluded).
    pub opens: u64,
    /// Of those, opens handed to the kernel with FUSE passthrough, whose
    /// reads never reach ocifs.
    pub passthrough_opens: u64,
    /// `read` requests.
    pub reads: u64,
    /// `read` requests answered with an error.
    pub read_errors: u64,
}

/// The live counters behind [`MountStats`], bumped from any session thread
/// or read task.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// [`MountStats::lookups`].
    pub(crate) lookups: AtomicU64,
    /// [`MountStats::opens`].
    pub(crate) opens: AtomicU64,
    /// [`MountStats::passthrough_opens`].
    pub(crate) passthrough_opens: AtomicU64,
    /// [`MountStats::reads`].
    pub(crate) reads: AtomicU64,
    /// [`MountStats::read_errors`].
    pub(crate) read_errors: AtomicU64,
}

impl Counters {
    /// Counts one more of `c`.
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub(crate) fn snapshot(&self) -> MountStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MountStats {
            lookups: g(&self.lookups),
            opens: g(&self.opens),
            passthrough_opens: g(&self.passthrough_opens),
            reads: g(&self.reads),
            read_errors: g(&self.read_errors),
        }
    }
}

/// What the session and its `Mount` share.
#[derive(Debug)]
pub(crate) struct State {
    /// What is mounted.
    pub(crate) tree: Arc<Tree>,
    /// Where its file bytes are read from.
    pub(crate) reader: Arc<dyn Reader>,
    /// The mount's counters.
    pub(crate) counters: Counters,
    /// Set once the mount is going away: fetches in flight stop, and reads
    /// that arrive later fail at once.
    pub(crate) cancel: watch::Sender<bool>,
    /// Replies of reads in flight. They live here, not in their tasks, so
    /// that [`State::cancel_reads`] answers them from the unmounting thread
    /// whether or not the runtime still runs the tasks.
    pub(crate) in_flight: InFlight,
    /// Set when the session has ended (`Filesystem::destroy`).
    pub(crate) ended: watch::Sender<bool>,
}

impl State {
    /// The state of a new mount of `tree`, read through `reader`: nothing
    /// counted, nothing in flight, neither cancelled nor ended.
    pub(crate) fn new(tree: Arc<Tree>, reader: Arc<dyn Reader>) -> Self {
        State {
            tree,
            reader,
            counters: Counters::default(),
            cancel: watch::Sender::new(false),
            in_flight: InFlight::default(),
            ended: watch::Sender::new(false),
        }
    }

    /// Stops serving reads: every read in flight, and every later one, is
    /// answered `EIO` now.
    pub(crate) fn cancel_reads(&self) {
        self.cancel.send_replace(true);
        let failed = self.in_flight.fail_all();
        self.counters
            .read_errors
            .fetch_add(failed as u64, Ordering::Relaxed);
        if failed > 0 {
            tracing::info!(failed, "reads in flight failed: the mount is going away");
        }
    }
}

/// The replies of reads in flight, by a private id.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    /// The id of the next read.
    next: AtomicU64,
    /// Replies not answered yet.
    replies: Mutex<HashMap<u64, ReplyData>>,
}

impl InFlight {
    /// The map of replies, locked.
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, ReplyData>> {
        // A map of replies cannot be left half-changed by a panic.
        self.replies.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `reply` until it is taken or failed; returns its id.
    fn insert(&self, reply: ReplyData) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, reply);
        id
    }

    /// The reply of read `id`, unless it was answered already.
    fn take(&self, id: u64) -> Option<ReplyData> {
        self.lock().remove(&id)
    }

    /// Answers every reply still kept with `EIO`; returns how many there
    /// were.
    fn fail_all(&self) -> usize {
        let replies: Vec<ReplyData> = self.lock().drain().map(|(_, r)| r).collect();
        let n = replies.len();
        for reply in replies {
            reply.error(Errno::EIO);
        }
        n
    }
}

/// Owned by a read's task: however the task ends (finished, cancelled,
/// dropped unpolled by a runtime shutting down), a reply still waiting is
/// answered, so the kernel never waits forever.
pub(crate) struct PendingRead {
    /// The mount the read is for, whose [`InFlight`] holds the reply.
    state: Arc<State>,
    /// The read's id in [`State::in_flight`].
    id: u64,
}

impl PendingRead {
    /// Puts `reply` in flight in `state` until the read is answered.
    pub(crate) fn new(state: Arc<State>, reply: ReplyData) -> Self {
        PendingRead {
            id: state.in_flight.insert(reply),
            state,
        }
    }

    /// The mount the read is for.
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// The reply, for the read's answer, unless the unmount answered it
    /// already.
    pub(crate) fn take_reply(&self) -> Option<ReplyData> {
        self.state.in_flight.take(self.id)
    }
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        if let Some(reply) = self.take_reply() {
            Counters::bump(&self.state.counters.read_errors);
            reply.error(Errno::EIO);
        }
    }
}
