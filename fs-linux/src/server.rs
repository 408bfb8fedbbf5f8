//! The process that serves a mount and ends with it (an `ocifs mount`
//! daemon), as its stats file names it, so that an unmount from another
//! process can wait for it to end: it settles its cache on the way out
//! (blobs that checked out moved into place, unchecked chunks dropped), and
//! a script that unmounts and then removes or reuses the cache must not race
//! that.

use std::fs::File;
use std::io::{self, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long reading a mount's stats file may take before an unmount goes on
/// without waiting for its server (a server that does not answer is no
/// server to wait for).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A process, told apart from a later one with the same pid (or the same pid
/// in another pid namespace) by when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Server {
    /// Its pid, in its own pid namespace.
    pub(crate) pid: u32,
    /// When it started, in clock ticks after boot (`/proc/PID/stat`'s
    /// field 22, the same in every pid namespace).
    pub(crate) start: u64,
}

impl Server {
    /// This process.
    pub(crate) fn this() -> Option<Server> {
        Some(Server {
            pid: std::process::id(),
            start: start_time("self")?,
        })
    }

    /// The server that a mount's stats file (at `path`) names, if it names
    /// one and answers within [`ASK_TIMEOUT`].
    pub(crate) fn of_mount(path: &Path) -> Option<Server> {
        #[derive(Deserialize)]
        struct Stats {
            server: Option<Server>,
        }
        let path = path.to_owned();
        let (tx, rx) = mpsc::channel();
        // A thread of its own: a server that hangs would hang this read.
        std::thread::Builder::new()
            .name("ocifs-ask-server".into())
            .spawn(move || {
                let mut text = String::new();
                let read = File::open(&path).and_then(|mut f| f.read_to_string(&mut text));
                let _ = tx.send(read.map(|_| text));
            })
            .ok()?;
        let text = rx.recv_timeout(ASK_TIMEOUT).ok()?.ok()?;
        serde_json::from_str::<Stats>(&text).ok()?.server
    }

    /// A handle on the process that becomes readable when it ends, if it is
    /// still this server (not a process that took its pid over, or one of
    /// another pid namespace).
    pub(crate) fn watch(&self) -> Option<OwnedFd> {
        let fd = pidfd_open(self.pid).ok()?;
        // Checked after the handle is open: the process it refers to can no
        // longer be replaced by another with its pid.
        (start_time(&self.pid.to_string())? == self.start).then_some(fd)
    }
}

/// Waits until the process of `pidfd` ends, at most `timeout`: whether it
/// did.
// Unsafe: poll(2) has no wrapper in std.
#[allow(unsafe_code)]
pub(crate) fn wait_for_end(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `poll` is one valid pollfd that lives across the call.
        let rc = unsafe { libc::poll(&mut poll, 1, ms) };
        match rc {
            1.. => return true,
            0 => return false,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// pidfd_open(2) of `pid`.
// Unsafe: pidfd_open has no wrapper in std or libc.
#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody
    // else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Field 22 of `/proc/PROC/stat`: when the process started.
fn start_time(proc: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything,
    // spaces and parentheses too: the fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_watched_as_itself_and_a_process_that_started_at_another_time_is_not() {
        let me = Server::this().expect("this process");
        assert_eq!(me.pid, std::process::id());
        let fd = me.watch().expect("a pidfd of this process");
        assert!(
            !wait_for_end(&fd, Duration::from_millis(10)),
            "this process is running"
        );
        let other = Server {
            start: me.start + 1,
            ..me
        };
        assert!(
            other.watch().is_none(),
            "another start time is another process"
        );
    }

    #[test]
    fn a_child_that_exits_is_seen_to_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("sleep");
        let server = Server {
            pid: child.id(),
            start: start_time(&child.id().to_string()).expect("its start"),
        };
        let fd = server.watch().expect("a pidfd of the child");
        assert!(wait_for_end(&fd, Duration::from_secs(20)), "it ended");
        child.wait().expect("reaped");
    }
}
