//! The eBPF probes: load them, watch cgroups, read each watched cgroup's counters.
//!
//! ```no_run
//! use rekindle::bpf::{cgroup_id_of, Probes};
//!
//! let probes = match Probes::load() {
//!     Ok(p) => Some(p),
//!     Err(e) => {
//!         // e.g. "eBPF metrics are off: not permitted to load BPF programs ... the
//!         // agent continues on cgroup statistics alone"
//!         eprintln!("{e}");
//!         None
//!     }
//! };
//! if let Some(probes) = &probes {
//!     let id = cgroup_id_of("/sys/fs/cgroup/unified/default/fn-1")?;
//!     probes.watch(id)?;
//!     // ... the container runs ...
//!     if let Some(stats) = probes.read(id)? {
//!         println!("{} ms on CPU, {} minor faults", stats.cpu_ns / 1_000_000, stats.faults_minor);
//!     }
//!     probes.unwatch(id)?;
//! }
//! # Ok::<(), rekindle::bpf::BpfError>(())
//! ```
//!
//! # What is counted, and how
//!
//! The programs (`bpf/rekindle.bpf.c`) hang on BTF tracepoints only (`tp_btf`: the
//! scheduler's `sched_switch`, `sched_wakeup`, `sched_wakeup_new`, `sched_process_exec`,
//! `sched_process_exit`), so they need kernel BTF but no kprobes, tracefs or perf events.
//! One hash map is both the watch set and the counters: a cgroup is watched while it has
//! an entry, and a task of an unwatched cgroup costs one failed hash lookup per event.
//!
//! - CPU time: the time between a task's switch-in and its switch-out, added at the
//!   switch-out — a task that runs without being switched out shows up when it is.
//! - Run-queue latency: from becoming runnable (woken, new, or preempted while runnable)
//!   to the next switch-in, as a log2 histogram in microseconds (see [`runq_bucket_upper_us`]).
//! - Page faults: the kernel's own per-task `min_flt`/`maj_flt` (what `getrusage` and
//!   `/proc/<pid>/stat` report): their growth between a task's sightings in a watched
//!   cgroup (switch-in, switch-out, exit), kept per task, so a switch that goes unseen
//!   delays faults to the next sighting instead of losing them. The
//!   `exceptions:page_fault_user` tracepoint is not used: it fires before the fault is
//!   handled, so it cannot tell minor from major, and it would put a hook on every
//!   fault of the machine.
//! - Exec and exit: successful `execve`s; exits of processes (thread-group leaders).
//! - Timeline: the first switch-in and the first exec of a task of the cgroup since it
//!   was watched, or since [`Probes::restart_timeline`], in `CLOCK_MONOTONIC`
//!   nanoseconds (see [`monotonic_ns`]). Restart it just before the container starts
//!   (the agent does, before Tasks.Start) to get its start. The timeline is a map of its
//!   own (`timelines`, keyed by cgroup id like the counters), so restarting it leaves
//!   the counters alone.
//!
//! # Cgroup ids
//!
//! A cgroup id is a cgroup v2 id: the inode number of the cgroup's directory under the
//! cgroup2 mount ([`cgroup_id_of`]), what `bpf_get_current_cgroup_id()` returns. On a
//! cgroup v1 "hybrid" host (cgroup2 at `/sys/fs/cgroup/unified`, no controllers there)
//! this still works for containers: runc (1.1.5 here) puts a container's processes into
//! `/sys/fs/cgroup/unified/<cgroupsPath>` next to its v1 directories, so the id of that
//! directory is the container's. The ids of the v1 directories are different numbers
//! and must not be used.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::mem::{offset_of, size_of, MaybeUninit};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{ErrorKind, Link, MapCore, MapFlags, OpenObject, PrintLevel};
use thiserror::Error;

mod skel {
    include!(concat!(env!("OUT_DIR"), "/rekindle.skel.rs"));
}
use skel::{types, RekindleSkel, RekindleSkelBuilder};

