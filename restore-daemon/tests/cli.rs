//! The `rekindle-restored` binary as a user meets it.

use std::process::Command;

fn restored(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rekindle-restored"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run rekindle-restored")
}

#[test]
fn help_explains_the_daemon_and_its_defaults() {
    let out = restored(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "checkpoint images",
        "LZ4",
        "zstd",
        "in memory",
        "tmpfs",
        "--socket <PATH>",
        "[default: /run/rekindle/restored.sock]",
        "[default: /var/lib/rekindle/images]",
        "[default: /etc/rekindle/restored.toml]",
        "--log-format <FORMAT>",
        "json",
        "--stage-dir <DIR>",
        "[default: /run/rekindle/staged]",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = restored(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim(),
        format!("rekindle-restored {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_socket_it_cannot_create_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let store = dir.path().join("store");
    let stage = dir.path().join("stage");
    let socket = file.join("restored.sock");
    let out = restored(&[
        "--config",
        "/nonexistent-but-default-path-is-not-used",
        "--store",
        store.to_str().unwrap(),
    ]);
    // An explicitly named missing config is a configuration error ...
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    // ... a socket under a regular file cannot be created.
    let cfg = dir.path().join("restored.toml");
    std::fs::write(&cfg, "mount_stage_tmpfs = false\n").unwrap();
    let out = restored(&[
        "--config",
        cfg.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--stage-dir",
        stage.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn a_bad_configuration_exits_78() {
    let out = restored(&["--config", "/nonexistent/restored.toml"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("/nonexistent/restored.toml"), "{err}");
}

#[test]
fn a_bad_option_exits_2() {
    let out = restored(&["--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
