//! Checkpoints of containers the direct engine restored.
//!
//! runc has no state for such a container, so `runc checkpoint` cannot dump it:
//! the shim asks CRIU itself, exactly the way runc 1.1's libcontainer
//! `(*linuxContainer).Checkpoint` does, so that both `runc restore` and a direct
//! restore take the image. [`plan`] is the configuration part of runc's dump (no
//! I/O of its own: what it needs of the host comes through [`Host`]);
//! [`checkpoint`] does the work through a pre-spawned `criu swrk`, because the
//! shim's reaper would race libcriu's own fork and `waitpid`.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use criu_sys::safe::{CgroupMode, Criu, LogLevel};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::{
    direct::swrk::spawn_swrk,
    error::{Error, Result},
    runc::CheckpointSpec,
};

/// The container to checkpoint, as the direct engine knows it.
pub struct DumpTarget<'a> {
    /// The container's init on the host.
    pub pid: i32,
    /// bundle/rootfs (mounted): CRIU's `--root`, as runc passes `config.Rootfs`.
    pub rootfs: &'a Path,
    /// The bundle's config.json.
    pub spec: &'a Spec,
    /// The container's cgroup dir in every hierarchy; the freezer one freezes
    /// the tree for the dump.
    pub cgroup_dirs: &'a [PathBuf],
    /// The init's fds 0..2 as recorded at start, e.g. `pipe:[123]`: written to
    /// `descriptors.json`, from which a restore maps its own stdio in.
    pub descriptors: &'a [String],
}

/// runc's default device nodes (specconv `AllowedDevices` that have a path),
/// in runc's order: each is recorded as an external mount.
pub const RUNC_DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/random",
    "/dev/full",
    "/dev/tty",
    "/dev/zero",
    "/dev/urandom",
];

/// The CRIU config file runc names when the spec has no `org.criu.config`
/// annotation (CRIU ignores a missing one).
pub const RUNC_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// The log file runc has CRIU write in the work dir.
pub const LOG_FILE: &str = "dump.log";

/// The file in the images dir runc records the init's stdio in.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";

/// The dump request's options that follow from the spec and the checkpoint
/// options (pid, root and freeze cgroup come from the [`DumpTarget`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpPlan {
    /// `--ext-mount-map key:value`, in runc's order.
    pub ext_mounts: Vec<(String, String)>,
    /// `--external`, e.g. `net[4026532001]:extRootNetNS`.
    pub externals: Vec<String>,
    pub cgroup_mode: CgroupMode,
    /// `--empty-ns`: a `CLONE_NEW*` mask.
    pub empty_ns: i32,
    pub leave_running: bool,
    pub shell_job: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    /// `--config`: runc's `org.criu.config` handling.
    pub config_file: Option<String>,
}

/// What [`plan`] needs to know of the host and the running container.
pub trait Host {
    /// The inode of the namespace file at `path` (runc: `unix.Stat`).
    fn ns_inode(&self, path: &Path) -> io::Result<u64>;
    /// Whether the masked path `path` is a directory in the container; `None`
    /// when it does not exist there (runc stats `/proc/<init>/root/<path>`).
    fn masked_is_dir(&self, path: &str) -> io::Result<Option<bool>>;
    /// The name a mount at `destination` gets in the image: runc's
    /// `addCriuDumpMount` (rootfs prefix trimmed, symlinks resolved in the
    /// rootfs as `SecureJoin` does, relative to the rootfs).
    fn mount_name(&self, destination: &str) -> String;
}

