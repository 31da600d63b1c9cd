//! `rekindle install` and `rekindle uninstall`: put Rekindle on a node (binaries, systemd
//! units, the containerd drop-in, an example agent config) and add the `rekindle` runtime
//! to containerd's config, or take all that away again.
//!
//! The config edit itself is [`containerd`] (pure); this module reads and writes the files.
//! With containerd 1.x (config versions 1 and 2) that includes
//! [`containerd::OPTIONS_FILE`], the rekindle runtime's copy of runc's options, which the
//! runtime's `ConfigPath` names (1.x passes the shim nothing else of its options table).
//! Every destination is under `root` (`/` on a node; a temp dir in tests, an image's root
//! when building one). Nothing is written with `dry_run`; containerd and systemd are never
//! restarted or reloaded: the report says which commands to run.

pub mod containerd;

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use containerd::{Change, ConfigError, ContainerdVersion, Versionless, OPTIONS_FILE};

/// The binaries install copies, in the order it copies them.
pub const BINARIES: [&str; 5] = [
    "containerd-shim-rekindle-v2",
    "rekindle-criu-tar",
    "rekindle-restored",
    "rekindle-agent",
    "rekindle",
];
/// Where the binaries go (the units' ExecStart and the drop-in's PATH name it).
pub const BIN_DIR: &str = "/usr/local/bin";
/// containerd's config.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
/// The agent's config, written only when absent.
pub const AGENT_CONFIG: &str = "/etc/rekindle/agent.toml";
/// What `--purge` removes besides.
pub const PURGE_DIRS: [&str; 2] = ["/etc/rekindle", "/var/lib/rekindle"];

/// The systemd units and the containerd drop-in from the repository's `systemd/`, carried
/// in the binary: (destination, contents).
pub const UNITS: [(&str, &str); 5] = [
    (
        "/etc/systemd/system/rekindle-restored.service",
        include_str!("../../../systemd/rekindle-restored.service"),
    ),
    (
        "/etc/systemd/system/rekindle-agent.service",
        include_str!("../../../systemd/rekindle-agent.service"),
    ),
    (
        "/etc/systemd/system/run-criu.mount",
        include_str!("../../../systemd/run-criu.mount"),
    ),
    (
        "/etc/systemd/system/rekindle-favordynmods.service",
        include_str!("../../../systemd/rekindle-favordynmods.service"),
    ),
    (
        "/etc/systemd/system/containerd.service.d/rekindle.conf",
        include_str!("../../../systemd/containerd.service.d/rekindle.conf"),
    ),
];
/// The example agent config (one function), installed at [`AGENT_CONFIG`] if absent.
pub const AGENT_TOML: &str = include_str!("../../../systemd/agent.toml");
/// Links `systemctl enable` makes for the units (uninstall removes them, as `systemctl
/// disable` would).
const ENABLE_LINKS: [&str; 4] = [
    "/etc/systemd/system/multi-user.target.wants/rekindle-restored.service",
    "/etc/systemd/system/multi-user.target.wants/rekindle-agent.service",
    "/etc/systemd/system/local-fs.target.wants/run-criu.mount",
    "/etc/systemd/system/multi-user.target.wants/rekindle-favordynmods.service",
];
const DROP_IN_DIR: &str = "/etc/systemd/system/containerd.service.d";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),

    #[error(
        "{path} does not exist: build the binaries first (`cargo build --release` puts all \
         of {names} in target/release/), or pass --from with the directory that holds them"
    )]
    MissingBinary { path: PathBuf, names: String },

    #[error("cannot tell where the running rekindle is ({0}); pass --from DIR")]
    NoSourceDir(String),

    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The process exit status: 78 (EX_CONFIG) when containerd's config is the problem, 66
    /// (EX_NOINPUT) for a missing binary, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => crate::EXIT_CONFIG,
            Error::MissingBinary { .. } | Error::NoSourceDir(_) => 66,
            Error::Io { .. } => 1,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

/// What `rekindle install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Prefix of every destination (`/` on the node itself).
    pub root: PathBuf,
    /// Directory holding the binaries to install.
    pub from: PathBuf,
    /// containerd's config, as the node sees it (it is put under `root`).
    pub config: PathBuf,
    /// Decides the config schema when the file has no `version` (else `containerd
    /// --version` on PATH is asked).
    pub containerd_version: Option<ContainerdVersion>,
    pub dry_run: bool,
}

