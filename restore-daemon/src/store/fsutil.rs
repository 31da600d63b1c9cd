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
        // Readable too: a shared writable mapping needs it (the store's extraction
        // decodes blocks straight into a mapped file, see store::blocks).
        .read(true)
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
    renameat2(from, to, libc::RENAME_NOREPLACE)
}

/// Swaps `a` and `b`, which must both exist, in one step
/// (`renameat2(RENAME_EXCHANGE)`): a reader finds one or the other, never neither.
pub fn rename_exchange(a: &Path, b: &Path) -> io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let from_c = CString::new(from.as_os_str().as_bytes())?;
    let to_c = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; plain syscall.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Opens a new unnamed file in directory `dir` (`O_TMPFILE`, mode 0600), for writing a
/// file that appears under its name only once it is complete ([`link_anonymous`]).
///
/// Why not a named temporary file renamed into place: a drop guard removes that on an
/// error, but nothing does when the process is SIGKILLed (or the machine loses power)
/// mid-write, and it stays in the user's directory forever. An unnamed file has no
/// directory entry: when the last descriptor closes, however the process ended, the
/// kernel frees it, and there is nothing to clean.
///
/// Fails with an error for which [`anonymous_unsupported`] holds where this cannot be
/// done: file systems without `O_TMPFILE`, or no `/proc` to link the file through.
pub fn create_anonymous_in(dir: &Path) -> io::Result<File> {
    // linkat(2) of an unnamed file goes through /proc/self/fd (AT_EMPTY_PATH would need
    // CAP_DAC_READ_SEARCH): without it the file could be written but never published.
    if !Path::new("/proc/self/fd").is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir)
}

/// Whether `e`, from [`create_anonymous_in`], says that the file system (or kernel) has no
/// `O_TMPFILE`: `EOPNOTSUPP` from the file system, `EISDIR` from a kernel that ignores
/// the flag and opens the directory itself, `EINVAL` for the flag combination.
pub fn anonymous_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
    )
}

/// Gives the unnamed file `file` (from [`create_anonymous_in`]) the name `dest`, in the
/// directory it was created in; fails with `AlreadyExists` if `dest` exists
/// (`linkat(AT_SYMLINK_FOLLOW)` of `/proc/self/fd/<fd>`, which never replaces).
pub fn link_anonymous(file: &File, dest: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let from_c = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    let to_c = CString::new(dest.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; plain syscall.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
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
    fn anonymous_files_appear_only_when_linked() {
        let dir = tempfile::tempdir().unwrap();
        let file = match create_anonymous_in(dir.path()) {
            Err(e) if anonymous_unsupported(&e) => return,
            r => r.unwrap(),
        };
        let mut w = &file;
        io::Write::write_all(&mut w, b"archive").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let dest = dir.path().join("a");
        link_anonymous(&file, &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"archive");
        assert_eq!(fs::metadata(&dest).unwrap().mode() & 0o777, 0o600);
        // Never over an existing file.
        let other = create_anonymous_in(dir.path()).unwrap();
        let e = link_anonymous(&other, &dest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&dest).unwrap(), b"archive");
        drop((file, other));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
