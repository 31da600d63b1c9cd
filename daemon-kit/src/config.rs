//! Configuration files: built-in defaults, overridden by a TOML file, overridden by the
//! options actually given on the command line (clap tells which were).

use std::io;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid configuration file {}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Whether option `id` was given (on the command line or through its environment
/// variable) rather than left at its default.
pub fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Parses a configuration file's text; keys left out keep their defaults (the type's
/// `#[serde(default)]`).
pub fn from_toml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Reads the file at `path`. A missing file means the defaults when the path is the
/// default one, and is an error when the user named it (`explicit`).
pub fn load<T: DeserializeOwned + Default>(path: &Path, explicit: bool) -> Result<T, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => from_toml(&text, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => Ok(T::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Longest path a unix socket address holds (`sun_path` is 108 bytes, NUL included).
pub const MAX_SOCKET_PATH: usize = 107;

/// A configured path must be absolute: relative ones would depend on the daemon's cwd.
pub fn check_absolute(name: &str, path: &Path) -> Result<(), ConfigError> {
    if !path.is_absolute() {
        return Err(ConfigError::Invalid(format!(
            "{name} must be an absolute path, not {}",
            path.display()
        )));
    }
    Ok(())
}

/// An absolute path short enough to bind or connect a unix socket at.
pub fn check_socket_path(name: &str, path: &Path) -> Result<(), ConfigError> {
    check_absolute(name, path)?;
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ConfigError::Invalid(format!(
            "{name} {} is {len} bytes; a unix socket path holds at most {MAX_SOCKET_PATH}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn socket_paths_must_be_absolute_and_fit_sun_path() {
        use std::path::Path;
        super::check_socket_path("socket", Path::new("/run/x.sock")).unwrap();
        let e = super::check_socket_path("socket", Path::new("x.sock")).unwrap_err();
        assert!(
            e.to_string().contains("socket must be an absolute path"),
            "{e}"
        );
        let long = format!("/{}", "a".repeat(120));
        let e = super::check_socket_path("socket", Path::new(&long)).unwrap_err();
        assert!(e.to_string().contains("holds at most 107"), "{e}");
    }

    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        socket: String,
        limit: u32,
    }

    #[test]
    fn a_missing_default_file_means_defaults_but_a_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(load::<Sample>(&path, false).unwrap(), Sample::default());
        let err = load::<Sample>(&path, true).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("absent.toml"));
    }

    #[test]
    fn file_keys_override_defaults_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "limit = 7\n").unwrap();
        let c: Sample = load(&path, true).unwrap();
        assert_eq!(
            c,
            Sample {
                socket: String::new(),
                limit: 7
            }
        );
        std::fs::write(&path, "limt = 7\n").unwrap();
        let err = load::<Sample>(&path, true).unwrap_err().to_string();
        assert!(err.contains("c.toml") && err.contains("limt"), "{err}");
    }
}
