//! LZ4 (the store's frame format) compress and decompress throughput against a plain
//! memory copy of the same bytes, and the compression ratio; plus decompression with
//! the SHA-256 check, the store's whole extraction of an image to tmpfs (what staging and
//! prepare_restore really do), and zstd's ratio on raw pages vs on LZ4 frames (why
//! exports carry raw files).
//!
//! Data: a real CRIU pages file — `REKINDLE_BENCH_PAGES=/path/pages-1.img`, or else one
//! made here by checkpointing a Python process holding ~100 MB of objects with CRIU
//! (needs root and CRIU 4.2) — or, when neither works, synthetic page-like data. The
//! output says which.
//!
//! `cargo bench -p rekindle-restore-daemon --bench lz4`

use std::fs;
use std::hint::black_box;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lz4_flex::frame::FrameDecoder;
use rekindle_restore_daemon::store::codec::{self, VerifyingReader};
use rekindle_restore_daemon::store::{Limits, NewImage, Store};

/// A Python process with interpreter state and ~100 MB of mixed objects, like a
/// function that loaded its data at start-up.
const PYTHON: &str = "\
import json, http.server, email, decimal, sys, time
data = [{'id': i, 'name': 'item-%d' % i, 'tags': ['a', 'b', str(i % 97)], 'v': i * 1.5} for i in range(250000)]
blob = bytes(range(256)) * 40000
text = json.dumps(data[:20000])
open(sys.argv[1], 'w').write('ready')
time.sleep(1000)
";

fn real_pages() -> Result<(Vec<u8>, String), String> {
    if let Some(p) = std::env::var_os("REKINDLE_BENCH_PAGES") {
        let p = PathBuf::from(p);
        let data = fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        return Ok((data, format!("real CRIU pages file {}", p.display())));
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ready = dir.path().join("ready");
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON])
        .arg(&ready)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("python3: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the Python process did not get ready".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let images = dir.path().join("images");
    fs::create_dir(&images).map_err(|e| e.to_string())?;
    let pid = child.id();
    let mut criu = criu_sys::safe::Criu::new().map_err(|e| e.to_string())?;
    criu.set_images_dir(&images).map_err(|e| e.to_string())?;
    criu.set_log_file("dump.log").map_err(|e| e.to_string())?;
    criu.set_pid(pid).map_err(|e| e.to_string())?;
    criu.set_leave_running(false);
    let dumped = criu.dump();
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = dumped {
        let log = fs::read_to_string(images.join("dump.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        return Err(format!("criu dump: {e}: {}", tail.join(" | ")));
    }
    let pages = largest_pages_file(&images).ok_or("no pages-*.img written")?;
    let data = fs::read(&pages).map_err(|e| e.to_string())?;
    Ok((
        data,
        format!(
            "real CRIU pages file of a Python process (dumped here with CRIU, {})",
            pages.file_name().unwrap().to_string_lossy()
        ),
    ))
}

fn largest_pages_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .map(|e| e.path())
}

/// Page-like synthetic data: a third zero pages, a third repetitive, a third noise.
fn synthetic(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match (i / 4096) % 3 {
                0 => 0,
                1 => (i % 251) as u8,
                _ => x as u8,
            }
        })
        .collect()
}

/// A store on disk holding one image, "bench": `data` as its pages file and a tiny
/// inventory.img.
fn bench_store(data: &[u8]) -> (tempfile::TempDir, Store) {
    let disk = tempfile::tempdir().unwrap();
    let src = disk.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("inventory.img"), b"inventory").unwrap();
    fs::write(src.join("pages-1.img"), data).unwrap();
    let (store, _) = Store::open(&disk.path().join("store"), Limits::default()).unwrap();
    let meta = NewImage {
        kernel_release: "bench".into(),
        ..NewImage::default()
    };
    store.store_dir("bench", &src, meta, None).unwrap();
    (disk, store)
}

/// Best of `runs` (after one warm-up) of `Store::extract` of "bench", as prepare_restore
/// does: from the store on disk (in the page cache) into a new directory in `dir`.
fn extract_time(store: &Store, dir: &Path, runs: usize) -> f64 {
    let mut best = Duration::MAX;
    for i in 0..=runs {
        let dest = dir.join(format!("rekindle-bench-lease-{}-{i}", std::process::id()));
        let t = Instant::now();
        store.extract("bench", &dest).unwrap();
        let took = t.elapsed();
        fs::remove_dir_all(&dest).unwrap();
        if i > 0 {
            best = best.min(took);
        }
    }
    best.as_secs_f64()
}

/// A tmpfs mounted huge=within_size like the stage area the daemon mounts, if we may
/// mount; unmounted when dropped.
struct HugeTmpfs(tempfile::TempDir);

