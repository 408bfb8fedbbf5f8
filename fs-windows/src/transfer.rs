//! File data: from a `GetFileData` request to `PrjWriteFileData` calls.
//!
//! ProjFS asks for a byte range of a file and the provider must write all
//! of it before completing the request. The provider may split the range
//! into several writes, each from a buffer allocated by ProjFS to the
//! device's alignment, but then each write but the last must start and end
//! on a multiple of the device's write alignment (the last may end at the
//! end of the file). [`plan`] splits a request into such chunks of at most
//! the provider's transfer size; [`transfer`] reads each chunk through the
//! [`Reader`] and hands it to a [`Sink`] (the FFI glue's aligned buffer).
//!
//! Requests are answered asynchronously: the callback registers the
//! command with [`Commands`], starts a task and returns `ERROR_IO_PENDING`;
//! the task runs [`serve`], which stops early if ProjFS cancels the command
//! or the mount stops, and says whether and how to complete it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ocifs_core::Content;
use ocifs_core::Reader;
use tokio::sync::Notify;

use crate::hresult::{self, Hresult};

/// One write: `len` bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where it starts in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: u32,
}

/// Splits a request for `length` bytes at `offset` of a file of `size`
/// bytes into writes of at most `max_transfer` bytes, each a multiple of
/// `alignment` (0 or 1: none) except one that ends at the end of the range.
///
/// A range that runs past the end of the file is cut at the end; one that
/// starts past it is an error (`ERROR_HANDLE_EOF`): the placeholder's size
/// and the file disagree. A range that fits in one transfer is one chunk,
/// exactly as asked, which needs no alignment.
pub fn plan(
    offset: u64,
    length: u32,
    size: u64,
    max_transfer: u32,
    alignment: u32,
) -> Result<Vec<Chunk>, Hresult> {
    if length == 0 {
        return Ok(Vec::new());
    }
    if offset >= size {
        return Err(hresult::HANDLE_EOF);
    }
    let end = offset.saturating_add(u64::from(length)).min(size);
    let max = u64::from(max_transfer.max(1));
    if end - offset <= max {
        return Ok(vec![chunk(offset, end)]);
    }
    let align = u64::from(alignment.max(1));
    // A step of whole alignment units, never less than one unit.
    let step = (max / align).max(1) * align;
    let mut chunks = Vec::new();
    let mut start = offset;
    while start < end {
        // Ends on an alignment boundary, so the next chunk starts on one even
        // if ProjFS's offset did not.
        let mut stop = (start + step) / align * align;
        if stop <= start {
            stop = start + step;
        }
        let stop = stop.min(end);
        chunks.push(chunk(start, stop));
        start = stop;
    }
    Ok(chunks)
}

fn chunk(start: u64, stop: u64) -> Chunk {
    Chunk {
        offset: start,
        // Callers keep chunks within a u32 request.
        len: u32::try_from(stop - start).unwrap_or(u32::MAX),
    }
}

/// Where file data goes: on Windows, a ProjFS aligned buffer and
/// `PrjWriteFileData`.
pub trait Sink: Send {
    /// Writes `data` at `offset` of the file; `data` is one [`Chunk`].
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Hresult>;
}

/// Reads each chunk of `content` through `reader` and writes it to `sink`,
/// in order. A reader error is mapped with [`hresult::of_error`]; a short
/// answer is `ERROR_HANDLE_EOF`.
pub async fn transfer(
    reader: &dyn Reader,
    content: &Content,
    chunks: &[Chunk],
    sink: &mut dyn Sink,
) -> Result<(), Hresult> {
    for c in chunks {
        let bytes = reader
            .read(content, c.offset, u64::from(c.len))
            .await
            .map_err(|e| {
                tracing::warn!(offset = c.offset, len = c.len, error = %e, "file data read failed");
                hresult::of_error(&e)
            })?;
        if bytes.len() != c.len as usize {
            tracing::warn!(
                offset = c.offset,
                len = c.len,
                got = bytes.len(),
                "file data read came back short"
            );
            return Err(hresult::HANDLE_EOF);
        }
        sink.write(c.offset, &bytes)?;
    }
    Ok(())
}

/// Serves one file-data command: [`transfer`], unless the command is
/// cancelled first. Returns the result to complete the command with, or
/// `None` when ProjFS cancelled it (a cancelled command is not completed).
pub async fn serve(
    reader: &dyn Reader,
    content: &Content,
    chunks: &[Chunk],
    sink: &mut dyn Sink,
    pending: &Pending,
) -> Option<Hresult> {
    let result = tokio::select! {
        r = transfer(reader, content, chunks, sink) => r,
        () = pending.cancelled() => Err(hresult::OPERATION_ABORTED),
    };
    pending
        .should_complete()
        .then_some(result.err().unwrap_or(hresult::S_OK))
}

