//! The staging area: where decompressed images are kept for restores.
//!
//! ```text
//! <stage_dir>/<name>/          a staged image (decompressed, verified), shared by restores
//! <stage_dir>/.leases/<id>/    a restore's own decompressed copy of an unstaged image
//! <stage_dir>/.tmp-*           being decompressed
//! ```
//!
//! A tmpfs directory rather than memfds: CRIU (through runc or libcriu) takes an images
//! *directory* and opens the files in it by name, so memfds would have to be turned back
//! into a directory anyway; a tmpfs directory is that, lives in memory (page cache, no
//! disk I/O on restore), can be handed to another process by path, and is reclaimed as a
//! whole by unmounting it. When `stage_dir` is not on tmpfs already, the daemon mounts a
//! private tmpfs there (`mount_stage_tmpfs`), and unmounts it when it stops. Staged images
//! do not outlive the daemon: it empties the area at start and at stop.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::store::fsutil;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

pub const LEASES_DIR: &str = ".leases";

#[derive(Debug)]
pub struct StageArea {
    dir: PathBuf,
    /// We mounted the tmpfs and unmount it at stop.
    mounted: bool,
    in_memory: bool,
}

/// Whether `dir` is a tmpfs this daemon mounted (in an earlier run that did not stop
/// cleanly): then it is ours to unmount at stop.
fn is_our_mount(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines().any(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            return false;
        };
        fields.get(4) == Some(&want.as_ref())
            && fields.get(sep + 1) == Some(&"tmpfs")
            && fields.get(sep + 2) == Some(&MOUNT_SOURCE)
    })
}

const MOUNT_SOURCE: &str = "rekindle-staged";

fn is_memory_fs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    let t = st.filesystem_type().0 as i64;
    Ok(t == TMPFS_MAGIC || t == RAMFS_MAGIC)
}

impl StageArea {
    /// Prepares `dir`: creates it, mounts a tmpfs on it if asked and needed, and empties
    /// it of what a previous run left.
    pub fn open(dir: &Path, mount_tmpfs: bool, tmpfs_size: Option<&str>) -> io::Result<StageArea> {
        fsutil::create_dir_all_private(dir)?;
        let dir = fs::canonicalize(dir)?;
        let mut mounted = is_our_mount(&dir);
        if !is_memory_fs(&dir)? && mount_tmpfs {
            let mut data = String::from("mode=0700");
            if let Some(size) = tmpfs_size {
                data.push_str(&format!(",size={size}"));
            }
            let mount = |data: &str| {
                nix::mount::mount(
                    Some(MOUNT_SOURCE),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                    Some(data),
                )
            };
            // Huge pages for the files that fill them (pages files): writing an extracted
            // image costs about a fifth of what it does with 4 KiB pages (71 MiB: 5 ms
            // instead of 26). A kernel without transparent huge pages refuses the option.
            let huge = format!("{data},huge=within_size");
            let mounted_with = match mount(&huge) {
                Ok(()) => Ok(huge),
                Err(nix::errno::Errno::EINVAL) => mount(&data).map(|()| data),
                Err(e) => Err(e),
            };
            match mounted_with {
                Ok(data) => {
                    mounted = true;
                    tracing::info!(dir = %dir.display(), options = %data, "mounted a tmpfs for staged images");
                }
                Err(e) => tracing::warn!(
                    dir = %dir.display(), error = %e,
                    "cannot mount a tmpfs for staged images: they will be on disk, not in memory"
                ),
            }
        }
        let in_memory = is_memory_fs(&dir)?;
        if !in_memory {
            tracing::warn!(dir = %dir.display(), "stage_dir is not on tmpfs: staged images live on disk");
        }
        let area = StageArea {
            dir,
            mounted,
            in_memory,
        };
        let removed = area.clear()?;
        if removed > 0 {
            tracing::info!(removed, "removed staged images left by a previous run");
        }
        fsutil::create_dir_private(&area.leases_dir())?;
        Ok(area)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    pub fn staged_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn leases_dir(&self) -> PathBuf {
        self.dir.join(LEASES_DIR)
    }

    pub fn lease_dir(&self, lease: &str) -> PathBuf {
        self.leases_dir().join(lease)
    }

    /// Removes everything in the area; returns how many entries it removed.
    fn clear(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            if entry.file_name() != LEASES_DIR {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Empties the area, and unmounts the tmpfs if it was ours.
    pub fn close(self) {
        if let Err(e) = self.clear() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot empty the staging area");
        }
        if self.mounted {
            if let Err(e) = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot unmount the staging tmpfs");
            }
        }
    }

    /// Whether the daemon mounted the tmpfs itself.
    pub fn mounted(&self) -> bool {
        self.mounted
    }
}
