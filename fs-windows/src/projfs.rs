//! The ProjFS glue: loading `ProjectedFSLib.dll`, the callbacks ProjFS
//! calls, and the start and stop of a virtualization instance. Everything
//! these callbacks decide is in the platform-neutral modules; this file
//! converts pointers and strings and calls ProjFS.
//!
//! The functions are looked up with `GetProcAddress` instead of linked, so
//! that `ocifs.exe` starts where ProjFS is not enabled. Their types are
//! those of the `windows` crate's declarations (and `projectedfslib.h`),
//! with the crate's structs and handles.

// FFI: ProjFS is a C API reached through function pointers loaded at run
// time, and it calls back with raw pointers. Every unsafe block says why it
// is sound.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::MetadataExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use ocifs_core::{Error, Reader, Result, Tree};
use tokio::runtime::{Handle, RuntimeFlavor};
use windows::Win32::Foundation::{
    E_OUTOFMEMORY, E_UNEXPECTED, ERROR_ACCESS_DENIED, ERROR_CRC, ERROR_DIRECTORY,
    ERROR_FILE_NOT_FOUND, ERROR_HANDLE_EOF, ERROR_INSUFFICIENT_BUFFER, ERROR_INVALID_PARAMETER,
    ERROR_IO_DEVICE, ERROR_IO_PENDING, ERROR_NETWORK_UNREACHABLE, ERROR_OPERATION_ABORTED,
    ERROR_PATH_NOT_FOUND, ERROR_REPARSE_TAG_MISMATCH, ERROR_TIMEOUT,
};
use windows::Win32::Storage::FileSystem::{
    FILE_ATTRIBUTE_ARCHIVE, FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_READONLY,
    FILE_ATTRIBUTE_REPARSE_POINT,
};
use windows::Win32::Storage::ProjectedFileSystem::{
    PRJ_CALLBACK_DATA, PRJ_CALLBACKS, PRJ_CB_DATA_FLAG_ENUM_RESTART_SCAN,
    PRJ_COMPLETE_COMMAND_EXTENDED_PARAMETERS, PRJ_DIR_ENTRY_BUFFER_HANDLE, PRJ_FILE_BASIC_INFO,
    PRJ_FLAG_NONE, PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT, PRJ_NOTIFICATION,
    PRJ_NOTIFICATION_MAPPING, PRJ_NOTIFICATION_PARAMETERS, PRJ_NOTIFY_FILE_OPENED,
    PRJ_NOTIFY_FILE_OVERWRITTEN, PRJ_NOTIFY_FILE_PRE_CONVERT_TO_FULL, PRJ_NOTIFY_NEW_FILE_CREATED,
    PRJ_NOTIFY_PRE_DELETE, PRJ_NOTIFY_PRE_RENAME, PRJ_NOTIFY_PRE_SET_HARDLINK, PRJ_NOTIFY_TYPES,
    PRJ_PLACEHOLDER_INFO, PRJ_PLACEHOLDER_VERSION_INFO, PRJ_STARTVIRTUALIZING_OPTIONS,
    PRJ_UPDATE_ALLOW_DIRTY_DATA, PRJ_UPDATE_ALLOW_DIRTY_METADATA, PRJ_UPDATE_ALLOW_READ_ONLY,
    PRJ_UPDATE_ALLOW_TOMBSTONE, PRJ_UPDATE_FAILURE_CAUSES, PRJ_UPDATE_TYPES,
    PRJ_VIRTUALIZATION_INSTANCE_INFO,
};
use windows::Win32::System::LibraryLoader::{
    GetProcAddress, LOAD_LIBRARY_SEARCH_SYSTEM32, LoadLibraryExW,
};
use windows::core::{GUID, HRESULT, PCWSTR, s, w};

use crate::enumeration::{Batch, Fill, Sessions};
use crate::hresult::{self, Hresult};
use crate::projection::{self, BasicInfo, DirEntry, Listing, Projection};
use crate::transfer::{self, Commands, Sink};
use crate::{ENABLE_PROJFS, MountOptions, names, notification};

