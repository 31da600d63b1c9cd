//! `rekindle-criu-tar` against GNU tar: a tree archived as CRIU dumps a tmpfs
//! is extracted by both with CRIU's restore command line, and the two results
//! must be the same, bit for bit in what a restored container can see. Needs
//! root (devices, owners, setuid).

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    fs,
    io::{Read, Write},
    os::unix::{
        ffi::OsStrExt,
        fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const OURS: &str = env!("CARGO_BIN_EXE_rekindle-criu-tar");

/// criu/filesystems.c, dump_one_tmpfs (the tree is given as fd 0 there).
const DUMP_FLAGS: [&str; 10] = [
    "--create",
    "--gzip",
    "--no-unquote",
    "--no-wildcards",
    "--one-file-system",
    "--check-links",
    "--preserve-permissions",
    "--sparse",
    "--numeric-owner",
    "--directory",
];

/// criu/filesystems.c, tmpfs_restore (followed by the mount point).
const RESTORE_FLAGS: [&str; 5] = [
    "--extract",
    "--gzip",
    "--no-unquote",
    "--no-wildcards",
    "--directory",
];

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the criu_tar tests need root (mknod, chown, setuid bits)"
    );
}

fn mknod(path: &Path, kind: libc::mode_t, mode: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated path.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    chmod(path, mode);
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Sets the mtime (not following symlinks).
fn mtime(path: &Path, secs: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = [
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
    ];
    // SAFETY: NUL-terminated path, two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            t.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

/// The tree of every kind CRIU may find in a tmpfs.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::create_dir(root.join("setgid")).unwrap();
    fs::create_dir(root.join("setgid/inner")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("a/small"), b"hello\n").unwrap();
    fs::write(root.join("a/b/random"), random_bytes(1 << 20)).unwrap();
    {
        // 1 MiB hole, 4 KiB of data, 1 MiB hole at the end.
        let f = fs::File::create(root.join("sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&random_bytes(4096), 1 << 20).unwrap();
        f.set_len(2 << 20 | 4096).unwrap();
        // More data regions than a GNU header's map holds (4): extension
        // blocks follow the header.
        let f = fs::File::create(root.join("many-holes")).unwrap();
        for i in 0..10u64 {
            f.write_all_at(&random_bytes(4096 + i as usize * 100), i * (64 << 10))
                .unwrap();
        }
    }
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::write(root.join("owned"), b"owned by 1234:5678").unwrap();
    fs::write(root.join("private/secret"), b"s").unwrap();
    fs::write(root.join("setgid/inner/f"), b"g").unwrap();
    symlink("a/small", root.join("rel-link")).unwrap();
    symlink("/proc/self/fd", root.join("fd")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
    symlink("../small", root.join("a/b/up-link")).unwrap();
    fs::hard_link(root.join("a/small"), root.join("a/b/c/hard")).unwrap();
    mknod(
        &root.join("null"),
        libc::S_IFCHR,
        0o666,
        libc::makedev(1, 3),
    );
    mknod(
        &root.join("a/loop9"),
        libc::S_IFBLK,
        0o660,
        libc::makedev(7, 9),
    );
    mknod(&root.join("fifo"), libc::S_IFIFO, 0o620, 0);

    chown(&root.join("owned"), 1234, 5678);
    chown(&root.join("private"), 1234, 5678);
    chown(&root.join("dangling"), 1234, 5678);
    chown(&root.join("a/loop9"), 0, 6);
    chmod(&root.join("setuid"), 0o4755);
    chmod(&root.join("owned"), 0o2640);
    chmod(&root.join("private"), 0o700);
    chmod(&root.join("sticky"), 0o1777);
    chmod(&root.join("setgid"), 0o2755);
    chmod(&root.join("setgid/inner"), 0o755);
    chmod(&root.join("a/b"), 0o550);
    chmod(root, 0o1777);

    // Distinct mtimes, deepest first so no later change moves them.
    let mut t = 1_600_000_000;
    let mut all: Vec<PathBuf> = walk(root).into_keys().map(|r| root.join(r)).collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in all {
        t += 1000;
        mtime(&p, t);
    }
}

#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    rdev: u64,
    mtime: i64,
    /// The first path (in order) with the same inode: hard-link identity.
    same_as: String,
}

/// Every path under `root` ("" for root itself) and what it is.
fn walk(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    let mut inodes: HashMap<u64, String> = HashMap::new();
    let mut paths = Vec::new();
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        }
        paths.push((rel, m));
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, m) in paths {
        let name = rel.to_string_lossy().into_owned();
        let p = root.join(&rel);
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let same_as = inodes
            .entry(m.ino())
            .or_insert_with(|| name.clone())
            .clone();
        out.insert(
            name,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                // a directory's size depends on the filesystem's history
                size: (!ft.is_dir()).then(|| m.size()),
                content: ft.is_file().then(|| fs::read(&p).unwrap()),
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                mtime: m.mtime(),
                same_as,
            },
        );
    }
    out
}

