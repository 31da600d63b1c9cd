//! A batch-style container: it runs, prints, exits; the user gets its exit code and
//! its output.

use containerd_client::types::v1::Status;

use crate::harness::{secs, story};

fn sh(script: &str) -> Option<Vec<String>> {
    Some(vec!["/bin/sh".into(), "-c".into(), script.into()])
}

#[test]
fn a_container_runs_to_completion_with_its_exit_code_and_stdout() {
    story("run-to-completion", |ctx| async move {
        let c = ctx
            .create(
                "exit3",
                sh("echo hello-from-rekindle; echo to-stderr >&2; exit 3"),
                vec![],
            )
            .await?;
        assert!(c.pid > 0, "Tasks.Create reported pid 0");
        assert_eq!(c.state().await?.status(), Status::Created);

        c.start().await?;
        let status = c.wait(secs(30)).await?;
        assert_eq!(status, 3, "exit code of `exit 3` as seen by Tasks.Wait");

        let out = c.stdout.wait_eof(secs(10)).await?;
        assert_eq!(out, "hello-from-rekindle\n", "stdout");
        let err = c.stderr.wait_eof(secs(10)).await?;
        assert_eq!(err, "to-stderr\n", "stderr");

        let state = c.state().await?;
        assert_eq!(
            state.status(),
            Status::Stopped,
            "state after exit: {state:?}"
        );
        assert_eq!(state.exit_status, 3, "exit status in Tasks.Get: {state:?}");

        let deleted = c.delete().await?;
        assert_eq!(deleted, 3, "exit status reported by Tasks.Delete");
        Ok(())
    });
}
