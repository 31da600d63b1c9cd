//! What a container may leave behind once it is deleted, and the check that nothing did.
//!
//! After every test, for each container the test created: no process whose command line
//! names the container or that sits in its cgroup (shims included), no mount naming it,
//! no cgroup directory for it in any hierarchy (cgroup v1 controllers, the v2/unified
//! hierarchy), no runc state directory, no bundle, no shim socket, and no task,
//! container or snapshot left in containerd.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::containerd::Paths;

/// One container the leak check looks for.
pub struct Target<'a> {
    pub paths: &'a Paths,
    pub namespace: &'a str,
    pub id: &'a str,
    /// `linux.cgroupsPath` of its spec.
    pub cgroups_path: String,
}

/// Everything still on the machine for `t`, one line each.
pub fn find(t: &Target<'_>) -> Vec<String> {
    let mut found = Vec::new();
    for p in processes_of(t) {
        found.push(format!("process {} still running: {}", p.pid, p.cmdline));
    }
    for m in mounts() {
        if mentions_id(&m.mount_point, t.id) || mentions_id(&m.source, t.id) {
            found.push(format!(
                "mount left: {} ({} from {})",
                m.mount_point, m.fstype, m.source
            ));
        }
    }
    for dir in cgroup_dirs_of(t) {
        found.push(format!("cgroup left: {}", dir.display()));
    }
    for dir in state_dirs_of(t) {
        if dir.exists() {
            found.push(format!("directory left: {}", dir.display()));
        }
    }
    for sock in shim_sockets(t.paths, t.namespace, t.id) {
        if sock.exists() {
            found.push(format!("shim socket left: {}", sock.display()));
        }
    }
    found
}

/// Removes what [`find`] reported (after it was reported), so one leaky test does not
/// spoil the next ones or the machine.
pub fn clean(t: &Target<'_>) {
    for p in processes_of(t) {
        // SAFETY: kill(2); the pid was read from /proc a moment ago.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut left: Vec<String> = mounts()
        .into_iter()
        .filter(|m| mentions_id(&m.mount_point, t.id))
        .map(|m| m.mount_point)
        .collect();
    unmount_all(&mut left);
    for dir in cgroup_dirs_of(t) {
        remove_cgroup_tree(&dir);
    }
    for dir in state_dirs_of(t) {
        let _ = fs::remove_dir_all(&dir);
    }
    for sock in shim_sockets(t.paths, t.namespace, t.id) {
        let _ = fs::remove_file(&sock);
    }
}

/// After containerd has stopped: shims or other processes still using its temp dir or
/// socket (on their command line, or as their working directory: a `criu swrk` runs in
/// its container's bundle), and mounts under the temp dir. They are reported, then
/// killed and unmounted.
pub fn after_containerd(paths: &Paths) -> Vec<String> {
    let mut found = Vec::new();
    let dir = paths.dir.display().to_string();
    let me = std::process::id() as libc::pid_t;
    let procs: Vec<Proc> = all_processes()
        .into_iter()
        .filter(|p| {
            p.pid != me
                && (p.cmdline.contains(&dir)
                    || fs::read_link(format!("/proc/{}/cwd", p.pid))
                        .is_ok_and(|cwd| cwd.starts_with(&paths.dir)))
        })
        .collect();
    for p in &procs {
        found.push(format!("process {} still running: {}", p.pid, p.cmdline));
        // SAFETY: kill(2) of a process found in /proc.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
    if !procs.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The state dir's own tmpfs is the harness's, unmounted after this check.
    let mut left: Vec<String> = mounts()
        .into_iter()
        .filter(|m| {
            Path::new(&m.mount_point).starts_with(&paths.dir)
                && Path::new(&m.mount_point) != paths.state
        })
        .map(|m| m.mount_point)
        .collect();
    for m in &left {
        found.push(format!("mount left: {m}"));
    }
    unmount_all(&mut left);
    found
}

/// Removes the per-namespace cgroup parents (`/<namespace>`) if they are empty. Not a
/// leak: runc never removes a container's parent cgroup.
pub fn remove_empty_namespace_cgroups(namespace: &str) {
    for root in cgroup_roots() {
        let _ = fs::remove_dir(root.join(namespace));
    }
}

pub struct Proc {
    pub pid: libc::pid_t,
    pub cmdline: String,
}

fn all_processes() -> Vec<Proc> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            Some(Proc { pid, cmdline })
        })
        .collect()
}

