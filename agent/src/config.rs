//! The agent's configuration: built-in defaults, overridden by the TOML file (`--config`,
//! default /etc/rekindle/agent.toml), overridden by options given on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use serde::Deserialize;

use crate::daemon::Cli;

pub const DEFAULT_CONFIG: &str = "/etc/rekindle/agent.toml";
/// Loopback only by default: expose it to Prometheus deliberately.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_HOOK_SOCKET: &str = "/run/rekindle/agent.sock";
pub const DEFAULT_RESTORED_SOCKET: &str = "/run/rekindle/restored.sock";
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The namespace the CRI plugin (and so Kubernetes) uses.
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "k8s.io";

pub use rekindle_daemon_kit::LogFormat;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Unix socket of the scheduler hook (gRPC) and of the operator CLI.
    pub hook_socket: PathBuf,
    /// Unix socket of `rekindle-restored`.
    pub restored_socket: PathBuf,
    /// containerd's API socket.
    pub containerd_address: PathBuf,
    /// containerd namespace of the function containers.
    pub containerd_namespace: String,
    /// Address of the invoke gateway (edge boxes without Kubernetes); off when unset.
    pub gateway_addr: Option<SocketAddr>,
    /// Log format on stderr.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default address"),
            hook_socket: DEFAULT_HOOK_SOCKET.into(),
            restored_socket: DEFAULT_RESTORED_SOCKET.into(),
            containerd_address: DEFAULT_CONTAINERD_ADDRESS.into(),
            containerd_namespace: DEFAULT_CONTAINERD_NAMESPACE.into(),
            gateway_addr: None,
            log_format: LogFormat::Text,
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
        if given("metrics_addr") {
            config.metrics_addr = cli.metrics_addr;
        }
        if given("hook_socket") {
            config.hook_socket = cli.hook_socket.clone();
        }
        if given("restored_socket") {
            config.restored_socket = cli.restored_socket.clone();
        }
        if given("containerd_address") {
            config.containerd_address = cli.containerd_address.clone();
        }
        if cli.gateway_addr.is_some() {
            config.gateway_addr = cli.gateway_addr;
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
            ("hook_socket", &self.hook_socket),
            ("restored_socket", &self.restored_socket),
            ("containerd_address", &self.containerd_address),
        ] {
            rekindle_daemon_kit::config::check_socket_path(name, path)?;
        }
        if self.containerd_namespace.is_empty() {
            return Err(Error::Invalid("containerd_namespace is empty".into()));
        }
        if Some(self.metrics_addr) == self.gateway_addr {
            return Err(Error::Invalid(format!(
                "metrics_addr and gateway_addr are both {}",
                self.metrics_addr
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn load(args: &[&str]) -> Result<Config, Error> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Config::load(&cli, &matches)
    }

    #[test]
    fn defaults_are_the_conventional_places() {
        let c = Config::default();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.hook_socket, Path::new("/run/rekindle/agent.sock"));
        assert_eq!(c.restored_socket, Path::new("/run/rekindle/restored.sock"));
        assert_eq!(
            c.containerd_address,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(c.containerd_namespace, "k8s.io");
        assert_eq!(c.gateway_addr, None);
        assert_eq!(c.log_format, LogFormat::Text);
        c.validate().unwrap();
    }

    #[test]
    fn an_empty_file_means_defaults_and_keys_override_them() {
        let p = Path::new("agent.toml");
        assert_eq!(Config::from_toml("", p).unwrap(), Config::default());
        let c = Config::from_toml(
            "metrics_addr = \"0.0.0.0:9464\"\ngateway_addr = \"127.0.0.1:8080\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9464");
        assert_eq!(c.gateway_addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.hook_socket, Path::new(DEFAULT_HOOK_SOCKET));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let p = Path::new("agent.toml");
        let e = Config::from_toml("metrics_adr = \"127.0.0.1:1\"\n", p).unwrap_err();
        assert!(e.to_string().contains("metrics_adr"), "{e}");
        assert!(Config::from_toml("metrics_addr = \"localhost\"\n", p).is_err());
    }

    #[test]
    fn a_missing_file_is_fine_only_at_the_default_path() {
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert_eq!(load(&["rekindle-agent"]).unwrap(), Config::default());
        }
        let e = load(&["rekindle-agent", "--config", "/nonexistent/agent.toml"]);
        assert!(matches!(e, Err(Error::Read { .. })), "{e:?}");
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "metrics_addr = \"127.0.0.1:1111\"\nhook_socket = \"/run/file.sock\"\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = load(&[
            "rekindle-agent",
            "--config",
            file,
            "--metrics-addr",
            "127.0.0.1:2222",
        ])
        .unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:2222");
        assert_eq!(c.hook_socket, Path::new("/run/file.sock"));
        assert_eq!(c.restored_socket, Path::new(DEFAULT_RESTORED_SOCKET));
    }

    #[test]
    fn bad_combinations_are_rejected() {
        let e = load(&["rekindle-agent", "--hook-socket", "agent.sock"]).unwrap_err();
        assert!(
            e.to_string().contains("hook_socket must be an absolute"),
            "{e}"
        );
        let e = load(&["rekindle-agent", "--gateway-addr", "127.0.0.1:9464"]).unwrap_err();
        assert!(e.to_string().contains("both 127.0.0.1:9464"), "{e}");
    }
}
