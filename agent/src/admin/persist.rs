//! Functions registered through the admin API, kept across restarts: one TOML file per
//! function (`<functions_dir>/<name>.toml`, the keys of an agent.toml `[[function]]`
//! table), written atomically (temp file, fsync, rename, fsync of the directory) and
//! read back at start-up. agent.toml wins over a file of the same name.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::config::FunctionConfig;

/// The file of function `name` (its name is validated: `[A-Za-z0-9._-]`, 1-48).
pub fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.toml"))
}

/// Writes the function's file; nothing is half-written if this fails or the agent dies.
pub fn save(dir: &Path, f: &FunctionConfig) -> io::Result<PathBuf> {
    let text = toml::to_string(f).map_err(io::Error::other)?;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let path = path_of(dir, &f.name);
    let text = format!(
        "# Registered through the admin API (`rekindle functions add`); removed by\n\
         # `rekindle functions rm {}`.\n{text}",
        f.name
    );
    crate::files::write_atomic(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}

/// Removes the function's file (gone already: fine).
pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
    match fs::remove_file(path_of(dir, name)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => fs::File::open(dir).and_then(|d| d.sync_all()).or(Ok(())),
    }
}

/// The functions in `dir` (none if it does not exist), each checked as agent.toml's
/// tables are, and what was wrong with the files that were not taken (their path and
/// why) — a bad file is skipped, not fatal.
pub fn load(dir: &Path) -> (Vec<FunctionConfig>, Vec<String>) {
    let mut functions = Vec::new();
    let mut problems = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return (functions, problems);
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    for p in paths {
        let parsed = fs::read_to_string(&p)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<FunctionConfig>(&t).map_err(|e| e.to_string()))
            .and_then(|f| {
                let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
                if stem.as_deref() != Some(f.name.as_str()) {
                    return Err(format!("names function {:?}, not its file name", f.name));
                }
                let check = crate::config::Config {
                    functions: vec![f.clone()],
                    ..crate::config::Config::default()
                };
                check.validate().map_err(|e| e.to_string())?;
                Ok(f)
            });
        match parsed {
            Ok(f) => functions.push(f),
            Err(e) => problems.push(format!("{}: {e}", p.display())),
        }
    }
    (functions, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_functions_load_back_and_bad_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("functions");
        let mut f = FunctionConfig::new("hello", "docker.io/rekindle/python-fn:latest", 8080);
        f.env = vec!["STATE_MB=16".into()];
        f.store_as = Some("hello-img".into());
        f.max_instances = 3;
        let path = save(&d, &f).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let g = FunctionConfig::new("other", "img", 9000);
        save(&d, &g).unwrap();
        fs::write(d.join("broken.toml"), "name = \"broken\"\nport = \"x\"\n").unwrap();
        fs::write(d.join("renamed.toml"), toml::to_string(&g).unwrap()).unwrap();
        fs::write(d.join(".hello.toml.tmp"), "half").unwrap();
        let (loaded, problems) = load(&d);
        assert_eq!(loaded, vec![f.clone(), g]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("broken.toml")));
        assert!(problems
            .iter()
            .any(|p| p.contains("renamed.toml") && p.contains("not its file name")));
        remove(&d, "hello").unwrap();
        remove(&d, "hello").unwrap();
        assert!(!path.exists());
        assert_eq!(load(&dir.path().join("absent")), (Vec::new(), Vec::new()));
    }
}
