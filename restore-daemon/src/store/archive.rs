//! Export archives, for shipping an image to another node: one zstd-compressed tar,
//!
//! ```text
//! manifest.json            the image's manifest (first entry)
//! image/<path>.lz4         every file as the store keeps it (one LZ4 frame), manifest order
//! ```
//!
//! The files go in as the stored LZ4 frames, not raw: measured on a real CRIU pages file
//! (a Python process, 141 MiB; `benches/lz4.rs`), zstd-3 over the LZ4 frames gives 16.4x
//! against 12.7x over the raw bytes (12.6x with zstd's long-distance matching), and it
//! spares both sides a decompress/recompress: export streams the stored files, import
//! writes them back as they come. Each file is verified against the manifest (size,
//! LZ4 checksum, SHA-256 of the original bytes, decompression bounded by the manifest's
//! size) on export before it is written, and on import before the image is committed.
//! A person can still read one without Rekindle: `tar --zstd -x`, then `lz4 -d` each file.
//!
//! An archive is untrusted: entries must be regular files named `image/<path>.lz4` for a
//! path the manifest lists, once each, of the compressed size it lists; no absolute or
//! `..` paths, no links, devices or directories, no entry beyond the manifest's bounds,
//! no tar extension entries but GNU long names (bounded). [`read_archive`] checks all
//! that entry by entry; `fuzz/` fuzzes it.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rekindle_restore_api::{FileEntry, Manifest};
use tar::{EntryType, Header};

use super::fsutil::{self, check_owner, TempDir};
use super::{codec, manifest, Error, Limits, Result, Store, TMP_PREFIX};