// The neutral modules spell the Windows constants out; check them here,
// where the real ones are at hand.
const _: () = {
    assert!(hresult::IO_PENDING == HRESULT::from_win32(ERROR_IO_PENDING.0).0);
    assert!(hresult::FILE_NOT_FOUND == HRESULT::from_win32(ERROR_FILE_NOT_FOUND.0).0);
    assert!(hresult::PATH_NOT_FOUND == HRESULT::from_win32(ERROR_PATH_NOT_FOUND.0).0);
    assert!(hresult::ACCESS_DENIED == HRESULT::from_win32(ERROR_ACCESS_DENIED.0).0);
    assert!(hresult::OUT_OF_MEMORY == E_OUTOFMEMORY.0);
    assert!(hresult::DATA_ERROR == HRESULT::from_win32(ERROR_CRC.0).0);
    assert!(hresult::HANDLE_EOF == HRESULT::from_win32(ERROR_HANDLE_EOF.0).0);
    assert!(hresult::INVALID_PARAMETER == HRESULT::from_win32(ERROR_INVALID_PARAMETER.0).0);
    assert!(hresult::INSUFFICIENT_BUFFER == HRESULT::from_win32(ERROR_INSUFFICIENT_BUFFER.0).0);
    assert!(hresult::DIRECTORY == HRESULT::from_win32(ERROR_DIRECTORY.0).0);
    assert!(hresult::OPERATION_ABORTED == HRESULT::from_win32(ERROR_OPERATION_ABORTED.0).0);
    assert!(hresult::IO_DEVICE == HRESULT::from_win32(ERROR_IO_DEVICE.0).0);
    assert!(hresult::NETWORK_UNREACHABLE == HRESULT::from_win32(ERROR_NETWORK_UNREACHABLE.0).0);
    assert!(hresult::TIMEOUT == HRESULT::from_win32(ERROR_TIMEOUT.0).0);
    assert!(hresult::UNEXPECTED == E_UNEXPECTED.0);
    assert!(notification::FILE_OPENED == PRJ_NOTIFY_FILE_OPENED.0);
    assert!(notification::NEW_FILE_CREATED == PRJ_NOTIFY_NEW_FILE_CREATED.0);
    assert!(notification::FILE_OVERWRITTEN == PRJ_NOTIFY_FILE_OVERWRITTEN.0);
    assert!(notification::PRE_DELETE == PRJ_NOTIFY_PRE_DELETE.0);
    assert!(notification::PRE_RENAME == PRJ_NOTIFY_PRE_RENAME.0);
    assert!(notification::PRE_SET_HARDLINK == PRJ_NOTIFY_PRE_SET_HARDLINK.0);
    assert!(notification::FILE_PRE_CONVERT_TO_FULL == PRJ_NOTIFY_FILE_PRE_CONVERT_TO_FULL.0);
    assert!(projection::FILE_ATTRIBUTE_READONLY == FILE_ATTRIBUTE_READONLY.0);
    assert!(projection::FILE_ATTRIBUTE_DIRECTORY == FILE_ATTRIBUTE_DIRECTORY.0);
    assert!(projection::FILE_ATTRIBUTE_ARCHIVE == FILE_ATTRIBUTE_ARCHIVE.0);
};

/// How long a stopping mount waits for reads in flight to end.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn not_enabled() -> String {
    format!(
        "the Windows Projected File System (ProjFS) is not enabled on this machine; \
         enable it in an elevated PowerShell with `{ENABLE_PROJFS}` (a reboot may be needed)"
    )
}

// The ProjFS functions, as `projectedfslib.h` and the `windows` crate declare them.
type MarkDirectoryAsPlaceholderFn = unsafe extern "system" fn(
    PCWSTR,
    PCWSTR,
    *const PRJ_PLACEHOLDER_VERSION_INFO,
    *const GUID,
) -> HRESULT;
type StartVirtualizingFn = unsafe extern "system" fn(
    PCWSTR,
    *const PRJ_CALLBACKS,
    *const c_void,
    *const PRJ_STARTVIRTUALIZING_OPTIONS,
    *mut PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
) -> HRESULT;
type StopVirtualizingFn = unsafe extern "system" fn(PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT);
type GetVirtualizationInstanceInfoFn = unsafe extern "system" fn(
    PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
    *mut PRJ_VIRTUALIZATION_INSTANCE_INFO,
) -> HRESULT;
type FillDirEntryBufferFn = unsafe extern "system" fn(
    PCWSTR,
    *const PRJ_FILE_BASIC_INFO,
    PRJ_DIR_ENTRY_BUFFER_HANDLE,
) -> HRESULT;
type WritePlaceholderInfoFn = unsafe extern "system" fn(
    PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
    PCWSTR,
    *const PRJ_PLACEHOLDER_INFO,
    u32,
) -> HRESULT;
type AllocateAlignedBufferFn =
    unsafe extern "system" fn(PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT, usize) -> *mut c_void;
type FreeAlignedBufferFn = unsafe extern "system" fn(*const c_void);
type WriteFileDataFn = unsafe extern "system" fn(
    PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
    *const GUID,
    *const c_void,
    u64,
    u32,
) -> HRESULT;
type CompleteCommandFn = unsafe extern "system" fn(
    PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
    i32,
    HRESULT,
    *const PRJ_COMPLETE_COMMAND_EXTENDED_PARAMETERS,
) -> HRESULT;
type DeleteFileFn = unsafe extern "system" fn(
    PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT,
    PCWSTR,
    PRJ_UPDATE_TYPES,
    *mut PRJ_UPDATE_FAILURE_CAUSES,
) -> HRESULT;

