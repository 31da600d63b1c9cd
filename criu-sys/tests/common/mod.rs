//! What the tests of criu-sys share.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes `cmd`'s process the leader of a session of its own, with its descriptors above 2
/// closed at exec, so that the tree CRIU dumps owns its session, process group and files.
/// The tests run in parallel and libcriu's socketpair to swrk (another test's request) is
/// not close-on-exec: a process forked meanwhile would inherit it and its dump fail on an
/// external unix socket (seen once in CI).
pub fn own_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid and close_range are async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Marked close-on-exec rather than closed: std's exec-error pipe is among them.
            let cloexec = libc::CLOSE_RANGE_CLOEXEC as libc::c_uint;
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, cloexec) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }
}
