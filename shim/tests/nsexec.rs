//! The exec helper of the direct engine (`containerd-shim-rekindle-v2 nsexec`)
//! against a real process in fresh namespaces and a cgroup of its own.
//!
//! `nsexec::spawn` needs the shim's reaper, so these tests run the helper
//! binary directly, as `spawn` does. The test process makes itself a child
//! subreaper, like the shim, so the exec'd process becomes its child and
//! can be waited for. Needs root: namespaces, cgroups, setuid, ptrace.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use nix::{
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitStatus},
    },
    unistd::Pid,
};
use oci_spec::runtime::Process;
use rekindle_shim::nsexec::HelperRequest;
use serde_json::json;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-rekindle-v2");

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the nsexec tests need root (namespaces, cgroups, setuid, ptrace)"
    );
    // Orphans (the exec'd processes) become our children, as with the shim.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
}

/// A `sleep` as pid 1 of fresh pid, mount, uts, ipc and net namespaces, in a
/// pids cgroup of its own; killed and removed on drop, whatever happened.
struct Target {
    unshare: Child,
    init: Option<i32>,
    cgroup: Option<PathBuf>,
}

/// A filter for the target that fails uname(2) with EPERM and allows the
/// rest (no arch check: it only has to be recognisable, not airtight).
fn deny_uname_filter() -> Vec<libc::sock_filter> {
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // A = seccomp_data.nr
        stmt((libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16, 0),
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_uname as u32,
        },
        stmt(
            (libc::BPF_RET | libc::BPF_K) as u16,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(
            (libc::BPF_RET | libc::BPF_K) as u16,
            libc::SECCOMP_RET_ALLOW,
        ),
    ]
}