pub const ARCHIVE_MANIFEST: &str = "manifest.json";
pub const ARCHIVE_IMAGE_PREFIX: &str = "image/";
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Levels export writes (1-19: zstd's `--ultra` levels take far more memory).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
/// The largest zstd window import accepts (8 MiB): what levels 1-19 use at most.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 23;

/// Removes a partly written file on drop unless disarmed.
struct PartialFile {
    path: PathBuf,
    armed: bool,
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn entry_kind(t: EntryType) -> &'static str {
    match t {
        EntryType::Symlink => "symlink",
        EntryType::Link => "hard link",
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Directory => "directory",
        EntryType::Fifo => "FIFO",
        EntryType::Continuous => "contiguous file",
        EntryType::GNULongLink => "GNU long link name",
        EntryType::GNUSparse => "GNU sparse file",
        EntryType::XHeader | EntryType::XGlobalHeader => "PAX header",
        _ => "special entry",
    }
}

impl Store {
    /// Writes image `name` as a zstd-compressed tar to `dest`, which must not exist (it
    /// is written as an unnamed file in `dest`'s directory and linked into place when
    /// complete, so that a killed export leaves nothing there). When `owner` is given (a
    /// non-root client), `dest`'s directory must belong to that uid, and so will the
    /// archive. Returns the manifest and the archive's size.
    pub fn export(
        &self,
        name: &str,
        dest: &Path,
        level: i32,
        owner: Option<u32>,
    ) -> Result<(Manifest, u64)> {
        if !ZSTD_LEVELS.contains(&level) {
            return Err(Error::InvalidArgument(format!(
                "zstd level {level} is not within 1-19"
            )));
        }
        if !dest.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "dest {} must be an absolute path",
                dest.display()
            )));
        }
        let (Some(parent), Some(file_name)) = (dest.parent(), dest.file_name()) else {
            return Err(Error::InvalidArgument(format!(
                "dest {} is not a file path",
                dest.display()
            )));
        };
        if fs::symlink_metadata(dest).is_ok() {
            return Err(Error::AlreadyExists(format!(
                "{} exists; export writes a new file",
                dest.display()
            )));
        }
        let parent_meta = fs::metadata(parent).map_err(|e| {
            Error::InvalidArgument(format!("cannot use directory {}: {e}", parent.display()))
        })?;
        if !parent_meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                parent.display()
            )));
        }
        check_owner(&parent_meta, owner, parent).map_err(Error::InvalidArgument)?;

        let m = self.get(name)?;
        let json = serde_json::to_vec_pretty(&m).map_err(|e| Error::Io {
            what: "cannot encode the manifest".into(),
            source: io::Error::other(e),
        })?;
        // Written unnamed and linked into place once complete, so that an export killed
        // midway (SIGKILL, power loss) leaves nothing in the user's directory; a named
        // `.<dest>.partial-<hex>` beside it, renamed into place, where the file system
        // has no O_TMPFILE (that one an error removes, a kill leaves).
        let (file, mut partial) = match fsutil::create_anonymous_in(parent) {
            Ok(file) => (file, None),
            Err(e) if fsutil::anonymous_unsupported(&e) => {
                let tmp_path = parent.join(format!(
                    ".{}.partial-{}",
                    file_name.to_string_lossy(),
                    fsutil::random_hex(6).map_err(Error::io("cannot get random bytes"))?
                ));
                let file = fsutil::create_new_private(&tmp_path)
                    .map_err(Error::io(format!("cannot create {}", tmp_path.display())))?;
                let partial = PartialFile {
                    path: tmp_path,
                    armed: true,
                };
                (file, Some(partial))
            }
            Err(e) => {
                return Err(Error::io(format!(
                    "cannot create an unnamed file in {}",
                    parent.display()
                ))(e))
            }
        };
        // What the file is called in errors until it is in place.
        let writing = match &partial {
            Some(p) => p.path.display().to_string(),
            None => format!("{} (unnamed until complete)", dest.display()),
        };
        let write_err = Error::io(format!("cannot write {writing}"));
        let encoder = zstd::Encoder::new(
            BufWriter::with_capacity(super::codec::COPY_BUF, file),
            level,
        )
        .map_err(Error::io("cannot start zstd"))?;
        let mut tar = tar::Builder::new(encoder);
        let header = |size: u64| {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_size(size);
            h.set_mode(0o600);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(m.created_unix);
            h
        };
        if let Err(e) = tar.append_data(&mut header(json.len() as u64), ARCHIVE_MANIFEST, &json[..])
        {
            return Err(write_err(e));
        }
        for f in &m.files {
            // Verify the stored frame first, then ship it as it is.
            self.verify_file(&m, f)?;
            let stored = super::stored_name(f);
            let src = self.image_dir(&m.name).join(&stored);
            let file = fsutil::open_nofollow(&src)
                .map_err(Error::io(format!("cannot open {}", src.display())))?;
            tar.append_data(
                &mut header(f.compressed_size),
                format!("{ARCHIVE_IMAGE_PREFIX}{stored}"),
                file.take(f.compressed_size),
            )
            .map_err(Error::io(format!("cannot write {writing}")))?;
        }
        let finished = (|| {
            let encoder = tar.into_inner()?;
            let buffered = encoder.finish()?;
            let file = buffered.into_inner().map_err(|e| e.into_error())?;
            if let Some(uid) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), None)?;
            }
            file.sync_all()?;
            let bytes = file.metadata()?.len();
            Ok::<_, io::Error>((file, bytes))
        })();
        let (file, bytes) = finished.map_err(Error::io(format!("cannot write {writing}")))?;
        let published = match &partial {
            None => fsutil::link_anonymous(&file, dest),
            Some(p) => fsutil::rename_noreplace(&p.path, dest),
        };
        drop(file);
        published.map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::AlreadyExists(format!(
                    "{} exists; export writes a new file",
                    dest.display()
                ))
            } else {
                let verb = if partial.is_some() { "rename" } else { "link" };
                Error::io(format!("cannot {verb} into {}", dest.display()))(e)
            }
        })?;
        if let Some(p) = &mut partial {
            p.armed = false;
        }
        fsutil::fsync_dir(parent)
            .map_err(Error::io(format!("cannot fsync {}", parent.display())))?;
        Ok((m, bytes))
    }

    /// Validates an archive written by [`Store::export`] and stores it as image `name`
    /// (default: the name in its manifest). When `owner` is given (a non-root client),
    /// the archive must belong to that uid.
    pub fn import(&self, path: &Path, name: Option<&str>, owner: Option<u32>) -> Result<Manifest> {
        if !path.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "path {} must be an absolute path",
                path.display()
            )));
        }
        if let Some(n) = name {
            super::validate_name(n)?;
        }
        let file = fsutil::open_nofollow(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::InvalidArgument(format!("{} does not exist", path.display()))
            } else {
                Error::InvalidArgument(format!("cannot open {}: {e}", path.display()))
            }
        })?;
        let meta = file
            .metadata()
            .map_err(Error::io(format!("cannot stat {}", path.display())))?;
        if !meta.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        check_owner(&meta, owner, path).map_err(Error::InvalidArgument)?;
        self.import_from(file, &path.display().to_string(), name)
    }

    /// [`Store::import`] from any reader of archive bytes (`source` names it in errors).
    /// A refused archive leaves nothing in the store.
    pub fn import_from<R: Read>(
        &self,
        archive: R,
        source: &str,
        name: Option<&str>,
    ) -> Result<Manifest> {
        if let Some(n) = name {
            super::validate_name(n)?;
        }
        let mut unpack = IntoStore {
            store: self,
            name: name.map(str::to_string),
            tmp: None,
        };
        let full = |e: Error| e.if_full(&self.root, super::STORE_FULL_FIX);
        let original = read_archive(archive, source, &self.limits, &mut unpack).map_err(full)?;
        let (Some(name), Some(tmp)) = (unpack.name, unpack.tmp) else {
            // read_archive calls `manifest` before it returns Ok.
            return Err(Error::Io {
                what: "import".into(),
                source: io::Error::other("the archive reader skipped the manifest"),
            });
        };
        let mut m = Manifest { name, ..original };
        manifest::fill_totals(&mut m);
        self.commit(tmp, &m, false).map_err(full)?;
        Ok(m)
    }
}

