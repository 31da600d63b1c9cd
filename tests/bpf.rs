//! The eBPF probes, for real: they count what processes in a cgroup of our own do.
//!
//! Needs root and kernel BTF (CI runs as root). Each test makes its own cgroup v2
//! directories under the cgroup2 mount (`/sys/fs/cgroup/unified` on a v1 hybrid host),
//! named `rekindle-bpf-test-<pid>-<name>`, and removes them. The work inside a cgroup
//! is done by this test binary itself, re-run as `child_workload` with
//! `REKINDLE_BPF_CHILD` set: it burns CPU, touches fresh memory and execs `/bin/true`.

use std::env;
use std::fs;
use std::hint::black_box;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::time::{clock_gettime, ClockId};
use rekindle::bpf::{
    cgroup2_root, cgroup_id_of, monotonic_ns, BpfError, CgroupId, CgroupStats, Probes,
};

const CHILD_ENV: &str = "REKINDLE_BPF_CHILD";
/// CPU time the workload burns (the test expects at least 150 ms of it).
const BURN: Duration = Duration::from_millis(250);
/// Fresh memory the workload touches, one write per 4 KiB page.
const TOUCH_MIB: usize = 32;
/// `/bin/true` runs the workload starts.
const EXECS: u64 = 3;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the eBPF tests load BPF programs and make cgroups: run them as root (CI does)"
    );
}

/// A cgroup v2 directory of this test, removed on drop.
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn create(name: &str) -> TestCgroup {
        let root = cgroup2_root().expect("a cgroup2 mount");
        let path = root.join(format!("rekindle-bpf-test-{}-{name}", std::process::id()));
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("mkdir {}: {e}", path.display()),
        }
        TestCgroup { path }
    }

    fn id(&self) -> CgroupId {
        cgroup_id_of(&self.path).expect("cgroup id")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The workload has been waited for; the kernel may take a moment to see the
        // cgroup empty.
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => sleep(Duration::from_millis(20)),
            }
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// Runs the workload in `cg` (the shell moves itself in, then execs this binary) and
/// returns the monotonic clock before the start and after the end.
fn run_workload_in(cg: &TestCgroup) -> (u64, u64) {
    let exe = env::current_exe().expect("test binary path");
    let start = monotonic_ns();
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cg.path)
        .arg(exe)
        .args([
            "--exact",
            "child_workload",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .expect("spawn the workload");
    let end = monotonic_ns();
    assert_ok(&out, "workload");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("workload done"),
        "the workload did not run: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    (start, end)
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What `run_workload_in` runs inside the cgroup; does nothing in a normal test run.
#[test]
#[ignore = "the workload the eBPF tests run inside a cgroup (with REKINDLE_BPF_CHILD=1)"]
fn child_workload() {
    if env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Small pages, so that every touched 4 KiB page is one fault.
    nix::sys::prctl::set_thp_disable(true).expect("PR_SET_THP_DISABLE");

    let cpu = || {
        let t = clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID).expect("process CPU clock");
        Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32)
    };
    let until = cpu() + BURN;
    let mut x = 1u64;
    while cpu() < until {
        for _ in 0..10_000 {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }

    let len = TOUCH_MIB << 20;
    let mut mem: Vec<u8> = Vec::with_capacity(len);
    mem.resize(len, 1); // writes every byte: every page faults in
    black_box(&mem);
    drop(mem);

    for _ in 0..EXECS {
        let st = Command::new("/bin/true").status().expect("run /bin/true");
        assert!(st.success());
    }
    println!("workload done ({x})");
}

#[test]
fn counts_what_a_cgroup_does() {
    require_root();
    let probes = Probes::load().expect("load the eBPF probes");
    let cg = TestCgroup::create("work");
    let id = cg.id();
    probes.watch(id).expect("watch");
    assert_eq!(
        probes.read(id).unwrap(),
        Some(CgroupStats::default()),
        "a fresh watch starts at zero"
    );

    let (start, end) = run_workload_in(&cg);
    let s = probes.read(id).unwrap().expect("still watched");
    eprintln!("stats of the workload's cgroup: {s:#?}");

    assert!(
        s.cpu_ns >= 150_000_000,
        "cpu_ns {} < 150 ms (burned {BURN:?})",
        s.cpu_ns
    );
    // Upper bounds only catch counting gone wrong (another task's time, a wrapped delta).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        s.cpu_ns <= (end - start) * cpus,
        "cpu_ns {} > wall time x CPUs",
        s.cpu_ns
    );
    let pages = (TOUCH_MIB << 20) as u64 / 4096;
    assert!(
        (pages..pages * 10).contains(&s.faults_minor),
        "faults_minor {} not in [{pages}, {}) for {pages} pages touched",
        s.faults_minor,
        pages * 10
    );
    // the shell's exec of this binary, and each /bin/true
    assert!(s.execs > EXECS, "execs {} <= {EXECS}", s.execs);
    // each /bin/true, and this binary
    assert!(s.exits > EXECS, "exits {} <= {EXECS}", s.exits);
    assert!(s.runq_count > 0, "no run-queue wait measured");
    assert_eq!(s.runq_latency_hist.iter().sum::<u64>(), s.runq_count);
    assert!(s.runq_total_ns > 0);
    let first = s.first_sched_ns.expect("first_sched_ns set");
    assert!(
        (start..=end).contains(&first),
        "first_sched_ns {first} not in [{start}, {end}]"
    );
    let exec = s.first_exec_ns.expect("first_exec_ns set");
    assert!(
        (start..=end).contains(&exec),
        "first_exec_ns {exec} not in [{start}, {end}]"
    );

    assert!(probes.watched().contains(&id));
    assert!(probes.unwatch(id).unwrap());
    assert_eq!(probes.read(id).unwrap(), None);
    assert!(
        !probes.unwatch(id).unwrap(),
        "a second unwatch finds nothing"
    );
}