/// Computes the dump request's configuration, as runc 1.1's CLI
/// (`setManageCgroupsMode`, `setEmptyNsMask`) and libcontainer `Checkpoint` do.
/// `cgroup_v1_mounts` are the host's v1 hierarchies as runc's
/// `GetCgroupMounts(false)` lists them ([`cgroup_v1_mounts`]); `cgroup2_unified`
/// says the host has cgroup v2 only.
pub fn plan(
    spec: &Spec,
    opts: &CheckpointSpec,
    cgroup_v1_mounts: &[PathBuf],
    cgroup2_unified: bool,
    host: &dyn Host,
) -> Result<DumpPlan> {
    let cgroup_mode = match opts.cgroups_mode.as_str() {
        // runc then sets only manage_cgroups, which CRIU takes as soft.
        "" | "soft" => CgroupMode::Soft,
        "full" => CgroupMode::Full,
        "strict" => CgroupMode::Strict,
        // Not in runc 1.1's CLI; runc >= 1.2 passes it as CRIU's ignore mode.
        "ignore" => CgroupMode::Ignore,
        other => {
            return Err(Error::InvalidArgument(format!(
                "invalid manage cgroups mode {other:?} (soft, full, strict or ignore)"
            )))
        }
    };
    // runc always empties the network namespace: it does not manage network
    // devices. "network" is the only namespace its CLI accepts.
    let mut empty_ns = libc::CLONE_NEWNET;
    for ns in &opts.empty_namespaces {
        match ns.as_str() {
            "network" => empty_ns |= libc::CLONE_NEWNET,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "namespace {other:?} is not supported as an empty namespace (only \"network\")"
                )))
            }
        }
    }

    let config_file = match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("org.criu.config"))
    {
        Some(f) if f.is_empty() => None,
        Some(f) => Some(f.clone()),
        None => Some(RUNC_CRIU_CONFIG.to_string()),
    };

    let linux = spec.linux().as_ref();
    let namespaces = linux
        .and_then(|l| l.namespaces().as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut externals = Vec::new();
    for (typ, name) in [
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Pid, "pid"),
    ] {
        // runc's Namespaces.PathOf: the first namespace of that type.
        let Some(path) = namespaces
            .iter()
            .find(|n| n.typ() == typ)
            .and_then(|n| n.path().as_ref())
            .filter(|p| !p.as_os_str().is_empty())
        else {
            continue;
        };
        let ino = host.ns_inode(path).map_err(Error::io(format!(
            "stat the container's {name} namespace {}",
            path.display()
        )))?;
        let key = if name == "net" {
            "extRootNetNS"
        } else {
            "extRootPidNS"
        };
        externals.push(format!("{name}[{ino}]:{key}"));
    }

    let mut ext_mounts: Vec<(String, String)> = Vec::new();
    let add_mount = |ext_mounts: &mut Vec<(String, String)>, destination: &str| {
        let name = host.mount_name(destination);
        ext_mounts.push((name.clone(), name));
    };
    let has_cgroupns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup);
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let destination = m.destination().to_string_lossy();
        let kind = m.typ().as_deref().unwrap_or_default();
        // specconv: a "bind"/"rbind" option makes the mount a bind whatever its type.
        let bind = m
            .options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "bind" || o == "rbind");
        if bind || kind == "bind" {
            add_mount(&mut ext_mounts, &destination);
        } else if kind == "cgroup" && !cgroup2_unified && !has_cgroupns {
            // cgroup v1 without a cgroup namespace: a bind of each hierarchy
            // at <destination>/<hierarchy dir name>.
            for h in cgroup_v1_mounts {
                let base = h
                    .file_name()
                    .map(|b| b.to_string_lossy())
                    .unwrap_or_default();
                add_mount(&mut ext_mounts, &clean(&format!("{destination}/{base}")));
            }
        }
    }
    for path in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        match host.masked_is_dir(path) {
            Ok(Some(false)) => ext_mounts.push((path.clone(), "/dev/null".into())),
            Ok(_) => {}
            Err(e) => return Err(Error::io(format!("stat the masked path {path}"))(e)),
        }
    }
    let spec_devices: Vec<String> = linux
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default()
        .iter()
        .map(|d| d.path().to_string_lossy().into_owned())
        .collect();
    for d in RUNC_DEFAULT_DEVICES {
        // specconv: a spec device replaces the default of the same path.
        if !spec_devices.iter().any(|s| s == d) {
            add_mount(&mut ext_mounts, d);
        }
    }
    for d in &spec_devices {
        add_mount(&mut ext_mounts, d);
    }

    Ok(DumpPlan {
        ext_mounts,
        externals,
        cgroup_mode,
        empty_ns,
        leave_running: !opts.exit,
        shell_job: opts.terminal,
        tcp_established: opts.open_tcp,
        ext_unix_sk: opts.external_unix_sockets,
        file_locks: opts.file_locks,
        config_file,
    })
}