/// Processes that name the container on their command line (its shim: `-id <id>`) or
/// that sit in its cgroup.
fn processes_of(t: &Target<'_>) -> Vec<Proc> {
    let me = std::process::id() as libc::pid_t;
    let cg = t.cgroups_path.trim_end_matches('/');
    all_processes()
        .into_iter()
        .filter(|p| p.pid != me)
        .filter(|p| {
            p.cmdline.split_whitespace().any(|w| mentions_id(w, t.id))
                || fs::read_to_string(format!("/proc/{}/cgroup", p.pid))
                    .map(|c| {
                        c.lines().any(|l| {
                            let path = l.splitn(3, ':').nth(2).unwrap_or_default();
                            (!cg.is_empty() && path == cg) || mentions_id(path, t.id)
                        })
                    })
                    .unwrap_or(false)
        })
        .collect()
}

/// `text` is the id or contains it as a path component / `-id` value.
fn mentions_id(text: &str, id: &str) -> bool {
    text == id
        || text
            .split(['/', '=', ':', ',', ' '])
            .any(|part| part == id || part.trim_end_matches(".scope").ends_with(id))
}

pub struct Mount {
    /// `major:minor` of the filesystem: one per cgroup hierarchy.
    pub device: String,
    /// The directory of the filesystem mounted there.
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// /proc/self/mountinfo: `id parent maj:min root mount-point options [optional...] - fstype source super-options`.
pub fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let device = fields.get(2)?.to_string();
            let root = unescape(fields.get(3)?);
            let mount_point = unescape(fields.get(4)?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next().unwrap_or_default());
            Some(Mount {
                device,
                root,
                mount_point,
                fstype,
                source,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn unmount_all(points: &mut [String]) {
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points.iter() {
        super::restore::unmount(Path::new(p));
    }
}

/// Mount points of every cgroup hierarchy: each v1 controller and the v2 (unified) one,
/// once each (the same hierarchy may be mounted again elsewhere, e.g. in CRIU's
/// cgroup yard): the mount of its root, preferring the one under /sys/fs/cgroup.
pub fn cgroup_roots() -> BTreeSet<PathBuf> {
    let mut by_device: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for m in mounts() {
        if (m.fstype != "cgroup" && m.fstype != "cgroup2") || m.root != "/" {
            continue;
        }
        let preferred = m.mount_point.starts_with("/sys/fs/cgroup");
        let entry = by_device
            .entry(m.device)
            .or_insert_with(|| PathBuf::from(&m.mount_point));
        if preferred && !entry.starts_with("/sys/fs/cgroup") {
            *entry = PathBuf::from(&m.mount_point);
        }
    }
    by_device.into_values().collect()
}

/// The container's cgroup in every hierarchy (where `cgroupsPath` puts it), plus any
/// cgroup directory a few levels down whose name carries the id (a shim that chose
/// another path, a systemd-style `<prefix>-<id>.scope`).
fn cgroup_dirs_of(t: &Target<'_>) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let rel = t.cgroups_path.trim_start_matches('/');
    for root in cgroup_roots() {
        if !rel.is_empty() && !rel.contains(':') {
            let dir = root.join(rel);
            if dir.is_dir() {
                found.insert(dir);
            }
        }
        walk_cgroups(&root, 0, t.id, &mut found);
    }
    found
}

fn walk_cgroups(dir: &Path, depth: usize, id: &str, found: &mut BTreeSet<PathBuf>) {
    if depth > 4 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let path = e.path();
        if e.file_name().to_str().is_some_and(|n| mentions_id(n, id)) {
            found.insert(path.clone());
        }
        walk_cgroups(&path, depth + 1, id, found);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// runc's state (the root containerd hands it, and the default root under
/// /run/containerd/runc in case a shim ignored the option), and the shim's bundle and
/// work directory.
fn state_dirs_of(t: &Target<'_>) -> Vec<PathBuf> {
    let (ns, id) = (t.namespace, t.id);
    vec![
        t.paths.runc_root.join(ns).join(id),
        Path::new("/run/containerd/runc").join(ns).join(id),
        t.paths.bundle(ns, id),
        t.paths
            .root
            .join("io.containerd.runtime.v2.task")
            .join(ns)
            .join(id),
    ]
}

/// The shim's ttrpc socket: `<dir>/<sha256(<containerd address>/<namespace>/<id>)>` in
/// the directory containerd 2 asks for (`<state>/s`) or the default `/run/containerd/s`.
pub fn shim_sockets(paths: &Paths, namespace: &str, id: &str) -> Vec<PathBuf> {
    let key = format!("{}/{}/{}", paths.grpc.display(), namespace, id);
    let hash: String = sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    vec![
        paths.state.join("s").join(&hash),
        Path::new("/run/containerd/s").join(&hash),
    ]
}
