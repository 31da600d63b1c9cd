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

/// A TCP connection to 127.0.0.1:`port` in the network namespace at `netns` or in ours.
/// The socket is made by a thread of its own that enters the namespace (and ends right
/// after): a socket stays in the namespace it was made in, so the connection is then used
/// from the runtime like any other.
pub async fn connect(
    netns: Option<&Path>,
    port: u16,
    timeout: Duration,
) -> io::Result<tokio::net::TcpStream> {
    let netns = netns.map(Path::to_path_buf);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("instance-connect".into())
        .spawn(move || {
            let _ = tx.send(blocking_connect(netns.as_deref(), port, timeout));
        })?;
    let s = match tokio::time::timeout(timeout + Duration::from_millis(100), rx).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) => return Err(io::Error::other("the connect thread died")),
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {timeout:?}"),
            ))
        }
    };
    s.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(s)
}

fn blocking_connect(
    netns: Option<&Path>,
    port: u16,
    timeout: Duration,
) -> io::Result<std::net::TcpStream> {
    if let Some(ns) = netns {
        let f = fs::File::open(ns)?;
        // SAFETY: setns(2) with a valid fd; it moves this thread only, which ends after
        // the connect.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("setns {}: {e}", ns.display()),
            ));
        }
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let s = std::net::TcpStream::connect_timeout(&addr, timeout.max(Duration::from_millis(1)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Why [`forward`] failed.
#[derive(Debug)]
pub enum ForwardFailure {
    /// No connection: nothing was sent.
    Connect(io::Error),
    /// The exchange failed on the connection.
    Exchange(io::Error),
    /// The answer's body is over the limit.
    TooLarge,
}

/// `req` on 127.0.0.1:`port` in the namespace at `netns` (HTTP/1.1, one request on a
/// fresh connection), its whole answer; its body at most `max_body` bytes. The whole
/// exchange bounded by `timeout`.
pub async fn forward(
    netns: Option<&Path>,
    port: u16,
    req: super::ForwardRequest,
    timeout: Duration,
    max_body: usize,
) -> Result<super::ForwardResponse, ForwardFailure> {
    use http_body_util::{BodyExt as _, Full, Limited};
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = connect(netns, port, timeout)
        .await
        .map_err(ForwardFailure::Connect)?;
    let exchange = async move {
        let io_err = |e: hyper::Error| io::Error::other(e.to_string());
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| ForwardFailure::Exchange(io_err(e)))?;
        // The connection is driven beside the request; it ends with it (dropped below).
        let driver = tokio::spawn(conn);
        let mut r = hyper::Request::new(Full::new(req.body));
        *r.method_mut() = req.method;
        *r.uri_mut() = req
            .path
            .parse()
            .map_err(|e| ForwardFailure::Exchange(io::Error::other(format!("path: {e}"))))?;
        *r.headers_mut() = req.headers;
        r.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_str(&format!("127.0.0.1:{port}"))
                .expect("a valid header value"),
        );
        let result = async {
            let resp = sender
                .send_request(r)
                .await
                .map_err(|e| ForwardFailure::Exchange(io_err(e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        ForwardFailure::TooLarge
                    } else {
                        ForwardFailure::Exchange(io::Error::other(e.to_string()))
                    }
                })?
                .to_bytes();
            Ok(super::ForwardResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }
        .await;
        driver.abort();
        result
    };
    match tokio::time::timeout_at(deadline, exchange).await {
        Ok(r) => r,
        Err(_) => Err(ForwardFailure::Exchange(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no whole answer within {timeout:?}"),
        ))),
    }
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

    #[tokio::test]
    async fn forwards_method_headers_and_body_and_bounds_the_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in [
                &b"HTTP/1.0 201 Created\r\nX-Fn: yes\r\nContent-Length: 2\r\n\r\nok"[..],
                &b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"[..],
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // Head, then the 5 bytes of body it announces.
                while !raw.windows(4).any(|w| w == b"\r\n\r\n") || !raw.ends_with(b"hello") {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    raw.extend_from_slice(&buf[..n]);
                }
                seen.push(String::from_utf8_lossy(&raw).to_string());
                s.write_all(answer).unwrap();
            }
            seen
        });
        let req = || {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("x-test", "1".parse().unwrap());
            crate::driver::ForwardRequest {
                method: hyper::Method::PUT,
                path: "/a?b=c".into(),
                headers,
                body: hyper::body::Bytes::from_static(b"hello"),
            }
        };
        let r = forward(None, port, req(), Duration::from_secs(5), 100)
            .await
            .unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.headers["x-fn"], "yes");
        assert_eq!(&r.body[..], b"ok");
        let r = forward(None, port, req(), Duration::from_secs(5), 9).await;
        assert!(matches!(r, Err(ForwardFailure::TooLarge)), "{r:?}");
        let seen = server.join().unwrap();
        let first = seen[0].to_ascii_lowercase();
        assert!(first.starts_with("put /a?b=c http/1.1\r\n"), "{first}");
        for want in [
            "x-test: 1\r\n",
            "content-length: 5\r\n",
            &format!("host: 127.0.0.1:{port}\r\n"),
        ] {
            assert!(first.contains(want), "{want:?} not in {first}");
        }
        // Nobody listens any more: nothing was sent.
        let r = forward(None, port, req(), Duration::from_secs(1), 100).await;
        assert!(matches!(r, Err(ForwardFailure::Connect(_))), "{r:?}");
    }
}
