//! Restores a container that `runc checkpoint` dumped by driving CRIU directly through
//! libcriu: no runc process at restore time. It times each restore to the function's first
//! HTTP response, checks the instance, kills it and cleans up. `--modes runc` runs the
//! `runc restore` baseline on the same image, interleaved with the other modes. It was the
//! prototype and recipe for the shim's direct engine, which now implements it
//! (`shim/src/direct/`, with the differences noted there: CRIU ignores cgroups and the
//! shim writes the spec's limits, lazy pages with a recorded working set); the
//! measurements are at the end.
//!
//! ```text
//! cargo build -p criu-sys --example direct_restore
//! target/debug/examples/direct_restore --bundle B --image I --modes runc,direct-pre-lazy -n 12
//! target/debug/examples/direct_restore --help
//! ```
//!
//! # The recipe
//!
//! ## Inputs
//! - The images from `runc checkpoint --image-path I`, on a tmpfs. runc writes
//!   `I/descriptors.json` there: what fds 0, 1 and 2 of the container's init were, e.g.
//!   `["pipe:[145367]","pipe:[145368]","pipe:[145368]"]`. Pipes are external to CRIU.
//! - The bundle's `config.json`: root.path, mounts, linux.maskedPaths, linux.devices,
//!   linux.resources.devices, linux.namespaces (paths), linux.cgroupsPath.
//! - The rootfs, mounted as it was at checkpoint. runc does not save the rootfs: an
//!   overlay needs the upper dir it had at checkpoint.
//!
//! ## Before the request (a warm slot can pay all of this ahead of time)
//! 1. **kdat cache.** Use CRIU built with `RUNDIR=<d>` and a tmpfs mounted at `<d>`
//!    (hack/setup.sh now does this with `/run/criu`). Use one binary for restore and
//!    lazy-pages: the cache file is stamped with the build time, so two builds sharing a
//!    RUNDIR throw each other's cache away ("Stale ... criu.kdat") on every switch.
//! 2. **cgroups.** Create `<parent>/<id>` in every hierarchy, including `systemd`
//!    (name=systemd) and `unified` (cgroup2). Copy `cpuset.cpus` and `cpuset.mems` from
//!    the parent: an empty v1 cpuset refuses tasks with ENOSPC. Write the devices
//!    allow-list yourself: `a` to devices.deny, then the spec's rules in order, then runc's
//!    defaults (`RUNC_ALLOWED_DEVICES` below). CRIU restores the devices list and cpuset
//!    only on directories it creates, even in "full" mode. Without this step the instance
//!    can open every device (`a *:* rwm`); the example checks for that.
//! 3. **stdio.** Open the fds the container's fds 0, 1 and 2 will be (the shim's
//!    stdio pipes or FIFOs). Use one fd per distinct `pipe:[N]` key: fd 0 gets the read end,
//!    fds 1 and 2 the write end. A key that appears twice (1 and 2 share a pipe here) gets
//!    one fd.
//! 4. **The CRIU process.** The future parent of the container (the shim) spawns
//!    `criu swrk <fd>` with a SOCK_SEQPACKET socketpair end at `<fd>`. The inherit fds
//!    (step 3, plus the pod netns fd) must be open in it under the numbers named in the
//!    request, so they must not be close-on-exec at spawn time. Then write its pid to
//!    `cgroup.procs` of the instance's cgroup in every hierarchy. The restored tree is then
//!    born in its cgroups, so no migration happens on the critical path. A cgroup migration
//!    here waits for an RCU grace period: 5–15 ms, paid here instead of during the restore.
//! 5. **Lazy pages (optional).** Run `criu lazy-pages --images-dir I --work-dir W
//!    --status-fd N [-v1]` and wait for the byte on N (~4 ms with the kdat cache, ~30 ms
//!    without). W must be the restore's work dir: CRIU finds the daemon through the
//!    relative socket path `lazy-pages.socket` in its cwd. One daemon serves one restore.
//!    It keeps pushing the remaining pages in the background, and exits when the tree
//!    exits or every page has been sent. It reads the pages from I, so I must stay in
//!    place until it exits.
//!
//! ## The request
//! 6. Create `<state>/<id>/criu-root` and bind-mount the rootfs on it with
//!    `MS_BIND|MS_REC`. CRIU needs the root to be a mount point whose parent is not
//!    overmounted; runc does the same. Every spec mount point outside a tmpfs mount must
//!    exist in the rootfs. It does in the rootfs that was checkpointed; create any that are
//!    missing, as runc's prepareCriuRestoreMounts does.
//! 7. Send the RESTORE request. In the table, each RPC field (libcriu setter) is followed
//!    by its value and the equivalent CLI flag:
//!
//! | RPC field (`criu_local_…`) | value | CLI |
//! |---|---|---|
//! | images_dir_fd (`set_images_dir_fd`) | I | `-D I` |
//! | work_dir_fd (`set_work_dir_fd`) | W, per instance: restore.log, lazy-pages.socket | `-W W` |
//! | log_file, log_level | `restore.log`; 1 in production (4 costs ~4 ms with lazy pages, because the daemon logs every fault) | `-o`, `-v` |
//! | root (`set_root`) | `<state>/<id>/criu-root` | `--root` |
//! | rst_sibling | true. `restore_child` sets it; with a pre-spawned swrk, set it in the config file (below) | `--restore-detached --restore-sibling` |
//! | evasive_devices | true (runc sets it) | `--evasive-devices` |
//! | manage_cgroups + mode | `SOFT` if CRIU creates the cgroups, `FULL` if they were pre-created (step 2); FULL writes the dumped limits, but not devices or cpuset | `--manage-cgroups=soft/full` |
//! | cg_root (`add_cg_root`, ctrl NULL) | `<parent>/<id>`; one root for all hierarchies rewrites the dumped cgroup path | `--cgroup-root <parent>/<id>` |
//! | cgroup_yard (`add_cg_yard`) | `/sys/fs/cgroup` when the host mounts its hierarchies as `<controllers>`, `systemd`, `unified` in one dir. Otherwise CRIU mounts a fresh yard of every hierarchy on each restore; the cgroup2 mount alone takes 5–15 ms | `--cgroup-yard` |
//! | ext_mnt (`add_ext_mount`), key → value | each spec bind mount: destination → source. cgroup v1 without cgroupns: `<dest>/<h>` → `/sys/fs/cgroup/<h><parent>/<id>` for each v1 hierarchy h (9 here). If maskedPaths is non-empty: `/dev/null` → `/dev/null`. Each device node (linux.devices plus runc's /dev/null, random, full, tty, zero, urandom) → itself | `--ext-mount-map K:V` |
//! | inherit_fd (`add_inherit_fd`) | each distinct `pipe:[N]` of descriptors.json → the fd from step 3. Pod netns (spec network ns with a path): key `extRootNetNS` → an fd open on that path; `extRootPidNS` the same for a pid ns path | `--inherit-fd fd[N]:KEY` |
//! | join_ns (`join_ns_add`) | ipc/uts/mnt/user/time ns paths of the spec | `--join-ns` |
//! | lazy_pages | true for lazy. libcriu 4.2 has no setter: use the config file | `--lazy-pages` |
//! | config_file (`set_config_file`) | a file with `lazy-pages` and/or `restore-sibling`, one per line. CRIU applies it over the RPC options | `--config` |
//! | tcp_established, ext_unix_sk, shell_job, file_locks | as at the dump (containerd's CheckpointOptions) | |
//! | not set | notify_scripts: no hooks means no round trips. /etc/criu/runc.conf: runc's default config file; pass your own if wanted. network_lock: the restore uses the method recorded at dump time and ignores the request's | |
//!
//!    Use libcriu's `criu_local_set_service_fd` + `criu_local_restore` with the
//!    pre-spawned swrk. `criu_local_restore_child` always forks a new CRIU and ignores a
//!    service fd. If the handle's comm is not "binary", it silently runs `criu` from PATH,
//!    which is Debian's broken 3.17 if that is installed. libcriu closes the service fd
//!    after the answer; then reap the swrk. The alternative is `criu_local_restore_child`
//!    with a binary (what `--modes direct` does): libcriu forks CRIU as our child, and the
//!    inherit fds must not be close-on-exec during the call.
//! 8. The answer carries the pid of the container's init, now a child of the caller.
//!    Then `umount2(criu-root, MNT_DETACH)`: the container has its own copy (runc does the
//!    same).
//!
//! ## After
//! 9. Kill: `kill(pid, SIGKILL)` and `waitpid`. Wait for the lazy daemon to exit (kill it
//!    after ~2 s). `rmdir` the cgroup in every hierarchy. Unmount the rootfs. The example
//!    does all of this, also when a restore fails halfway.
//!
//! ## What runc does that the shim must also do, or can skip
//! - Must also do: the criu-root bind, the ext-mount map, the inherit fds, cgroup
//!   placement, evasive_devices, manage_cgroups, and rst_sibling (the container must be
//!   the shim's child).
//! - Replaced:
//!   - `cgroupManager.Apply(criu pid)` + `Set(resources)`: replaced by step 2, cg_root, and
//!     props from the image. If the spec's resources differ from the image's, write them
//!     after the restore.
//!   - runc's cgroup v1 ext mounts: runc binds the cgroup *runc* runs in, usually the
//!     host's root (`/sys/fs/cgroup/cpu=/` inside the container; the example reports it).
//!     That is a runc 1.1 bug. Use the container's own cgroup, as at creation.
//! - Skip:
//!   - runc's per-restore CRIU version check (one extra `criu swrk` run, VERSION RPC).
//!     Check once at start-up.
//!   - runc's state dir, state.json and pid file. The pid comes in the answer.
//!   - the notify round trips: setup-namespaces only runs prestart/createRuntime hooks,
//!     post-restore only updates runc's state, and network-lock/unlock only act on
//!     libcontainer veth configs, which OCI specs never produce. Needed only with hooks,
//!     or with a terminal (orphan-pts-master hands the pty master to the console socket;
//!     not covered here).
//!   - restoreNetwork (libcontainer veths), and the Go start-up.
//! - Consequence: runc knows nothing of a directly restored container. `runc
//!   kill/delete/exec/ps/pause/update` will not work on it. The shim must own the
//!   instance's lifecycle: signals to the pid, freezer cgroup for pause, cgroup files for
//!   stats, its own cleanup, and exec through setns.
//!
//! ## Pitfalls found here
//! - `criu_sys::safe::Criu::add_inherit_fd` keeps a close-on-exec duplicate. The exec'd
//!   `criu swrk` never sees it, and the restore fails: tried here, libcriu returns -52.
//!   The fd must be inheritable at fork+exec time, or already in a pre-spawned swrk.
//!   `safe` also lacks ext_mount, cg_root, cg mode, cg yard, evasive_devices, join_ns,
//!   config_file and service_fd, so this example uses `criu_sys::ffi`.
//! - A pod netns dumped with CRIU's default network lock (iptables) makes every restore
//!   unlock it: five fork+execs of iptables-restore/ip6tables-restore (strace: 1–11 ms
//!   each; the `-D` ones fail with "Bad rule", harmlessly). That measured +30–40 ms, and
//!   the restorer's tail slowed down too. The restore uses the
//!   lock method recorded at dump time, so set `network-lock skip` **at checkpoint**. runc
//!   1.1 has no flag for it, but runc passes CRIU the config file named by the
//!   `org.criu.config` annotation. This is safe when no established TCP connection is
//!   dumped, which is the case without `--tcp-established`: CRIU refuses to dump one
//!   otherwise. Host-network containers lock nothing.
//! - Every tmpfs mount in the image (/dev, /dev/shm, /sys/fs/cgroup on v1, and the masked
//!   dirs /proc/acpi and /sys/firmware) is restored by fork+exec of
//!   `tar --extract --gzip`. That is ~3 ms each here, 5 × 3 ≈ 15 ms: half of what is left
//!   of CRIU's time in the fastest mode. It cannot be skipped: the tarballs also create
//!   the mount points for nested mounts (/dev/pts etc.). A no-op `tar` on PATH made the
//!   restore fail. Ways out: a CRIU patch that restores small tmpfs in-process; a spec
//!   with /dev/shm bind-mounted from the host (as CRI does for pods), masked dirs as binds
//!   of an empty read-only dir, and cgroupns or cgroup v2 (no /sys/fs/cgroup tmpfs).
//! - Masked files come back as binds of the *host's* /dev/null (devtmpfs). The original
//!   bound the container's own /dev/null (tmpfs). runc restore does the same. It is the
//!   same device, so this is harmless; the mount comparison here counts both as "masked".
//! - CRIU restores the listening socket before the process resumes, so `connect()`
//!   succeeds early and the request waits in the backlog. Time the *response*, not the
//!   connect. On the host network the port must be free before the restore (the previous
//!   instance reaped).
//! - `Can't setup RLIMIT_NOFILE for self: Operation not permitted` in every restore.log
//!   here, runc's included: harmless.
//!
//! # Measured (2 cores, kernel 6.18, cgroup v1 hybrid, other work running on the machine)
//! Reference function: 74 MB image on tmpfs, the stock runc spec (25 mounts, host
//! network), CRIU 4.2.1. Times run from the start of the restore (direct: criu-root bind,
//! options, request; runc: exec of `runc restore -d`) to the end of the first HTTP
//! response. The first GET after each restore returned count 2 in every run (1 before the
//! checkpoint). Modes and binaries ran round-robin in one run, n=12 each. "no cache" is
//! CRIU built with a RUNDIR on ext4; "cache" is the same source with RUNDIR on a tmpfs (the
//! kdat cache loads in ~0.1 ms instead of ~25 ms of detection). Log level 4, as runc uses.
//! Pages are eager unless the mode says lazy. "direct-pre" has the swrk spawned, placed in
//! pre-created cgroups and holding the stdio before the clock (7–13 ms, plus ~4 ms for
//! the lazy daemon when lazy).
//!
//! | mode | kdat cache | p50 | min | max | CRIU's own log p50 |
//! |---|---|---|---|---|---|
//! | `runc restore` | no | 113 ms | 97 | 173 | 91 ms |
//! | `runc restore --lazy-pages` | no | 102 ms | 81 | 135 | 59 ms |
//! | direct (libcriu forks CRIU) | no | 96 ms | 91 | 122 | 91 ms |
//! | direct, lazy | no | 88 ms | 74 | 107 | 63 ms |
//! | direct-pre | no | 92 ms | 78 | 122 | 89 ms |
//! | direct-pre, lazy | no | 84 ms | 64 | 103 | 62 ms |
//! | `runc restore` | yes | 82 ms | 76 | 108 | 62 ms |
//! | `runc restore --lazy-pages` | yes | 75 ms | 60 | 83 | 29 ms |
//! | direct | yes | 74 ms | 70 | 81 | 69 ms |
//! | direct, lazy | yes | 62 ms | 51 | 69 | 38 ms |
//! | direct-pre | yes | 63 ms | 59 | 79 | 61 ms |
//! | **direct-pre, lazy** | yes | **49 ms** | 43 | 56 | 28 ms |
//!
//! A second full run, earlier, gave the same order. With cache: runc 89, runc-lazy 74,
//! direct 76, direct-lazy 63, direct-pre 65, direct-pre-lazy 51 ms. Further runs, cache on,
//! n=10–12:
//! - CRIU log level 1 instead of 4: direct 74, direct-lazy 54, direct-pre 63,
//!   **direct-pre-lazy 46 ms** (min 43).
//! - Without the cgroup yard (CRIU mounts its own, as under runc): direct 86,
//!   direct-lazy 71 ms. With the yard and pre-created cgroups, but libcriu forking CRIU
//!   (the tree is migrated into them): direct 70, direct-lazy 63 ms.
//! - Pod netns (`linux.namespaces` network with a path, `--probe-netns`), dumped with the
//!   default iptables lock: runc 148, runc-lazy 121, direct 106, direct-lazy 82,
//!   direct-pre 99, direct-pre-lazy 85 ms. The same dumped with `network-lock skip`: runc
//!   80, runc-lazy 67, direct 72, direct-lazy 59, direct-pre 61, direct-pre-lazy 52 ms.
//!
//! Where the rest goes, in direct-pre lazy (~28 ms of CRIU, then ~18 ms to the response):
//! - tmpfs tarballs ~15 ms.
//! - the restorer tail ~3 ms.
//! - mount namespace and files, the rest.
//! - after CRIU: ~460 page faults served one at a time by the lazy daemon, while it also
//!   pushes the other ~17k pages in the background on the same 2 cores.
//!
//! In eager modes, reading 74 MB of pages takes ~33 ms (preadv into fresh anonymous
//! memory). Next steps: prefetch the first request's recorded working set (instead of
//! fault-by-fault), and drop the tmpfs tar forks.
//!
//! Checks on every restored instance:
//! - the pid is alive and is this process's child (direct modes);
//! - it is in `<parent>/<id>` in all 10 hierarchies, with the 11 runc device rules;
//! - its memory is charged there (76 MB in memory.usage_in_bytes after a lazy restore);
//! - it is in the expected netns;
//! - it has the same 25 mount points and filesystem types as the original container;
//! - its cgroup v1 mounts show its own cgroup.
//!
//! runc-restored instances show the host's cgroup roots instead.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criu_sys::ffi;

