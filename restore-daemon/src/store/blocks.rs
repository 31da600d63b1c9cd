//! One stored LZ4 frame extracted on several threads. The store writes frames of
//! independent 4 MiB blocks (`codec::frame_info`), so each block decodes on its own,
//! straight into its place in the destination file (mapped), while the calling thread
//! reads the frame and hashes it. Why: decompression was the whole cost of extracting
//! an image (one core; the frame's SHA-256 on the other), and a restore from the store
//! on disk waits for it at Create.
//!
//! The frame is untrusted until its SHA-256 matches the manifest's, which is checked
//! last: every length is bounds-checked before use, each block decodes into exactly the
//! bytes the manifest's size leaves for it (a block that wants more is an error, so a
//! decompression bomb costs nothing), and the caller drops the output on any error.
//! The frame's own xxHash checksums are not recomputed: once the SHA-256 of these exact
//! bytes matches, they are the bytes the store wrote.

use std::fs::File;
use std::io::{self, Read};
use std::sync::{mpsc, Mutex};

use sha2::{Digest, Sha256};

use super::codec::{sha_mismatch, too_large, wrong_size, VerifyError, CUT_SHORT};
use super::fsutil::hex;

const MAGIC: u32 = 0x184D_2204;
const FLG_VERSION_MASK: u8 = 0xC0;
const FLG_VERSION_1: u8 = 0x40;
const FLG_INDEPENDENT: u8 = 0x20;
const FLG_BLOCK_CHECKSUM: u8 = 0x10;
const FLG_CONTENT_SIZE: u8 = 0x08;
const FLG_CONTENT_CHECKSUM: u8 = 0x04;
const FLG_RESERVED: u8 = 0x02;
const FLG_DICT_ID: u8 = 0x01;
const UNCOMPRESSED: u32 = 0x8000_0000;

/// Whether `start`, the first bytes of a stored file, opens an LZ4 frame of
/// independent blocks: what [`extract`] takes.
pub fn independent_blocks(start: &[u8]) -> bool {
    start.len() >= 5
        && u32::from_le_bytes([start[0], start[1], start[2], start[3]]) == MAGIC
        && start[4] & FLG_INDEPENDENT != 0
}

/// Reserves `size` bytes of `dst` (fallocate): done before [`extract`] maps it, so that
/// a full file system is an error (ENOSPC) and not a SIGBUS on a write through the
/// mapping. `Ok(false)`: the file system cannot reserve (the caller streams instead).
pub fn reserve(dst: &File, size: u64) -> io::Result<bool> {
    let Ok(len) = i64::try_from(size) else {
        return Ok(false);
    };
    if len == 0 {
        return Ok(true);
    }
    match nix::fcntl::fallocate(dst, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The frame's header, as far as block decoding needs it.
struct Header {
    block_max: usize,
    block_checksums: bool,
    content_checksum: bool,
}

/// `src`, with every byte read also hashed.
struct Hashed<R> {
    src: R,
    sha: Sha256,
}

impl<R: Read> Hashed<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), VerifyError> {
        self.src.read_exact(buf).map_err(cut_short)?;
        self.sha.update(&*buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, VerifyError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// `len` bytes into `buf` (cleared first; its allocation reused).
    fn block(&mut self, buf: &mut Vec<u8>, len: usize) -> Result<(), VerifyError> {
        buf.clear();
        let got = (&mut self.src)
            .take(len as u64)
            .read_to_end(buf)
            .map_err(VerifyError::Io)?;
        if got != len {
            return Err(cut_short(io::ErrorKind::UnexpectedEof.into()));
        }
        self.sha.update(&buf[..]);
        Ok(())
    }
}

fn cut_short(e: io::Error) -> VerifyError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        VerifyError::Corrupt(CUT_SHORT.into())
    } else {
        VerifyError::Io(e)
    }
}

fn corrupt(reason: impl Into<String>) -> VerifyError {
    VerifyError::Corrupt(reason.into())
}

fn header<R: Read>(src: &mut Hashed<R>, expected_size: u64) -> Result<Header, VerifyError> {
    let mut b = [0u8; 6];
    src.exact(&mut b)?;
    if u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != MAGIC {
        return Err(corrupt("not an LZ4 frame (bad magic number)"));
    }
    let (flg, bd) = (b[4], b[5]);
    if flg & FLG_VERSION_MASK != FLG_VERSION_1 || flg & FLG_RESERVED != 0 || bd & 0x8F != 0 {
        return Err(corrupt(
            "LZ4 frame header with an unknown version or reserved bits set",
        ));
    }
    if flg & FLG_DICT_ID != 0 || flg & FLG_INDEPENDENT == 0 {
        return Err(corrupt(
            "LZ4 frame with a dictionary or linked blocks: not one this store writes",
        ));
    }
    let block_max = match (bd >> 4) & 0x7 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        _ => return Err(corrupt("LZ4 frame header with an unknown block size")),
    };
    if flg & FLG_CONTENT_SIZE != 0 {
        let mut s = [0u8; 8];
        src.exact(&mut s)?;
        let size = u64::from_le_bytes(s);
        if size != expected_size {
            return Err(corrupt(wrong_size(size, expected_size)));
        }
    }
    // The header checksum byte: covered by the frame's SHA-256 like every other byte.
    src.exact(&mut [0u8; 1])?;
    Ok(Header {
        block_max,
        block_checksums: flg & FLG_BLOCK_CHECKSUM != 0,
        content_checksum: flg & FLG_CONTENT_CHECKSUM != 0,
    })
}