/// The tree archived as CRIU dumps it (the directory as fd 0).
fn dump(src: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(DUMP_FLAGS)
        .args(["/proc/self/fd/0", "."])
        .stdin(fs::File::open(src).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "GNU tar --create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Extracts `archive` (given as a file, as CRIU does) into `dst` with CRIU's
/// restore command line.
fn restore(tar: &str, archive: &Path, dst: &Path) -> Output {
    Command::new(tar)
        .arg0_tar()
        .args(RESTORE_FLAGS)
        .arg(dst)
        .stdin(fs::File::open(archive).unwrap())
        .output()
        .unwrap()
}

trait Arg0 {
    fn arg0_tar(&mut self) -> &mut Self;
}

impl Arg0 for Command {
    /// CRIU runs it as `tar`.
    fn arg0_tar(&mut self) -> &mut Self {
        std::os::unix::process::CommandExt::arg0(self, "tar")
    }
}

fn ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compare(gnu: &Path, ours: &Path) {
    let (g, o) = (walk(gnu), walk(ours));
    let gk: Vec<_> = g.keys().collect();
    let ok_: Vec<_> = o.keys().collect();
    assert_eq!(gk, ok_, "the same paths");
    for (path, gn) in &g {
        assert_eq!(
            gn, &o[path],
            "{path:?}: GNU tar (left) vs rekindle-criu-tar (right)"
        );
    }
}

#[test]
fn extracts_what_gnu_tar_extracts() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let archive = tmp.path().join("tmpfs-dev.tar.gz");
    fs::write(&archive, dump(&src)).unwrap();

    let gnu = tmp.path().join("gnu");
    let ours = tmp.path().join("ours");
    fs::create_dir(&gnu).unwrap();
    fs::create_dir(&ours).unwrap();
    ok(&restore("tar", &archive, &gnu), "GNU tar --extract");
    let out = restore(OURS, &archive, &ours);
    ok(&out, "rekindle-criu-tar --extract");
    assert!(
        out.stderr.is_empty(),
        "extracted in-process, no hand-over: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    compare(&gnu, &ours);
    // The tree as dumped, too (the root's mtime and the kinds made it).
    let tree = walk(&ours);
    assert_eq!(tree["sparse"].size, Some(2 << 20 | 4096));
    assert_eq!(tree["many-holes"].content, walk(&src)["many-holes"].content);
    assert_eq!(tree["a/small"].same_as, "a/b/c/hard", "hard link kept");
    assert_eq!(tree["null"].kind, "char");
    assert_eq!(tree["null"].rdev, libc::makedev(1, 3));
    assert_eq!(tree["setuid"].mode, 0o4755);
    assert_eq!(tree[""].mode, 0o1777);
    assert_eq!(tree[""].mtime, walk(&src)[""].mtime);
    // The sparse file's hole stays a hole.
    let blocks = fs::metadata(ours.join("sparse")).unwrap().blocks();
    assert!(
        blocks * 512 < 1 << 20,
        "sparse file fully allocated: {blocks} blocks"
    );

    // Over an existing tree (a second restore into the same place): files
    // replaced, directories' metadata overwritten, as GNU tar does.
    fs::write(ours.join("a/small"), b"changed").unwrap();
    chmod(&ours.join("sticky"), 0o700);
    ok(&restore("tar", &archive, &gnu), "GNU tar --extract again");
    ok(
        &restore(OURS, &archive, &ours),
        "rekindle-criu-tar --extract again",
    );
    compare(&gnu, &ours);
}

/// A gzip'ed archive of raw headers, names unchecked (tar-rs refuses to
/// build `..`).
fn raw_archive(entries: &[(&str, u8, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(*kind));
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn refuses_names_outside_the_directory() {
    require_root();
    for bad in [
        "../escape",
        "./ok/../../escape",
        "/tmp/rekindle-criu-tar-escape",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("a/b");
        fs::create_dir_all(&dst).unwrap();
        let archive = tmp.path().join("bad.tar.gz");
        fs::write(
            &archive,
            raw_archive(&[
                ("./", b'5', b""),
                ("./first", b'0', b"1"),
                (bad, b'0', b"escaped"),
            ]),
        )
        .unwrap();
        let out = restore(OURS, &archive, &dst);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(bad) && err.contains("refused"), "{bad}: {err}");
        assert!(!tmp.path().join("a/escape").exists() && !tmp.path().join("escape").exists());
        assert!(!Path::new("/tmp/rekindle-criu-tar-escape").exists());
        assert_eq!(
            fs::read_dir(&dst).unwrap().count(),
            0,
            "{bad}: nothing written"
        );
    }
}

#[test]
fn refuses_to_write_through_a_symlink() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(&dst).unwrap();
    fs::create_dir_all(&outside).unwrap();
    let archive = tmp.path().join("bad.tar.gz");
    // a symlink to `outside`, then a file under it
    let raw = {
        let mut tar = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.set_path("./link").unwrap();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_link_name(&outside).unwrap();
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        let mut h = tar::Header::new_gnu();
        h.set_path("./link/file").unwrap();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(1);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(b"x");
        tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    };
    fs::write(&archive, raw).unwrap();
    let out = restore(OURS, &archive, &dst);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("link/file") && err.contains("symlink"),
        "{err}"
    );
    assert!(!outside.join("file").exists());
}

#[test]
fn create_and_unknown_entries_go_to_gnu_tar() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/f"), b"content").unwrap();

    // CRIU's dump command line: GNU tar's archive on stdout.
    let out = Command::new(OURS)
        .arg0_tar()
        .args(DUMP_FLAGS)
        .args(["/proc/self/fd/0", "."])
        .stdin(fs::File::open(&src).unwrap())
        .output()
        .unwrap();
    ok(&out, "rekindle-criu-tar --create");
    let archive = tmp.path().join("created.tar.gz");
    fs::write(&archive, &out.stdout).unwrap();
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&archive)
        .output()
        .unwrap();
    ok(&list, "tar -tzf");
    assert_eq!(String::from_utf8_lossy(&list.stdout), "./\n./d/\n./d/f\n");

    // An entry type not handled here ('7', contiguous): GNU tar extracts
    // it, given the same input, from a file and from a pipe.
    let gz = raw_archive(&[("./", b'5', b""), ("./cont", b'7', b"contiguous")]);
    let file = tmp.path().join("cont.tar.gz");
    fs::write(&file, &gz).unwrap();
    for piped in [false, true] {
        let dst = tmp.path().join(format!("cont-{piped}"));
        fs::create_dir(&dst).unwrap();
        let out = if piped {
            let mut child = Command::new(OURS)
                .arg0_tar()
                .args(RESTORE_FLAGS)
                .arg(&dst)
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&gz).unwrap();
            child.wait_with_output().unwrap()
        } else {
            restore(OURS, &file, &dst)
        };
        ok(&out, "hand-over to GNU tar");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("handing over to GNU tar"), "{err}");
        assert_eq!(fs::read(dst.join("cont")).unwrap(), b"contiguous");
    }

    // Not gzip: GNU tar's own error.
    let junk = tmp.path().join("junk");
    fs::write(&junk, b"not a gzip stream").unwrap();
    let out = restore(OURS, &junk, &tmp.path().join("cont-false"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("handing over to GNU tar"));
}