const USAGE: &str = "\
direct_restore: restore a runc-checkpointed container by driving CRIU directly (libcriu,
no runc at restore time), time it to the first HTTP response, check it, kill it, clean up.

USAGE:
    cargo run -p criu-sys --example direct_restore -- --bundle DIR --image DIR [OPTIONS]

REQUIRED:
    --bundle DIR         the OCI bundle the container was created from (config.json; its
                         root.path must be mounted, e.g. the overlay the container ran on)
    --image DIR          the CRIU images `runc checkpoint --image-path DIR` wrote (with
                         runc's descriptors.json); best on a tmpfs

OPTIONS:
    --modes LIST         comma-separated, run round-robin [default: direct]:
                           direct           libcriu forks CRIU, eager pages
                           direct-lazy      same, pages served by `criu lazy-pages`
                           direct-pre       a `criu swrk` started and moved into the
                                            instance's cgroups before the clock starts
                                            (a warm restorer); the request goes to it
                           direct-pre-lazy  both
                           runc, runc-lazy  `runc restore --detach` (the baseline)
    --criu PATH          CRIU binary; repeat to compare binaries (e.g. one built with a
                         tmpfs RUNDIR, so it caches kernel-feature detection, and one
                         without) [default: /usr/local/sbin/criu]
    -n, --repeat N       restores per mode and binary [default: 1]
    --port PORT          where the function answers on 127.0.0.1 [default: PORT from the
                         bundle's process.env]
    --path PATH          HTTP path to GET [default: /]
    --work DIR           scratch folder for criu-root mounts, CRIU work dirs and logs
                         [default: /tmp/direct-restore-run]
    --cgroup-parent P    cgroup v1/v2 parent of each restored instance (direct modes);
                         the instance goes to P/<id> [default: the parent of the bundle's
                         linux.cgroupsPath, else /rekindle-direct]
    --runc PATH          runc binary for the runc modes [default: runc]
    --log-level N        CRIU log level 0-4 [default: 4, what runc uses]
    --cg-yard DIR        let CRIU use these mounted hierarchies (DIR/<controller>,
                         DIR/systemd, DIR/unified) instead of mounting a fresh yard of
                         all of them on every restore (cgroup2's mount alone costs
                         5-15 ms here); `none` to let CRIU mount its own
                         [default: /sys/fs/cgroup when it is laid out that way]
    --precreate-cgroups  create the instance's cgroups (and copy cpuset.cpus/mems)
                         before the clock starts, as a warm pool would; CRIU then
                         keeps (soft mode) whatever limits they have
    --expect-mountinfo F compare each restored instance's mount points with this
                         /proc/<pid>/mountinfo of the original container
    --probe-netns PATH   send the HTTP probes from this network namespace (e.g.
                         /run/netns/X, when the container joined it: a pod's netns)
    --keep               leave the last instance running (prints its pid and how to clean up)
    -h, --help           this text

Needs root. Direct modes leave no runc state: the instance is a child of this process.
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return;
    }
    match Args::parse(&args).and_then(run) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

type Result<T, E = String> = std::result::Result<T, E>;

fn ctx<T, E: std::fmt::Display>(
    r: std::result::Result<T, E>,
    what: impl std::fmt::Display,
) -> Result<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Direct,
    DirectLazy,
    DirectPre,
    DirectPreLazy,
    Runc,
    RuncLazy,
}

impl Mode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "direct" => Mode::Direct,
            "direct-lazy" => Mode::DirectLazy,
            "direct-pre" => Mode::DirectPre,
            "direct-pre-lazy" => Mode::DirectPreLazy,
            "runc" => Mode::Runc,
            "runc-lazy" => Mode::RuncLazy,
            _ => return Err(format!("unknown mode {s:?} (see --help)")),
        })
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::DirectLazy => "direct-lazy",
            Mode::DirectPre => "direct-pre",
            Mode::DirectPreLazy => "direct-pre-lazy",
            Mode::Runc => "runc",
            Mode::RuncLazy => "runc-lazy",
        }
    }
    fn lazy(self) -> bool {
        matches!(
            self,
            Mode::DirectLazy | Mode::DirectPreLazy | Mode::RuncLazy
        )
    }
    fn pre(self) -> bool {
        matches!(self, Mode::DirectPre | Mode::DirectPreLazy)
    }
    fn runc(self) -> bool {
        matches!(self, Mode::Runc | Mode::RuncLazy)
    }
}

