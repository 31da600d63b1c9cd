//! The daemon's configuration: built-in defaults, overridden by the TOML file
//! (`--config`, default /etc/rekindle/restored.toml), overridden by options given on the
//! command line.

use std::path::{Path, PathBuf};

use clap::ArgMatches;
use serde::Deserialize;

use crate::cli::Cli;

pub const DEFAULT_CONFIG: &str = "/etc/rekindle/restored.toml";
pub const DEFAULT_SOCKET: &str = "/run/rekindle/restored.sock";
pub const DEFAULT_STORE: &str = "/var/lib/rekindle/images";
pub const DEFAULT_STAGE_DIR: &str = "/run/rekindle/staged";
/// CRIU 4.2.x as installed by hack/setup.sh; Debian bookworm's /usr/sbin/criu (3.17)
/// fails on the project's kernels.
pub const DEFAULT_CRIU_BINARY: &str = "/usr/local/sbin/criu";

pub const DEFAULT_MAX_FILES: u32 = 4096;
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 16 << 30;
pub const DEFAULT_LEASE_TTL_SECS: u64 = 900;

/// Longest path a unix socket address holds (`sun_path` is 108 bytes, NUL included).
pub use rekindle_daemon_kit::LogFormat;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unix socket on which the shim and the agent talk to the daemon.
    pub socket: PathBuf,
    /// Image store: LZ4-compressed checkpoint images, one directory per image.
    pub store: PathBuf,
    /// Where hot images are staged decompressed; should be a tmpfs.
    pub stage_dir: PathBuf,
    /// The CRIU binary libcriu runs.
    pub criu_binary: PathBuf,
    /// Log format on stderr.
    pub log_format: LogFormat,
    /// Non-root uids allowed to use the socket (root always is). They also need access to
    /// the socket file: see `socket_gid`. Files they name must be their own.
    pub allowed_uids: Vec<u32>,
    /// Group of the socket; when set the socket is mode 0660 instead of 0600.
    pub socket_gid: Option<u32>,
    /// Mount a tmpfs on `stage_dir` when it is not on one already.
    pub mount_stage_tmpfs: bool,
    /// `size=` of that tmpfs (e.g. "8g", "50%"); the kernel's default (half of RAM) if unset.
    pub stage_tmpfs_size: Option<String>,
    /// Most files in one image (manifests and archives beyond it are refused).
    pub max_files: u32,
    /// Most bytes (uncompressed) in one image.
    pub max_total_bytes: u64,
    /// A restore lease not released within this many seconds is taken back.
    pub lease_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: DEFAULT_SOCKET.into(),
            store: DEFAULT_STORE.into(),
            stage_dir: DEFAULT_STAGE_DIR.into(),
            criu_binary: DEFAULT_CRIU_BINARY.into(),
            log_format: LogFormat::Text,
            allowed_uids: Vec::new(),
            socket_gid: None,
            mount_stage_tmpfs: true,
            stage_tmpfs_size: None,
            max_files: DEFAULT_MAX_FILES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            lease_ttl_secs: DEFAULT_LEASE_TTL_SECS,
        }
    }
}

pub use rekindle_daemon_kit::ConfigError as Error;

