//! The store's own tests: round trips, atomicity, and everything an untrusted image or
//! archive can try.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rekindle_restore_api::ErrorCode;

use super::archive::{ARCHIVE_IMAGE_PREFIX, ARCHIVE_MANIFEST};
use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    out: PathBuf,
    store: Store,
}

/// Page-like bytes: zero runs, repeated patterns, noise.
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

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let src = dir.path().join("src");
    let out = dir.path().join("out");
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(src.join("inventory.img"), b"inventory").unwrap();
    fs::write(src.join("pages-1.img"), pages(3 << 20, 1)).unwrap();
    fs::write(src.join("pagemap-1.img"), pages(5000, 2)).unwrap();
    fs::write(src.join("descriptors.json"), b"[\"/dev/null\"]").unwrap();
    fs::write(src.join("empty.img"), b"").unwrap();
    let (store, cleaned) = Store::open(&root, Limits::default()).unwrap();
    assert_eq!(cleaned, 0);
    Fixture {
        _dir: dir,
        root,
        src,
        out,
        store,
    }
}

fn meta() -> NewImage {
    NewImage {
        labels: BTreeMap::from([("function".to_string(), "hello".to_string())]),
        spec_digest: Some("sha256:0123".into()),
        criu_version: Some("4.2.1".into()),
        kernel_release: "6.18.0-test".into(),
    }
}

fn store_one(f: &Fixture, name: &str) -> Manifest {
    f.store.store_dir(name, &f.src, meta(), None).unwrap()
}

fn assert_same_tree(a: &Path, b: &Path) {
    let mut names_a: Vec<_> = fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b);
    for n in names_a {
        assert_eq!(
            fs::read(a.join(&n)).unwrap(),
            fs::read(b.join(&n)).unwrap(),
            "{n:?}"
        );
    }
}

fn corrupt_of(e: Error) -> (String, String) {
    match e {
        Error::Corrupt { file, reason, .. } => (file, reason),
        Error::Archive { error, .. } => (error.entry, error.kind.to_string()),
        other => panic!("expected corrupt, got {other:?}"),
    }
}

#[test]
fn store_then_extract_gives_back_every_byte() {
    let f = fixture();
    let m = store_one(&f, "fn-1");
    assert_eq!(m.file_count, 5);
    assert_eq!(m.total_size, (3 << 20) + 5000 + 9 + 13);
    assert!(m.total_compressed_size < m.total_size);
    assert_eq!(m.criu_version.as_deref(), Some("4.2.1"));
    assert_eq!(m.labels["function"], "hello");
    let paths: Vec<_> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "descriptors.json",
            "empty.img",
            "inventory.img",
            "pagemap-1.img",
            "pages-1.img"
        ]
    );
    assert!(f.root.join("fn-1/pages-1.img.lz4").is_file());
    assert_eq!(f.store.get("fn-1").unwrap(), m);

    let dest = f.out.join("fn-1");
    let (m2, bytes) = f.store.extract("fn-1", &dest).unwrap();
    assert_eq!(m2, m);
    assert_eq!(bytes, m.total_size);
    assert_same_tree(&f.src, &dest);
    // The extraction's temporary directory is gone.
    assert_eq!(fs::read_dir(&f.out).unwrap().count(), 1);
    f.store.verify("fn-1").unwrap();
}

#[test]
fn nested_directories_are_kept() {
    let f = fixture();
    fs::create_dir_all(f.src.join("sub/deeper")).unwrap();
    fs::write(f.src.join("sub/deeper/x.img"), b"xx").unwrap();
    let m = store_one(&f, "nested");
    assert!(m.files.iter().any(|e| e.path == "sub/deeper/x.img"));
    let dest = f.out.join("nested");
    f.store.extract("nested", &dest).unwrap();
    assert_eq!(fs::read(dest.join("sub/deeper/x.img")).unwrap(), b"xx");
}