/// Start plus extract of a small /dev into a tmpfs (/dev/shm, as CRIU
/// extracts into a fresh tmpfs): printed, not asserted.
#[test]
fn timing_small_dev_tree() {
    require_root();
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let src = tmp.path().join("dev");
    fs::create_dir_all(src.join("pts")).unwrap();
    fs::create_dir_all(src.join("shm")).unwrap();
    fs::create_dir_all(src.join("mqueue")).unwrap();
    for (name, minor) in [
        ("null", 3),
        ("zero", 5),
        ("full", 7),
        ("random", 8),
        ("urandom", 9),
    ] {
        mknod(
            &src.join(name),
            libc::S_IFCHR,
            0o666,
            libc::makedev(1, minor),
        );
    }
    mknod(&src.join("tty"), libc::S_IFCHR, 0o666, libc::makedev(5, 0));
    for (l, t) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        symlink(t, src.join(l)).unwrap();
    }
    chmod(&src.join("shm"), 0o1777);
    let archive = tmp.path().join("dev.tar.gz");
    fs::write(&archive, dump(&src)).unwrap();

    let p50 = |tar: &str| {
        let mut times: Vec<Duration> = (0..20)
            .map(|i| {
                let dst = tmp.path().join(format!("{}-{i}", tar.replace('/', "_")));
                fs::create_dir(&dst).unwrap();
                let t = Instant::now();
                let out = restore(tar, &archive, &dst);
                let d = t.elapsed();
                ok(&out, tar);
                d
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let gnu = p50("tar");
    let ours = p50(OURS);
    println!(
        "small /dev tree, start + extract, p50 of 20: GNU tar {:.2} ms, rekindle-criu-tar {:.2} ms",
        gnu.as_secs_f64() * 1e3,
        ours.as_secs_f64() * 1e3
    );
}

/// The shim's tmpfs helper (the socket the patched CRIU calls instead of
/// exec'ing tar): the same extraction as GNU tar, into the directory fd it is
/// sent, and the image fd's offset left where it was.
#[test]
fn tmpfs_helper_extracts_what_gnu_tar_extracts() {
    use rekindle_shim::direct::tmpfs::{request_as_criu, TmpfsHelper};
    use std::io::{Seek, SeekFrom};
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let archive = tmp.path().join("tmpfs-dev.tar.gz");
    fs::write(&archive, dump(&src)).unwrap();
    let gnu = tmp.path().join("gnu");
    let ours = tmp.path().join("ours");
    fs::create_dir(&gnu).unwrap();
    fs::create_dir(&ours).unwrap();
    ok(&restore("tar", &archive, &gnu), "GNU tar --extract");

    let helper = TmpfsHelper::start().unwrap();
    let mode = fs::metadata(helper.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "root-only socket");
    let mut image = fs::File::open(&archive).unwrap();
    assert_eq!(
        request_as_criu(helper.path(), &image, &ours).unwrap(),
        "o",
        "extracted"
    );
    assert_eq!(image.stream_position().unwrap(), 0, "offset untouched");
    compare(&gnu, &ours);

    // Twice through one helper (CRIU connects once per tmpfs mount).
    fs::write(ours.join("a/small"), b"changed").unwrap();
    assert_eq!(request_as_criu(helper.path(), &image, &ours).unwrap(), "o");
    compare(&gnu, &ours);

    // Hostile: refused with the reason, nothing written.
    let bad = tmp.path().join("bad.tar.gz");
    fs::write(
        &bad,
        raw_archive(&[("./", b'5', b""), ("../escape", b'0', b"escaped")]),
    )
    .unwrap();
    let dst = tmp.path().join("bad-dst");
    fs::create_dir(&dst).unwrap();
    let reply = request_as_criu(helper.path(), &fs::File::open(&bad).unwrap(), &dst).unwrap();
    assert!(
        reply.starts_with('e') && reply.contains("../escape") && reply.contains("refused"),
        "{reply}"
    );
    assert_eq!(fs::read_dir(&dst).unwrap().count(), 0, "nothing written");
    assert!(!tmp.path().join("escape").exists());

    // Not handled here (an entry type GNU tar knows, and not gzip at all):
    // "u", and the offset is where CRIU left it, for tar to read from.
    let cont = tmp.path().join("cont.tar.gz");
    fs::write(
        &cont,
        raw_archive(&[("./", b'5', b""), ("./cont", b'7', b"contiguous")]),
    )
    .unwrap();
    let junk = tmp.path().join("junk");
    fs::write(&junk, b"not a gzip stream").unwrap();
    for input in [&cont, &junk] {
        let mut f = fs::File::open(input).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let reply = request_as_criu(helper.path(), &f, &dst).unwrap();
        assert!(reply.starts_with('u'), "{}: {reply}", input.display());
        assert_eq!(f.stream_position().unwrap(), 0);
    }

    // Stopped: the socket is gone and a connection is refused.
    let path = helper.path().to_path_buf();
    drop(helper);
    assert!(!path.exists());
    assert!(request_as_criu(&path, &image, &ours).is_err());
    image.seek(SeekFrom::Start(0)).unwrap();
}
