//! The direct engine: containers restored by driving CRIU through libcriu from
//! the shim itself, without a runc process, and then run by the shim.
//!
//! Why: `runc restore` costs a Go process start, runc's own checks, a fresh
//! `criu swrk`, cgroup migrations and a mount namespace built on the critical
//! path (DESIGN.md: ~40 ms of runc around ~60 ms of CRIU here). The direct
//! engine pays what it can at Create — the instance's cgroups (with the spec's
//! limits), its stdio, a `criu swrk` already placed in those cgroups and
//! holding the fds to hand over, and a `criu lazy-pages` daemon — and then
//! sends swrk the RESTORE request at once, still during Create, holding the
//! restored tree stopped before it resumes ([`Held`]): Start only lets it go.
//!
//! - [`plan`]: what the restore asks of CRIU, from the spec and the image (pure);
//! - [`resources`]: the instance's cgroups, the spec's limits and device rules;
//! - [`swrk`]: the CRIU processes the shim starts (`criu swrk`, `criu lazy-pages`);
//! - [`dump`]: checkpointing a container this engine restored (runc knows nothing of it).
//!
//! The restored tree is born a child of the shim (`restore-sibling` from a
//! swrk the shim started), so the shim's reaper learns its exit as for runc's
//! containers. Kill, pause, pids and stats go to the cgroups; exec goes
//! through [`crate::nsexec`]; checkpoint through [`dump`].

pub mod dump;
pub mod plan;
pub mod resources;
pub mod swrk;
pub mod tmpfs;

use std::{
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe, Subscription},
    monitor::{Subject, Topic},
};
use criu_sys::safe::{CgroupMode, Criu, LogLevel};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use plan::{NotDirect, RestorePlan};
use swrk::{Swrk, Watched};

/// Which engine restores: `REKINDLE_RESTORE_ENGINE=runc` turns the direct
/// engine off (every restore is `runc restore`), `direct` (the default) uses
/// it wherever the container allows.
pub fn enabled() -> bool {
    !matches!(
        std::env::var("REKINDLE_RESTORE_ENGINE").as_deref(),
        Ok("runc")
    )
}

/// CRIU's log level for restores: `REKINDLE_CRIU_LOG_LEVEL` (0-4), default 2
/// (errors and warnings). 4 logs every step with timestamps (restore.log in
/// the bundle's direct-work dir), for finding where a restore spends its time.
/// The lazy-pages daemon logs at the same level (lazy-pages.log, beside it).
fn criu_log_level() -> LogLevel {
    match std::env::var("REKINDLE_CRIU_LOG_LEVEL").as_deref() {
        Ok("0") => LogLevel::Msg,
        Ok("1") => LogLevel::Error,
        Ok("3") => LogLevel::Info,
        Ok("4") => LogLevel::Debug,
        _ => LogLevel::Warn,
    }
}

/// Whether to serve pages lazily (`criu lazy-pages`): `REKINDLE_LAZY_PAGES=0`
/// restores every page before the process runs.
pub fn lazy_pages() -> bool {
    !matches!(std::env::var("REKINDLE_LAZY_PAGES").as_deref(), Ok("0"))
}

/// How long the lazy-pages daemon holds back the pages nobody has asked for once
/// the restore is done (`REKINDLE_LAZY_PAGES_DELAY_MS`, 0-10000, default 50):
/// sending all of them at once took a core from the restored process just as it
/// answered its first request (CRIU patch 0005). Faults are served meanwhile.
/// A daemon recording a working set counts it from the tree's resume instead
/// (CRIU tells it), so that a restore held until Start records its first request.
pub fn lazy_pages_delay_ms() -> u32 {
    env_ms("REKINDLE_LAZY_PAGES_DELAY_MS", parse_delay_ms)
}

/// The delay a `REKINDLE_LAZY_PAGES_DELAY_MS` value asks for; `Err(default)` for a
/// value that is not a number of ms in 0-10000 (CRIU's bound).
fn parse_delay_ms(v: Option<&str>) -> std::result::Result<u32, u32> {
    parse_ms(v, 50, 10_000)
}

/// How long the first restore of an image records its working set: the lazy-pages
/// daemon holds the pages nobody asked for back this long after the resume
/// (`REKINDLE_LAZY_PAGES_RECORD_MS`, 0-60000, default 1000; CRIU patch 0021), so
/// the faults of that time are recorded. A restored function faults only a few
/// dozen pages of its own at its resume, and its first request, coming later
/// than the 50 ms delay (a loaded machine), found every page sent already: the
/// record missed it. Faults are served meanwhile; only the other pages wait.
pub fn record_ms() -> u32 {
    env_ms("REKINDLE_LAZY_PAGES_RECORD_MS", parse_record_ms)
}

/// The recording a `REKINDLE_LAZY_PAGES_RECORD_MS` value asks for; `Err(default)`
/// for a value that is not a number of ms in 0-60000 (CRIU's bound).
fn parse_record_ms(v: Option<&str>) -> std::result::Result<u32, u32> {
    parse_ms(v, 1000, 60_000)
}

/// Environment variable `var` as `parse` reads it; a value it refuses is warned
/// about (naming the variable and the default used) and the default taken.
fn env_ms(var: &str, parse: fn(Option<&str>) -> std::result::Result<u32, u32>) -> u32 {
    let v = std::env::var(var).ok();
    parse(v.as_deref()).unwrap_or_else(|default| {
        warn!(value = ?v, "{var}: not a number of ms within CRIU's bound; using {default}");
        default
    })
}

/// A number of ms in `0..=max` from an environment value; `Err(default)` for
/// anything else, `Ok(default)` when unset.
fn parse_ms(v: Option<&str>, default: u32, max: u32) -> std::result::Result<u32, u32> {
    match v.map(|v| v.trim().parse::<u32>()) {
        None => Ok(default),
        Some(Ok(ms)) if ms <= max => Ok(ms),
        Some(_) => Err(default),
    }
}

