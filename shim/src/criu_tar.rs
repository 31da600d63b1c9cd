//! The extraction behind `rekindle-criu-tar` and the shim's tmpfs helper:
//! CRIU's tmpfs images (a gzip'ed tar per tmpfs mount) unpacked in-process,
//! exactly as GNU tar 1.34 does it as root with CRIU's flags
//! (`--extract --gzip --no-unquote --no-wildcards`): numeric owners, every
//! mode bit, archive mtimes (atime: now), existing directories' metadata
//! overwritten and existing files replaced, directory metadata set after their
//! content, no xattrs (not asked for).
//!
//! GNU tar stays the reference: an input that is not a clean gzip'ed tar, one
//! too big to hold in memory, or an archive with an entry or header field that
//! is not handled here exactly is [`TarError::Unhandled`], for the caller to
//! give to GNU tar. CRIU images are untrusted: an absolute name, a `..`
//! component or a write through a symlink is [`TarError::Refused`], before
//! anything is written when it can be seen in the archive alone.

use std::{
    collections::HashMap,
    ffi::{CStr, CString},
    fs::File,
    io::{self, Read, Write},
    ops::Range,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::FileExt,
    },
};

use flate2::read::MultiGzDecoder;

/// Unpacked archives above this are GNU tar's: the whole archive is held in
/// memory, and an exec costs nothing next to writing that much.
pub const MAX_UNPACKED: u64 = 64 << 20;

/// Why an archive was not extracted here.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// Something GNU tar should decide; nothing was written.
    #[error("not handled here: {0}")]
    Unhandled(String),
    /// A hostile archive: refused, nothing written.
    #[error("refused: {0}")]
    Refused(String),
    /// Extraction failed part-way (an I/O error or a refusal only the
    /// filesystem could show, e.g. a symlink in a member's path).
    #[error("{0}")]
    Failed(String),
}

/// Extracts the gzip'ed tar `gz` into the directory `root` (an `O_DIRECTORY`
/// descriptor). `interdir_mode` is the mode of directories the archive does
/// not list but a member needs (GNU tar: 0777 less its umask). Modes are set
/// explicitly, so the process umask only matters for those.
pub fn extract_gz(gz: &[u8], root: OwnedFd, interdir_mode: libc::mode_t) -> Result<(), TarError> {
    let tar = inflate(gz).map_err(TarError::Unhandled)?;
    let plan = plan(&tar).map_err(|e| match e {
        PlanError::Unhandled(why) => TarError::Unhandled(why),
        PlanError::Refused(why) => TarError::Refused(why),
    })?;
    Extractor::new(root, interdir_mode)
        .run(&tar, &plan)
        .map_err(TarError::Failed)
}

/// The tar inside the gzip stream (members concatenated, as gzip -d does).
fn inflate(gz: &[u8]) -> Result<Vec<u8>, String> {
    if gz.is_empty() {
        return Err("empty input".into());
    }
    let mut tar = Vec::with_capacity(gz.len().saturating_mul(4).min(MAX_UNPACKED as usize));
    MultiGzDecoder::new(gz)
        .take(MAX_UNPACKED + 1)
        .read_to_end(&mut tar)
        .map_err(|e| format!("gunzip: {e}"))?;
    if tar.len() as u64 > MAX_UNPACKED {
        return Err(format!("more than {} MiB unpacked", MAX_UNPACKED >> 20));
    }
    Ok(tar)
}

enum PlanError {
    /// Something GNU tar should decide.
    Unhandled(String),
    /// A hostile archive: refused, nothing extracted.
    Refused(String),
}

fn unhandled(name: &str, what: impl std::fmt::Display) -> PlanError {
    PlanError::Unhandled(format!("{name}: {what}"))
}

/// Metadata GNU tar restores as root.
#[derive(Clone, Copy)]
struct Meta {
    /// Permission bits incl. setuid, setgid and sticky.
    mode: libc::mode_t,
    uid: libc::uid_t,
    gid: libc::gid_t,
    mtime: libc::timespec,
}

