//! The direct engine's checkpoint (CRIU through libcriu, the way runc 1.1 calls
//! it) makes an image `runc restore` takes: a container started by runc is
//! dumped with `rekindle_shim::direct::dump::checkpoint`, deleted, restored by
//! `runc restore`, and goes on from its in-memory state.
//!
//! Needs root, runc at /usr/sbin/runc, CRIU >= 4.2 at /usr/local/sbin/criu and
//! the rootfs at /var/cache/rekindle/rootfs/python-fn (hack/setup.sh).
//!
//! The shim is a subreaper whose reaper feeds containerd-shim's monitor, and
//! the checkpoint learns of `criu swrk`'s exit from that monitor: this test
//! process does the same (see [`start_reaper`]), so it starts every child of
//! its own through the monitor too, never through `wait`.

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Once,
    time::{Duration, Instant},
};

use containerd_shim::asynchronous::monitor::monitor_notify_by_pid;
use nix::{
    errno::Errno,
    fcntl::OFlag,
    sys::wait::{waitpid, WaitStatus},
};
use oci_spec::runtime::Spec;
use rekindle_shim::{
    direct::{
        dump::{checkpoint, DumpTarget},
        swrk::Watched,
    },
    runc::CheckpointSpec,
    Error,
};

const ROOTFS: &str = "/var/cache/rekindle/rootfs/python-fn";
const CRIU: &str = "/usr/local/sbin/criu";
const RUNC: &str = "/usr/sbin/runc";

/// Keeps a random token and a counter in memory and publishes both, atomically,
/// in /out/counter: a process restored from a dump goes on with the same token
/// and the next number; a restarted one would show a new token from 1.
const SCRIPT: &str = "\
import os, time
tok = os.urandom(8).hex()
n = 0
while True:
    n += 1
    with open('/out/counter.tmp', 'w') as f:
        f.write('%s %d\\n' % (tok, n))
    os.rename('/out/counter.tmp', '/out/counter')
    time.sleep(0.05)
";

/// Makes this process a subreaper and reaps every child on a thread of its
/// own, reporting exits to containerd-shim's monitor as the shim's reaper does.
fn start_reaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "become a child subreaper");
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("reaper runtime");
            loop {
                let (pid, code) = match waitpid(None, None) {
                    Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                    Ok(_) | Err(Errno::EINTR) => continue,
                    Err(_) => {
                        // No children right now.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = rt.block_on(monitor_notify_by_pid(pid.as_raw(), code));
            }
        });
    });
}

fn check_prerequisites() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    for p in [ROOTFS, CRIU, RUNC] {
        assert!(Path::new(p).exists(), "{p} is missing (run hack/setup.sh)");
    }
}

/// A pipe for each of a process's fds 0..2: the process's ends, and ours.
fn stdio_pipes() -> ([OwnedFd; 3], [OwnedFd; 3]) {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe");
    let (in_r, in_w) = pipe();
    let (out_r, out_w) = pipe();
    let (err_r, err_w) = pipe();
    for fd in [&out_r, &err_r] {
        nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("fcntl");
    }
    ([in_r, out_w, err_w], [in_w, out_r, err_r])
}