impl Config {
    /// Parses a configuration file's text; keys left out keep their defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, Error> {
        rekindle_daemon_kit::config::from_toml(text, path)
    }

    /// Defaults, then the configuration file, then the options given on the command line
    /// (`matches` tells which options were given rather than defaulted).
    pub fn load(cli: &Cli, matches: &ArgMatches) -> Result<Self, Error> {
        let given = |id: &str| rekindle_daemon_kit::config::given(matches, id);
        let mut config: Config = rekindle_daemon_kit::config::load(&cli.config, given("config"))?;
        if given("socket") {
            config.socket = cli.socket.clone();
        }
        if given("store") {
            config.store = cli.store.clone();
        }
        if given("stage_dir") {
            config.stage_dir = cli.stage_dir.clone();
        }
        if given("log_format") {
            config.log_format = cli.log_format;
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, path) in [
            ("socket", &self.socket),
            ("store", &self.store),
            ("stage_dir", &self.stage_dir),
            ("criu_binary", &self.criu_binary),
        ] {
            rekindle_daemon_kit::config::check_absolute(name, path)?;
        }
        if self.max_files == 0 || self.max_total_bytes == 0 || self.lease_ttl_secs == 0 {
            return Err(Error::Invalid(
                "max_files, max_total_bytes and lease_ttl_secs must be positive".into(),
            ));
        }
        if let Some(size) = &self.stage_tmpfs_size {
            let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
            if digits.is_empty()
                || !digits.bytes().all(|b| b.is_ascii_digit())
                || size.len() - digits.len() > 1
            {
                return Err(Error::Invalid(format!(
                    "stage_tmpfs_size {size:?} is not a size like \"8g\", \"512m\" or \"50%\""
                )));
            }
        }
        if self.stage_dir.starts_with(&self.store) || self.store.starts_with(&self.stage_dir) {
            return Err(Error::Invalid(format!(
                "stage_dir {} and store {} must not contain each other",
                self.stage_dir.display(),
                self.store.display()
            )));
        }
        rekindle_daemon_kit::config::check_socket_path("socket", &self.socket)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::FromArgMatches;

    use super::*;

    fn load(args: &[&str]) -> Result<Config, Error> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Config::load(&cli, &matches)
    }

    #[test]
    fn defaults_are_the_conventional_places() {
        let c = Config::default();
        assert_eq!(c.socket, Path::new("/run/rekindle/restored.sock"));
        assert_eq!(c.store, Path::new("/var/lib/rekindle/images"));
        assert_eq!(c.stage_dir, Path::new("/run/rekindle/staged"));
        assert_eq!(c.criu_binary, Path::new("/usr/local/sbin/criu"));
        assert_eq!(c.log_format, LogFormat::Text);
        c.validate().unwrap();
    }

    #[test]
    fn an_empty_file_means_defaults_and_keys_override_them() {
        let p = Path::new("restored.toml");
        assert_eq!(Config::from_toml("", p).unwrap(), Config::default());
        let c = Config::from_toml("store = \"/srv/images\"\nlog_format = \"json\"\n", p).unwrap();
        assert_eq!(c.store, Path::new("/srv/images"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.socket, Path::new(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let p = Path::new("restored.toml");
        let e = Config::from_toml("sokcet = \"/run/x.sock\"\n", p).unwrap_err();
        assert!(e.to_string().contains("sokcet"), "{e}");
        assert!(Config::from_toml("log_format = \"xml\"\n", p).is_err());
    }

    #[test]
    fn a_missing_file_is_fine_only_at_the_default_path() {
        // The default /etc/rekindle/restored.toml does not exist on a development machine.
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert_eq!(load(&["rekindle-restored"]).unwrap(), Config::default());
        }
        let e = load(&[
            "rekindle-restored",
            "--config",
            "/nonexistent/restored.toml",
        ]);
        assert!(matches!(e, Err(Error::Read { .. })), "{e:?}");
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("restored.toml");
        std::fs::write(
            &file,
            "socket = \"/run/from-file.sock\"\nstore = \"/srv/from-file\"\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = load(&["rekindle-restored", "--config", file, "--store", "/srv/cli"]).unwrap();
        assert_eq!(c.socket, Path::new("/run/from-file.sock"));
        assert_eq!(c.store, Path::new("/srv/cli"));
        assert_eq!(c.stage_dir, Path::new(DEFAULT_STAGE_DIR));
    }

    #[test]
    fn limits_and_access_come_from_the_file() {
        let p = Path::new("restored.toml");
        let c = Config::from_toml(
            "allowed_uids = [1000]\nsocket_gid = 1000\nmax_files = 10\n\
             max_total_bytes = 1048576\nlease_ttl_secs = 60\nmount_stage_tmpfs = false\n\
             stage_tmpfs_size = \"2g\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.allowed_uids, [1000]);
        assert_eq!(c.socket_gid, Some(1000));
        assert_eq!(c.max_files, 10);
        assert!(!c.mount_stage_tmpfs);
        c.validate().unwrap();
        for bad in [
            "max_files = 0\n",
            "stage_tmpfs_size = \"lots\"\n",
            "stage_tmpfs_size = \"1gg\"\n",
            "stage_dir = \"/var/lib/rekindle/images/staged\"\n",
        ] {
            let c = Config::from_toml(bad, p).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn relative_paths_and_overlong_sockets_are_rejected() {
        let e = load(&["rekindle-restored", "--store", "images"]).unwrap_err();
        assert!(
            e.to_string().contains("store must be an absolute path"),
            "{e}"
        );
        let long = format!("/run/{}.sock", "s".repeat(120));
        let e = load(&["rekindle-restored", "--socket", &long]).unwrap_err();
        assert!(e.to_string().contains("at most 107"), "{e}");
    }
}