/// Where the kernel exposes its own BTF, which the programs are relocated against.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How many cgroups can be watched at once (`MAX_WATCHED` in `bpf/rekindle.h`).
pub const MAX_WATCHED: usize = 4096;

/// Buckets of [`CgroupStats::runq_latency_hist`] (`RUNQ_BUCKETS` in `bpf/rekindle.h`).
pub const RUNQ_BUCKETS: usize = 24;

const FALLBACK: &str = "eBPF metrics are off; the agent continues on cgroup statistics alone";

/// What can go wrong loading or using the probes.
///
/// The variants returned by [`Probes::load`] say, in their message, that the agent
/// goes on without eBPF metrics: log them as they are.
#[derive(Debug, Error)]
pub enum BpfError {
    /// The kernel exposes no BTF, which the programs need (`CONFIG_DEBUG_INFO_BTF`).
    #[error("kernel BTF not found at {KERNEL_BTF} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed): {FALLBACK}")]
    NoKernelBtf,
    /// The process may not load BPF programs (needs root, or `CAP_BPF` and `CAP_PERFMON`).
    #[error("not permitted to load BPF programs (run as root, or with CAP_BPF and CAP_PERFMON): {FALLBACK}")]
    NotPermitted(#[source] libbpf_rs::Error),
    /// The kernel refused the programs or their maps (verifier, missing BTF type, ...);
    /// libbpf's log (the verifier's among it) is in the `tracing` output at debug level,
    /// target `libbpf`.
    #[error("loading the eBPF programs failed: {source}: {FALLBACK}")]
    Load {
        /// What libbpf reported.
        source: libbpf_rs::Error,
    },
    /// A program loaded but could not be attached to its tracepoint.
    #[error("attaching eBPF program {program} failed: {source}: {FALLBACK}")]
    Attach {
        /// The program's name in `bpf/rekindle.bpf.c`.
        program: &'static str,
        /// What libbpf reported.
        source: libbpf_rs::Error,
    },
    /// A map is not shaped as this crate expects (a build mix-up).
    #[error("eBPF map {map}: (value size, max entries) {found:?}, expected {expected:?}")]
    Layout {
        /// Which map.
        map: &'static str,
        /// Its value size and max entries in the loaded object.
        found: (usize, usize),
        /// What this crate expects.
        expected: (usize, usize),
    },
    /// All [`MAX_WATCHED`] slots are taken.
    #[error("cannot watch cgroup {0}: already watching {MAX_WATCHED} cgroups")]
    TooManyWatched(CgroupId),
    /// A map operation failed.
    #[error("eBPF map {op} for cgroup {cgroup} failed: {source}")]
    Map {
        /// lookup, update or delete.
        op: &'static str,
        /// The key.
        cgroup: CgroupId,
        /// What libbpf reported.
        source: libbpf_rs::Error,
    },
    /// A path could not be read as a cgroup directory.
    #[error("cgroup {}: {source}", path.display())]
    CgroupPath {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The path is a directory, but not on a cgroup2 file system.
    #[error("{} is not a cgroup v2 directory (on a cgroup v1 hybrid host use the directory under the cgroup2 mount, e.g. /sys/fs/cgroup/unified/<path>)", .0.display())]
    NotCgroup2(PathBuf),
    /// No cgroup2 file system is mounted.
    #[error("no cgroup2 file system is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2Mount,
}

/// A cgroup v2 id: the inode number of the cgroup's directory under the cgroup2 mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupId(pub u64);

impl fmt::Display for CgroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One watched cgroup's counters since it was watched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// Time its tasks spent on a CPU, ns (accounted when a task leaves the CPU).
    pub cpu_ns: u64,
    /// Run-queue waits (from runnable to running) measured.
    pub runq_count: u64,
    /// Their sum, ns.
    pub runq_total_ns: u64,
    /// Their distribution: bucket `i` ends at [`runq_bucket_upper_us`]`(i)` µs.
    pub runq_latency_hist: [u64; RUNQ_BUCKETS],
    /// Minor page faults (served without I/O).
    pub faults_minor: u64,
    /// Major page faults (needed I/O).
    pub faults_major: u64,
    /// Successful `execve`s.
    pub execs: u64,
    /// Processes that exited (thread-group leaders).
    pub exits: u64,
    /// When a task of the cgroup first ran since it was watched or its timeline
    /// restarted ([`Probes::restart_timeline`]), `CLOCK_MONOTONIC` ns.
    pub first_sched_ns: Option<u64>,
    /// When a task of the cgroup first exec'd since then, `CLOCK_MONOTONIC` ns.
    pub first_exec_ns: Option<u64>,
}

/// The upper bound (exclusive) of run-queue histogram bucket `i`, in microseconds;
/// `None` for the last bucket, which is open-ended. Bucket 0 holds waits below 2 µs,
/// bucket `i` waits in `[2^i, 2^(i+1))` µs.
pub fn runq_bucket_upper_us(i: usize) -> Option<u64> {
    (i + 1 < RUNQ_BUCKETS).then(|| 1u64 << (i + 1))
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of [`CgroupStats::first_sched_ns`].
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The cgroup id of a cgroup v2 directory (its inode number).
pub fn cgroup_id_of(path: impl AsRef<Path>) -> Result<CgroupId, BpfError> {
    let path = path.as_ref();
    let io_err = |source| BpfError::CgroupPath {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_dir() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        )));
    }
    let fs = nix::sys::statfs::statfs(path).map_err(|e| io_err(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(BpfError::NotCgroup2(path.to_owned()));
    }
    Ok(CgroupId(meta.ino()))
}

