//! `rekindle-agent` and `rekindle` as a user meets them.

use std::process::{Command, Output};

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run binary")
}

fn agent(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_rekindle-agent"), args)
}

fn rekindle(args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_rekindle"), args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn agent_help_explains_the_daemon_and_its_defaults() {
    let out = agent(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for needle in [
        "hot",
        "warm",
        "staged",
        "cold",
        "forecast",
        "eBPF",
        "Prometheus /metrics",
        "scheduler hook",
        "invoke gateway",
        "[default: /etc/rekindle/agent.toml]",
        "[default: 127.0.0.1:9464]",
        "[default: /run/rekindle/agent.sock]",
        "--log-format <FORMAT>",
        "not implemented yet",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn both_binaries_print_their_version() {
    let v = env!("CARGO_PKG_VERSION");
    let out = agent(&["--version"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), format!("rekindle-agent {v}"));
    let out = rekindle(&["--version"]);
    assert!(out.status.success());
    assert_eq!(stdout(&out).trim(), format!("rekindle {v}"));
}

#[test]
fn the_agent_refuses_to_pretend_to_run() {
    let out = agent(&[]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains("rekindle-agent is not implemented yet"),
        "{err}"
    );
}

#[test]
fn the_agent_rejects_a_bad_configuration() {
    let out = agent(&["--config", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let out = agent(&["--metrics-addr", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_cli_shows_its_planned_subcommands() {
    let out = rekindle(&["--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for sub in ["status", "functions", "image", "checkpoint", "invoke"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help lacks {sub}:\n{help}"
        );
    }
    assert!(
        help.contains("[default: /run/rekindle/agent.sock]"),
        "{help}"
    );
}

#[test]
fn image_commands_ask_whether_rekindle_restored_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("restored.sock");
    let out = rekindle(&[
        "image",
        "list",
        "--restored-socket",
        socket.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("is rekindle-restored running?"), "{err}");
    assert!(err.contains(socket.to_str().unwrap()), "{err}");
}

#[test]
fn each_cli_subcommand_says_it_is_not_implemented_and_why() {
    for (args, why) in [
        (&["status"][..], "control API"),
        (&["functions"][..], "pool manager"),
        (&["checkpoint", "hello"][..], "checkpoint/restore issue"),
        (&["invoke", "hello"][..], "invoke gateway"),
    ] {
        let out = rekindle(args);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(err.contains("not implemented yet"), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}
