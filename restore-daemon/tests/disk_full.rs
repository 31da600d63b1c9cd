//! The disk full: the real `rekindle-restored` with its image store, or its staging
//! area, on a small tmpfs (48 MiB) that already holds an image (`keep`, 1 MiB). Storing
//! (what the shim's checkpoint does) or importing an image whose compressed size does not
//! fit, and preparing a restore or staging one whose decompressed size does not fit, each
//! fail with an error that names the cause (no space left, ENOSPC), the full directory
//! and what frees room; and leave nothing behind: the store lists only `keep`, no
//! temporary file remains (the file system's free space is back to what it was), and
//! `keep` still prepares byte for byte.
//!
//! The large image is 64 MiB of noise, which neither LZ4 nor zstd shrinks. Needs root
//! (the test mounts the tmpfs, the daemon mounts its own staging tmpfs); skipped with a
//! reason otherwise. Every tmpfs is unmounted when the test ends, failed or not.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rekindle_restore_api::{Client, ErrorCode};

mod common;
use common::*;

/// The small file system's size, as `mount -o size=` takes it, and in bytes.
const SMALL: &str = "48m";
const SMALL_BYTES: u64 = 48 << 20;
/// The large image's pages file: more than the small file system holds.
const BIG_SIZE: usize = 64 << 20;
/// Whether the test can mount: root, or skipped with the reason printed.
fn can_mount(test: &str) -> bool {
    // SAFETY: plain geteuid(2).
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {test}: needs root to mount a small tmpfs (run the tests as root)");
        return false;
    }
    true
}

/// A tmpfs of [`SMALL`] mounted on a directory; unmounted when dropped (the test failed
/// or not).
struct Mount {
    path: PathBuf,
}

impl Mount {
    fn small(path: &Path) -> Mount {
        fs::create_dir_all(path).unwrap();
        nix::mount::mount(
            Some("rekindle-disk-full-test"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={SMALL},mode=0700").as_str()),
        )
        .unwrap_or_else(|e| panic!("cannot mount a tmpfs on {}: {e}", path.display()));
        let m = Mount {
            path: path.to_path_buf(),
        };
        let total = {
            let st = nix::sys::statvfs::statvfs(path).unwrap();
            st.blocks() as u64 * st.fragment_size() as u64
        };
        assert_eq!(total, SMALL_BYTES, "the tmpfs on {}", path.display());
        m
    }

    /// Bytes free on the file system.
    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.path).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Already unmounted (by the daemon's guard) is fine.
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// What is shared by the tests, made once: the large image's source, the store holding
/// it as the daemon wrote it (on disk), and its export archive. Removed when the test
/// process exits.
struct Fixture {
    big_src: PathBuf,
    big_stored: PathBuf,
    big_archive: PathBuf,
}

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("rekindle-disk-full-")
            .tempdir()
            .unwrap()
            .keep();
        let dir = fs::canonicalize(dir).unwrap();
        FIXTURE_DIR.set(dir.clone()).unwrap();
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_fixture) };
        let big_src = image_source(&dir.join("big-src"), BIG_SIZE, 0x5eed);
        let big_archive = dir.join("big.tar.zst");
        let mut daemon = Daemon::start(&dir.join("maker"));
        let client = Client::new(&daemon.socket);
        // On a thread of its own: the caller is inside a runtime already.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let m = client
                        .store_image("big", &big_src, BTreeMap::new(), None)
                        .await
                        .unwrap();
                    assert!(m.manifest.total_compressed_size > SMALL_BYTES, "{m:?}");
                    client
                        .export_image("big", &big_archive, Some(1))
                        .await
                        .unwrap();
                })
            });
        });
        assert!(daemon.stop().success());
        assert!(fs::metadata(&big_archive).unwrap().len() > SMALL_BYTES);
        Fixture {
            big_src,
            big_stored: daemon.store.join("big"),
            big_archive,
        }
    })
}

/// Which file system is the small one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Small {
    Store,
    Stage,
}

/// A test's directory with the store or the staging area on a small tmpfs, and a small
/// image `keep` stored through the daemon beforehand (and, with a small staging area,
/// the large image `big` in the store, which is on disk then).
struct Setup {
    daemon: Daemon,
    client: Client,
    keep_src: PathBuf,
    /// The small file system; dropped (unmounted) after the daemon stopped.
    small: Mount,
    /// Last: removed after everything is unmounted.
    _tmp: tempfile::TempDir,
}