/// Where the cgroup2 file system is mounted: `/sys/fs/cgroup` on a cgroup v2 host,
/// `/sys/fs/cgroup/unified` on a v1 hybrid one.
pub fn cgroup2_root() -> Result<PathBuf, BpfError> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| BpfError::CgroupPath {
            path: "/proc/self/mountinfo".into(),
            source,
        })?;
    cgroup2_root_in(&mountinfo).ok_or(BpfError::NoCgroup2Mount)
}

/// The first cgroup2 mount point in a `/proc/<pid>/mountinfo` text.
fn cgroup2_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // id parent major:minor root mount-point options [optional...] - fstype source ...
        let (left, right) = line.split_once(" - ")?;
        (right.split(' ').next()? == "cgroup2")
            .then(|| left.split(' ').nth(4).map(unescape_mount_path))
            .flatten()
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\')
            .then(|| b.get(i + 1..i + 4))
            .flatten()
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

// The map values are read word by word in this order; the skeleton's copies of the C
// structs (generated from the object's BTF) prove the order and sizes at compile time.
const STATS_WORDS: usize = 3 + RUNQ_BUCKETS + 4;
const TIMELINE_WORDS: usize = 2;
const _: () = {
    use types::cgroup_stats as S;
    assert!(size_of::<S>() == STATS_WORDS * 8);
    assert!(offset_of!(S, cpu_ns) == 0);
    assert!(offset_of!(S, runq_count) == 8);
    assert!(offset_of!(S, runq_total_ns) == 16);
    assert!(offset_of!(S, runq_hist) == 24);
    assert!(size_of::<[u64; RUNQ_BUCKETS]>() == 8 * RUNQ_BUCKETS);
    assert!(offset_of!(S, faults_minor) == 24 + 8 * RUNQ_BUCKETS);
    assert!(offset_of!(S, faults_major) == 32 + 8 * RUNQ_BUCKETS);
    assert!(offset_of!(S, execs) == 40 + 8 * RUNQ_BUCKETS);
    assert!(offset_of!(S, exits) == 48 + 8 * RUNQ_BUCKETS);
    use types::timeline as T;
    assert!(size_of::<T>() == TIMELINE_WORDS * 8);
    assert!(offset_of!(T, first_sched_ns) == 0);
    assert!(offset_of!(T, first_exec_ns) == 8);
};

