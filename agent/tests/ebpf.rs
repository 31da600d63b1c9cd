//! The node collector for real: the eBPF probes loaded, a cgroup laid out as the driver
//! lays out an instance's (`/<namespace>/<function>-<16 hex>`, in the cgroup2 hierarchy
//! and, on a v1 host, the memory controller's), a process in it that burns CPU, touches
//! pages and runs `/bin/true`, and the `/metrics` text checked against that work.
//!
//! And the start-up timeline: an instance's cgroup registered through the driver's start
//! hook, then a real process in it woken (as Tasks.Start wakes runc's init or CRIU's
//! swrk), its answer taken as the first response, and the timeline checked against the
//! clock readings around each step.
//!
//! Needs root and kernel BTF (CI runs as root). The workload is this test binary re-run
//! as `child_workload` with `REKINDLE_EBPF_CHILD` set.

use std::collections::HashMap;
use std::env;
use std::fs;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use rekindle::bpf::{monotonic_ns, Probes};
use rekindle_agent::driver::StartHook;
use rekindle_agent::ebpf::{CgroupLayout, NodeCollector};
use rekindle_agent::metrics::{Metrics, StartTier};

const CHILD_ENV: &str = "REKINDLE_EBPF_CHILD";
const BURN: Duration = Duration::from_millis(200);
/// 4 KiB pages the workload touches (32 MiB).
const PAGES: usize = 8192;
const TRUES: usize = 3;
const FUNCTION: &str = "burn";
const INSTANCE: &str = "burn-0123456789abcdef";

fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write to.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// What the test runs inside the instance's cgroup; does nothing in a normal test run.
#[test]
#[ignore = "the workload the node collector test runs in a cgroup (with REKINDLE_EBPF_CHILD=1)"]
fn child_workload() {
    if env::var_os(CHILD_ENV).is_none() {
        return;
    }
    // Small pages: every touched 4 KiB page is one fault.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let until = cpu_time() + BURN;
    let mut x = 1u64;
    while cpu_time() < until {
        for _ in 0..10_000 {
            x = black_box(
                x.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407),
            );
        }
    }
    let mut mem = vec![0u8; PAGES * 4096];
    for p in mem.chunks_mut(4096) {
        p[0] = black_box(1);
    }
    for _ in 0..TRUES {
        assert!(Command::new("/bin/true").status().unwrap().success());
    }
    // Alive (memory charged) until the test closes stdin.
    println!("workload ready {x}");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    black_box(&mem);
}

/// The instance's cgroup directories, removed on drop.
struct Instance {
    dirs: Vec<PathBuf>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                sleep(Duration::from_millis(20));
            }
        }
    }
}

/// `name value` lines of the exposition, for samples of `function="burn"`.
fn samples(text: &str) -> HashMap<String, f64> {
    samples_of(text, FUNCTION)
}

