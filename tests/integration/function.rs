//! The long-running HTTP function: served, paused and resumed, stopped.

use containerd_client::types::v1::Status;

use crate::harness::{http, millis, secs, story};

#[test]
fn a_function_serves_requests_and_exits_cleanly_on_sigterm() {
    story("function-serves", |ctx| async move {
        let f = ctx.start_function("serve").await?;
        let port = f.port();
        assert_eq!(f.state().await?.status(), Status::Running);

        let first = http::count(port, secs(5)).await?;
        let second = http::count(port, secs(5)).await?;
        assert_eq!(
            second,
            first + 1,
            "the function keeps its count between requests"
        );

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        let status = exited.await??;
        assert_eq!(status, 0, "a function stopped with SIGTERM exits 0");
        assert_eq!(f.state().await?.status(), Status::Stopped);

        assert_eq!(f.delete().await?, 0, "exit status reported by Tasks.Delete");
        Ok(())
    });
}

#[test]
fn a_paused_function_holds_requests_until_it_is_resumed() {
    story("function-pause", |ctx| async move {
        let f = ctx.start_function("pause").await?;
        let port = f.port();
        let before = http::count(port, secs(5)).await?;

        f.pause().await?;
        assert_eq!(
            f.state().await?.status(),
            Status::Paused,
            "state after Tasks.Pause"
        );

        // The kernel still accepts the connection; nobody in the frozen cgroup answers.
        let pending = tokio::spawn(http::count(port, secs(30)));
        tokio::time::sleep(millis(1000)).await;
        assert!(
            !pending.is_finished(),
            "a paused function answered a request: {:?}",
            pending.await
        );

        f.resume().await?;
        assert_eq!(
            f.state().await?.status(),
            Status::Running,
            "state after Tasks.Resume"
        );
        let during = tokio::time::timeout(secs(10), pending)
            .await
            .map_err(|_| {
                anyhow::anyhow!("the request held during the pause was not answered after resume")
            })???;
        assert_eq!(
            during,
            before + 1,
            "the held request is answered, in order, after resume"
        );
        assert_eq!(http::count(port, secs(5)).await?, before + 2);

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        f.delete().await?;
        Ok(())
    });
}

#[test]
fn kill_all_reaches_every_process_not_just_the_init() {
    story("kill-all", |ctx| async move {
        // An init that, as PID 1 without a handler, is immune to SIGTERM; its children
        // are not.
        let script = "/bin/sleep 300 & /bin/sleep 301 & wait; echo children-gone";
        let c = ctx
            .create(
                "killall",
                Some(vec!["/bin/sh".into(), "-c".into(), script.into()]),
                vec![],
            )
            .await?;
        c.start().await?;
        let extra = c.exec("sleeper", &["/bin/sleep", "302"], false).await?;
        extra.start().await?;

        let deadline = tokio::time::Instant::now() + secs(10);
        let mut pids = c.pids().await?;
        while pids.len() < 4 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(millis(50)).await;
            pids = c.pids().await?;
        }
        assert_eq!(
            pids.len(),
            4,
            "sh, two sleeps and the exec'd sleep: {pids:?}"
        );

        // Without `all`, SIGTERM reaches the init alone, which ignores it.
        c.kill(libc::SIGTERM, false).await?;
        tokio::time::sleep(millis(500)).await;
        assert_eq!(
            c.state().await?.status(),
            Status::Running,
            "SIGTERM to the init alone"
        );
        assert_eq!(c.pids().await?.len(), 4);

        // With `all`, every process gets it: the sleeps die, the init's `wait` returns.
        let exited = c.wait_in_background(secs(30));
        c.kill(libc::SIGTERM, true).await?;
        assert_eq!(
            exited.await??,
            0,
            "the init ends normally once its children are gone"
        );
        assert_eq!(
            extra.wait(secs(10)).await?,
            128 + libc::SIGTERM as u32,
            "the exec'd process was killed by SIGTERM too"
        );
        let out = c.stdout.wait_eof(secs(10)).await?;
        assert_eq!(out, "children-gone\n");

        extra.delete().await?;
        c.delete().await?;
        Ok(())
    });
}
