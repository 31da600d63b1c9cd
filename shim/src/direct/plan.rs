//! What a direct restore asks of CRIU, computed from the bundle's spec, the
//! image's `descriptors.json` and the host's cgroup hierarchies: the part of
//! runc's libcontainer `Restore` that is configuration, not work. No I/O.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// runc's default device nodes (specconv `AllowedDevices` created as nodes):
/// runc records each as an external mount on dump and maps it on restore.
pub const RUNC_DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/random",
    "/dev/full",
    "/dev/tty",
    "/dev/zero",
    "/dev/urandom",
];

/// One mount of the spec, as much as a restore needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub bind: bool,
}

/// The restore request's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePlan {
    /// key = where the mount is in the container (the name in the image),
    /// value = the host path to bind there.
    pub ext_mounts: Vec<(String, String)>,
    /// (CRIU namespace name, path) of namespaces to join (`--join-ns`).
    pub join_ns: Vec<(&'static str, String)>,
    /// A network namespace the container joins by path: restored into it as
    /// the external `extRootNetNS` (the pod's netns on Kubernetes).
    pub netns: Option<PathBuf>,
    /// `inherit_fd` entries for the container's stdio: (fd number in swrk =
    /// the container's fd, key from descriptors.json, e.g. `pipe:[1234]`).
    pub stdio: Vec<(i32, String)>,
    /// Mount points the rootfs must have (relative to it).
    pub mountpoints: Vec<(String, bool)>,
}

/// Why a container cannot take the direct path (it then takes `runc restore`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotDirect(pub String);

/// The spec's mounts in restore terms.
pub fn spec_mounts(spec: &Spec) -> Vec<SpecMount> {
    spec.mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let kind = m.typ().clone().unwrap_or_default();
            let opts = m.options().clone().unwrap_or_default();
            SpecMount {
                destination: m.destination().to_string_lossy().into_owned(),
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bind: kind == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind"),
                kind,
            }
        })
        .collect()
}

/// Computes the restore's configuration, or says why this container needs
/// runc. `v1_hierarchies` are the mount points of the host's cgroup v1
/// hierarchies (e.g. `/sys/fs/cgroup/cpu,cpuacct`); `cgroup` is the
/// container's cgroupfs path.
pub fn plan(
    spec: &Spec,
    descriptors: &[String],
    v1_hierarchies: &[PathBuf],
    cgroup: &str,
) -> Result<RestorePlan, NotDirect> {
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| NotDirect("the spec has no linux section".into()))?;
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    let has_cgroupns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Cgroup);
    let mounts = spec_mounts(spec);

    let mut ext_mounts: Vec<(String, String)> = Vec::new();
    for m in &mounts {
        if m.bind {
            ext_mounts.push((m.destination.clone(), m.source.clone()));
        } else if m.kind == "cgroup" && !has_cgroupns {
            // cgroup v1 without a cgroup namespace: each hierarchy's container
            // cgroup is bound at <destination>/<hierarchy>, as at creation.
            for h in v1_hierarchies {
                let Some(base) = h.file_name().map(|b| b.to_string_lossy().into_owned()) else {
                    continue;
                };
                ext_mounts.push((
                    format!("{}/{base}", m.destination.trim_end_matches('/')),
                    format!("{}{cgroup}", h.display()),
                ));
            }
        }
    }
    // Masked files are binds of /dev/null, recorded under the name /dev/null.
    if linux.masked_paths().as_ref().is_some_and(|p| !p.is_empty()) {
        ext_mounts.push(("/dev/null".into(), "/dev/null".into()));
    }
    let mut devices: Vec<String> = RUNC_DEFAULT_DEVICES.iter().map(|s| s.to_string()).collect();
    for d in linux.devices().as_deref().unwrap_or_default() {
        let p = d.path().to_string_lossy().into_owned();
        if !devices.contains(&p) {
            devices.push(p);
        }
    }
    for d in devices {
        if !ext_mounts.iter().any(|(k, _)| *k == d) {
            ext_mounts.push((d.clone(), d));
        }
    }

    let mut join_ns = Vec::new();
    let mut netns = None;
    for n in &namespaces {
        let Some(path) = n.path() else { continue };
        let path_s = path.to_string_lossy().into_owned();
        match n.typ() {
            LinuxNamespaceType::Network => netns = Some(path.clone()),
            LinuxNamespaceType::Ipc => join_ns.push(("ipc", path_s)),
            LinuxNamespaceType::Uts => join_ns.push(("uts", path_s)),
            LinuxNamespaceType::Mount => join_ns.push(("mnt", path_s)),
            other => {
                return Err(NotDirect(format!(
                    "joining an existing {other:?} namespace ({path_s}) needs runc"
                )))
            }
        }
    }
    if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(NotDirect(
            "a user namespace with id mappings needs runc".into(),
        ));
    }

    let mut stdio = Vec::new();
    for (i, d) in descriptors.iter().enumerate().take(3) {
        if d.starts_with("pipe:") {
            stdio.push((i as i32, d.clone()));
        } else if !d.starts_with('/') {
            // A socket or pty is not something the shim can hand over.
            return Err(NotDirect(format!(
                "the checkpointed fd {i} was {d:?}; only pipes and files are restored directly"
            )));
        }
    }

    // runc's prepareCriuRestoreMounts, reduced: every mount point outside a
    // tmpfs mount must exist in the rootfs (CRIU restores tmpfs contents).
    let tmpfs: Vec<&str> = mounts
        .iter()
        .filter(|m| m.kind == "tmpfs")
        .map(|m| m.destination.as_str())
        .collect();
    let mut mountpoints = Vec::new();
    for m in &mounts {
        if m.kind == "cgroup"
            || tmpfs.iter().any(|t| {
                m.destination
                    .starts_with(&format!("{}/", t.trim_end_matches('/')))
            })
        {
            continue;
        }
        let rel = m.destination.trim_start_matches('/');
        if rel.is_empty() {
            continue;
        }
        if rel.split('/').any(|c| c == "..") {
            return Err(NotDirect(format!(
                "mount destination {:?} escapes the rootfs",
                m.destination
            )));
        }
        let file = m.bind && !Path::new(&m.source).is_dir() && Path::new(&m.source).exists();
        mountpoints.push((rel.to_string(), file));
    }

    Ok(RestorePlan {
        ext_mounts,
        join_ns,
        netns,
        stdio,
        mountpoints,
    })
}