impl HugeTmpfs {
    fn mount() -> Option<HugeTmpfs> {
        let dir = tempfile::tempdir().ok()?;
        nix::mount::mount(
            Some("rekindle-bench"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700,huge=within_size"),
        )
        .ok()?;
        Some(HugeTmpfs(dir))
    }
}

impl Drop for HugeTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount(self.0.path());
    }
}

/// Best of `runs` (after one warm-up): seconds per run.
fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best.as_secs_f64()
}

fn main() {
    // `cargo test --benches` runs bench targets with --bench too; keep that quick.
    let quick = std::env::args().any(|a| a == "--test")
        || std::env::var_os("REKINDLE_BENCH_QUICK").is_some();
    let (data, source) = match real_pages() {
        Ok(d) => d,
        Err(why) => (
            synthetic(64 << 20),
            format!("SYNTHETIC page-like data (no real CRIU pages file: {why})"),
        ),
    };
    let n = data.len();
    let runs = if quick { 1 } else { 7 };
    println!("data: {source}");
    println!(
        "size: {:.1} MiB, best of {runs} runs\n",
        n as f64 / (1 << 20) as f64
    );

    let mut dst = vec![0u8; n];
    let t_copy = time(runs, || {
        dst.copy_from_slice(black_box(&data));
        black_box(&dst);
    });

    let mut frame = Vec::with_capacity(codec::max_compressed_size(n as u64) as usize);
    let mut sha = String::new();
    let t_comp = time(runs, || {
        frame.clear();
        let (c, out) = codec::compress(&data[..], n as u64, std::mem::take(&mut frame)).unwrap();
        frame = out;
        sha = c.sha256;
    });

    let t_decomp = time(runs, || {
        let mut r = FrameDecoder::new(&frame[..]);
        r.read_exact(&mut dst).unwrap();
        black_box(&dst);
    });

    let t_verify = time(runs, || {
        let mut r = VerifyingReader::new(&frame[..], n as u64, &sha);
        let mut w = io::Cursor::new(&mut dst[..]);
        codec::copy(&mut r, &mut w).unwrap();
        assert!(r.verified());
    });

    let (disk, store) = bench_store(&data);
    let shm = Path::new("/dev/shm");
    let huge = HugeTmpfs::mount();
    let extract_both = |store: &Store| {
        (
            shm.is_dir().then(|| extract_time(store, shm, runs)),
            huge.as_ref().map(|h| extract_time(store, h.0.path(), runs)),
        )
    };
    // As stored now: the frame's digest checked (`compressed_sha256`).
    let (t_extract_shm, t_extract_huge) = extract_both(&store);
    // As an image stored before frame digests: the decompressed bytes hashed.
    let manifest = disk.path().join("store/bench/manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("compressed_sha256");
    }
    fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let (t_content_shm, t_content_huge) = extract_both(&store);
    drop(huge);

    let zstd_raw = zstd::bulk::compress(&data, 3).unwrap().len();
    let zstd_lz4 = zstd::bulk::compress(&frame, 3).unwrap().len();
    let zstd_long = {
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::EnableLongDistanceMatching(
            true,
        ))
        .unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        c.compress(&data).unwrap().len()
    };

    let gbs = |t: f64| n as f64 / t / 1e9;
    println!("{:<44} {:>9} {:>10}", "operation", "GB/s", "ms");
    for (name, t) in [
        ("memory copy (copy_from_slice)", t_copy),
        ("LZ4 frame compress (+ SHA-256, as stored)", t_comp),
        ("LZ4 frame decompress", t_decomp),
        ("LZ4 decompress + SHA-256 verify", t_verify),
    ] {
        println!("{name:<44} {:>9.2} {:>10.1}", gbs(t), t * 1e3);
    }
    // What prepare_restore does for an image not staged: Store::extract into a new
    // directory on the stage tmpfs (the image: this pages file and a tiny inventory).
    for (name, t) in [
        ("extract to tmpfs, 4 KiB pages (/dev/shm)", t_extract_shm),
        ("extract to tmpfs, huge=within_size (stage)", t_extract_huge),
        (
            "  the same checking content digests, /dev/shm",
            t_content_shm,
        ),
        ("  the same checking content digests, stage", t_content_huge),
    ] {
        match t {
            Some(t) => println!("{name:<44} {:>9.2} {:>10.1}", gbs(t), t * 1e3),
            None => println!("{name:<44} {:>9} {:>10}", "-", "-"),
        }
    }
    println!();
    println!(
        "LZ4 ratio: {:.2}x ({} -> {} bytes)",
        n as f64 / frame.len() as f64,
        n,
        frame.len()
    );
    println!(
        "zstd-3 ratio on raw bytes: {:.2}x, with long-distance matching (window 128 MiB): {:.2}x; \
         on the LZ4 frame: {:.2}x of the original",
        n as f64 / zstd_raw as f64,
        n as f64 / zstd_long as f64,
        n as f64 / zstd_lz4 as f64
    );
    println!(
        "decompress vs memory copy: {:.1}x slower",
        t_decomp / t_copy
    );
}
