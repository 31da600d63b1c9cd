//! The fuzz harness: what each fuzz target does with one input. It is shared with the
//! stable replay in `restore-daemon/tests/hostile.rs` (included there by path), so that
//! libFuzzer and `cargo test` drive the same production functions the same way.
//!
//! Every method returns for any input; it panics only when an invariant fails, which is
//! a bug: the daemon's parsers must refuse bad input with an error, never panic, never
//! write past a bound, never leave anything behind in the store.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path};

use rekindle_restore_api::Manifest;
use rekindle_restore_daemon::store::archive::{self, DryRun, ARCHIVE_IMAGE_PREFIX};
use rekindle_restore_daemon::store::codec::{self, Sha256Thread, VerifyError, VerifyingReader};
use rekindle_restore_daemon::store::{manifest, validate_name, Error, Limits, NewImage, Store};
use sha2::{Digest, Sha256};

/// The targets, as named in Cargo.toml and corpus/.
pub const TARGETS: [&str; 4] = ["manifest", "archive_import", "lz4_frame", "image_name"];

/// Small bounds, so that short inputs reach them (and a frame that inflates stops soon).
pub fn limits() -> Limits {
    Limits {
        max_files: 64,
        max_total_bytes: 16 << 20,
        max_manifest_bytes: 256 << 10,
    }
}

/// No bounds at all: what the checks must survive when configured without limits.
fn unbounded() -> Limits {
    Limits {
        max_files: u32::MAX,
        max_total_bytes: u64::MAX,
        max_manifest_bytes: u64::MAX,
    }
}