#[test]
fn a_replace_exchanges_the_image_and_a_failed_one_keeps_the_old() {
    let f = fixture();
    store_one(&f, "fn-1");
    // Nothing of that name yet: a replace is a store.
    f.store.replace_dir("fn-2", &f.src, meta(), None).unwrap();
    assert!(f.store.exists("fn-2"));

    // A newer checkpoint: another pages file, one file more.
    fs::write(f.src.join("pages-1.img"), pages(1 << 20, 7)).unwrap();
    fs::write(f.src.join("core-2.img"), b"core").unwrap();
    let m = f.store.replace_dir("fn-1", &f.src, meta(), None).unwrap();
    assert_eq!(f.store.get("fn-1").unwrap(), m);
    let dest = f.out.join("fn-1");
    f.store.extract("fn-1", &dest).unwrap();
    assert_same_tree(&f.src, &dest);
    // The old image is gone, not left aside in the store.
    let left: Vec<_> = fs::read_dir(&f.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "fn-1" && n != "fn-2")
        .collect();
    assert!(left.is_empty(), "left in the store: {left:?}");

    // A replace whose source is bad fails and changes nothing.
    fs::write(f.src.join("bad"), b"").unwrap();
    symlink("/etc/passwd", f.src.join("link.img")).unwrap();
    let e = f
        .store
        .replace_dir("fn-1", &f.src, meta(), None)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
    assert_eq!(f.store.get("fn-1").unwrap(), m);
    f.store.verify("fn-1").unwrap();
}

#[test]
fn names_already_taken_and_bad_names_are_refused() {
    let f = fixture();
    store_one(&f, "fn-1");
    let e = f.store.store_dir("fn-1", &f.src, meta(), None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    for bad in ["../x", "a/b", ".x", ""] {
        let e = f.store.store_dir(bad, &f.src, meta(), None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad}");
        assert_eq!(
            f.store.get(bad).unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
    }
    assert_eq!(f.store.get("nope").unwrap_err().code(), ErrorCode::NotFound);
    assert_eq!(
        f.store.delete("nope").unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[test]
fn special_files_in_the_source_are_refused() {
    let f = fixture();
    symlink("/etc/passwd", f.src.join("link.img")).unwrap();
    let e = f.store.store_dir("fn-1", &f.src, meta(), None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(e.to_string().contains("is a symlink"), "{e}");
    fs::remove_file(f.src.join("link.img")).unwrap();
    nix::unistd::mkfifo(&f.src.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let e = f.store.store_dir("fn-1", &f.src, meta(), None).unwrap_err();
    assert!(e.to_string().contains("is a FIFO"), "{e}");
    fs::remove_file(f.src.join("fifo")).unwrap();
    // The source dir itself may not be a symlink either.
    let link = f.out.join("link");
    symlink(&f.src, &link).unwrap();
    let e = f.store.store_dir("fn-1", &link, meta(), None).unwrap_err();
    assert!(e.to_string().contains("not a directory"), "{e}");
    // Nothing half-written is left.
    assert_eq!(f.store.list().unwrap().len(), 0);
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0);
}

#[test]
fn bounds_on_the_source_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("f{i}")), vec![1u8; 100]).unwrap();
    }
    let few = Limits {
        max_files: 4,
        ..Limits::default()
    };
    let (store, _) = Store::open(&dir.path().join("s1"), few).unwrap();
    let e = store.store_dir("a", &src, meta(), None).unwrap_err();
    assert!(e.to_string().contains("more than 4 files"), "{e}");
    let small = Limits {
        max_total_bytes: 450,
        ..Limits::default()
    };
    let (store, _) = Store::open(&dir.path().join("s2"), small).unwrap();
    let e = store.store_dir("a", &src, meta(), None).unwrap_err();
    assert!(e.to_string().contains("more than 450 bytes"), "{e}");
}

#[test]
fn a_foreign_owner_is_refused_for_non_root_clients() {
    let f = fixture();
    // The files belong to root (the test runs as root); a client of uid 1234 may not
    // have them stored.
    let e = f
        .store
        .store_dir("fn-1", &f.src, meta(), Some(1234))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert!(
        e.to_string().contains("not to the requesting uid 1234"),
        "{e}"
    );
}

#[test]
fn a_flipped_byte_is_corrupt_and_names_the_file() {
    let f = fixture();
    store_one(&f, "fn-1");
    let stored = f.root.join("fn-1/pages-1.img.lz4");
    let mut bytes = fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&stored, &bytes).unwrap();
    let dest = f.out.join("x");
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &dest).unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(!reason.is_empty());
    assert!(!dest.exists(), "a failed extraction leaves nothing");
    assert_eq!(fs::read_dir(&f.out).unwrap().count(), 0);
    let (file, _) = corrupt_of(f.store.verify("fn-1").unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
}

