//! What a user gets when they ask for something that cannot be done.

use containerd_client::tonic::Code;

use crate::harness::{client::is_code, grpc_code, secs, story};

#[test]
fn starting_a_task_that_does_not_exist_is_not_found() {
    story("unknown-task", |ctx| async move {
        use containerd_client::services::v1::StartRequest;
        let id = ctx.new_id("never-created");
        let err = ctx
            .tasks()
            .start(ctx.req(StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            }))
            .await
            .expect_err("Tasks.Start of an unknown container succeeded");
        assert_eq!(err.code(), Code::NotFound, "Tasks.Start({id}): {err:?}");
        Ok(())
    });
}

#[test]
fn starting_an_exec_that_does_not_exist_is_not_found() {
    story("unknown-exec", |ctx| async move {
        let c = ctx
            .create(
                "noexec",
                Some(vec!["/bin/sleep".into(), "60".into()]),
                vec![],
            )
            .await?;
        c.start().await?;

        // Answered by the shim: containerd asks it for the process.
        use containerd_client::services::v1::StartRequest;
        let res = crate::harness::client::bounded(
            "Tasks.Start of an unknown exec",
            secs(30),
            ctx.tasks().start(ctx.req(StartRequest {
                container_id: c.id.clone(),
                exec_id: "no-such-exec".into(),
            })),
        )
        .await;
        let Err(err) = res else {
            panic!("Tasks.Start of an unknown exec id succeeded");
        };
        assert!(
            is_code(&err, Code::NotFound),
            "expected NotFound, got {:?}: {err:#}",
            grpc_code(&err)
        );

        let exited = c.wait_in_background(secs(30));
        c.kill(libc::SIGKILL, false).await?;
        assert_eq!(exited.await??, 128 + libc::SIGKILL as u32);
        c.delete().await?;
        Ok(())
    });
}

#[test]
fn a_missing_binary_fails_with_an_error_naming_it() {
    story("missing-binary", |ctx| async move {
        let binary = "/no/such/function-binary";
        let message = match ctx.create("nobin", Some(vec![binary.into()]), vec![]).await {
            Err(e) => format!("{e:#}"),
            Ok(c) => {
                // Some runtimes only find out at start.
                let e = c
                    .start()
                    .await
                    .err()
                    .unwrap_or_else(|| panic!("{binary} started, pid {}", c.pid));
                let message = format!("{e:#}");
                c.delete().await?;
                message
            }
        };
        assert!(
            message.contains(binary),
            "the error should name {binary}: {message}"
        );
        Ok(())
    });
}