/// What is wrong with an archive entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveErrorKind {
    /// Not a zstd-compressed tar, or one that is cut short or malformed.
    #[error("{0}")]
    Tar(String),
    #[error("the archive is empty")]
    Empty,
    #[error("the first entry must be the regular file {ARCHIVE_MANIFEST}")]
    ManifestNotFirst,
    #[error("{size} bytes, more than the limit of {limit}")]
    ManifestTooLarge { size: u64, limit: u64 },
    /// The manifest does not parse or validate (the reason).
    #[error("{0}")]
    Manifest(String),
    #[error("is a {0}; an image archive holds only regular files")]
    NotRegular(&'static str),
    #[error("a GNU long name of {size} bytes, longer than any image file's ({limit})")]
    LongNameTooLong { size: u64, limit: u64 },
    #[error("a GNU long name that names no entry")]
    DanglingLongName,
    #[error("the entry name is not UTF-8")]
    NotUtf8,
    #[error("unexpected entry (image files are {ARCHIVE_IMAGE_PREFIX}<path>.lz4)")]
    Unexpected,
    /// An unsafe or malformed path (the reason).
    #[error("{0}")]
    Path(String),
    #[error("not listed in the manifest")]
    NotListed,
    #[error("appears twice")]
    Duplicate,
    #[error("is {size} bytes, the manifest says {expected}")]
    WrongSize { size: u64, expected: u64 },
    #[error("cut short: {read} of {size} bytes")]
    CutShort { read: u64, size: u64 },
    /// The LZ4 frame fails verification against the manifest (the reason).
    #[error("{0}")]
    Frame(String),
    #[error("listed in the manifest but missing from the archive")]
    Missing,
}

/// Why an archive is refused: the entry at fault (or `(tar)`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{entry}: {kind}")]
pub struct ArchiveError {
    pub entry: String,
    pub kind: ArchiveErrorKind,
}

fn refuse(entry: &str, kind: ArchiveErrorKind) -> ArchiveError {
    ArchiveError {
        entry: entry.to_string(),
        kind,
    }
}

fn tar_error(entry: &str, e: io::Error) -> ArchiveError {
    refuse(entry, ArchiveErrorKind::Tar(e.to_string()))
}

