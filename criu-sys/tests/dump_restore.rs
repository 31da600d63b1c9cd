//! A real checkpoint and restore through libcriu and /usr/local/sbin/criu: a `sleep` in a
//! session of its own is dumped (and killed by CRIU), restored, found alive with the same
//! pid, then killed. Needs root and CRIU >= 4.2 (hack/setup.sh).

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use criu_sys::safe::{Criu, LogLevel};

mod common;

/// Spawns `sleep 1000` as the leader of a new session (`common::own_session`), stdio on
/// /dev/null.
fn spawn_sleeper() -> Child {
    spawn_sleeper_from(Path::new("sleep"))
}

/// [`spawn_sleeper`], running the `sleep` binary at `program`.
fn spawn_sleeper_from(program: &Path) -> Child {
    let mut cmd = Command::new(program);
    cmd.arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::own_session(&mut cmd);
    let child = cmd.spawn().expect("spawn sleep");
    // Wait until it runs `sleep` (not still our forked copy about to exec).
    let deadline = Instant::now() + Duration::from_secs(5);
    let expected = format!("{} 1000", program.display());
    while cmdline(child.id()).as_deref() != Some(expected.as_str()) {
        assert!(Instant::now() < deadline, "sleep did not start");
        thread::sleep(Duration::from_millis(5));
    }
    // Not "only 0, 1 and 2": sleep itself may briefly hold a locale file at start.
    let sockets: Vec<PathBuf> = fs::read_dir(format!("/proc/{}/fd", child.id()))
        .expect("list the sleeper's fds")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .collect();
    assert!(sockets.is_empty(), "the sleeper inherited {sockets:?}");
    child
}

fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    Some(s.join(" "))
}

/// The state letter of /proc/<pid>/stat ('S' sleeping, 'Z' zombie, ...).
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.chars().next()
}

