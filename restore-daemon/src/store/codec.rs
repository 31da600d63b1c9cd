//! LZ4 at rest: each image file becomes one LZ4 frame (lz4_flex, frame format, with the
//! content checksum and the content size in the header). Reading back verifies three
//! things: the frame's own checksum, the SHA-256 the manifest records, and the size —
//! decompression stops one byte past the manifest's size, so a small frame that expands
//! to gigabytes (a decompression bomb) costs at most one block.

use std::io::{self, Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};
use sha2::{Digest, Sha256};

use super::fsutil::hex;

/// Buffer size for streaming copies.
pub const COPY_BUF: usize = 256 << 10;

/// The frame parameters of stored files: 4 MiB independent blocks (fast, and a corrupt
/// block does not poison the next), content checksum, content size.
pub fn frame_info(size: u64) -> FrameInfo {
    FrameInfo::new()
        .block_size(BlockSize::Max4MB)
        .block_mode(BlockMode::Independent)
        .content_checksum(true)
        .content_size(Some(size))
}

/// The largest LZ4 frame an honest `size`-byte file compresses to: the data itself
/// (incompressible blocks are stored raw), a 4-byte header per block, frame header,
/// end mark and checksum.
pub fn max_compressed_size(size: u64) -> u64 {
    size.saturating_add((size / (64 << 10) + 1).saturating_mul(8))
        .saturating_add(64)
}

/// What compressing one file produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compressed {
    /// Bytes read (the original size).
    pub size: u64,
    /// Bytes written (the frame's size).
    pub compressed_size: u64,
    /// SHA-256 of the original bytes, lowercase hex.
    pub sha256: String,
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses exactly `size` bytes from `src` into one LZ4 frame written to `dst`,
/// hashing them on the way. Fails (`InvalidData`) if `src` holds fewer or more bytes
/// (a file that changed while it was read, an archive entry of the wrong size).
pub fn compress<R: Read, W: Write>(src: R, size: u64, dst: W) -> io::Result<(Compressed, W)> {
    let mut src = src.take(size + 1);
    let mut enc = FrameEncoder::with_frame_info(
        frame_info(size),
        CountingWriter {
            inner: dst,
            count: 0,
        },
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut read = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        read += n as u64;
        if read > size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("holds more than the expected {size} bytes"),
            ));
        }
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
    }
    if read != size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("holds {read} bytes, expected {size}"),
        ));
    }
    let mut out = enc.finish().map_err(io::Error::other)?;
    out.flush()?;
    Ok((
        Compressed {
            size,
            compressed_size: out.count,
            sha256: hex(&hasher.finalize()),
        },
        out.inner,
    ))
}

/// Decompresses one stored frame and checks it against the manifest as it is read.
///
/// Errors surface as `io::Error`s from `read`; [`VerifyingReader::failure`] then says
/// what was wrong with the data (a corrupt file) as opposed to an I/O failure.
pub struct VerifyingReader<R: Read> {
    inner: FrameDecoder<R>,
    expected_size: u64,
    expected_sha256: String,
    count: u64,
    hasher: Sha256,
    failure: Option<String>,
    done: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(compressed: R, expected_size: u64, expected_sha256: &str) -> Self {
        VerifyingReader {
            inner: FrameDecoder::new(compressed),
            expected_size,
            expected_sha256: expected_sha256.to_string(),
            count: 0,
            hasher: Sha256::new(),
            failure: None,
            done: false,
        }
    }

    /// Why the data is corrupt, if reading failed because of the data.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// The whole frame was read and matched the manifest.
    pub fn verified(&self) -> bool {
        self.done && self.failure.is_none()
    }

