//! A shim can die (OOM killer, a bug). containerd then runs `<shim> delete` in the
//! bundle to clean up; the function must not outlive its shim.

use std::time::Duration;

use containerd_client::types::v1::Status;

use crate::harness::{http, leaks, millis, secs, story, NAMESPACE};

/// The pid of the shim serving container `id` (its command line carries `-id <id>`).
fn shim_pid(id: &str) -> Option<libc::pid_t> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| {
            a.rsplit('/')
                .next()
                .unwrap_or(a)
                .starts_with("containerd-shim")
        });
        let serves = args.windows(2).any(|w| w[0] == "-id" && w[1] == id);
        (is_shim && serves).then_some(pid)
    })
}

#[test]
fn a_function_whose_shim_dies_is_cleaned_up_by_containerd() {
    story("shim-crash", |ctx| async move {
        let f = ctx.start_function("shimcrash").await?;
        let port = f.port();
        http::count(port, secs(5)).await?;

        let shim =
            shim_pid(&f.id).ok_or_else(|| anyhow::anyhow!("no shim process serves {}", f.id))?;
        // SAFETY: kill(2) of the shim process found above.
        assert_eq!(
            unsafe { libc::kill(shim, libc::SIGKILL) },
            0,
            "kill shim {shim}"
        );

        // containerd notices, runs `<shim> delete` in the bundle, which must take the
        // function down with it.
        let deadline = tokio::time::Instant::now() + secs(20);
        while http::get(port, "/", Duration::from_millis(500))
            .await
            .is_ok()
        {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the function {} still answers 20 s after its shim {shim} was killed",
                    f.id
                );
            }
            tokio::time::sleep(millis(100)).await;
        }
        while f.state().await.is_ok_and(|p| p.status() != Status::Stopped) {
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "task {} still alive 20 s after its shim {shim} was killed",
                    f.id
                );
            }
            tokio::time::sleep(millis(100)).await;
        }

        // containerd's own runc shim leaves the socket of a killed shim behind (its
        // `delete` does not remove it): tolerated for that runtime only, so the harness
        // can be validated with it. Rekindle's `delete` must remove it.
        if ctx.runtime() == "io.containerd.runc.v2" {
            for sock in leaks::shim_sockets(ctx.paths(), NAMESPACE, &f.id) {
                if std::fs::remove_file(&sock).is_ok() {
                    eprintln!(
                        "[rekindle-it] runc.v2 left {} behind (known upstream behaviour)",
                        sock.display()
                    );
                }
            }
        }

        // What is left to the user: the container record and its snapshot (and the
        // task, if containerd still lists it).
        let id = f.id.clone();
        if f.delete().await.is_err() {
            ctx.delete_container(&id).await?;
        }
        Ok(())
    });
}