/// What `rekindle uninstall` is asked to do.
#[derive(Debug, Clone)]
pub struct UninstallOptions {
    pub root: PathBuf,
    pub config: PathBuf,
    /// Also remove /etc/rekindle and /var/lib/rekindle (images and all).
    pub purge: bool,
    pub dry_run: bool,
}

/// What was (or, in a dry run, would be) done to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Replace,
    /// Already as it should be.
    Same,
    /// Exists and is left alone (an operator's config).
    Keep,
    Remove,
    /// Nothing there to remove.
    Absent,
}

impl Action {
    fn changes(self) -> bool {
        matches!(self, Action::Create | Action::Replace | Action::Remove)
    }

    fn label(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Replace => "replace",
            Action::Same => "same",
            Action::Keep => "keep",
            Action::Remove => "remove",
            Action::Absent => "absent",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileAction {
    pub path: PathBuf,
    pub action: Action,
    pub note: Option<String>,
    /// A unified diff, for a file whose contents an operator should see (the runtime
    /// options file install creates).
    pub diff: Option<String>,
}

/// containerd's config: what happened to it, and the diff.
#[derive(Debug, Clone)]
pub struct ConfigAction {
    pub path: PathBuf,
    /// Create, Replace (edited), Remove (deleted: install had created it), Same, Absent.
    pub action: Action,
    pub summary: String,
    /// A unified diff when the file changes.
    pub diff: Option<String>,
}

/// What install or uninstall did (or would do, with `dry_run`); its `Display` is what the
/// CLI prints.
#[derive(Debug, Clone)]
pub struct Report {
    pub command: &'static str,
    pub dry_run: bool,
    pub files: Vec<FileAction>,
    pub config: ConfigAction,
    /// Commands for the operator to run next.
    pub next: Vec<String>,
}

impl Report {
    /// Whether anything changed (or would change).
    pub fn changed(&self) -> bool {
        self.config.action.changes() || self.files.iter().any(|f| f.action.changes())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let paths = self.files.len() + 1;
        if !self.changed() {
            writeln!(
                f,
                "rekindle {}: nothing to do, {} paths checked and each is as it should be{}",
                self.command,
                paths,
                if self.dry_run { " (dry run)" } else { "" }
            )?;
        } else if self.dry_run {
            writeln!(
                f,
                "rekindle {} --dry-run: what it would do (nothing was changed)",
                self.command
            )?;
        } else {
            writeln!(f, "rekindle {}:", self.command)?;
        }
        for file in &self.files {
            write!(f, "  {:<8} {}", file.action.label(), file.path.display())?;
            if let Some(note) = &file.note {
                write!(f, " ({note})")?;
            }
            writeln!(f)?;
        }
        let label = match self.config.action {
            Action::Create | Action::Replace => "edit",
            other => other.label(),
        };
        writeln!(
            f,
            "  {:<8} {}: {}",
            label,
            self.config.path.display(),
            self.config.summary
        )?;
        let diffs = self
            .config
            .diff
            .iter()
            .chain(self.files.iter().filter_map(|file| file.diff.as_ref()));
        for diff in diffs {
            writeln!(f)?;
            write!(f, "{diff}")?;
            if !diff.ends_with('\n') {
                writeln!(f)?;
            }
        }
        if self.changed() && !self.next.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "{}",
                if self.dry_run {
                    "Afterwards, run:"
                } else {
                    "Now run:"
                }
            )?;
            for cmd in &self.next {
                writeln!(f, "  {cmd}")?;
            }
        }
        Ok(())
    }
}

/// `path` (absolute, as on the node) under `root`.
pub fn under(root: &Path, path: &Path) -> PathBuf {
    if root == Path::new("/") {
        return path.to_path_buf();
    }
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The directory of the running executable: where `cargo build` or a release tarball put
/// the other binaries next to `rekindle`.
pub fn default_source_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::NoSourceDir(e.to_string()))?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| Error::NoSourceDir(format!("{} has no parent", exe.display())))
}

