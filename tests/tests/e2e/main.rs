//! End-to-end tests of the `ocifs` CLI against a real registry, with content
//! pushed by oras-py and skopeo. One binary, a module per topic; every test
//! starts its own registry and works in its own temp dir.
//!
//! Needs `target/debug/ocifs` (`cargo build -p ocifs`), the Windows build
//! (`cargo build --target x86_64-pc-windows-gnu -p ocifs`) with Debian's
//! wine64 for the `windows` topic, and the oras-py virtualenv; the README's
//! test command, `scripts/test`, provides them all.

mod auth;
mod cache;
mod chunked;
mod credentials;
mod errors;
mod faults;
mod files;
mod harness;
mod indexes;
mod integrity;
mod layouts;
mod mirrors;
mod mount;
mod node;
mod packages;
mod platforms;
mod rootfs;
mod security;
mod support;
mod windows;
