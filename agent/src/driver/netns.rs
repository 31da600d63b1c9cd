//! Network namespaces for instances, and HTTP inside them.
//!
//! A namespace is made as `ip netns add` (or a CNI plugin) makes one: a thread of its own
//! unshares its network namespace, brings loopback up and bind-mounts
//! `/proc/thread-self/ns/net` on a file (`/run/netns/rekindle-<id>`), then ends. The
//! container names that file in its spec, so runc joins it, and CRIU checkpoints it as
//! external and restores into the namespace the new container names.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Makes the network namespace file `path` (its directory too), loopback up.
pub fn create(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let target = path.to_path_buf();
    let made = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || make_netns(&target))?
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")));
    if made.is_err() {
        let _ = fs::remove_file(path);
    }
    made
}

/// Unmounts and removes the namespace file (the namespace itself lives on while a
/// process is in it). A file already gone is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2(2) of a valid NUL-terminated path; EINVAL (not a mount point)
        // and ENOENT are what a half-made or removed namespace gives, and are fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// On this thread (which ends right after): a new network namespace, loopback up,
/// bind-mounted on `target`.
fn make_netns(target: &Path) -> io::Result<()> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    // SAFETY: unshare(2) of this thread's network namespace only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(ctx("unshare(CLONE_NEWNET)", io::Error::last_os_error()));
    }
    // SAFETY: a socket, and SIOC[GS]IFFLAGS on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(ctx("socket", io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            return Err(ctx("bringing lo up", err));
        }
    }
    let src = std::ffi::CString::new("/proc/thread-self/ns/net").map_err(io::Error::other)?;
    let dst =
        std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: a bind mount between two valid NUL-terminated paths.
    let mounted = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(ctx(
            "bind-mounting the namespace",
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// `GET path` on 127.0.0.1:`port`, in the network namespace at `netns` (from a thread of
/// its own that enters it and ends with the request) or in ours; the status and body.
pub async fn http_get(
    netns: Option<&Path>,
    port: u16,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let (netns, path): (Option<PathBuf>, String) = (netns.map(Path::to_path_buf), path.into());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("instance-http".into())
        .spawn(move || {
            let _ = tx.send(blocking_get(netns.as_deref(), port, &path, timeout));
        })?;
    // The thread's own timeouts bound each step; this bounds the whole exchange.
    match tokio::time::timeout(timeout + Duration::from_millis(100), rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(io::Error::other("the HTTP thread died")),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    }
}

fn blocking_get(
    netns: Option<&Path>,
    port: u16,
    path: &str,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let deadline = std::time::Instant::now() + timeout;
    let left = || {
        deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    if let Some(ns) = netns {
        let f = fs::File::open(ns)?;
        // SAFETY: setns(2) with a valid fd; it moves this thread only, which ends after
        // the request.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("setns {}: {e}", ns.display()),
            ));
        }
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, left())?;
    s.set_write_timeout(Some(left()))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left()))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&raw)
}

/// The status code and body of an HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "not an HTTP response: {:?}",
                text.chars().take(200).collect::<String>()
            ),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let (status, body) =
            parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\n{\"count\": 1}").unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, "{\"count\": 1}");
        assert!(parse_response(b"garbage").is_err());
    }

    #[tokio::test]
    async fn gets_from_a_local_server_and_times_out_on_a_silent_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
            drop(s);
            // Then one that never answers.
            let (_silent, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let (status, body) = http_get(None, port, "/x", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (404, "nope"));
        let started = std::time::Instant::now();
        assert!(http_get(None, port, "/", Duration::from_millis(150))
            .await
            .is_err());
        assert!(started.elapsed() < Duration::from_millis(450));
        server.join().unwrap();
    }
}