#[derive(Debug)]
struct Args {
    bundle: PathBuf,
    image: PathBuf,
    modes: Vec<Mode>,
    criu: Vec<PathBuf>,
    repeat: usize,
    port: Option<u16>,
    path: String,
    work: PathBuf,
    cgroup_parent: Option<String>,
    runc: String,
    log_level: i32,
    expect_mountinfo: Option<PathBuf>,
    keep: bool,
    cg_yard: Option<String>,
    precreate_cgroups: bool,
    probe_netns: Option<PathBuf>,
}

impl Args {
    fn parse(argv: &[String]) -> Result<Self> {
        let mut a = Args {
            bundle: PathBuf::new(),
            image: PathBuf::new(),
            modes: vec![Mode::Direct],
            criu: Vec::new(),
            repeat: 1,
            port: None,
            path: "/".into(),
            work: PathBuf::from("/tmp/direct-restore-run"),
            cgroup_parent: None,
            runc: "runc".into(),
            log_level: 4,
            expect_mountinfo: None,
            keep: false,
            cg_yard: Some("auto".into()),
            precreate_cgroups: false,
            probe_netns: None,
        };
        let mut it = argv.iter();
        while let Some(flag) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value (see --help)"))
            };
            match flag.as_str() {
                "--bundle" => a.bundle = val()?.into(),
                "--image" => a.image = val()?.into(),
                "--modes" => a.modes = val()?.split(',').map(Mode::parse).collect::<Result<_>>()?,
                "--criu" => a.criu.push(val()?.into()),
                "-n" | "--repeat" => a.repeat = ctx(val()?.parse(), "--repeat")?,
                "--port" => a.port = Some(ctx(val()?.parse(), "--port")?),
                "--path" => a.path = val()?,
                "--work" => a.work = val()?.into(),
                "--cgroup-parent" => a.cgroup_parent = Some(val()?),
                "--runc" => a.runc = val()?,
                "--log-level" => a.log_level = ctx(val()?.parse(), "--log-level")?,
                "--expect-mountinfo" => a.expect_mountinfo = Some(val()?.into()),
                "--keep" => a.keep = true,
                "--cg-yard" => a.cg_yard = Some(val()?).filter(|v| v != "none"),
                "--precreate-cgroups" => a.precreate_cgroups = true,
                "--probe-netns" => a.probe_netns = Some(val()?.into()),
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
        }
        if a.bundle.as_os_str().is_empty() || a.image.as_os_str().is_empty() {
            return Err("--bundle and --image are required (see --help)".into());
        }
        if a.criu.is_empty() {
            a.criu
                .push(PathBuf::from(criu_sys::safe::DEFAULT_SERVICE_BINARY));
        }
        if a.repeat == 0 {
            return Err("--repeat must be at least 1".into());
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------------------
// A small JSON reader (config.json, descriptors.json): the example needs no serde.

mod json {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Obj(kv) => kv.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn str(&self) -> Option<&str> {
            match self {
                Value::Str(s) => Some(s),
                _ => None,
            }
        }
        pub fn arr(&self) -> &[Value] {
            match self {
                Value::Arr(v) => v,
                _ => &[],
            }
        }
        pub fn strs(&self) -> Vec<String> {
            self.arr()
                .iter()
                .filter_map(|v| v.str().map(str::to_string))
                .collect()
        }
    }

    pub fn parse(s: &str) -> Result<Value, String> {
        let mut p = Parser {
            b: s.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }
        fn err<T>(&self, what: &str) -> Result<T, String> {
            Err(format!("JSON: {what} at byte {}", self.i))
        }
        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.b.get(self.i) == Some(&c) {
                self.i += 1;
                Ok(())
            } else {
                self.err(&format!("expected {:?}", c as char))
            }
        }
        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.b.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    let mut kv = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Value::Obj(kv));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        self.eat(b':')?;
                        kv.push((k, self.value()?));
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Obj(kv));
                            }
                            _ => return self.err("expected , or }"),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut v = Vec::new();
                    self.ws();
                    if self.b.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Value::Arr(v));
                    }
                    loop {
                        v.push(self.value()?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Arr(v));
                            }
                            _ => return self.err("expected , or ]"),
                        }
                    }
                }
                Some(b'"') => self.string().map(Value::Str),
                Some(b't') => self.word("true", Value::Bool(true)),
                Some(b'f') => self.word("false", Value::Bool(false)),
                Some(b'n') => self.word("null", Value::Null),
                Some(c) if *c == b'-' || c.is_ascii_digit() => {
                    let start = self.i;
                    while self.i < self.b.len()
                        && matches!(
                            self.b[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    let s = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("");
                    s.parse()
                        .map(Value::Num)
                        .or_else(|_| self.err("bad number"))
                }
                _ => self.err("unexpected input"),
            }
        }
        fn word(&mut self, w: &str, v: Value) -> Result<Value, String> {
            if self.b[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                self.err("bad literal")
            }
        }
        fn hex4(&mut self) -> Result<u32, String> {
            let h = self
                .b
                .get(self.i..self.i + 4)
                .ok_or("JSON: short \\u escape")?;
            self.i += 4;
            u32::from_str_radix(std::str::from_utf8(h).unwrap_or("x"), 16)
                .map_err(|_| "JSON: bad \\u escape".to_string())
        }
        fn string(&mut self) -> Result<String, String> {
            if self.b.get(self.i) != Some(&b'"') {
                return self.err("expected a string");
            }
            self.i += 1;
            let mut out = Vec::new();
            loop {
                let c = *self.b.get(self.i).ok_or("JSON: unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b'\\' => {
                        let e = *self.b.get(self.i).ok_or("JSON: unterminated escape")?;
                        self.i += 1;
                        let ch = match e {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let mut cp = self.hex4()?;
                                if (0xD800..0xDC00).contains(&cp)
                                    && self.b[self.i..].starts_with(b"\\u")
                                {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    cp = 0x10000
                                        + ((cp - 0xD800) << 10)
                                        + (lo.wrapping_sub(0xDC00) & 0x3FF);
                                }
                                char::from_u32(cp).unwrap_or('\u{FFFD}')
                            }
                            _ => return self.err("bad escape"),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                    }
                    _ => out.push(c),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the bundle and the images say the restore needs (the part of runc's libcontainer
// `Restore` that is configuration, not work).

#[derive(Debug, Clone)]
struct SpecMount {
    destination: String,
    kind: String,
    source: String,
    bind: bool,
}

/// runc's default device nodes (libcontainer/specconv `AllowedDevices` that are created
/// as nodes): runc adds an ext-mount entry for each on dump and restore.
const RUNC_DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/random",
    "/dev/full",
    "/dev/tty",
    "/dev/zero",
    "/dev/urandom",
];

#[derive(Debug)]
struct Bundle {
    dir: PathBuf,
    rootfs: PathBuf,
    mounts: Vec<SpecMount>,
    masked_paths: Vec<String>,
    devices: Vec<String>,
    cgroups_path: Option<String>,
    /// `(type, path)` of namespaces the container joins instead of creating.
    ns_paths: Vec<(String, String)>,
    has_cgroupns: bool,
    /// `linux.resources.devices`, as cgroup v1 rules: (allow, "type major:minor access").
    device_rules: Vec<(bool, String)>,
    terminal: bool,
    env_port: Option<u16>,
}

impl Bundle {
    fn load(dir: &Path) -> Result<Self> {
        let text = ctx(
            fs::read_to_string(dir.join("config.json")),
            format!("{}/config.json", dir.display()),
        )?;
        let c = json::parse(&text)?;
        let root = c
            .get("root")
            .and_then(|r| r.get("path"))
            .and_then(|p| p.str())
            .ok_or("config.json: no root.path")?;
        let rootfs = if Path::new(root).is_absolute() {
            PathBuf::from(root)
        } else {
            dir.join(root)
        };
        let mounts = c
            .get("mounts")
            .map(|m| m.arr())
            .unwrap_or(&[])
            .iter()
            .map(|m| {
                let opts = m.get("options").map(|o| o.strs()).unwrap_or_default();
                let kind = m
                    .get("type")
                    .and_then(|t| t.str())
                    .unwrap_or("")
                    .to_string();
                SpecMount {
                    destination: m
                        .get("destination")
                        .and_then(|d| d.str())
                        .unwrap_or("")
                        .to_string(),
                    source: m
                        .get("source")
                        .and_then(|d| d.str())
                        .unwrap_or("")
                        .to_string(),
                    bind: kind == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind"),
                    kind,
                }
            })
            .collect();
        let linux = c.get("linux").cloned().unwrap_or(json::Value::Null);
        let mut devices: Vec<String> = RUNC_DEFAULT_DEVICES.iter().map(|s| s.to_string()).collect();
        for d in linux.get("devices").map(|d| d.arr()).unwrap_or(&[]) {
            if let Some(p) = d.get("path").and_then(|p| p.str()) {
                if !devices.iter().any(|x| x == p) {
                    devices.push(p.to_string());
                }
            }
        }
        let namespaces = linux.get("namespaces").map(|n| n.arr()).unwrap_or(&[]);
        let ns_paths = namespaces
            .iter()
            .filter_map(|n| {
                let t = n.get("type")?.str()?;
                let p = n.get("path")?.str()?;
                (!p.is_empty()).then(|| (t.to_string(), p.to_string()))
            })
            .collect();
        let device_rules = linux
            .get("resources")
            .and_then(|r| r.get("devices"))
            .map(|d| d.arr())
            .unwrap_or(&[])
            .iter()
            .map(|d| {
                let num = |k: &str| match d.get(k) {
                    Some(json::Value::Num(n)) if *n >= 0.0 => (*n as i64).to_string(),
                    _ => "*".into(),
                };
                let t = d.get("type").and_then(|t| t.str()).unwrap_or("a");
                let access = d.get("access").and_then(|t| t.str()).unwrap_or("rwm");
                let allow = d.get("allow") == Some(&json::Value::Bool(true));
                (
                    allow,
                    format!("{t} {}:{} {access}", num("major"), num("minor")),
                )
            })
            .collect();
        let has_cgroupns = namespaces
            .iter()
            .any(|n| n.get("type").and_then(|t| t.str()) == Some("cgroup"));
        let process = c.get("process").cloned().unwrap_or(json::Value::Null);
        let env_port = process
            .get("env")
            .map(|e| e.strs())
            .unwrap_or_default()
            .iter()
            .find_map(|e| e.strip_prefix("PORT=").and_then(|p| p.parse().ok()));
        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            mounts,
            masked_paths: linux
                .get("maskedPaths")
                .map(|m| m.strs())
                .unwrap_or_default(),
            devices,
            cgroups_path: linux
                .get("cgroupsPath")
                .and_then(|p| p.str())
                .map(str::to_string),
            ns_paths,
            has_cgroupns,
            device_rules,
            terminal: process.get("terminal") == Some(&json::Value::Bool(true)),
            env_port,
        })
    }
}

