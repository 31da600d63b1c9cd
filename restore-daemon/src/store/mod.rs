//! The image store: one directory per image under the store root,
//!
//! ```text
//! <root>/<name>/manifest.json      what the image holds (rekindle_restore_api::Manifest)
//! <root>/<name>/<path>.lz4         one LZ4 frame per file of the CRIU image directory
//! <root>/<name>/last-used          empty; its mtime is when the image was last used
//! <root>/.tmp-*  <root>/.trash-*   being written / being deleted; removed at start
//! ```
//!
//! Writes are atomic: an image is written into `.tmp-*` in the same file system, its files
//! and directories fsynced, then renamed into place (`RENAME_NOREPLACE`); a delete renames
//! the image to `.trash-*` first. So a listing sees whole images only.
//!
//! The store is blocking and has no locks of its own: the daemon serializes the requests
//! that touch one image and runs them on blocking threads.

pub mod archive;
mod blocks;
pub mod codec;
pub mod fsutil;
pub mod manifest;
pub mod name;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rekindle_restore_api::{ErrorCode, FileEntry, Manifest, MANIFEST_FORMAT};

use self::codec::VerifyingReader;
use self::fsutil::{check_owner, TempDir};
pub use self::name::validate_name;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const LAST_USED_FILE: &str = "last-used";
pub const TMP_PREFIX: &str = ".tmp-";
pub const TRASH_PREFIX: &str = ".trash-";

/// What the store accepts (configurable: `max_files`, `max_total_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files per image.
    pub max_files: u32,
    /// Original bytes per image (and per file).
    pub max_total_bytes: u64,
    /// Size of manifest.json.
    pub max_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 4096,
            max_total_bytes: 16 << 30,
            max_manifest_bytes: 16 << 20,
        }
    }
}

/// What went wrong, by what the caller can do about it (see `ErrorCode`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// Stored data or an archive failed validation; `file` names the culprit.
    #[error("{what}: {file}: {reason}")]
    Corrupt {
        what: String,
        file: String,
        reason: String,
    },
    /// An archive to import failed validation.
    #[error("archive {archive}: {error}")]
    Archive {
        archive: String,
        #[source]
        error: archive::ArchiveError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The file system being written is full (ENOSPC) or over quota (EDQUOT): `dir` is
    /// where the write went, `fix` what frees room there.
    #[error("no space left on the device of {dir} ({errno}): {what}: {source}; {fix}")]
    NoSpace {
        dir: String,
        errno: &'static str,
        what: String,
        #[source]
        source: io::Error,
        fix: &'static str,
    },
}

/// What frees room in the store.
pub const STORE_FULL_FIX: &str = "free space there: `rekindle image gc` removes the images \
     not used lately, `rekindle image remove <name>` one image";
