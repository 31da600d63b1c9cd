//! `rekindle-criu-tar`: the `tar` that `criu swrk` runs, so that the content
//! of a tmpfs is restored without exec'ing GNU tar and gzip.
//!
//! CRIU restores each tmpfs mount (`/dev`, `/dev/shm`, runc's masks over
//! `/proc/acpi`, ...) by running, through PATH,
//! `tar --extract --gzip --no-unquote --no-wildcards --directory MOUNTPOINT`
//! with the image on stdin (criu/filesystems.c, `tmpfs_restore`). The two
//! execs (tar, then gzip) cost about 4 ms per mount, most of a small
//! container's restore. The shim puts this program first on swrk's PATH as
//! `tar` (shim/src/direct/swrk.rs), and it does in-process what GNU tar 1.34,
//! run as root with those flags, does: numeric owners (`--same-owner`), every
//! mode bit (`--same-permissions`), archive mtimes (atime: now), existing
//! directories' metadata overwritten and existing files replaced, directory
//! metadata set after their content, no xattrs (not asked for).
//!
//! GNU tar stays the reference: any other command line (CRIU's `--create` on
//! dump), a run as non-root or with `TAR_OPTIONS`, an input that is not a
//! clean gzip'ed tar, one too big to hold in memory, or an archive with an
//! entry or header field that is not handled here exactly, is handed to GNU
//! tar: exec with the same argv and the same input on stdin. CRIU images are
//! untrusted: an absolute name, a `..` component or a write through a symlink
//! is refused (exit 2), before anything is written when it can be seen in the
//! archive alone.

use std::{
    env,
    ffi::{CString, OsString},
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Command, ExitCode},
};

use rekindle_shim::criu_tar::{self, TarError};

/// Where GNU tar is looked for (`REKINDLE_GNU_TAR` overrides).
const GNU_TARS: [&str; 2] = ["/bin/tar", "/usr/bin/tar"];

const ME: &str = "rekindle-criu-tar";

fn main() -> ExitCode {
    let args: Vec<OsString> = env::args_os().collect();
    let Some(dir) = extract_dir(&args[1..]) else {
        exec_gnu_tar(&args)
    };
    // GNU tar's defaults as root are what is reproduced here; TAR_OPTIONS
    // would add options to GNU tar's command line.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || env::var_os("TAR_OPTIONS").is_some_and(|v| !v.is_empty())
    {
        exec_gnu_tar(&args)
    }
    let input = match Input::read_stdin() {
        Ok(input) => input,
        Err(e) => return fail(&format!("read the archive from stdin: {e}")),
    };
    let root = match open_dir(&dir) {
        Ok(fd) => fd,
        Err(e) => return fail(&format!("{}: cannot open: {e}", dir.display())),
    };
    // As GNU tar does with --same-permissions: modes are taken as they are,
    // directories it has to make get 0777 less the old umask.
    // SAFETY: umask has no preconditions.
    let old = unsafe { libc::umask(0) };
    match criu_tar::extract_gz(&input.data, root, 0o777 & !old) {
        Ok(()) => ExitCode::SUCCESS,
        Err(TarError::Unhandled(why)) => input.hand_over(&args, &why),
        Err(TarError::Refused(why) | TarError::Failed(why)) => fail(&why),
    }
}

fn open_dir(dir: &std::path::Path) -> io::Result<OwnedFd> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the directory"))?;
    // SAFETY: NUL-terminated path; the result is owned.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{ME}: {msg}");
    ExitCode::from(2)
}

/// The `--directory` of CRIU's extract command line (options in any order,
/// each once), or `None` for any other command line.
fn extract_dir(args: &[OsString]) -> Option<PathBuf> {
    let mut flags = [false; 4];
    let mut dir: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let i = match arg.as_bytes() {
            b"--extract" => 0,
            b"--gzip" => 1,
            b"--no-unquote" => 2,
            b"--no-wildcards" => 3,
            b"--directory" | b"-C" => {
                let d = it.next()?;
                if dir.is_some() || d.is_empty() {
                    return None;
                }
                dir = Some(d.into());
                continue;
            }
            other => {
                let d = other.strip_prefix(b"--directory=")?;
                if dir.is_some() || d.is_empty() {
                    return None;
                }
                dir = Some(std::ffi::OsStr::from_bytes(d).into());
                continue;
            }
        };
        if std::mem::replace(&mut flags[i], true) {
            return None;
        }
    }
    if flags.iter().all(|f| *f) {
        dir
    } else {
        None
    }
}