impl CgroupStats {
    /// From a `cgroups` map value and, if there is one, the `timelines` value.
    fn from_map_values(value: &[u8], timeline: Option<&[u8]>) -> Self {
        fn words(v: &[u8]) -> impl Iterator<Item = u64> + '_ {
            v.chunks_exact(8)
                .map(|w| u64::from_ne_bytes(w.try_into().expect("chunks of 8")))
        }
        let mut stats = words(value);
        let mut next = || stats.next().unwrap_or(0);
        let mut tl = words(timeline.unwrap_or_default());
        let nonzero = |v: Option<u64>| v.filter(|&v| v != 0);
        let cpu_ns = next();
        let runq_count = next();
        let runq_total_ns = next();
        let mut runq_latency_hist = [0; RUNQ_BUCKETS];
        runq_latency_hist.iter_mut().for_each(|b| *b = next());
        CgroupStats {
            cpu_ns,
            runq_count,
            runq_total_ns,
            runq_latency_hist,
            faults_minor: next(),
            faults_major: next(),
            execs: next(),
            exits: next(),
            first_sched_ns: nonzero(tl.next()),
            first_exec_ns: nonzero(tl.next()),
        }
    }
}

/// The loaded and attached eBPF programs and their maps. Dropping it detaches them.
pub struct Probes {
    // Dropped first: detaches the programs before the object is closed.
    links: Vec<Link>,
    skel: RekindleSkel<'static>,
}

impl fmt::Debug for Probes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Probes {
    /// Loads the programs into the kernel and attaches them to their tracepoints.
    ///
    /// Needs kernel BTF and the right to load BPF programs (root, or `CAP_BPF` +
    /// `CAP_PERFMON`); without them the error says so, and that the agent continues
    /// on cgroup statistics alone. libbpf's messages go to `tracing` (target
    /// `libbpf`); those it prints while a load fails at debug level only, so that the
    /// returned error is the one warning a caller logs.
    pub fn load() -> Result<Probes, BpfError> {
        route_libbpf_log();
        let _capturing = LoadCapture::start();
        let probes = Self::load_attach();
        LoadCapture::finish(probes.is_ok());
        probes
    }

    fn load_attach() -> Result<Probes, BpfError> {
        if !Path::new(KERNEL_BTF).exists() {
            return Err(BpfError::NoKernelBtf);
        }
        let load_err = |source: libbpf_rs::Error| {
            if source.kind() == ErrorKind::PermissionDenied {
                BpfError::NotPermitted(source)
            } else {
                BpfError::Load { source }
            }
        };
        // The skeleton borrows the storage of its object for its whole life; a `Probes`
        // owns the skeleton, so the storage (a few words; the object itself is closed
        // when the skeleton drops) is leaked once per load.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = RekindleSkelBuilder::default()
            .open(storage)
            .map_err(load_err)?;
        let skel = open.load().map_err(load_err)?;

        for (map, m, words) in [
            ("cgroups", &skel.maps.cgroups, STATS_WORDS),
            ("timelines", &skel.maps.timelines, TIMELINE_WORDS),
        ] {
            let found = (m.value_size() as usize, m.max_entries() as usize);
            if found != (words * 8, MAX_WATCHED) {
                return Err(BpfError::Layout {
                    map,
                    found,
                    expected: (words * 8, MAX_WATCHED),
                });
            }
        }

        let progs = &skel.progs;
        let mut links = Vec::new();
        for (program, prog) in [
            ("rekindle_switch", &progs.rekindle_switch),
            ("rekindle_wakeup", &progs.rekindle_wakeup),
            ("rekindle_wakeup_new", &progs.rekindle_wakeup_new),
            ("rekindle_exec", &progs.rekindle_exec),
            ("rekindle_exit", &progs.rekindle_exit),
        ] {
            let link = prog.attach().map_err(|source| {
                if source.kind() == ErrorKind::PermissionDenied {
                    BpfError::NotPermitted(source)
                } else {
                    BpfError::Attach { program, source }
                }
            })?;
            links.push(link);
        }
        tracing::debug!(programs = links.len(), "eBPF probes attached");
        Ok(Probes { links, skel })
    }