/// runc's descriptors.json: what fds 0, 1, 2 of the container's init were at checkpoint
/// (`pipe:[N]`, `/dev/null`, ...). Pipes are external to CRIU: the restorer must hand in
/// a replacement for each (`inherit_fd`, key = that string).
fn load_descriptors(image: &Path) -> Result<Vec<String>> {
    let p = image.join("descriptors.json");
    let text = ctx(fs::read_to_string(&p), p.display())?;
    Ok(json::parse(&text)?.strs())
}

// ---------------------------------------------------------------------------------------
// Host facts: cgroup hierarchies from /proc/self/mountinfo.

#[derive(Debug, Clone)]
struct MountInfo {
    root: String,
    mountpoint: String,
    fstype: String,
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(((b[i + 1] - b'0') << 6) | ((b[i + 2] - b'0') << 3) | (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountInfo {
                root: unescape_mountinfo(f.get(3)?),
                mountpoint: unescape_mountinfo(f.get(4)?),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// The host's cgroup hierarchies: (mount point, is cgroup v2).
fn host_cgroup_mounts() -> Result<Vec<(String, bool)>> {
    let text = ctx(
        fs::read_to_string("/proc/self/mountinfo"),
        "/proc/self/mountinfo",
    )?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .map(|m| (m.mountpoint, m.fstype == "cgroup2"))
        .collect())
}

// ---------------------------------------------------------------------------------------
// Small syscall helpers.

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", p.display()))
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

fn bind_mount(src: &Path, dst: &Path) -> Result<()> {
    let (s, d) = (cpath(src)?, cpath(dst)?);
    // SAFETY: valid C strings; a bind mount takes no fstype or data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind-mount {} on {}: {}",
            src.display(),
            dst.display(),
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn umount_detach(p: &Path) -> Result<()> {
    let c = cpath(p)?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("umount {}: {e}", p.display()));
        }
    }
    Ok(())
}

/// A pipe whose ends are close-on-exec (std's default for everything it opens).
fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid out-array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_cloexec(fd: RawFd, on: bool) -> Result<()> {
    // SAFETY: F_SETFD on a descriptor we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, if on { libc::FD_CLOEXEC } else { 0 }) } != 0 {
        return Err(format!(
            "fcntl(F_SETFD) on fd {fd}: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Copies everything from `r` into `path` until EOF (the container's stdout/stderr).
fn drain(r: OwnedFd, path: PathBuf) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut r = File::from(r);
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = io::copy(&mut r, &mut f);
        }
    })
}

/// SIGKILL, then reap (it is our child, or was re-parented to us as a subreaper); if it
/// is not ours after all, wait until it is gone from /proc.
fn kill_and_reap(pid: i32) {
    // SAFETY: plain syscalls on a pid this program restored.
    let reaped = unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0) == pid
    };
    if !reaped {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// The function's HTTP endpoint.

fn http_get(port: u16, path: &str) -> io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if !out.starts_with("HTTP/1.") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an HTTP response",
        ));
    }
    Ok(out)
}

/// Polls until the function answers (connection refused while nothing listens; once
/// CRIU has restored the listening socket, the request waits in its backlog until the
/// restored process accepts it). Returns the response and when it arrived.
fn first_response(port: u16, path: &str, deadline: Instant) -> Result<(String, Instant)> {
    let mut last = None;
    while Instant::now() < deadline {
        match http_get(port, path) {
            Ok(body) => return Ok((body, Instant::now())),
            Err(e) => {
                last = Some(e);
                // Short pause: on 2 cores a busy loop would steal CPU from the restore.
                thread::sleep(Duration::from_micros(100));
            }
        }
    }
    Err(format!(
        "no HTTP response on 127.0.0.1:{port} (last error: {last:?})"
    ))
}

fn json_count(body: &str) -> Option<u64> {
    let i = body.find("\"count\":")? + "\"count\":".len();
    body[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs `f` in the network namespace at `ns` (a thread of its own: setns(CLONE_NEWNET)
/// changes only the calling thread), or here.
fn in_netns<T: Send>(ns: Option<&Path>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let Some(ns) = ns else { return f() };
    thread::scope(|sc| {
        sc.spawn(|| {
            let fd = ctx(File::open(ns), ns.display())?;
            // SAFETY: setns on an open namespace file, affecting this thread only.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "setns {}: {}",
                    ns.display(),
                    io::Error::last_os_error()
                ));
            }
            f()
        })
        .join()
        .map_err(|_| "probe thread panicked".to_string())?
    })
}

fn port_is_free(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_err()
}

// ---------------------------------------------------------------------------------------
// libcriu, raw. criu_sys::safe lacks what a container restore needs (ext mounts, cgroup
// root and mode, evasive devices, config file), and its add_inherit_fd keeps a
// close-on-exec duplicate, which the exec'd `criu swrk` never sees. So: the raw API.

struct Opts(NonNull<ffi::criu_opts>);