fn log_of(dir: &Path, name: &str) -> String {
    let log = fs::read_to_string(dir.join(name)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn dump(dir: &Path, pid: u32) {
    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(dir).unwrap();
    criu.set_log_file("dump.log").unwrap();
    criu.set_log_level(LogLevel::Debug);
    criu.set_pid(pid).unwrap();
    criu.set_leave_running(false);
    if let Err(e) = criu.dump() {
        panic!("{e}\n--- dump.log (tail) ---\n{}", log_of(dir, "dump.log"));
    }
    assert!(dir.join("inventory.img").exists(), "no images written");
}

fn kill_and_reap(pid: u32) -> libc::c_int {
    // SAFETY: plain syscalls on a pid we own.
    unsafe {
        assert_eq!(libc::kill(pid as i32, libc::SIGKILL), 0, "kill {pid}");
        let mut status = 0;
        assert_eq!(libc::waitpid(pid as i32, &mut status, 0), pid as i32);
        status
    }
}

#[test]
fn a_dumped_process_is_restored_as_our_child_with_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_sleeper();
    let pid = child.id();

    dump(dir.path(), pid);
    // CRIU killed it (leave_running = false); reap it so that its pid is free again.
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert_eq!(state(pid), None, "pid {pid} still exists after the dump");

    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(dir.path()).unwrap();
    criu.set_log_file("restore.log").unwrap();
    criu.set_log_level(LogLevel::Debug);
    let restored = criu.restore_child().unwrap_or_else(|e| {
        panic!(
            "{e}\n--- restore.log (tail) ---\n{}",
            log_of(dir.path(), "restore.log")
        )
    });

    assert_eq!(restored, pid, "CRIU restores the same pid");
    assert_eq!(cmdline(pid).as_deref(), Some("sleep 1000"));
    assert!(
        matches!(state(pid), Some('S' | 'R')),
        "state {:?}",
        state(pid)
    );
    // Its own session and process group, as before the dump.
    // SAFETY: plain syscalls.
    unsafe {
        assert_eq!(libc::getsid(pid as i32), pid as i32);
        assert_eq!(libc::getpgid(pid as i32), pid as i32);
    }
    // It is our child again: we can reap it.
    let status = kill_and_reap(pid);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
}

#[test]
fn a_dumped_process_is_restored_detached() {
    let (dir, pid, mut criu) = dumped_sleeper_to_restore_detached();
    let restored = criu.restore().unwrap_or_else(|e| {
        panic!(
            "{e}\n--- restore.log (tail) ---\n{}",
            log_of(dir.path(), "restore.log")
        )
    });
    assert_eq!(restored, pid);
    assert_eq!(cmdline(pid).as_deref(), Some("sleep 1000"));
    let status = kill_and_reap(pid);
    assert!(libc::WIFSIGNALED(status));
}

#[test]
fn dumping_a_missing_pid_fails_with_criu_errno() {
    let dir = tempfile::tempdir().unwrap();
    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(dir.path()).unwrap();
    criu.set_log_file("dump.log").unwrap();
    // Above the default pid_max (4194304), so no such process can exist.
    criu.set_pid(i32::MAX as u32).unwrap();
    let err = criu.dump().unwrap_err();
    assert_eq!(err.code(), Some(-libc::EBADE), "{err}");
    assert_eq!(err.cause(), Some(criu_sys::safe::Cause::Failed), "{err}");
    assert!(err.to_string().starts_with("CRIU dump failed"), "{err}");
}

/// A dumped (and killed) `sleep`, and a handle to restore it with `restore*`, not
/// `restore_child*`. This process becomes a subreaper, so that the restored tree, whose
/// parent CRIU exits, is handed to it and can be reaped (instead of to init).
fn dumped_sleeper_to_restore_detached() -> (tempfile::TempDir, u32, Criu) {
    // SAFETY: plain prctl.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_sleeper();
    let pid = child.id();
    dump(dir.path(), pid);
    child.wait().unwrap();
    let mut criu = Criu::new().unwrap();
    criu.set_images_dir(dir.path()).unwrap();
    criu.set_log_file("restore.log").unwrap();
    criu.set_log_level(LogLevel::Debug);
    (dir, pid, criu)
}

/// A restore whose handler holds the "pre-resume" step: the tree is restored and
/// stopped (traced by CRIU) until the handler returns, and meanwhile another request of
/// this process goes through (the request lock is not held while a handler runs).
#[test]
fn a_restore_held_at_pre_resume_keeps_the_tree_stopped_and_other_requests_going() {
    let (dir, pid, mut criu) = dumped_sleeper_to_restore_detached();
    let mut seen: Vec<(String, Option<i32>)> = Vec::new();
    let mut held_state = None;
    let mut other_request = None;
    let mut handler = |n: criu_sys::safe::Notification<'_>| {
        seen.push((n.action.to_string(), n.pid));
        if n.action == "pre-resume" {
            held_state = state(pid);
            // A request on another thread while this one waits here.
            other_request = Some(
                thread::spawn(|| Criu::new().and_then(|mut c| c.version()))
                    .join()
                    .expect("the other request's thread"),
            );
            // Still stopped: nothing of the tree ran meanwhile.
            assert_eq!(state(pid), held_state);
        }
        true
    };
    let restored = criu.restore_notified(&mut handler).unwrap_or_else(|e| {
        panic!(
            "{e}\n--- restore.log (tail) ---\n{}",
            log_of(dir.path(), "restore.log")
        )
    });
    assert_eq!(restored, pid);
    let actions: Vec<&str> = seen.iter().map(|(a, _)| a.as_str()).collect();
    let pre = actions.iter().position(|a| *a == "pre-resume");
    let post = actions.iter().position(|a| *a == "post-resume");
    assert!(
        pre.is_some() && post > pre,
        "pre-resume then post-resume expected: {actions:?}"
    );
    assert!(
        seen.iter().any(|(_, p)| *p == Some(pid as i32)),
        "no notification named the root's pid {pid}: {seen:?}"
    );
    assert_eq!(
        held_state,
        Some('t'),
        "the tree was not stopped (traced) at pre-resume"
    );
    let version = other_request
        .expect("ran")
        .expect("the other request failed");
    assert!(version >= criu_sys::safe::MIN_VERSION, "{version}");
    // Resumed once the handler returned.
    assert!(
        matches!(state(pid), Some('S' | 'R')),
        "state {:?}",
        state(pid)
    );
    let status = kill_and_reap(pid);
    assert!(libc::WIFSIGNALED(status));
}