/// Replaces this process with GNU tar, same argv, stdin as it is.
fn exec_gnu_tar(args: &[OsString]) -> ! {
    let me = std::fs::metadata("/proc/self/exe").ok();
    let same_as_me = |m: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt;
        me.as_ref()
            .is_some_and(|me| me.dev() == m.dev() && me.ino() == m.ino())
    };
    let candidates: Vec<OsString> = match env::var_os("REKINDLE_GNU_TAR") {
        Some(t) => vec![t],
        None => GNU_TARS.iter().map(OsString::from).collect(),
    };
    let mut last = None;
    for tar in candidates {
        match std::fs::metadata(&tar) {
            Ok(m) if !same_as_me(&m) => {}
            _ => continue,
        }
        let mut cmd = Command::new(&tar);
        cmd.args(&args[1..]);
        if let Some(arg0) = args.first() {
            cmd.arg0(arg0);
        }
        last = Some((tar.clone(), cmd.exec()));
    }
    match last {
        Some((tar, e)) => eprintln!("{ME}: exec {}: {e}", tar.to_string_lossy()),
        None => eprintln!("{ME}: no GNU tar found (looked for {GNU_TARS:?} and REKINDLE_GNU_TAR)"),
    }
    std::process::exit(2)
}

/// The compressed archive, read whole so that GNU tar can be given it again.
struct Input {
    data: Vec<u8>,
    /// Where stdin started, when it is a regular file: GNU tar then gets stdin
    /// itself, rewound, instead of a copy.
    rewind_to: Option<libc::off_t>,
}

impl Input {
    fn read_stdin() -> io::Result<Input> {
        // SAFETY: fd 0 is not closed here; ManuallyDrop keeps it open.
        let stdin = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
        let meta = stdin.metadata()?;
        let rewind_to = if meta.is_file() {
            // SAFETY: plain syscall on fd 0.
            match unsafe { libc::lseek(0, 0, libc::SEEK_CUR) } {
                -1 => None,
                off => Some(off),
            }
        } else {
            None
        };
        let mut data = Vec::with_capacity(if meta.is_file() {
            meta.len() as usize
        } else {
            64 << 10
        });
        (&*stdin).read_to_end(&mut data)?;
        Ok(Input { data, rewind_to })
    }

    /// Execs GNU tar with the same input on stdin: stdin rewound, or a memfd
    /// holding what was read from the pipe.
    fn hand_over(&self, args: &[OsString], why: &str) -> ! {
        eprintln!("{ME}: {why}; handing over to GNU tar");
        let given = match self.rewind_to {
            // SAFETY: plain syscall on fd 0.
            Some(off) => (unsafe { libc::lseek(0, off, libc::SEEK_SET) }) == off,
            None => false,
        };
        if !given {
            if let Err(e) = self.to_stdin_memfd() {
                eprintln!("{ME}: give GNU tar the archive: {e}");
                std::process::exit(2)
            }
        }
        exec_gnu_tar(args)
    }

    fn to_stdin_memfd(&self) -> io::Result<()> {
        // SAFETY: NUL-terminated name; the new descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"criu-tmpfs-image".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor nothing else owns.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(&self.data)?;
        // dup2 clears close-on-exec on the copy at 0.
        // SAFETY: plain syscalls on owned descriptors.
        if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } != 0 || unsafe { libc::dup2(fd, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_criu_s_extract_command_line_is_handled_here() {
        let criu = [
            "--extract",
            "--gzip",
            "--no-unquote",
            "--no-wildcards",
            "--directory",
            "/mnt",
        ];
        assert_eq!(extract_dir(&args(&criu)), Some("/mnt".into()));
        let shuffled = [
            "-C",
            "/mnt",
            "--no-wildcards",
            "--gzip",
            "--extract",
            "--no-unquote",
        ];
        assert_eq!(extract_dir(&args(&shuffled)), Some("/mnt".into()));
        let eq = [
            "--directory=/mnt",
            "--extract",
            "--gzip",
            "--no-unquote",
            "--no-wildcards",
        ];
        assert_eq!(extract_dir(&args(&eq)), Some("/mnt".into()));
        for other in [
            &criu[..5], // no directory
            &criu[1..], // no --extract
            &["--create", "--gzip", "--directory", "/mnt", "."][..],
            &[criu.as_slice(), &["--verbose"]].concat()[..],
            &[criu.as_slice(), &["--gzip"]].concat()[..], // twice
            &[criu.as_slice(), &["-C", "/other"]].concat()[..],
        ] {
            assert_eq!(extract_dir(&args(other)), None, "{other:?}");
        }
    }
}