impl Drop for Opts {
    fn drop(&mut self) {
        // SAFETY: from criu_local_init_opts, freed once.
        unsafe { ffi::criu_local_free_opts(self.0.as_ptr()) }
    }
}

fn check(rc: i32, what: &str) -> Result<()> {
    if rc < 0 {
        Err(format!("libcriu {what}: {rc}"))
    } else {
        Ok(())
    }
}

impl Opts {
    fn new(binary: &Path) -> Result<Self> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        let rc = unsafe { ffi::criu_local_init_opts(&mut p) };
        let o = Opts(
            NonNull::new(p)
                .filter(|_| rc == 0)
                .ok_or("criu_local_init_opts failed")?,
        );
        let b = cpath(binary)?;
        // SAFETY: valid handle and C string (libcriu copies every string it is given).
        check(
            unsafe { ffi::criu_local_set_service_binary(o.p(), b.as_ptr()) },
            "set_service_binary",
        )?;
        Ok(o)
    }
    fn p(&self) -> *mut ffi::criu_opts {
        self.0.as_ptr()
    }
}

// ---------------------------------------------------------------------------------------
// One restore.

/// What a run measured.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// From the start of the restore (bind mount, pipes, options; or `runc restore`'s
    /// exec) to the end of the first HTTP response.
    first_ms: f64,
    /// The restore call itself: libcriu's restore_child returning, or runc exiting.
    restore_ms: f64,
    /// Work before the restore call (direct modes: criu-root mount, pipes, options).
    prep_ms: f64,
    /// CRIU's own clock at "Restore finished successfully" (restore.log).
    criu_log_ms: Option<f64>,
    /// Starting the lazy-pages daemon until it is ready (done before the clock starts).
    lazy_daemon_ms: Option<f64>,
    /// Direct modes: everything done before the clock starts (cgroups, stdio, lazy
    /// daemon, pre-spawned CRIU and its cgroup migration).
    pre_ms: Option<f64>,
    count: Option<u64>,
}

struct Ctx<'a> {
    args: &'a Args,
    bundle: Bundle,
    descriptors: Vec<String>,
    port: u16,
    cgroup_parent: String,
    cgroup_mounts: Vec<(String, bool)>,
    cg_yard: Option<PathBuf>,
    expect_mounts: Option<BTreeSet<(String, String)>>,
}

/// A running restored instance and what must be undone.
struct Instance {
    id: String,
    pid: i32,
    our_child: bool,
    mode: Mode,
    cgroup: Option<String>,
    criu_root: Option<PathBuf>,
    lazy: Option<Child>,
    drains: Vec<JoinHandle<()>>,
    /// Our ends of the container's stdio (stdin's write end).
    stdio: Vec<OwnedFd>,
    /// A pre-spawned `criu swrk` not yet used (direct-pre modes).
    swrk: Option<Child>,
}

fn criu_log_finished_ms(log: &Path) -> Option<f64> {
    let text = fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .find(|l| l.contains("Restore finished successfully"))?;
    let t = line.strip_prefix('(')?.split(')').next()?.trim();
    t.parse::<f64>().ok().map(|s| s * 1000.0)
}

/// Starts `criu lazy-pages` serving the images from `work` (the restore finds it through
/// `lazy-pages.socket` in its own work dir, so both must use the same one) and waits until
/// it says it is ready (`--status-fd`).
fn start_lazy_daemon(
    criu: &Path,
    image: &Path,
    work: &Path,
    log_level: i32,
) -> Result<(Child, f64)> {
    let t = Instant::now();
    let (r, w) = pipe()?;
    set_cloexec(w.as_raw_fd(), false)?; // the daemon inherits the write end
    let child = Command::new(criu)
        .arg("lazy-pages")
        .arg("--images-dir")
        .arg(image)
        .arg("--work-dir")
        .arg(work)
        .args(["--log-file", "lazy-pages.log", &format!("-v{log_level}")])
        .arg("--status-fd")
        .arg(w.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    drop(w);
    let mut child = ctx(child, format!("start {} lazy-pages", criu.display()))?;
    let mut b = [0u8; 1];
    let ready = File::from(r).read(&mut b);
    if !matches!(ready, Ok(1)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "criu lazy-pages did not get ready (see {}/lazy-pages.log)",
            work.display()
        ));
    }
    Ok((child, ms(t.elapsed())))
}