/// The entry points of `ProjectedFSLib.dll`.
#[derive(Clone, Copy)]
struct Api {
    mark_directory_as_placeholder: MarkDirectoryAsPlaceholderFn,
    start_virtualizing: StartVirtualizingFn,
    stop_virtualizing: StopVirtualizingFn,
    get_virtualization_instance_info: GetVirtualizationInstanceInfoFn,
    fill_dir_entry_buffer: FillDirEntryBufferFn,
    write_placeholder_info: WritePlaceholderInfoFn,
    allocate_aligned_buffer: AllocateAlignedBufferFn,
    free_aligned_buffer: FreeAlignedBufferFn,
    write_file_data: WriteFileDataFn,
    complete_command: CompleteCommandFn,
    delete_file: DeleteFileFn,
}

static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

/// The ProjFS functions, loaded once per process.
fn api() -> Result<&'static Api> {
    API.get_or_init(load).as_ref().map_err(|detail| {
        Error::io(
            "cannot use the Windows Projected File System",
            io::Error::new(io::ErrorKind::Unsupported, detail.clone()),
        )
    })
}

fn load() -> std::result::Result<Api, String> {
    // SAFETY: a constant NUL-terminated name, searched for in System32 only
    // (never the current directory). The module is never freed, so the
    // function pointers taken from it stay valid for the life of the process.
    let module =
        unsafe { LoadLibraryExW(w!("ProjectedFSLib.dll"), None, LOAD_LIBRARY_SEARCH_SYSTEM32) }
            .map_err(|e| format!("{} (ProjectedFSLib.dll: {e})", not_enabled()))?;
    macro_rules! entry {
        ($name:literal, $ty:ty) => {{
            // SAFETY: `module` is loaded and never freed; the name is a
            // NUL-terminated literal.
            let f = unsafe { GetProcAddress(module, s!($name)) }.ok_or_else(|| {
                format!(
                    "ProjectedFSLib.dll has no {}: ocifs needs Windows 10 1809 or later",
                    $name
                )
            })?;
            // SAFETY: the symbol is the documented ProjFS function, whose
            // signature is `$ty`; both are `extern "system"` function pointers.
            unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, $ty>(f) }
        }};
    }
    Ok(Api {
        mark_directory_as_placeholder: entry!(
            "PrjMarkDirectoryAsPlaceholder",
            MarkDirectoryAsPlaceholderFn
        ),
        start_virtualizing: entry!("PrjStartVirtualizing", StartVirtualizingFn),
        stop_virtualizing: entry!("PrjStopVirtualizing", StopVirtualizingFn),
        get_virtualization_instance_info: entry!(
            "PrjGetVirtualizationInstanceInfo",
            GetVirtualizationInstanceInfoFn
        ),
        fill_dir_entry_buffer: entry!("PrjFillDirEntryBuffer", FillDirEntryBufferFn),
        write_placeholder_info: entry!("PrjWritePlaceholderInfo", WritePlaceholderInfoFn),
        allocate_aligned_buffer: entry!("PrjAllocateAlignedBuffer", AllocateAlignedBufferFn),
        free_aligned_buffer: entry!("PrjFreeAlignedBuffer", FreeAlignedBufferFn),
        write_file_data: entry!("PrjWriteFileData", WriteFileDataFn),
        complete_command: entry!("PrjCompleteCommand", CompleteCommandFn),
        delete_file: entry!("PrjDeleteFile", DeleteFileFn),
    })
}

/// A namespace virtualization context, shared with the tasks that complete
/// file-data commands.
#[derive(Clone, Copy)]
struct Context(PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT);

// SAFETY: the context is an opaque handle that ProjFS lets any thread use
// until PrjStopVirtualizing; `Shared::live` keeps every use before that call.
unsafe impl Send for Context {}
// SAFETY: as above; the handle is never dereferenced here.
unsafe impl Sync for Context {}

/// What the callbacks share: the projection and the requests in flight.
struct Shared {
    /// Itself, for the tasks that complete file-data commands.
    me: Weak<Shared>,
    api: &'static Api,
    projection: Projection,
    sessions: Sessions,
    commands: Arc<Commands>,
    reader: Arc<dyn Reader>,
    runtime: Handle,
    max_transfer: u32,
    alignment: AtomicU32,
    /// Set while the provider removes what ProjFS cached in the root: the
    /// projection is then empty and deletes are allowed.
    cleaning: AtomicBool,
    /// Whether the context may be used. Tasks check it, holding the read
    /// lock, around every ProjFS call; stop clears it under the write lock
    /// before PrjStopVirtualizing.
    live: RwLock<bool>,
    empty: Arc<Listing>,
}

impl Shared {
    /// The one place a failed lookup is logged and turned into an HRESULT.
    fn fail(&self, op: &str, path: &str, error: &Error) -> Hresult {
        let hr = hresult::of_error(error);
        if hr == hresult::FILE_NOT_FOUND || hr == hresult::PATH_NOT_FOUND {
            tracing::trace!(op, path, "not in the artifact");
        } else {
            tracing::warn!(op, path, error = %error, hresult = format_args!("{hr:#010x}"), "request failed");
        }
        hr
    }