/// What a container asks that the direct engine does not do (then `runc
/// restore` does it). Checked at Create, before anything is prepared.
pub fn check_eligible(
    spec: &Spec,
    systemd_cgroup: bool,
    terminal: bool,
    cgroups_path: Option<&str>,
) -> std::result::Result<(), NotDirect> {
    if terminal {
        return Err(NotDirect("a terminal needs runc's console socket".into()));
    }
    if systemd_cgroup {
        return Err(NotDirect("the systemd cgroup driver needs runc".into()));
    }
    match cgroups_path {
        Some(p) if p.starts_with('/') => {}
        _ => {
            return Err(NotDirect(
                "the spec has no cgroupfs-style linux.cgroupsPath".into(),
            ))
        }
    }
    if let Some(h) = spec.hooks() {
        let any =
            |v: &Option<Vec<oci_spec::runtime::Hook>>| v.as_ref().is_some_and(|v| !v.is_empty());
        #[allow(deprecated)]
        if any(h.prestart())
            || any(h.create_runtime())
            || any(h.create_container())
            || any(h.start_container())
            || any(h.poststart())
        {
            return Err(NotDirect("OCI hooks are run by runc".into()));
        }
    }
    Ok(())
}

/// An instance prepared at Create: cgroups made, swrk waiting in them.
pub struct Prepared {
    pub image_dir: PathBuf,
    pub work: PathBuf,
    pub criu_root: PathBuf,
    pub rootfs: PathBuf,
    pub cgroup_dirs: Vec<PathBuf>,
    plan: RestorePlan,
    swrk: Swrk,
    /// swrk's move into `cgroup_dirs`, under way while CRIU reads the image.
    moving: Moving,
    lazy: Option<Watched>,
    /// The lazy-pages daemon to start once the restore is under way.
    lazy_start: Option<LazyStart>,
    working_set: Option<WorkingSet>,
    /// Extracts CRIU's tmpfs images in-process (see [`tmpfs`]); stops when
    /// dropped, i.e. once the restore is over.
    _tmpfs: Option<tmpfs::TmpfsHelper>,
    /// The pod netns, open in swrk as `swrk.fds[0]`; kept open until the restore.
    _netns: Option<OwnedFd>,
}

/// A container the direct engine restored and now runs.
pub struct Running {
    pub cgroup_dirs: Vec<PathBuf>,
    /// The container's rootfs on the host (what CRIU dumps as its root).
    pub rootfs: PathBuf,
    /// fds 0, 1, 2 of init right after the restore, for a later checkpoint's
    /// descriptors.json (runc records them at start the same way).
    pub descriptors: Vec<String>,
    pub work: PathBuf,
    /// Pages still being served; a checkpoint waits for it.
    pub lazy: Option<tokio::task::JoinHandle<()>>,
}

/// What Create tells a preparation already under way, once it has found the
/// image and mounted the rootfs; `None`: no restore after all (the preparation
/// undoes what it made).
pub struct Source {
    pub image_dir: PathBuf,
    /// Serve the pages lazily (`criu lazy-pages`).
    pub lazy: bool,
    /// The stored image's name: a lazy restore of it records or prefetches its
    /// working set.
    pub image: Option<String>,
}

/// Tells a preparation under way the image to restore (or `None`: no restore).
pub type Tell = tokio::sync::oneshot::Sender<Option<Source>>;