/// Restores with CRIU driven directly through libcriu.
///
/// `pre`: a `criu swrk` is started and moved into the instance's (pre-created) cgroups
/// before the clock starts, holding the stdio fds it will hand over; the request then
/// goes to it over its socket (libcriu's service-fd mode). Its tree is born in those
/// cgroups, so nothing is migrated on the critical path: each cgroup migration here
/// waits for an RCU grace period (cgroup_threadgroup_rwsem), 5-15 ms.
fn restore_direct(
    c: &Ctx,
    criu: &Path,
    id: &str,
    lazy: bool,
    pre: bool,
) -> Result<(Instance, Sample)> {
    let a = c.args;
    let dir = a.work.join(id);
    let work = dir.join("work");
    ctx(fs::create_dir_all(&work), work.display())?;
    let criu_root = dir.join("criu-root");
    ctx(fs::create_dir_all(&criu_root), criu_root.display())?;
    let cgroup = format!("{}/{id}", c.cgroup_parent.trim_end_matches('/'));
    let mut s = Sample::default();
    let precreated = a.precreate_cgroups || pre;
    let mut inst = Instance {
        id: id.to_string(),
        pid: 0,
        our_child: true,
        mode: match (lazy, pre) {
            (false, false) => Mode::Direct,
            (true, false) => Mode::DirectLazy,
            (false, true) => Mode::DirectPre,
            (true, true) => Mode::DirectPreLazy,
        },
        cgroup: Some(cgroup.clone()),
        criu_root: None,
        lazy: None,
        drains: Vec::new(),
        stdio: Vec::new(),
        swrk: None,
    };

    // --- Before the request (a warm pool pays these ahead) ---------------------------
    let tp = Instant::now();
    if precreated {
        precreate_cgroup(&c.cgroup_mounts, &cgroup, &c.bundle.device_rules)?;
    }
    // stdio: every `pipe:[N]` of descriptors.json is external to the image. Hand in our
    // own pipes (the shim's stdio), keyed by that string; one pipe per distinct key.
    let mut inherit: Vec<(OwnedFd, String)> = Vec::new();
    for (i, d) in c.descriptors.iter().enumerate() {
        if !d.starts_with("pipe:") || inherit.iter().any(|(_, k)| k == d) {
            continue;
        }
        let (r, w) = pipe()?;
        let container_end = if i == 0 {
            inst.stdio.push(w);
            r
        } else {
            inst.drains.push(drain(r, dir.join(format!("fd{i}.log"))));
            w
        };
        inherit.push((container_end, d.clone()));
    }
    // Namespaces the container joined (a pod's netns): net and pid are external to the
    // image (runc dumps them as `--external net[<inode>]:extRootNetNS`) and come back as
    // an inherited fd with that key; the others are joined (join_ns below).
    for (t, p) in &c.bundle.ns_paths {
        if t == "network" || t == "pid" {
            let f: OwnedFd = ctx(File::open(p), p)?.into();
            inherit.push((
                f,
                if t == "network" {
                    "extRootNetNS"
                } else {
                    "extRootPidNS"
                }
                .to_string(),
            ));
        }
    }
    // The lazy-pages daemon: its own start-up (and feature detection) is paid here.
    if lazy {
        let (child, t) = start_lazy_daemon(criu, &a.image, &work, a.log_level)?;
        s.lazy_daemon_ms = Some(t);
        inst.lazy = Some(child);
    }
    let mut service_fd: Option<OwnedFd> = None;
    if pre {
        let (sk, child) = spawn_swrk(criu, &inherit)?;
        // The migration (and its RCU grace period) happens now, not during the restore.
        for (mp, _) in &c.cgroup_mounts {
            let procs = PathBuf::from(format!("{mp}{cgroup}/cgroup.procs"));
            ctx(fs::write(&procs, child.id().to_string()), procs.display())?;
        }
        service_fd = Some(sk);
        inst.swrk = Some(child);
    }
    s.pre_ms = Some(ms(tp.elapsed()));

    // --- The restore --------------------------------------------------------------------
    let t0 = Instant::now();
    // 1. CRIU's root must be a mount point whose parent is not overmounted: bind the
    //    container's rootfs on a fresh directory (runc: <state>/<id>/criu-root).
    bind_mount(&c.bundle.rootfs, &criu_root)?;
    inst.criu_root = Some(criu_root.clone());
    // 2. Mount points the spec needs must exist in the rootfs (runc's
    //    prepareCriuRestoreMounts); they do when it is the rootfs that was checkpointed.
    ensure_mountpoints(&criu_root, &c.bundle.mounts)?;

    // 3. The options runc's libcontainer Restore sends, minus what needs runc.
    let o = Opts::new(criu)?;
    let images = ctx(File::open(&a.image), a.image.display())?;
    let workdir = ctx(File::open(&work), work.display())?;
    let root_c = cpath(&criu_root)?;
    let log_c = cstr("restore.log")?;
    // SAFETY: valid handle; descriptors stay open until the request returns; libcriu
    // copies strings.
    unsafe {
        ffi::criu_local_set_images_dir_fd(o.p(), images.as_raw_fd());
        ffi::criu_local_set_work_dir_fd(o.p(), workdir.as_raw_fd());
        check(
            ffi::criu_local_set_log_file(o.p(), log_c.as_ptr()),
            "set_log_file",
        )?;
        ffi::criu_local_set_log_level(o.p(), a.log_level);
        check(ffi::criu_local_set_root(o.p(), root_c.as_ptr()), "set_root")?;
        ffi::criu_local_set_evasive_devices(o.p(), true);
        // The instance's cgroups: the tree goes to <cgroup> in every hierarchy (cg_root
        // without a controller rewrites them all), before its memory is restored, so the
        // pages are charged to it. Properties (devices allow-list, cpuset, memory
        // limits) come from the image: "soft" restores them on the directories CRIU
        // creates, "full" also on existing ones.
        ffi::criu_local_set_manage_cgroups(o.p(), true);
        ffi::criu_local_set_manage_cgroups_mode(
            o.p(),
            if precreated {
                ffi::criu_cg_mode::CRIU_CG_MODE_FULL
            } else {
                ffi::criu_cg_mode::CRIU_CG_MODE_SOFT
            },
        );
        let cg = cstr(&cgroup)?;
        check(
            ffi::criu_local_add_cg_root(o.p(), std::ptr::null(), cg.as_ptr()),
            "add_cg_root",
        )?;
        // Without a yard, CRIU mounts every hierarchy afresh under its work dir on each
        // restore (and unmounts them after); mounting cgroup2 alone took 5-15 ms here.
        if let Some(y) = &c.cg_yard {
            let y = cpath(y)?;
            check(
                ffi::criu_local_add_cg_yard(o.p(), y.as_ptr()),
                "add_cg_yard",
            )?;
        }
    }
    // ext mounts: key = where the mount is in the container, value = what to bind there.
    for (k, v) in ext_mounts(c, &cgroup) {
        let (k, v) = (cstr(&k)?, cstr(&v)?);
        // SAFETY: valid handle and strings.
        check(
            unsafe { ffi::criu_local_add_ext_mount(o.p(), k.as_ptr(), v.as_ptr()) },
            "add_ext_mount",
        )?;
    }
    for (t, p) in &c.bundle.ns_paths {
        let ns =
            match t.as_str() {
                "network" | "pid" => continue, // inherited fds, above
                "cgroup" => return Err(
                    "restoring into an existing cgroup namespace: CRIU cannot (runc refuses too)"
                        .into(),
                ),
                "mount" => "mnt",
                "ipc" => "ipc",
                "uts" => "uts",
                "user" => "user",
                "time" => "time",
                x => return Err(format!("namespace type {x:?} with a path is not supported")),
            };
        let (n, f) = (cstr(ns)?, cstr(p)?);
        // SAFETY: valid handle and strings.
        check(
            unsafe { ffi::criu_local_join_ns_add(o.p(), n.as_ptr(), f.as_ptr(), std::ptr::null()) },
            "join_ns_add",
        )?;
    }
    // inherit_fd: CRIU looks the fd up by number in its own table, so the fd must be
    // open there under the same number: inherited through libcriu's fork+exec (so not
    // close-on-exec at that moment), or already in the pre-spawned swrk.
    for (f, key) in &inherit {
        let k = cstr(key)?;
        // SAFETY: valid handle; the fd stays open until after the request.
        check(
            unsafe { ffi::criu_local_add_inherit_fd(o.p(), f.as_raw_fd(), k.as_ptr()) },
            "add_inherit_fd",
        )?;
    }
    // libcriu 4.2 cannot set lazy_pages (no setter), nor rst_sibling outside
    // criu_local_restore_child (which always forks its own CRIU). CRIU applies an RPC
    // config file over the request's options: set them there.
    let mut conf = String::new();
    if lazy {
        conf.push_str("lazy-pages\n");
    }
    if pre {
        conf.push_str("restore-sibling\n");
    }
    if !conf.is_empty() {
        let path = work.join("restore.conf");
        ctx(fs::write(&path, conf), path.display())?;
        let cc = cpath(&path)?;
        // SAFETY: valid handle and string.
        check(
            unsafe { ffi::criu_local_set_config_file(o.p(), cc.as_ptr()) },
            "set_config_file",
        )?;
    }
    if let Some(sk) = service_fd.take() {
        // libcriu closes the service fd after the request: hand over ownership.
        // SAFETY: valid handle; the fd is a connected SOCK_SEQPACKET to the swrk.
        unsafe { ffi::criu_local_set_service_fd(o.p(), std::os::fd::IntoRawFd::into_raw_fd(sk)) };
    } else {
        for (f, _) in &inherit {
            set_cloexec(f.as_raw_fd(), false)?;
        }
    }
    s.prep_ms = ms(t0.elapsed());

    // 4. The restore: with rst_sibling CRIU creates the tree as a sibling of itself, i.e.
    //    as a child of this process, which is then its parent and reaper, as the shim
    //    must be.
    let t1 = Instant::now();
    // SAFETY: valid handle; everything it names is open or mounted.
    let pid = unsafe {
        if pre {
            ffi::criu_local_restore(o.p())
        } else {
            ffi::criu_local_restore_child(o.p())
        }
    };
    let errno = io::Error::last_os_error();
    s.restore_ms = ms(t1.elapsed());
    drop(inherit); // the container has its own copies now
    drop(o);
    if let Some(mut w) = inst.swrk.take() {
        let _ = w.wait(); // it exits once libcriu closes the socket
    }
    if pid <= 0 {
        let _ = cleanup(inst, c);
        return Err(format!(
            "CRIU restore failed ({pid}, errno {errno}); see {}/restore.log",
            work.display()
        ));
    }
    inst.pid = pid;
    // runc unmounts criu-root right after the restore: the container's mount namespace
    // holds its own copy.
    umount_detach(&criu_root)?;
    inst.criu_root = None;

    let (body, t2) = in_netns(a.probe_netns.as_deref(), || {
        first_response(c.port, &a.path, t0 + Duration::from_secs(20))
    })?;
    s.first_ms = ms(t2 - t0);
    s.count = json_count(&body);
    s.criu_log_ms = criu_log_finished_ms(&work.join("restore.log"));
    Ok((inst, s))
}

/// The ext-mount map (key = mount point in the container, value = host path to bind
/// there), as runc's Restore builds it.
fn ext_mounts(c: &Ctx, cgroup: &str) -> Vec<(String, String)> {
    let mut ext: Vec<(String, String)> = Vec::new();
    for m in &c.bundle.mounts {
        if m.bind {
            ext.push((m.destination.clone(), m.source.clone()));
        } else if m.kind == "cgroup" && !c.bundle.has_cgroupns {
            // cgroup v1 without cgroupns: runc bind-mounts each hierarchy's container
            // cgroup at <destination>/<hierarchy>. (runc's own Restore binds the cgroup
            // runc itself is in, usually the host's root: a runc bug; this is the
            // container's, as at creation.)
            for (mp, v2) in &c.cgroup_mounts {
                if *v2 {
                    continue;
                }
                let base = Path::new(mp)
                    .file_name()
                    .map(|b| b.to_string_lossy().into_owned())
                    .unwrap_or_default();
                ext.push((
                    format!("{}/{base}", m.destination.trim_end_matches('/')),
                    format!("{mp}{cgroup}"),
                ));
            }
        }
    }
    // Masked files are binds of /dev/null; runc's dump records them as external with
    // the key /dev/null.
    if !c.bundle.masked_paths.is_empty() {
        ext.push(("/dev/null".into(), "/dev/null".into()));
    }
    for d in &c.bundle.devices {
        if !ext.iter().any(|(k, _)| k == d) {
            ext.push((d.clone(), d.clone()));
        }
    }
    ext
}

/// Starts `criu swrk <fd>` with the fds it will hand to the restored tree already in
/// its table (same numbers as here). Returns our end of its socket.
fn spawn_swrk(criu: &Path, inherit: &[(OwnedFd, String)]) -> Result<(OwnedFd, Child)> {
    let mut sv = [0 as RawFd; 2];
    // SAFETY: valid out-array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(format!("socketpair: {}", io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    set_cloexec(theirs.as_raw_fd(), false)?;
    for (f, _) in inherit {
        set_cloexec(f.as_raw_fd(), false)?;
    }
    let child = Command::new(criu)
        .arg("swrk")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    for (f, _) in inherit {
        set_cloexec(f.as_raw_fd(), true)?;
    }
    drop(theirs);
    Ok((ours, ctx(child, format!("start {} swrk", criu.display()))?))
}

/// runc's default device rules (libcontainer/specconv AllowedDevices), appended after
/// the spec's own `linux.resources.devices` rules.
const RUNC_ALLOWED_DEVICES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:8 rwm",
    "c 1:7 rwm",
    "c 5:0 rwm",
    "c 1:5 rwm",
    "c 1:9 rwm",
    "c 136:* rwm",
    "c 5:2 rwm",
    "c 10:200 rwm",
];