/// Where [`read_archive`] puts the files it reads: [`Store::import_from`] writes them
/// into a temporary image directory, [`DryRun`] nowhere.
pub trait Unpack {
    type File: Write;
    /// The (validated) manifest, before any file: the place to refuse the import.
    fn manifest(&mut self, m: &Manifest) -> Result<()>;
    /// A new file for the stored frame of `f`.
    fn create(&mut self, f: &FileEntry) -> Result<Self::File>;
    /// `file` holds the whole frame of `f`, verified.
    fn finish(&mut self, f: &FileEntry, file: Self::File) -> Result<()>;
}

/// Reads and checks an archive without keeping anything.
pub struct DryRun;

impl Unpack for DryRun {
    type File = io::Sink;
    fn manifest(&mut self, _: &Manifest) -> Result<()> {
        Ok(())
    }
    fn create(&mut self, _: &FileEntry) -> Result<io::Sink> {
        Ok(io::sink())
    }
    fn finish(&mut self, _: &FileEntry, _: io::Sink) -> Result<()> {
        Ok(())
    }
}

struct IntoStore<'a> {
    store: &'a Store,
    name: Option<String>,
    tmp: Option<TempDir>,
}

impl Unpack for IntoStore<'_> {
    type File = fs::File;

    fn manifest(&mut self, m: &Manifest) -> Result<()> {
        let name = self.name.get_or_insert_with(|| m.name.clone());
        if self.store.image_dir(name).exists() {
            return Err(Error::AlreadyExists(format!("image {name} already exists")));
        }
        let tmp = TempDir::new_in(&self.store.root, &format!("{TMP_PREFIX}{name}-"))
            .map_err(Error::io("cannot create a temporary image directory"))?;
        self.tmp = Some(tmp);
        Ok(())
    }

    fn create(&mut self, f: &FileEntry) -> Result<fs::File> {
        let Some(tmp) = &self.tmp else {
            return Err(Error::Io {
                what: "import".into(),
                source: io::Error::other("a file before the manifest"),
            });
        };
        let out_path = tmp.path().join(super::stored_name(f));
        if let Some(p) = out_path.parent() {
            fsutil::create_dir_all_private(p)
                .map_err(Error::io(format!("cannot create {}", p.display())))?;
        }
        fsutil::create_new_private(&out_path)
            .map_err(Error::io(format!("cannot create {}", out_path.display())))
    }

    fn finish(&mut self, f: &FileEntry, file: fs::File) -> Result<()> {
        file.sync_all()
            .map_err(Error::io(format!("cannot write {}", super::stored_name(f))))
    }
}

/// The longest name an image archive's entry can have: the prefix, the longest image
/// file path, `.lz4` and a NUL (GNU long names end with one).
pub const MAX_ENTRY_NAME: u64 =
    (ARCHIVE_IMAGE_PREFIX.len() + manifest::MAX_PATH_LEN + ".lz4".len() + 1) as u64;