#[test]
fn restores_check_the_stored_frame_s_digest_and_older_images_their_content() {
    let f = fixture();
    let mut m = store_one(&f, "fn-1");
    let written = m.files.clone();
    for e in &m.files {
        let frame = fs::read(f.root.join(format!("fn-1/{}.lz4", e.path))).unwrap();
        let want = crate::store::fsutil::hex(&<sha2::Sha256 as sha2::Digest>::digest(&frame));
        assert_eq!(
            e.compressed_sha256.as_deref(),
            Some(want.as_str()),
            "{}",
            e.path
        );
    }
    let write = |m: &Manifest| {
        fs::write(
            f.root.join("fn-1/manifest.json"),
            serde_json::to_vec(m).unwrap(),
        )
        .unwrap()
    };
    // A frame digest that does not match: the large file (checked by its frame) and the
    // whole-image verification both say so.
    let pages = m
        .files
        .iter()
        .position(|e| e.path == "pages-1.img")
        .unwrap();
    m.files[pages].compressed_sha256 = Some("0".repeat(64));
    write(&m);
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("x")).unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(reason.contains("stored frame"), "{reason}");
    let (file, reason) = corrupt_of(f.store.verify("fn-1").unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(reason.contains("stored frame"), "{reason}");
    // A small file (decompressed without the pipe) is held to its frame's digest too:
    // LZ4 is not canonical, and a frame changed so that it decodes to the same content
    // (a match offset moved onto another run of equal bytes) must not pass.
    m.files[pages].compressed_sha256 = written[pages].compressed_sha256.clone();
    let small = m
        .files
        .iter()
        .position(|e| e.path == "pagemap-1.img")
        .unwrap();
    assert!(m.files[small].size < codec::PIPE_MIN_SIZE);
    m.files[small].compressed_sha256 = Some("0".repeat(64));
    write(&m);
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("s")).unwrap_err());
    assert_eq!(file, "pagemap-1.img.lz4");
    assert!(reason.contains("stored frame"), "{reason}");
    // An image stored before frame digests: restored by its content's digest.
    for e in &mut m.files {
        e.compressed_sha256 = None;
    }
    write(&m);
    let dest = f.out.join("y");
    f.store.extract("fn-1", &dest).unwrap();
    assert_same_tree(&f.src, &dest);
    m.files[pages].sha256 = "f".repeat(64);
    write(&m);
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("z")).unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(reason.contains("SHA-256 mismatch"), "{reason}");
}

#[test]
fn a_truncated_file_is_corrupt() {
    let f = fixture();
    let m = store_one(&f, "fn-1");
    let stored = f.root.join("fn-1/pages-1.img.lz4");
    let len = fs::metadata(&stored).unwrap().len();
    fs::File::options()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("x")).unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(reason.contains("truncated"), "{reason}");

    // Also when the manifest is made to agree with the truncated length: the LZ4 frame
    // itself is cut short.
    let mut m2 = m.clone();
    let entry = m2
        .files
        .iter_mut()
        .find(|e| e.path == "pages-1.img")
        .unwrap();
    entry.compressed_size = len / 2;
    manifest::fill_totals(&mut m2);
    fs::write(
        f.root.join("fn-1/manifest.json"),
        serde_json::to_vec(&m2).unwrap(),
    )
    .unwrap();
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("y")).unwrap_err());
    assert_eq!(file, "pages-1.img.lz4");
    assert!(
        reason.contains("cut short") || reason.contains("truncated"),
        "{reason}"
    );
}