/// Creates `cgroup` in every hierarchy ahead of the restore (what a warm pool would do).
///
/// - A new cpuset cgroup v1 has empty cpuset.cpus/mems and refuses tasks (ENOSPC): copy
///   them from the parent, top down.
/// - CRIU restores the devices allow-list (like cpuset) only on a directory it creates
///   itself ("special" properties), not on an existing one, even in "full" mode: write
///   it here, as runc would (deny all, the spec's rules, runc's defaults). Without this
///   the instance could open every device node.
/// - Other limits: CRIU "full" mode writes the dumped ones; a spec that differs from the
///   image needs them written after the restore.
fn precreate_cgroup(
    hierarchies: &[(String, bool)],
    cgroup: &str,
    device_rules: &[(bool, String)],
) -> Result<()> {
    for (mp, _) in hierarchies {
        let mut path = PathBuf::from(mp);
        for part in cgroup.split('/').filter(|p| !p.is_empty()) {
            let parent = path.clone();
            path.push(part);
            if path.is_dir() {
                continue;
            }
            ctx(fs::create_dir(&path), path.display())?;
            if path.join("cpuset.cpus").exists() {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let v = ctx(fs::read_to_string(parent.join(f)), parent.join(f).display())?;
                    ctx(fs::write(path.join(f), v.trim()), path.join(f).display())?;
                }
            }
        }
        if path.join("devices.deny").exists() {
            let write = |file: &str, rule: &str| {
                let f = path.join(file);
                ctx(fs::write(&f, rule), format!("{} <- {rule}", f.display()))
            };
            write("devices.deny", "a")?;
            for (allow, rule) in device_rules {
                write(
                    if *allow {
                        "devices.allow"
                    } else {
                        "devices.deny"
                    },
                    rule,
                )?;
            }
            for rule in RUNC_ALLOWED_DEVICES {
                write("devices.allow", rule)?;
            }
        }
    }
    Ok(())
}

/// Whether the host's hierarchies are mounted the way CRIU names a cgroup yard's
/// directories (`<controllers>`, `systemd` for name=systemd, `unified` for cgroup2), all
/// in one directory: then that directory can be CRIU's yard.
fn detect_cg_yard(hierarchies: &[(String, bool)]) -> Option<PathBuf> {
    let dir = Path::new(&hierarchies.first()?.0).parent()?.to_path_buf();
    let ok = hierarchies.iter().all(|(mp, v2)| {
        let p = Path::new(mp);
        p.parent() == Some(dir.as_path())
            && (!*v2 || p.file_name().and_then(|n| n.to_str()) == Some("unified"))
    });
    ok.then_some(dir)
}

/// runc's prepareCriuRestoreMounts, reduced: every mount point outside a tmpfs mount must
/// exist in the rootfs (CRIU restores tmpfs contents itself). runc also bind-mounts bind
/// mounts for the duration, so mount points inside them can be created; not needed when
/// the rootfs is the one that was checkpointed (all mount points exist already).
fn ensure_mountpoints(root: &Path, mounts: &[SpecMount]) -> Result<()> {
    let tmpfs: Vec<&str> = mounts
        .iter()
        .filter(|m| m.kind == "tmpfs")
        .map(|m| m.destination.as_str())
        .collect();
    for m in mounts {
        if m.kind == "cgroup"
            || tmpfs
                .iter()
                .any(|t| m.destination.starts_with(&format!("{t}/")))
        {
            continue;
        }
        let rel = m.destination.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(format!(
                "mount destination {:?} escapes the rootfs",
                m.destination
            ));
        }
        let p = root.join(rel);
        if fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        if m.bind && Path::new(&m.source).is_file() {
            if let Some(parent) = p.parent() {
                ctx(fs::create_dir_all(parent), parent.display())?;
            }
            ctx(File::create(&p), p.display())?;
        } else {
            ctx(fs::create_dir_all(&p), p.display())?;
        }
    }
    Ok(())
}

fn restore_runc(c: &Ctx, criu: &Path, id: &str, lazy: bool) -> Result<(Instance, Sample)> {
    let a = c.args;
    let dir = a.work.join(id);
    let work = dir.join("work");
    ctx(fs::create_dir_all(&work), work.display())?;
    let mut s = Sample::default();
    let mut lazy_child = None;
    if lazy {
        let (child, t) = start_lazy_daemon(criu, &a.image, &work, a.log_level)?;
        s.lazy_daemon_ms = Some(t);
        lazy_child = Some(child);
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let pid_file = dir.join("pid");
    let mut cmd = Command::new(&a.runc);
    cmd.arg("--root")
        .arg(a.work.join("runc-state"))
        .arg("--criu")
        .arg(criu)
        .arg("restore")
        .arg("--detach")
        .arg("--image-path")
        .arg(&a.image)
        .arg("--work-path")
        .arg(&work)
        .arg("--bundle")
        .arg(&c.bundle.dir)
        .arg("--pid-file")
        .arg(&pid_file);
    if lazy {
        cmd.arg("--lazy-pages");
    }
    cmd.arg(id)
        .stdin(Stdio::from(in_r))
        .stdout(Stdio::from(ctx(out_w.try_clone(), "dup")?))
        .stderr(Stdio::from(out_w));
    let t0 = Instant::now();
    let out = ctx(cmd.output(), format!("run {}", a.runc))?;
    s.restore_ms = ms(t0.elapsed());
    let drains = vec![drain(out_r, dir.join("fd1.log"))];
    let inst_fail = |msg: String| -> Result<(Instance, Sample)> {
        let _ = Command::new(&a.runc)
            .arg("--root")
            .arg(a.work.join("runc-state"))
            .args(["delete", "-f", id])
            .output();
        Err(msg)
    };
    if !out.status.success() {
        return inst_fail(format!(
            "runc restore failed: {} (see {}/restore.log)",
            out.status,
            work.display()
        ));
    }
    let pid: i32 = match fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse().ok())
    {
        Some(p) => p,
        None => return inst_fail("runc wrote no pid file".into()),
    };
    let inst = Instance {
        id: id.to_string(),
        pid,
        our_child: false,
        mode: if lazy { Mode::RuncLazy } else { Mode::Runc },
        cgroup: None,
        criu_root: None,
        lazy: lazy_child,
        drains,
        stdio: vec![in_w],
        swrk: None,
    };
    let (body, t2) = in_netns(a.probe_netns.as_deref(), || {
        first_response(c.port, &a.path, t0 + Duration::from_secs(20))
    })?;
    s.first_ms = ms(t2 - t0);
    s.count = json_count(&body);
    s.criu_log_ms = criu_log_finished_ms(&work.join("restore.log"));
    Ok((inst, s))
}

/// Mount points and filesystem types, for comparing two mount namespaces. A masked file
/// (a bind of a `/dev/null`) counts as `masked`: runc's dump records it as external, so a
/// restore binds the host's /dev/null (devtmpfs) where the original had its own /dev's
/// (tmpfs) — runc restore does the same.
fn mount_set(mounts: &[MountInfo]) -> BTreeSet<(String, String)> {
    mounts
        .iter()
        .map(|m| {
            let t = if m.root == "/null" {
                "masked".to_string()
            } else {
                m.fstype.clone()
            };
            (m.mountpoint.clone(), t)
        })
        .collect()
}

/// Checks that the restored instance is whole: alive, in its cgroup, with the mounts the
/// original had. Returns a one-line summary.
fn inspect(c: &Ctx, inst: &Instance) -> Result<String> {
    let pid = inst.pid;
    let cmdline = ctx(
        fs::read(format!("/proc/{pid}/cmdline")),
        format!("/proc/{pid} (is it alive?)"),
    )?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    let cg = ctx(fs::read_to_string(format!("/proc/{pid}/cgroup")), "cgroup")?;
    let want = match &inst.cgroup {
        Some(p) => p.clone(),
        None => c.bundle.cgroups_path.clone().unwrap_or_default(),
    };
    let wrong: Vec<&str> = cg
        .lines()
        .filter(|l| !l.ends_with(&format!(":{want}")))
        .collect();
    if !wrong.is_empty() {
        return Err(format!(
            "pid {pid} is not (only) in cgroup {want}: {wrong:?}"
        ));
    }
    let status = ctx(fs::read_to_string(format!("/proc/{pid}/status")), "status")?;
    let ppid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if inst.our_child && ppid != std::process::id() {
        return Err(format!("pid {pid}'s parent is {ppid}, not this process"));
    }
    let mi = ctx(
        fs::read_to_string(format!("/proc/{pid}/mountinfo")),
        "mountinfo",
    )?;
    let mounts = parse_mountinfo(&mi);
    // The network namespace: the pod's (the spec's path), or the host's.
    let want_net = c
        .bundle
        .ns_paths
        .iter()
        .find(|(t, _)| t == "network")
        .map(|(_, p)| PathBuf::from(p))
        .unwrap_or_else(|| PathBuf::from("/proc/self/ns/net"));
    let ino = |p: &Path| -> Result<u64> {
        let m = fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(std::os::unix::fs::MetadataExt::ino(&m))
    };
    let (net, want_ino) = (
        ino(Path::new(&format!("/proc/{pid}/ns/net")))?,
        ino(&want_net)?,
    );
    if net != want_ino {
        return Err(format!(
            "pid {pid} is in netns {net}, not {} ({want_ino})",
            want_net.display()
        ));
    }
    let parent = if ppid == std::process::id() {
        "this process".to_string()
    } else {
        ppid.to_string()
    };
    let mut summary = format!(
        "pid {pid} ({}), parent {parent}, netns {net}, cgroup {want} ({} hierarchies), {} mounts",
        cmdline.trim(),
        cg.lines().count(),
        mounts.len()
    );
    // The devices allow-list must be in force (a cgroup made without it allows all).
    if let Some((mp, _)) = c
        .cgroup_mounts
        .iter()
        .find(|(mp, _)| Path::new(&format!("{mp}{want}/devices.list")).exists())
    {
        let list = fs::read_to_string(format!("{mp}{want}/devices.list")).unwrap_or_default();
        if list.lines().any(|l| l.trim() == "a *:* rwm") {
            return Err(format!(
                "devices cgroup {want} allows every device (a *:* rwm)"
            ));
        }
        let _ = write!(summary, ", {} device rules", list.lines().count());
    }
    // cgroup v1 bind mounts must show the instance's own cgroup, not a host one.
    let bad_cg: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" && m.root != want)
        .map(|m| format!("{}={}", m.mountpoint, m.root))
        .collect();
    if !bad_cg.is_empty() {
        let _ = write!(
            summary,
            "; cgroup mounts with another root: {}",
            bad_cg.join(" ")
        );
    }
    if let Some(expect) = &c.expect_mounts {
        let got = mount_set(&mounts);
        let missing: Vec<_> = expect.difference(&got).collect();
        let extra: Vec<_> = got.difference(expect).collect();
        if missing.is_empty() && extra.is_empty() {
            summary.push_str(", same mount points and types as the original");
        } else {
            let _ = write!(
                summary,
                ", mounts differ from the original: missing {missing:?}, extra {extra:?}"
            );
        }
    }
    Ok(summary)
}

