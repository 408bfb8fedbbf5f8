#![cfg(target_os = "linux")]

//! FUSE tests: real mounts of OCI layouts built in code, one per test, read
//! with plain `std::fs`. They need `/dev/fuse`, `fusermount3` and root, and
//! fail (never skip) without them.

mod passthrough;
mod read;
mod readonly;
mod unmount;
mod util;
