//! A user's story, against the real `rekindle-restored` binary on a private socket, store
//! and staging area: a process is checkpointed by CRIU (4.2, through libcriu), its image
//! is stored, staged in memory, prepared for a restore — every byte as CRIU wrote it — and
//! restored by CRIU from the prepared directory; the image is exported, deleted, imported
//! back with the same manifest; a flipped byte in the store is caught and named. Needs
//! root and CRIU >= 4.2 at /usr/local/sbin/criu (hack/setup.sh).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use criu_sys::safe::{Criu, LogLevel};
use rekindle_restore_api::{Client, ErrorCode};

/// The daemon, stopped with SIGTERM when dropped (also when a test fails).
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    stage: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let socket = dir.join("restored.sock");
        let stage = dir.join("stage");
        let config = dir.join("restored.toml");
        fs::write(&config, "lease_ttl_secs = 600\n").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rekindle-restored"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--store")
            .arg(dir.join("store"))
            .arg("--stage-dir")
            .arg(&stage)
            .arg("--log-format")
            .arg("json")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("restored.log")).unwrap())
            .spawn()
            .expect("start rekindle-restored");
        let daemon = Daemon {
            child: Some(child),
            socket,
            stage,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&daemon.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "rekindle-restored did not listen; log:\n{}",
                fs::read_to_string(dir.join("restored.log")).unwrap_or_default()
            );
            thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// SIGTERM, and the exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Checkpoints a `sleep` in a session of its own with CRIU into `images` (the process
/// is killed by the dump); CRIU's log goes to `work`. Returns the pid it had.
fn checkpoint_a_sleeper(images: &Path, work: &Path) -> u32 {
    let mut cmd = Command::new("sleep");
    cmd.arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cmdline(pid).as_deref() != Some("sleep 1000") {
        assert!(Instant::now() < deadline, "sleep did not start");
        thread::sleep(Duration::from_millis(5));
    }
    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(images).unwrap();
    criu.set_work_dir(work).unwrap();
    criu.set_log_file("dump.log").unwrap();
    criu.set_log_level(LogLevel::Info);
    criu.set_pid(pid).unwrap();
    criu.set_leave_running(false);
    if let Err(e) = criu.dump() {
        panic!(
            "{e}\n{}",
            fs::read_to_string(work.join("dump.log")).unwrap_or_default()
        );
    }
    child.wait().unwrap();
    pid
}

/// Every regular file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn is_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).unwrap().filesystem_type().0 as i64 == 0x0102_1994
}

