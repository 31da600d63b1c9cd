//! What an operator sees of a running function: its processes and its resource usage.

use crate::harness::{metrics, secs, story};

#[test]
fn pids_lists_the_function_process() {
    story("pids", |ctx| async move {
        let f = ctx.start_function("pids").await?;

        let state = f.state().await?;
        assert_eq!(
            state.pid, f.pid,
            "Tasks.Get and Tasks.Create agree on the pid"
        );
        let pids = f.pids().await?;
        assert!(
            pids.iter().any(|p| p.pid == f.pid),
            "Tasks.ListPids {pids:?} lacks the function's pid {}",
            f.pid
        );
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", f.pid))?;
        assert!(
            String::from_utf8_lossy(&cmdline).contains("python3"),
            "pid {} is not the function: {:?}",
            f.pid,
            String::from_utf8_lossy(&cmdline)
        );

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        f.delete().await?;
        Ok(())
    });
}

#[test]
fn metrics_report_the_memory_the_function_uses() {
    story("metrics", |ctx| async move {
        let f = ctx.start_function("metrics").await?;
        crate::harness::http::count(f.port(), secs(5)).await?;

        let all = f.metrics().await?;
        let m = all
            .iter()
            .find(|m| m.id == f.id)
            .ok_or_else(|| anyhow::anyhow!("Tasks.Metrics has no entry for {}: {all:?}", f.id))?;
        let data = m
            .data
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("metric without data"))?;
        assert!(
            !data.value.is_empty(),
            "empty metrics payload ({})",
            data.type_url
        );
        let summary = metrics::decode(data)?;
        assert!(
            [metrics::V1_TYPE, metrics::V2_TYPE]
                .iter()
                .any(|t| summary.type_url.ends_with(t)),
            "{summary:?}"
        );
        assert!(
            summary.memory_usage > 1 << 20,
            "memory usage of a running Python function should exceed 1 MiB: {summary:?}"
        );
        if let Some(pids) = summary.pids_current {
            assert!(pids >= 1, "pids.current: {summary:?}");
        }

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        f.delete().await?;
        Ok(())
    });
}