    fn cleaning(&self) -> bool {
        self.cleaning.load(Ordering::SeqCst)
    }

    fn start_enumeration(&self, id: u128, path: &str) -> Hresult {
        let listing = if self.cleaning() {
            self.empty.clone()
        } else {
            let dir = match self.projection.resolve(path) {
                Ok(r) => r.ino,
                Err(e) => return self.fail("start enumeration", path, &e),
            };
            match self.projection.listing(dir) {
                Some(l) => l.clone(),
                None => return hresult::DIRECTORY,
            }
        };
        self.sessions.start(id, listing);
        hresult::S_OK
    }

    fn get_enumeration(
        &self,
        id: u128,
        search: Option<&str>,
        restart: bool,
        buffer: PRJ_DIR_ENTRY_BUFFER_HANDLE,
    ) -> Hresult {
        let Some(session) = self.sessions.get(id) else {
            return hresult::INVALID_PARAMETER;
        };
        let Ok(mut session) = session.lock() else {
            return hresult::UNEXPECTED;
        };
        let mut failure = None;
        let batch = session.next_batch(search, restart, |entry: &DirEntry| {
            let info = basic_info(&entry.info);
            // SAFETY: the name is NUL-terminated UTF-16 and `info` outlives
            // the call; the buffer handle is the one ProjFS passed to the
            // callback that is running.
            let hr = unsafe {
                (self.api.fill_dir_entry_buffer)(PCWSTR(entry.wide.as_ptr()), &info, buffer)
            };
            if hr.is_ok() {
                Fill::Added
            } else {
                if hr.0 != hresult::INSUFFICIENT_BUFFER {
                    failure = Some(hr.0);
                }
                Fill::Full
            }
        });
        match (failure, batch) {
            (Some(hr), _) => hr,
            (None, Batch::TooSmall) => hresult::INSUFFICIENT_BUFFER,
            (None, Batch::Filled(_)) => hresult::S_OK,
        }
    }

    fn placeholder_info(&self, ctx: PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT, path: &str) -> Hresult {
        if self.cleaning() {
            return hresult::FILE_NOT_FOUND;
        }
        let resolved = match self.projection.resolve(path) {
            Ok(r) => r,
            Err(e) => return self.fail("placeholder info", path, &e),
        };
        let Some(info) = self.projection.info(resolved.ino) else {
            return hresult::FILE_NOT_FOUND;
        };
        let placeholder = PRJ_PLACEHOLDER_INFO {
            FileBasicInfo: basic_info(&info),
            ..PRJ_PLACEHOLDER_INFO::default()
        };
        // The placeholder gets the artifact's spelling, whatever case was asked.
        let name = names::to_wide_nul(&resolved.path);
        // SAFETY: the context is the running callback's; the name is
        // NUL-terminated; `placeholder` is a whole PRJ_PLACEHOLDER_INFO of the
        // size given, with no variable data after it.
        let hr = unsafe {
            (self.api.write_placeholder_info)(
                ctx,
                PCWSTR(name.as_ptr()),
                &placeholder,
                size_of::<PRJ_PLACEHOLDER_INFO>() as u32,
            )
        };
        if hr.is_err() {
            tracing::warn!(path, hresult = %hr, "PrjWritePlaceholderInfo failed");
        }
        hr.0
    }

    fn file_data(&self, data: &PRJ_CALLBACK_DATA, path: &str, offset: u64, length: u32) -> Hresult {
        if self.cleaning() {
            return hresult::OPERATION_ABORTED;
        }
        let resolved = match self.projection.resolve(path) {
            Ok(r) => r,
            Err(e) => return self.fail("file data", path, &e),
        };
        let Some(content) = projection::file_content(self.projection.tree(), resolved.ino).cloned()
        else {
            return hresult::ACCESS_DENIED;
        };
        let alignment = self.alignment.load(Ordering::Relaxed);
        let chunks =
            match transfer::plan(offset, length, content.size(), self.max_transfer, alignment) {
                Ok(c) if c.is_empty() => return hresult::S_OK,
                Ok(c) => c,
                Err(hr) => {
                    tracing::warn!(
                        path,
                        offset,
                        length,
                        size = content.size(),
                        "file data beyond the end of the file"
                    );
                    return hr;
                }
            };
        let Some(shared) = self.me.upgrade() else {
            return hresult::OPERATION_ABORTED;
        };
        let Some(pending) = self.commands.begin(data.CommandId) else {
            return hresult::OPERATION_ABORTED;
        };
        let ctx = Context(data.NamespaceVirtualizationContext);
        let capacity = chunks.iter().map(|c| c.len as usize).max().unwrap_or(0);
        let mut sink = AlignedSink {
            shared: shared.clone(),
            ctx,
            stream: data.DataStreamId,
            capacity,
            buffer: None,
        };
        let path = path.to_owned();
        self.runtime.spawn(async move {
            let done =
                transfer::serve(&*shared.reader, &content, &chunks, &mut sink, &pending).await;
            drop(sink);
            if let Some(hr) = done {
                if hr != hresult::S_OK {
                    tracing::debug!(
                        path,
                        offset,
                        length,
                        hresult = format_args!("{hr:#010x}"),
                        "file data failed"
                    );
                }
                shared.complete(ctx, pending.id(), hr);
            }
        });
        hresult::IO_PENDING
    }