/// containerd's version from `containerd --version` on PATH.
pub fn containerd_version_from_path() -> Result<ContainerdVersion, String> {
    let out = Command::new("containerd")
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run `containerd --version` ({e}); is containerd on PATH?"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ContainerdVersion::from_version_output(&text).ok_or_else(|| {
        format!(
            "`containerd --version` printed {:?}, which has no version rekindle install \
             understands",
            text.trim()
        )
    })
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn read_config(path: &Path) -> Result<Option<String>, Error> {
    match read_optional(path)? {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|e| {
            io_err("read", path)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not UTF-8 ({e}); fix the file or pass --config"),
            ))
        }),
    }
}

/// [`crate::files::write_atomic`], with the path in the error.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    crate::files::write_atomic(path, bytes, mode).map_err(io_err("write", path))
}

fn remove_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// One file install writes: where, what, with which mode.
struct Planned {
    dest: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
    action: Action,
    note: Option<String>,
    diff: Option<String>,
}

fn plan_file(dest: PathBuf, bytes: Vec<u8>, mode: u32) -> Result<Planned, Error> {
    let action = match read_optional(&dest)? {
        None => Action::Create,
        Some(existing) if existing == bytes => Action::Same,
        Some(_) => Action::Replace,
    };
    Ok(Planned {
        dest,
        bytes,
        mode,
        action,
        note: None,
        diff: None,
    })
}

/// Installs (or, with `dry_run`, reports what it would install). The containerd config is
/// edited last, once the shim it names (and, for containerd 1.x, the runtime options file
/// it names) is in place.
pub fn install(opts: &InstallOptions) -> Result<Report, Error> {
    let mut planned = Vec::new();
    for name in BINARIES {
        let src = opts.from.join(name);
        let bytes = match fs::read(&src) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::MissingBinary {
                    path: src,
                    names: BINARIES.join(", "),
                })
            }
            Err(e) => return Err(io_err("read", &src)(e)),
        };
        let dest = under(&opts.root, &Path::new(BIN_DIR).join(name));
        planned.push(plan_file(dest, bytes, 0o755)?);
    }
    for (dest, text) in UNITS {
        planned.push(plan_file(
            under(&opts.root, Path::new(dest)),
            text.as_bytes().to_vec(),
            0o644,
        )?);
    }
    let agent_config = under(&opts.root, Path::new(AGENT_CONFIG));
    let mut agent = plan_file(agent_config, AGENT_TOML.as_bytes().to_vec(), 0o600)?;
    if agent.action == Action::Replace {
        agent.action = Action::Keep;
        agent.note = Some("exists: an operator's config is never overwritten".into());
    } else if agent.action == Action::Create {
        agent.note = Some("an example with one function: edit its [[function]] table".into());
    }
    planned.push(agent);

    // containerd's config: computed before anything is written, so that a config install
    // cannot edit fails the whole install early.
    let config_path = under(&opts.root, &opts.config);
    let original = read_config(&config_path)?;
    let mut containerd = opts.containerd_version;
    let need = containerd::needs_containerd_version(original.as_deref());
    if containerd.is_none() && need != Versionless::NotNeeded {
        containerd = Some(containerd_version_from_path().map_err(|detail| {
            ConfigError::NeedContainerdVersion {
                path: config_path.clone(),
                why: need.why(),
                detail,
            }
        })?);
    }
    let change = containerd::add_runtime(&config_path, original.as_deref(), containerd)?;
    let config = config_action(&config_path, original.as_deref(), &change);

    // The runtime options file, when the config (as install leaves it) names it: config
    // versions 1 and 2 with runc options to copy. Also on a second install, which puts
    // back a file that is gone.
    let after = match &change {
        Change::Write { text, .. } => Some(text.as_str()),
        Change::Unchanged(_) | Change::Delete { .. } => original.as_deref(),
    };
    if let Some(after) = after {
        if let containerd::OptionsFile {
            named: true,
            text: Some(text),
        } = containerd::options_file(&config_path, after)?
        {
            planned.push(plan_options_file(&opts.root, text)?);
        }
    }

    if !opts.dry_run {
        for p in &planned {
            if matches!(p.action, Action::Create | Action::Replace) {
                write_atomic(&p.dest, &p.bytes, p.mode)?;
            }
        }
        apply_config(&config_path, &change)?;
    }
    Ok(Report {
        command: "install",
        dry_run: opts.dry_run,
        files: planned
            .into_iter()
            .map(|p| FileAction {
                path: p.dest,
                action: p.action,
                note: p.note,
                diff: p.diff,
            })
            .collect(),
        config,
        next: vec![
            "systemctl daemon-reload".into(),
            "systemctl restart containerd   # picks up the runtime and the drop-in".into(),
            "systemctl enable --now run-criu.mount rekindle-favordynmods rekindle-restored".into(),
            "systemctl enable --now rekindle-agent   # edge boxes: edit /etc/rekindle/agent.toml first"
                .into(),
        ],
    })
}