fn mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Sends a raw request line and returns the raw response line.
fn raw(socket: &Path, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out).unwrap();
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_is_stored_staged_restored_shipped_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(dir.path()).map(|p| (dir, p)).unwrap();
    let (_keep, dir) = dir;
    let images = dir.join("checkpoint");
    let work = dir.join("work");
    fs::create_dir_all(&images).unwrap();
    fs::create_dir_all(&work).unwrap();
    let pid = checkpoint_a_sleeper(&images, &work);
    let original = tree(&images);
    assert!(
        original.contains_key("inventory.img"),
        "{:?}",
        original.keys()
    );
    assert!(
        original.keys().any(|k| k.starts_with("pages-")),
        "{:?}",
        original.keys()
    );

    // A write interrupted by a crash, from an earlier run.
    let leftover = dir.join("store/.tmp-sleeper-deadbeef");
    fs::create_dir_all(&leftover).unwrap();
    fs::write(leftover.join("pages-1.img.lz4"), b"half").unwrap();

    let mut daemon = Daemon::start(&dir);
    assert!(!leftover.exists(), "the leftover was not cleaned at start");
    let meta = fs::metadata(&daemon.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "socket is root-only"
    );
    assert!(
        mounted(&daemon.stage) && is_tmpfs(&daemon.stage),
        "staging is a tmpfs"
    );

    let client = Client::new(&daemon.socket);
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.images, 0);
    assert_eq!(stats.criu_version.as_deref(), Some("4.2.1"));

    // Store.
    let labels = BTreeMap::from([("function".to_string(), "sleeper".to_string())]);
    let stored = client
        .store_image("sleeper", &images, labels, Some("sha256:1234".into()))
        .await
        .unwrap();
    let m = stored.manifest.clone();
    assert_eq!(m.file_count as usize, original.len());
    assert_eq!(
        m.total_size,
        original.values().map(|v| v.len() as u64).sum::<u64>()
    );
    assert_eq!(m.criu_version, stats.criu_version);
    assert_eq!(m.kernel_release, stats.kernel_release);
    assert_eq!(m.spec_digest.as_deref(), Some("sha256:1234"));
    assert_eq!(m.labels["function"], "sleeper");
    let e = client
        .store_image("sleeper", &images, BTreeMap::new(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AlreadyExists), "{e}");
    let listed = client.list_images().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].manifest.files.is_empty(), "list leaves files out");
    assert_eq!(client.get_image("sleeper").await.unwrap().manifest, m);

    // Stage, and prepare a restore from the staged copy.
    let staged = client.stage_image("sleeper").await.unwrap();
    assert!(!staged.already_staged);
    assert_eq!(staged.dir, daemon.stage.join("sleeper"));
    assert_eq!(tree(&staged.dir), original, "staged bytes differ");
    assert!(client.stage_image("sleeper").await.unwrap().already_staged);
    let p = client.prepare_restore("sleeper", false).await.unwrap();
    assert!(p.staged);
    assert_eq!(p.image_dir, staged.dir);
    assert_eq!(p.mismatch, None);
    // Neither unstaged, deleted nor garbage-collected while a restore holds it.
    let e = client.unstage_image("sleeper").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    let e = client.delete_image("sleeper").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::FailedPrecondition), "{e}");
    let gc = client.gc(Some(0), Some(0), false).await.unwrap();
    assert!(gc.deleted.is_empty(), "{gc:?}");
    assert_eq!(gc.skipped.len(), 1, "{gc:?}");
    let released = client.release_restore(&p.lease).await.unwrap();
    assert!(!released.removed_dir, "the staged copy stays");
    assert!(staged.dir.is_dir());
    let e = client.release_restore(&p.lease).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    // Unstaged: a restore gets a fresh decompression of its own, and CRIU restores
    // the process from it.
    let un = client.unstage_image("sleeper").await.unwrap();
    assert!(un.was_staged);
    assert!(!staged.dir.exists());
    let p = client.prepare_restore("sleeper", false).await.unwrap();
    assert!(!p.staged);
    assert!(p.image_dir.starts_with(&daemon.stage));
    assert_eq!(tree(&p.image_dir), original, "prepared bytes differ");
    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(&p.image_dir).unwrap();
    criu.set_work_dir(&work).unwrap();
    criu.set_log_file("restore.log").unwrap();
    criu.set_log_level(LogLevel::Info);
    let restored = criu.restore_child().unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            fs::read_to_string(work.join("restore.log")).unwrap_or_default()
        )
    });
    assert_eq!(restored, pid);
    assert_eq!(cmdline(pid).as_deref(), Some("sleep 1000"));
    // SAFETY: kill and reap our restored child.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
    }
    let released = client.release_restore(&p.lease).await.unwrap();
    assert!(released.removed_dir);
    assert!(!p.image_dir.exists());

    // A flipped byte in the store: corrupt, and the error names the file.
    let pages = m
        .files
        .iter()
        .filter(|f| f.path.starts_with("pages-"))
        .max_by_key(|f| f.size)
        .unwrap();
    let stored_file = dir
        .join("store/sleeper")
        .join(format!("{}.lz4", pages.path));
    let good = fs::read(&stored_file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    fs::write(&stored_file, &bad).unwrap();
    let e = client.prepare_restore("sleeper", false).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Corrupt), "{e}");
    assert!(
        e.to_string().contains(&format!("{}.lz4", pages.path)),
        "{e}"
    );
    let e = client.stage_image("sleeper").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Corrupt), "{e}");
    assert!(
        fs::read_dir(&daemon.stage)
            .unwrap()
            .all(|e| e.unwrap().file_name() == ".leases"),
        "a failed decompression leaves nothing staged"
    );
    fs::write(&stored_file, &good).unwrap();

    // Export, delete, import: the same manifest.
    let archive = dir.join("sleeper.tar.zst");
    let exported = client
        .export_image("sleeper", &archive, None)
        .await
        .unwrap();
    assert_eq!(exported.bytes, fs::metadata(&archive).unwrap().len());
    assert_eq!(exported.file_count, m.file_count);
    let deleted = client.delete_image("sleeper").await.unwrap();
    assert!(deleted.freed_bytes >= m.total_compressed_size);
    let e = client.get_image("sleeper").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    let imported = client.import_image(&archive, None).await.unwrap();
    assert_eq!(imported.manifest, m);
    assert_eq!(client.get_image("sleeper").await.unwrap().manifest, m);
    let p = client.prepare_restore("sleeper", false).await.unwrap();
    assert_eq!(tree(&p.image_dir), original);
    client.release_restore(&p.lease).await.unwrap();

    // GC by size: the image goes once nothing holds it (dry run first).
    let gc = client.gc(Some(0), None, true).await.unwrap();
    assert_eq!(gc.deleted.len(), 1);
    assert!(client.get_image("sleeper").await.is_ok(), "dry run deleted");

    // The protocol is versioned; bad names are refused.
    let v = raw(&daemon.socket, r#"{"v":2,"op":"stats"}"#);
    assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unsupported protocol version 2"),
        "{v}"
    );
    let e = client.get_image("../etc").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");

    // Failures are counted by reason.
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.images, 1);
    assert!(stats.failures["corrupt"] >= 2, "{stats:?}");
    assert!(stats.failures["not_found"] >= 2, "{stats:?}");
    assert!(
        stats.failures_by_op["prepare_restore"]["corrupt"] >= 1,
        "{stats:?}"
    );
    assert!(stats.requests["store_image"] >= 2, "{stats:?}");

    // A graceful stop removes the socket and the staging tmpfs.
    client.stage_image("sleeper").await.unwrap();
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    assert!(!daemon.socket.exists(), "socket left behind");
    assert!(!mounted(&daemon.stage), "staging tmpfs left mounted");
    let e = client.stats().await.unwrap_err();
    assert!(
        e.to_string().contains("is rekindle-restored running?"),
        "{e}"
    );
    let log = fs::read_to_string(dir.join("restored.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"op\":\"prepare_restore\"") && l.contains("\"duration_ms\"")),
        "no structured per-request log line:\n{log}"
    );
}