    fn fail(&mut self, reason: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, reason.clone());
        self.failure = Some(reason);
        e
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        if let Some(f) = &self.failure {
            return Err(io::Error::new(io::ErrorKind::InvalidData, f.clone()));
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                // lz4_flex reports bad headers and checksum mismatches as InvalidData,
                // bad block contents as Other wrapping its own error type, and a frame
                // cut short as UnexpectedEof. Anything else is the underlying reader's.
                let is_lz4 = e
                    .get_ref()
                    .is_some_and(|inner| inner.is::<lz4_flex::frame::Error>());
                return Err(match e.kind() {
                    _ if is_lz4 => self.fail(format!("invalid LZ4 data: {e}")),
                    io::ErrorKind::InvalidData => self.fail(format!("invalid LZ4 data: {e}")),
                    io::ErrorKind::UnexpectedEof => {
                        self.fail(format!("LZ4 frame cut short (truncated?): {e}"))
                    }
                    _ => e,
                });
            }
        };
        if n == 0 {
            if self.count != self.expected_size {
                return Err(self.fail(format!(
                    "decompresses to {} bytes, the manifest says {} (truncated?)",
                    self.count, self.expected_size
                )));
            }
            let sha = hex(&std::mem::take(&mut self.hasher).finalize());
            if sha != self.expected_sha256 {
                return Err(self.fail(format!(
                    "SHA-256 mismatch: content hashes to {sha}, the manifest says {}",
                    self.expected_sha256
                )));
            }
            self.done = true;
            return Ok(0);
        }
        self.count += n as u64;
        if self.count > self.expected_size {
            return Err(self.fail(format!(
                "decompresses to more than the manifest's {} bytes (decompression bomb?)",
                self.expected_size
            )));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Copies everything `src` yields to `dst` in large chunks; returns the byte count.
pub fn copy<R: Read, W: Write>(src: &mut R, dst: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Page-like data: runs of zeros, repeated structures and some noise.
        let mut x: u32 = 12345;
        (0..n)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                match (i / 4096) % 3 {
                    0 => 0,
                    1 => (i % 251) as u8,
                    _ => (x >> 16) as u8,
                }
            })
            .collect()
    }

    fn pack(data: &[u8]) -> (Compressed, Vec<u8>) {
        compress(data, data.len() as u64, Vec::new()).unwrap()
    }

    fn unpack(frame: &[u8], size: u64, sha: &str) -> (Result<Vec<u8>, io::Error>, Option<String>) {
        let mut r = VerifyingReader::new(frame, size, sha);
        let mut out = Vec::new();
        let res = copy(&mut r, &mut out).map(|_| out);
        (res, r.failure().map(str::to_string))
    }

    #[test]
    fn round_trip_restores_every_byte() {
        for n in [0, 1, 4095, 4096, (4 << 20) + 17, 9 << 20] {
            let data = sample(n);
            let (c, frame) = pack(&data);
            assert_eq!(c.size, n as u64);
            assert_eq!(c.compressed_size, frame.len() as u64);
            assert!(c.compressed_size <= max_compressed_size(c.size));
            let (out, failure) = unpack(&frame, c.size, &c.sha256);
            assert_eq!(failure, None);
            assert_eq!(out.unwrap(), data, "n = {n}");
        }
    }

    #[test]
    fn compressing_is_deterministic() {
        let data = sample(1 << 20);
        assert_eq!(pack(&data), pack(&data));
    }

    #[test]
    fn incompressible_data_stays_within_the_bound() {
        let mut x: u64 = 7;
        let data: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (c, _) = pack(&data);
        assert!(c.compressed_size <= max_compressed_size(c.size), "{c:?}");
    }

    #[test]
    fn a_source_of_the_wrong_size_is_refused() {
        let data = sample(1000);
        let e = compress(&data[..], 999, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let e = compress(&data[..], 1001, Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("holds 1000 bytes, expected 1001"),
            "{e}"
        );
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let data = sample(300 << 10);
        let (c, frame) = pack(&data);
        // Flip a byte at many places: header, block headers, data, checksum. Every flip
        // must be reported as corrupt data (a failure reason), never as an I/O error.
        let step = (frame.len() / 400).max(1);
        for pos in (0..frame.len()).step_by(step).chain([frame.len() - 2]) {
            let mut bad = frame.clone();
            bad[pos] ^= 0x40;
            let (out, failure) = unpack(&bad, c.size, &c.sha256);
            assert!(out.is_err(), "flip at {pos} went unnoticed");
            assert!(failure.is_some(), "flip at {pos}: no failure reason");
        }
    }

    #[test]
    fn a_truncated_frame_is_detected() {
        let data = sample(1 << 20);
        let (c, frame) = pack(&data);
        for len in [0, 3, 10, frame.len() / 2, frame.len() - 1] {
            let (out, failure) = unpack(&frame[..len], c.size, &c.sha256);
            assert!(out.is_err(), "cut at {len} went unnoticed");
            assert!(failure.is_some(), "cut at {len}: {out:?}");
        }
    }

    #[test]
    fn a_wrong_checksum_in_the_manifest_is_detected() {
        let data = sample(100_000);
        let (c, frame) = pack(&data);
        let other = "0".repeat(64);
        let (out, failure) = unpack(&frame, c.size, &other);
        assert!(out.is_err());
        assert!(failure.unwrap().contains("SHA-256 mismatch"));
    }

    #[test]
    fn a_bomb_stops_at_the_manifest_size() {
        // 64 MiB of zeros compresses to a few hundred KiB ...
        let zeros = vec![0u8; 64 << 20];
        let (c, frame) = pack(&zeros);
        assert!(frame.len() < 1 << 20, "{}", frame.len());
        // ... and a manifest that claims 4 KiB stops the decompression right there.
        let mut r = VerifyingReader::new(&frame[..], 4096, &c.sha256);
        let mut sink = io::sink();
        let e = copy(&mut r, &mut sink).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(r.failure().unwrap().contains("decompression bomb"));
        assert!(r.count <= 4096 + (8 << 20), "read {} bytes", r.count);
    }
}