/// `name value` lines of the exposition: those without labels and those of `function`.
fn samples_of(text: &str, function: &str) -> HashMap<String, f64> {
    let label = format!("function=\"{function}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && (!l.contains('{') || l.contains(&label)))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("{key} missing in {s:#?}"))
}

#[test]
fn the_collector_counts_an_instances_work() {
    assert!(
        nix_is_root(),
        "the eBPF tests load BPF programs and make cgroups: run them as root (CI does)"
    );
    let probes = Probes::load().expect("load the eBPF probes");
    let layout = CgroupLayout::detect();
    let namespace = format!("rekindle-ebpf-test-{}", std::process::id());
    let mut inst = Instance { dirs: Vec::new() };
    let mut procs = Vec::new();
    for root in [&layout.v2_root, &layout.v1_memory_root]
        .into_iter()
        .flatten()
    {
        let ns = root.join(&namespace);
        fs::create_dir_all(ns.join(INSTANCE)).unwrap();
        inst.dirs.push(ns.clone());
        inst.dirs.push(ns.join(INSTANCE));
        procs.push(ns.join(INSTANCE).join("cgroup.procs"));
    }
    assert!(layout.v2_root.is_some(), "a cgroup2 mount");

    let m = Metrics::new();
    let mut c = NodeCollector::new(
        Some(probes),
        layout.clone(),
        &namespace,
        [FUNCTION],
        m.node.clone(),
    );
    // Sees the (empty) instance and watches it before it runs.
    c.collect();

    let script = procs
        .iter()
        .map(|p| format!("echo $$ > '{}' && ", p.display()))
        .collect::<String>()
        + r#"exec "$@""#;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(env::current_exe().unwrap())
        .args([
            "--exact",
            "child_workload",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("workload ready") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the workload ended early"
        );
    }

    // Alive and blocked on stdin: switched out, so its CPU time is accounted.
    c.collect();
    let s = samples(&m.encode());
    eprintln!("while running: {s:#?}");
    let f = format!("{{function=\"{FUNCTION}\"}}");
    assert_eq!(get(&s, "rekindle_bpf_loaded"), 1.0);
    let cpu = get(&s, &format!("rekindle_function_cpu_seconds_total{f}"));
    assert!((0.15..5.0).contains(&cpu), "cpu {cpu}");
    let minor = get(
        &s,
        &format!("rekindle_function_page_faults_total{{function=\"{FUNCTION}\",kind=\"minor\"}}"),
    );
    assert!(
        minor >= PAGES as f64 && minor < 20.0 * PAGES as f64,
        "minor faults {minor}"
    );
    let mem = get(&s, &format!("rekindle_function_memory_bytes{f}"));
    assert!(
        mem >= 0.9 * (PAGES * 4096) as f64 && mem < 1e9,
        "memory {mem}"
    );
    // The shell's exec of the workload, then /bin/true's.
    let execs = get(&s, &format!("rekindle_function_processes_exec_total{f}"));
    assert!(execs >= 1.0 + TRUES as f64, "execs {execs}");
    let runq = get(
        &s,
        &format!("rekindle_function_runqueue_latency_seconds_count{f}"),
    );
    assert!(runq >= 1.0, "run-queue waits {runq}");

    // The workload exits; its cgroup goes away: the totals keep its counts.
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    c.collect();
    let exits = get(
        &samples(&m.encode()),
        &format!("rekindle_function_processes_exit_total{f}"),
    );
    assert!(exits >= 1.0 + TRUES as f64, "exits {exits}");
    drop(inst);
    c.collect();
    let s = samples(&m.encode());
    eprintln!("after the instance is gone: {s:#?}");
    assert!(get(&s, &format!("rekindle_function_cpu_seconds_total{f}")) >= cpu);
    assert_eq!(get(&s, &format!("rekindle_function_memory_bytes{f}")), 0.0);
}

/// The instance's cgroup directories in every hierarchy the collector reads (cgroup2,
/// and the v1 memory and blkio controllers where mounted), and their `cgroup.procs`.
fn make_instance(
    layout: &CgroupLayout,
    namespace: &str,
    instance: &str,
) -> (Instance, Vec<PathBuf>) {
    let mut inst = Instance { dirs: Vec::new() };
    let mut procs = Vec::new();
    for root in [
        &layout.v2_root,
        &layout.v1_memory_root,
        &layout.v1_blkio_root,
    ]
    .into_iter()
    .flatten()
    {
        let ns = root.join(namespace);
        fs::create_dir_all(ns.join(instance)).unwrap();
        inst.dirs.push(ns.clone());
        inst.dirs.push(ns.join(instance));
        procs.push(ns.join(instance).join("cgroup.procs"));
    }
    (inst, procs)
}

fn read_until(out: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    while !line.contains(want) {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before {want:?}"
        );
    }
}

#[test]
fn a_registered_instance_has_its_start_up_timeline() {
    assert!(
        nix_is_root(),
        "the eBPF tests load BPF programs and make cgroups: run them as root (CI does)"
    );
    const FUNCTION: &str = "timeline";
    const INSTANCE: &str = "timeline-00000000deadbeef";
    let probes = Probes::load().expect("load the eBPF probes");
    let layout = CgroupLayout::detect();
    assert!(layout.v2_root.is_some(), "a cgroup2 mount");
    let namespace = format!("rekindle-ebpf-timeline-{}", std::process::id());
    let (inst, procs) = make_instance(&layout, &namespace, INSTANCE);

    let m = Metrics::new();
    let mut c = NodeCollector::new(
        Some(probes),
        layout.clone(),
        &namespace,
        [FUNCTION],
        m.node.clone(),
    );
    // As between Tasks.Create and Tasks.Start: the collector finds the cgroup by
    // listing, and something runs in it (here the shell and /bin/true; runc's init or
    // CRIU's swrk for real), then waits for the start.
    c.collect();
    let join = procs
        .iter()
        .map(|p| format!("echo $$ > '{}' && ", p.display()))
        .collect::<String>();
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(join + "/bin/true && echo joined && read go && exec /bin/echo ready")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    read_until(&mut out, "joined");
    c.collect();
    let f = format!("{{function=\"{FUNCTION}\"}}");
    let before = samples_of(&m.encode(), FUNCTION);
    assert!(
        get(
            &before,
            &format!("rekindle_function_processes_exec_total{f}")
        ) >= 1.0,
        "what ran before the registration was watched: {before:#?}"
    );
    assert!(c.timeline(INSTANCE).is_none(), "not registered yet");

    // The driver's hook, just before Tasks.Start; then the start wakes the process.
    let t_register = monotonic_ns();
    c.start_hook()
        .before_start(FUNCTION, INSTANCE, &format!("/{namespace}/{INSTANCE}"));
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "go").unwrap();
    read_until(&mut out, "ready");
    // The first response, as the gateway records it.
    let t_response = monotonic_ns();
    m.node.first_response(INSTANCE, StartTier::Cold, t_response);
    assert!(child.wait().unwrap().success());
    c.collect();

    let tl = c
        .timeline(INSTANCE)
        .expect("a registered instance's timeline");
    eprintln!("registration {t_register}, response {t_response}: {tl:#?}");
    assert_eq!(tl.function, FUNCTION);
    assert!(tl.registered_ns >= t_register, "{tl:?}");
    let sched = tl
        .first_sched_ns
        .expect("a first schedule after the registration");
    assert!(
        tl.registered_ns < sched && sched < t_response,
        "first schedule {sched} not between registration {} and response {t_response}",
        tl.registered_ns
    );
    let exec = tl.first_exec_ns.expect("the exec of /bin/echo");
    assert!(sched <= exec && exec < t_response, "first exec {exec}");
    assert_eq!(tl.first_response, Some((StartTier::Cold, t_response)));

    // /metrics: one start-up, of exactly first schedule → first response.
    let text = m.encode();
    let s = samples_of(&text, FUNCTION);
    eprintln!("{s:#?}");
    let ft = format!("{{function=\"{FUNCTION}\",tier=\"cold\"}}");
    assert_eq!(
        get(&s, &format!("rekindle_function_startup_seconds_count{ft}")),
        1.0
    );
    let secs = get(&s, &format!("rekindle_function_startup_seconds_sum{ft}"));
    let want = (t_response - sched) as f64 / 1e9;
    assert!(
        (secs - want).abs() < 1e-9,
        "startup {secs} s, want {want} s"
    );
    assert!(secs > 0.0 && secs < 5.0, "startup {secs} s");
    let inf = format!(
        "rekindle_function_startup_seconds_bucket{{le=\"+Inf\",function=\"{FUNCTION}\",tier=\"cold\"}}"
    );
    assert_eq!(get(&s, &inf), 1.0, "{text}");

    // A later answer of the same instance is not another start.
    m.node
        .first_response(INSTANCE, StartTier::Cold, monotonic_ns());
    c.collect();
    let s = samples_of(&m.encode(), FUNCTION);
    assert_eq!(
        get(&s, &format!("rekindle_function_startup_seconds_count{ft}")),
        1.0
    );

    // The instance goes: unwatched, its start-up stays in the histogram.
    drop(inst);
    c.collect();
    assert!(c.timeline(INSTANCE).is_none());
    let s = samples_of(&m.encode(), FUNCTION);
    assert_eq!(
        get(&s, &format!("rekindle_function_startup_seconds_count{ft}")),
        1.0
    );
}

