//! The container's cgroups, for the one case runc cannot clean up: a restore
//! killed halfway (runc wrote no state, so `runc delete` knows nothing of the
//! processes CRIU had already placed in the container's cgroups).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::warn;

/// Every mounted cgroup hierarchy (v1 controllers and cgroup2), from mountinfo.
pub fn hierarchies(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .collect()
}

/// The directories of a cgroupfs-style `cgroupsPath` ("/a/b") in each hierarchy.
/// Other forms (systemd's "slice:prefix:name") or `..` components yield none.
pub fn dirs(hierarchies: &[PathBuf], cgroups_path: &str) -> Vec<PathBuf> {
    let rel = cgroups_path.trim_start_matches('/');
    if !cgroups_path.starts_with('/')
        || rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Vec::new();
    }
    hierarchies.iter().map(|h| h.join(rel)).collect()
}

/// Kills every process in the container's cgroups and removes them. Best
/// effort; what could not be done is logged.
pub async fn kill_and_remove(cgroups_path: &str) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dirs: Vec<PathBuf> = dirs(&hierarchies(&mountinfo), cgroups_path)
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    for d in &dirs {
        // A frozen v1 task does not die until thawed.
        let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        let _ = std::fs::write(d.join("cgroup.freeze"), "0");
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut alive = 0;
        for d in &dirs {
            for pid in procs(d) {
                alive += 1;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if alive == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for d in &dirs {
        if let Err(e) = std::fs::remove_dir(d) {
            warn!(error = %e, cgroup = %d.display(), "remove the cgroup of a failed restore");
        }
    }
}

/// Detaches every mount at or under `dir` (deepest first, stacked ones too),
/// and says whether none is left.
pub fn detach_mounts_under(dir: &Path) -> bool {
    let prefix = format!("{}/", dir.display());
    let under = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .filter(|m| format!("{m}/").starts_with(&prefix))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.len()));
        v
    };
    // Bounded: each round detaches at least one mount or stops.
    for _ in 0..256 {
        let mounts = under();
        let Some(first) = mounts.first() else {
            return true;
        };
        if nix::mount::umount2(first.as_str(), nix::mount::MntFlags::MNT_DETACH).is_err() {
            return false;
        }
    }
    under().is_empty()
}

/// Undoes CRIU's network lock in the network namespace at `netns` (what
/// `criu restore` does at its end, see criu/net.c): a restore killed halfway
/// leaves the namespace dropping every packet. Best effort, per address family.
pub async fn unlock_criu_network(netns: &Path) {
    const JUMPS: &str = "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\nCOMMIT\n";
    const CHAIN: &str = "*filter\n:CRIU - [0:0]\n-X CRIU\nCOMMIT\n";
    for tool in ["iptables-restore", "ip6tables-restore"] {
        for rules in [JUMPS, CHAIN] {
            let mut cmd = tokio::process::Command::new("nsenter");
            cmd.arg(format!("--net={}", netns.display()))
                .args([tool, "-w", "--noflush"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            let Ok(mut child) = cmd.spawn() else {
                warn!(tool, "cannot run nsenter to undo CRIU's network lock");
                return;
            };
            if let Some(mut stdin) = child.stdin.take() {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(rules.as_bytes()).await;
            }
            // The reaper collects the exit; a short wait for the pipe is enough.
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }
}

/// Undoes mountinfo's octal escapes ("\040" for a space, also tab, newline and
/// backslash).
pub(crate) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pids in one cgroup directory (none if it cannot be read).
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
29 1 0:26 / /proc rw - proc proc rw
";

    #[test]
    fn every_v1_and_v2_hierarchy_is_found() {
        assert_eq!(
            hierarchies(MOUNTINFO),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn only_plain_absolute_paths_name_directories() {
        let h = hierarchies(MOUNTINFO);
        assert_eq!(
            dirs(&h, "/ns/c1")[2],
            PathBuf::from("/sys/fs/cgroup/unified/ns/c1")
        );
        for bad in [
            "system.slice:cri:c1",
            "/",
            "/ns/../etc",
            "relative/c1",
            "/ns//c1",
        ] {
            assert!(dirs(&h, bad).is_empty(), "{bad}");
        }
    }
}