const LIVE: u8 = 0;
const CANCELLED_BY_PROJFS: u8 = 1;
const STOPPING: u8 = 2;

#[derive(Debug)]
struct Ticket {
    cancel: Notify,
    state: AtomicU8,
}

#[derive(Debug, Default)]
struct State {
    stopping: bool,
    live: HashMap<i32, Arc<Ticket>>,
}

/// The file-data commands in flight, so that ProjFS can cancel one and a
/// stopping mount can end them all before it stops virtualizing.
#[derive(Debug, Default)]
pub struct Commands {
    state: Mutex<State>,
    idle: Condvar,
}

impl Commands {
    /// Registers command `id`; `None` once the mount is stopping.
    pub fn begin(self: &Arc<Self>, id: i32) -> Option<Pending> {
        let mut state = self.state.lock().ok()?;
        if state.stopping {
            return None;
        }
        let ticket = Arc::new(Ticket {
            cancel: Notify::new(),
            state: AtomicU8::new(LIVE),
        });
        state.live.insert(id, ticket.clone());
        Some(Pending {
            id,
            ticket,
            commands: self.clone(),
        })
    }

    /// ProjFS cancelled command `id` (its I/O was cancelled): stop it and
    /// do not complete it. Unknown ids (already finished) are ignored.
    pub fn cancel(&self, id: i32) {
        let ticket = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.live.get(&id).cloned());
        if let Some(t) = ticket {
            let _ = t.state.compare_exchange(
                LIVE,
                CANCELLED_BY_PROJFS,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            t.cancel.notify_one();
        }
    }

    /// Refuses new commands and ends the ones in flight, which complete with
    /// `ERROR_OPERATION_ABORTED`.
    pub fn stop(&self) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        state.stopping = true;
        for t in state.live.values() {
            let _ = t
                .state
                .compare_exchange(LIVE, STOPPING, Ordering::SeqCst, Ordering::SeqCst);
            t.cancel.notify_one();
        }
    }

    /// Waits until no command is in flight, for at most `timeout`; whether
    /// none is. Blocks the thread.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while !state.live.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            match self.idle.wait_timeout(state, deadline - now) {
                Ok((s, _)) => state = s,
                Err(_) => return false,
            }
        }
        true
    }

    /// The number of commands in flight.
    pub fn in_flight(&self) -> usize {
        self.state.lock().map_or(0, |s| s.live.len())
    }
}

/// A registered command. Dropping it unregisters the command.
#[derive(Debug)]
pub struct Pending {
    id: i32,
    ticket: Arc<Ticket>,
    commands: Arc<Commands>,
}

impl Pending {
    /// The ProjFS command id.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// Resolves when the command is cancelled or the mount stops.
    pub async fn cancelled(&self) {
        self.ticket.cancel.notified().await;
    }