    /// Starts counting for a cgroup, and its timeline. Watching a watched cgroup keeps
    /// its counters and its timeline.
    pub fn watch(&self, cgroup: CgroupId) -> Result<(), BpfError> {
        if self.lookup(cgroup)?.is_some() {
            return Ok(());
        }
        self.start(cgroup)
    }

    /// Watches the cgroup if it is not watched yet, and restarts its timeline: the
    /// first schedule and first exec are the first ones from now on. The counters of a
    /// watched cgroup are kept.
    pub fn restart_timeline(&self, cgroup: CgroupId) -> Result<(), BpfError> {
        self.start(cgroup)
    }

    /// A zeroed timeline, then (unless there) zeroed counters: the programs look the
    /// timeline up only for a watched cgroup, so its first switch-in is not missed.
    fn start(&self, cgroup: CgroupId) -> Result<(), BpfError> {
        let key = cgroup.0.to_ne_bytes();
        let map_err = |op| move |source| BpfError::Map { op, cgroup, source };
        self.skel
            .maps
            .timelines
            .update(&key, &[0u8; TIMELINE_WORDS * 8], MapFlags::ANY)
            .map_err(|e| {
                if e.kind() == ErrorKind::TooBig {
                    BpfError::TooManyWatched(cgroup)
                } else {
                    map_err("update")(e)
                }
            })?;
        match self
            .skel
            .maps
            .cgroups
            .update(&key, &[0u8; STATS_WORDS * 8], MapFlags::NO_EXIST)
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => {
                // Not watched: its timeline would stay in the map for nothing.
                let _ = self.skel.maps.timelines.delete(&key);
                if e.kind() == ErrorKind::TooBig {
                    Err(BpfError::TooManyWatched(cgroup))
                } else {
                    Err(map_err("update")(e))
                }
            }
        }
    }

    /// Stops counting for a cgroup and forgets its counters and timeline. Returns
    /// whether it was watched.
    pub fn unwatch(&self, cgroup: CgroupId) -> Result<bool, BpfError> {
        let key = cgroup.0.to_ne_bytes();
        let was = match self.skel.maps.cgroups.delete(&key) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(source) => {
                return Err(BpfError::Map {
                    op: "delete",
                    cgroup,
                    source,
                })
            }
        };
        match self.skel.maps.timelines.delete(&key) {
            Ok(()) => Ok(was),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(was),
            Err(source) => Err(BpfError::Map {
                op: "delete",
                cgroup,
                source,
            }),
        }
    }

    fn lookup(&self, cgroup: CgroupId) -> Result<Option<Vec<u8>>, BpfError> {
        self.skel
            .maps
            .cgroups
            .lookup(&cgroup.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                op: "lookup",
                cgroup,
                source,
            })
    }

    /// The counters and timeline of a watched cgroup; `None` if it is not watched.
    pub fn read(&self, cgroup: CgroupId) -> Result<Option<CgroupStats>, BpfError> {
        let Some(value) = self.lookup(cgroup)? else {
            return Ok(None);
        };
        let timeline = self
            .skel
            .maps
            .timelines
            .lookup(&cgroup.0.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| BpfError::Map {
                op: "lookup",
                cgroup,
                source,
            })?;
        Ok(Some(CgroupStats::from_map_values(
            &value,
            timeline.as_deref(),
        )))
    }

    /// The cgroups being watched.
    pub fn watched(&self) -> Vec<CgroupId> {
        self.skel
            .maps
            .cgroups
            .keys()
            .filter_map(|k| Some(CgroupId(u64::from_ne_bytes(k.try_into().ok()?))))
            .collect()
    }
}

/// libbpf's messages held back while a load is in progress (`None`: none is).
static LOAD_LOG: Mutex<Option<Vec<(PrintLevel, String)>>> = Mutex::new(None);