/// Prepares a direct restore into the container described by `spec`, from the
/// top of Create: `criu swrk` (holding `io`, the container's stdio, as fds 0-2,
/// and the netns) and the cgroups are started at once, the rest once `source`
/// says which image (Create learns that from rekindle-restored, and mounts the
/// rootfs, meanwhile). Why: the fork and exec of swrk (~2 ms here) ended after
/// Start had arrived when it came after Create's own work; now it overlaps it.
pub async fn prepare(
    bundle: &Path,
    spec: &Spec,
    cgroups_path: &str,
    io: Option<Arc<crate::stdio::ChildIo>>,
    source: tokio::sync::oneshot::Receiver<Option<Source>>,
) -> Result<std::result::Result<Prepared, NotDirect>> {
    let t0 = Instant::now();
    let hierarchies = resources::hierarchies().map_err(Error::io("read cgroup hierarchies"))?;
    if !hierarchies.iter().any(|h| !h.v2) {
        return Ok(Err(NotDirect(
            "a cgroup v2-only host needs runc's device eBPF program".into(),
        )));
    }
    let criu = PathBuf::from(crate::runc::criu_binary());
    // The netns the spec names (what plan::plan restores into), open in swrk.
    let netns_path = crate::container::spec_netns_path(spec);
    let netns = match &netns_path {
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => {
                return Err(Error::FailedPrecondition(format!(
                    "open the container's network namespace {}: {e}",
                    p.display()
                )))
            }
        },
        None => None,
    };
    let tmpfs = if tmpfs::enabled() {
        match tmpfs::TmpfsHelper::start() {
            Ok(h) => Some(h),
            Err(e) => {
                warn!(error = %e, "tmpfs helper unavailable; CRIU runs tar per tmpfs mount");
                None
            }
        }
    } else {
        None
    };
    // A new cgroup namespace for the tree, as runc makes one (joining one by path
    // is refused by plan::plan).
    let cgroupns = crate::container::has_own_namespace(spec, LinuxNamespaceType::Cgroup);
    // The restore's own work dir (made once the image is known, before the request;
    // CRIU makes its mount namespaces' yard there).
    let work = bundle.join("direct-work");
    // swrk on a thread of the blocking pool: a spawn holds its thread until the
    // child has exec'd, and a task spawned onto the runtime could sit in this
    // worker's LIFO slot until this one yields. The cgroups are made meanwhile.
    let spawning = {
        let (criu, tmpfs_socket) = (criu.clone(), tmpfs.as_ref().map(|h| h.path().to_path_buf()));
        let yard_dir = work.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut env: Vec<(&str, &std::ffi::OsStr)> = tmpfs_socket
                .iter()
                .map(|p| (tmpfs::SOCKET_ENV, p.as_os_str()))
                .collect();
            if cgroupns {
                env.push((swrk::CGROUPNS_UNSHARE_ENV, "1".as_ref()));
            }
            env.push((swrk::MNTNS_YARD_DIR_ENV, yard_dir.as_os_str()));
            let inherit: Vec<&OwnedFd> = netns.iter().collect();
            let swrk = rt.block_on(swrk::spawn_swrk(&criu, io.as_ref(), &inherit, &env));
            (swrk, netns, t.elapsed())
        })
    };
    let spawned = async move {
        match spawning.await {
            Ok((Ok(swrk), netns, t)) => Ok((swrk, netns, t)),
            Ok((Err(e), ..)) => Err(e),
            Err(e) => Err(Error::Runtime {
                action: "start criu swrk".into(),
                message: e.to_string(),
            }),
        }
    };
    // Checkpoint images are untrusted, so CRIU is told to ignore cgroups and the
    // tree is born in the cgroups of the swrk that restores it: the instance's
    // own, with the spec's limits.
    // On a thread of the blocking pool as well: ~0.6 ms of cgroupfs writes that,
    // on this task, took a runtime worker from Create's own work.
    let made = {
        let (hierarchies, cgroups_path) = (hierarchies.clone(), cgroups_path.to_string());
        let res = spec.linux().as_ref().and_then(|l| l.resources().clone());
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let dirs = resources::create(&hierarchies, &cgroups_path).map_err(|e| {
                Error::FailedPrecondition(format!("create the container's cgroups: {e}"))
            })?;
            match resources::apply(&hierarchies, &dirs, res.as_ref()) {
                Ok(()) => Ok((dirs, t.elapsed())),
                Err(e) => {
                    resources::remove(&dirs);
                    Err(Error::InvalidArgument(format!(
                        "apply the spec's resources: {e}"
                    )))
                }
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Runtime {
                action: "create the container's cgroups".into(),
                message: e.to_string(),
            })
        })
    };
    let (cgroup_dirs, t_cgroups) = match made {
        Ok(d) => d,
        Err(e) => {
            if let Ok((s, ..)) = spawned.await {
                s.process.kill();
            }
            return Err(e);
        }
    };
    // swrk into the instance's cgroups as soon as both exist: the restored tree is
    // then born in these cgroups (its pages charged to them). The move (~0.5 ms;
    // 0.3-2.7 ms on a busy node; without cgroup favordynmods, an RCU grace period:
    // systemd/rekindle-favordynmods.service) is not waited for here: the restore
    // request goes out once swrk runs, and CRIU waits for the move at "pre-restore",
    // before it forks the tree (see [`Moving`]), reading the image meanwhile.
    let spawned_and_moving = {
        let dirs = cgroup_dirs.clone();
        async move {
            let (swrk, netns, t_spawn) = spawned.await?;
            let moving = Moving::start(dirs, swrk.process.pid);
            Ok((swrk, netns, t_spawn, moving, t0.elapsed()))
        }
    };
    // What needs the image, once Create has said which. A stop here (no restore after
    // all, an image the engine does not take, a failed step) undoes what is made so
    // far in one place below.
    enum Stop {
        NotDirect(NotDirect),
        Failed(Error),
    }
    let after_source = async {
        let source = match source.await {
            Ok(Some(s)) => s,
            // No restore after all (Create fails, or cold-starts instead).
            Ok(None) | Err(_) => {
                return Err(Stop::NotDirect(NotDirect(
                    "Create restores nothing after all".into(),
                )))
            }
        };
        let t_source = t0.elapsed();
        let image_dir = source.image_dir.as_path();
        // Plain blocking calls for these few small local files: through tokio::fs each
        // was a hop to the blocking pool, ~0.3 ms apiece on the restore's path.
        let plan = std::fs::read_to_string(image_dir.join("descriptors.json"))
            .map_err(|e| NotDirect(format!("the image has no readable descriptors.json ({e})")))
            .and_then(|t| plan::parse_descriptors(&t))
            .and_then(|descriptors| {
                let v1: Vec<PathBuf> = hierarchies
                    .iter()
                    .filter(|h| !h.v2)
                    .map(|h| h.mount_point.clone())
                    .collect();
                plan::plan(spec, &descriptors, &v1, cgroups_path)
            })
            .map_err(Stop::NotDirect)?;
        let rootfs = match spec.root().as_ref().map(|r| r.path().clone()) {
            Some(p) if p.is_absolute() => p,
            Some(p) => bundle.join(p),
            None => bundle.join("rootfs"),
        };
        let criu_root = bundle.join("criu-root");
        for d in [&work, &criu_root] {
            std::fs::create_dir_all(d)
                .map_err(|e| Stop::Failed(Error::io(format!("create {}", d.display()))(e)))?;
        }
        let working_set = if source.lazy {
            source
                .image
                .as_deref()
                .and_then(|name| WorkingSet::of(name, image_dir, &work))
        } else {
            None
        };
        // The lazy-pages daemon's socket now; the daemon itself is started once the
        // restore is under way (restore_ahead): its exec and start-up then run on the
        // core CRIU's restore leaves idle, not alongside swrk's spawn here.
        let lazy_start = if source.lazy {
            match swrk::listen_lazy_pages(&work) {
                Ok(listener) => Some(LazyStart {
                    listener,
                    criu: criu.clone(),
                    images: image_dir.to_path_buf(),
                    work: work.clone(),
                    env: working_set.as_ref().map(|w| {
                        let (k, v) = w.env();
                        (k.to_string(), v.to_path_buf())
                    }),
                }),
                Err(e) => {
                    warn!(error = %e, "lazy pages unavailable; restoring every page first");
                    None
                }
            }
        } else {
            None
        };
        // CRIU's root now rather than at Start: one bind mount less on the restore's path.
        mount_criu_root(&rootfs, &criu_root, &plan).map_err(Stop::Failed)?;
        Ok((
            source.image_dir,
            t_source,
            plan,
            rootfs,
            work,
            criu_root,
            working_set,
            lazy_start,
        ))
    };
    let (after_source, spawned) = tokio::join!(after_source, spawned_and_moving);
    let (image_dir, t_source, plan, rootfs, work, criu_root, working_set, lazy_start) =
        match after_source {
            Ok(v) => v,
            Err(stop) => {
                if let Ok((mut s, _, _, mut moving, _)) = spawned {
                    moving.settle().await;
                    s.process.kill();
                    s.process.wait(Duration::from_secs(2)).await;
                }
                resources::remove(&cgroup_dirs);
                return match stop {
                    Stop::NotDirect(n) => Ok(Err(n)),
                    Stop::Failed(e) => Err(e),
                };
            }
        };
    let (swrk, netns, t_spawn, moving, t_spawned) = match spawned {
        Ok(s) => s,
        // swrk never started; CRIU's root is mounted by now.
        Err(e) => {
            resources::remove(&cgroup_dirs);
            let _ = nix::mount::umount2(&criu_root, nix::mount::MntFlags::MNT_DETACH);
            return Err(e);
        }
    };
    info!(
        cgroups_ms = ms(t_cgroups),
        swrk_spawn_ms = ms(t_spawn),
        source_ms = ms(t_source),
        swrk_ready_ms = ms(t_spawned),
        total_ms = ms(t0.elapsed()),
        lazy = lazy_start.is_some(),
        "prepared for a direct restore"
    );
    Ok(Ok(Prepared {
        image_dir,
        work,
        criu_root,
        rootfs,
        cgroup_dirs,
        plan,
        swrk,
        moving,
        working_set: working_set.filter(|_| lazy_start.is_some()),
        lazy: None,
        lazy_start,
        _tmpfs: tmpfs,
        _netns: netns,
    }))
}