enum Kind {
    Dir,
    /// Content at this range of the unpacked archive.
    File(Range<usize>),
    /// GNU sparse: data chunks, and the size.
    Sparse(Vec<Chunk>, u64),
    Symlink(CString),
    /// Hard link to this path (components under the extraction directory).
    HardLink(Vec<CString>),
    /// Character or block device, or FIFO: file type bits and device number.
    Node(libc::mode_t, libc::dev_t),
}

/// Data of a sparse file: its offset in the file, its range in the archive.
type Chunk = (u64, Range<usize>);

struct Item {
    /// The member name as in the archive, for messages.
    name: String,
    /// Components under the extraction directory; empty: the directory itself.
    path: Vec<CString>,
    kind: Kind,
    meta: Meta,
}

/// Reads every header first, so an archive is either extracted here whole,
/// handed to GNU tar whole, or refused before anything is written.
fn plan(tar: &[u8]) -> Result<Vec<Item>, PlanError> {
    let mut archive = tar::Archive::new(io::Cursor::new(tar));
    let entries = archive
        .entries_with_seek()
        .map_err(|e| PlanError::Unhandled(format!("read the archive: {e}")))?;
    let mut items: Vec<Item> = Vec::new();
    // Symlinks GNU tar creates only at the end (absolute or `..` target): a
    // hard link to one becomes a separate symlink there.
    let mut late_symlinks: HashMap<Vec<CString>, bool> = HashMap::new();
    // The first reason to hand over; the members after it are still read, so
    // that a hostile name anywhere is refused rather than given to GNU tar.
    let mut hand_over: Option<String> = None;
    for (n, entry) in entries.enumerate() {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                hand_over.get_or_insert(format!("read the archive after {n} members: {e}"));
                break;
            }
        };
        let item = match describe(&mut entry, tar) {
            Ok(item) => item,
            Err(PlanError::Unhandled(why)) => {
                hand_over.get_or_insert(why);
                continue;
            }
            Err(refused) => return Err(refused),
        };
        if let Kind::HardLink(target) = &item.kind {
            if late_symlinks.get(target).copied().unwrap_or(false) {
                hand_over.get_or_insert(format!(
                    "{}: a hard link to a symlink GNU tar creates late",
                    item.name
                ));
            }
        }
        let late = matches!(&item.kind, Kind::Symlink(t)
            if t.as_bytes().starts_with(b"/") || t.as_bytes().split(|b| *b == b'/').any(|c| c == b".."));
        late_symlinks.insert(item.path.clone(), late);
        items.push(item);
    }
    match hand_over {
        Some(why) => Err(PlanError::Unhandled(why)),
        None => Ok(items),
    }
}