async fn setup(which: Small) -> Setup {
    let tmp = tempfile::Builder::new()
        .prefix("rekindle-disk-full-")
        .tempdir()
        .unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    let small = match which {
        Small::Store => Mount::small(&dir.join("store")),
        Small::Stage => {
            let to = dir.join("store/big");
            fs::create_dir_all(&to).unwrap();
            for e in fs::read_dir(&fixture().big_stored).unwrap() {
                let e = e.unwrap();
                fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
            Mount::small(&dir.join("stage"))
        }
    };
    let keep_src = image_source(&dir.join("keep-src"), 1 << 20, 0x6b656570);
    let daemon = Daemon::start(&dir);
    let client = Client::new(&daemon.socket);
    client
        .store_image("keep", &keep_src, BTreeMap::new(), None)
        .await
        .unwrap();
    Setup {
        daemon,
        client,
        keep_src,
        small,
        _tmp: tmp,
    }
}

/// Asserts that `e` is the daemon saying that `dir`'s file system is full, and what
/// frees room (`fix`).
fn assert_no_space(e: &rekindle_restore_api::Error, dir: &Path, fix: &str) {
    assert_eq!(e.code(), Some(ErrorCode::Internal), "{e}");
    let msg = e.to_string();
    eprintln!("{msg}");
    let want = format!("no space left on the device of {}", dir.display());
    assert!(msg.contains(&want), "{msg}\ndoes not say: {want}");
    assert!(msg.contains("(ENOSPC)"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(msg.contains(fix), "{msg}\ndoes not say: {fix}");
}

/// After the failure: the store holds exactly `want` and nothing being written, `list`
/// shows exactly `want`, the staging area holds nothing but an empty lease directory,
/// the small file system has all its free space back (no temporary file, deleted or
/// not, is left), and `keep` is prepared, compared with its source, released.
async fn check_intact(s: &Setup, want: &[&str], free_before: u64) {
    assert_eq!(names(&s.daemon.store), set(want), "store after the failure");
    let listed: Vec<String> = s
        .client
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.manifest.name)
        .collect();
    assert_eq!(listed, want, "list after the failure");
    assert_eq!(
        names(&s.daemon.stage),
        set(&[".leases"]),
        "staging area after the failure"
    );
    assert!(
        names(&s.daemon.stage.join(".leases")).is_empty(),
        "lease directories left after the failure"
    );
    assert_eq!(
        s.small.free(),
        free_before,
        "free bytes on {} after the failure",
        s.small.path.display()
    );
    let p = s.client.prepare_restore("keep", false).await.unwrap();
    assert!(!p.staged);
    assert_same_tree(&p.image_dir, &s.keep_src);
    assert!(
        s.client
            .release_restore(&p.lease)
            .await
            .unwrap()
            .removed_dir
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_does_not_fit_the_store_fails_clearly_and_keeps_the_old_image() {
    if !can_mount("a_checkpoint_that_does_not_fit_the_store") {
        return;
    }
    let fx = fixture();
    let mut s = setup(Small::Store).await;
    let free_before = s.small.free();
    assert!(free_before < BIG_SIZE as u64, "{free_before}");

    let e = s
        .client
        .store_image("big", &fx.big_src, BTreeMap::new(), None)
        .await
        .unwrap_err();
    assert_no_space(&e, &s.daemon.store, "rekindle image gc");
    check_intact(&s, &["keep"], free_before).await;
    let e = s.client.get_image("big").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");

    // A checkpoint that fits is stored next to the old image.
    let small_src = image_source(&s.daemon.dir.join("small-src"), 256 << 10, 2);
    s.client
        .store_image("small", &small_src, BTreeMap::new(), None)
        .await
        .unwrap();
    assert_eq!(names(&s.daemon.store), set(&["keep", "small"]));
    assert!(s.daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_does_not_fit_the_store_fails_clearly_and_keeps_the_old_image() {
    if !can_mount("an_import_that_does_not_fit_the_store") {
        return;
    }
    let fx = fixture();
    let mut s = setup(Small::Store).await;
    let free_before = s.small.free();

    let e = s
        .client
        .import_image(&fx.big_archive, None)
        .await
        .unwrap_err();
    assert_no_space(&e, &s.daemon.store, "rekindle image gc");
    check_intact(&s, &["keep"], free_before).await;
    let e = s.client.get_image("big").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(s.daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_or_stage_that_does_not_fit_the_staging_area_fails_clearly() {
    if !can_mount("a_restore_or_stage_that_does_not_fit_the_staging_area") {
        return;
    }
    let _ = fixture();
    let mut s = setup(Small::Stage).await;
    let stage = s.daemon.stage.clone();
    let free_before = s.small.free();
    assert!(free_before < BIG_SIZE as u64, "{free_before}");

    // A restore decompresses into a lease directory.
    let e = s.client.prepare_restore("big", false).await.unwrap_err();
    assert_no_space(&e, &stage, "stage_tmpfs_size");
    check_intact(&s, &["big", "keep"], free_before).await;

    // A stage decompresses into the staging area itself.
    let e = s.client.stage_image("big").await.unwrap_err();
    assert_no_space(&e, &stage, "rekindle image unstage");
    check_intact(&s, &["big", "keep"], free_before).await;
    let info = s.client.get_image("big").await.unwrap();
    assert!(!info.staged, "{info:?}");

    // What fits still stages, and a restore uses the staged copy.
    let staged = s.client.stage_image("keep").await.unwrap();
    assert_same_tree(&staged.dir, &s.keep_src);
    let p = s.client.prepare_restore("keep", false).await.unwrap();
    assert!(p.staged);
    s.client.release_restore(&p.lease).await.unwrap();
    assert!(s.daemon.stop().success());
}
