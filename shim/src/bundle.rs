//! The bundle containerd hands the shim at Create: its OCI spec, the files
//! `shim delete` reads back, and the rootfs mounts.
//!
//! Plain blocking calls, not containerd-shim's async helpers: these are a few
//! small files in containerd's state dir and a mount or two, once per Create.
//! Through tokio each was a hop to the blocking pool — in a shim process just
//! started, often onto a thread spawned for it: measured on a restore's path,
//! 0.53 ms for the two files and the spec, 0.65 ms for the rootfs.

use std::{io::Write, path::Path};

use containerd_shim::{
    api::Options,
    protos::types::mount::Mount,
    util::{JsonOptions, OPTIONS_FILE_NAME, RUNTIME_FILE_NAME},
};
use oci_spec::runtime::Spec;

use crate::error::{Error, Result};

/// The bundle's `config.json`.
pub fn read_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    Spec::load(&path)
        .map_err(|e| Error::InvalidArgument(format!("read the OCI spec {}: {e}", path.display())))
}

/// `options.json` and `runtime`: `shim delete` (containerd's cleanup after a
/// dead shim) runs in a new process that knows only the bundle, and reads the
/// runc root and binary from these, as containerd's runc shim does.
pub fn write_engine_files(bundle: &Path, options: &Options) -> Result<()> {
    let json = serde_json::to_string(&JsonOptions::from(options.clone()))
        .map_err(|e| Error::InvalidArgument(format!("encode the runtime options as JSON: {e}")))?;
    write_atomic(bundle, OPTIONS_FILE_NAME, json.as_bytes())?;
    write_atomic(bundle, RUNTIME_FILE_NAME, options.binary_name.as_bytes())
}

/// Writes `dir/name` through a temporary file and a rename: a reader never
/// sees it half-written.
fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(contents))
        .and_then(|()| std::fs::rename(&tmp, &path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("write {}", path.display()))(e)
    })
}

/// Creates `rootfs` (mode 0711) and mounts containerd's `mounts` on it, in
/// order. On failure, whatever was mounted is unmounted again.
pub fn mount_rootfs(mounts: &[Mount], rootfs: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o711).create(rootfs) {
        Err(e) if !(e.kind() == std::io::ErrorKind::AlreadyExists && rootfs.is_dir()) => {
            return Err(Error::io(format!("mkdir {}", rootfs.display()))(e));
        }
        _ => {}
    }
    for m in mounts {
        let typ = Some(m.type_.as_str()).filter(|s| !s.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        let mount = || containerd_shim::mount::mount_rootfs(typ, source, &m.options, rootfs);
        // Overlay options near a page (many layers) are shortened by chdir into
        // the layers' dir after unshare(CLONE_FS): that must happen on a thread
        // of its own, not on one of the runtime's, whose cwd it would keep. (This
        // counts a separator per option and a 4 KiB page: at least as often as
        // containerd-shim's own test, which counts none and the real page size.)
        let long = m.options.iter().map(|o| o.len() + 1).sum::<usize>() >= 4096 - 512;
        let mounted = if long {
            std::thread::scope(|s| s.spawn(mount).join()).unwrap_or_else(|_| {
                Err(containerd_shim::Error::Other(
                    "the mount thread panicked".into(),
                ))
            })
        } else {
            mount()
        };
        if let Err(e) = mounted {
            unmount_rootfs(rootfs);
            return Err(Error::FailedPrecondition(format!(
                "mount rootfs ({} {}): {e}",
                m.type_, m.source
            )));
        }
    }
    Ok(())
}

/// Unmounts everything under `rootfs` (best effort, logged).
pub fn unmount_rootfs(rootfs: &Path) {
    if let Err(e) = containerd_shim::mount::umount_recursive(rootfs.to_str(), 0) {
        tracing::warn!(error = %e, rootfs = %rootfs.display(), "unmount rootfs");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_files_are_what_shim_delete_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            binary_name: "/usr/sbin/runc".into(),
            root: "/run/rekindle/runc".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        write_engine_files(dir.path(), &options).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let back = rt
            .block_on(containerd_shim::util::read_options(dir.path()))
            .unwrap();
        assert_eq!(back.binary_name, "/usr/sbin/runc");
        assert_eq!(back.root, "/run/rekindle/runc");
        assert!(back.systemd_cgroup);
        let runtime = std::fs::read_to_string(dir.path().join(RUNTIME_FILE_NAME)).unwrap();
        assert_eq!(runtime, "/usr/sbin/runc");
        // No temporary file is left beside them.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [OPTIONS_FILE_NAME, RUNTIME_FILE_NAME]);
    }

    #[test]
    fn a_spec_that_does_not_parse_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let e = read_spec(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