/// Holds libbpf's messages back during one [`Probes::load`]: a load that fails
/// because of privileges prints several libbpf warnings saying the same as its error.
/// Loads are serialised while capturing (the print callback is process-wide).
struct LoadCapture {
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl LoadCapture {
    fn start() -> LoadCapture {
        static SERIAL: Mutex<()> = Mutex::new(());
        let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        *LOAD_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
        LoadCapture { _serial: guard }
    }

    /// Emits what was held back: at its own level after a successful load, at debug
    /// level after a failed one.
    fn finish(loaded: bool) {
        let held = LOAD_LOG.lock().unwrap_or_else(|e| e.into_inner()).take();
        for (level, msg) in held.unwrap_or_default() {
            emit(if loaded { level } else { PrintLevel::Debug }, &msg);
        }
    }
}

fn emit(level: PrintLevel, msg: &str) {
    match level {
        PrintLevel::Warn => tracing::warn!(target: "libbpf", "{msg}"),
        PrintLevel::Info => tracing::info!(target: "libbpf", "{msg}"),
        PrintLevel::Debug => tracing::debug!(target: "libbpf", "{msg}"),
    }
}

/// Sends libbpf's messages (the verifier's log among them) to `tracing`, once.
fn route_libbpf_log() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        fn log(level: PrintLevel, msg: String) {
            let msg = msg.trim_end();
            let mut held = LOAD_LOG.lock().unwrap_or_else(|e| e.into_inner());
            match held.as_mut() {
                Some(v) => v.push((level, msg.to_string())),
                None => {
                    drop(held);
                    emit(level, msg);
                }
            }
        }
        libbpf_rs::set_print(Some((PrintLevel::Info, log)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_from_words() {
        let words: Vec<u64> = (1..=STATS_WORDS as u64 + TIMELINE_WORDS as u64).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let (stats, timeline) = bytes.split_at(STATS_WORDS * 8);
        let s = CgroupStats::from_map_values(stats, Some(timeline));
        assert_eq!((s.cpu_ns, s.runq_count, s.runq_total_ns), (1, 2, 3));
        assert_eq!(s.runq_latency_hist[0], 4);
        assert_eq!(
            s.runq_latency_hist[RUNQ_BUCKETS - 1],
            3 + RUNQ_BUCKETS as u64
        );
        let k = 3 + RUNQ_BUCKETS as u64;
        assert_eq!(
            (s.faults_minor, s.faults_major, s.execs, s.exits),
            (k + 1, k + 2, k + 3, k + 4)
        );
        assert_eq!(
            (s.first_sched_ns, s.first_exec_ns),
            (Some(k + 5), Some(k + 6))
        );

        let no_timeline = CgroupStats::from_map_values(stats, None);
        assert_eq!(
            (no_timeline.first_sched_ns, no_timeline.exits),
            (None, k + 4)
        );

        let zero = CgroupStats::from_map_values(&[0; STATS_WORDS * 8], Some(&[0; 16]));
        assert_eq!(zero, CgroupStats::default());
    }

    #[test]
    fn runq_buckets() {
        assert_eq!(runq_bucket_upper_us(0), Some(2));
        assert_eq!(runq_bucket_upper_us(1), Some(4));
        assert_eq!(
            runq_bucket_upper_us(RUNQ_BUCKETS - 2),
            Some(1 << (RUNQ_BUCKETS - 1))
        );
        assert_eq!(runq_bucket_upper_us(RUNQ_BUCKETS - 1), None);
    }

    #[test]
    fn finds_cgroup2_mount() {
        let hybrid = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";
        assert_eq!(
            cgroup2_root_in(hybrid),
            Some("/sys/fs/cgroup/unified".into())
        );
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root_in(v2), Some("/sys/fs/cgroup".into()));
        let odd = r"30 25 0:26 / /mnt/my\040cgroup\134\999\ rw - cgroup2 none rw";
        assert_eq!(cgroup2_root_in(odd), Some(r"/mnt/my cgroup\\999\".into()));
        assert_eq!(
            cgroup2_root_in("35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw\n"),
            None
        );
    }

    #[test]
    fn not_a_cgroup() {
        assert!(matches!(
            cgroup_id_of("/proc"),
            Err(BpfError::NotCgroup2(_))
        ));
        assert!(matches!(
            cgroup_id_of("/nonexistent-rekindle"),
            Err(BpfError::CgroupPath { .. })
        ));
    }
}