/// Moves `pid` into each of `dirs` (its cgroups, one per hierarchy).
fn move_into_cgroups(dirs: &[PathBuf], pid: i32) -> Result<()> {
    dirs.iter().try_for_each(|d| {
        let procs = d.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(Error::io(format!(
            "move criu swrk into {}",
            procs.display()
        )))
    })
}

/// swrk's move into the container's cgroups, on a thread of the blocking pool.
/// The restore waits for it at CRIU's "pre-restore" step ([`MOVED_BY`]), which
/// comes after CRIU has read and collected the image and before it forks the
/// tree: the move and that reading overlap instead of following each other.
struct Moving {
    /// Taken by the restore's notification handler.
    result: Option<tokio::sync::oneshot::Receiver<Result<()>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Moving {
    fn start(dirs: Vec<PathBuf>, pid: i32) -> Moving {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let moved = move_into_cgroups(&dirs, pid);
            debug!(
                cgroup_move_ms = ms(t.elapsed()),
                ok = moved.is_ok(),
                "criu swrk moved into the container's cgroups"
            );
            let _ = tx.send(moved);
        });
        Moving {
            result: Some(rx),
            task: Some(task),
        }
    }

    /// Waits until the move is over, whoever took its result: before swrk is killed
    /// or the cgroups removed, so that neither races it.
    async fn settle(&mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// The CRIU step at which a restore waits for swrk's move ([`Moving`]).
const MOVED_BY: &str = "pre-restore";

/// A lazy-pages daemon to start on a socket already listening.
struct LazyStart {
    listener: OwnedFd,
    criu: PathBuf,
    images: PathBuf,
    work: PathBuf,
    env: Option<(String, PathBuf)>,
}

/// The pages a stored image's restores touch first, one file per image in
/// [`working_sets_dir`]: CRIU's lazy-pages daemon (patched, see
/// hack/criu-patches) records the root task's page faults in a restore
/// that has none, and copies them in before the next one resumes, instead
/// of serving each on its fault. The file's first line names the image's
/// dump (the sha256 of its inventory.img), so an image stored again under the
/// same name is recorded anew. `REKINDLE_WORKING_SET=0` turns this off.
enum WorkingSet {
    Prefetch(PathBuf),
    Record {
        rec: PathBuf,
        dest: PathBuf,
        header: String,
    },
}

/// `REKINDLE_WORKING_SETS`, default /var/lib/rekindle/working-sets.
fn working_sets_dir() -> PathBuf {
    std::env::var_os("REKINDLE_WORKING_SETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rekindle/working-sets"))
}

impl WorkingSet {
    fn of(name: &str, image_dir: &Path, work: &Path) -> Option<WorkingSet> {
        use sha2::Digest;
        use std::{io::BufRead, os::unix::fs::DirBuilderExt};
        if matches!(std::env::var("REKINDLE_WORKING_SET").as_deref(), Ok("0")) {
            return None;
        }
        // The name comes from an annotation: a plain file name or nothing.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if name.is_empty() || name.starts_with('.') || !name.bytes().all(plain) {
            return None;
        }
        let inventory = std::fs::read(image_dir.join("inventory.img")).ok()?;
        let digest = sha2::Sha256::digest(&inventory);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let header = format!("# image sha256:{hex}");
        let dir = working_sets_dir();
        if let Err(e) = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            warn!(error = %e, dir = %dir.display(), "working sets unavailable");
            return None;
        }
        let dest = dir.join(name);
        let first = std::fs::File::open(&dest).ok().and_then(|f| {
            std::io::BufReader::new(f)
                .lines()
                .next()
                .and_then(|l| l.ok())
        });
        if first.as_deref() == Some(header.as_str()) {
            info!(file = %dest.display(), "prefetching working set");
            return Some(WorkingSet::Prefetch(dest));
        }
        let rec = work.join("working-set.rec");
        let _ = std::fs::remove_file(&rec);
        Some(WorkingSet::Record { rec, dest, header })
    }

    /// What the lazy-pages daemon is told.
    fn env(&self) -> (&str, &Path) {
        match self {
            WorkingSet::Prefetch(f) => ("CRIU_LAZY_PAGES_PREFETCH", f),
            WorkingSet::Record { rec, .. } => ("CRIU_LAZY_PAGES_RECORD", rec),
        }
    }

    /// Once the daemon has exited: a non-empty record becomes the image's
    /// working set (written aside, then renamed into place).
    fn install(self) {
        let WorkingSet::Record { rec, dest, header } = self else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(&rec) else {
            return;
        };
        let pages = text.lines().filter(|l| !l.is_empty()).count();
        if pages == 0 {
            return;
        }
        let name = dest.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let written = std::fs::write(&tmp, format!("{header}\n{text}"))
            .and_then(|_| std::fs::rename(&tmp, &dest));
        match written {
            Ok(()) => info!(pages, file = %dest.display(), "working set: recorded {pages} pages"),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                warn!(error = %e, file = %dest.display(), "working set not saved");
            }
        }
    }
}

