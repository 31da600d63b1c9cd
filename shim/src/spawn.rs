//! Starting a helper with `posix_spawn` and its descriptors at fixed numbers.
//!
//! std's `Command` places a descriptor at a number only from a `pre_exec` closure,
//! and with one it forks: the shim's page tables are copied, and until the child
//! execs, each page either of them writes is copied once more. glibc's
//! `posix_spawn` runs the child on the shim's memory (`CLONE_VM | CLONE_VFORK`)
//! and places descriptors with its file actions, so nothing is copied. The shim
//! starts `criu swrk` this way on every restore.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, RawFd},
        unix::ffi::{OsStrExt, OsStringExt},
    },
    path::Path,
    ptr,
};

/// What a descriptor of the child is.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// A copy of one of ours.
    Fd(BorrowedFd<'a>),
    /// /dev/null, opened read-write.
    Null,
}

/// Spawns `program` with `args` (after argv\[0\], which is `program`), the shim's
/// environment with `env` set over it, as the leader of a new process group,
/// with the default signal mask and SIGPIPE's default action (as std's `Command`
/// gives a child), and with exactly the descriptors `fds` (source, number in the
/// child): every other descriptor of the shim is close-on-exec. A number must
/// not be a source still to be placed (an error): the caller picks targets
/// above every source. Returns the child's pid; the caller's reaper collects it.
pub fn spawn(
    program: &Path,
    args: &[&OsStr],
    env: &[(&OsStr, &OsStr)],
    fds: &[(Source<'_>, RawFd)],
) -> io::Result<i32> {
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| io::Error::other("NUL byte in argument"));
    let prog = cstr(program.as_os_str().as_bytes())?;
    let mut argv = vec![prog.clone()];
    for a in args {
        argv.push(cstr(a.as_bytes())?);
    }
    let envp: Vec<CString> = environment(env)
        .into_iter()
        .map(|kv| cstr(&kv.into_vec()))
        .collect::<io::Result<_>>()?;
    let argv_p = nul_terminated(&argv);
    let envp_p = nul_terminated(&envp);

    for (i, (_, target)) in fds.iter().enumerate() {
        let clobbered = fds[i + 1..]
            .iter()
            .any(|(s, _)| matches!(s, Source::Fd(f) if f.as_raw_fd() == *target));
        if clobbered {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {target} is placed before it is copied elsewhere"),
            ));
        }
    }
    let actions = FileActions::new()?;
    let null = c"/dev/null";
    for (source, target) in fds {
        // SAFETY: an initialised actions object; the path outlives it (static).
        let rc = unsafe {
            match source {
                Source::Fd(fd) => libc::posix_spawn_file_actions_adddup2(
                    &actions.0 as *const _ as *mut _,
                    fd.as_raw_fd(),
                    *target,
                ),
                Source::Null => libc::posix_spawn_file_actions_addopen(
                    &actions.0 as *const _ as *mut _,
                    *target,
                    null.as_ptr(),
                    libc::O_RDWR,
                    0,
                ),
            }
        };
        errno(rc)?;
    }
    let attr = Attr::new()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: valid, NULL-terminated argv and envp arrays whose strings outlive
    // the call; initialised actions and attributes.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            prog.as_ptr(),
            &actions.0,
            &attr.0,
            argv_p.as_ptr() as *const *mut libc::c_char,
            envp_p.as_ptr() as *const *mut libc::c_char,
        )
    };
    errno(rc)?;
    Ok(pid)
}

/// Descriptors for [`spawn`]: `fixed` at numbers 0, 1, 2, … in order, then `extra`
/// at consecutive numbers above every source's own, so that no placement clobbers
/// a source still to be placed. Returns them and the number of `extra`'s first.
pub fn layout<'a>(
    fixed: &[Source<'a>],
    extra: &[BorrowedFd<'a>],
) -> (Vec<(Source<'a>, RawFd)>, RawFd) {
    let sources = fixed
        .iter()
        .filter_map(|s| match s {
            Source::Fd(f) => Some(f.as_raw_fd()),
            Source::Null => None,
        })
        .chain(extra.iter().map(|f| f.as_raw_fd()));
    let first = sources
        .max()
        .map_or(0, |fd| fd + 1)
        .max(fixed.len() as RawFd);
    let fds = fixed
        .iter()
        .copied()
        .zip(0..)
        .chain(extra.iter().map(|f| Source::Fd(*f)).zip(first..))
        .collect();
    (fds, first)
}

/// The shim's environment with `over` set: `KEY=VALUE` entries.
fn environment(over: &[(&OsStr, &OsStr)]) -> Vec<OsString> {
    let mut out: Vec<OsString> = std::env::vars_os()
        .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
        .map(|(k, v)| join(&k, &v))
        .collect();
    out.extend(over.iter().map(|(k, v)| join(k, v)));
    out
}

fn join(k: &OsStr, v: &OsStr) -> OsString {
    let mut kv = k.to_os_string();
    kv.push("=");
    kv.push(v);
    kv
}

fn nul_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(ptr::null()))
        .collect()
}

