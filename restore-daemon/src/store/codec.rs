//! LZ4 at rest: each image file becomes one LZ4 frame (lz4_flex, frame format, with the
//! content checksum and the content size in the header). Reading back verifies three
//! things: the frame's own checksum, the SHA-256 the manifest records, and the size —
//! decompression stops one byte past the manifest's size, so a small frame that expands
//! to gigabytes (a decompression bomb) costs at most one block. A file is exactly one
//! whole frame: a frame without its end mark, or bytes after it, are corrupt too.

use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

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
    /// SHA-256 of the frame written, lowercase hex.
    pub compressed_sha256: String,
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
    hasher: Sha256,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
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
            hasher: Sha256::new(),
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
            compressed_sha256: hex(&out.hasher.finalize()),
        },
        out.inner,
    ))
}

/// Decompresses one stored frame and checks it against the manifest as it is read.
///
/// Errors surface as `io::Error`s from `read`; [`VerifyingReader::failure`] then says
/// what was wrong with the data (a corrupt file) as opposed to an I/O failure.
pub struct VerifyingReader<R: Read> {
    inner: FrameReader<R>,
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
            inner: FrameReader::new(compressed),
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
        // An empty buffer reads 0 bytes, which must not be taken for the end.
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(VerifyError::Corrupt(reason)) => return Err(self.fail(reason)),
            Err(VerifyError::Io(e)) => return Err(e),
        };
        if n == 0 {
            if self.count != self.expected_size {
                return Err(self.fail(wrong_size(self.count, self.expected_size)));
            }
            let sha = hex(&std::mem::take(&mut self.hasher).finalize());
            if sha != self.expected_sha256 {
                return Err(self.fail(sha_mismatch("content", &sha, &self.expected_sha256)));
            }
            self.done = true;
            return Ok(0);
        }
        self.count += n as u64;
        if self.count > self.expected_size {
            return Err(self.fail(too_large(self.expected_size)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The compressed input of a frame decoder, noting when it ran dry.
struct FrameSource<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for FrameSource<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Exactly one whole LZ4 frame: lz4_flex's decoder, made strict about where the frame
/// ends. The decoder takes an end of input where a block header belongs for the end of
/// the frame, so a frame cut at a block boundary (end mark and checksum gone) would
/// pass for whole; and it stops at the end mark, so bytes after the frame would go
/// unread. Here the end of the data is the end mark and checksum, and nothing after.
struct FrameReader<R: Read> {
    dec: FrameDecoder<FrameSource<R>>,
}

impl<R: Read> FrameReader<R> {
    fn new(compressed: R) -> Self {
        FrameReader {
            dec: FrameDecoder::new(FrameSource {
                inner: compressed,
                eof: false,
            }),
        }
    }

    /// Like `Read::read` (`buf` not empty), with the reason when the data is corrupt;
    /// 0 only at the end of a whole frame with nothing after it.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, VerifyError> {
        let n = loop {
            match self.dec.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(match lz4_failure(e) {
                        Ok(reason) => VerifyError::Corrupt(reason),
                        Err(e) => VerifyError::Io(e),
                    })
                }
            }
        };
        if n > 0 {
            return Ok(n);
        }
        let src = self.dec.get_mut();
        if src.eof {
            // The decoder met the end of the input before the frame's end mark.
            return Err(VerifyError::Corrupt(CUT_SHORT.into()));
        }
        let mut probe = [0u8; 1];
        loop {
            match src.inner.read(&mut probe) {
                Ok(0) => return Ok(0),
                Ok(_) => {
                    return Err(VerifyError::Corrupt(
                        "bytes after the end of the LZ4 frame (one file is one frame)".into(),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(VerifyError::Io(e)),
            }
        }
    }
}

/// Decompresses one frame to nowhere, checking it against the manifest's `size` and
/// `sha256` exactly as a restore does; returns the bytes it holds. What import checks
/// each archived file with.
pub fn verify_frame<R: Read>(compressed: R, size: u64, sha256: &str) -> Result<u64, VerifyError> {
    let mut reader = VerifyingReader::new(compressed, size, sha256);
    let copied = copy(&mut reader, &mut io::sink());
    if let Some(reason) = reader.failure() {
        return Err(VerifyError::Corrupt(reason.to_string()));
    }
    copied.map_err(VerifyError::Io)
}

/// What a read error of a `FrameDecoder` means: `Ok(reason)` when the data is corrupt,
/// `Err` (the error itself) when reading failed.
fn lz4_failure(e: io::Error) -> Result<String, io::Error> {
    // lz4_flex reports bad headers and checksum mismatches as InvalidData, bad block
    // contents as Other wrapping its own error type, and a frame cut short as
    // UnexpectedEof. Anything else is the underlying reader's.
    let is_lz4 = e
        .get_ref()
        .is_some_and(|inner| inner.is::<lz4_flex::frame::Error>());
    match e.kind() {
        _ if is_lz4 => Ok(format!("invalid LZ4 data: {e}")),
        io::ErrorKind::InvalidData => Ok(format!("invalid LZ4 data: {e}")),
        io::ErrorKind::UnexpectedEof => Ok(format!("LZ4 frame cut short (truncated?): {e}")),
        _ => Err(e),
    }
}

/// A frame whose data ends before its end mark.
pub(crate) const CUT_SHORT: &str = "LZ4 frame cut short (truncated?): no end mark";

pub(crate) fn wrong_size(count: u64, expected: u64) -> String {
    format!("decompresses to {count} bytes, the manifest says {expected} (truncated?)")
}

pub(crate) fn too_large(expected: u64) -> String {
    format!("decompresses to more than the manifest's {expected} bytes (decompression bomb?)")
}

/// `what`: "content" (the decompressed bytes) or "the stored frame".
pub(crate) fn sha_mismatch(what: &str, sha: &str, expected: &str) -> String {
    format!("SHA-256 mismatch: {what} hashes to {sha}, the manifest says {expected}")
}

/// A reader that hashes (SHA-256) what it passes on: the digest of a stored frame,
/// taken while the frame is read for something else.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// SHA-256 (lowercase hex) of everything read so far.
    pub fn digest(self) -> String {
        hex(&self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
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

/// Decompressed bytes per chunk handed from the decompressing thread to the hashing one:
/// large enough that the hand-over costs nothing, small enough to stay in cache between
/// the two.
pub const PIPE_CHUNK: usize = 1 << 20;

/// Chunks in flight between the two threads (the memory the pipeline holds on top of
/// the decoder's own block buffers).
const PIPE_DEPTH: usize = 4;

/// Files smaller than this are verified on the calling thread alone: for them a round
/// trip to the hashing thread costs more than it saves.
pub const PIPE_MIN_SIZE: u64 = 1 << 20;

/// Why verified decompression failed: the data is corrupt (the reason), or I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(io::Error),
}

enum ToHasher {
    Chunk(Arc<Vec<u8>>, usize),
    /// End of the file: send back the digest and start over.
    Finish,
}

enum FromHasher {
    Chunk(Arc<Vec<u8>>),
    Digest(String),
}

/// A thread that computes SHA-256 over the chunks it is sent, so that decompressing
/// and writing (on the caller's thread) and hashing (on this one) use two cores: alone,
/// SHA-256 costs about as much as decompressing and writing together. Chunks come back
/// for reuse, so the memory stays at `PIPE_DEPTH` chunks.
pub struct Sha256Thread {
    to: Option<SyncSender<ToHasher>>,
    from: Receiver<FromHasher>,
    free: Vec<Vec<u8>>,
    in_flight: usize,
    thread: Option<JoinHandle<()>>,
}

impl Sha256Thread {
    pub fn spawn() -> io::Result<Self> {
        // Never more than PIPE_DEPTH chunks plus a Finish are queued: sends never block.
        let (to, rx) = mpsc::sync_channel::<ToHasher>(PIPE_DEPTH + 1);
        let (tx, from) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rekindle-sha256".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                for msg in rx {
                    let reply = match msg {
                        ToHasher::Chunk(buf, n) => {
                            hasher.update(&buf[..n]);
                            FromHasher::Chunk(buf)
                        }
                        ToHasher::Finish => {
                            FromHasher::Digest(hex(&std::mem::take(&mut hasher).finalize()))
                        }
                    };
                    if tx.send(reply).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Sha256Thread {
            to: Some(to),
            from,
            free: Vec::new(),
            in_flight: 0,
            thread: Some(thread),
        })
    }

    fn send(&self, msg: ToHasher) -> io::Result<()> {
        self.to
            .as_ref()
            .and_then(|to| to.send(msg).ok())
            .ok_or_else(|| io::Error::other("the SHA-256 thread is gone"))
    }

    /// Waits for the hasher's next reply: a chunk it is done with (kept for reuse;
    /// `None`) or the digest of a file.
    fn recv(&mut self) -> io::Result<Option<String>> {
        let msg = self
            .from
            .recv()
            .map_err(|_| io::Error::other("the SHA-256 thread is gone"))?;
        Ok(match msg {
            FromHasher::Chunk(buf) => {
                self.in_flight -= 1;
                // The caller dropped its own reference once it wrote the chunk out;
                // should it not have, the buffer is simply not reused.
                if let Some(buf) = Arc::into_inner(buf) {
                    self.free.push(buf);
                }
                None
            }
            FromHasher::Digest(d) => Some(d),
        })
    }

    /// A chunk buffer: a free one, or a new one while fewer than `PIPE_DEPTH` are in
    /// flight, or else the next one the hasher is done with.
    fn buffer(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(buf) = self.free.pop() {
                return Ok(buf);
            }
            if self.in_flight < PIPE_DEPTH {
                return Ok(vec![0; PIPE_CHUNK]);
            }
            self.recv()?;
        }
    }

    /// Hashes `buf[..n]` as the next bytes of the current file.
    fn hash(&mut self, buf: Arc<Vec<u8>>, n: usize) -> io::Result<()> {
        self.send(ToHasher::Chunk(buf, n))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The SHA-256 (lowercase hex) of everything sent since the last `finish`; the next
    /// chunk starts a new file.
    fn finish(&mut self) -> io::Result<String> {
        self.send(ToHasher::Finish)?;
        loop {
            if let Some(d) = self.recv()? {
                return Ok(d);
            }
        }
    }
}

impl Drop for Sha256Thread {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop.
        drop(self.to.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decompresses one stored frame from `compressed` into `dst`, checking it against the
/// manifest exactly as [`VerifyingReader`] does — the frame's checksum (by the decoder),
/// the size (never writing past it: a bomb stops within one block) and the SHA-256 —
/// with the hashing done on `hasher`'s thread while this one decompresses and writes the
/// next chunk. `dst` holds unverified bytes until this returns `Ok`: the caller must
/// discard it on error. Returns the bytes written.
pub fn decompress_verified<R: Read, W: Write>(
    compressed: R,
    expected_size: u64,
    expected_sha256: &str,
    dst: &mut W,
    hasher: &mut Sha256Thread,
) -> Result<u64, VerifyError> {
    let written = decode_chunks(
        compressed,
        expected_size,
        &mut Hashed {
            dst,
            hasher: &mut *hasher,
        },
    );
    verdict(written, hasher, expected_size, "content", expected_sha256)
}

/// The end of a piped file, whatever happened: the file is ended on the hasher (so that
/// it starts the next one afresh), then the size and the digest are checked.
fn verdict(
    written: Result<u64, VerifyError>,
    hasher: &mut Sha256Thread,
    expected_size: u64,
    what: &str,
    expected_sha256: &str,
) -> Result<u64, VerifyError> {
    let sha = hasher.finish();
    let count = written?;
    let sha = sha.map_err(VerifyError::Io)?;
    if count != expected_size {
        return Err(VerifyError::Corrupt(wrong_size(count, expected_size)));
    }
    if sha != expected_sha256 {
        return Err(VerifyError::Corrupt(sha_mismatch(
            what,
            &sha,
            expected_sha256,
        )));
    }
    Ok(count)
}

/// [`decompress_verified`] for a frame whose own SHA-256 the manifest records
/// (`compressed_sha256`): `hasher` hashes the frame's bytes as the decoder reads them,
/// not the decompressed ones — a CRIU image compresses ~3-4x, so the second core's
/// share shrinks as much and decompressing becomes the whole cost. The size and the
/// frame's content checksum are checked as before; the frame must end where the file
/// does. `dst` holds unverified bytes until this returns `Ok`; a failed frame still ends
/// the file on the hasher, so it starts the next one afresh.
pub fn decompress_verified_frame<R: Read, W: Write>(
    compressed: R,
    expected_size: u64,
    expected_frame_sha256: &str,
    dst: &mut W,
    hasher: &mut Sha256Thread,
) -> Result<u64, VerifyError> {
    let mut src = HashingSource {
        inner: compressed,
        hasher: &mut *hasher,
        chunk: None,
        pos: 0,
        len: 0,
    };
    // The frame reader reads to the end of the file (bytes after the frame are an error),
    // so the digest covers the whole stored file.
    let written = decode_chunks(
        &mut src,
        expected_size,
        &mut Plain {
            dst,
            spare: Some(vec![0u8; PIPE_CHUNK]),
        },
    );
    drop(src);
    verdict(
        written,
        hasher,
        expected_size,
        "the stored frame",
        expected_frame_sha256,
    )
}

/// Where [`decode_chunks`] gets its buffers and puts what it decoded.
trait Chunks {
    fn buffer(&mut self) -> Result<Vec<u8>, VerifyError>;
    /// `buf[..n]` was decoded.
    fn emit(&mut self, buf: Vec<u8>, n: usize) -> Result<(), VerifyError>;
}

/// Decoded chunks written to `dst`, one buffer reused.
struct Plain<'w, W> {
    dst: &'w mut W,
    spare: Option<Vec<u8>>,
}

impl<W: Write> Chunks for Plain<'_, W> {
    fn buffer(&mut self) -> Result<Vec<u8>, VerifyError> {
        Ok(self.spare.take().unwrap_or_else(|| vec![0u8; PIPE_CHUNK]))
    }

    fn emit(&mut self, buf: Vec<u8>, n: usize) -> Result<(), VerifyError> {
        self.dst.write_all(&buf[..n]).map_err(VerifyError::Io)?;
        self.spare = Some(buf);
        Ok(())
    }
}

/// Decoded chunks hashed on the hasher's thread while they are written to `dst`.
struct Hashed<'w, 'h, W> {
    dst: &'w mut W,
    hasher: &'h mut Sha256Thread,
}

impl<W: Write> Chunks for Hashed<'_, '_, W> {
    fn buffer(&mut self) -> Result<Vec<u8>, VerifyError> {
        self.hasher.buffer().map_err(VerifyError::Io)
    }

    fn emit(&mut self, buf: Vec<u8>, n: usize) -> Result<(), VerifyError> {
        // Shared, so that the hasher starts on the chunk while it is written.
        let buf = Arc::new(buf);
        self.hasher
            .hash(Arc::clone(&buf), n)
            .map_err(VerifyError::Io)?;
        self.dst.write_all(&buf[..n]).map_err(VerifyError::Io)
    }
}

/// The one decoding loop: fills the buffers `chunks` hands out from the frame and passes
/// each back decoded; stops a bomb at `expected_size`. Returns the bytes decoded.
fn decode_chunks<R: Read>(
    src: R,
    expected_size: u64,
    chunks: &mut impl Chunks,
) -> Result<u64, VerifyError> {
    let mut dec = FrameReader::new(src);
    let mut count = 0u64;
    loop {
        let mut buf = chunks.buffer()?;
        // The decoder hands out what is left of its current block (up to 4 MiB), so
        // one read fills the chunk but at a block's end.
        let n = dec.read(&mut buf)?;
        if n == 0 {
            return Ok(count);
        }
        count += n as u64;
        if count > expected_size {
            return Err(VerifyError::Corrupt(too_large(expected_size)));
        }
        chunks.emit(buf, n)?;
    }
}

/// Reads `inner` in chunks that also go to the hashing thread.
struct HashingSource<'h, R> {
    inner: R,
    hasher: &'h mut Sha256Thread,
    chunk: Option<Arc<Vec<u8>>>,
    pos: usize,
    len: usize,
}

impl<R: Read> Read for HashingSource<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            // Ours dropped first, so that the hasher's copy can come back for reuse.
            self.chunk = None;
            let mut buf = self.hasher.buffer()?;
            let mut n = 0;
            while n < buf.len() {
                match self.inner.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                return Ok(0);
            }
            let buf = Arc::new(buf);
            self.hasher.hash(Arc::clone(&buf), n)?;
            self.chunk = Some(buf);
            self.pos = 0;
            self.len = n;
        }
        let chunk = self.chunk.as_ref().expect("filled above");
        let k = out.len().min(self.len - self.pos);
        out[..k].copy_from_slice(&chunk[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
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
    fn a_frame_cut_at_a_block_boundary_is_detected() {
        // lz4_flex's decoder takes an end of input where a block header should be for
        // the end of the frame: cut there, a frame still yields all its bytes, so only
        // the missing end mark and checksum tell. (Regression: such a frame passed.)
        for n in [0, 1000, 5 << 20] {
            let data = sample(n);
            let (c, frame) = pack(&data);
            for cut in [4, 5, 7, 8, 9, 11] {
                let (out, failure) = unpack(&frame[..frame.len() - cut], c.size, &c.sha256);
                assert!(out.is_err(), "n = {n}, cut {cut}: passed");
                let failure = failure.unwrap();
                assert!(
                    failure.contains("cut short"),
                    "n = {n}, cut {cut}: {failure}"
                );
            }
        }
    }

    #[test]
    fn an_empty_input_is_not_a_frame() {
        let empty_sha = hex(&Sha256::digest(b""));
        let (out, failure) = unpack(b"", 0, &empty_sha);
        assert!(out.is_err());
        assert!(failure.unwrap().contains("cut short"));
    }

    #[test]
    fn bytes_after_the_frame_are_refused() {
        let data = sample(5000);
        let (c, mut frame) = pack(&data);
        frame.extend_from_slice(b"trailing");
        let (out, failure) = unpack(&frame, c.size, &c.sha256);
        assert!(out.is_err());
        assert!(failure.unwrap().contains("after the end of the LZ4 frame"));
        // A second, valid frame counts as trailing bytes too: one file, one frame.
        let (_, second) = pack(&data);
        let (c, mut frame) = pack(&data);
        frame.extend_from_slice(&second);
        let (out, failure) = unpack(&frame, c.size, &c.sha256);
        assert!(out.is_err());
        assert!(failure.is_some());
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

    /// [`decompress_verified`] (`frame`: [`decompress_verified_frame`], given the frame's
    /// digest) on one shared hashing thread, as `Store::extract` runs it.
    fn unpack_piped(
        hasher: &mut Sha256Thread,
        frame_mode: bool,
        frame: &[u8],
        size: u64,
        sha: &str,
    ) -> Result<Vec<u8>, VerifyError> {
        let mut out = Vec::new();
        let r = if frame_mode {
            decompress_verified_frame(frame, size, sha, &mut out, hasher)
        } else {
            decompress_verified(frame, size, sha, &mut out, hasher)
        };
        r.map(|n| {
            assert_eq!(n, out.len() as u64);
            out
        })
    }

    #[test]
    fn the_pipeline_restores_every_byte() {
        let mut hasher = Sha256Thread::spawn().unwrap();
        // Around the chunk and block sizes, and more chunks than are in flight.
        for n in [0, 1, PIPE_CHUNK - 1, PIPE_CHUNK, (4 << 20) + 17, 9 << 20] {
            let data = sample(n);
            let (c, frame) = pack(&data);
            let out = unpack_piped(&mut hasher, false, &frame, c.size, &c.sha256).unwrap();
            assert!(out == data, "n = {n}");
            assert_eq!(c.compressed_sha256, hex(&Sha256::digest(&frame)));
            let out =
                unpack_piped(&mut hasher, true, &frame, c.size, &c.compressed_sha256).unwrap();
            assert!(out == data, "n = {n}, by the frame's digest");
        }
    }

    #[test]
    fn the_pipeline_refuses_what_the_reader_refuses() {
        let mut hasher = Sha256Thread::spawn().unwrap();
        let data = sample(3 << 20);
        let (c, frame) = pack(&data);
        for frame_mode in [false, true] {
            let sha = if frame_mode {
                c.compressed_sha256.as_str()
            } else {
                c.sha256.as_str()
            };
            let mut unpack = |f: &[u8], size: u64, sha: &str| {
                unpack_piped(&mut hasher, frame_mode, f, size, sha)
            };
            let corrupt = |r: Result<Vec<u8>, VerifyError>| match r {
                Err(VerifyError::Corrupt(reason)) => reason,
                other => panic!("expected corrupt data, got {:?}", other.map(|v| v.len())),
            };
            let step = (frame.len() / 50).max(1);
            for pos in (0..frame.len()).step_by(step).chain([frame.len() - 2]) {
                let mut bad = frame.clone();
                bad[pos] ^= 0x40;
                corrupt(unpack(&bad, c.size, sha));
            }
            for len in [0, 3, frame.len() / 2, frame.len() - 1] {
                corrupt(unpack(&frame[..len], c.size, sha));
            }
            // Cut at the block boundary before the end mark, or with bytes after the frame.
            for len in [frame.len() - 8, frame.len() - 5] {
                let reason = corrupt(unpack(&frame[..len], c.size, sha));
                assert!(reason.contains("cut short"), "{reason}");
            }
            let mut longer = frame.clone();
            longer.push(0);
            let reason = corrupt(unpack(&longer, c.size, sha));
            assert!(
                reason.contains("after the end of the LZ4 frame"),
                "{reason}"
            );
            let other = "0".repeat(64);
            let reason = corrupt(unpack(&frame, c.size, &other));
            assert!(reason.contains("SHA-256 mismatch"), "{reason}");
            let reason = corrupt(unpack(&frame, c.size + 1, sha));
            assert!(reason.contains("truncated"), "{reason}");
            let reason = corrupt(unpack(&frame, c.size - 1, sha));
            assert!(reason.contains("decompression bomb"), "{reason}");
            // Failures mid-file leave the thread ready for the next file.
            let out = unpack(&frame, c.size, sha).unwrap();
            assert!(out == data);
        }
    }

    #[test]
    fn the_pipeline_never_writes_past_the_manifest_size() {
        let zeros = vec![0u8; 64 << 20];
        let (c, frame) = pack(&zeros);
        let mut hasher = Sha256Thread::spawn().unwrap();
        let mut out = Vec::new();
        let e = decompress_verified(&frame[..], 4096, &c.sha256, &mut out, &mut hasher);
        assert!(matches!(e, Err(VerifyError::Corrupt(r)) if r.contains("decompression bomb")));
        assert!(out.len() <= 4096, "wrote {} bytes", out.len());
    }
}
