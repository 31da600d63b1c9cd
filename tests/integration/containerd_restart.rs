//! containerd restarted while functions run (an upgrade, `systemctl restart
//! containerd`): the tasks survive, and the new containerd reconnects to their shims —
//! the running tasks are listed with the same pids, keep answering (and counting), and
//! every task call (exec, kill, wait, delete) reaches them as before.
//!
//! The story restarts a containerd of its own (`harness::own_containerd`), never the
//! one the other stories share. It runs one cold-started function (runc) and one
//! restored by the shim's direct engine from a stored image (the restored process is
//! the shim's child; runc has no state for it), both on the rekindle runtime.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::ListTasksRequest;
use containerd_client::types::v1::Status;

use crate::harness::client::bounded;
use crate::harness::restore::{
    fixture_image, needs_rekindle, restore_story_on, FunctionSpec, TaskEvents, FIXTURE_COUNT,
    IMAGE_ANNOTATION,
};
use crate::harness::{http, millis, own_containerd, secs, Ctx, RPC_TIMEOUT};

/// The name the story stores the fixture under.
const FN_IMAGE: &str = "python-fn";

/// `(status, pid)` of each task containerd lists (Tasks.List), by container id.
async fn listed(ctx: &Ctx) -> Result<Vec<(String, Status, u32)>> {
    let tasks = bounded(
        "Tasks.List",
        RPC_TIMEOUT,
        ctx.tasks().list(ctx.req(ListTasksRequest {
            filter: String::new(),
        })),
    )
    .await?
    .into_inner()
    .tasks;
    Ok(tasks
        .into_iter()
        .map(|t| (t.id.clone(), t.status(), t.pid))
        .collect())
}

/// Tasks.List through the story's channel until the restarted containerd answers
/// (the channel reconnects on its own; its first calls may fail).
async fn wait_answering(ctx: &Ctx) -> Result<Vec<(String, Status, u32)>> {
    let deadline = Instant::now() + secs(30);
    loop {
        match listed(ctx).await {
            Ok(tasks) => return Ok(tasks),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the restarted containerd did not answer within 30 s"))
            }
            Err(_) => tokio::time::sleep(millis(100)).await,
        }
    }
}

#[test]
fn running_functions_survive_a_containerd_restart_and_are_reconnected() {
    let (cd, on) = own_containerd().unwrap_or_else(|e| panic!("own containerd: {e:#}"));
    let cd = Arc::new(Mutex::new(cd));
    let restarter = cd.clone();
    restore_story_on("containerd-restart", &on, |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "containerd-restart") {
            eprintln!("{skip}");
            return Ok(());
        }
        // (a) cold-started, (b) restored by the direct engine from a stored image
        let cold = ctx.start_function("restart-cold").await?;
        let port = cold.port();
        assert_eq!(http::count(port, secs(5)).await?, 1);
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let warm = FunctionSpec::new("restart-restored")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .create(&ctx)
            .await?;
        warm.start().await?;
        assert_eq!(warm.count().await?, FIXTURE_COUNT + 1);
        let cold_pid = cold.state().await?.pid;
        let warm_pid = warm.state().await?.pid;
        assert_eq!(warm_pid, warm.pid(), "Tasks.Get and Tasks.Start agree");

        // containerd goes down and comes back with the same root, state and sockets.
        tokio::task::spawn_blocking(move || {
            // wait_ready runs a runtime of its own: not on this runtime's threads.
            std::thread::spawn(move || {
                restarter
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .restart()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("restarting containerd panicked"))?
        })
        .await?
        .context("restarting containerd")?;

        // Both tasks are still listed, running, with the same pids.
        let tasks = wait_answering(&ctx).await?;
        // What the shims publish from now on reaches the new containerd (CRI learns
        // of a container's exit from /tasks/exit).
        let events = TaskEvents::subscribe(&ctx).await?;
        for (id, pid) in [(&cold.id, cold_pid), (&warm.id, warm_pid)] {
            let Some((_, status, listed_pid)) = tasks.iter().find(|(t, _, _)| t == id) else {
                bail!("after the restart containerd no longer lists task {id}: {tasks:?}");
            };
            assert_eq!(
                *status,
                Status::Running,
                "{id} after the restart: {tasks:?}"
            );
            assert_eq!(*listed_pid, pid, "{id}'s pid after the restart");
        }
        assert_eq!(cold.state().await?.status(), Status::Running);
        assert_eq!(cold.state().await?.pid, cold_pid);
        assert_eq!(warm.state().await?.status(), Status::Running);
        assert_eq!(warm.state().await?.pid, warm_pid);

        // They still answer, from where they were.
        assert_eq!(
            http::count(port, secs(5)).await?,
            2,
            "the cold one counts on"
        );
        assert_eq!(
            warm.count().await?,
            FIXTURE_COUNT + 2,
            "the restored one counts on"
        );

        // Exec reaches the restored one through its reconnected shim.
        let (status, out) = warm
            .exec("after-restart", &["/bin/cat", "/proc/1/cmdline"])
            .await?;
        assert_eq!(status, 0, "exec after the restart: {out:?}");
        assert!(out.contains("python3"), "pid 1 of the container: {out:?}");

        // Kill, Wait and Delete on both.
        let exited = cold.wait_in_background(secs(30));
        cold.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0, "the cold function's exit status");
        let cold_id = cold.id.clone();
        assert_eq!(cold.delete().await?, 0, "Tasks.Delete of the cold function");
        let exited = warm.wait_in_background(secs(30));
        warm.kill(libc::SIGTERM).await?;
        assert_eq!(exited.await??, 0, "the restored function's exit status");
        let warm_id = warm.id.clone();
        assert_eq!(warm.delete().await?, 0, "Tasks.Delete of the restored one");
        events
            .wait_for(&cold_id, &["/tasks/exit"])
            .await
            .context("the cold function's shim publishes after the restart")?;
        events
            .wait_for(&warm_id, &["/tasks/exec-added", "/tasks/exit"])
            .await
            .context("the restored function's shim publishes after the restart")?;
        Ok(())
    });
    // Its own containerd stopped: no shim, mount or socket of the story left behind.
    let leaked = cd.lock().unwrap_or_else(PoisonError::into_inner).shutdown();
    assert!(
        leaked.is_empty(),
        "LEAK after stopping the story's containerd:\n  {}",
        leaked.join("\n  ")
    );
}