pub struct Harness {
    dir: tempfile::TempDir,
    store: Store,
    hasher: Sha256Thread,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A harness with an empty store of its own (on tmpfs when there is one: import
    /// writes and fsyncs every file it accepts).
    pub fn new() -> Harness {
        let base = if Path::new("/dev/shm").is_dir() {
            Path::new("/dev/shm").to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("rekindle-fuzz-")
            .tempdir_in(base)
            .expect("create a temporary directory");
        let (store, _) = Store::open(&dir.path().join("store"), limits()).expect("open a store");
        let hasher = Sha256Thread::spawn().expect("start the SHA-256 thread");
        Harness { dir, store, hasher }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store lists nothing and holds nothing, not even a temporary directory.
    pub fn assert_store_clean(&self) {
        assert_eq!(
            self.store.list().expect("list").len(),
            0,
            "an image is listed"
        );
        let left: Vec<_> = fs::read_dir(self.store.root())
            .expect("read the store")
            .map(|e| e.expect("read the store").file_name())
            .collect();
        assert!(left.is_empty(), "left in the store: {left:?}");
    }

    /// Target `manifest`: the bytes as `manifest.json` (`manifest::parse`), under the
    /// harness's small limits, the defaults and no limits at all. What parses is whole:
    /// it validates, its paths stay inside the image, its totals add up, and it survives
    /// a JSON round trip.
    pub fn manifest(&mut self, data: &[u8]) {
        for limits in [limits(), Limits::default(), unbounded()] {
            if let Ok(m) = manifest::parse(data, &limits) {
                check_manifest(&m, &limits);
            }
        }
    }

    /// Target `archive_import`: the first byte picks the form of the rest — 2 (mod 4): a
    /// plan (see [`plan_archive`]) of the files a well-formed archive lists and holds;
    /// else even: a zstd-compressed archive as `Store::export` writes it; odd: the tar
    /// inside one (compressed here, so that mutations reach the tar and its entries
    /// rather than break zstd). The archive is read entry by entry with nothing kept
    /// (`archive::read_archive` + `DryRun`) and imported into the store
    /// (`Store::import_from`): both must come to the same verdict; a refused import
    /// leaves the store clean; an accepted one is a whole, verifiable image; a plan
    /// whose manifest validates and whose archive holds each file once is accepted.
    pub fn archive_import(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let compressed;
        let mut must_accept = false;
        let archive = if mode % 4 == 2 {
            let (archive, faithful) = plan_archive(rest);
            compressed = archive;
            must_accept = faithful;
            &compressed[..]
        } else if mode & 1 == 0 {
            rest
        } else {
            compressed = zstd::encode_all(rest, 1).expect("zstd in memory");
            &compressed[..]
        };
        let dry = archive::read_archive(archive, "fuzz", &limits(), &mut DryRun);
        let imported = self.store.import_from(archive, "fuzz", None);
        match (&dry, &imported) {
            (Ok(read), Ok(m)) => {
                assert_eq!(read.files, m.files);
                check_manifest(m, &limits());
                self.store
                    .verify(&m.name)
                    .expect("an imported image verifies");
                let dest = self.dir.path().join("extracted");
                let (_, bytes) = self.store.extract(&m.name, &dest).expect("extract");
                assert_eq!(bytes, m.total_size);
                fs::remove_dir_all(&dest).expect("remove the extracted image");
                self.store.delete(&m.name).expect("delete");
            }
            (Err(Error::Archive { error: a, .. }), Err(Error::Archive { error: b, .. })) => {
                assert_eq!(a, b, "dry run and import refuse differently");
                assert!(!must_accept, "a faithful archive is refused: {a}");
            }
            _ => panic!("dry run and import disagree: {dry:?} / {imported:?}"),
        }
        self.assert_store_clean();
    }

    /// Target `lz4_frame`: `[mode][size: u64 LE][bytes]`, through every reader of a
    /// stored frame (`VerifyingReader`, `codec::verify_frame`, the two-thread
    /// `codec::decompress_verified`), which must agree and never yield more than the
    /// size they were given. Mode 0: `bytes` is content, compressed with
    /// `codec::compress` — every reader gives it back. Mode 1: `bytes` is a frame, the
    /// size and SHA-256 those of what lz4_flex decodes from it (an honest manifest) —
    /// what the readers accept is that content. Mode 2: a frame and the declared size
    /// (a bomb bound), with a SHA-256 from the input.
    pub fn lz4_frame(&mut self, data: &[u8]) {
        if data.len() < 9 {
            return;
        }
        let mode = data[0];
        let declared = u64::from_le_bytes(data[1..9].try_into().expect("8 bytes"));
        let bytes = &data[9..];
        match mode % 3 {
            0 => {
                let (c, frame) =
                    codec::compress(bytes, bytes.len() as u64, Vec::new()).expect("compress");
                assert_eq!(c.compressed_size, frame.len() as u64);
                assert!(c.compressed_size <= codec::max_compressed_size(c.size));
                let out = self
                    .decode_all(&frame, c.size, &c.sha256)
                    .unwrap_or_else(|e| panic!("a frame codec::compress wrote fails: {e}"));
                assert!(out == bytes, "the round trip changed the content");
            }
            1 => {
                let mut content = Vec::new();
                let reference = lz4_flex::frame::FrameDecoder::new(bytes)
                    .take(limits().max_total_bytes)
                    .read_to_end(&mut content);
                if reference.is_err() {
                    // The readers decode with the same library: they refuse it too.
                    let r = self.decode_all(bytes, content.len() as u64, &sha256(&content));
                    assert!(r.is_err(), "lz4_flex refuses the frame, the readers do not");
                    return;
                }
                if let Ok(out) = self.decode_all(bytes, content.len() as u64, &sha256(&content)) {
                    assert!(out == content, "accepted, but not what the frame holds");
                }
            }
            _ => {
                let sha = fs_hex(&bytes[..bytes.len().min(32)]);
                let _ = self.decode_all(bytes, declared, &format!("{sha:0<64}"));
            }
        }
    }

    /// Decodes `frame` with every reader, checking that they agree and that none yields
    /// more than `size` bytes; the content, or why the frame was refused.
    fn decode_all(&mut self, frame: &[u8], size: u64, sha: &str) -> Result<Vec<u8>, String> {
        let mut reader = VerifyingReader::new(frame, size, sha);
        let mut out = Bounded::new(size);
        let copied = codec::copy(&mut reader, &mut out);
        let reader_result = match (copied, reader.failure()) {
            (Ok(n), None) => {
                assert!(reader.verified());
                assert_eq!(n, out.buf.len() as u64);
                Ok(out.buf)
            }
            (Err(_), Some(reason)) => Err(reason.to_string()),
            (Ok(_), Some(reason)) => panic!("a failure ({reason}) but a result"),
            // The input is in memory: only the data can be at fault.
            (Err(e), None) => panic!("an I/O error reading memory: {e}"),
        };

        let verified = codec::verify_frame(frame, size, sha);
        let mut piped = Bounded::new(size);
        let pipeline = codec::decompress_verified(frame, size, sha, &mut piped, &mut self.hasher);
        match (&reader_result, &verified, &pipeline) {
            (Ok(out), Ok(n), Ok(m)) => {
                assert_eq!(out.len() as u64, *n);
                assert_eq!(*n, *m);
                assert!(piped.buf == *out, "the pipeline wrote other bytes");
            }
            (Err(_), Err(VerifyError::Corrupt(_)), Err(VerifyError::Corrupt(_))) => {}
            _ => panic!(
                "the readers disagree: reader {:?}, verify_frame {verified:?}, pipeline {pipeline:?}",
                reader_result.as_ref().map(Vec::len)
            ),
        }
        reader_result
    }

    /// Target `image_name`: the first byte picks what the rest (as UTF-8, lossily) is.
    /// Even: an image name (`validate_name`, and the store's operations by name, which
    /// must refuse exactly what it refuses before touching the disk). Odd: a file path
    /// inside an image, as manifests and archive entries carry them
    /// (`manifest::validate_rel_path`). What passes stays inside its directory.
    pub fn image_name(&mut self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        let s = String::from_utf8_lossy(rest);
        if mode & 1 == 0 {
            let valid = validate_name(&s);
            match &valid {
                Ok(()) => {
                    assert!(s.len() <= 128 && !s.starts_with('.') && !s.contains(".."));
                    let mut c = Path::new(&*s).components();
                    assert_eq!(c.next(), Some(Component::Normal(OsStr::new(&*s))));
                    assert_eq!(c.next(), None, "{s:?} is more than one component");
                }
                Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}"),
            }
            // The store is empty: a valid name is not found, an invalid one refused.
            for r in [
                self.store.get(&s).map(drop),
                self.store.delete(&s).map(drop),
            ] {
                match (r, &valid) {
                    (Err(Error::NotFound(_)), Ok(())) => {}
                    (Err(Error::InvalidArgument(_)), Err(_)) => {}
                    (r, _) => panic!("{s:?}: {valid:?} but the store says {r:?}"),
                }
            }
            assert!(!self.store.exists(&s));
            let refused = self
                .store
                .store_dir(&s, Path::new("relative"), meta(), None);
            assert!(
                matches!(refused, Err(Error::InvalidArgument(_))),
                "{refused:?}"
            );
            self.assert_store_clean();
        } else if manifest::validate_rel_path(&s).is_ok() {
            assert_confined(&s);
            assert!(s.len() <= manifest::MAX_PATH_LEN);
            assert!(s.split('/').count() <= manifest::MAX_DEPTH);
            // Each component, stored as `<component>.lz4`, fits in a file name.
            assert!(s.split('/').all(|c| c.len() + 4 <= 255), "{s:?}");
            // The archive entry of that path names it back.
            let entry = format!("{ARCHIVE_IMAGE_PREFIX}{s}.lz4");
            assert!(entry.len() as u64 <= archive::MAX_ENTRY_NAME);
        }
    }
}

/// A tar entry with a raw GNU header (any name bytes, type and size), then `data`
/// padded to the block; a GNU long name first when the name does not fit the header.
pub fn tar_entry(tar: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, size: u64, data: &[u8]) {
    if name.len() > 100 {
        let mut long = name.to_vec();
        long.push(0);
        tar_entry(
            tar,
            b"././@LongLink",
            tar::EntryType::GNULongName,
            long.len() as u64,
            &long,
        );
    }
    let mut h = tar::Header::new_gnu();
    let n = name.len().min(100);
    h.as_gnu_mut().expect("gnu").name[..n].copy_from_slice(&name[..n]);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_cksum();
    tar.extend_from_slice(h.as_bytes());
    tar.extend_from_slice(data);
    tar.resize(tar.len().next_multiple_of(512), 0);
}

/// Builds an archive from a plan: one line per file (UTF-8, lossily), its content the
/// line itself. `path` is listed and archived; `-path` listed, not archived; `+path`
/// archived, not listed; `=path` listed and archived twice. Returns the zstd archive
/// and whether it is faithful (every line plain, and the manifest valid).
pub fn plan_archive(plan: &[u8]) -> (Vec<u8>, bool) {
    let text = String::from_utf8_lossy(plan);
    let mut listed = Vec::new();
    let mut archived = Vec::new();
    let mut plain = true;
    for line in text.lines().take(limits().max_files as usize + 1) {
        let (op, path) = match line.as_bytes().first() {
            Some(b'-' | b'+' | b'=') => (line.as_bytes()[0], &line[1..]),
            _ => (b' ', line),
        };
        let frame = small_frame(path.as_bytes());
        let entry = rekindle_restore_api::FileEntry {
            path: path.to_string(),
            size: path.len() as u64,
            compressed_size: frame.len() as u64,
            sha256: sha256(path.as_bytes()),
            compressed_sha256: Some(sha256(&frame)),
        };
        plain &= op == b' ';
        if op != b'+' {
            listed.push(entry);
        }
        if op != b'-' {
            archived.push((path.to_string(), frame.clone()));
        }
        if op == b'=' {
            archived.push((path.to_string(), frame));
        }
    }
    let mut m = Manifest {
        format: rekindle_restore_api::MANIFEST_FORMAT,
        name: "fuzz-plan".into(),
        created_unix: 0,
        criu_version: None,
        kernel_release: "6.1.0-fuzz".into(),
        spec_digest: None,
        labels: Default::default(),
        file_count: 0,
        total_size: 0,
        total_compressed_size: 0,
        files: listed,
    };
    manifest::fill_totals(&mut m);
    let faithful = plain && manifest::validate(&m, &limits()).is_ok();
    let json = serde_json::to_vec(&m).expect("json");
    let mut tar = Vec::new();
    let regular = tar::EntryType::Regular;
    tar_entry(
        &mut tar,
        b"manifest.json",
        regular,
        json.len() as u64,
        &json,
    );
    for (path, frame) in archived {
        let name = format!("{ARCHIVE_IMAGE_PREFIX}{path}.lz4");
        tar_entry(
            &mut tar,
            name.as_bytes(),
            regular,
            frame.len() as u64,
            &frame,
        );
    }
    tar.extend_from_slice(&[0; 1024]);
    (zstd::encode_all(&tar[..], 1).expect("zstd"), faithful)
}

/// An LZ4 frame of `data` as the store writes them but for 64 KiB blocks: far cheaper
/// to make than `codec::compress`'s 4 MiB ones (which the readers do not require).
fn small_frame(data: &[u8]) -> Vec<u8> {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true)
        .content_size(Some(data.len() as u64));
    let mut enc = FrameEncoder::with_frame_info(info, Vec::new());
    enc.write_all(data).expect("lz4 in memory");
    enc.finish().expect("lz4 in memory")
}

/// What a manifest that parsed must be.
fn check_manifest(m: &Manifest, limits: &Limits) {
    manifest::validate(m, limits).expect("a parsed manifest validates");
    validate_name(&m.name).expect("a parsed manifest has a valid name");
    assert!(m.files.len() as u64 <= u64::from(limits.max_files));
    for f in &m.files {
        assert_confined(&f.path);
        assert!(f.size <= limits.max_total_bytes);
        assert!(f.compressed_size <= codec::max_compressed_size(f.size));
    }
    let mut again = m.clone();
    manifest::fill_totals(&mut again);
    assert_eq!(&again, m, "the totals do not add up");
    let json = serde_json::to_vec(m).expect("encode");
    let no_size_limit = Limits {
        max_manifest_bytes: u64::MAX,
        ..*limits
    };
    assert_eq!(&manifest::parse(&json, &no_size_limit).expect("reparse"), m);
}

/// A relative path with only normal components: joined to a directory, it stays inside.
fn assert_confined(rel: &str) {
    assert!(!rel.is_empty() && !rel.contains('\0'), "{rel:?}");
    let p = Path::new(rel);
    assert!(
        p.components().all(|c| matches!(c, Component::Normal(_))),
        "{rel:?} escapes"
    );
    let root = Path::new("/store/image");
    let joined = root.join(p);
    assert!(
        joined.starts_with(root) && joined != root,
        "{rel:?} escapes"
    );
}

/// Collects what is written; panics if more than `limit` bytes are: the readers must
/// never write past the size the manifest gives.
struct Bounded {
    buf: Vec<u8>,
    limit: u64,
}

impl Bounded {
    fn new(limit: u64) -> Bounded {
        Bounded {
            buf: Vec::new(),
            limit,
        }
    }
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let after = self.buf.len() as u64 + data.len() as u64;
        assert!(
            after <= self.limit,
            "wrote {after} bytes, the bound is {}",
            self.limit
        );
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn sha256(data: &[u8]) -> String {
    fs_hex(&Sha256::digest(data))
}

fn fs_hex(b: &[u8]) -> String {
    rekindle_restore_daemon::store::fsutil::hex(b)
}

fn meta() -> NewImage {
    NewImage {
        kernel_release: "6.1.0-fuzz".into(),
        ..NewImage::default()
    }
}

/// Page-like bytes (zero runs, repeated patterns, noise), as in the store's tests.
fn pages(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            match (i / 4096) % 4 {
                0 => 0,
                1 => (i % 97) as u8,
                _ => (x >> 16) as u8,
            }
        })
        .collect()
}