fn describe(entry: &mut tar::Entry<'_, io::Cursor<&[u8]>>, tar: &[u8]) -> Result<Item, PlanError> {
    let raw_name = entry.path_bytes().into_owned();
    let name = String::from_utf8_lossy(&raw_name).into_owned();
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    // Names first: a hostile one is refused whatever else the member holds.
    let path = components(&raw_name, &name)?;
    let link_target = match (entry.header().entry_type(), &link) {
        (tar::EntryType::Link, Some(target)) => {
            let shown = format!("{name} (link to {})", String::from_utf8_lossy(target));
            let target = components(target, &shown)?;
            if target.is_empty() {
                return Err(PlanError::Refused(format!(
                    "{shown}: a hard link to the extraction directory"
                )));
            }
            Some(target)
        }
        _ => None,
    };
    let mut pax_mtime = None;
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| unhandled(&name, format!("pax header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| unhandled(&name, format!("pax header: {e}")))?;
            let key = ext
                .key()
                .map_err(|_| unhandled(&name, "a pax key that is not UTF-8"))?;
            let value = ext.value_bytes();
            match key {
                // tar-rs applies these to the entry.
                "path" | "linkpath" => {}
                "size" | "uid" | "gid" => {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| unhandled(&name, format!("pax {key} not a number")))?;
                }
                "mtime" => {
                    pax_mtime = Some(
                        pax_time(value).ok_or_else(|| unhandled(&name, "pax mtime malformed"))?,
                    )
                }
                // Not restored by GNU tar without --xattrs, --acls, --selinux
                // or incremental options; atime is set to now, like here.
                "atime"
                | "ctime"
                | "comment"
                | "SCHILY.dev"
                | "SCHILY.ino"
                | "SCHILY.nlink"
                | "RHT.security.selinux" => {}
                k if k.starts_with("SCHILY.xattr.")
                    || k.starts_with("LIBARCHIVE.xattr.")
                    || k.starts_with("SCHILY.acl.") => {}
                "uname" | "gname" if value.is_empty() => {}
                k => return Err(unhandled(&name, format!("pax record {k}"))),
            }
        }
    }
    let header = entry.header();
    if header.as_gnu().is_none() && header.as_ustar().is_none() {
        return Err(unhandled(&name, "a pre-POSIX header"));
    }
    // Without --numeric-owner GNU tar maps names through the passwd database.
    if header.username_bytes().is_some_and(|u| !u.is_empty())
        || header.groupname_bytes().is_some_and(|g| !g.is_empty())
    {
        return Err(unhandled(&name, "owner names (GNU tar maps them to ids)"));
    }
    let num =
        |what: &str, v: io::Result<u64>| v.map_err(|e| unhandled(&name, format!("{what}: {e}")));
    let id = |what: &str, v: io::Result<u64>| {
        u32::try_from(num(what, v)?).map_err(|_| unhandled(&name, format!("{what} out of range")))
    };
    let mtime = match pax_mtime {
        Some(t) => t,
        None => libc::timespec {
            tv_sec: i64::try_from(num("mtime", header.mtime())?)
                .map_err(|_| unhandled(&name, "mtime out of range"))?,
            tv_nsec: 0,
        },
    };
    let meta = Meta {
        mode: num("mode", header.mode().map(u64::from))? as libc::mode_t & 0o7777,
        uid: id("uid", header.uid())?,
        gid: id("gid", header.gid())?,
        mtime,
    };
    // Data past the end: GNU tar reports the truncated archive.
    let data_start = entry.raw_file_position() as usize;
    let stored = num("size", header.entry_size())? as usize;
    data_start
        .checked_add(stored)
        .filter(|end| *end <= tar.len())
        .ok_or_else(|| unhandled(&name, "truncated archive"))?;
    let refuse_empty = |path: &[CString]| {
        if path.is_empty() {
            Err(unhandled(
                &name,
                "a non-directory member for the directory itself",
            ))
        } else {
            Ok(())
        }
    };
    let kind = match header.entry_type() {
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Regular => {
            // Old archives mark directories with a trailing slash.
            if raw_name.ends_with(b"/") {
                return Err(unhandled(&name, "a regular file named like a directory"));
            }
            refuse_empty(&path)?;
            let size = entry.size() as usize;
            let end = data_start
                .checked_add(size)
                .filter(|end| *end <= tar.len())
                .ok_or_else(|| unhandled(&name, "truncated archive"))?;
            Kind::File(data_start..end)
        }
        tar::EntryType::GNUSparse => {
            refuse_empty(&path)?;
            let (chunks, size) = sparse_map(entry, tar).map_err(|e| unhandled(&name, e))?;
            Kind::Sparse(chunks, size)
        }
        tar::EntryType::Symlink => {
            refuse_empty(&path)?;
            let target = link.ok_or_else(|| unhandled(&name, "a symlink without a target"))?;
            Kind::Symlink(
                CString::new(target)
                    .map_err(|_| PlanError::Refused(format!("{name}: NUL in the link target")))?,
            )
        }
        tar::EntryType::Link => {
            refuse_empty(&path)?;
            Kind::HardLink(
                link_target.ok_or_else(|| unhandled(&name, "a hard link without a target"))?,
            )
        }
        t @ (tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo) => {
            refuse_empty(&path)?;
            let dev = |v: io::Result<Option<u32>>| {
                v.map_err(|e| unhandled(&name, format!("device number: {e}")))?
                    .ok_or_else(|| unhandled(&name, "no device number"))
            };
            match t {
                tar::EntryType::Fifo => Kind::Node(libc::S_IFIFO, 0),
                _ => Kind::Node(
                    if t == tar::EntryType::Char {
                        libc::S_IFCHR
                    } else {
                        libc::S_IFBLK
                    },
                    libc::makedev(dev(header.device_major())?, dev(header.device_minor())?),
                ),
            }
        }
        t => {
            return Err(unhandled(
                &name,
                format!("entry type {:?}", t.as_byte() as char),
            ))
        }
    };
    Ok(Item {
        name,
        path,
        kind,
        meta,
    })
}