/// What frees room in the staging area.
pub const STAGE_FULL_FIX: &str = "free memory there: unstage images (`rekindle image unstage \
     <name>`), release finished restores, or raise stage_tmpfs_size";

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Error::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Error::Corrupt { .. } | Error::Archive { .. } => ErrorCode::Corrupt,
            Error::Io { .. } | Error::NoSpace { .. } => ErrorCode::Internal,
        }
    }

    /// An I/O error that is the file system under `dir` being full becomes
    /// [`Error::NoSpace`], which says so and what to do (`fix`); others are unchanged.
    pub(crate) fn if_full(self, dir: &Path, fix: &'static str) -> Error {
        match self {
            Error::Io { what, source } => {
                let errno = match source.raw_os_error() {
                    Some(libc::ENOSPC) => "ENOSPC",
                    Some(libc::EDQUOT) => "EDQUOT",
                    _ => return Error::Io { what, source },
                };
                Error::NoSpace {
                    dir: dir.display().to_string(),
                    errno,
                    what,
                    source,
                    fix,
                }
            }
            e => e,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn corrupt_image(name: &str, file: &str, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            what: format!("image {name}"),
            file: file.to_string(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the storer says about a new image besides its files.
#[derive(Debug, Clone, Default)]
pub struct NewImage {
    pub labels: BTreeMap<String, String>,
    pub spec_digest: Option<String>,
    pub criu_version: Option<String>,
    pub kernel_release: String,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One file found in a CRIU image directory.
#[derive(Debug)]
struct SourceFile {
    rel: String,
    abs: PathBuf,
    size: u64,
}

#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    limits: Limits,
}

impl Store {
    /// Opens (creating, mode 0700) the store at `root` and removes what an interrupted
    /// write or delete left behind. Returns the store and how many leftovers it removed.
    pub fn open(root: &Path, limits: Limits) -> Result<(Store, usize)> {
        fsutil::create_dir_all_private(root)
            .map_err(Error::io(format!("cannot create store {}", root.display())))?;
        let mut cleaned = 0;
        let entries = fs::read_dir(root)
            .map_err(Error::io(format!("cannot read store {}", root.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(Error::io(format!("cannot read store {}", root.display())))?;
            let file_name = entry.file_name();
            let name = file_name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) || name.starts_with(TRASH_PREFIX) {
                let path = entry.path();
                let removed = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed a leftover of an interrupted write");
                        cleaned += 1;
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover")
                    }
                }
            }
        }
        Ok((
            Store {
                root: root.to_path_buf(),
                limits,
            },
            cleaned,
        ))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Whether an image of that (valid) name exists.
    pub fn exists(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.image_dir(name).join(MANIFEST_FILE).is_file()
    }

    /// Stores the CRIU image directory `source` as image `name`. When `owner` is given
    /// (a non-root client), the directory and every file in it must belong to that uid.
    pub fn store_dir(
        &self,
        name: &str,
        source: &Path,
        meta: NewImage,
        owner: Option<u32>,
    ) -> Result<Manifest> {
        self.store_dir_in(name, source, meta, owner, false)
            .map_err(|e| e.if_full(&self.root, STORE_FULL_FIX))
    }

    /// [`Self::store_dir`], replacing the image of that name if there is one: the new
    /// image is written aside and exchanged with the old in one rename, so a reader
    /// finds the old image or the new one, never neither and never a mix; the old one
    /// is removed afterwards (by [`Self::open`] if the process dies first). A failed
    /// store leaves the old image as it was.
    pub fn replace_dir(
        &self,
        name: &str,
        source: &Path,
        meta: NewImage,
        owner: Option<u32>,
    ) -> Result<Manifest> {
        self.store_dir_in(name, source, meta, owner, true)
            .map_err(|e| e.if_full(&self.root, STORE_FULL_FIX))
    }

    fn store_dir_in(
        &self,
        name: &str,
        source: &Path,
        meta: NewImage,
        owner: Option<u32>,
        replace: bool,
    ) -> Result<Manifest> {
        validate_name(name)?;
        manifest::validate_labels(&meta.labels).map_err(Error::InvalidArgument)?;
        if let Some(d) = &meta.spec_digest {
            manifest::validate_short("spec digest", d).map_err(Error::InvalidArgument)?;
        }
        if !source.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "source_dir {} must be an absolute path",
                source.display()
            )));
        }
        if !replace && self.image_dir(name).exists() {
            return Err(already_exists(name));
        }
        let files = self.scan_source(source, owner)?;

        let tmp = TempDir::new_in(&self.root, &format!("{TMP_PREFIX}{name}-"))
            .map_err(Error::io("cannot create a temporary image directory"))?;
        let mut entries = Vec::with_capacity(files.len());
        for f in &files {
            let src = fsutil::open_nofollow(&f.abs)
                .map_err(Error::io(format!("cannot open {}", f.abs.display())))?;
            let m = src
                .metadata()
                .map_err(Error::io(format!("cannot stat {}", f.abs.display())))?;
            if !m.is_file() || m.len() != f.size {
                return Err(Error::InvalidArgument(format!(
                    "{} changed while it was being stored",
                    f.abs.display()
                )));
            }
            check_owner(&m, owner, &f.abs).map_err(Error::InvalidArgument)?;
            let entry = write_compressed(tmp.path(), &f.rel, src, f.size).map_err(|e| match e {
                WriteError::Source(e) if e.kind() == io::ErrorKind::InvalidData => {
                    Error::InvalidArgument(format!(
                        "{} changed while it was being stored: {e}",
                        f.abs.display()
                    ))
                }
                WriteError::Source(e) => Error::io(format!("cannot read {}", f.abs.display()))(e),
                WriteError::Dest(e) => Error::io(format!("cannot write {}.lz4", f.rel))(e),
            })?;
            entries.push(entry);
        }
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            name: name.to_string(),
            created_unix: now_unix(),
            criu_version: meta.criu_version,
            kernel_release: meta.kernel_release,
            spec_digest: meta.spec_digest,
            labels: meta.labels,
            file_count: 0,
            total_size: 0,
            total_compressed_size: 0,
            files: entries,
        };
        manifest::fill_totals(&mut m);
        self.commit(tmp, &m, replace)?;
        Ok(m)
    }

    /// Walks a CRIU image directory: regular files and directories only, within bounds.
    fn scan_source(&self, source: &Path, owner: Option<u32>) -> Result<Vec<SourceFile>> {
        let meta = fs::symlink_metadata(source).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::InvalidArgument(format!("source_dir {} does not exist", source.display()))
            } else {
                Error::io(format!("cannot stat {}", source.display()))(e)
            }
        })?;
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "source_dir {} is not a directory",
                source.display()
            )));
        }
        check_owner(&meta, owner, source).map_err(Error::InvalidArgument)?;
        let mut files = Vec::new();
        let mut total = 0u64;
        self.scan_dir(source, "", 0, owner, &mut files, &mut total)?;
        if files.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "source_dir {} holds no files; is it a CRIU image directory?",
                source.display()
            )));
        }
        let set = files.iter().map(|f| f.rel.as_str()).collect();
        manifest::validate_layout(files.iter().map(|f| f.rel.as_str()), &set)
            .map_err(|why| Error::InvalidArgument(format!("{}: {why}", source.display())))?;
        if !files.iter().any(|f| f.rel == "inventory.img") {
            tracing::warn!(source = %source.display(), "no inventory.img: this does not look like a CRIU image directory");
        }
        Ok(files)
    }

    fn scan_dir(
        &self,
        dir: &Path,
        prefix: &str,
        depth: usize,
        owner: Option<u32>,
        files: &mut Vec<SourceFile>,
        total: &mut u64,
    ) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(Error::io(format!("cannot read {}", dir.display())))?
            .collect::<io::Result<_>>()
            .map_err(Error::io(format!("cannot read {}", dir.display())))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let abs = entry.path();
            let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(Error::InvalidArgument(format!(
                    "{} is not a UTF-8 name",
                    abs.display()
                )));
            };
            let rel = format!("{prefix}{file_name}");
            manifest::validate_rel_path(&rel).map_err(Error::InvalidArgument)?;
            let meta = fs::symlink_metadata(&abs)
                .map_err(Error::io(format!("cannot stat {}", abs.display())))?;
            check_owner(&meta, owner, &abs).map_err(Error::InvalidArgument)?;
            let t = meta.file_type();
            if t.is_dir() {
                if depth + 1 >= manifest::MAX_DEPTH {
                    return Err(Error::InvalidArgument(format!(
                        "{} is nested deeper than {}",
                        abs.display(),
                        manifest::MAX_DEPTH
                    )));
                }
                self.scan_dir(&abs, &format!("{rel}/"), depth + 1, owner, files, total)?;
            } else if t.is_file() {
                files.push(SourceFile {
                    rel,
                    abs,
                    size: meta.len(),
                });
                *total = total.saturating_add(meta.len());
                if files.len() as u64 > u64::from(self.limits.max_files) {
                    return Err(Error::InvalidArgument(format!(
                        "the image holds more than {} files (max_files)",
                        self.limits.max_files
                    )));
                }
                if *total > self.limits.max_total_bytes {
                    return Err(Error::InvalidArgument(format!(
                        "the image holds more than {} bytes (max_total_bytes)",
                        self.limits.max_total_bytes
                    )));
                }
            } else {
                return Err(Error::InvalidArgument(format!(
                    "{} is a {}; a CRIU image directory holds only regular files",
                    abs.display(),
                    file_kind(&meta)
                )));
            }
        }
        Ok(())
    }

    /// Writes the manifest and the last-used stamp into `tmp`, makes everything durable
    /// and renames it into place; with `replace`, exchanges it with an image of the
    /// same name, which `tmp` then removes.
    fn commit(&self, tmp: TempDir, m: &Manifest, replace: bool) -> Result<()> {
        manifest::validate(m, &self.limits).map_err(|e| Error::Io {
            what: format!("refusing to write an invalid manifest for {}", m.name),
            source: io::Error::other(e),
        })?;
        let json = serde_json::to_vec_pretty(m).map_err(|e| Error::Io {
            what: "cannot encode the manifest".into(),
            source: io::Error::other(e),
        })?;
        let wrote = (|| {
            let mut f = fsutil::create_new_private(&tmp.path().join(MANIFEST_FILE))?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fsutil::create_new_private(&tmp.path().join(LAST_USED_FILE))?.sync_all()?;
            // Subdirectories first, then the image directory itself.
            let mut dirs: Vec<PathBuf> = m
                .files
                .iter()
                .filter_map(|f| Path::new(&f.path).parent())
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| tmp.path().join(p))
                .collect();
            dirs.sort();
            dirs.dedup();
            for d in dirs.iter().rev() {
                fsutil::fsync_dir(d)?;
            }
            fsutil::fsync_dir(tmp.path())
        })();
        wrote.map_err(Error::io(format!("cannot write image {}", m.name)))?;
        let dest = self.image_dir(&m.name);
        match fsutil::rename_noreplace(tmp.path(), &dest) {
            Ok(()) => {
                tmp.keep();
            }
            Err(e)
                if replace && matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) =>
            {
                fsutil::rename_exchange(tmp.path(), &dest).map_err(Error::io(format!(
                    "cannot exchange image {} for the new one",
                    m.name
                )))?;
                fsutil::fsync_dir(&self.root).map_err(Error::io("cannot fsync the store"))?;
                // The old image, now under tmp's name: removed as tmp is dropped.
                tracing::info!(image = %m.name, "replaced the stored image");
                return Ok(());
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                return Err(already_exists(&m.name))
            }
            Err(e) => {
                return Err(Error::io(format!(
                    "cannot rename image {} into place",
                    m.name
                ))(e))
            }
        }
        fsutil::fsync_dir(&self.root).map_err(Error::io("cannot fsync the store"))?;
        Ok(())
    }

    /// The full manifest of an image, validated.
    pub fn get(&self, name: &str) -> Result<Manifest> {
        validate_name(name)?;
        let dir = self.image_dir(name);
        let path = dir.join(MANIFEST_FILE);
        let file = fsutil::open_nofollow(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                not_found(name)
            } else {
                Error::corrupt_image(name, MANIFEST_FILE, format!("cannot open: {e}"))
            }
        })?;
        let mut bytes = Vec::new();
        file.take(self.limits.max_manifest_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(Error::io(format!("cannot read {}", path.display())))?;
        let m = manifest::parse(&bytes, &self.limits)
            .map_err(|reason| Error::corrupt_image(name, MANIFEST_FILE, reason))?;
        if m.name != name {
            return Err(Error::corrupt_image(
                name,
                MANIFEST_FILE,
                format!("names image {:?}", m.name),
            ));
        }
        Ok(m)
    }

    /// Every valid image (full manifests), by name. An image whose manifest does not
    /// validate is left out (and logged): it cannot be restored anyway.
    pub fn list(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(Error::io(format!(
            "cannot read store {}",
            self.root.display()
        )))?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if name.starts_with('.') || validate_name(&name).is_err() {
                continue;
            }
            match self.get(&name) {
                Ok(m) => out.push(m),
                Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(image = %name, error = %e, "left out of the listing"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// When the image was last used (stored, staged, prepared), seconds since the epoch.
    pub fn last_used(&self, m: &Manifest) -> u64 {
        fs::metadata(self.image_dir(&m.name).join(LAST_USED_FILE))
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(m.created_unix)
    }

    /// Marks the image used now (for GC's least-recently-used order).
    pub fn touch(&self, name: &str) -> Result<()> {
        self.set_last_used(name, SystemTime::now())
    }

    /// Sets the image's last-used time (GC tests, and imports that keep the original).
    pub fn set_last_used(&self, name: &str, when: SystemTime) -> Result<()> {
        validate_name(name)?;
        let path = self.image_dir(name).join(LAST_USED_FILE);
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io(format!("cannot open {}", path.display())))?;
        f.set_modified(when)
            .map_err(Error::io(format!("cannot stamp {}", path.display())))
    }

    /// Deletes an image; returns the bytes it took on disk.
    pub fn delete(&self, name: &str) -> Result<u64> {
        validate_name(name)?;
        let dir = self.image_dir(name);
        if !dir.exists() {
            return Err(not_found(name));
        }
        let trash = self.root.join(format!(
            "{TRASH_PREFIX}{name}-{}",
            fsutil::random_hex(8).map_err(Error::io("cannot get random bytes"))?
        ));
        fs::rename(&dir, &trash).map_err(Error::io(format!("cannot delete image {name}")))?;
        fsutil::fsync_dir(&self.root).map_err(Error::io("cannot fsync the store"))?;
        let bytes = fsutil::tree_size(&trash);
        fs::remove_dir_all(&trash)
            .map_err(Error::io(format!("cannot remove {}", trash.display())))?;
        Ok(bytes)
    }

    /// Decompresses image `name` into the new directory `dest` (which must not exist),
    /// verifying every file against the manifest; a failure leaves nothing at `dest`.
    /// Written in a temporary sibling of `dest` and renamed into place. Returns the
    /// manifest and the bytes written. A full file system there is [`Error::NoSpace`]
    /// (see [`STAGE_FULL_FIX`]).
    pub fn extract(&self, name: &str, dest: &Path) -> Result<(Manifest, u64)> {
        let parent = dest.parent().ok_or_else(|| {
            Error::InvalidArgument(format!("{} has no parent directory", dest.display()))
        })?;
        self.extract_in(name, dest, parent)
            .map_err(|e| e.if_full(parent, STAGE_FULL_FIX))
    }

    fn extract_in(&self, name: &str, dest: &Path, parent: &Path) -> Result<(Manifest, u64)> {
        let m = self.get(name)?;
        let tmp = TempDir::new_in(parent, TMP_PREFIX).map_err(Error::io(format!(
            "cannot create a directory in {}",
            parent.display()
        )))?;
        // Started with the first large file: small images do without the thread.
        let mut hasher: Option<codec::Sha256Thread> = None;
        let mut total = 0;
        for f in &m.files {
            let out_path = tmp.path().join(&f.path);
            if let Some(p) = out_path.parent() {
                fsutil::create_dir_all_private(p)
                    .map_err(Error::io(format!("cannot create {}", p.display())))?;
            }
            let mut out = fsutil::create_new_private(&out_path)
                .map_err(Error::io(format!("cannot create {}", out_path.display())))?;
            if f.size < codec::PIPE_MIN_SIZE {
                self.copy_verified(&m, f, &mut out)?;
            } else {
                let mut compressed = self.open_stored(&m, f)?;
                // Sized up front so that a tmpfs mounted huge=within_size (the stage area
                // the daemon mounts) backs the whole file with huge pages.
                out.set_len(f.size)
                    .map_err(Error::io(format!("cannot size {}", out_path.display())))?;
                // A large frame of independent blocks (what the store writes) is decoded
                // on every core; anything else streams through one decoder, its SHA-256
                // on a second thread.
                let workers = parallel_workers(f.size);
                let parallel = f.compressed_sha256.is_some()
                    && workers > 1
                    && compressed.fill_buf().is_ok_and(blocks::independent_blocks)
                    && blocks::reserve(&out, f.size).map_err(Error::io(format!(
                        "cannot reserve {} bytes for {}",
                        f.size,
                        out_path.display()
                    )))?;
                // A failed file is left half-written in `tmp`, which goes with the error.
                match (&f.compressed_sha256, parallel) {
                    (Some(frame_sha), true) => {
                        blocks::extract(compressed, f.size, frame_sha, &out, workers)
                    }
                    (frame_sha, _) => {
                        let hasher = match &mut hasher {
                            Some(h) => h,
                            None => hasher.insert(
                                codec::Sha256Thread::spawn()
                                    .map_err(Error::io("cannot start a SHA-256 thread"))?,
                            ),
                        };
                        match frame_sha {
                            Some(frame_sha) => codec::decompress_verified_frame(
                                compressed, f.size, frame_sha, &mut out, hasher,
                            ),
                            None => codec::decompress_verified(
                                compressed, f.size, &f.sha256, &mut out, hasher,
                            ),
                        }
                    }
                }
                .map_err(|e| match e {
                    codec::VerifyError::Corrupt(reason) => {
                        Error::corrupt_image(name, &stored_name(f), reason)
                    }
                    codec::VerifyError::Io(e) => {
                        Error::io(format!("cannot decompress {}", stored_name(f)))(e)
                    }
                })?;
            }
            total += f.size;
        }
        match fsutil::rename_noreplace(tmp.path(), dest) {
            Ok(()) => tmp.keep(),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) => {
                return Err(Error::AlreadyExists(format!("{} exists", dest.display())))
            }
            Err(e) => {
                return Err(Error::io(format!("cannot rename into {}", dest.display()))(
                    e,
                ))
            }
        }
        Ok((m, total))
    }

    /// Opens one stored file, buffered, after checking that it is a regular file of the
    /// size the manifest records.
    fn open_stored(&self, m: &Manifest, f: &FileEntry) -> Result<BufReader<File>> {
        let stored = stored_name(f);
        let path = self.image_dir(&m.name).join(&stored);
        let file = fsutil::open_nofollow(&path)
            .map_err(|e| Error::corrupt_image(&m.name, &stored, format!("cannot open: {e}")))?;
        let meta = file
            .metadata()
            .map_err(Error::io(format!("cannot stat {}", path.display())))?;
        if !meta.is_file() {
            return Err(Error::corrupt_image(&m.name, &stored, "not a regular file"));
        }
        if meta.len() != f.compressed_size {
            return Err(Error::corrupt_image(
                &m.name,
                &stored,
                format!(
                    "is {} bytes, the manifest says {} (truncated?)",
                    meta.len(),
                    f.compressed_size
                ),
            ));
        }
        Ok(BufReader::with_capacity(codec::COPY_BUF, file))
    }

    /// Verifies every stored file of an image without writing anything.
    pub fn verify(&self, name: &str) -> Result<Manifest> {
        let m = self.get(name)?;
        for f in &m.files {
            self.verify_file(&m, f)?;
        }
        Ok(m)
    }

    /// Verifies one stored file (decompressing it to nowhere) against both digests of
    /// the manifest, as [`Self::copy_verified`] does.
    pub(crate) fn verify_file(&self, m: &Manifest, f: &FileEntry) -> Result<()> {
        self.copy_verified(m, f, &mut io::sink())
    }

    /// Decompresses one stored file into `dst`, checked against both digests of the
    /// manifest: the content's and, when recorded, the stored frame's (taken as the
    /// frame is read: the frame reader reads the file to its end). The frame's matters
    /// too: LZ4 is not canonical (a match offset moved onto another run of the same
    /// bytes decodes to the same content), and a stored file that was changed is
    /// refused even when its content survived.
    fn copy_verified(&self, m: &Manifest, f: &FileEntry, dst: &mut impl Write) -> Result<()> {
        let mut stored = codec::HashingReader::new(self.open_stored(m, f)?);
        let mut reader = VerifyingReader::new(&mut stored, f.size, &f.sha256);
        let copied = codec::copy(&mut reader, dst);
        if let Some(reason) = reader.failure() {
            return Err(Error::corrupt_image(&m.name, &stored_name(f), reason));
        }
        copied.map_err(Error::io(format!("cannot decompress {}", stored_name(f))))?;
        drop(reader);
        if let Some(want) = &f.compressed_sha256 {
            let got = stored.digest();
            if got != *want {
                return Err(Error::corrupt_image(
                    &m.name,
                    &stored_name(f),
                    codec::sha_mismatch("the stored frame", &got, want),
                ));
            }
        }
        Ok(())
    }
}