/// Kills the instance and undoes everything its restore set up.
fn cleanup(mut inst: Instance, c: &Ctx) -> Result<()> {
    let a = c.args;
    if inst.pid > 0 {
        if inst.mode.runc() {
            let out = Command::new(&a.runc)
                .arg("--root")
                .arg(a.work.join("runc-state"))
                .args(["delete", "-f", &inst.id])
                .output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                // SAFETY: plain kill of the pid runc restored.
                unsafe { libc::kill(inst.pid, libc::SIGKILL) };
            }
            // Re-parented to us (subreaper) when runc exited: reap it.
            kill_and_reap(inst.pid);
        } else {
            kill_and_reap(inst.pid);
        }
    }
    if let Some(mut d) = inst.lazy.take() {
        // The daemon exits once the tree it serves is gone (or all pages are sent).
        let deadline = Instant::now() + Duration::from_secs(2);
        while matches!(d.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if matches!(d.try_wait(), Ok(None)) {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
    if let Some(mut w) = inst.swrk.take() {
        let _ = w.kill();
        let _ = w.wait();
    }
    inst.stdio.clear();
    for d in inst.drains.drain(..) {
        let _ = d.join();
    }
    if let Some(r) = &inst.criu_root {
        umount_detach(r)?;
    }
    if let Some(cg) = &inst.cgroup {
        for (mp, _) in &c.cgroup_mounts {
            let p = PathBuf::from(format!("{mp}{cg}"));
            if p.is_dir() {
                ctx(fs::remove_dir(&p), p.display())?;
            }
        }
    }
    let root = a.work.join(&inst.id).join("criu-root");
    let _ = fs::remove_dir(root);
    Ok(())
}

fn run(args: Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root (CRIU restores namespaces, mounts and cgroups)".into());
    }
    // Like the shim: a child subreaper, so what runc restores (and leaves behind when it
    // exits) is re-parented to us and reaped here, not by init.
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "PR_SET_CHILD_SUBREAPER: {}",
            io::Error::last_os_error()
        ));
    }
    let bundle = Bundle::load(&args.bundle)?;
    if bundle.terminal {
        return Err("process.terminal=true: a console restore (orphan_pts_master + the console socket) is not covered by this example".into());
    }
    if !bundle.rootfs.join("proc").exists() {
        return Err(format!(
            "the bundle's rootfs {} looks empty: mount it first",
            bundle.rootfs.display()
        ));
    }
    let descriptors = load_descriptors(&args.image)?;
    let port = args
        .port
        .or(bundle.env_port)
        .ok_or("no --port and no PORT= in the bundle's process.env")?;
    let cgroup_parent = args.cgroup_parent.clone().unwrap_or_else(|| {
        bundle
            .cgroups_path
            .as_deref()
            .and_then(|p| Path::new(p).parent())
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| p.starts_with('/') && p != "/")
            .unwrap_or_else(|| "/rekindle-direct".into())
    });
    let expect_mounts = match &args.expect_mountinfo {
        Some(f) => Some(mount_set(&parse_mountinfo(&ctx(
            fs::read_to_string(f),
            f.display(),
        )?))),
        None => None,
    };
    ctx(fs::create_dir_all(&args.work), args.work.display())?;
    let cgroup_mounts = host_cgroup_mounts()?;
    let cg_yard = match args.cg_yard.as_deref() {
        None => None,
        Some("auto") => detect_cg_yard(&cgroup_mounts),
        Some(p) => Some(PathBuf::from(p)),
    };
    let c = Ctx {
        args: &args,
        cgroup_mounts,
        cg_yard,
        bundle,
        descriptors,
        port,
        cgroup_parent,
        expect_mounts,
    };
    println!(
        "bundle {} (rootfs {}), image {} ({}), port {port}, stdio {:?}, cgroup parent {}, CRIU cgroup yard {}{}",
        c.bundle.dir.display(),
        c.bundle.rootfs.display(),
        args.image.display(),
        dir_size_mb(&args.image),
        c.descriptors,
        c.cgroup_parent,
        c.cg_yard.as_ref().map(|y| y.display().to_string()).unwrap_or("(CRIU mounts its own)".into()),
        if args.precreate_cgroups { ", cgroups created before the clock" } else { "" }
    );
    if !in_netns(args.probe_netns.as_deref(), || Ok(port_is_free(port)))? {
        return Err(format!(
            "something already answers on 127.0.0.1:{port}: stop it first"
        ));
    }

    let combos: Vec<(usize, Mode)> = (0..args.criu.len())
        .flat_map(|ci| args.modes.iter().map(move |m| (ci, *m)))
        .collect();
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); combos.len()];
    let total = args.repeat * combos.len();
    let mut done = 0;
    for rep in 0..args.repeat {
        for (k, (ci, mode)) in combos.iter().enumerate() {
            done += 1;
            let criu = &args.criu[*ci];
            let id = format!("drx-{}-c{ci}-{rep}", mode.name());
            let restored = if mode.runc() {
                restore_runc(&c, criu, &id, mode.lazy())
            } else {
                restore_direct(&c, criu, &id, mode.lazy(), mode.pre())
            };
            let (inst, s) = match restored {
                Ok(x) => x,
                Err(e) => return Err(format!("{id}: {e}")),
            };
            let check = inspect(&c, &inst);
            println!(
                "[{done}/{total}] {:<15} criu#{ci} first response {:6.1} ms  (prep {:4.1}, restore call {:6.1}, CRIU log {:>6}{}{}) count={}  {}",
                mode.name(),
                s.first_ms,
                s.prep_ms,
                s.restore_ms,
                s.criu_log_ms.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                s.pre_ms.map(|v| format!("; before the clock {v:.1}")).unwrap_or_default(),
                s.lazy_daemon_ms.map(|v| format!(" incl. lazy daemon {v:.1}")).unwrap_or_default(),
                s.count.map(|n| n.to_string()).unwrap_or("?".into()),
                match &check {
                    Ok(m) => m.clone(),
                    Err(e) => format!("CHECK FAILED: {e}"),
                }
            );
            let last = rep + 1 == args.repeat && k + 1 == combos.len();
            if args.keep && last {
                println!(
                    "kept {} (pid {}); clean up: kill -9 {}; rmdir the cgroup {} in each hierarchy under /sys/fs/cgroup{}",
                    inst.id,
                    inst.pid,
                    inst.pid,
                    inst.cgroup.clone().unwrap_or_else(|| "(runc's)".into()),
                    if inst.mode.runc() { format!("; runc --root {}/runc-state delete -f {}", args.work.display(), inst.id) } else { String::new() }
                );
                std::mem::forget(inst);
            } else {
                cleanup(inst, &c)?;
                // The listening socket goes with the process; wait until the port is free.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !in_netns(args.probe_netns.as_deref(), || Ok(port_is_free(port)))?
                    && Instant::now() < deadline
                {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            check?;
            if s.count != Some(2) {
                eprintln!("warning: count {:?} after restore, expected 2 (one request before the checkpoint)", s.count);
            }
            results[k].push(s);
        }
    }

    println!("\n| mode | CRIU binary | n | first response p50 | min | max | restore call p50 | CRIU log p50 |");
    println!("|---|---|---|---|---|---|---|---|");
    for (k, (ci, mode)) in combos.iter().enumerate() {
        let r = &results[k];
        let first: Vec<f64> = r.iter().map(|s| s.first_ms).collect();
        let call: Vec<f64> = r.iter().map(|s| s.restore_ms).collect();
        let log: Vec<f64> = r.iter().filter_map(|s| s.criu_log_ms).collect();
        println!(
            "| {} | {} | {} | {:.1} ms | {:.1} | {:.1} | {:.1} ms | {} |",
            mode.name(),
            args.criu[*ci].display(),
            r.len(),
            p50(&first),
            min(&first),
            max(&first),
            p50(&call),
            if log.is_empty() {
                "-".into()
            } else {
                format!("{:.1} ms", p50(&log))
            }
        );
    }
    Ok(())
}

fn dir_size_mb(p: &Path) -> String {
    let total: u64 = fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    format!("{:.0} MB", total as f64 / 1e6)
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