/// Everything one scenario makes, undone on drop, failed or not.
struct Fixture {
    dir: tempfile::TempDir,
    /// runc's state root (`runc --root`), private to this test.
    state: PathBuf,
    bundle: PathBuf,
    rootfs: PathBuf,
    out: PathBuf,
    cgroup: String,
    ids: Vec<String>,
    /// Our ends of the containers' stdio.
    stdio: Vec<[OwnedFd; 3]>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("rekindle-dump-test-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path().to_path_buf();
        let fx = Fixture {
            state: d.join("runc-state"),
            bundle: d.join("bundle"),
            rootfs: d.join("bundle/rootfs"),
            out: d.join("out"),
            cgroup: format!("/rekindle-dump-test-{}", std::process::id()),
            ids: Vec::new(),
            stdio: Vec::new(),
            dir,
        };
        for p in [
            &fx.state,
            &fx.rootfs,
            &fx.out,
            &d.join("upper"),
            &d.join("ovl-work"),
        ] {
            std::fs::create_dir_all(p).expect("create the test's dirs");
        }
        // An overlay keeps the shared rootfs untouched.
        let opts = format!(
            "lowerdir={ROOTFS},upperdir={},workdir={}",
            d.join("upper").display(),
            d.join("ovl-work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &fx.rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .expect("mount the overlay rootfs");
        fx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs runc with this test's state root and CRIU; `stdio` becomes its
    /// (and a started container's) fds 0..2.
    async fn runc(&self, args: &[&str], stdio: Option<[OwnedFd; 3]>) -> Result<(), String> {
        let log = self.path("runc.log");
        let mut cmd = tokio::process::Command::new(RUNC);
        cmd.arg("--root")
            .arg(&self.state)
            .arg("--log")
            .arg(&log)
            .args(["--criu", CRIU])
            .args(args);
        match stdio {
            Some([i, o, e]) => cmd.stdin(i).stdout(o).stderr(e),
            None => cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        };
        let mut runc = Watched::spawn(&mut cmd, "runc")
            .await
            .map_err(|e| e.to_string())?;
        // Our copies of the container's ends go; the container keeps its own.
        drop(cmd);
        match runc.wait(Duration::from_secs(60)).await {
            Some(0) => Ok(()),
            code => Err(format!(
                "runc {args:?} exited with {code:?}; runc log:\n{}",
                tail(&log)
            )),
        }
    }

    /// The container's cgroup dir in every mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        rekindle_shim::cgroups::dirs(
            &rekindle_shim::cgroups::hierarchies(&mountinfo),
            &self.cgroup,
        )
        .into_iter()
        .filter(|d| d.is_dir())
        .collect()
    }

    /// The (token, count) the container last published.
    fn counter(&self) -> Option<(String, u64)> {
        let text = std::fs::read_to_string(self.out.join("counter")).ok()?;
        let (tok, n) = text.trim().split_once(' ')?;
        Some((tok.to_string(), n.parse().ok()?))
    }

    /// Polls the counter until `done` holds for it, up to `limit`.
    async fn wait_counter(
        &self,
        limit: Duration,
        done: impl Fn(&(String, u64)) -> bool,
    ) -> Option<(String, u64)> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.counter().filter(|c| done(c)) {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for id in &self.ids {
            // The reaper may collect runc before std does: the status is not needed.
            let _ = std::process::Command::new(RUNC)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "-f", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for d in self.cgroup_dirs() {
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
            let _ = std::fs::remove_dir(&d);
        }
        let _ = nix::mount::umount2(&self.rootfs, nix::mount::MntFlags::MNT_DETACH);
        // The TempDir removes the rest.
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .parse()
        .expect("pid file")
}

/// The bundle's config: `runc spec` with the counter script, no terminal, a
/// bind mount of `out` at /out, and the test's own cgroup.
async fn write_config(fx: &Fixture) {
    let bundle = fx.bundle.to_str().unwrap();
    fx.runc(&["spec", "--bundle", bundle], None)
        .await
        .expect("runc spec");
    let path = fx.bundle.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["python3", "-c", SCRIPT]);
    config["root"]["readonly"] = false.into();
    config["linux"]["cgroupsPath"] = fx.cgroup.clone().into();
    config["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "destination": "/out",
            "type": "bind",
            "source": fx.out,
            "options": ["rbind", "rw"]
        }));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_restores_what_the_direct_dump_checkpointed() {
    check_prerequisites();
    start_reaper();
    let mut fx = Fixture::new();
    write_config(&fx).await;
    let bundle = fx.bundle.to_str().unwrap().to_string();

    // Start the container with runc, stdio on pipes we hold.
    let first = format!("rekindle-dump-{}", std::process::id());
    fx.ids.push(first.clone());
    let (theirs, ours) = stdio_pipes();
    fx.stdio.push(ours);
    let pid_file = fx.path("init.pid");
    fx.runc(
        &[
            "run",
            "-d",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--bundle",
            &bundle,
            &first,
        ],
        Some(theirs),
    )
    .await
    .expect("runc run");
    let pid = read_pid(&pid_file);
    let descriptors: Vec<String> = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .expect("read the init's stdio")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(
        descriptors.iter().all(|d| d.starts_with("pipe:[")),
        "{descriptors:?}"
    );
    let before = fx
        .wait_counter(Duration::from_secs(20), |(_, n)| *n >= 5)
        .await
        .expect("the container counts");

    // Dump it the direct engine's way and let CRIU stop it.
    let spec = Spec::load(fx.bundle.join("config.json")).expect("load config.json");
    let cgroup_dirs = fx.cgroup_dirs();
    assert!(
        cgroup_dirs
            .iter()
            .any(|d| d.join("freezer.state").is_file()),
        "{cgroup_dirs:?}"
    );
    let images = fx.path("images");
    let opts = CheckpointSpec {
        image_path: images.clone(),
        work_path: fx.path("dump-work"),
        exit: true,
        ..Default::default()
    };
    let target = DumpTarget {
        pid,
        rootfs: &fx.rootfs,
        spec: &spec,
        cgroup_dirs: &cgroup_dirs,
        descriptors: &descriptors,
    };
    if let Err(e) = checkpoint(&target, &opts).await {
        panic!(
            "checkpoint: {e}\ndump.log:\n{}",
            tail(&fx.path("dump-work/dump.log"))
        );
    }
    let recorded: Vec<String> =
        serde_json::from_slice(&std::fs::read(images.join("descriptors.json")).unwrap()).unwrap();
    assert_eq!(recorded, descriptors);
    assert!(fx.path("dump-work/dump.log").is_file());
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the dumped init {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dumped = fx.counter().expect("a counter at dump time");
    assert_eq!(dumped.0, before.0);
    assert!(dumped.1 >= before.1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fx.counter(),
        Some(dumped.clone()),
        "counting after the dump"
    );

    // runc forgets the old container, then restores the image as a new one.
    fx.runc(&["delete", "-f", &first], None)
        .await
        .expect("runc delete");
    let second = format!("rekindle-dump-{}-restored", std::process::id());
    fx.ids.push(second.clone());
    let (theirs, ours) = stdio_pipes();
    fx.stdio.push(ours);
    let restored_pid_file = fx.path("restored.pid");
    let restore_work = fx.path("restore-work");
    if let Err(e) = fx
        .runc(
            &[
                "restore",
                "-d",
                "--image-path",
                images.to_str().unwrap(),
                "--work-path",
                restore_work.to_str().unwrap(),
                "--pid-file",
                restored_pid_file.to_str().unwrap(),
                "--bundle",
                &bundle,
                &second,
            ],
            Some(theirs),
        )
        .await
    {
        panic!(
            "{e}\nrestore.log:\n{}",
            tail(&restore_work.join("restore.log"))
        );
    }
    let restored = read_pid(&restored_pid_file);
    assert!(Path::new(&format!("/proc/{restored}")).exists());

    // It goes on from its dumped memory: same token, the next numbers.
    let next = fx
        .wait_counter(Duration::from_secs(10), |c| *c != dumped)
        .await
        .expect("the restored container counts");
    eprintln!("dumped at {dumped:?}; the restored container goes on with {next:?}");
    assert_eq!(next.0, dumped.0, "the restored process has a new token");
    assert!(
        next.1 > dumped.1 && next.1 <= dumped.1 + 3,
        "dumped at {}, restored counts {}",
        dumped.1,
        next.1
    );
    let later = fx
        .wait_counter(Duration::from_secs(10), |(_, n)| *n >= dumped.1 + 10)
        .await
        .expect("the restored container keeps counting");
    assert_eq!(later.0, dumped.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn dumping_a_process_that_does_not_exist_is_a_criu_error() {
    check_prerequisites();
    start_reaper();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let pid = (100_000..4_000_000)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let spec = Spec::default();
    let target = DumpTarget {
        pid,
        rootfs: &rootfs,
        spec: &spec,
        cgroup_dirs: &[],
        descriptors: &[],
    };
    let opts = CheckpointSpec {
        image_path: dir.path().join("images"),
        work_path: dir.path().join("work"),
        exit: true,
        ..Default::default()
    };
    match checkpoint(&target, &opts).await {
        Err(Error::Runtime { action, message }) => {
            eprintln!("{action} failed: {message}");
            assert_eq!(action, "criu dump");
            assert!(message.to_lowercase().contains("criu"), "{message}");
            let log = dir.path().join("work/dump.log");
            assert!(message.contains(log.to_str().unwrap()), "{message}");
            assert!(log.is_file());
        }
        other => panic!("expected a criu dump error, got {other:?}"),
    }
}