/// How many threads decode one stored file's blocks ([`blocks::extract`]): one per
/// core, for a file of at least two 4 MiB blocks; 1 (the streaming decoder) otherwise.
fn parallel_workers(size: u64) -> usize {
    if size < 2 * (4 << 20) {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// The stored file of an image file: `<path>.lz4`.
pub fn stored_name(f: &FileEntry) -> String {
    format!("{}.lz4", f.path)
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("image {name} does not exist"))
}

fn already_exists(name: &str) -> Error {
    Error::AlreadyExists(format!("image {name} already exists"))
}

fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Where compressing one file failed: reading its source, or writing the store.
pub(crate) enum WriteError {
    Source(io::Error),
    Dest(io::Error),
}

/// Compresses `size` bytes from `src` into `<dir>/<rel>.lz4` (fsynced) and returns the
/// manifest entry. Source read errors, including a wrong size (`InvalidData`), come back
/// as [`WriteError::Source`].
pub(crate) fn write_compressed<R: Read>(
    dir: &Path,
    rel: &str,
    src: R,
    size: u64,
) -> Result<FileEntry, WriteError> {
    let out_path = dir.join(format!("{rel}.lz4"));
    if let Some(p) = out_path.parent() {
        fsutil::create_dir_all_private(p).map_err(WriteError::Dest)?;
    }
    let out = fsutil::create_new_private(&out_path).map_err(WriteError::Dest)?;
    // Tell source errors from destination errors: remember the source's.
    let mut src_err: Option<io::Error> = None;
    let tracked = TrackErrors {
        inner: src,
        err: &mut src_err,
    };
    let result = codec::compress(
        tracked,
        size,
        BufWriter::with_capacity(codec::COPY_BUF, out),
    );
    let (c, writer) = match result {
        Ok(ok) => ok,
        Err(e) => {
            return Err(match src_err.take() {
                Some(se) => WriteError::Source(se),
                None if e.kind() == io::ErrorKind::InvalidData => WriteError::Source(e),
                None => WriteError::Dest(e),
            })
        }
    };
    let out = writer
        .into_inner()
        .map_err(|e| WriteError::Dest(e.into_error()))?;
    out.sync_all().map_err(WriteError::Dest)?;
    Ok(FileEntry {
        path: rel.to_string(),
        size: c.size,
        compressed_size: c.compressed_size,
        sha256: c.sha256,
        compressed_sha256: Some(c.compressed_sha256),
    })
}

struct TrackErrors<'a, R> {
    inner: R,
    err: &'a mut Option<io::Error>,
}

impl<R: Read> Read for TrackErrors<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != io::ErrorKind::Interrupted {
                *self.err = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

#[cfg(test)]
mod tests;