    /// Completes a file-data command that returned `ERROR_IO_PENDING`.
    fn complete(&self, ctx: Context, command: i32, hr: Hresult) {
        let Ok(live) = self.live.read() else { return };
        if !*live {
            return;
        }
        // SAFETY: the context is live (checked under the lock stop takes
        // before PrjStopVirtualizing); the command pended; file-data
        // completions take no extended parameters.
        let r =
            unsafe { (self.api.complete_command)(ctx.0, command, HRESULT(hr), std::ptr::null()) };
        if r.is_err() {
            tracing::debug!(command, hresult = %r, "PrjCompleteCommand failed");
        }
    }
}

fn basic_info(info: &BasicInfo) -> PRJ_FILE_BASIC_INFO {
    PRJ_FILE_BASIC_INFO {
        IsDirectory: info.is_dir,
        FileSize: i64::try_from(info.size).unwrap_or(i64::MAX),
        CreationTime: info.time,
        LastAccessTime: info.time,
        LastWriteTime: info.time,
        ChangeTime: info.time,
        FileAttributes: info.attributes,
    }
}

/// A ProjFS-aligned buffer, owned by one file-data task.
struct AlignedBuffer {
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by the one task that holds it.
unsafe impl Send for AlignedBuffer {}

/// Writes file data through one aligned buffer, reused for every chunk.
struct AlignedSink {
    shared: Arc<Shared>,
    ctx: Context,
    stream: GUID,
    capacity: usize,
    buffer: Option<AlignedBuffer>,
}

impl Sink for AlignedSink {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::result::Result<(), Hresult> {
        let api = self.shared.api;
        let live = self.shared.live.read().map_err(|_| hresult::UNEXPECTED)?;
        if !*live {
            return Err(hresult::OPERATION_ABORTED);
        }
        if self.buffer.as_ref().is_none_or(|b| b.len < data.len()) {
            let len = self.capacity.max(data.len());
            // SAFETY: the context is live (checked above, under the lock).
            let ptr = unsafe { (api.allocate_aligned_buffer)(self.ctx.0, len) };
            if ptr.is_null() {
                return Err(hresult::OUT_OF_MEMORY);
            }
            if let Some(old) = self.buffer.replace(AlignedBuffer { ptr, len }) {
                // SAFETY: allocated by PrjAllocateAlignedBuffer and no longer used.
                unsafe { (api.free_aligned_buffer)(old.ptr) };
            }
        }
        let Some(buffer) = &self.buffer else {
            return Err(hresult::UNEXPECTED);
        };
        // SAFETY: the buffer holds at least `data.len()` bytes and is ours
        // alone; `data` is a separate allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), buffer.ptr.cast::<u8>(), data.len())
        };
        // SAFETY: a live context, the data stream of the request, and an
        // aligned buffer holding `data.len()` bytes (a chunk, under 4 GiB).
        let hr = unsafe {
            (api.write_file_data)(
                self.ctx.0,
                &self.stream,
                buffer.ptr,
                offset,
                data.len() as u32,
            )
        };
        if hr.is_ok() { Ok(()) } else { Err(hr.0) }
    }
}

impl Drop for AlignedSink {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        // After PrjStopVirtualizing the buffer is left to ProjFS.
        if self.shared.live.read().is_ok_and(|live| *live) {
            // SAFETY: allocated by PrjAllocateAlignedBuffer, freed once.
            unsafe { (self.shared.api.free_aligned_buffer)(buffer.ptr) };
        }
    }
}

/// Runs a callback body. A panic becomes `E_UNEXPECTED`: unwinding out of
/// an `extern "system"` function would abort the process.
fn guarded(body: impl FnOnce() -> Hresult) -> HRESULT {
    HRESULT(catch_unwind(AssertUnwindSafe(body)).unwrap_or(hresult::UNEXPECTED))
}

/// The callback data of the running callback, and the provider state.
///
/// # Safety
///
/// `data` must be the pointer ProjFS passed to the running callback.
unsafe fn callback_data<'a>(
    data: *const PRJ_CALLBACK_DATA,
) -> Option<(&'a PRJ_CALLBACK_DATA, &'a Shared)> {
    // SAFETY: ProjFS's callback data is valid until the callback returns,
    // and its InstanceContext is the `Shared` given to PrjStartVirtualizing,
    // which the Instance keeps alive (in an Arc, so it does not move) until
    // PrjStopVirtualizing has returned.
    unsafe {
        let data = data.as_ref()?;
        let shared = data
            .InstanceContext
            .cast::<Shared>()
            .cast_const()
            .as_ref()?;
        Some((data, shared))
    }
}