/// One block for a worker: its index, whether it is stored raw, its bytes.
struct Job {
    index: usize,
    raw: bool,
    data: Vec<u8>,
}

/// Decompresses the frame read from `src` into `dst`, a file of exactly
/// `expected_size` bytes that nothing else uses (the caller's fresh file in its
/// temporary directory), on `workers` threads besides this one, and checks the frame's
/// SHA-256 against `expected_frame_sha256`. `dst` must be reserved ([`reserve`]). On
/// an error `dst` holds garbage.
pub fn extract<R: Read>(
    src: R,
    expected_size: u64,
    expected_frame_sha256: &str,
    dst: &File,
    workers: usize,
) -> Result<u64, VerifyError> {
    let mut src = Hashed {
        src,
        sha: Sha256::new(),
    };
    let h = header(&mut src, expected_size)?;
    let size = usize::try_from(expected_size).map_err(|_| corrupt(too_large(expected_size)))?;
    // SAFETY: `dst` is the caller's own new file, which nothing else truncates or
    // maps; its blocks were reserved ([`reserve`]).
    let mut map = if size > 0 {
        Some(unsafe { memmap2::MmapMut::map_mut(dst) }.map_err(VerifyError::Io)?)
    } else {
        None
    };
    let slices: Vec<&mut [u8]> = match map.as_mut() {
        Some(m) => m.chunks_mut(h.block_max).collect(),
        None => Vec::new(),
    };
    let blocks = slices.len();
    let workers = workers.clamp(1, blocks.max(1));
    let mut per_worker: Vec<Vec<&mut [u8]>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, s) in slices.into_iter().enumerate() {
        per_worker[i % workers].push(s);
    }
    let failure: Mutex<Option<VerifyError>> = Mutex::new(None);
    let read = std::thread::scope(|scope| -> Result<usize, VerifyError> {
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        let mut queues = Vec::with_capacity(workers);
        for mine in per_worker {
            let (tx, rx) = mpsc::sync_channel::<Job>(2);
            queues.push(tx);
            let (free_tx, failure) = (free_tx.clone(), &failure);
            scope.spawn(move || {
                if let Err(e) = decode(rx, mine, &free_tx) {
                    let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                    f.get_or_insert(e);
                }
            });
        }
        drop(free_tx);
        let mut index = 0;
        loop {
            let word = src.u32()?;
            if word == 0 {
                break;
            }
            let len = (word & !UNCOMPRESSED) as usize;
            if len > h.block_max {
                return Err(corrupt(format!(
                    "LZ4 block {index} of {len} bytes, over the frame's block size"
                )));
            }
            if index >= blocks {
                return Err(corrupt(too_large(expected_size)));
            }
            let mut data = free_rx.try_recv().unwrap_or_default();
            src.block(&mut data, len)?;
            if h.block_checksums {
                src.u32()?;
            }
            let job = Job {
                index,
                raw: word & UNCOMPRESSED != 0,
                data,
            };
            if queues[index % workers].send(job).is_err() {
                // That worker stopped at an error, reported below.
                break;
            }
            index += 1;
        }
        if h.content_checksum {
            src.u32()?;
        }
        let mut probe = [0u8; 1];
        if src.src.read(&mut probe).map_err(VerifyError::Io)? != 0 {
            return Err(corrupt("bytes after the LZ4 frame's end mark"));
        }
        Ok(index)
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let read = read?;
    if read != blocks {
        let decoded = (read as u64 * h.block_max as u64).min(expected_size);
        return Err(corrupt(wrong_size(decoded, expected_size)));
    }
    drop(map);
    let sha = hex(&src.sha.finalize());
    if sha != expected_frame_sha256 {
        return Err(corrupt(sha_mismatch(
            "the stored frame",
            &sha,
            expected_frame_sha256,
        )));
    }
    Ok(expected_size)
}

/// A worker: decodes its blocks (every `workers`-th, in order) into `mine`, their
/// places in the file, and hands each input buffer back for reuse.
fn decode(
    jobs: mpsc::Receiver<Job>,
    mine: Vec<&mut [u8]>,
    free: &mpsc::Sender<Vec<u8>>,
) -> Result<(), VerifyError> {
    let mut places = mine.into_iter();
    for job in jobs {
        // Never empty: `extract` hands out no more blocks than the file has places.
        let Some(out) = places.next() else {
            return Err(corrupt(format!(
                "LZ4 block {} has no place in the file",
                job.index
            )));
        };
        let want = out.len();
        if job.raw {
            if job.data.len() != want {
                return Err(corrupt(format!(
                    "LZ4 block {} holds {} raw bytes where {want} belong",
                    job.index,
                    job.data.len()
                )));
            }
            out.copy_from_slice(&job.data);
        } else {
            match lz4_flex::block::decompress_into(&job.data, out) {
                Ok(n) if n == want => {}
                Ok(n) => {
                    return Err(corrupt(format!(
                        "LZ4 block {} decompresses to {n} bytes where {want} belong",
                        job.index
                    )))
                }
                Err(e) => return Err(corrupt(format!("LZ4 block {}: {e}", job.index))),
            }
        }
        let _ = free.send(job.data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek};

    use super::*;
    use crate::store::codec;

    /// `len` bytes that compress (runs of a counter) with an incompressible stretch in
    /// the middle, so that the frame holds compressed and raw blocks.
    fn content(len: usize) -> Vec<u8> {
        let mut v: Vec<u8> = (0..len).map(|i| (i / 64) as u8).collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let noisy = len / 3..(len / 3 + (5 << 20)).min(len);
        for b in &mut v[noisy] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        v
    }

    fn frame_of(data: &[u8]) -> (Vec<u8>, String) {
        let (c, frame) = codec::compress(data, data.len() as u64, Vec::new()).unwrap();
        (frame, c.compressed_sha256)
    }

    fn run(frame: &[u8], size: u64, sha: &str) -> (Result<u64, VerifyError>, Vec<u8>) {
        let mut out = tempfile::tempfile().unwrap();
        out.set_len(size).unwrap();
        assert!(reserve(&out, size).unwrap());
        let r = extract(frame, size, sha, &out, 2);
        let mut got = Vec::new();
        out.rewind().unwrap();
        out.read_to_end(&mut got).unwrap();
        (r, got)
    }

    fn reason(r: Result<u64, VerifyError>) -> String {
        match r {
            Err(VerifyError::Corrupt(s)) => s,
            other => panic!("expected a corrupt frame, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_of_raw_and_compressed_blocks_comes_back_whole() {
        let data = content((13 << 20) + 12345);
        let (frame, sha) = frame_of(&data);
        assert!(independent_blocks(&frame));
        let (r, got) = run(&frame, data.len() as u64, &sha);
        assert_eq!(r.unwrap(), data.len() as u64);
        assert!(got == data, "the extracted bytes differ from the original");
    }

    #[test]
    fn a_frame_that_does_not_hash_to_the_manifest_s_digest_is_refused() {
        let data = content(9 << 20);
        let (frame, _) = frame_of(&data);
        let (r, _) = run(&frame, data.len() as u64, &"0".repeat(64));
        assert!(reason(r).contains("SHA-256 mismatch"));
    }

    #[test]
    fn a_truncated_frame_is_refused() {
        let data = content(9 << 20);
        let (frame, sha) = frame_of(&data);
        for cut in [7, 20, frame.len() / 2, frame.len() - 1] {
            let (r, _) = run(&frame[..cut], data.len() as u64, &sha);
            let why = reason(r);
            assert!(
                why.contains("cut short") || why.contains("decompresses to"),
                "cut at {cut}: {why}"
            );
        }
    }

    #[test]
    fn bytes_after_the_end_mark_are_refused() {
        let data = content(9 << 20);
        let (mut frame, sha) = frame_of(&data);
        frame.push(0);
        assert!(reason(run(&frame, data.len() as u64, &sha).0).contains("after"));
    }

    #[test]
    fn a_size_other_than_the_manifest_s_is_refused_before_anything_is_decoded() {
        let data = content(9 << 20);
        let (frame, sha) = frame_of(&data);
        for size in [data.len() as u64 - 1, data.len() as u64 + 1] {
            let why = reason(run(&frame, size, &sha).0);
            assert!(why.contains("the manifest says"), "{size}: {why}");
        }
    }

    /// A block whose bytes were changed (the frame's own checksums left as they were):
    /// an error from the decoder, or a digest mismatch, never a panic or a success.
    #[test]
    fn a_damaged_block_is_refused() {
        let data = content(9 << 20);
        let (frame, sha) = frame_of(&data);
        for at in [40, 1000, frame.len() / 3, frame.len() - 100] {
            let mut bad = frame.clone();
            bad[at] ^= 0x5A;
            let (r, _) = run(&bad, data.len() as u64, &sha);
            assert!(
                matches!(r, Err(VerifyError::Corrupt(_))),
                "byte {at}: {r:?}"
            );
        }
    }

    /// A block length beyond the frame's block size stops the frame at that block; a
    /// frame whose header states another size than the manifest's is refused before
    /// any block is decoded.
    #[test]
    fn a_block_larger_than_its_place_is_refused() {
        let data = content(9 << 20);
        let (frame, sha) = frame_of(&data);
        let first_block = 7 + 8; // magic, FLG, BD, content size, header checksum
        let mut bad = frame.clone();
        bad[first_block..first_block + 4].copy_from_slice(&((5u32 << 20).to_le_bytes()));
        assert!(
            reason(run(&bad, data.len() as u64, &sha).0).contains("over the frame's block size")
        );
        // The manifest claims fewer bytes than the blocks hold.
        let why = reason(run(&frame, (4 << 20) + 1, &sha).0);
        assert!(why.contains("manifest"), "{why}");
    }
}
