//! Running a command inside a live function (debugging, health probes).

use crate::harness::{secs, story};

#[test]
fn exec_runs_a_command_inside_a_running_function_and_reports_its_exit_code() {
    story("exec", |ctx| async move {
        let f = ctx.start_function("exec").await?;

        let e = f
            .exec(
                "probe",
                &["/bin/sh", "-c", "echo exec-ok; echo exec-err >&2; exit 5"],
                false,
            )
            .await?;
        let pid = e.start().await?;
        assert!(pid > 0, "Tasks.Start of an exec reported pid 0");
        assert_eq!(
            e.wait(secs(20)).await?,
            5,
            "exit code of the exec'd process"
        );
        assert_eq!(e.stdout.wait_eof(secs(10)).await?, "exec-ok\n");
        let stderr = e.stderr.as_ref().expect("stderr capture");
        assert_eq!(stderr.wait_eof(secs(10)).await?, "exec-err\n");
        assert_eq!(
            e.delete().await?,
            5,
            "exit status reported by Tasks.DeleteProcess"
        );

        // The function itself is unaffected.
        crate::harness::http::count(f.port(), secs(5)).await?;

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        f.delete().await?;
        Ok(())
    });
}

#[test]
fn exec_with_a_terminal_gets_a_tty() {
    story("exec-tty", |ctx| async move {
        let f = ctx.start_function("exectty").await?;

        let e = f
            .exec(
                "tty",
                &[
                    "/bin/sh",
                    "-c",
                    "if [ -t 1 ]; then echo tty-ok; else echo no-tty; fi; exit 7",
                ],
                true,
            )
            .await?;
        e.start().await?;
        assert_eq!(
            e.wait(secs(20)).await?,
            7,
            "exit code of the exec'd process"
        );
        // A pty turns "\n" into "\r\n".
        let out = e.stdout.wait_for("tty-ok\r\n", secs(10)).await?;
        assert!(!out.contains("no-tty"), "{out:?}");
        e.delete().await?;

        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM, false).await?;
        assert_eq!(exited.await??, 0);
        f.delete().await?;
        Ok(())
    });
}
