//! `containerd-shim-rekindle-v2 start` as containerd runs it (in the bundle, the flags
//! containerd passes), without a containerd: the address it prints, and what its
//! server leaves behind when it cannot serve. Needs root (the socket is under
//! /run/containerd/s, where containerd's shims put theirs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-rekindle-v2");

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A server started without containerd's TTRPC_ADDRESS fails after `start` has bound
/// its socket; the socket file goes with it, so that the next `start` of the group
/// does not find a dead socket first.
#[test]
fn a_server_that_cannot_serve_removes_its_socket() {
    if !is_root() {
        eprintln!("skipped: needs root (binds under /run/containerd/s)");
        return;
    }
    let bundle = tempfile::tempdir().unwrap();
    oci_spec::runtime::Spec::default()
        .save(bundle.path().join("config.json"))
        .unwrap();
    let id = format!("rekindle-start-test-{}", std::process::id());
    let out = Command::new(SHIM)
        .args(["-namespace", "rekindle-test", "-id", &id])
        .args(["-address", "/nonexistent/containerd.sock"])
        .args(["-publish-binary", "/bin/true", "start"])
        .current_dir(bundle.path())
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "start: {out:?}");
    let address = String::from_utf8(out.stdout).unwrap();
    let socket = address
        .strip_prefix("unix://")
        .unwrap_or_else(|| panic!("start printed {address:?}, not a unix:// address"));
    assert_eq!(
        std::fs::read_to_string(bundle.path().join("address")).unwrap(),
        address,
        "start keeps the address in the bundle"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(socket).exists() {
        assert!(
            Instant::now() < deadline,
            "{socket} is still there 10 s after its server failed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