/// [`OPTIONS_FILE`] with `text`: created (its diff shown), left as it is when it holds
/// `text` already, and never overwritten when it holds something else (an operator's edit):
/// kept, and the note says what install would have written.
fn plan_options_file(root: &Path, text: String) -> Result<Planned, Error> {
    let dest = under(root, Path::new(OPTIONS_FILE));
    let mut planned = plan_file(dest, text.into_bytes(), 0o644)?;
    let text = String::from_utf8_lossy(&planned.bytes).into_owned();
    match planned.action {
        Action::Create => {
            planned.note = Some(
                "runc's options for the rekindle runtime, named by its ConfigPath: containerd \
                 1.x passes the shim only that path"
                    .to_string(),
            );
            planned.diff = Some(containerd::unified_diff(&planned.dest, None, Some(&text)));
        }
        Action::Replace => {
            let settings: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                .collect();
            planned.action = Action::Keep;
            planned.note = Some(format!(
                "exists with other contents, kept: an operator's file is never overwritten; \
                 install would write {} (the runc runtime's options): check that it sets them",
                settings.join(", ")
            ));
        }
        _ => {}
    }
    Ok(planned)
}

fn config_action(path: &Path, original: Option<&str>, change: &Change) -> ConfigAction {
    let (action, summary, after) = match change {
        Change::Unchanged(why) => (
            if original.is_some() {
                Action::Same
            } else {
                Action::Absent
            },
            why.clone(),
            None,
        ),
        Change::Write { text, summary } => (
            if original.is_some() {
                Action::Replace
            } else {
                Action::Create
            },
            summary.clone(),
            Some(text.as_str()),
        ),
        Change::Delete { summary } => (Action::Remove, summary.clone(), None),
    };
    let diff = action
        .changes()
        .then(|| containerd::unified_diff(path, original, after));
    ConfigAction {
        path: path.to_path_buf(),
        action,
        summary,
        diff,
    }
}

fn apply_config(path: &Path, change: &Change) -> Result<(), Error> {
    match change {
        Change::Unchanged(_) => Ok(()),
        Change::Write { text, .. } => {
            // A symlinked config is edited where it points (the link stays a link).
            let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            let target = if is_link {
                fs::canonicalize(path).map_err(io_err("resolve", path))?
            } else {
                path.to_path_buf()
            };
            // Keep the file's mode (a config may hold registry credentials).
            let mode = fs::metadata(&target)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0o644);
            write_atomic(&target, text.as_bytes(), mode)
        }
        Change::Delete { .. } => remove_file(path),
    }
}

