//! Issue #3: a checkpoint holds established TCP connections when asked
//! (`CheckpointOptions.open_tcp`: `runc checkpoint --tcp-established` for a container
//! runc runs), and the shim's direct engine restores them: a client that was half-way
//! through a request when its function was checkpointed gets its answer from the
//! restored function, on the very same connection.
//!
//! The function lives in a network namespace of its own that the test made (as a pod's
//! is made before its containers): the client's end of the connection stays there while
//! no process holds the server's end, and the restored container joins the same
//! namespace, where the connection's addresses still exist.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use containerd_client::types::v1::Status;

use crate::harness::restore::{
    get_in_netns, needs_rekindle, CheckpointOptions, Function, FunctionSpec, NETNS_PORT,
};
use crate::harness::{http, millis, secs, story, Ctx, NAMESPACE};

/// The request line the client sends before the checkpoint; the blank line that ends
/// the request goes after the restore, on the same connection.
const FIRST_PART: &[u8] = b"GET / HTTP/1.0\r\n";
const REST: &[u8] = b"\r\n";

#[test]
fn an_established_connection_survives_checkpoint_and_restore() {
    story("tcp-established", |ctx| async move {
        if let Some(skip) = needs_rekindle(&ctx, "tcp-established") {
            eprintln!("{skip}");
            return Ok(());
        }
        let f = FunctionSpec::new("tcp").own_netns().create(&ctx).await?;
        // The namespace outlives the container: the restored one joins it.
        let netns = f.netns.clone().expect("own netns");
        f.start().await?;
        f.wait_serving(secs(30)).await?;
        assert_eq!(f.count().await?, 1);

        // A client, inside the function's namespace, sends half a request: the server
        // has accepted the connection and waits for the rest of the headers.
        let mut client = connect_in_netns(netns.path(), f.port, secs(10)).await?;
        client.write_all(FIRST_PART)?;
        let local = client.local_addr()?;
        wait_accepted(&f, 2, secs(10))
            .await
            .context("the function never accepted the client's connection")?;

        // Checkpoint with the established connection, and the function stops.
        let exited = f.wait_in_background(secs(30));
        let ck = f
            .checkpoint(CheckpointOptions {
                open_tcp: true,
                exit: true,
                ..Default::default()
            })
            .await
            .context("checkpointing with open_tcp")?;
        exited.await??;
        let criu = ck.criu()?.clone();
        let spec = ck.spec(&ctx).await?;
        let id = f.id.clone();
        f.delete().await?;

        // The client's end is still there, idle, waiting for its answer.
        assert_eq!(client.local_addr()?, local);

        // The same container again, from the checkpoint, in the same namespace.
        let r = FunctionSpec::new("tcp")
            .id(&id)
            .port(NETNS_PORT)
            .with_spec(spec)
            .restore_from(&criu)
            .create(&ctx)
            .await
            .context("Tasks.Create with the checkpoint")?;
        let pid = r.start().await.context("restoring with the connection")?;
        assert!(pid > 0, "Tasks.Start of a restore reports the restored pid");
        assert!(
            !restored_by_runc(&ctx, &r.id),
            "containerd's own checkpoint is restored by the direct engine, not runc"
        );
        assert_eq!(
            r.netns_inode()?,
            netns.inode()?,
            "the restored function is in the namespace its checkpoint named"
        );

        // The rest of the request, on the same connection: the restored function
        // answers it from where it was.
        client.write_all(REST)?;
        let raw = read_to_end(client, secs(10)).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        eprintln!("[rekindle-it] tcp-established: the old connection got {text:?}");
        let (status, body) = http::parse_response(&raw, "/", &local.to_string())?;
        assert_eq!(status, 200, "{text}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("the answer on the old connection: {text:?}"))?;
        assert_eq!(
            json["count"], 2,
            "the restored function answered the request it had accepted: {json}"
        );

        // And it serves new connections too.
        let (status, body) = get_in_netns(netns.path(), NETNS_PORT, "/", secs(10)).await?;
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(json["count"], 3, "a fresh connection: {json}");
        assert_eq!(r.status().await?, Status::Running);

        r.destroy().await?;
        ck.release(&ctx).await?;
        drop(netns);
        Ok(())
    });
}

/// Which engine restored a task: runc keeps a state dir for the containers it runs;
/// the direct engine restores through libcriu and runc knows nothing of them.
fn restored_by_runc(ctx: &Ctx, id: &str) -> bool {
    ctx.paths()
        .runc_root
        .join(NAMESPACE)
        .join(id)
        .join("state.json")
        .exists()
}

/// A TCP connection to 127.0.0.1:`port` in the network namespace at `netns`, made by a
/// thread that enters that namespace and ends right after (the socket stays in it).
async fn connect_in_netns(netns: &Path, port: u16, timeout: Duration) -> Result<TcpStream> {
    let netns = netns.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::thread::Builder::new()
            .name("netns-connect".into())
            .spawn(move || blocking_connect_in_netns(&netns, port, timeout))?
            .join()
            .map_err(|_| anyhow::anyhow!("the netns connect thread panicked"))?
    })
    .await?
}

fn blocking_connect_in_netns(netns: &Path, port: u16, timeout: Duration) -> Result<TcpStream> {
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns(2) with a valid fd; it moves this thread only, which ends after
    // the connect.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns {}", netns.display()));
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr} in {}", netns.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// Everything the server sends until it closes the connection.
async fn read_to_end(mut s: TcpStream, timeout: Duration) -> Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(timeout))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .context("reading the answer on the old connection")?;
        Ok(raw)
    })
    .await?
}

/// Waits until the function's processes hold `sockets` sockets (the listener, and
/// each connection it accepted).
async fn wait_accepted(f: &Function, sockets: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while Instant::now() < deadline {
        seen = 0;
        for p in f.pids().await? {
            let fds = fs::read_dir(format!("/proc/{}/fd", p.pid)).into_iter();
            seen += fds
                .flatten()
                .flatten()
                .filter(|e| {
                    fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count();
        }
        if seen >= sockets {
            return Ok(());
        }
        tokio::time::sleep(millis(20)).await;
    }
    bail!("{seen} sockets in the function after {timeout:?}, expected {sockets}")
}