/// runc's descriptors.json (a JSON array of strings), bounded: it comes from
/// an untrusted image.
pub fn parse_descriptors(text: &str) -> Result<Vec<String>, NotDirect> {
    if text.len() > 64 * 1024 {
        return Err(NotDirect("descriptors.json is larger than 64 KiB".into()));
    }
    let v: Vec<String> = serde_json::from_str(text)
        .map_err(|e| NotDirect(format!("descriptors.json is not a list of strings: {e}")))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const SPEC: &str = r#"{
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]},
            {"destination": "/data", "source": "/var/data", "options": ["bind"]}
        ],
        "linux": {
            "maskedPaths": ["/proc/kcore"],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
            "namespaces": [
                {"type": "pid"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/fn"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"}
            ]
        }
    }"#;

    #[test]
    fn ext_mounts_follow_runcs_restore() {
        let hs = vec![
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
            PathBuf::from("/sys/fs/cgroup/memory"),
        ];
        let d = vec!["pipe:[1]".to_string(), "pipe:[2]".into(), "pipe:[2]".into()];
        let p = plan(&spec(SPEC), &d, &hs, "/default/fn").unwrap();
        assert_eq!(
            p.ext_mounts,
            vec![
                (
                    "/sys/fs/cgroup/cpu,cpuacct".to_string(),
                    "/sys/fs/cgroup/cpu,cpuacct/default/fn".to_string()
                ),
                (
                    "/sys/fs/cgroup/memory".into(),
                    "/sys/fs/cgroup/memory/default/fn".into()
                ),
                ("/etc/hosts".into(), "/etc/hosts".into()),
                ("/data".into(), "/var/data".into()),
                ("/dev/null".into(), "/dev/null".into()),
                ("/dev/random".into(), "/dev/random".into()),
                ("/dev/full".into(), "/dev/full".into()),
                ("/dev/tty".into(), "/dev/tty".into()),
                ("/dev/zero".into(), "/dev/zero".into()),
                ("/dev/urandom".into(), "/dev/urandom".into()),
                ("/dev/fuse".into(), "/dev/fuse".into()),
            ]
        );
        assert_eq!(p.netns, Some(PathBuf::from("/var/run/netns/fn")));
        assert_eq!(p.join_ns, vec![("ipc", "/proc/7/ns/ipc".to_string())]);
        assert_eq!(
            p.stdio,
            vec![
                (0, "pipe:[1]".to_string()),
                (1, "pipe:[2]".into()),
                (2, "pipe:[2]".into())
            ]
        );
        // /dev/pts lies in the /dev tmpfs; cgroup mounts are CRIU's.
        let points: Vec<&str> = p.mountpoints.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(points, vec!["proc", "dev", "etc/hosts", "data"]);
    }

    #[test]
    fn what_needs_runc_is_named() {
        let with_pidns = SPEC.replace(
            r#"{"type": "pid"}"#,
            r#"{"type": "pid", "path": "/proc/9/ns/pid"}"#,
        );
        let e = plan(&spec(&with_pidns), &[], &[], "/c").unwrap_err();
        assert!(e.0.contains("Pid"), "{e}");
        let e = plan(&spec(SPEC), &["socket:[5]".into()], &[], "/c").unwrap_err();
        assert!(e.0.contains("fd 0"), "{e}");
        let escaping = SPEC.replace("\"/data\"", "\"/../data\"");
        assert!(plan(&spec(&escaping), &[], &[], "/c").is_err());
    }

    #[test]
    fn descriptors_are_bounded_and_typed() {
        assert_eq!(
            parse_descriptors(r#"["pipe:[1]","/dev/null"]"#).unwrap(),
            vec!["pipe:[1]", "/dev/null"]
        );
        assert!(parse_descriptors("{}").is_err());
        assert!(parse_descriptors(&"x".repeat(70_000)).is_err());
    }
}