#[tokio::test]
async fn ops_on_different_images_run_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(dir.path()).map(|p| (dir, p)).unwrap();
    let (_keep, dir) = dir;
    let mut daemon = Daemon::start(&dir);
    let client = Client::new(&daemon.socket);
    // Two images of synthetic files, stored at the same time.
    let mut tasks = Vec::new();
    for name in ["one", "two", "three"] {
        let src = dir.join(format!("src-{name}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("inventory.img"), name.as_bytes()).unwrap();
        fs::write(src.join("pages-1.img"), vec![name.len() as u8; 8 << 20]).unwrap();
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.store_image(name, &src, BTreeMap::new(), None).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut tasks = Vec::new();
    for name in ["one", "two", "three", "one", "two"] {
        let c = client.clone();
        tasks.push(tokio::spawn(
            async move { c.prepare_restore(name, false).await },
        ));
    }
    let mut leases = Vec::new();
    for t in tasks {
        let p = t.await.unwrap().unwrap();
        assert_eq!(
            fs::read(p.image_dir.join("pages-1.img")).unwrap().len(),
            8 << 20
        );
        leases.push(p.lease);
    }
    assert_eq!(client.stats().await.unwrap().leases, 5);
    for l in leases {
        client.release_restore(&l).await.unwrap();
    }
    let gc = client.gc(Some(0), None, false).await.unwrap();
    assert_eq!(gc.deleted.len(), 3, "{gc:?}");
    assert!(daemon.stop().success());
}

#[tokio::test]
async fn restore_outcomes_the_shim_reports_are_counted_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let dir = fs::canonicalize(dir.path()).map(|p| (dir, p)).unwrap();
    let (_keep, dir) = dir;
    let mut daemon = Daemon::start(&dir);
    let client = Client::new(&daemon.socket);
    assert!(client.stats().await.unwrap().restores.is_empty());

    // The fallback chain of three restores: direct fails and runc restores; direct
    // restores; both fail and the container cold-starts. The images do not exist here
    // (as when one is deleted after its restore): reports are still counted.
    let long = format!("runc restore: exit status 1\n{}", "criu says ".repeat(100));
    let reports: [(Option<&str>, &str, &str, Option<&str>); 6] = [
        (
            Some("fn-a"),
            "direct",
            "failed",
            Some("criu: page server refused"),
        ),
        (Some("fn-a"), "runc", "ok", None),
        (Some("fn-b"), "direct", "ok", None),
        (
            None,
            "direct",
            "failed",
            Some("no CRIU image in the checkpoint"),
        ),
        (None, "runc", "failed", Some(&long)),
        (None, "cold", "ok", Some("fast path failed")),
    ];
    for (image, engine, outcome, reason) in reports {
        client
            .report_restore(image, engine, outcome, reason)
            .await
            .unwrap();
    }
    let stats = client.stats().await.unwrap();
    let rows: Vec<(&str, &str, u64)> = stats
        .restores
        .iter()
        .map(|r| (r.engine.as_str(), r.outcome.as_str(), r.count))
        .collect();
    assert_eq!(
        rows,
        [
            ("direct", "ok", 1),
            ("direct", "failed", 2),
            ("runc", "ok", 1),
            ("runc", "failed", 1),
            ("cold", "ok", 1),
        ]
    );
    assert_eq!(
        stats.restores[1].last_reason.as_deref(),
        Some("no CRIU image in the checkpoint")
    );
    let runc_reason = stats.restores[3].last_reason.as_deref().unwrap();
    assert!(
        runc_reason.starts_with("runc restore: exit status 1 criu says"),
        "{runc_reason}"
    );
    assert!(runc_reason.len() <= 512, "{}", runc_reason.len());
    assert_eq!(stats.restores[4].last_reason, None);
    assert_eq!(stats.requests["report_restore"], 6);

    // Refused: an unknown engine or outcome (named with the allowed values), a bad
    // image name; an old-style unknown op is still malformed.
    let e = client
        .report_restore(None, "criu", "ok", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("direct, runc, cold"), "{e}");
    let e = client
        .report_restore(None, "runc", "maybe", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    assert!(e.to_string().contains("ok, failed"), "{e}");
    let e = client
        .report_restore(Some("../etc"), "runc", "ok", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidArgument), "{e}");
    let v = raw(
        &daemon.socket,
        r#"{"v":1,"op":"report_restore","engine":"runc","outcome":"ok","extra":1}"#,
    );
    assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
    let v = raw(
        &daemon.socket,
        r#"{"v":1,"op":"report_restore","engine":"cold","outcome":"failed"}"#,
    );
    assert_eq!(v, serde_json::json!({"ok": {}}));
    let v = raw(&daemon.socket, r#"{"v":1,"op":"launch_missiles"}"#);
    assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.restores.iter().map(|r| r.count).sum::<u64>(), 7);
    assert_eq!(
        stats.failures_by_op["report_restore"]["invalid_argument"], 3,
        "{stats:?}"
    );

    assert!(daemon.stop().success());
    let log = fs::read_to_string(dir.join("restored.log")).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("restore reported") && l.contains("page server refused"))
        .unwrap_or_else(|| panic!("no log line for the report:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["image"], "fn-a", "{line}");
    assert_eq!(v["engine"], "direct", "{line}");
    assert_eq!(v["outcome"], "failed", "{line}");
    assert_eq!(v["reason"], "criu: page server refused", "{line}");
    assert!(
        log.lines().any(|l| l.contains("restore reported")
            && l.contains("\"level\":\"INFO\"")
            && l.contains("\"engine\":\"cold\"")),
        "{log}"
    );
}