/// The components of a member name under the extraction directory. Absolute
/// names and `..` are refused: CRIU images are untrusted input.
fn components(raw: &[u8], name: &str) -> Result<Vec<CString>, PlanError> {
    if raw.is_empty() {
        return Err(unhandled(name, "an empty name"));
    }
    if raw.starts_with(b"/") {
        return Err(PlanError::Refused(format!(
            "{name}: absolute name refused (the image may be hostile)"
        )));
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(PlanError::Refused(format!(
                    "{name}: `..` in the name refused (the image may be hostile)"
                )))
            }
            c => out.push(
                CString::new(c)
                    .map_err(|_| PlanError::Refused(format!("{name}: NUL in the name")))?,
            ),
        }
    }
    Ok(out)
}

/// A pax time, `SECONDS[.FRACTION]`, possibly negative.
fn pax_time(v: &[u8]) -> Option<libc::timespec> {
    let v = std::str::from_utf8(v).ok()?;
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut secs: i64 = secs.parse().ok()?;
    let mut ns: i64 = 0;
    for (i, d) in frac.bytes().take(9).enumerate() {
        ns += i64::from(d - b'0') * 10i64.pow(8 - i as u32);
    }
    if neg {
        secs = -secs;
        if ns > 0 {
            secs -= 1;
            ns = 1_000_000_000 - ns;
        }
    }
    Some(libc::timespec {
        tv_sec: secs,
        tv_nsec: ns,
    })
}

/// The data chunks of an old-GNU sparse member: the map is in its header and
/// the extension blocks after it, the chunks' data follow back to back (tar-rs
/// has checked the map while reading the entry).
fn sparse_map(
    entry: &tar::Entry<'_, io::Cursor<&[u8]>>,
    tar: &[u8],
) -> Result<(Vec<Chunk>, u64), String> {
    let gnu = entry
        .header()
        .as_gnu()
        .ok_or("sparse member without a GNU header")?;
    let mut map: Vec<(u64, u64)> = Vec::new();
    let mut add = |b: &tar::GnuSparseHeader| -> Result<(), String> {
        if !b.is_empty() {
            map.push((
                b.offset().map_err(|e| e.to_string())?,
                b.length().map_err(|e| e.to_string())?,
            ));
        }
        Ok(())
    };
    for b in &gnu.sparse {
        add(b)?;
    }
    let mut next = entry.raw_header_position() as usize + 512;
    let mut extended = gnu.is_extended();
    while extended {
        let block = tar.get(next..next + 512).ok_or("truncated sparse map")?;
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.as_mut_bytes().copy_from_slice(block);
        for b in &ext.sparse {
            add(b)?;
        }
        extended = ext.is_extended();
        next += 512;
    }
    let size = gnu.real_size().map_err(|e| e.to_string())?;
    let mut chunks = Vec::with_capacity(map.len());
    for (offset, len) in map {
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| next.checked_add(l))
            .filter(|end| *end <= tar.len())
            .ok_or("truncated sparse data")?;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err("sparse chunk past the file's size".into());
        }
        chunks.push((offset, next..end));
        next = end;
    }
    Ok((chunks, size))
}

/// Writes the plan under the extraction directory, never following a symlink
/// below it.
struct Extractor {
    root: OwnedFd,
    /// Mode of directories the archive does not list (GNU tar: 0777 less the
    /// umask it started with).
    interdir_mode: libc::mode_t,
    /// The last parent directory opened, for the next member in it.
    cached: Option<(Vec<CString>, OwnedFd)>,
}

type Res<T> = Result<T, String>;