#[test]
fn an_unwatched_cgroup_accumulates_nothing() {
    require_root();
    let probes = Probes::load().expect("load the eBPF probes");
    let quiet = TestCgroup::create("quiet");
    let busy = TestCgroup::create("busy");
    probes.watch(quiet.id()).unwrap();

    run_workload_in(&busy);

    assert_eq!(
        probes.read(busy.id()).unwrap(),
        None,
        "no entry for an unwatched cgroup"
    );
    assert_eq!(probes.watched(), vec![quiet.id()]);
    assert_eq!(
        probes.read(quiet.id()).unwrap(),
        Some(CgroupStats::default()),
        "the watched cgroup had no task: nothing of the busy one may land there"
    );
    // Watching after the fact starts from zero: nothing was kept for it.
    probes.watch(busy.id()).unwrap();
    assert_eq!(
        probes.read(busy.id()).unwrap(),
        Some(CgroupStats::default())
    );
}

/// Dropping the probes closes their links (detaching the programs); checked in a child
/// process of its own, so that other tests' probes do not count.
#[test]
fn dropping_the_probes_detaches_them() {
    require_root();
    let out = Command::new(env::current_exe().unwrap())
        .args([
            "--exact",
            "child_drop",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    assert_ok(&out, "child_drop");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("bpf links: before 0, loaded 5, dropped 0, again 5"),
        "{stdout}"
    );
}

#[test]
#[ignore = "run by dropping_the_probes_detaches_them"]
fn child_drop() {
    if env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let links = || {
        fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| {
                fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("anon_inode:bpf_link"))
            })
            .count()
    };
    let before = links();
    let probes = Probes::load().expect("load the eBPF probes");
    let loaded = links();
    drop(probes);
    let dropped = links();
    let again = Probes::load().expect("load again");
    assert!(
        again.watched().is_empty(),
        "a new load starts with an empty watch set"
    );
    println!(
        "bpf links: before {before}, loaded {loaded}, dropped {dropped}, again {}",
        links()
    );
}