#[test]
fn a_tampered_manifest_is_corrupt() {
    let f = fixture();
    let mut m = store_one(&f, "fn-1");
    // A manifest whose checksum does not match the data.
    let entry = m
        .files
        .iter_mut()
        .find(|e| e.path == "inventory.img")
        .unwrap();
    entry.sha256 = "f".repeat(64);
    fs::write(
        f.root.join("fn-1/manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("x")).unwrap_err());
    assert_eq!(file, "inventory.img.lz4");
    assert!(reason.contains("SHA-256 mismatch"), "{reason}");

    // A manifest that is not valid at all.
    fs::write(f.root.join("fn-1/manifest.json"), b"{\"format\": 1}").unwrap();
    let (file, _) = corrupt_of(f.store.get("fn-1").unwrap_err());
    assert_eq!(file, "manifest.json");
    // ... is left out of the listing.
    assert!(f.store.list().unwrap().is_empty());

    // A manifest whose name is another image's.
    let mut other = store_one(&f, "fn-2");
    other.name = "fn-3".into();
    fs::write(
        f.root.join("fn-2/manifest.json"),
        serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    let (file, reason) = corrupt_of(f.store.get("fn-2").unwrap_err());
    assert_eq!(file, "manifest.json");
    assert!(reason.contains("fn-3"), "{reason}");
}

#[test]
fn a_decompression_bomb_stops_at_the_manifest_size() {
    let f = fixture();
    let mut m = store_one(&f, "fn-1");
    // Replace inventory.img.lz4 (9 bytes originally) with a tiny frame of 256 MiB of zeros.
    let zeros = vec![0u8; 256 << 20];
    let (_, bomb) = codec::compress(&zeros[..], zeros.len() as u64, Vec::new()).unwrap();
    drop(zeros);
    assert!(bomb.len() < 2 << 20);
    fs::write(f.root.join("fn-1/inventory.img.lz4"), &bomb).unwrap();
    let entry = m
        .files
        .iter_mut()
        .find(|e| e.path == "inventory.img")
        .unwrap();
    entry.compressed_size = bomb.len() as u64;
    entry.size = 9;
    manifest::fill_totals(&mut m);
    // compressed_size > max_compressed_size(9): the manifest itself is refused ...
    fs::write(
        f.root.join("fn-1/manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let (file, reason) = corrupt_of(f.store.get("fn-1").unwrap_err());
    assert_eq!(file, "manifest.json");
    assert!(reason.contains("impossible"), "{reason}");
    // ... and one that claims a plausible size still stops right past it.
    let entry = m
        .files
        .iter_mut()
        .find(|e| e.path == "inventory.img")
        .unwrap();
    entry.size = bomb.len() as u64;
    manifest::fill_totals(&mut m);
    fs::write(
        f.root.join("fn-1/manifest.json"),
        serde_json::to_vec(&m).unwrap(),
    )
    .unwrap();
    let (file, reason) = corrupt_of(f.store.extract("fn-1", &f.out.join("x")).unwrap_err());
    assert_eq!(file, "inventory.img.lz4");
    assert!(reason.contains("decompression bomb"), "{reason}");
    assert_eq!(fs::read_dir(&f.out).unwrap().count(), 0);
}

#[test]
fn leftovers_are_not_listed_and_are_cleaned_at_open() {
    let f = fixture();
    store_one(&f, "fn-1");
    // What a crash in the middle of a store or a delete leaves.
    let half = f.root.join(".tmp-fn-2-0123abcd");
    fs::create_dir(&half).unwrap();
    fs::write(half.join("pages-1.img.lz4"), b"partial").unwrap();
    let trash = f.root.join(".trash-fn-0-0123abcd");
    fs::create_dir(&trash).unwrap();
    // An image directory without a manifest (never committed that way, but possible by
    // hand) is not an image either.
    fs::create_dir(f.root.join("fn-4")).unwrap();
    let names: Vec<_> = f
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["fn-1"]);
    assert!(!f.store.exists("fn-2"));
    let (store, cleaned) = Store::open(&f.root, Limits::default()).unwrap();
    assert_eq!(cleaned, 2);
    assert!(!half.exists() && !trash.exists());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn delete_removes_everything() {
    let f = fixture();
    let m = store_one(&f, "fn-1");
    let freed = f.store.delete("fn-1").unwrap();
    assert!(freed >= m.total_compressed_size, "{freed}");
    assert!(!f.root.join("fn-1").exists());
    assert_eq!(fs::read_dir(&f.root).unwrap().count(), 0);
}

#[test]
fn last_used_follows_touch() {
    let f = fixture();
    let m = store_one(&f, "fn-1");
    let then = UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    f.store.set_last_used("fn-1", then).unwrap();
    assert_eq!(f.store.last_used(&m), 1_000_000);
    f.store.touch("fn-1").unwrap();
    assert!(f.store.last_used(&m) >= now_unix() - 5);
}

#[test]
fn export_then_import_gives_the_same_manifest_and_bytes() {
    let f = fixture();
    let m = store_one(&f, "fn-1");
    let archive = f.out.join("fn-1.tar.zst");
    let (_, bytes) = f.store.export("fn-1", &archive, 3, None).unwrap();
    assert_eq!(bytes, fs::metadata(&archive).unwrap().len());
    // Exporting over an existing file is refused.
    let e = f.store.export("fn-1", &archive, 3, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    // Importing under the same name is refused while it exists ...
    let e = f.store.import(&archive, None, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    // ... and gives the same manifest once it is gone.
    f.store.delete("fn-1").unwrap();
    let imported = f.store.import(&archive, None, None).unwrap();
    assert_eq!(imported, m);
    // Under another name: the same but for the name.
    let renamed = f.store.import(&archive, Some("fn-copy"), None).unwrap();
    assert_eq!(renamed.name, "fn-copy");
    assert_eq!(renamed.files, m.files);
    let dest = f.out.join("extracted");
    f.store.extract("fn-copy", &dest).unwrap();
    assert_same_tree(&f.src, &dest);
}

#[test]
fn export_leaves_only_the_archive_and_never_overwrites() {
    use std::os::unix::fs::MetadataExt;
    let f = fixture();
    store_one(&f, "fn-1");
    let names = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&f.out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let archive = f.out.join("fn-1.tar.zst");
    let (_, bytes) = f.store.export("fn-1", &archive, 3, None).unwrap();
    // Only the archive: no temporary file beside it.
    assert_eq!(names(), ["fn-1.tar.zst"]);
    let meta = fs::metadata(&archive).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), bytes);
    assert_eq!(meta.mode() & 0o777, 0o600);
    // It imports.
    let imported = f.store.import(&archive, Some("fn-2"), None).unwrap();
    assert_eq!(imported.files, f.store.get("fn-1").unwrap().files);

    // An existing file is refused, and left as it was, with nothing beside it.
    let other = f.out.join("other");
    fs::write(&other, b"mine").unwrap();
    for dest in [&archive, &other] {
        let before = fs::read(dest).unwrap();
        let e = f.store.export("fn-1", dest, 3, None).unwrap_err();
        assert_eq!(e.code(), ErrorCode::AlreadyExists, "{e}");
        assert!(
            e.to_string().contains(&format!(
                "{} exists; export writes a new file",
                dest.display()
            )),
            "{e}"
        );
        assert_eq!(fs::read(dest).unwrap(), before);
    }
    assert_eq!(names(), ["fn-1.tar.zst", "other"]);
    // So is a symlink, even a dangling one (not followed).
    let link = f.out.join("link");
    symlink(f.out.join("nowhere"), &link).unwrap();
    let e = f.store.export("fn-1", &link, 3, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists, "{e}");
    assert!(!f.out.join("nowhere").exists());
    assert_eq!(names(), ["fn-1.tar.zst", "link", "other"]);
}

/// Builds a zstd tar with a valid manifest for `files` and then the entries `extra`
/// writes (raw headers, so that it can hold what tar-rs would refuse to write).
fn hostile_archive(
    f: &Fixture,
    name: &str,
    write: impl FnOnce(&mut tar::Builder<zstd::Encoder<'static, fs::File>>, &Manifest),
) -> PathBuf {
    hostile_archive_with(f, name, |_| {}, write)
}

/// Like [`hostile_archive`], with the manifest changed by `tamper` before it is written.
fn hostile_archive_with(
    f: &Fixture,
    name: &str,
    tamper: impl FnOnce(&mut Manifest),
    write: impl FnOnce(&mut tar::Builder<zstd::Encoder<'static, fs::File>>, &Manifest),
) -> PathBuf {
    let mut m = store_one(f, name);
    // The stored frames, for writers that want genuine entries.
    for e in &m.files {
        let frame = fs::read(f.root.join(name).join(format!("{}.lz4", e.path))).unwrap();
        fs::write(f.out.join(format!("{name}-{}.lz4", e.path)), frame).unwrap();
    }
    f.store.delete(name).unwrap();
    tamper(&mut m);
    let path = f.out.join(format!("{name}.tar.zst"));
    let file = fs::File::create(&path).unwrap();
    let mut tar = tar::Builder::new(zstd::Encoder::new(file, 3).unwrap());
    let json = serde_json::to_vec(&m).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    tar.append_data(&mut h, ARCHIVE_MANIFEST, &json[..])
        .unwrap();
    write(&mut tar, &m);
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path
}

/// Appends an entry with a raw name (bypassing tar-rs's path checks).
fn raw_entry(
    tar: &mut tar::Builder<zstd::Encoder<'static, fs::File>>,
    name: &str,
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_old();
    {
        let raw = h.as_old_mut();
        raw.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            raw.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

fn import_error(f: &Fixture, archive: &Path) -> (String, String) {
    let e = f.store.import(archive, None, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Corrupt, "{e}");
    // Nothing was stored, nothing half-written is left.
    assert!(f.store.list().unwrap().is_empty());
    assert!(fs::read_dir(&f.root).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
    corrupt_of(e)
}

#[test]
fn import_refuses_path_traversal() {
    let f = fixture();
    for (i, bad) in [
        "image/../../etc/evil",
        "/etc/evil",
        "image//evil",
        "../evil",
    ]
    .iter()
    .enumerate()
    {
        let archive = hostile_archive(&f, &format!("t{i}"), |tar, _| {
            raw_entry(tar, bad, tar::EntryType::Regular, b"evil", None);
        });
        let (file, _) = import_error(&f, &archive);
        assert_eq!(&file, bad);
    }
    assert!(!Path::new("/etc/evil").exists());
}

#[test]
fn import_refuses_links_and_devices() {
    let f = fixture();
    for (i, kind) in [
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Directory,
    ]
    .into_iter()
    .enumerate()
    {
        let archive = hostile_archive(&f, &format!("l{i}"), |tar, _| {
            raw_entry(tar, "image/pages-1.img.lz4", kind, b"", Some("/etc/shadow"));
        });
        let (file, reason) = import_error(&f, &archive);
        assert_eq!(file, "image/pages-1.img.lz4");
        assert!(reason.contains("only regular files"), "{reason}");
    }
}

fn genuine_entries(
    f: &Fixture,
    name: &str,
    tar: &mut tar::Builder<zstd::Encoder<'static, fs::File>>,
    m: &Manifest,
) {
    for e in &m.files {
        let frame = fs::read(f.out.join(format!("{name}-{}.lz4", e.path))).unwrap();
        raw_entry(
            tar,
            &format!("{ARCHIVE_IMAGE_PREFIX}{}.lz4", e.path),
            tar::EntryType::Regular,
            &frame,
            None,
        );
    }
}

#[test]
fn import_refuses_wrong_sizes_checksums_and_missing_files() {
    let f = fixture();
    // A manifest whose content SHA-256, or frame SHA-256 (what restores check), does
    // not match the (genuine) frame.
    type Tamper = fn(&mut FileEntry);
    let tampers: [(&str, Tamper, &str); 2] = [
        ("sha", |e| e.sha256 = "0".repeat(64), "SHA-256 mismatch"),
        (
            "framesha",
            |e| e.compressed_sha256 = Some("0".repeat(64)),
            "compressed_sha256",
        ),
    ];
    for (tag, tamper, says) in tampers {
        let archive = hostile_archive_with(
            &f,
            tag,
            |m| {
                tamper(
                    m.files
                        .iter_mut()
                        .find(|e| e.path == "pages-1.img")
                        .unwrap(),
                )
            },
            |tar, m| genuine_entries(&f, tag, tar, m),
        );
        let (file, reason) = import_error(&f, &archive);
        assert_eq!(file, "image/pages-1.img.lz4");
        assert!(reason.contains(says), "{reason}");
    }

    // A frame with a flipped byte (same size).
    let archive = hostile_archive(&f, "flip", |tar, m| {
        for e in &m.files {
            let mut frame = fs::read(f.out.join(format!("flip-{}.lz4", e.path))).unwrap();
            if e.path == "pages-1.img" {
                let mid = frame.len() / 2;
                frame[mid] ^= 4;
            }
            raw_entry(
                tar,
                &format!("{ARCHIVE_IMAGE_PREFIX}{}.lz4", e.path),
                tar::EntryType::Regular,
                &frame,
                None,
            );
        }
    });
    let (file, _) = import_error(&f, &archive);
    assert_eq!(file, "image/pages-1.img.lz4");

    // An entry bigger than the manifest says.
    let archive = hostile_archive(&f, "size", |tar, _| {
        raw_entry(
            tar,
            "image/inventory.img.lz4",
            tar::EntryType::Regular,
            &[0u8; 4096],
            None,
        );
    });
    let (file, reason) = import_error(&f, &archive);
    assert_eq!(file, "image/inventory.img.lz4");
    assert!(
        reason.contains("is 4096 bytes, the manifest says"),
        "{reason}"
    );

    // A decompression bomb: a frame that expands far beyond the manifest's size.
    let zeros = vec![0u8; 64 << 20];
    let (_, bomb) = codec::compress(&zeros[..], zeros.len() as u64, Vec::new()).unwrap();
    drop(zeros);
    let bomb_len = bomb.len() as u64;
    let archive = hostile_archive_with(
        &f,
        "bomb",
        |m| {
            let e = m
                .files
                .iter_mut()
                .find(|e| e.path == "pages-1.img")
                .unwrap();
            e.compressed_size = bomb_len;
            manifest::fill_totals(m);
        },
        |tar, _| {
            raw_entry(
                tar,
                "image/pages-1.img.lz4",
                tar::EntryType::Regular,
                &bomb,
                None,
            );
        },
    );
    let (file, reason) = import_error(&f, &archive);
    assert_eq!(file, "image/pages-1.img.lz4");
    assert!(reason.contains("decompression bomb"), "{reason}");

    // A file the manifest lists but the archive lacks.
    let archive = hostile_archive(&f, "missing", |_, _| {});
    let (file, reason) = import_error(&f, &archive);
    assert!(file.starts_with("image/"), "{file}");
    assert!(reason.contains("missing"), "{reason}");

    // An entry the manifest does not list; one that is not a frame.
    let archive = hostile_archive(&f, "extra", |tar, _| {
        raw_entry(
            tar,
            "image/extra.img.lz4",
            tar::EntryType::Regular,
            b"x",
            None,
        );
    });
    let (_, reason) = import_error(&f, &archive);
    assert!(reason.contains("not listed"), "{reason}");
    let archive = hostile_archive(&f, "raw", |tar, _| {
        raw_entry(
            tar,
            "image/inventory.img",
            tar::EntryType::Regular,
            b"inventory",
            None,
        );
    });
    let (_, reason) = import_error(&f, &archive);
    assert!(reason.contains("unexpected entry"), "{reason}");
}

#[test]
fn import_refuses_garbage_and_bad_manifests() {
    let f = fixture();
    let junk = f.out.join("junk.tar.zst");
    fs::write(&junk, b"this is not zstd").unwrap();
    import_error(&f, &junk);

    // A manifest over the file-count bound.
    let archive = hostile_archive(&f, "bounds", |_, _| {});
    let few = Limits {
        max_files: 2,
        ..Limits::default()
    };
    let (store, _) = Store::open(&f.root, few).unwrap();
    let e = store.import(&archive, None, None).unwrap_err();
    let (file, reason) = corrupt_of(e);
    assert_eq!(file, "manifest.json");
    assert!(reason.contains("more than the limit of 2"), "{reason}");

    // A symlink instead of the archive.
    let link = f.out.join("link.tar.zst");
    symlink(&archive, &link).unwrap();
    let e = f.store.import(&link, None, None).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");
}

#[test]
fn a_long_path_survives_export_and_import() {
    // Past tar's 100-byte name field: export writes a GNU long name, which import reads
    // itself (bounded) since it no longer lets tar-rs process extension entries.
    let f = fixture();
    let deep = f.src.join("d".repeat(90)).join("e".repeat(90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("pages-2.img"), pages(70_000, 3)).unwrap();
    let m = store_one(&f, "long");
    assert!(m.files.iter().any(|e| e.path.len() > 180));
    let archive = f.out.join("long.tar.zst");
    f.store.export("long", &archive, 3, None).unwrap();
    f.store.delete("long").unwrap();
    assert_eq!(f.store.import(&archive, None, None).unwrap(), m);
}

/// Appends a raw header (no data follows unless `data` is given), bypassing tar-rs.
fn raw_header(
    tar: &mut tar::Builder<zstd::Encoder<'static, fs::File>>,
    name: &[u8],
    kind: tar::EntryType,
    size: u64,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o600);
    h.set_cksum();
    let w = tar.get_mut();
    w.write_all(h.as_bytes()).unwrap();
    w.write_all(data).unwrap();
    w.write_all(&vec![0u8; (512 - data.len() % 512) % 512])
        .unwrap();
}

#[test]
fn import_refuses_extension_entries_before_reading_them() {
    // tar-rs reads a GNU long name or PAX header whole into memory: an entry declaring
    // a terabyte (a few hundred KiB of zstd for zeros) would have been read until the
    // daemon ran out of memory. (Regression: now refused from its header.)
    let f = fixture();
    let archive = hostile_archive(&f, "ln", |tar, _| {
        raw_header(
            tar,
            b"././@LongLink",
            tar::EntryType::GNULongName,
            1 << 40,
            b"",
        );
    });
    let e = f.store.import(&archive, None, None).unwrap_err();
    let Error::Archive { error, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(error.entry, "(GNU long name)");
    assert_eq!(
        error.kind,
        archive::ArchiveErrorKind::LongNameTooLong {
            size: 1 << 40,
            limit: archive::MAX_ENTRY_NAME
        }
    );
    assert!(f.store.list().unwrap().is_empty());

    for (i, (kind, what)) in [
        (tar::EntryType::XHeader, "PAX header"),
        (tar::EntryType::XGlobalHeader, "PAX header"),
        (tar::EntryType::GNULongLink, "GNU long link name"),
        (tar::EntryType::GNUSparse, "GNU sparse file"),
    ]
    .into_iter()
    .enumerate()
    {
        let archive = hostile_archive(&f, &format!("x{i}"), |tar, _| {
            raw_header(tar, b"image/pages-1.img.lz4", kind, 1 << 40, b"");
        });
        let (file, reason) = import_error(&f, &archive);
        assert_eq!(file, "image/pages-1.img.lz4");
        assert!(reason.contains(what), "{reason}");
    }
}

#[test]
fn import_refuses_names_that_are_not_utf8() {
    // Names were read lossily, so bytes that are not UTF-8 could stand for a path with
    // U+FFFD in the manifest. (Regression.)
    let f = fixture();
    let archive = hostile_archive(&f, "utf", |tar, _| {
        raw_header(tar, b"image/\xffx.lz4", tar::EntryType::Regular, 1, b"x");
    });
    let (file, reason) = import_error(&f, &archive);
    assert_eq!(file, "image/\u{fffd}x.lz4");
    assert!(reason.contains("not UTF-8"), "{reason}");
    // Through a long name too.
    let archive = hostile_archive(&f, "utf2", |tar, _| {
        let name = b"image/\xff.lz4\0";
        raw_header(
            tar,
            b"././@LongLink",
            tar::EntryType::GNULongName,
            name.len() as u64,
            name,
        );
        raw_header(tar, b"x", tar::EntryType::Regular, 1, b"x");
    });
    let (_, reason) = import_error(&f, &archive);
    assert!(reason.contains("not UTF-8"), "{reason}");
}

#[test]
fn a_full_file_system_is_named_with_its_directory_and_the_fix() {
    let store = Path::new("/var/lib/rekindle/images");
    let full =
        Error::io("cannot write pages-1.img.lz4")(io::Error::from_raw_os_error(libc::ENOSPC))
            .if_full(store, STORE_FULL_FIX);
    assert!(matches!(full, Error::NoSpace { .. }), "{full:?}");
    assert_eq!(full.code(), ErrorCode::Internal);
    let msg = full.to_string();
    assert!(
        msg.starts_with("no space left on the device of /var/lib/rekindle/images (ENOSPC): "),
        "{msg}"
    );
    assert!(msg.contains("cannot write pages-1.img.lz4"), "{msg}");
    assert!(msg.contains("rekindle image gc"), "{msg}");

    let quota = Error::io("cannot write x")(io::Error::from_raw_os_error(libc::EDQUOT))
        .if_full(Path::new("/run/rekindle/staged/.leases"), STAGE_FULL_FIX);
    let msg = quota.to_string();
    assert!(
        msg.contains("/run/rekindle/staged/.leases (EDQUOT)"),
        "{msg}"
    );
    assert!(msg.contains("stage_tmpfs_size"), "{msg}");

    // Other errors are left as they were.
    let other = Error::io("cannot write x")(io::Error::from_raw_os_error(libc::EIO))
        .if_full(store, STORE_FULL_FIX);
    assert!(matches!(other, Error::Io { .. }), "{other:?}");
    let corrupt = Error::corrupt_image("a", "b", "c").if_full(store, STORE_FULL_FIX);
    assert!(matches!(corrupt, Error::Corrupt { .. }), "{corrupt:?}");
}