fn cause(what: &str) -> impl FnOnce(io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn errno_is(e: &io::Error, errno: i32) -> bool {
    e.raw_os_error() == Some(errno)
}

fn openat_dir(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name; the result is owned.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn lstat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, name and out-pointer.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn is_type(st: &libc::stat, t: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == t
}

fn shown(path: &[CString]) -> String {
    if path.is_empty() {
        return ".".into();
    }
    path.iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl Extractor {
    fn new(root: OwnedFd, interdir_mode: libc::mode_t) -> Extractor {
        Extractor {
            root,
            interdir_mode,
            cached: None,
        }
    }

    fn run(&mut self, tar: &[u8], plan: &[Item]) -> Res<()> {
        // Directories' metadata is set last, deepest first, as GNU tar's
        // delayed set_stat does (their content changes their mtime).
        let mut dirs: Vec<(&[CString], Meta)> = Vec::new();
        let mut dir_index: HashMap<&[CString], usize> = HashMap::new();
        for item in plan {
            self.extract(tar, item)
                .map_err(|e| format!("{}: {e}", item.name))?;
            if let Kind::Dir = item.kind {
                match dir_index.get(item.path.as_slice()) {
                    Some(i) => dirs[*i].1 = item.meta,
                    None => {
                        dir_index.insert(&item.path, dirs.len());
                        dirs.push((&item.path, item.meta));
                    }
                }
            }
        }
        self.cached = None;
        for (path, meta) in dirs.iter().rev() {
            self.set_dir_meta(path, meta)
                .map_err(|e| format!("{}: {e}", shown(path)))?;
        }
        Ok(())
    }

    fn set_dir_meta(&mut self, path: &[CString], meta: &Meta) -> Res<()> {
        let fd = match path.split_last() {
            None => None,
            Some((name, parent)) => {
                let p = self.parent(parent, false)?;
                Some(openat_dir(p, name).map_err(cause("open the directory"))?)
            }
        };
        let fd = fd.as_ref().map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
        set_meta_fd(fd, meta)
    }

    /// The directory `path` (components), opened component by component
    /// without following symlinks; missing ones are made when `create`.
    fn parent(&mut self, path: &[CString], create: bool) -> Res<RawFd> {
        if path.is_empty() {
            return Ok(self.root.as_raw_fd());
        }
        if let Some((p, fd)) = &self.cached {
            if p.as_slice() == path {
                return Ok(fd.as_raw_fd());
            }
        }
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in path.iter().enumerate() {
            let at = cur
                .as_ref()
                .map_or(self.root.as_raw_fd(), |f| f.as_raw_fd());
            let next = match openat_dir(at, c) {
                Ok(fd) => fd,
                Err(e) if create && errno_is(&e, libc::ENOENT) => {
                    // SAFETY: valid descriptor and name.
                    let made = check(unsafe { libc::mkdirat(at, c.as_ptr(), self.interdir_mode) });
                    match made {
                        Ok(()) => {}
                        Err(e) if errno_is(&e, libc::EEXIST) => {}
                        Err(e) => {
                            return Err(format!("make directory {}: {e}", shown(&path[..=i])))
                        }
                    }
                    openat_dir(at, c).map_err(cause(&format!("open {}", shown(&path[..=i]))))?
                }
                Err(e) => {
                    let st = lstat_at(at, c);
                    let p = shown(&path[..=i]);
                    return Err(match st {
                        Ok(st) if is_type(&st, libc::S_IFLNK) => {
                            format!("{p} is a symlink: refusing to write through it")
                        }
                        Ok(st) if !is_type(&st, libc::S_IFDIR) => format!("{p} is not a directory"),
                        _ => format!("open {p}: {e}"),
                    });
                }
            };
            cur = Some(next);
        }
        let fd = cur.expect("non-empty path");
        let raw = fd.as_raw_fd();
        self.cached = Some((path.to_vec(), fd));
        Ok(raw)
    }

    /// Removes what is at `name` so a member can take its place (GNU tar's
    /// default: unlink a file, rmdir an empty directory).
    fn remove(&mut self, dir: RawFd, name: &CStr) -> Res<()> {
        let st = lstat_at(dir, name).map_err(cause("replace the existing file"))?;
        let flags = if is_type(&st, libc::S_IFDIR) {
            // A cached parent may be (under) it.
            if self.cached.as_ref().is_some_and(|(_, fd)| {
                fstat_fd(fd.as_raw_fd())
                    .is_ok_and(|c| c.st_ino == st.st_ino && c.st_dev == st.st_dev)
            }) {
                self.cached = None;
            }
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: valid descriptor and name.
        check(unsafe { libc::unlinkat(dir, name.as_ptr(), flags) })
            .map_err(cause("replace the existing file"))
    }

    fn extract(&mut self, tar: &[u8], item: &Item) -> Res<()> {
        let Some((name, parent)) = item.path.split_last() else {
            // "./": the directory itself, metadata set at the end.
            return match item.kind {
                Kind::Dir => Ok(()),
                _ => Err("not a directory member for the extraction directory".into()),
            };
        };
        let name = name.as_c_str();
        let dir = self.parent(parent, true)?;
        match &item.kind {
            Kind::Dir => {
                let mut dir = dir;
                for _ in 0..2 {
                    // SAFETY: valid descriptor and name.
                    match check(unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) }) {
                        Ok(()) => return Ok(()),
                        Err(e) if errno_is(&e, libc::EEXIST) => {
                            let st = lstat_at(dir, name).map_err(cause("mkdir"))?;
                            if is_type(&st, libc::S_IFDIR) {
                                return Ok(());
                            }
                            if is_type(&st, libc::S_IFLNK) {
                                return Err(
                                    "a symlink is in the directory's place: refusing to follow it"
                                        .into(),
                                );
                            }
                            self.remove(dir, name)?;
                            dir = self.parent(parent, true)?;
                        }
                        Err(e) => return Err(format!("mkdir: {e}")),
                    }
                }
                Err("mkdir: the path keeps being taken".into())
            }
            Kind::File(range) => {
                let f = self.create_file(dir, parent, name)?;
                (&f).write_all(&tar[range.clone()])
                    .map_err(cause("write"))?;
                set_meta_fd(f.as_raw_fd(), &item.meta)
            }
            Kind::Sparse(chunks, size) => {
                let f = self.create_file(dir, parent, name)?;
                for (offset, range) in chunks {
                    f.write_all_at(&tar[range.clone()], *offset)
                        .map_err(cause("write"))?;
                }
                f.set_len(*size).map_err(cause("set the size"))?;
                set_meta_fd(f.as_raw_fd(), &item.meta)
            }
            Kind::Symlink(target) => {
                self.make(dir, parent, name, "symlink", |dir, name| {
                    // SAFETY: NUL-terminated strings, valid descriptor.
                    check(unsafe { libc::symlinkat(target.as_ptr(), dir, name.as_ptr()) })
                })?;
                set_meta_at(dir, name, &item.meta, false)
            }
            Kind::Node(kind, dev) => {
                self.make(dir, parent, name, "mknod", |dir, name| {
                    // SAFETY: valid descriptor and name.
                    check(unsafe { libc::mknodat(dir, name.as_ptr(), kind | 0o600, *dev) })
                })?;
                set_meta_at(dir, name, &item.meta, true)
            }
            Kind::HardLink(target) => {
                let (tname, tparent) = target.split_last().expect("checked in plan");
                let tdir = {
                    let fd = self.parent(tparent, false)?;
                    // The parent of the link may replace the cached one.
                    // SAFETY: dup of a valid descriptor; the copy is owned.
                    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
                    if d < 0 {
                        return Err(format!("dup: {}", io::Error::last_os_error()));
                    }
                    // SAFETY: fresh descriptor.
                    unsafe { OwnedFd::from_raw_fd(d) }
                };
                let tdir_fd = tdir.as_raw_fd();
                let dir = self.parent(parent, true)?;
                // SAFETY: valid descriptors and names.
                let link = || {
                    check(unsafe { libc::linkat(tdir_fd, tname.as_ptr(), dir, name.as_ptr(), 0) })
                };
                match link() {
                    Ok(()) => Ok(()),
                    Err(e) if errno_is(&e, libc::EEXIST) => {
                        let a = lstat_at(tdir_fd, tname).map_err(cause("link"))?;
                        let b = lstat_at(dir, name).map_err(cause("link"))?;
                        if a.st_dev == b.st_dev && a.st_ino == b.st_ino {
                            return Ok(());
                        }
                        self.remove(dir, name)?;
                        let dir = self.parent(parent, true)?;
                        // SAFETY: valid descriptors and names.
                        check(unsafe {
                            libc::linkat(tdir_fd, tname.as_ptr(), dir, name.as_ptr(), 0)
                        })
                        .map_err(|e| format!("link to {}: {e}", shown(target)))
                    }
                    Err(e) => Err(format!("link to {}: {e}", shown(target))),
                }
            }
        }
    }

    /// Runs `op` to make `name`, replacing what is there (once).
    fn make(
        &mut self,
        dir: RawFd,
        parent: &[CString],
        name: &CStr,
        what: &str,
        op: impl Fn(RawFd, &CStr) -> io::Result<()>,
    ) -> Res<()> {
        match op(dir, name) {
            Err(e) if errno_is(&e, libc::EEXIST) => {
                self.remove(dir, name)?;
                let dir = self.parent(parent, true)?;
                op(dir, name).map_err(cause(what))
            }
            r => r.map_err(cause(what)),
        }
    }

    fn create_file(&mut self, dir: RawFd, parent: &[CString], name: &CStr) -> Res<File> {
        let open = |dir: RawFd, name: &CStr| {
            // SAFETY: valid descriptor and name; the result is owned below.
            let fd = unsafe {
                libc::openat(
                    dir,
                    name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(fd)
            }
        };
        let fd = match open(dir, name) {
            Err(e) if errno_is(&e, libc::EEXIST) => {
                self.remove(dir, name)?;
                let dir = self.parent(parent, true)?;
                open(dir, name).map_err(cause("create"))?
            }
            r => r.map_err(cause("create"))?,
        };
        // SAFETY: fresh descriptor.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

fn fstat_fd(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and out-pointer.
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st)
}

fn times(meta: &Meta) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        meta.mtime,
    ]
}

/// GNU tar's set_stat order: times, owner, then mode (chown clears setuid
/// and setgid).
fn set_meta_fd(fd: RawFd, meta: &Meta) -> Res<()> {
    let t = times(meta);
    // SAFETY: valid descriptor and two timespecs.
    check(unsafe { libc::futimens(fd, t.as_ptr()) }).map_err(cause("set the mtime"))?;
    // SAFETY: valid descriptor.
    check(unsafe { libc::fchown(fd, meta.uid, meta.gid) }).map_err(cause("set the owner"))?;
    // SAFETY: valid descriptor.
    check(unsafe { libc::fchmod(fd, meta.mode) }).map_err(cause("set the mode"))?;
    Ok(())
}

/// [`set_meta_fd`] by name, not following a symlink (whose mode is not set).
fn set_meta_at(dir: RawFd, name: &CStr, meta: &Meta, chmod: bool) -> Res<()> {
    let t = times(meta);
    // SAFETY: valid descriptor, name and two timespecs.
    check(unsafe { libc::utimensat(dir, name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
        .map_err(cause("set the mtime"))?;
    // SAFETY: valid descriptor and name.
    check(unsafe {
        libc::fchownat(
            dir,
            name.as_ptr(),
            meta.uid,
            meta.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map_err(cause("set the owner"))?;
    if chmod {
        // SAFETY: valid descriptor and name; the node was just made by us.
        check(unsafe { libc::fchmodat(dir, name.as_ptr(), meta.mode, 0) })
            .map_err(cause("set the mode"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_keep_their_fraction() {
        let t = |s: &str| pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec));
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("12x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn names_stay_under_the_directory() {
        let c = |s: &str| match components(s.as_bytes(), s) {
            Ok(v) => Ok(shown(&v)),
            Err(PlanError::Refused(m)) => Err(m),
            Err(PlanError::Unhandled(m)) => Err(format!("unhandled: {m}")),
        };
        assert_eq!(c("./"), Ok(".".into()));
        assert_eq!(c("./a//b/./c/"), Ok("a/b/c".into()));
        assert!(c("../x").unwrap_err().contains("refused"));
        assert!(c("a/../../x").unwrap_err().contains("refused"));
        assert!(c("/etc/passwd").unwrap_err().contains("refused"));
    }
}