/// The seed corpus, `(target, file name, bytes)`: made from a real image that the store
/// writes and exports (`cargo test -p rekindle-restore-daemon --test hostile --
/// --ignored write_seed_corpus` writes it to corpus/).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    let deep = src.join("sub").join("d".repeat(100));
    fs::create_dir_all(&deep).expect("mkdir");
    let content = [
        ("inventory.img", b"inventory".to_vec()),
        ("pages-1.img", pages(12 << 10, 1)),
        ("pagemap-1.img", pages(300, 2)),
        ("empty.img", Vec::new()),
    ];
    for (name, bytes) in &content {
        fs::write(src.join(name), bytes).expect("write");
    }
    fs::write(deep.join("core-1.img"), pages(100, 3)).expect("write");
    let (store, _) = Store::open(&dir.path().join("store"), limits()).expect("store");
    let nested = store
        .store_dir("fn-deep", &src, meta(), None)
        .expect("store");
    fs::remove_dir_all(src.join("sub")).expect("rm");
    let m = store.store_dir("fn-1", &src, meta(), None).expect("store");

    let mut out = Vec::new();
    let manifest_json = fs::read(store.root().join("fn-1").join("manifest.json")).expect("read");
    out.push(("manifest", "seed-real.json".into(), manifest_json));
    out.push((
        "manifest",
        "seed-nested.json".into(),
        serde_json::to_vec(&nested).expect("json"),
    ));

    for (name, seed) in [("fn-1", "small"), ("fn-deep", "long-name")] {
        let archive = dir.path().join(format!("{name}.tar.zst"));
        store.export(name, &archive, 3, None).expect("export");
        let zst = fs::read(&archive).expect("read");
        let tar = zstd::decode_all(&zst[..]).expect("unzstd");
        out.push((
            "archive_import",
            format!("seed-{seed}-zstd"),
            [&[0u8][..], &zst].concat(),
        ));
        out.push((
            "archive_import",
            format!("seed-{seed}-tar"),
            [&[1u8][..], &tar].concat(),
        ));
    }

    out.push((
        "archive_import",
        "seed-plan".into(),
        b"\x02inventory.img\npages-1.img\nsub/dir/core-1.img\n".to_vec(),
    ));
    out.push((
        "archive_import",
        "seed-plan-unfaithful".into(),
        b"\x02inventory.img\n-missing.img\n+extra.img\n=twice.img\n".to_vec(),
    ));

    let frame_of = |path: &str| {
        let e = m.files.iter().find(|f| f.path == path).expect("listed");
        let frame = fs::read(store.root().join("fn-1").join(format!("{path}.lz4"))).expect("read");
        (e.size, frame)
    };
    let with =
        |mode: u8, size: u64, bytes: &[u8]| [&[mode][..], &size.to_le_bytes(), bytes].concat();
    let (size, frame) = frame_of("pages-1.img");
    out.push((
        "lz4_frame",
        "seed-pages-honest".into(),
        with(1, size, &frame),
    ));
    out.push((
        "lz4_frame",
        "seed-pages-declared".into(),
        with(2, size, &frame),
    ));
    let (size, frame) = frame_of("empty.img");
    out.push((
        "lz4_frame",
        "seed-empty-honest".into(),
        with(1, size, &frame),
    ));
    out.push((
        "lz4_frame",
        "seed-content".into(),
        with(0, 0, &pages(2000, 4)),
    ));
    // 256 KiB of zeros in a frame of about 1 KiB, declared as 4 KiB.
    let zeros = vec![0u8; 256 << 10];
    let (_, bomb) = codec::compress(&zeros[..], zeros.len() as u64, Vec::new()).expect("lz4");
    out.push(("lz4_frame", "seed-bomb".into(), with(2, 4096, &bomb)));

    for (mode, name, s) in [
        (0u8, "seed-name", "fn-1".to_string()),
        (0, "seed-name-longest", "x".repeat(128)),
        (0, "seed-name-traversal", "../fn".into()),
        (1, "seed-path", "sub/dir/pages-1.img".into()),
        (1, "seed-path-traversal", "sub/../../etc/passwd".into()),
    ] {
        out.push((
            "image_name",
            name.into(),
            [&[mode][..], s.as_bytes()].concat(),
        ));
    }
    out
}
