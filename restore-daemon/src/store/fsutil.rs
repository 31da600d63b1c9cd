//! Small file-system helpers: durable and atomic writes, no-follow opens, random names.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// `n` random bytes as lowercase hex, from the kernel's CSPRNG (`getrandom(2)`).
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: writes at most `n - filled` bytes into `buf[filled..]`.
        let rc = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += rc as usize;
    }
    Ok(hex(&buf))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Opens a file for reading without following a symlink in its last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates a new file (never an existing one), mode 0600.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Creates one directory, mode 0700.
pub fn create_dir_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().mode(0o700).create(path)
}

/// Creates a directory and its missing parents, each mode 0700.
pub fn create_dir_all_private(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(path)
}

/// fsyncs a directory, so that the entries created or renamed in it are durable.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists
/// (`renameat2(RENAME_NOREPLACE)`).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; plain syscall.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks that `meta` is owned by `owner` (when one is required): a non-root client may
/// only have the daemon read and write files that it owns itself.
pub fn check_owner(meta: &fs::Metadata, owner: Option<u32>, path: &Path) -> Result<(), String> {
    match owner {
        Some(uid) if meta.uid() != uid => Err(format!(
            "{} belongs to uid {}, not to the requesting uid {uid}",
            path.display(),
            meta.uid()
        )),
        _ => Ok(()),
    }
}

/// Bytes a directory tree takes (sum of its regular files' sizes); symlinks not followed.
pub fn tree_size(path: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    for entry in entries.flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += tree_size(&entry.path()),
            Ok(t) if t.is_file() => total += entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// Removes a directory tree on drop unless [`TempDir::keep`] was called: a half-written
/// image or staged copy never outlives the request that wrote it.
pub struct TempDir {
    path: std::path::PathBuf,
    armed: bool,
}

impl TempDir {
    /// Creates `parent/<prefix><random>`, mode 0700.
    pub fn new_in(parent: &Path, prefix: &str) -> io::Result<TempDir> {
        let path = parent.join(format!("{prefix}{}", random_hex(8)?));
        create_dir_private(&path)?;
        Ok(TempDir { path, armed: true })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory (it was renamed into place).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove temporary directory");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_refuses_to_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        let e = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let c = dir.path().join("c");
        rename_noreplace(&a, &c).unwrap();
        assert!(c.is_dir() && !a.exists());
    }

    #[test]
    fn temp_dirs_vanish_unless_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempDir::new_in(dir.path(), ".tmp-").unwrap();
        let p = t.path().to_path_buf();
        fs::write(p.join("f"), b"x").unwrap();
        drop(t);
        assert!(!p.exists());
        let t = TempDir::new_in(dir.path(), ".tmp-").unwrap();
        let p = t.path().to_path_buf();
        t.keep();
        assert!(p.exists());
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }
}