/// A handler that refuses a step before the tree runs fails the request with
/// `Error::Refused`, and CRIU does not leave the tree behind.
#[test]
fn a_refused_notification_fails_the_restore() {
    let (_dir, pid, mut criu) = dumped_sleeper_to_restore_detached();
    let mut handler = |n: criu_sys::safe::Notification<'_>| n.action != "post-restore";
    let err = criu.restore_notified(&mut handler).unwrap_err();
    assert!(
        matches!(&err, criu_sys::safe::Error::Refused { action, .. } if action == "post-restore"),
        "{err}"
    );
    // CRIU kills what it restored when a step before the resume fails.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: plain waitpid on a pid that, if restored, is ours to reap.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        match state(pid) {
            None => break,
            Some(s) => assert!(
                Instant::now() < deadline,
                "pid {pid} still there ({s}) 5 s after the refused restore"
            ),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Where the GNU build-id's bytes are in an ELF file (offset, length): its
/// NT_GNU_BUILD_ID note, the one CRIU reads through the PT_NOTE segment.
fn build_id_offset(elf: &[u8]) -> Option<(usize, usize)> {
    use object::Object as _;
    let id = object::File::parse(elf).ok()?.build_id().ok()??;
    // A slice of `elf` itself: its offset in the file.
    Some((id.as_ptr() as usize - elf.as_ptr() as usize, id.len()))
}

/// CRIU checks each mapped ELF file against the build-id it recorded at dump (with
/// Rekindle's patch 0016, read with pread): the same `sleep` restores, one whose
/// build-id changed (same size) is refused, naming the file; put back, it restores.
#[test]
fn a_mapped_binary_with_another_build_id_is_refused() {
    // SAFETY: plain prctl (see dumped_sleeper_to_restore_detached).
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let bin = tempfile::tempdir().unwrap();
    let sleep = bin.path().join("sleep");
    let which = Command::new("sh")
        .args(["-c", "command -v sleep"])
        .output()
        .unwrap();
    let system_sleep = String::from_utf8(which.stdout).unwrap();
    fs::copy(system_sleep.trim(), &sleep).unwrap();
    let original = fs::read(&sleep).unwrap();
    let (at, len) = build_id_offset(&original).expect("sleep has a GNU build-id note");
    assert!(len >= 8, "build-id of {len} bytes");

    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_sleeper_from(&sleep);
    let pid = child.id();
    dump(dir.path(), pid);
    child.wait().unwrap();

    let restore = |log: &str| {
        let mut criu = Criu::new().unwrap();
        criu.set_images_dir(dir.path()).unwrap();
        criu.set_log_file(log).unwrap();
        criu.set_log_level(LogLevel::Debug);
        criu.restore()
    };

    // Another build-id, same size: the file CRIU finds is not the one it dumped.
    let mut changed = original.clone();
    changed[at] ^= 0xff;
    fs::write(&sleep, &changed).unwrap();
    let err = restore("refused.log").expect_err("a changed build-id must be refused");
    let log = fs::read_to_string(dir.path().join("refused.log")).unwrap();
    assert!(
        // CRIU names it by its path from the root, without the leading '/'.
        log.contains(&format!(
            "File {} has bad build-ID",
            sleep.strip_prefix("/").unwrap().display()
        )),
        "{err}\n--- refused.log (tail) ---\n{}",
        log_of(dir.path(), "refused.log")
    );
    // What CRIU had created of the tree it killed; being a subreaper, we reap it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(st) = state(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still {st} after a refused restore"
        );
        if st == 'Z' {
            // SAFETY: waitpid on a zombie handed to this subreaper.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        }
        thread::sleep(Duration::from_millis(5));
    }

    fs::write(&sleep, &original).unwrap();
    let restored = restore("restore.log").unwrap_or_else(|e| {
        panic!(
            "{e}\n--- restore.log (tail) ---\n{}",
            log_of(dir.path(), "restore.log")
        )
    });
    assert_eq!(restored, pid);
    assert_eq!(cmdline(pid), Some(format!("{} 1000", sleep.display())));
    let status = kill_and_reap(pid);
    assert!(libc::WIFSIGNALED(status));
}
