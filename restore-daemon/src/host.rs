//! What a checkpoint image depends on: the CRIU that wrote it and the kernel it ran on.

use std::path::Path;
use std::process::Command;

/// The running node's CRIU version and kernel release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// `criu --version` of the configured binary, e.g. `4.2.1`; `None` if it cannot be
    /// run or its output not understood.
    pub criu_version: Option<String>,
    /// `uname -r`.
    pub kernel_release: String,
}

impl HostInfo {
    /// Asks the CRIU binary and the kernel.
    pub fn detect(criu_binary: &Path) -> HostInfo {
        let criu_version = match Command::new(criu_binary).arg("--version").output() {
            Ok(out) if out.status.success() => {
                parse_criu_version(&String::from_utf8_lossy(&out.stdout))
            }
            Ok(out) => {
                tracing::warn!(binary = %criu_binary.display(), status = %out.status, "criu --version failed");
                None
            }
            Err(e) => {
                tracing::warn!(binary = %criu_binary.display(), error = %e, "cannot run criu --version");
                None
            }
        };
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        HostInfo {
            criu_version,
            kernel_release,
        }
    }
}

/// The version in `criu --version`'s output (`Version: 4.2.1`, then maybe `GitID: ...`).
pub fn parse_criu_version(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
}

/// Whether an image made with `criu_version` on `kernel_release` may be restored here;
/// `None` when both match, else what differs, naming both sides.
pub fn mismatch(
    image: &str,
    criu_version: Option<&str>,
    kernel_release: &str,
    host: &HostInfo,
) -> Option<String> {
    let mut diffs = Vec::new();
    let show = |v: Option<&str>| v.unwrap_or("unknown").to_string();
    if criu_version.is_none() || criu_version != host.criu_version.as_deref() {
        diffs.push(format!(
            "it was made with CRIU {}, this node runs CRIU {}",
            show(criu_version),
            show(host.criu_version.as_deref())
        ));
    }
    if kernel_release != host.kernel_release {
        diffs.push(format!(
            "it was made on kernel {kernel_release}, this node runs kernel {}",
            host.kernel_release
        ));
    }
    if diffs.is_empty() {
        None
    } else {
        Some(format!("image {image}: {}", diffs.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostInfo {
        HostInfo {
            criu_version: Some("4.2.1".into()),
            kernel_release: "6.18.44".into(),
        }
    }

    #[test]
    fn criu_version_output_parses() {
        assert_eq!(
            parse_criu_version("Version: 4.2.1\n").as_deref(),
            Some("4.2.1")
        );
        assert_eq!(
            parse_criu_version("Version: 4.2\nGitID: v4.2-10-gabc\n").as_deref(),
            Some("4.2")
        );
        assert_eq!(parse_criu_version("something else"), None);
    }

    #[test]
    fn matching_versions_pass() {
        assert_eq!(mismatch("a", Some("4.2.1"), "6.18.44", &host()), None);
    }

    #[test]
    fn a_mismatch_names_both_versions() {
        let m = mismatch("a", Some("4.1.1"), "6.18.44", &host()).unwrap();
        assert!(m.contains("CRIU 4.1.1") && m.contains("CRIU 4.2.1"), "{m}");
        let m = mismatch("a", Some("4.2.1"), "6.1.0", &host()).unwrap();
        assert!(
            m.contains("kernel 6.1.0") && m.contains("kernel 6.18.44"),
            "{m}"
        );
        let m = mismatch("a", None, "6.18.44", &host()).unwrap();
        assert!(m.contains("CRIU unknown"), "{m}");
    }

    #[test]
    fn the_installed_criu_is_detected() {
        let h = HostInfo::detect(Path::new("/usr/local/sbin/criu"));
        assert!(!h.kernel_release.is_empty());
        if Path::new("/usr/local/sbin/criu").exists() {
            assert!(h.criu_version.is_some(), "{h:?}");
        }
        let none = HostInfo::detect(Path::new("/nonexistent/criu"));
        assert_eq!(none.criu_version, None);
    }
}
