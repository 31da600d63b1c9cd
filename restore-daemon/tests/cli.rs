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
        "libcriu",
        "--socket <PATH>",
        "[default: /run/rekindle/restored.sock]",
        "[default: /var/lib/rekindle/images]",
        "[default: /etc/rekindle/restored.toml]",
        "--log-format <FORMAT>",
        "json",
        "not implemented yet",
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
fn running_it_refuses_to_pretend_to_serve() {
    let out = restored(&[]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not implemented yet"), "{err}");
    assert!(err.contains("checkpoint/restore issue"), "{err}");
    assert!(err.contains("/run/rekindle/restored.sock"), "{err}");
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
