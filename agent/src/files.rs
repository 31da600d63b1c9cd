//! Files the agent writes for others to read — containerd's configuration and runtime
//! options (`rekindle install`), the functions registered through the admin API — whole
//! or not at all.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Writes `bytes` to `path` through a temp file beside it (`.<name>.tmp`, mode 0600
/// while written, then `mode`), fsynced and renamed into place, then fsyncs the
/// directory (made if missing): a reader — or a running binary being replaced — never
/// sees half a file, and a crash leaves the old file or the new one. The temp file is
/// removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // Not subject to the umask, unlike the mode at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_with_its_mode_and_no_temp_file_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        write_atomic(&path, b"a = 1\n", 0o640).unwrap();
        write_atomic(&path, b"a = 2\n", 0o640).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "a = 2\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["config.toml"]);
        // A directory where the file should go: an error, nothing left beside it.
        fs::create_dir(dir.path().join("sub/taken")).unwrap();
        fs::write(dir.path().join("sub/taken/x"), "").unwrap();
        assert!(write_atomic(&dir.path().join("sub/taken"), b"x", 0o600).is_err());
        assert!(!dir.path().join("sub/.taken.tmp").exists());
    }
}