/// Reads an archive written by [`Store::export`] entry by entry, checking everything
/// against its manifest before `unpack` gets it: the manifest first and valid; then
/// regular files only, each named `image/<path>.lz4` for a path the manifest lists,
/// once, of the compressed size it lists, its frame verified (one whole LZ4 frame,
/// decompressing to the listed size and SHA-256, stopped at that size) as it is
/// written; every listed file present. Returns the archive's manifest. Problems of the
/// archive are [`Error::Archive`] (`source` names it); `unpack`'s errors pass through.
///
/// Memory stays bounded whatever the archive: tar extension entries, which a tar reader
/// would read whole into memory (a few hundred KiB of zstd can declare gigabytes), are
/// refused but for GNU long names no longer than [`MAX_ENTRY_NAME`].
pub fn read_archive<R: Read, U: Unpack>(
    archive: R,
    source: &str,
    limits: &Limits,
    unpack: &mut U,
) -> Result<Manifest> {
    let wrap = |error: ArchiveError| Error::Archive {
        archive: source.to_string(),
        error,
    };
    let mut decoder = zstd::Decoder::new(archive).map_err(Error::io("cannot start zstd"))?;
    // A zstd frame names the window it needs, and the decoder allocates it: zstd's own
    // cap is 128 MiB per import. Export's levels need at most MAX_ZSTD_WINDOW_LOG.
    decoder
        .window_log_max(MAX_ZSTD_WINDOW_LOG)
        .map_err(Error::io("cannot set up zstd"))?;
    let mut tar = tar::Archive::new(decoder);
    // Raw: no extension processing by tar-rs (see above); `next_entry` does it.
    let mut entries = tar
        .entries()
        .map_err(|e| wrap(tar_error("(tar)", e)))?
        .raw(true);

    // The manifest comes first.
    let Some((first_name, mut first)) = next_entry(&mut entries).map_err(wrap)? else {
        return Err(wrap(refuse(ARCHIVE_MANIFEST, ArchiveErrorKind::Empty)));
    };
    if first_name != ARCHIVE_MANIFEST || first.header().entry_type() != EntryType::Regular {
        return Err(wrap(refuse(
            &first_name,
            ArchiveErrorKind::ManifestNotFirst,
        )));
    }
    let size = entry_size(&first, ARCHIVE_MANIFEST).map_err(wrap)?;
    if size > limits.max_manifest_bytes {
        return Err(wrap(refuse(
            ARCHIVE_MANIFEST,
            ArchiveErrorKind::ManifestTooLarge {
                size,
                limit: limits.max_manifest_bytes,
            },
        )));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(size)
        .read_to_end(&mut json)
        .map_err(|e| wrap(tar_error(ARCHIVE_MANIFEST, e)))?;
    if json.len() as u64 != size {
        return Err(wrap(refuse(
            ARCHIVE_MANIFEST,
            ArchiveErrorKind::CutShort {
                read: json.len() as u64,
                size,
            },
        )));
    }
    drop(first);
    let m = manifest::parse(&json, limits)
        .map_err(|reason| wrap(refuse(ARCHIVE_MANIFEST, ArchiveErrorKind::Manifest(reason))))?;
    drop(json);
    unpack.manifest(&m)?;

    let index: HashMap<&str, usize> = m
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_str(), i))
        .collect();
    let mut seen = vec![false; m.files.len()];
    while let Some((entry_name, mut entry)) = next_entry(&mut entries).map_err(wrap)? {
        let refused = |kind| wrap(refuse(&entry_name, kind));
        let kind = entry.header().entry_type();
        if kind != EntryType::Regular {
            return Err(refused(ArchiveErrorKind::NotRegular(entry_kind(kind))));
        }
        let Some(rel) = entry_name
            .strip_prefix(ARCHIVE_IMAGE_PREFIX)
            .and_then(|p| p.strip_suffix(".lz4"))
        else {
            return Err(refused(ArchiveErrorKind::Unexpected));
        };
        manifest::validate_rel_path(rel).map_err(|r| refused(ArchiveErrorKind::Path(r)))?;
        let Some(&i) = index.get(rel) else {
            return Err(refused(ArchiveErrorKind::NotListed));
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(refused(ArchiveErrorKind::Duplicate));
        }
        let want = &m.files[i];
        let size = entry_size(&entry, &entry_name).map_err(wrap)?;
        if size != want.compressed_size {
            return Err(refused(ArchiveErrorKind::WrongSize {
                size,
                expected: want.compressed_size,
            }));
        }
        let mut out = unpack.create(want)?;
        // Verified as it is written: the decoder pulls the entry's bytes through the tee,
        // and must read them to the end for the frame to pass.
        let mut tee = Tee {
            // The frame's digest, for the manifest's compressed_sha256.
            inner: codec::HashingReader::new((&mut entry).take(size)),
            out: &mut out,
            count: 0,
            read_err: None,
            write_err: None,
        };
        let verified = codec::verify_frame(
            io::BufReader::with_capacity(codec::COPY_BUF, &mut tee),
            want.size,
            &want.sha256,
        );
        let (count, read_err, write_err) = (tee.count, tee.read_err, tee.write_err);
        let frame_sha = tee.inner.digest();
        if let Some(e) = write_err {
            return Err(Error::io(format!(
                "cannot write {}",
                super::stored_name(want)
            ))(e));
        }
        if let Some(e) = read_err {
            return Err(refused(ArchiveErrorKind::Tar(e.to_string())));
        }
        match verified {
            Ok(_) if count == size => {}
            Ok(_) => return Err(refused(ArchiveErrorKind::CutShort { read: count, size })),
            Err(codec::VerifyError::Corrupt(reason)) => {
                return Err(refused(ArchiveErrorKind::Frame(reason)))
            }
            Err(codec::VerifyError::Io(e)) => {
                return Err(refused(ArchiveErrorKind::Tar(e.to_string())))
            }
        }
        // What restores will check the frame against must hold for these bytes.
        if let Some(want_sha) = &want.compressed_sha256 {
            if *want_sha != frame_sha {
                return Err(refused(ArchiveErrorKind::Frame(format!(
                    "{} (compressed_sha256)",
                    codec::sha_mismatch("the stored frame", &frame_sha, want_sha)
                ))));
            }
        }
        unpack.finish(want, out)?;
    }
    if let Some(i) = seen.iter().position(|seen| !seen) {
        return Err(wrap(refuse(
            &format!("{ARCHIVE_IMAGE_PREFIX}{}", m.files[i].path),
            ArchiveErrorKind::Missing,
        )));
    }
    Ok(m)
}