    /// Whether the command must be completed: always, unless ProjFS
    /// cancelled it.
    pub fn should_complete(&self) -> bool {
        self.ticket.state.load(Ordering::SeqCst) != CANCELLED_BY_PROJFS
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut state) = self.commands.state.lock() {
            if state
                .live
                .get(&self.id)
                .is_some_and(|t| Arc::ptr_eq(t, &self.ticket))
            {
                state.live.remove(&self.id);
            }
            if state.live.is_empty() {
                self.commands.idle.notify_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ocifs_core::{Error, Tree};

    use super::*;
    use crate::projection::file_content;
    use crate::testutil::{self, MemReader};

    const MIB: u32 = 1 << 20;

    fn lens(chunks: &[Chunk]) -> Vec<(u64, u32)> {
        chunks.iter().map(|c| (c.offset, c.len)).collect()
    }

    #[test]
    fn a_small_request_is_one_chunk_exactly_as_asked() {
        assert_eq!(
            lens(&plan(4096, 8192, 1 << 30, MIB, 4096).unwrap()),
            vec![(4096, 8192)]
        );
        // Unaligned is fine in one write.
        assert_eq!(lens(&plan(10, 7, 100, MIB, 512).unwrap()), vec![(10, 7)]);
    }

    #[test]
    fn a_request_past_the_end_of_file_is_cut_there() {
        assert_eq!(
            lens(&plan(0, 65536, 1000, MIB, 4096).unwrap()),
            vec![(0, 1000)]
        );
        assert_eq!(
            lens(&plan(4096, 65536, 5000, MIB, 4096).unwrap()),
            vec![(4096, 904)]
        );
    }

    #[test]
    fn a_request_at_or_after_the_end_of_file_is_refused_unless_empty() {
        assert_eq!(plan(1000, 10, 1000, MIB, 4096), Err(hresult::HANDLE_EOF));
        assert_eq!(plan(5000, 10, 1000, MIB, 4096), Err(hresult::HANDLE_EOF));
        assert_eq!(plan(5000, 0, 1000, MIB, 4096), Ok(Vec::new()));
    }

    #[test]
    fn the_docs_example_of_10_mib_in_1_mib_writes() {
        let chunks = plan(0, 10 * MIB, 10 << 20, MIB, 4096).unwrap();
        assert_eq!(chunks.len(), 10);
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.offset, c.len), (i as u64 * u64::from(MIB), MIB));
        }
    }

    #[test]
    fn chunks_are_aligned_and_the_last_may_end_at_end_of_file() {
        // 2.5 MiB + 100 bytes file, whole file asked, 1 MiB transfers, 4 KiB alignment.
        let size = 2 * u64::from(MIB) + u64::from(MIB) / 2 + 100;
        let chunks = plan(0, size as u32, size, MIB, 4096).unwrap();
        assert_eq!(
            lens(&chunks),
            vec![
                (0, MIB),
                (u64::from(MIB), MIB),
                (2 * u64::from(MIB), MIB / 2 + 100)
            ]
        );
        // A transfer size that is not a multiple of the alignment is rounded down.
        let chunks = plan(0, 10_000, 10_000, 5000, 4096).unwrap();
        assert_eq!(lens(&chunks), vec![(0, 4096), (4096, 4096), (8192, 1808)]);
        // An alignment larger than the transfer size wins: one unit per write.
        let chunks = plan(0, 16384, 16384, 1000, 4096).unwrap();
        assert_eq!(
            lens(&chunks),
            vec![(0, 4096), (4096, 4096), (8192, 4096), (12288, 4096)]
        );
    }

    #[test]
    fn every_plan_covers_the_range_once_with_aligned_inner_boundaries() {
        for (offset, length, size, max, align) in [
            (0u64, 3 * MIB + 17, 1u64 << 32, MIB, 4096u32),
            (8192, 5 * MIB, 1 << 32, MIB + 3, 512),
            (4096, 70_000, 60_000, 4096, 4096),
            (0, 1_000_000, 1_000_000, 65536, 0),
            (12_345, 200_000, 1 << 20, 65536, 4096), // an unaligned start
        ] {
            let chunks = plan(offset, length, size, max, align).unwrap();
            let end = (offset + u64::from(length)).min(size);
            let mut at = offset;
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(c.offset, at, "contiguous");
                assert!(c.len > 0 && c.len <= max.max(align), "size {c:?}");
                at += u64::from(c.len);
                if i + 1 < chunks.len() && align > 1 {
                    assert_eq!(at % u64::from(align), 0, "aligned boundary {c:?}");
                }
            }
            assert_eq!(at, end, "covers {offset}+{length} of {size}");
        }
    }

    #[derive(Default)]
    struct VecSink {
        writes: Vec<(u64, Vec<u8>)>,
        fail_at: Option<usize>,
    }

    impl Sink for VecSink {
        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Hresult> {
            if self.fail_at == Some(self.writes.len()) {
                return Err(hresult::OUT_OF_MEMORY);
            }
            self.writes.push((offset, data.to_vec()));
            Ok(())
        }
    }

    fn blob(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn content_of(tree: &Tree, path: &str) -> Content {
        file_content(tree, tree.resolve_path(path).unwrap())
            .cloned()
            .unwrap()
    }

    #[tokio::test]
    async fn transfer_writes_each_chunk_from_the_reader() {
        let body = blob(10_000);
        let tree = testutil::tree(&[("f", &body)]);
        let reader = MemReader::new(&[&body]);
        let content = content_of(&tree, "f");
        let chunks = plan(0, 10_000, 10_000, 4096, 4096).unwrap();
        let mut sink = VecSink::default();
        transfer(&reader, &content, &chunks, &mut sink)
            .await
            .unwrap();
        let offsets: Vec<u64> = sink.writes.iter().map(|w| w.0).collect();
        assert_eq!(offsets, vec![0, 4096, 8192]);
        let joined: Vec<u8> = sink.writes.into_iter().flat_map(|w| w.1).collect();
        assert_eq!(joined, body);
        assert_eq!(reader.reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn reader_errors_short_reads_and_sink_errors_fail_the_transfer() {
        let body = blob(100);
        let tree = testutil::tree(&[("f", &body)]);
        let content = content_of(&tree, "f");
        let chunks = plan(0, 100, 100, 64, 0).unwrap();

        let mut failing = MemReader::new(&[&body]);
        failing.fail = Some(Error::DigestMismatch {
            what: "f".into(),
            expected: "e".into(),
            actual: "a".into(),
        });
        let r = transfer(&failing, &content, &chunks, &mut VecSink::default()).await;
        assert_eq!(r, Err(hresult::DATA_ERROR));

        let mut short = MemReader::new(&[&body]);
        short.short_by = 1;
        let r = transfer(&short, &content, &chunks, &mut VecSink::default()).await;
        assert_eq!(r, Err(hresult::HANDLE_EOF));

        let ok = MemReader::new(&[&body]);
        let mut sink = VecSink {
            fail_at: Some(1),
            ..VecSink::default()
        };
        let r = transfer(&ok, &content, &chunks, &mut sink).await;
        assert_eq!(r, Err(hresult::OUT_OF_MEMORY));
        assert_eq!(sink.writes.len(), 1);
    }

    #[tokio::test]
    async fn served_commands_complete_with_the_result() {
        let body = blob(10);
        let tree = testutil::tree(&[("f", &body)]);
        let content = content_of(&tree, "f");
        let reader = MemReader::new(&[&body]);
        let commands = Arc::new(Commands::default());
        let pending = commands.begin(7).unwrap();
        assert_eq!(commands.in_flight(), 1);
        let chunks = plan(0, 10, 10, MIB, 4096).unwrap();
        let mut sink = VecSink::default();
        let done = serve(&reader, &content, &chunks, &mut sink, &pending).await;
        assert_eq!(done, Some(hresult::S_OK));
        drop(pending);
        assert_eq!(commands.in_flight(), 0);
        assert!(commands.wait_idle(Duration::ZERO));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_cancelled_by_projfs_stops_and_is_not_completed() {
        let body = blob(10);
        let tree = testutil::tree(&[("f", &body)]);
        let content = content_of(&tree, "f");
        let mut reader = MemReader::new(&[&body]);
        reader.delay = Some(Duration::from_secs(3600));
        let reader = Arc::new(reader);
        let commands = Arc::new(Commands::default());
        let pending = commands.begin(1).unwrap();
        let task = tokio::spawn(async move {
            let chunks = plan(0, 10, 10, MIB, 4096).unwrap();
            let mut sink = VecSink::default();
            serve(&*reader, &content, &chunks, &mut sink, &pending).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        commands.cancel(1);
        let done = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done, None);
        assert_eq!(commands.in_flight(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_ends_commands_in_flight_with_an_error_and_refuses_new_ones() {
        let body = blob(10);
        let tree = testutil::tree(&[("f", &body)]);
        let content = content_of(&tree, "f");
        let mut reader = MemReader::new(&[&body]);
        reader.delay = Some(Duration::from_secs(3600));
        let reader = Arc::new(reader);
        let commands = Arc::new(Commands::default());
        let mut tasks = Vec::new();
        for id in 0..3 {
            let pending = commands.begin(id).unwrap();
            let (reader, content) = (reader.clone(), content.clone());
            tasks.push(tokio::spawn(async move {
                let chunks = plan(0, 10, 10, MIB, 4096).unwrap();
                let mut sink = VecSink::default();
                serve(&*reader, &content, &chunks, &mut sink, &pending).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        commands.stop();
        assert!(commands.begin(99).is_none());
        let waiter = commands.clone();
        let idle = tokio::task::spawn_blocking(move || waiter.wait_idle(Duration::from_secs(10)));
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(hresult::OPERATION_ABORTED));
        }
        assert!(idle.await.unwrap());
    }

    #[test]
    fn waiting_for_idle_times_out_while_a_command_is_live() {
        let commands = Arc::new(Commands::default());
        let pending = commands.begin(1).unwrap();
        assert!(!commands.wait_idle(Duration::from_millis(10)));
        drop(pending);
        assert!(commands.wait_idle(Duration::from_millis(10)));
    }

    #[test]
    fn a_reused_id_does_not_unregister_the_newer_command() {
        let commands = Arc::new(Commands::default());
        let old = commands.begin(5).unwrap();
        let new = commands.begin(5).unwrap();
        drop(old);
        assert_eq!(commands.in_flight(), 1);
        drop(new);
        assert_eq!(commands.in_flight(), 0);
        // Cancelling an id nobody holds is harmless.
        commands.cancel(5);
    }
}