/// A string ProjFS passed to the running callback.
///
/// # Safety
///
/// `s` must be null or NUL-terminated UTF-16 valid for the callback.
unsafe fn string(s: PCWSTR) -> Option<String> {
    if s.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    Some(String::from_utf16_lossy(unsafe { s.as_wide() }))
}

unsafe extern "system" fn start_enumeration_cb(
    data: *const PRJ_CALLBACK_DATA,
    id: *const GUID,
) -> HRESULT {
    guarded(|| {
        // SAFETY: ProjFS calls this with its callback data and a valid
        // enumeration id, both living until the callback returns.
        let (Some((data, shared)), Some(id)) =
            (unsafe { callback_data(data) }, unsafe { id.as_ref() })
        else {
            return hresult::INVALID_PARAMETER;
        };
        // SAFETY: FilePathName is a NUL-terminated string of the callback.
        let path = unsafe { string(data.FilePathName) }.unwrap_or_default();
        shared.start_enumeration(id.to_u128(), &path)
    })
}

unsafe extern "system" fn get_enumeration_cb(
    data: *const PRJ_CALLBACK_DATA,
    id: *const GUID,
    search: PCWSTR,
    buffer: PRJ_DIR_ENTRY_BUFFER_HANDLE,
) -> HRESULT {
    guarded(|| {
        // SAFETY: as in `start_enumeration_cb`.
        let (Some((data, shared)), Some(id)) =
            (unsafe { callback_data(data) }, unsafe { id.as_ref() })
        else {
            return hresult::INVALID_PARAMETER;
        };
        // SAFETY: the search expression is null or a NUL-terminated string
        // of the callback.
        let search = unsafe { string(search) };
        let restart = data.Flags.0 & PRJ_CB_DATA_FLAG_ENUM_RESTART_SCAN.0 != 0;
        shared.get_enumeration(id.to_u128(), search.as_deref(), restart, buffer)
    })
}

unsafe extern "system" fn end_enumeration_cb(
    data: *const PRJ_CALLBACK_DATA,
    id: *const GUID,
) -> HRESULT {
    guarded(|| {
        // SAFETY: as in `start_enumeration_cb`.
        let (Some((_, shared)), Some(id)) =
            (unsafe { callback_data(data) }, unsafe { id.as_ref() })
        else {
            return hresult::INVALID_PARAMETER;
        };
        shared.sessions.end(id.to_u128());
        hresult::S_OK
    })
}

unsafe extern "system" fn placeholder_info_cb(data: *const PRJ_CALLBACK_DATA) -> HRESULT {
    guarded(|| {
        // SAFETY: ProjFS calls this with its callback data.
        let Some((data, shared)) = (unsafe { callback_data(data) }) else {
            return hresult::INVALID_PARAMETER;
        };
        // SAFETY: FilePathName is a NUL-terminated string of the callback.
        let path = unsafe { string(data.FilePathName) }.unwrap_or_default();
        shared.placeholder_info(data.NamespaceVirtualizationContext, &path)
    })
}

unsafe extern "system" fn file_data_cb(
    data: *const PRJ_CALLBACK_DATA,
    offset: u64,
    length: u32,
) -> HRESULT {
    guarded(|| {
        // SAFETY: ProjFS calls this with its callback data.
        let Some((data, shared)) = (unsafe { callback_data(data) }) else {
            return hresult::INVALID_PARAMETER;
        };
        // SAFETY: FilePathName is a NUL-terminated string of the callback.
        let path = unsafe { string(data.FilePathName) }.unwrap_or_default();
        shared.file_data(data, &path, offset, length)
    })
}

unsafe extern "system" fn notification_cb(
    data: *const PRJ_CALLBACK_DATA,
    _is_directory: bool,
    kind: PRJ_NOTIFICATION,
    _destination: PCWSTR,
    _parameters: *mut PRJ_NOTIFICATION_PARAMETERS,
) -> HRESULT {
    guarded(|| {
        // SAFETY: ProjFS calls this with its callback data.
        let callback = unsafe { callback_data(data) };
        let cleaning = callback.is_some_and(|(_, shared)| shared.cleaning());
        let verdict = notification::verdict(kind.0 as u32, cleaning);
        if verdict != hresult::S_OK
            && let Some((data, _)) = callback
        {
            // SAFETY: FilePathName is a NUL-terminated string of the callback.
            let path = unsafe { string(data.FilePathName) }.unwrap_or_default();
            tracing::debug!(
                path,
                notification = kind.0,
                "refused: the mount is read-only"
            );
        }
        verdict
    })
}