/// The next entry that is not a GNU long name, and its name (the long name's, if one
/// came before it); `None` at the end of the archive.
fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
) -> Result<Option<(String, tar::Entry<'a, R>)>, ArchiveError> {
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let entry = match entries.next() {
            None if long_name.is_some() => {
                return Err(refuse("(tar)", ArchiveErrorKind::DanglingLongName))
            }
            None => return Ok(None),
            Some(Err(e)) => return Err(tar_error("(tar)", e)),
            Some(Ok(entry)) => entry,
        };
        if entry.header().entry_type().is_gnu_longname() {
            const WHAT: &str = "(GNU long name)";
            if long_name.is_some() {
                return Err(refuse(WHAT, ArchiveErrorKind::DanglingLongName));
            }
            // Bounded before anything is read: no path needs more.
            let size = entry_size(&entry, WHAT)?;
            if size > MAX_ENTRY_NAME {
                return Err(refuse(
                    WHAT,
                    ArchiveErrorKind::LongNameTooLong {
                        size,
                        limit: MAX_ENTRY_NAME,
                    },
                ));
            }
            let mut name = Vec::with_capacity(size as usize);
            entry
                .take(size)
                .read_to_end(&mut name)
                .map_err(|e| tar_error(WHAT, e))?;
            if name.len() as u64 != size {
                return Err(refuse(
                    WHAT,
                    ArchiveErrorKind::CutShort {
                        read: name.len() as u64,
                        size,
                    },
                ));
            }
            // GNU tar ends the name with a NUL; any other NUL fails the path check.
            if name.last() == Some(&0) {
                name.pop();
            }
            long_name = Some(name);
            continue;
        }
        let name = long_name.unwrap_or_else(|| entry.path_bytes().into_owned());
        return match String::from_utf8(name) {
            Ok(name) => Ok(Some((name, entry))),
            Err(e) => Err(refuse(
                &String::from_utf8_lossy(e.as_bytes()),
                ArchiveErrorKind::NotUtf8,
            )),
        };
    }
}

fn entry_size<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<u64, ArchiveError> {
    entry.header().size().map_err(|e| tar_error(name, e))
}

/// Hands on what it reads and writes it to `out` too, noting which side failed.
struct Tee<'a, R, W> {
    inner: R,
    out: &'a mut W,
    count: u64,
    read_err: Option<io::Error>,
    write_err: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let kind = e.kind();
                self.read_err = Some(e);
                return Err(io::Error::new(kind, "cannot read the archive"));
            }
        };
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            self.write_err = Some(e);
            return Err(io::Error::new(kind, "cannot write the stored file"));
        }
        self.count += n as u64;
        Ok(n)
    }
}