/// How long the RESTORE request may take (`REKINDLE_RESTORE_TIMEOUT_MS`).
fn time_limit() -> Duration {
    crate::runc::criu_time_limit(true)
}

/// A restore run ahead, from Create: CRIU has restored the tree and holds it,
/// stopped (traced by CRIU) at its last step before the resume, until Start
/// lets it go ([`Held::resume`]) or Delete drops it ([`Held::abandon`]).
///
/// Why: Create answers at once and the restore used to wait for Start, which
/// comes after containerd's and its client's turn (~3 ms here); now CRIU's
/// ~12 ms run during that turn, and Start pays only for the resume. The tree
/// runs none of its code before Start, as a created runc container runs none
/// before `runc start`.
pub struct Held {
    p: Prepared,
    /// Lets CRIU go on; dropped, CRIU's wait at "pre-resume" ends refused.
    go: Option<std::sync::mpsc::SyncSender<()>>,
    criu: tokio::task::JoinHandle<std::result::Result<u32, criu_sys::safe::Error>>,
    /// CRIU's time from the request to the hold.
    restore_time: Duration,
    held_at: Instant,
    /// Set before CRIU is let go: from then on swrk exits as it should.
    resumed: Arc<std::sync::atomic::AtomicBool>,
    /// Stops the watchdog that kills the tree if swrk dies while holding it (see
    /// [`watch_swrk`]): dropped once the hold ends.
    watchdog: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What a preparation started at Create comes to: a restore held before the
/// resume, or one that failed (Start reports it and takes the next path).
pub enum Ahead {
    Held(Box<Held>),
    Failed(Error, Box<Prepared>),
}

/// The CRIU step at which a restore ahead waits for Start.
pub(crate) const HOLD_AT: &str = "pre-resume";

/// The steps CRIU tells the shim of (CRIU_NOTIFY_ACTIONS): the two it waits at.
pub(crate) const NOTIFIED: &str = "pre-restore,pre-resume";

/// Runs the restore of `p` up to CRIU's last step before the tree resumes
/// (see [`Held`]). On failure the tree is gone (CRIU kills what it restored)
/// and `p` is handed back for the next path or [`Prepared::abandon`].
///
/// `start_came`: set once Start has come. If it is set when CRIU reaches the hold,
/// CRIU goes on at once: the hold's round trip through the runtime to Start and
/// back (handler thread, this task, the preparation's join, Start, the handler
/// again: ~0.3-1 ms on a busy 2-core machine) is for a tree that must not run
/// before Start, and Start is here. [`Held::resume`] then only collects the result.
pub async fn restore_ahead(
    mut p: Prepared,
    start_came: Arc<std::sync::atomic::AtomicBool>,
) -> Ahead {
    let started = Instant::now();
    let request = match request(&mut p) {
        Ok(c) => c,
        Err(e) => return Ahead::Failed(e, Box::new(p)),
    };
    // Subscribed to the reaper's exits before the request, for the watchdog: a swrk
    // that dies right after the hold is seen however soon it dies (subscribing after
    // the hold missed one reaped in between).
    let watch = monitor_subscribe(Topic::Pid).await.ok();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let resumed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let resuming = resumed.clone();
    let mut moved = p.moving.result.take();
    let move_failure: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
    let move_failed = move_failure.clone();
    let criu = tokio::task::spawn_blocking(move || {
        let mut criu = request;
        let mut held_tx = Some(held_tx);
        let mut handler = |n: criu_sys::safe::Notification<'_>| {
            if n.action == MOVED_BY {
                // No tree before swrk is in the container's cgroups: a failed move
                // fails the restore (CRIU aborts on the refusal).
                // (On the blocking pool's thread: no runtime to block here.)
                let failure = match moved.take().map(|rx| rx.blocking_recv()) {
                    None | Some(Ok(Ok(()))) => return true,
                    Some(Ok(Err(e))) => e,
                    Some(Err(_)) => Error::Runtime {
                        action: "move criu swrk into the container's cgroups".into(),
                        message: "the move's thread ended without a result".into(),
                    },
                };
                *move_failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(failure);
                return false;
            }
            if n.action != HOLD_AT {
                return true;
            }
            // Start came first: on at once (set before the tree runs, so that the
            // watchdog does not take swrk's exit for a death while holding it).
            let now = start_came.load(std::sync::atomic::Ordering::SeqCst);
            if now {
                resuming.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if let Some(tx) = held_tx.take() {
                let _ = tx.send(());
            }
            // Until Start (go) or Delete (the sender dropped).
            now || go_rx.recv().is_ok()
        };
        criu.restore_notified(&mut handler)
    });
    // The lazy-pages daemon, on the socket the restore is connecting to. Should it
    // not start, the restore fails when it reports the end to it, and takes the
    // next path.
    if let Some(ls) = p.lazy_start.take() {
        let rt = tokio::runtime::Handle::current();
        let spawned = tokio::task::spawn_blocking(move || {
            let env = ls.env.as_ref().map(|(k, v)| (k.as_str(), v.as_path()));
            rt.block_on(swrk::spawn_lazy_pages(
                ls.listener,
                &ls.criu,
                &ls.images,
                &ls.work,
                env,
            ))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        match spawned {
            Ok(daemon) => p.lazy = Some(daemon),
            Err(e) => warn!(error = %e, "criu lazy-pages did not start; the restore fails"),
        }
    }
    let mut held = Held {
        p,
        go: Some(go),
        criu,
        restore_time: Duration::ZERO,
        held_at: Instant::now(),
        resumed,
        watchdog: None,
    };
    match tokio::time::timeout(time_limit(), held_rx).await {
        // Held, or over without a hold (the result is waiting in `criu`).
        Ok(was_held) => {
            held.restore_time = started.elapsed();
            held.held_at = Instant::now();
            // Told by the hold's channel, not by the CRIU thread having finished: the
            // handler (and the sender with it) is dropped just before the thread ends.
            if was_held.is_err() {
                // Over before the hold: a failure (CRIU aborted the restore, or died
                // and let go of what it had restored: that is killed now).
                unsubscribe(watch).await;
                let Held { mut p, criu, .. } = held;
                p.moving.settle().await;
                kill_cgroup_procs(&p.cgroup_dirs);
                let result = criu.await;
                let moved = move_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let e = match moved {
                    Some(e) => e,
                    None => criu_failure(&mut p, result).await,
                };
                return Ahead::Failed(e, Box::new(p));
            }
            let (stop, stopped) = tokio::sync::oneshot::channel();
            tokio::spawn(watch_swrk(
                held.p.swrk.process.pid,
                held.p.cgroup_dirs.clone(),
                held.resumed.clone(),
                stopped,
                watch,
            ));
            held.watchdog = Some(stop);
            debug!(
                criu_ms = ms(held.restore_time),
                "restored ahead; held before the resume until Start"
            );
            Ahead::Held(Box::new(held))
        }
        Err(_) => {
            unsubscribe(watch).await;
            held.p.swrk.process.kill();
            held.p.moving.settle().await;
            kill_cgroup_procs(&held.p.cgroup_dirs);
            held.go = None;
            let Held { p, .. } = held;
            Ahead::Failed(
                Error::Runtime {
                    action: "criu restore".into(),
                    message: format!("{} after {:?}", crate::runc::TIMED_OUT, time_limit()),
                },
                Box::new(p),
            )
        }
    }
}

/// While a restore is held: if swrk dies (killed, out of memory), its traced
/// tree would be let go and run before Start; it is killed instead, and Start
/// finds the restore failed.
async fn watch_swrk(
    swrk: i32,
    cgroup_dirs: Vec<PathBuf>,
    resumed: Arc<std::sync::atomic::AtomicBool>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    sub: Option<Subscription>,
) {
    let Some(mut sub) = sub else {
        return;
    };
    let died = async {
        while let Some(ev) = sub.rx.recv().await {
            if matches!(ev.subject, Subject::Pid(p) if p == swrk) {
                break;
            }
        }
    };
    // Stopped (the hold ended) or swrk died; either way unsubscribed cleanly (a
    // subscriber dropped without that gets every later exit, each logged as an error).
    let died = tokio::select! {
        _ = died => true,
        _ = stopped => false,
    };
    monitor_unsubscribe(sub.id).await.unwrap_or_default();
    if !died || resumed.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    warn!(
        swrk,
        "criu swrk died while holding a restored tree; killing the tree"
    );
    kill_cgroup_procs(&cgroup_dirs);
}

/// SIGKILL to every process in the instance's cgroups: what a restore that failed
/// or lost its CRIU left there (a tracee whose tracer dies is let go and runs).
fn kill_cgroup_procs(cgroup_dirs: &[PathBuf]) {
    for pid in cgroup_pids(cgroup_dirs) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Every pid in the instance's cgroups, once each, in order.
fn cgroup_pids(cgroup_dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = Vec::new();
    for d in cgroup_dirs {
        for pid in crate::cgroups::procs(d) {
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    pids.sort_unstable();
    pids
}

async fn unsubscribe(sub: Option<Subscription>) {
    if let Some(sub) = sub {
        monitor_unsubscribe(sub.id).await.unwrap_or_default();
    }
}

/// The error of a CRIU restore that did not give a pid: CRIU's own words from
/// its log, and the lazy-pages daemon's exit if it died.
async fn criu_failure(
    p: &mut Prepared,
    result: std::result::Result<
        std::result::Result<u32, criu_sys::safe::Error>,
        tokio::task::JoinError,
    >,
) -> Error {
    match result {
        Ok(Err(e)) => {
            let log = p.work.join("restore.log");
            let text = read_tail(&log).await;
            let says = crate::task::criu_errors(&text);
            let lazy = match p.lazy.as_mut().and_then(swrk::Watched::exited) {
                Some(code) => format!(
                    "; criu lazy-pages exited with {code} (its log: {})",
                    p.work.join(swrk::LAZY_PAGES_LOG).display()
                ),
                None => String::new(),
            };
            Error::Runtime {
                action: "criu restore".into(),
                message: format!("{e}; CRIU: {says} (CRIU log: {}){lazy}", log.display()),
            }
        }
        Err(e) => Error::Runtime {
            action: "criu restore".into(),
            message: format!("the restore thread failed: {e}"),
        },
        // Over before the hold, yet a success: the tree runs already (never seen).
        Ok(Ok(pid)) => Error::Runtime {
            action: "criu restore".into(),
            message: format!("CRIU resumed the tree (pid {pid}) without stopping at {HOLD_AT:?}"),
        },
    }
}

impl Held {
    /// Lets the tree resume (Start). Returns init's pid (a child of the shim)
    /// and the running state; `on_pages_done` runs once CRIU no longer reads
    /// the image (at once for an eager restore, when the lazy-pages daemon
    /// exits otherwise). On failure the tree is gone and the preparation is
    /// handed back, as by [`restore_ahead`].
    pub async fn resume(
        mut self,
        on_pages_done: impl FnOnce() + Send + 'static,
    ) -> std::result::Result<(i32, Running), (Error, Prepared)> {
        let started = Instant::now();
        let held_for = self.held_at.elapsed();
        self.resumed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.watchdog = None;
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
        let result = match tokio::time::timeout(time_limit(), &mut self.criu).await {
            Ok(r) => r,
            Err(_) => {
                self.p.swrk.process.kill();
                return Err((
                    Error::Runtime {
                        action: "criu restore".into(),
                        message: format!(
                            "{} after {:?} (resuming)",
                            crate::runc::TIMED_OUT,
                            time_limit()
                        ),
                    },
                    self.p,
                ));
            }
        };
        let pid = match result {
            Ok(Ok(pid)) => pid as i32,
            other => {
                let e = criu_failure(&mut self.p, other).await;
                return Err((e, self.p));
            }
        };
        let t_resume = started.elapsed();
        let Held {
            p, restore_time, ..
        } = self;
        Ok(p.into_running(
            pid,
            restore_time,
            t_resume,
            held_for,
            started,
            on_pages_done,
        ))
    }

    /// Drops a held restore (Delete before Start): the tree is killed before
    /// CRIU is let go, so none of it runs; then as [`Prepared::abandon`].
    pub async fn abandon(mut self, cgroups_path: &str) {
        self.watchdog = None;
        // The tree and swrk are in the container's cgroups.
        crate::cgroups::kill_and_remove(cgroups_path).await;
        self.go = None;
        if tokio::time::timeout(Duration::from_secs(2), &mut self.criu)
            .await
            .is_err()
        {
            warn!("criu swrk's request still running 2 s after its held restore was dropped");
        }
        self.p.abandon(cgroups_path).await;
    }
}

impl Prepared {
    /// Once CRIU has restored and resumed the tree as `pid`: what the running
    /// container keeps, and the log line of the restore.
    fn into_running(
        self,
        pid: i32,
        t_criu: Duration,
        t_resume: Duration,
        held_for: Duration,
        started: Instant,
        on_pages_done: impl FnOnce() + Send + 'static,
    ) -> (i32, Running) {
        let Prepared {
            work,
            criu_root,
            rootfs,
            cgroup_dirs,
            swrk,
            lazy,
            working_set,
            ..
        } = self;
        // swrk exits once libcriu has closed its socket; let the reaper collect
        // it off the critical path.
        let mut swrk = swrk.process;
        tokio::spawn(async move { swrk.wait(Duration::from_secs(5)).await });
        // The container's mount namespace holds its own copy (runc does the same).
        let _ = nix::mount::umount2(&criu_root, nix::mount::MntFlags::MNT_DETACH);
        let descriptors = (0..3)
            .map(|fd| {
                std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| "/dev/null".into())
            })
            .collect();
        let lazy = match lazy {
            Some(mut daemon) => Some(tokio::spawn(async move {
                // It exits once every page is sent or the tree is gone.
                if daemon.wait(Duration::from_secs(120)).await.is_none() {
                    warn!("criu lazy-pages still serving after 120 s; killed it");
                } else if let Some(ws) = working_set {
                    ws.install();
                }
                on_pages_done();
            })),
            None => {
                on_pages_done();
                None
            }
        };
        info!(
            pid,
            criu_ms = ms(t_criu),
            resume_ms = ms(t_resume),
            held_ms = ms(held_for),
            elapsed_ms = ms(started.elapsed()),
            lazy = lazy.is_some(),
            "restored by the direct engine"
        );
        (
            pid,
            Running {
                cgroup_dirs,
                rootfs,
                descriptors,
                work,
                lazy,
            },
        )
    }
}

fn mount_criu_root(rootfs: &Path, criu_root: &Path, plan: &RestorePlan) -> Result<()> {
    // CRIU's root must be a mount point whose parent is not overmounted.
    nix::mount::mount(
        Some(rootfs),
        criu_root,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        Error::io(format!(
            "bind {} on {}",
            rootfs.display(),
            criu_root.display()
        ))(e.into())
    })?;
    for (rel, file) in &plan.mountpoints {
        let path = criu_root.join(rel);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        let made = if *file {
            path.parent()
                .map(std::fs::create_dir_all)
                .transpose()
                .and_then(|_| std::fs::File::create(&path).map(drop))
        } else {
            std::fs::create_dir_all(&path)
        };
        if let Err(e) = made {
            let _ = nix::mount::umount2(criu_root, nix::mount::MntFlags::MNT_DETACH);
            return Err(Error::io(format!("create mount point {}", path.display()))(
                e,
            ));
        }
    }
    Ok(())
}

/// The RESTORE request, as runc's libcontainer `Restore` sends it, minus
/// what needs runc (see criu-sys/examples/direct_restore.rs for the recipe).
fn request(p: &mut Prepared) -> Result<Criu> {
    let criu_err = |e: criu_sys::safe::Error| Error::Runtime {
        action: "criu restore".into(),
        message: e.to_string(),
    };
    let mut c = Criu::new().map_err(criu_err)?;
    c.set_service_binary(crate::runc::criu_binary())
        .map_err(criu_err)?;
    c.set_images_dir(&p.image_dir).map_err(criu_err)?;
    c.set_work_dir(&p.work).map_err(criu_err)?;
    c.set_log_file("restore.log").map_err(criu_err)?;
    c.set_log_level(criu_log_level());
    c.set_root(&p.criu_root).map_err(criu_err)?;
    c.set_evasive_devices(true);
    // What the checkpoint may hold if its caller asked for it (established TCP
    // connections, file locks): CRIU refuses such an image unless the restore
    // allows it too, and allowing it changes nothing for an image without them.
    c.set_tcp_established(true);
    c.set_file_locks(true);
    c.set_manage_cgroups(CgroupMode::Ignore);
    for (k, v) in &p.plan.ext_mounts {
        c.add_ext_mount(k, v).map_err(criu_err)?;
    }
    for (ns, path) in &p.plan.join_ns {
        c.join_ns(ns, path).map_err(criu_err)?;
    }
    for (fd, key) in &p.plan.stdio {
        c.add_inherit_fd_number(*fd, key).map_err(criu_err)?;
    }
    if p.plan.netns.is_some() {
        c.add_inherit_fd_number(p.swrk.fds[0], "extRootNetNS")
            .map_err(criu_err)?;
    }
    // libcriu 4.2 has no setter for these two; CRIU applies the config file
    // over the request. restore-sibling makes the tree swrk's sibling: the
    // shim's child.
    let mut conf = String::from("restore-sibling\n");
    // The daemon itself is started just after the request (restore_ahead).
    if p.lazy_start.is_some() {
        conf.push_str("lazy-pages\n");
    }
    let conf_path = p.work.join("restore.conf");
    std::fs::write(&conf_path, conf)
        .map_err(Error::io(format!("write {}", conf_path.display())))?;
    c.set_config_file(&conf_path).map_err(criu_err)?;
    let socket = p.swrk.socket.take().ok_or_else(|| {
        Error::FailedPrecondition("this instance's criu swrk was already used".into())
    })?;
    c.set_service_fd(socket);
    Ok(c)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

async fn read_tail(path: &Path) -> String {
    let text = tokio::fs::read(path).await.unwrap_or_default();
    let start = text.len().saturating_sub(1 << 20);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

impl Prepared {
    /// Undoes a preparation that will not be restored (or whose restore
    /// failed): CRIU's helpers, whatever CRIU had restored, the cgroups, the
    /// criu-root bind, the network lock CRIU may have left in the pod netns.
    pub async fn abandon(mut self, cgroups_path: &str) {
        self.moving.settle().await;
        self.swrk.process.kill();
        if let Some(l) = self.lazy.as_mut() {
            l.kill();
            l.wait(Duration::from_secs(2)).await;
        }
        self.swrk.process.wait(Duration::from_secs(2)).await;
        crate::cgroups::kill_and_remove(cgroups_path).await;
        if let Some(netns) = &self.plan.netns {
            crate::cgroups::unlock_criu_network(netns).await;
        }
        let _ = nix::mount::umount2(&self.criu_root, nix::mount::MntFlags::MNT_DETACH);
        if crate::cgroups::detach_mounts_under(&self.work) {
            let _ = tokio::fs::remove_dir_all(&self.work).await;
        }
        let _ = tokio::fs::remove_dir(&self.criu_root).await;
    }
}

impl Running {
    /// Every pid in the container's cgroups.
    pub fn pids(&self) -> Vec<i32> {
        cgroup_pids(&self.cgroup_dirs)
    }

    /// Sends `signal` to every process of the container (`kill --all`). A
    /// frozen v1 task takes SIGKILL only once thawed.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
        if signal == nix::sys::signal::Signal::SIGKILL {
            let _ = self.freeze(false);
        }
    }

    fn freezer(&self) -> Option<(PathBuf, bool)> {
        self.cgroup_dirs.iter().find_map(|d| {
            if d.join("freezer.state").exists() {
                Some((d.join("freezer.state"), true))
            } else if d.join("cgroup.freeze").exists() {
                Some((d.join("cgroup.freeze"), false))
            } else {
                None
            }
        })
    }

    /// Freezes (pause) or thaws (resume) the container through its freezer
    /// cgroup, waiting until the kernel says it is done.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let (file, v1) = self.freezer().ok_or_else(|| {
            Error::FailedPrecondition("the container has no freezer cgroup".into())
        })?;
        let value = match (v1, frozen) {
            (true, true) => "FROZEN",
            (true, false) => "THAWED",
            (false, true) => "1",
            (false, false) => "0",
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            std::fs::write(&file, value)
                .map_err(Error::io(format!("write {value} to {}", file.display())))?;
            let now = std::fs::read_to_string(&file).unwrap_or_default();
            if now.trim() == value || !v1 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Runtime {
                    action: if frozen { "pause" } else { "resume" }.into(),
                    message: format!("{} still says {}", file.display(), now.trim()),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits, at most `limit`, until the lazy-pages daemon has sent every
    /// page: a checkpoint must not race it, and a page not sent yet reads as
    /// missing to another process (`/proc/<pid>/cmdline`, `process_vm_readv`:
    /// the kernel does not wait on the userfaultfd for a remote access).
    pub async fn pages_settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.lazy.as_ref().is_some_and(|h| !h.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// After the container is gone: its cgroups and work dir.
    pub async fn remove(self, cgroups_path: &str) {
        crate::cgroups::kill_and_remove(cgroups_path).await;
        // The lazy-pages daemon exits once the tree is gone, and its task then
        // releases the image: wait for that, or the shim may exit first.
        if let Some(task) = self.lazy {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                warn!("criu lazy-pages outlived its container by 5 s");
            }
        }
        keep_criu_logs(&self.work).await;
        if crate::cgroups::detach_mounts_under(&self.work) {
            let _ = tokio::fs::remove_dir_all(&self.work).await;
        }
    }
}

/// `REKINDLE_CRIU_LOGS_DIR`: where to keep each direct restore's CRIU logs
/// (restore.log, lazy-pages.log, stats-restore) once its container is gone, in
/// `<dir>/<namespace>/<container id>-<unix ms>/`; unset, they go with the
/// bundle. For a restore that was slow or odd after the fact (with
/// `REKINDLE_CRIU_LOG_LEVEL=4`, every step with its time).
async fn keep_criu_logs(work: &Path) {
    let Some(dir) = std::env::var_os("REKINDLE_CRIU_LOGS_DIR") else {
        return;
    };
    let bundle = work.parent().unwrap_or(work);
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    let dest = Path::new(&dir)
        .join(name(bundle.parent().unwrap_or(bundle)))
        .join(format!("{}-{ms}", name(bundle)));
    if let Err(e) = tokio::fs::create_dir_all(&dest).await {
        warn!(dir = %dest.display(), error = %e, "REKINDLE_CRIU_LOGS_DIR: CRIU's logs not kept");
        return;
    }
    // stats-restore: CRIU's own times (forking, restore up to its tasks' release), at
    // any log level.
    for log in ["restore.log", swrk::LAZY_PAGES_LOG, "stats-restore"] {
        // A restore that never ran its daemon has no lazy-pages.log: nothing to keep.
        let _ = tokio::fs::copy(work.join(log), dest.join(log)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lazy_pages_delay_is_50_ms_unless_set_within_criu_s_bound() {
        assert_eq!(parse_delay_ms(None), Ok(50));
        assert_eq!(parse_delay_ms(Some("0")), Ok(0));
        assert_eq!(parse_delay_ms(Some(" 200 ")), Ok(200));
        assert_eq!(parse_delay_ms(Some("10000")), Ok(10_000));
        for bad in ["10001", "-1", "", "50ms", "1e3"] {
            assert_eq!(parse_delay_ms(Some(bad)), Err(50), "{bad:?}");
        }
    }

    #[test]
    fn the_recording_lasts_1000_ms_unless_set_within_criu_s_bound() {
        let parse = parse_record_ms;
        assert_eq!(parse(None), Ok(1000));
        assert_eq!(parse(Some("0")), Ok(0));
        assert_eq!(parse(Some("60000")), Ok(60_000));
        for bad in ["60001", "-5", "", "1s"] {
            assert_eq!(parse(Some(bad)), Err(1000), "{bad:?}");
        }
    }
}