unsafe extern "system" fn cancel_cb(data: *const PRJ_CALLBACK_DATA) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ProjFS calls this with its callback data.
        if let Some((data, shared)) = unsafe { callback_data(data) } {
            shared.commands.cancel(data.CommandId);
        }
    }));
}

/// The UTF-16, NUL-terminated form of a path.
fn wide(path: &Path) -> Vec<u16> {
    path.as_os_str()
        .encode_wide()
        .chain(std::iter::once(0))
        .collect()
}

fn mount_error(root: &Path, detail: impl Into<String>) -> Error {
    Error::io(
        format!("cannot mount on {}", root.display()),
        io::Error::other(detail.into()),
    )
}

/// Gets `root` ready to be a virtualization root. Returns whether it is
/// one already (from an earlier mount), whose leftovers must be removed.
fn prepare_root(api: &Api, root: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(root)
                .map_err(|e| Error::io(format!("cannot create {}", root.display()), e))?;
            mark_root(api, root)?;
            Ok(false)
        }
        Err(e) => Err(Error::io(format!("cannot mount on {}", root.display()), e)),
        // A reparse point: an earlier mount's root, or PrjStartVirtualizing
        // says it is something else.
        Ok(m) if m.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT.0 != 0 => Ok(true),
        Ok(m) if !m.is_dir() => Err(mount_error(root, "it is not a directory")),
        Ok(_) => {
            let mut entries = std::fs::read_dir(root)
                .map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?;
            if entries.next().is_some() {
                return Err(mount_error(
                    root,
                    "the directory is not empty; mount on a new or empty directory",
                ));
            }
            mark_root(api, root)?;
            Ok(false)
        }
    }
}

fn mark_root(api: &Api, root: &Path) -> Result<()> {
    let id = GUID::new().map_err(|e| mount_error(root, format!("cannot create a GUID: {e}")))?;
    let path = wide(root);
    // SAFETY: a NUL-terminated path; a null target designates the root
    // itself; no version information; `id` outlives the call.
    let hr = unsafe {
        (api.mark_directory_as_placeholder)(
            PCWSTR(path.as_ptr()),
            PCWSTR::null(),
            std::ptr::null(),
            &id,
        )
    };
    if hr.is_err() {
        return Err(mount_error(
            root,
            format!(
                "cannot make it a ProjFS virtualization root: {} ({:#010x}); is ProjFS enabled? (`{ENABLE_PROJFS}`)",
                hr.message(),
                hr.0
            ),
        ));
    }
    Ok(())
}

/// Runs blocking work; inside a multi-threaded tokio runtime, without
/// starving its other tasks (which stop is waiting for).
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// A started virtualization instance.
pub(crate) struct Instance {
    /// Also the instance context ProjFS passes back to every callback, so
    /// it lives (and stays put) until stop.
    shared: Arc<Shared>,
    /// Kept (with the notification root) for as long as ProjFS may read them.
    _callbacks: Box<PRJ_CALLBACKS>,
    _notification_root: Box<[u16]>,
    ctx: Context,
    root: PathBuf,
    stopped: bool,
}