/// The v1 hierarchies runc's `cgroups.GetCgroupMounts(false)` yields, in
/// mountinfo order: each `cgroup` mount that brings a subsystem of
/// `/proc/self/cgroup` not seen yet (named ones such as `name=systemd` too).
pub fn cgroup_v1_mounts(mountinfo: &str, self_cgroup: &str) -> Vec<PathBuf> {
    let mut seen: HashMap<&str, bool> = HashMap::new();
    for line in self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        if let (Some(_), Some(subs), Some(_)) = (parts.next(), parts.next(), parts.next()) {
            for s in subs.split(',') {
                seen.insert(s, false);
            }
        }
    }
    let total = seen.len();
    let mut found = 0;
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some("cgroup"), Some(_source), Some(super_opts)) = (r.next(), r.next(), r.next())
        else {
            continue;
        };
        let Some(mountpoint) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut any = false;
        for opt in super_opts.split(',') {
            if let Some(s) = seen.get_mut(opt) {
                if !*s {
                    *s = true;
                    any = true;
                    found += 1;
                }
            }
        }
        if any {
            out.push(PathBuf::from(crate::cgroups::unescape_mountinfo(
                mountpoint,
            )));
        }
        if found >= total {
            break;
        }
    }
    out
}

/// Go's `filepath.Clean`: lexical, `..` above the root stays at the root.
pub fn clean(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            c => out.push(c),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// `securejoin.SecureJoin(root, unsafe_path)` (filepath-securejoin 0.2, which
/// runc 1.1 uses): `unsafe_path` resolved under `root`, symlinks followed as if
/// `root` were `/`, missing components kept as they are.
pub fn secure_join(root: &str, unsafe_path: &str) -> io::Result<String> {
    let root = clean(root);
    let mut path = String::new();
    let mut rest = unsafe_path.to_string();
    let mut links = 0;
    while !rest.is_empty() {
        if links > 255 {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let (p, r) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i + 1..].to_string()),
            None => (std::mem::take(&mut rest), String::new()),
        };
        rest = r;
        let clean_p = clean(&format!("/{path}{p}"));
        if clean_p == "/" {
            path.clear();
            continue;
        }
        let full = clean(&format!("{root}{clean_p}"));
        let is_link = match std::fs::symlink_metadata(&full) {
            Ok(m) => m.file_type().is_symlink(),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                false
            }
            Err(e) => return Err(e),
        };
        if !is_link {
            path.push_str(&p);
            path.push('/');
            continue;
        }
        links += 1;
        let dest = std::fs::read_link(&full)?;
        let dest = dest.to_string_lossy();
        if dest.starts_with('/') {
            path.clear();
        }
        rest = format!("{dest}/{rest}");
    }
    let full = clean(&format!("/{path}"));
    Ok(clean(&format!("{root}{full}")))
}

/// runc's `addCriuDumpMount` naming: `destination` with the rootfs prefix
/// trimmed (Go's `TrimPrefix`), resolved in the rootfs, relative to it.
pub fn dump_mount_name(rootfs: &str, destination: &str) -> String {
    let dest = destination.strip_prefix(rootfs).unwrap_or(destination);
    let root = clean(rootfs);
    match secure_join(&root, dest) {
        Ok(joined) => match joined.strip_prefix(root.as_str()) {
            Some(rel) if root != "/" => rel.to_string(),
            _ => joined,
        },
        Err(_) => dest.to_string(),
    }
}

/// [`Host`] over the live system, for the container whose init is `pid`.
struct Live<'a> {
    rootfs: &'a str,
    pid: i32,
}