const UNPRIVILEGED_ENV: &str = "REKINDLE_EBPF_UNPRIVILEGED_NAMESPACE";

/// Without the right to load BPF programs: one warning that says so, `rekindle_bpf_loaded
/// 0`, and the cgroup statistics (memory, block I/O) still exported.
#[test]
fn without_bpf_the_collector_warns_once_and_exports_cgroup_statistics() {
    assert!(
        nix_is_root(),
        "the eBPF tests load BPF programs and make cgroups: run them as root (CI does)"
    );
    use std::os::unix::process::CommandExt;
    const INSTANCE: &str = "burn-00000000feedf00d";
    let layout = CgroupLayout::detect();
    let namespace = format!("rekindle-ebpf-nobpf-{}", std::process::id());
    let (_inst, _) = make_instance(&layout, &namespace, INSTANCE);
    let exe = env::current_exe().unwrap();
    let out = Command::new(&exe)
        .args([
            "--exact",
            "child_unprivileged_collector",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(UNPRIVILEGED_ENV, &namespace)
        .uid(65534)
        .gid(65534)
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: user nobody cannot run {} ({e})", exe.display());
            return;
        }
        Err(e) => panic!("spawn {}: {e}", exe.display()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "one warning, not: {stderr}");
    assert!(
        warnings[0].contains("not permitted to load BPF programs")
            && warnings[0].contains("continues on cgroup statistics alone"),
        "{}",
        warnings[0]
    );
    let s = samples(&stdout);
    assert_eq!(get(&s, "rekindle_bpf_loaded"), 0.0);
    let f = format!("{{function=\"{FUNCTION}\"}}");
    assert!(get(&s, &format!("rekindle_function_memory_bytes{f}")) >= 0.0);
    if layout.v1_blkio_root.is_some() {
        let read = format!(
            "rekindle_function_io_bytes_total{{function=\"{FUNCTION}\",direction=\"read\"}}"
        );
        assert!(get(&s, &read) >= 0.0);
    }
    assert!(
        !stdout.contains("rekindle_function_cpu_seconds"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("rekindle_function_startup_seconds"),
        "{stdout}"
    );
}

/// What the test above runs as user nobody: the collector as the agent starts it.
#[test]
#[ignore = "run by without_bpf_the_collector_warns_once_and_exports_cgroup_statistics as user nobody"]
fn child_unprivileged_collector() {
    let Some(namespace) = env::var_os(UNPRIVILEGED_ENV) else {
        return;
    };
    let namespace = namespace.into_string().unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let m = Metrics::new();
    let mut c = NodeCollector::start(&namespace, [FUNCTION], m.node.clone());
    assert!(!c.bpf_loaded());
    c.start_hook().before_start(
        FUNCTION,
        "burn-00000000feedf00d",
        &format!("/{namespace}/burn-00000000feedf00d"),
    );
    c.collect();
    c.collect();
    print!("{}", m.encode());
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
