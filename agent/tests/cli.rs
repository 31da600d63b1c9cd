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
        "--admin-socket <PATH>",
        "[default: /run/rekindle/admin.sock]",
        "curl --unix-socket",
        "--log-format <FORMAT>",
        "SIGTERM",
        "[[function]]",
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
fn the_agent_without_containerd_exits_unavailable() {
    let out = agent(&[
        "--containerd-address",
        "/nonexistent/containerd.sock",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("containerd"), "{err}");
}

#[test]
fn the_agent_rejects_a_bad_configuration() {
    let out = agent(&["--config", "/nonexistent/agent.toml"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let out = agent(&["--metrics-addr", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_cli_shows_its_subcommands_and_the_admin_socket() {
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
        help.contains("--socket <PATH>") && help.contains("[default: /run/rekindle/admin.sock]"),
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
fn agent_commands_without_an_agent_name_the_socket_and_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let socket = socket.to_str().unwrap();
    for args in [
        &["status"][..],
        &["functions"][..],
        &[
            "functions",
            "add",
            "hello",
            "--image",
            "i",
            "--port",
            "8080",
        ][..],
        &["functions", "rm", "hello"][..],
        &["checkpoint", "hello", "--keep-running"][..],
        &["invoke", "hello"][..],
    ] {
        let mut all = vec!["--socket", socket];
        all.extend_from_slice(args);
        let out = rekindle(&all);
        assert_eq!(out.status.code(), Some(69), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert!(
            err.contains("rekindle-agent is not running on"),
            "{args:?}: {err}"
        );
        assert!(err.contains(socket), "{args:?}: {err}");
        assert!(
            err.contains("systemctl start rekindle-agent"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    let out = rekindle(&["invoke", "hello", "--data", "@/nonexistent/body.json"]);
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    assert!(stderr(&out).contains("/nonexistent/body.json"), "{out:?}");
}

/// A one-shot agent on `socket`: answers one HTTP request with `status` and `body`;
/// returns the request's head.
fn agent_once(
    socket: &std::path::Path,
    status: &'static str,
    body: &'static str,
) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(&stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        write!(
            &stream,
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        head
    })
}

#[test]
fn an_agents_refusal_is_printed_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let server = agent_once(
        &socket,
        "404 Not Found",
        r#"{"error":{"code":"not_found","message":"no function \"hello\" is registered"}}"#,
    );
    let out = rekindle(&[
        "--socket",
        socket.to_str().unwrap(),
        "functions",
        "rm",
        "hello",
    ]);
    let head = server.join().unwrap();
    assert!(
        head.starts_with("DELETE /v1/functions/hello HTTP/1.1\r\n"),
        "{head}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(
            "rekindle functions rm: rekindle-agent refused: no function \"hello\" is registered"
        ),
        "{err}"
    );
}

/// Answers one request on `socket` with `reply`; returns the request line.
fn answer_once(socket: &std::path::Path, reply: &'static str) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        (&stream).write_all(reply.as_bytes()).unwrap();
        line
    })
}

const STATS: &str = concat!(
    r#"{"ok":{"version":"0.1.0","protocol":1,"uptime_secs":7500,"criu_version":"4.2.1","#,
    r#""kernel_release":"6.18.0","images":2,"store_bytes":1048576,"staged_images":0,"#,
    r#""staged_bytes":0,"leases":0,"requests":{"report_restore":3},"failures":{},"#,
    r#""failures_by_op":{},"restores":[{"engine":"direct","outcome":"ok","count":2,"#,
    r#""last_unix":1},{"engine":"direct","outcome":"failed","count":1,"#,
    r#""last_reason":"criu: restore failed","last_unix":1}]}}"#,
    "\n"
);

#[test]
fn image_stats_shows_the_restores_the_shim_reported() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("restored.sock");
    let server = answer_once(&socket, STATS);
    let out = rekindle(&[
        "image",
        "stats",
        "--restored-socket",
        socket.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(server.join().unwrap(), "{\"v\":1,\"op\":\"stats\"}\n");
    let text = stdout(&out);
    for needle in [
        "rekindle-restored 0.1.0 (protocol v1), up 2h 5m",
        "report_restore  3",
        "ENGINE  OUTCOME  COUNT  LAST SEEN",
        "direct  ok       2",
        "direct  failed   1",
        "criu: restore failed",
    ] {
        assert!(text.contains(needle), "{needle}:\n{text}");
    }

    // --output json: the daemon's body as is.
    std::fs::remove_file(&socket).unwrap();
    let server = answer_once(&socket, STATS);
    let out = rekindle(&[
        "image",
        "stats",
        "--output",
        "json",
        "--restored-socket",
        socket.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    server.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["restores"][1]["engine"], "direct");
    assert_eq!(v["restores"][1]["outcome"], "failed");
    assert_eq!(v["restores"][1]["count"], 1);
    assert_eq!(v["restores"][1]["last_reason"], "criu: restore failed");
}
