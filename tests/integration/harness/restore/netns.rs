//! Network namespaces made for containers, and HTTP inside them.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::unmount;

/// A network namespace made for one container, as a CNI plugin makes a pod's: created
/// by a thread that unshares its own, brings loopback up and bind-mounts
/// `/proc/thread-self/ns/net` on a file. Dropping it unmounts and removes the file (the
/// namespace itself lives on while a process is in it).
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let me = NetNs {
            path: path.to_path_buf(),
        };
        let target = path.to_path_buf();
        std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || make_netns(&target))?
            .join()
            .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
            .with_context(|| format!("making the network namespace {}", path.display()))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inode(&self) -> Result<u64> {
        ns_inode(&self.path)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        unmount(&self.path);
        let _ = fs::remove_file(&self.path);
    }
}

pub(crate) fn ns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// On a thread of its own (it ends right after): a new network namespace, loopback up,
/// bind-mounted on `target`.
fn make_netns(target: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    bring_loopback_up().context("bringing lo up")?;
    mount(
        Some("/proc/thread-self/ns/net"),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .context("bind-mounting the namespace")?;
    Ok(())
}

/// `lo` up in this thread's network namespace (SIOC[GS]IFFLAGS: nix has no wrapper).
fn bring_loopback_up() -> std::io::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: SIOC[GS]IFFLAGS on a valid socket with a zeroed ifreq naming "lo".
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `GET path` on 127.0.0.1:`port` in the network namespace at `netns`, from a thread
/// of its own that enters that namespace (and ends with the request).
pub async fn get_in_netns(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let (netns, path) = (netns.to_path_buf(), path.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-http".into())
        .spawn(move || {
            let _ = tx.send(blocking_get_in_netns(&netns, port, &path, timeout));
        })?;
    rx.await.context("the netns HTTP thread died")?
}

fn blocking_get_in_netns(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // Moves this thread only, which ends after the request.
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", netns.display()))?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| {
        format!(
            "connecting to {addr} in the network namespace {}",
            netns.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("GET {path} on {addr} (netns {})", netns.display()))?;
    super::super::http::parse_response(&raw, path, &addr.to_string())
}