impl Instance {
    pub(crate) fn start(
        tree: Arc<Tree>,
        reader: Arc<dyn Reader>,
        root: &Path,
        options: &MountOptions,
        runtime: Handle,
    ) -> Result<Self> {
        let api = api()?;
        let root = std::path::absolute(root)
            .map_err(|e| Error::io(format!("cannot mount on {}", root.display()), e))?;
        let leftovers = prepare_root(api, &root)?;
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            api,
            projection: Projection::new(tree),
            sessions: Sessions::default(),
            commands: Arc::new(Commands::default()),
            reader,
            runtime,
            max_transfer: options.max_transfer.max(4096),
            // Until ProjFS reports the device's, a multiple of every usual
            // sector size.
            alignment: AtomicU32::new(4096),
            cleaning: AtomicBool::new(leftovers),
            live: RwLock::new(true),
            empty: Arc::new(Listing::default()),
        });
        let callbacks = Box::new(PRJ_CALLBACKS {
            StartDirectoryEnumerationCallback: Some(start_enumeration_cb),
            EndDirectoryEnumerationCallback: Some(end_enumeration_cb),
            GetDirectoryEnumerationCallback: Some(get_enumeration_cb),
            GetPlaceholderInfoCallback: Some(placeholder_info_cb),
            GetFileDataCallback: Some(file_data_cb),
            QueryFileNameCallback: None,
            NotificationCallback: Some(notification_cb),
            CancelCommandCallback: Some(cancel_cb),
        });
        let notification_root: Box<[u16]> = Box::new([0]);
        let mut mapping = PRJ_NOTIFICATION_MAPPING {
            NotificationBitMask: PRJ_NOTIFY_TYPES(notification::MASK),
            NotificationRoot: PCWSTR(notification_root.as_ptr()),
        };
        let start_options = PRJ_STARTVIRTUALIZING_OPTIONS {
            Flags: PRJ_FLAG_NONE,
            PoolThreadCount: options.pool_threads,
            ConcurrentThreadCount: options.concurrent_threads,
            NotificationMappings: &mut mapping,
            NotificationMappingsCount: 1,
        };
        let path = wide(&root);
        let mut ctx = PRJ_NAMESPACE_VIRTUALIZATION_CONTEXT::default();
        // SAFETY: every pointer is valid for the call. The callbacks are
        // `extern "system"` functions of the documented types, and the
        // instance context they receive is `shared`, kept by the Instance
        // until after PrjStopVirtualizing.
        let hr = unsafe {
            (api.start_virtualizing)(
                PCWSTR(path.as_ptr()),
                &*callbacks,
                Arc::as_ptr(&shared).cast::<c_void>(),
                &start_options,
                &mut ctx,
            )
        };
        if hr.is_err() {
            let detail = if hr == HRESULT::from_win32(ERROR_REPARSE_TAG_MISMATCH.0) {
                "it is a link or another program's reparse point, not an ocifs mount; \
                 mount on a new or empty directory"
                    .to_owned()
            } else {
                format!(
                    "cannot start the ProjFS provider: {} ({:#010x}); is ProjFS enabled? (`{ENABLE_PROJFS}`)",
                    hr.message(),
                    hr.0
                )
            };
            return Err(mount_error(&root, detail));
        }
        let mut info = PRJ_VIRTUALIZATION_INSTANCE_INFO::default();
        // SAFETY: a live context and a valid out pointer.
        if unsafe { (api.get_virtualization_instance_info)(ctx, &mut info) }.is_ok() {
            shared
                .alignment
                .store(info.WriteAlignment, Ordering::Relaxed);
        }
        let instance = Instance {
            shared,
            _callbacks: callbacks,
            _notification_root: notification_root,
            ctx: Context(ctx),
            root,
            stopped: false,
        };
        if leftovers {
            blocking(|| instance.clean("left by an earlier mount"));
            instance.shared.cleaning.store(false, Ordering::SeqCst);
        }
        tracing::info!(root = %instance.root.display(), "ProjFS projection started");
        Ok(instance)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn stop(&mut self) -> Result<()> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        blocking(|| {
            let commands = &self.shared.commands;
            commands.stop();
            if !commands.wait_idle(STOP_GRACE) {
                tracing::warn!(
                    in_flight = commands.in_flight(),
                    "reads still running at unmount are abandoned"
                );
            }
            self.shared.cleaning.store(true, Ordering::SeqCst);
            self.clean("at unmount");
            match self.shared.live.write() {
                Ok(mut live) => *live = false,
                Err(poisoned) => *poisoned.into_inner() = false,
            }
            // SAFETY: the context from PrjStartVirtualizing, stopped once;
            // no task uses it any more (`live` is false).
            unsafe { (self.shared.api.stop_virtualizing)(self.ctx.0) };
        });
        tracing::info!(root = %self.root.display(), "ProjFS projection stopped");
        Ok(())
    }

    /// Removes everything ProjFS has cached in the root (placeholders and
    /// hydrated files), deepest first, so that the next mount starts from
    /// an empty root. Runs with `cleaning` set: enumerations then show only
    /// what is on disk, and nothing new is projected.
    fn clean(&self, why: &str) {
        let (mut removed, mut failed) = (0usize, 0usize);
        self.clean_dir(Path::new(""), &mut removed, &mut failed);
        if failed > 0 {
            tracing::warn!(root = %self.root.display(), removed, failed, why, "could not remove every cached file (still open?)");
        } else if removed > 0 {
            tracing::debug!(root = %self.root.display(), removed, why, "removed cached files");
        }
    }

    fn clean_dir(&self, relative: &Path, removed: &mut usize, failed: &mut usize) {
        let Ok(entries) = std::fs::read_dir(self.root.join(relative)) else {
            *failed += 1;
            return;
        };
        for entry in entries.flatten() {
            let path = relative.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.clean_dir(&path, removed, failed);
            }
            let name = wide(&path);
            let mut cause = PRJ_UPDATE_FAILURE_CAUSES::default();
            let flags = PRJ_UPDATE_ALLOW_DIRTY_METADATA
                | PRJ_UPDATE_ALLOW_DIRTY_DATA
                | PRJ_UPDATE_ALLOW_TOMBSTONE
                | PRJ_UPDATE_ALLOW_READ_ONLY;
            // SAFETY: the live context (stop clears it only afterwards), a
            // NUL-terminated path relative to the root, a valid out pointer.
            let hr = unsafe {
                (self.shared.api.delete_file)(self.ctx.0, PCWSTR(name.as_ptr()), flags, &mut cause)
            };
            if hr.is_ok() {
                *removed += 1;
            } else {
                *failed += 1;
                tracing::debug!(path = %path.display(), hresult = %hr, cause = cause.0, "PrjDeleteFile failed");
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the ProjFS projection failed");
        }
    }
}