impl Host for Live<'_> {
    fn ns_inode(&self, path: &Path) -> io::Result<u64> {
        std::fs::metadata(path).map(|m| m.ino())
    }

    fn masked_is_dir(&self, path: &str) -> io::Result<Option<bool>> {
        match std::fs::metadata(format!("/proc/{}/root/{path}", self.pid)) {
            Ok(m) => Ok(Some(m.is_dir())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn mount_name(&self, destination: &str) -> String {
        dump_mount_name(self.rootfs, destination)
    }
}

/// Whether the host has cgroup v2 only (runc's `IsCgroup2UnifiedMode`).
fn cgroup2_unified() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The container's freezer cgroup among its cgroup dirs: the v1 freezer, or on
/// a cgroup v2 host the unified dir (runc's `cgroupManager.Path("freezer")`).
fn freezer_dir(dirs: &[PathBuf], unified: bool) -> Option<&PathBuf> {
    dirs.iter()
        .find(|d| d.join("freezer.state").is_file())
        .or_else(|| {
            dirs.iter()
                .find(|d| unified && d.join("cgroup.freeze").is_file())
        })
}

fn mkdir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(Error::io(format!("create {}", path.display())))
}

fn criu_setup(e: criu_sys::safe::Error) -> Error {
    match e {
        criu_sys::safe::Error::InvalidArgument { .. } => Error::InvalidArgument(e.to_string()),
        e => Error::Runtime {
            action: "criu dump".into(),
            message: e.to_string(),
        },
    }
}

/// A libcriu handle carrying the dump request.
fn request(
    target: &DumpTarget<'_>,
    spec: &CheckpointSpec,
    plan: &DumpPlan,
    freezer: Option<&PathBuf>,
    criu: &Path,
) -> std::result::Result<Criu, criu_sys::safe::Error> {
    let mut c = Criu::new()?;
    // Only for error messages: the request goes to a pre-spawned swrk.
    let _ = c.set_service_binary(criu);
    c.set_images_dir(&spec.image_path)?;
    if !spec.work_path.as_os_str().is_empty() {
        c.set_work_dir(&spec.work_path)?;
    }
    c.set_log_file(LOG_FILE)?;
    c.set_log_level(LogLevel::Debug);
    c.set_root(target.rootfs)?;
    c.set_manage_cgroups(plan.cgroup_mode);
    c.set_pid(u32::try_from(target.pid).unwrap_or(0))?;
    c.set_shell_job(plan.shell_job);
    c.set_leave_running(plan.leave_running);
    c.set_tcp_established(plan.tcp_established);
    c.set_ext_unix_sk(plan.ext_unix_sk);
    c.set_file_locks(plan.file_locks);
    c.set_empty_ns(plan.empty_ns);
    c.set_orphan_pts_master(true);
    if let Some(f) = &plan.config_file {
        c.set_config_file(f)?;
    }
    for e in &plan.externals {
        c.add_external(e)?;
    }
    if let Some(f) = freezer {
        c.set_freeze_cgroup(f)?;
    }
    for (k, v) in &plan.ext_mounts {
        c.add_ext_mount(k, v)?;
    }
    Ok(c)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The end of a CRIU log (the interesting part of a long one).
fn read_tail(path: &Path) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(1 << 20);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

/// Checkpoints the container into `spec.image_path` with CRIU, as runc 1.1's
/// `runc checkpoint` would: afterwards `runc restore` and a direct restore
/// both restore the image. With `spec.exit`, CRIU kills the container after
/// the dump; on failure the container keeps running.
pub async fn checkpoint(target: &DumpTarget<'_>, spec: &CheckpointSpec) -> Result<()> {
    let unified = cgroup2_unified();
    let v1 = if unified {
        Vec::new()
    } else {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(Error::io("read /proc/self/mountinfo"))?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(Error::io("read /proc/self/cgroup"))?;
        cgroup_v1_mounts(&mountinfo, &own)
    };
    let rootfs = target.rootfs.to_string_lossy();
    let host = Live {
        rootfs: &rootfs,
        pid: target.pid,
    };
    let plan = plan(target.spec, spec, &v1, unified, &host)?;
    if spec.image_path.as_os_str().is_empty() {
        return Err(Error::InvalidArgument(
            "invalid directory to save checkpoint".into(),
        ));
    }

    mkdir(&spec.image_path)?;
    let log_dir = if spec.work_path.as_os_str().is_empty() {
        spec.image_path.clone()
    } else {
        mkdir(&spec.work_path)?;
        spec.work_path.clone()
    };
    let log = log_dir.join(LOG_FILE);
    let descriptors = spec.image_path.join(DESCRIPTORS_FILE);
    let json = serde_json::to_vec(target.descriptors)
        .map_err(|e| Error::io("encode descriptors.json")(e.into()))?;
    {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&descriptors)
            .and_then(|mut f| f.write_all(&json))
            .map_err(Error::io(format!("write {}", descriptors.display())))?;
    }

    let freezer = freezer_dir(target.cgroup_dirs, unified);
    let criu = PathBuf::from(crate::runc::criu_binary());
    // A failed exec makes std wait for the child, which the shim's reaper may
    // have collected already (std then panics): refuse a missing binary here.
    if criu.components().count() > 1 && !is_executable(&criu) {
        return Err(Error::FailedPrecondition(format!(
            "CRIU binary {} is not an executable file (REKINDLE_CRIU)",
            criu.display()
        )));
    }
    let mut c = request(target, spec, &plan, freezer, &criu).map_err(criu_setup)?;
    let mut swrk = spawn_swrk(&criu, None, &[], &[]).await?;
    let socket = swrk.socket.take().ok_or_else(|| Error::Runtime {
        action: "criu dump".into(),
        message: "criu swrk has no service socket".into(),
    })?;
    c.set_service_fd(socket);

    let limit = crate::runc::criu_time_limit(false);
    let mut job = tokio::task::spawn_blocking(move || c.dump());
    let outcome = match tokio::time::timeout(limit, &mut job).await {
        Ok(joined) => joined,
        Err(_) => {
            // swrk is the leader of its own process group.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(swrk.process.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            swrk.process.wait(Duration::from_secs(5)).await;
            // libcriu sees the socket close and returns.
            let _ = tokio::time::timeout(Duration::from_secs(5), job).await;
            // A killed CRIU leaves the tree frozen.
            if let Some(f) = freezer {
                let _ = std::fs::write(f.join("freezer.state"), "THAWED");
                let _ = std::fs::write(f.join("cgroup.freeze"), "0");
            }
            return Err(Error::Runtime {
                action: "criu dump".into(),
                message: format!(
                    "did not finish within {limit:?}; killed criu swrk (see {})",
                    log.display()
                ),
            });
        }
    };
    // swrk exits once it has answered.
    swrk.process.wait(Duration::from_secs(10)).await;
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            let quoted = crate::task::criu_errors(&read_tail(&log));
            let message = if quoted.is_empty() {
                format!("{e} (see {})", log.display())
            } else {
                format!("{quoted} (see {})", log.display())
            };
            Err(Error::Runtime {
                action: "criu dump".into(),
                message,
            })
        }
        Err(e) => Err(Error::Runtime {
            action: "criu dump".into(),
            message: format!("the libcriu request did not return: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host where `/run/netns/pod` is inode 4026532001 and /proc/kcore and
    /// /proc/keys are files, /proc/acpi a directory.
    struct Fake;

    impl Host for Fake {
        fn ns_inode(&self, path: &Path) -> io::Result<u64> {
            match path.to_str() {
                Some("/run/netns/pod") => Ok(4026532001),
                Some("/proc/1234/ns/pid") => Ok(4026532002),
                _ => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
        fn masked_is_dir(&self, path: &str) -> io::Result<Option<bool>> {
            Ok(match path {
                "/proc/kcore" | "/proc/keys" => Some(false),
                "/proc/acpi" => Some(true),
                _ => None,
            })
        }
        fn mount_name(&self, destination: &str) -> String {
            // /var/run is a symlink to /run in the fake rootfs.
            match destination.strip_prefix("/var/run") {
                Some(rest) => format!("/run{rest}"),
                None => destination.to_string(),
            }
        }
    }

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn runc_like_spec() -> Spec {
        spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "ro"]},
                {"destination": "/data", "type": "none", "source": "/srv/data",
                 "options": ["rbind", "rw"]},
                {"destination": "/var/run/x.sock", "type": "bind", "source": "/run/x.sock"},
                {"destination": "/etc/hosts", "source": "/h", "options": ["bind", "ro"]}
            ],
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/run/netns/pod"},
                    {"type": "mount"}
                ],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/nope", "/proc/keys"],
                "devices": [
                    {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                    {"path": "/dev/tty", "type": "c", "major": 5, "minor": 0}
                ]
            }
        }))
    }

    fn hierarchies() -> Vec<PathBuf> {
        ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/systemd"]
            .iter()
            .map(PathBuf::from)
            .collect()
    }

    fn pairs(v: &[&str]) -> Vec<(String, String)> {
        v.iter().map(|s| (s.to_string(), s.to_string())).collect()
    }

    #[test]
    fn ext_mounts_follow_runc_order_and_naming() {
        let p = plan(
            &runc_like_spec(),
            &CheckpointSpec::default(),
            &hierarchies(),
            false,
            &Fake,
        )
        .unwrap();
        let mut want = pairs(&[
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/systemd",
            "/data",
            "/run/x.sock",
            "/etc/hosts",
        ]);
        want.push(("/proc/kcore".into(), "/dev/null".into()));
        want.push(("/proc/keys".into(), "/dev/null".into()));
        // /dev/tty is in the spec: its default entry gives way to the spec's.
        want.extend(pairs(&[
            "/dev/null",
            "/dev/random",
            "/dev/full",
            "/dev/zero",
            "/dev/urandom",
            "/dev/fuse",
            "/dev/tty",
        ]));
        assert_eq!(p.ext_mounts, want);
        assert_eq!(p.externals, vec!["net[4026532001]:extRootNetNS"]);
    }

    #[test]
    fn options_follow_the_checkpoint_request() {
        let p = plan(
            &runc_like_spec(),
            &CheckpointSpec::default(),
            &[],
            false,
            &Fake,
        )
        .unwrap();
        assert_eq!(p.cgroup_mode, CgroupMode::Soft);
        assert_eq!(p.empty_ns, libc::CLONE_NEWNET);
        assert!(p.leave_running);
        assert!(!(p.shell_job || p.tcp_established || p.ext_unix_sk || p.file_locks));
        assert_eq!(p.config_file.as_deref(), Some(RUNC_CRIU_CONFIG));

        let opts = CheckpointSpec {
            exit: true,
            open_tcp: true,
            external_unix_sockets: true,
            terminal: true,
            file_locks: true,
            empty_namespaces: vec!["network".into()],
            cgroups_mode: "strict".into(),
            ..Default::default()
        };
        let p = plan(&runc_like_spec(), &opts, &[], false, &Fake).unwrap();
        assert!(!p.leave_running);
        assert!(p.shell_job && p.tcp_established && p.ext_unix_sk && p.file_locks);
        assert_eq!(p.empty_ns, libc::CLONE_NEWNET);
        assert_eq!(p.cgroup_mode, CgroupMode::Strict);
        for (mode, want) in [
            ("soft", CgroupMode::Soft),
            ("full", CgroupMode::Full),
            ("ignore", CgroupMode::Ignore),
        ] {
            let opts = CheckpointSpec {
                cgroups_mode: mode.into(),
                ..Default::default()
            };
            let p = plan(&runc_like_spec(), &opts, &[], false, &Fake).unwrap();
            assert_eq!(p.cgroup_mode, want, "{mode}");
        }
    }

    #[test]
    fn invalid_options_are_invalid_arguments() {
        for opts in [
            CheckpointSpec {
                cgroups_mode: "bogus".into(),
                ..Default::default()
            },
            CheckpointSpec {
                empty_namespaces: vec!["ipc".into()],
                ..Default::default()
            },
        ] {
            let err = plan(&runc_like_spec(), &opts, &[], false, &Fake).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
    }

    #[test]
    fn a_missing_namespace_file_fails_the_plan() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/gone"}]}
        }));
        let err = plan(&s, &CheckpointSpec::default(), &[], false, &Fake).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }

    #[test]
    fn pid_namespace_by_path_is_external_too() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [
                {"type": "pid", "path": "/proc/1234/ns/pid"},
                {"type": "network", "path": ""}
            ]}
        }));
        let p = plan(&s, &CheckpointSpec::default(), &[], false, &Fake).unwrap();
        assert_eq!(p.externals, vec!["pid[4026532002]:extRootPidNS"]);
    }

    #[test]
    fn cgroup_mounts_are_real_with_cgroupns_or_cgroup_v2() {
        let mut s = runc_like_spec();
        let only_cgroup = |p: &DumpPlan| {
            p.ext_mounts
                .iter()
                .filter(|(k, _)| k.starts_with("/sys/fs/cgroup"))
                .count()
        };
        let p = plan(&s, &CheckpointSpec::default(), &hierarchies(), true, &Fake).unwrap();
        assert_eq!(only_cgroup(&p), 0);
        let mut linux = s.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.push(serde_json::from_value(serde_json::json!({"type": "cgroup"})).unwrap());
        linux.set_namespaces(Some(ns));
        s.set_linux(Some(linux));
        let p = plan(&s, &CheckpointSpec::default(), &hierarchies(), false, &Fake).unwrap();
        assert_eq!(only_cgroup(&p), 0);
    }

    #[test]
    fn criu_config_annotation_as_runc_reads_it() {
        let with = |a: Option<&str>| {
            let mut s = runc_like_spec();
            s.set_annotations(a.map(|v| {
                [("org.criu.config".to_string(), v.to_string())]
                    .into_iter()
                    .collect()
            }));
            plan(&s, &CheckpointSpec::default(), &[], false, &Fake)
                .unwrap()
                .config_file
        };
        assert_eq!(with(None).as_deref(), Some(RUNC_CRIU_CONFIG));
        assert_eq!(with(Some("")), None);
        assert_eq!(with(Some("/etc/my.conf")).as_deref(), Some("/etc/my.conf"));
    }

    #[test]
    fn v1_hierarchies_as_get_cgroup_mounts_lists_them() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime shared:9 - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 23 0:32 / /mnt/mem\\040copy rw,relatime - cgroup cgroup rw,memory