impl Target {
    fn start(name: &str, seccomp: bool) -> Target {
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--fork",
            "--kill-child",
            "--pid",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--mount-proc",
            "sleep",
            "300",
        ])
        .stdin(Stdio::null());
        if seccomp {
            let filter = deny_uname_filter();
            // SAFETY: the closure only makes the seccomp syscall on data it
            // owns, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let prog = libc::sock_fprog {
                        len: filter.len() as u16,
                        filter: filter.as_ptr() as *mut libc::sock_filter,
                    };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog)
                        != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut target = Target {
            unshare: cmd.spawn().expect("spawn unshare"),
            init: None,
            cgroup: None,
        };
        let upid = target.unshare.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let init = loop {
            let children = fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                let pid: i32 = pid.parse().unwrap();
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.trim() == "sleep" {
                    break pid;
                }
            }
            assert!(Instant::now() < deadline, "unshare never started sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        target.init = Some(init);
        let cgroup = PathBuf::from(format!(
            "/sys/fs/cgroup/pids/rekindle-nsexec-test-{}-{name}",
            std::process::id()
        ));
        fs::create_dir(&cgroup).expect("create the test cgroup");
        target.cgroup = Some(cgroup.clone());
        fs::write(cgroup.join("cgroup.procs"), init.to_string()).expect("move the target in");
        target
    }

    fn init(&self) -> i32 {
        self.init.unwrap()
    }

    fn cgroup(&self) -> &Path {
        self.cgroup.as_deref().unwrap()
    }

    fn ns(&self, kind: &str) -> String {
        fs::read_link(format!("/proc/{}/ns/{kind}", self.init()))
            .unwrap()
            .display()
            .to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Killing pid 1 of the namespace kills every process in it.
        if let Some(init) = self.init {
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if let Some(cgroup) = &self.cgroup {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(cgroup).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    /// The exec'd process, already waited for: its exit code.
    exec: Option<(i32, i32)>,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Runs the helper for `process` in `target` and waits for the exec'd
/// process, which must have become our child.
fn run(target: &Target, process: serde_json::Value, error_file: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let n = RUNS.fetch_add(1, Ordering::SeqCst);
    let pid_file = dir.path().join(format!("exec-{n}.pid"));
    let process: Process = serde_json::from_value(process).expect("a valid OCI process");
    let req = HelperRequest {
        init_pid: target.init(),
        pid_file: pid_file.clone(),
        error_file: error_file.then(|| dir.path().join("error")),
        cgroup_dirs: vec![target.cgroup().to_path_buf()],
        process,
    };
    let req_file = dir.path().join("request.json");
    fs::write(&req_file, serde_json::to_vec(&req).unwrap()).unwrap();
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    let status = Command::new(SHIM)
        .arg("nsexec")
        .arg(&req_file)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .status()
        .expect("run the helper");
    let exec = fs::read_to_string(&pid_file)
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| {
            let pid: i32 = s.trim().parse().expect("a pid in the pid file");
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let ppid = status
                .lines()
                .find_map(|l| l.strip_prefix("PPid:"))
                .unwrap()
                .trim()
                .to_string();
            assert_eq!(
                ppid,
                std::process::id().to_string(),
                "the exec'd process is reparented to the subreaper"
            );
            let code = match waitpid(Pid::from_raw(pid), None).unwrap() {
                WaitStatus::Exited(_, code) => code,
                other => panic!("exec'd process ended with {other:?}"),
            };
            (pid, code)
        });
    let stderr = if error_file {
        fs::read_to_string(dir.path().join("error")).unwrap_or_default()
    } else {
        fs::read_to_string(&err).unwrap()
    };
    Run {
        success: status.success(),
        stdout: fs::read_to_string(&out).unwrap(),
        stderr,
        exec,
    }
}

fn no_caps() -> serde_json::Value {
    json!({"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []})
}

fn nobody(args: &[&str]) -> serde_json::Value {
    json!({
        "user": {"uid": 65534, "gid": 65534},
        "args": args,
        "env": ["PATH=/usr/bin:/bin"],
        "cwd": "/",
        "capabilities": no_caps(),
        "noNewPrivileges": true,
    })
}

#[test]
fn exec_joins_the_namespaces_cgroup_and_user_of_the_container() {
    require_root();
    let target = Target::start("ok", false);
    let r = run(
        &target,
        nobody(&[
            "sh",
            "-c",
            "readlink /proc/self/ns/uts /proc/self/ns/pid /proc/self/ns/mnt; id -u; \
             grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/self/cgroup | grep pids",
        ]),
        false,
    );
    assert!(r.success, "helper failed: {}", r.stderr);
    let (_, code) = r.exec.expect("a pid in the pid file");
    assert_eq!(code, 0, "stdout: {}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 7, "stdout: {}", r.stdout);
    assert_eq!(lines[0], target.ns("uts"));
    assert_eq!(lines[1], target.ns("pid"));
    assert_eq!(lines[2], target.ns("mnt"));
    assert_ne!(
        lines[0],
        fs::read_link("/proc/self/ns/uts")
            .unwrap()
            .display()
            .to_string()
    );
    assert_eq!(lines[3], "65534");
    assert_eq!(lines[4], "CapEff:\t0000000000000000");
    assert_eq!(lines[5], "NoNewPrivs:\t1");
    let name = target.cgroup().file_name().unwrap().to_str().unwrap();
    assert!(
        lines[6].ends_with(&format!(":pids:/{name}")),
        "cgroup line {:?}",
        lines[6]
    );
}

#[test]
fn exec_applies_capabilities_rlimits_env_and_cwd() {
    require_root();
    let target = Target::start("caps", false);
    let one = json!(["CAP_NET_BIND_SERVICE"]);
    let r = run(
        &target,
        json!({
            "user": {"uid": 65534, "gid": 65534, "additionalGids": [65533]},
            "args": ["sh", "-c", "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status; ulimit -n; ulimit -Hn; pwd; echo $FOO; id -G"],
            "env": ["PATH=/usr/bin:/bin", "FOO=bar"],
            "cwd": "/tmp",
            "capabilities": {"bounding": one, "effective": one, "inheritable": one, "permitted": one, "ambient": one},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}],
            "noNewPrivileges": false,
        }),
        false,
    );
    assert!(r.success, "helper failed: {}", r.stderr);
    assert_eq!(r.exec.unwrap().1, 0, "stdout: {}", r.stdout);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "CapEff:\t0000000000000400",
            "CapBnd:\t0000000000000400",
            "CapAmb:\t0000000000000400",
            "123",
            "456",
            "/tmp",
            "bar",
            "65534 65533",
        ],
        "stdout: {}",
        r.stdout
    );
}

#[test]
fn a_missing_binary_fails_naming_it() {
    require_root();
    let target = Target::start("nobin", false);
    let r = run(&target, nobody(&["/nonexistent"]), false);
    assert!(!r.success);
    assert!(r.exec.is_none(), "no pid for a failed exec");
    assert!(
        r.stderr
            .contains(r#"exec: "/nonexistent": stat /nonexistent: no such file or directory"#),
        "stderr: {}",
        r.stderr
    );
    let r = run(&target, nobody(&["nosuchbinary"]), true);
    assert!(!r.success);
    assert_eq!(
        r.stderr,
        r#"exec: "nosuchbinary": executable file not found in $PATH"#
    );
}

#[test]
fn a_missing_cwd_fails_clearly() {
    require_root();
    let target = Target::start("nocwd", false);
    let mut p = nobody(&["true"]);
    p["cwd"] = json!("/nonexistent-cwd");
    let r = run(&target, p, true);
    assert!(!r.success);
    assert!(r.exec.is_none());
    assert_eq!(
        r.stderr,
        r#"chdir to cwd ("/nonexistent-cwd") set in config.json failed: no such file or directory"#
    );
}

#[test]
fn exec_inherits_the_seccomp_filter_of_the_container() {
    require_root();
    let target = Target::start("seccomp", true);
    let script = "grep -E '^Seccomp' /proc/self/status; uname -s 2>/dev/null || echo uname-denied";
    // With no_new_privs the filter goes on last; without, before setuid.
    for (nnp, uid) in [(true, 65534), (false, 0)] {
        let mut p = nobody(&["sh", "-c", script]);
        p["noNewPrivileges"] = json!(nnp);
        p["user"] = json!({"uid": uid, "gid": uid});
        let r = run(&target, p, false);
        assert!(r.success, "helper failed (nnp {nnp}): {}", r.stderr);
        assert_eq!(r.exec.unwrap().1, 0);
        assert_eq!(
            r.stdout.lines().collect::<Vec<_>>(),
            ["Seccomp:\t2", "Seccomp_filters:\t1", "uname-denied"],
            "nnp {nnp}"
        );
    }
    // The init was only stopped for a moment: it still runs, untraced.
    let status = fs::read_to_string(format!("/proc/{}/status", target.init())).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");
    assert!(status.contains("State:\tS"), "{status}");
}