/// Uninstalls (or, with `dry_run`, reports what it would remove). The containerd config
/// goes first, so that containerd no longer names a shim (or an options file) that is about
/// to go. The runtime options file goes only if it is exactly what install writes for the
/// config's runc runtime; an edited one stays (unless `--purge`).
pub fn uninstall(opts: &UninstallOptions) -> Result<Report, Error> {
    let config_path = under(&opts.root, &opts.config);
    let original = read_config(&config_path)?;
    let (change, config) = match &original {
        None => (
            Change::Unchanged("no such file, nothing to take out".into()),
            ConfigAction {
                path: config_path.clone(),
                action: Action::Absent,
                summary: "no such file, nothing to take out".into(),
                diff: None,
            },
        ),
        Some(text) => {
            let change = containerd::remove_runtime(&config_path, text)?;
            let config = config_action(&config_path, Some(text), &change);
            (change, config)
        }
    };
    // What install writes to the runtime options file for this config: the file goes only
    // if it still holds exactly that.
    let options_text = match &original {
        Some(text) => containerd::options_file(&config_path, text)?.text,
        None => None,
    };

    let mut files = Vec::new();
    let mut paths: Vec<PathBuf> = ENABLE_LINKS.iter().map(PathBuf::from).collect();
    paths.extend(UNITS.iter().map(|(dest, _)| PathBuf::from(dest)));
    paths.extend(BINARIES.iter().map(|b| Path::new(BIN_DIR).join(b)));
    for p in paths {
        let path = under(&opts.root, &p);
        let exists = fs::symlink_metadata(&path).is_ok();
        files.push(FileAction {
            path,
            action: if exists {
                Action::Remove
            } else {
                Action::Absent
            },
            note: None,
            diff: None,
        });
    }
    files.push(unplan_options_file(
        &opts.root,
        options_text.as_deref(),
        opts.purge,
    )?);
    let drop_in_dir = under(&opts.root, Path::new(DROP_IN_DIR));
    for dir in PURGE_DIRS {
        let path = under(&opts.root, Path::new(dir));
        let exists = path.exists();
        let (action, note) = match (opts.purge, exists) {
            (true, true) => (
                Action::Remove,
                Some("--purge: with everything in it".into()),
            ),
            (true, false) => (Action::Absent, None),
            (false, true) => (Action::Keep, Some("kept; --purge removes it".into())),
            (false, false) => (Action::Absent, None),
        };
        files.push(FileAction {
            path,
            action,
            note,
            diff: None,
        });
    }

    if !opts.dry_run {
        apply_config(&config_path, &change)?;
        for f in &files {
            if f.action != Action::Remove {
                continue;
            }
            if PURGE_DIRS
                .iter()
                .any(|d| under(&opts.root, Path::new(d)) == f.path)
            {
                fs::remove_dir_all(&f.path).map_err(io_err("remove", &f.path))?;
            } else {
                remove_file(&f.path)?;
            }
        }
        // The drop-in directory, if install's file was all it held.
        if fs::read_dir(&drop_in_dir).is_ok_and(|mut d| d.next().is_none()) {
            let _ = fs::remove_dir(&drop_in_dir);
        }
    }
    Ok(Report {
        command: "uninstall",
        dry_run: opts.dry_run,
        files,
        config,
        next: vec![
            "systemctl stop rekindle-agent rekindle-restored run-criu.mount   # if they run".into(),
            "systemctl daemon-reload".into(),
            "systemctl restart containerd   # forgets the rekindle runtime".into(),
        ],
    })
}

/// What uninstall does with [`OPTIONS_FILE`]: removes it when it holds `ours` (what
/// install writes for the config's runc runtime), else keeps it (removed with the rest of
/// /etc/rekindle by `--purge`).
fn unplan_options_file(root: &Path, ours: Option<&str>, purge: bool) -> Result<FileAction, Error> {
    let path = under(root, Path::new(OPTIONS_FILE));
    let existing = read_optional(&path)?;
    let (action, note) = match existing {
        None => (Action::Absent, None),
        Some(bytes) if ours.is_some_and(|o| o.as_bytes() == bytes) => (
            Action::Remove,
            Some("as rekindle install wrote it".to_string()),
        ),
        Some(_) if purge => (
            Action::Remove,
            Some("not as rekindle install writes it; --purge".to_string()),
        ),
        Some(_) => (
            Action::Keep,
            Some(
                "not as rekindle install writes it for this config's runc runtime (edited?): \
                 kept; --purge removes it"
                    .to_string(),
            ),
        ),
    };
    Ok(FileAction {
        path,
        action,
        note,
        diff: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_go_under_the_root() {
        assert_eq!(
            under(Path::new("/"), Path::new("/etc/containerd/config.toml")),
            PathBuf::from("/etc/containerd/config.toml")
        );
        assert_eq!(
            under(
                Path::new("/tmp/r"),
                Path::new("/etc/containerd/config.toml")
            ),
            PathBuf::from("/tmp/r/etc/containerd/config.toml")
        );
        assert_eq!(
            under(Path::new("/"), Path::new("config.toml")),
            PathBuf::from("config.toml")
        );
    }

    #[test]
    fn the_embedded_units_are_the_repositorys() {
        for (dest, text) in UNITS {
            assert!(dest.starts_with("/etc/systemd/system/"), "{dest}");
            assert!(
                text.contains("[Unit]") || text.contains("[Service]"),
                "{dest}"
            );
        }
        assert!(AGENT_TOML.contains("[[function]]"));
    }
}