91 23 0:55 / /mnt/rdma rw,relatime - cgroup cgroup rw,rdma
";
        let own = "9:name=systemd:/\n6:freezer:/\n4:memory:/a\n2:cpu,cpuacct:/\n0::/\n";
        let got = cgroup_v1_mounts(mountinfo, own);
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/freezer",
            "/sys/fs/cgroup/systemd",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
        // A hierarchy this process is not in (rdma here) is not listed; a
        // subsystem is listed once; names are unescaped.
        let got = cgroup_v1_mounts(
            "90 23 0:32 / /mnt/mem\\040copy rw - cgroup cgroup rw,memory\n",
            "4:memory:/\n",
        );
        assert_eq!(got, vec![PathBuf::from("/mnt/mem copy")]);
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        for (input, want) in [
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../../x", "/x"),
            ("a/../..", ".."),
            ("", "."),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }

    #[test]
    fn mount_names_resolve_symlinks_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::fs::create_dir_all(root.join("var")).unwrap();
        std::fs::create_dir_all(root.join("opt/etc")).unwrap();
        std::os::unix::fs::symlink("../run", root.join("var/run")).unwrap();
        std::os::unix::fs::symlink("/opt/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        let r = root.to_str().unwrap();
        for (dest, want) in [
            ("/data", "/data"),
            ("/var/run/x.sock", "/run/x.sock"),
            ("/etc/hosts", "/opt/etc/hosts"),
            ("/up/escape", "/escape"),
            ("/a/../../b", "/b"),
            (&format!("{r}/var/run/y"), "/run/y"),
        ] {
            assert_eq!(dump_mount_name(r, dest), want, "{dest}");
        }
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(r, "/loop/x").is_err());
        // runc keeps the trimmed destination when SecureJoin fails.
        assert_eq!(dump_mount_name(r, "/loop/x"), "/loop/x");
    }

    #[tokio::test]
    async fn checkpoint_refuses_bad_options_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        let s = runc_like_spec();
        let target = DumpTarget {
            pid: 1,
            rootfs: dir.path(),
            spec: &s,
            cgroup_dirs: &[],
            descriptors: &[],
        };
        let opts = CheckpointSpec {
            image_path: images.clone(),
            cgroups_mode: "bogus".into(),
            ..Default::default()
        };
        let err = checkpoint(&target, &opts).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(!images.exists());
    }
}