fn errno(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        let mut a = std::mem::MaybeUninit::uninit();
        // SAFETY: initialises the object it is given.
        errno(unsafe { libc::posix_spawn_file_actions_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(FileActions(unsafe { a.assume_init() }))
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

struct Attr(libc::posix_spawnattr_t);

impl Attr {
    /// A new process group, an empty signal mask, SIGPIPE at its default.
    fn new() -> io::Result<Attr> {
        let mut a = std::mem::MaybeUninit::uninit();
        // SAFETY: initialises the object it is given.
        errno(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        let mut attr = Attr(unsafe { a.assume_init() });
        // SAFETY: plain setters on an initialised object and local signal sets.
        unsafe {
            let mut empty = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut empty);
            let mut pipe = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut pipe);
            libc::sigaddset(&mut pipe, libc::SIGPIPE);
            errno(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
            errno(libc::posix_spawnattr_setsigdefault(&mut attr.0, &pipe))?;
            errno(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETPGROUP;
            errno(libc::posix_spawnattr_setflags(
                &mut attr.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attr)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in new, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, io::Read, os::fd::AsFd};

    fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn the_child_gets_exactly_the_descriptors_asked_for_at_their_numbers() {
        let (mut rd, wr) = std::io::pipe().unwrap();
        // A descriptor of ours not handed over: std opens it close-on-exec.
        let other = fs::File::open("/proc/self/status").unwrap();
        let target = wr.as_raw_fd().max(other.as_raw_fd()) + 5;
        let script = format!(
            "{{ ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; echo \"$REKINDLE_T $(cut -d' ' -f5 /proc/$$/stat)\"; }} >&{target}"
        );
        let pid = spawn(
            Path::new("/bin/bash"),
            &["-c".as_ref(), script.as_ref()],
            &[("REKINDLE_T".as_ref(), "set".as_ref())],
            &[
                (Source::Null, 0),
                (Source::Null, 1),
                (Source::Null, 2),
                (Source::Fd(wr.as_fd()), target),
            ],
        )
        .unwrap();
        drop(wr);
        let mut out = String::new();
        rd.read_to_string(&mut out).unwrap();
        assert_eq!(wait(pid), 0, "{out}");
        // 0-2, the target, and the fd ls itself opens on /proc/self/fd.
        let fds: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(&fds[..3], ["0", "1", "2"], "{out}");
        assert!(fds.contains(&target.to_string().as_str()), "{out}");
        assert!(
            !fds.contains(&other.as_raw_fd().to_string().as_str()),
            "{out}"
        );
        // Its own process group; our environment with the override.
        assert_eq!(out.lines().nth(1).unwrap(), format!("set {pid}"), "{out}");
    }

    #[test]
    fn a_layout_puts_the_fixed_first_and_the_others_above_every_source() {
        let (_rd, wr) = std::io::pipe().unwrap();
        let other = fs::File::open("/proc/self/status").unwrap();
        let (w, o) = (wr.as_raw_fd(), other.as_raw_fd());
        let fixed = [Source::Null, Source::Fd(wr.as_fd()), Source::Null];
        let (fds, first) = layout(&fixed, &[other.as_fd(), wr.as_fd()]);
        assert_eq!(first, w.max(o) + 1);
        let placed: Vec<(Option<RawFd>, RawFd)> = fds
            .iter()
            .map(|(s, n)| match s {
                Source::Fd(f) => (Some(f.as_raw_fd()), *n),
                Source::Null => (None, *n),
            })
            .collect();
        assert_eq!(
            placed,
            [
                (None, 0),
                (Some(w), 1),
                (None, 2),
                (Some(o), first),
                (Some(w), first + 1)
            ]
        );
        // spawn takes it as it is (no placement over a source still to be placed).
        let pid = spawn(Path::new("/bin/true"), &[], &[], &fds).unwrap();
        assert_eq!(wait(pid), 0);
        // With no source above them, the others start right after the fixed.
        assert_eq!(layout(&[Source::Null; 3], &[]).1, 3);
    }

    #[test]
    fn a_placement_over_a_source_still_to_be_placed_is_refused() {
        let (_rd, wr) = std::io::pipe().unwrap();
        let fds = [(Source::Null, wr.as_raw_fd()), (Source::Fd(wr.as_fd()), 9)];
        let err = spawn(Path::new("/bin/true"), &[], &[], &fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_child() {
        let err = spawn(Path::new("/nonexistent/rekindle-test"), &[], &[], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