#[test]
fn cgroup_ids_are_cgroup2_directory_inodes() {
    use std::os::unix::fs::MetadataExt;
    let root = cgroup2_root().expect("a cgroup2 mount");
    let id = cgroup_id_of(&root).expect("root cgroup id");
    assert_eq!(id.0, fs::metadata(&root).unwrap().ino());
    // On a v1 hybrid host the v1 hierarchies are not cgroup2 and are refused.
    let v1 = Path::new("/sys/fs/cgroup/cpu");
    if root != Path::new("/sys/fs/cgroup") && v1.is_dir() {
        assert!(matches!(cgroup_id_of(v1), Err(BpfError::NotCgroup2(_))));
    }
}

/// An unprivileged process gets a clear error that says what the agent does instead.
#[test]
fn unprivileged_load_says_the_agent_goes_on_without_bpf() {
    require_root();
    use std::os::unix::process::CommandExt;
    let exe = env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([
            "--exact",
            "child_load",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: user nobody cannot run {} ({e})", exe.display());
            return;
        }
        Err(e) => panic!("spawn {}: {e}", exe.display()),
    };
    assert_ok(&out, "child_load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("load error: not permitted to load BPF programs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("continues on cgroup statistics alone"),
        "{stdout}"
    );
}

#[test]
#[ignore = "run by unprivileged_load_says_the_agent_goes_on_without_bpf as user nobody"]
fn child_load() {
    if env::var_os(CHILD_ENV).is_none() {
        return;
    }
    match Probes::load() {
        Ok(_) => println!("loaded"),
        Err(e) => println!("load error: {e}"),
    }
}

/// The finding this crate's cgroup ids rest on, checked with runc itself: on a v1 hybrid
/// host, runc also puts a container into `<cgroup2 mount>/<cgroupsPath>`, and the probes
/// count the container's processes under that directory's id. Needs `runc` and the
/// reference function's root file system from `hack/setup.sh`; skipped without them.
#[test]
fn a_runc_container_is_counted_under_its_cgroup2_directory() {
    require_root();
    let rootfs = Path::new("/var/cache/rekindle/rootfs/python-fn");
    let have_runc = Command::new("runc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_runc || !rootfs.join("bin/sh").exists() {
        eprintln!(
            "skipped: needs runc and {} (hack/setup.sh)",
            rootfs.display()
        );
        return;
    }
    let probes = Probes::load().expect("load the eBPF probes");
    // runc reuses the directory if it exists, so it can be watched before the start.
    let cg = TestCgroup::create("runc");
    let id = cg.id();
    probes.watch(id).unwrap();
    let cgroups_path = format!("/{}", cg.path.file_name().unwrap().to_string_lossy());

    let bundle = tempfile::tempdir().unwrap();
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(bundle.path())
        .status()
        .unwrap();
    assert!(st.success(), "runc spec");
    let config_path = bundle.path().join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "for i in 1 2 3; do /bin/true; done; echo container done"
    ]);
    spec["linux"]["cgroupsPath"] = cgroups_path.clone().into();
    fs::write(&config_path, serde_json::to_vec(&spec).unwrap()).unwrap();

    let name = format!("rekindle-bpf-test-{}", std::process::id());
    let started = Instant::now();
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&name)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let _ = Command::new("runc").args(["delete", "-f", &name]).output();
    // runc removes its cgroup directories on delete; clear any v1 leftovers.
    for hierarchy in fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = fs::remove_dir(hierarchy.path().join(cgroups_path.trim_start_matches('/')));
    }
    assert_ok(&out, "runc run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("container done"));

    let s = probes.read(id).unwrap().expect("watched");
    eprintln!(
        "stats of the runc container ({:?}): {s:#?}",
        started.elapsed()
    );
    // runc init exec'ing /bin/sh, and three /bin/true
    assert!(s.execs >= 4, "execs {} < 4", s.execs);
    assert!(s.exits >= 4, "exits {} < 4", s.exits);
    assert!(s.cpu_ns > 0 && s.faults_minor > 0);
    assert!(s.first_sched_ns.is_some() && s.first_exec_ns.is_some());
}
