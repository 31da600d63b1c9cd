//! containerd's `config.toml`: add the `rekindle` CRI runtime and take it out again, keeping
//! everything else in the file as it was (comments, order, quoting, indentation), and show
//! an edit as a unified diff. Pure: text in, text out; the caller reads and writes files.
//!
//! Where the runtime goes depends on the file's schema (its `version` key):
//!
//! | `version` | read by | table |
//! |---|---|---|
//! | absent, file with settings | containerd 1.x (version 1) | `[plugins.cri.containerd.runtimes.rekindle]` |
//! | `2` | containerd 1.x, and 2.x (migrated) | `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rekindle]` |
//! | `3` | containerd 2.x | `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.rekindle]` |
//!
//! A file that does not exist, or holds only comments, gets a `version` (2 for
//! containerd 1.x, 3 for 2.x) marked as added by `rekindle install`, so that uninstall
//! takes it away again (and deletes a file install created).
//!
//! The runc runtime's non-default `SystemdCgroup` and `BinaryName` go with the rekindle
//! runtime, where its containerd hands them to the shim (as runtimeoptions.v1.Options):
//! in version 3 into its `options` table (containerd 2.x passes the table as TOML); in
//! versions 1 and 2 into [`OPTIONS_FILE`], with only `ConfigPath` naming it in the table
//! (containerd 1.x passes that path and drops the table's other keys). The file's text is
//! [`options_file`]'s; the caller writes it.

use std::fmt;
use std::path::{Path, PathBuf};

use toml_edit::{Decor, DocumentMut, Item, Key, Table, TableLike, Value};

/// The runtime handler name: a RuntimeClass's `handler: rekindle`.
pub const RUNTIME_NAME: &str = "rekindle";
/// The shim containerd starts for it (`containerd-shim-rekindle-v2` on containerd's PATH).
pub const RUNTIME_TYPE: &str = "io.containerd.rekindle.v2";
/// The runc runtime whose options the rekindle runtime copies.
const RUNC: &str = "runc";

/// The comment on a `version` key that install added to a file it created.
const MARK_CREATED: &str =
    "# Written by `rekindle install` (there was no containerd config here); \
                            `rekindle uninstall` deletes it again.\n";
/// The comment on a `version` key that install added to a file that had none (only
/// comments).
const MARK_VERSION: &str = "# `version` added by `rekindle install` (the file had none); \
                            `rekindle uninstall` removes it.\n";
/// The first line of the comment above the runtime table.
const MARK_TABLE: &str = "# Added by `rekindle install`; `rekindle uninstall` removes this table.";

/// Where the `rekindle` runtime's options live for containerd 1.x (config versions 1 and 2),
/// as the node sees it: the runtime's `options` table names it as `ConfigPath`. containerd
/// 1.x's CRI passes a runtime whose type is not runc only that path (in
/// runtimeoptions.v1.Options) and drops every other key of the table without a word, so
/// runc's options copied into the table would have no effect there. containerd 2.x
/// (version 3) passes the table itself, as TOML: there they stay in the table.
pub const OPTIONS_FILE: &str = "/etc/rekindle/runtime-options.toml";

/// The comment at the top of [`OPTIONS_FILE`]; uninstall removes the file only when it is
/// still exactly what install writes.
const OPTIONS_FILE_HEADER: &str = "\
# Written by `rekindle install`: the options of containerd's `rekindle` runtime, copied from
# its `runc` runtime (the same runc binary and cgroup driver as the node's other pods).
# The runtime's `options` table names this file as its ConfigPath: containerd 1.x passes a
# runtime that is not runc only that path, none of the table's other keys.
# Keys are runc's options (case-insensitive). `rekindle uninstall` removes this file
# unless it was edited; `rekindle install` never overwrites an edited one.
";

/// The layout of a containerd config file, which says where CRI runtimes are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// No `version` key: containerd 1.x reads version 1 (`plugins.cri`).
    V1,
    /// `version = 2`: containerd 1.x; 2.x migrates it.
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Schema {
    /// The path of the table that holds the CRI runtimes.
    fn runtimes_path(self) -> [&'static str; 4] {
        let plugin = match self {
            Schema::V1 => "cri",
            Schema::V2 => "io.containerd.grpc.v1.cri",
            Schema::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", plugin, "containerd", "runtimes"]
    }

    /// The `version` key's value.
    pub fn version(self) -> i64 {
        match self {
            Schema::V1 => 1,
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    /// The schema a new file gets for this containerd.
    pub fn for_containerd(v: ContainerdVersion) -> Schema {
        if v.major >= 2 {
            Schema::V3
        } else {
            Schema::V2
        }
    }

    /// The runtime table's header, e.g.
    /// `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rekindle]`.
    pub fn table_header(self) -> String {
        let [p, plugin, c, r] = self.runtimes_path();
        let plugin = if plugin.contains('.') {
            format!("\"{plugin}\"")
        } else {
            plugin.to_string()
        };
        format!("[{p}.{plugin}.{c}.{r}.{RUNTIME_NAME}]")
    }

    /// Whether the runtime's options go to [`OPTIONS_FILE`], named by `ConfigPath` in its
    /// `options` table (containerd 1.x), rather than into the table (containerd 2.x).
    pub fn options_in_file(self) -> bool {
        self != Schema::V3
    }

    /// Which containerd reads this schema.
    pub fn describe(self) -> &'static str {
        match self {
            Schema::V1 => "config version 1 (no `version` key), containerd 1.x",
            Schema::V2 => "config version 2, containerd 1.x (2.x migrates it)",
            Schema::V3 => "config version 3, containerd 2.x",
        }
    }
}

/// containerd's release, from `containerd --version` or `--containerd-version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerdVersion {
    pub major: u32,
    pub minor: u32,
}

impl ContainerdVersion {
    /// `1.6`, `v2.1.9`, `2`, `1.6.20~ds1`: the major and minor numbers.
    pub fn parse(s: &str) -> Option<ContainerdVersion> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        Some(ContainerdVersion { major, minor })
    }

    /// The version in `containerd --version`'s output, e.g.
    /// `containerd github.com/containerd/containerd/v2 2.1.9+unknown` or
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3`.
    pub fn from_version_output(out: &str) -> Option<ContainerdVersion> {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with("containerd"))?;
        line.split_whitespace().nth(2).and_then(Self::parse)
    }
}

impl fmt::Display for ContainerdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a config cannot be edited. Each says which file, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot parse {path} at line {line}, column {column}: {message}; fix the file or pass \
         --config with the containerd config to edit"
    )]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error(
        "{path}: `version = {found}` is not a containerd config version rekindle install \
         knows (2 for containerd 1.x, 3 for containerd 2.x; no `version` is version 1); \
         fix the file or pass --config"
    )]
    UnknownVersion { path: PathBuf, found: String },

    #[error(
        "{path} {why}, so the containerd version decides where the runtime goes (config \
         version 2 for containerd 1.x, 3 for 2.x), and it is not known: {detail}; pass \
         --containerd-version (e.g. 1.6 or 2.1)"
    )]
    NeedContainerdVersion {
        path: PathBuf,
        why: &'static str,
        detail: String,
    },

    #[error(
        "{path} has settings but no `version` key: containerd reads it as config version 1, \
         whose CRI section (`plugins.cri`) containerd {containerd} ignores. Add `version = 2` \
         (or migrate it: `containerd config migrate`) and check its sections, then run rekindle \
         install again"
    )]
    Version1ForContainerd2 {
        path: PathBuf,
        containerd: ContainerdVersion,
    },

    #[error(
        "{path}: `{key}` is a TOML {found}, where a table of CRI settings was expected; fix \
         the file, or add {header} by hand"
    )]
    NotATable {
        path: PathBuf,
        key: String,
        found: &'static str,
        header: String,
    },

    #[error(
        "{path}: `{key}` is an inline table ({{ ... }}), which rekindle install does not \
         rewrite; write it as a [table] section, or add {header} by hand"
    )]
    InlineTable {
        path: PathBuf,
        key: String,
        header: String,
    },

    #[error(
        "{path}: a runtime named `rekindle` is already configured with runtime_type {found}, \
         not {RUNTIME_TYPE}; rename or remove {header}, then run rekindle install again"
    )]
    RuntimeTaken {
        path: PathBuf,
        found: String,
        header: String,
    },
}

/// What [`add_runtime`] or [`remove_runtime`] found to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The file is right as it is; says why.
    Unchanged(String),
    /// The file's new text; `summary` says what changed.
    Write { text: String, summary: String },
    /// The file was created by install and holds nothing else: delete it.
    Delete { summary: String },
}

/// How to pick the schema of a file without a `version` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Versionless {
    /// The file has a `version` (or is not parsable: the edit says so): not needed.
    NotNeeded,
    /// The file does not exist.
    Absent,
    /// The file holds only comments and blank lines.
    Empty,
    /// The file has settings but no `version`.
    Settings,
}

impl Versionless {
    /// Why the containerd version is needed, for [`ConfigError::NeedContainerdVersion`].
    pub fn why(&self) -> &'static str {
        match self {
            Versionless::NotNeeded => "has a version",
            Versionless::Absent => "does not exist",
            Versionless::Empty => "has no settings",
            Versionless::Settings => "has no `version` key",
        }
    }
}

/// Whether [`add_runtime`] needs the containerd version for this file (`text` is `None`
/// when the file does not exist).
pub fn needs_containerd_version(text: Option<&str>) -> Versionless {
    let Some(text) = text else {
        return Versionless::Absent;
    };
    match text.parse::<DocumentMut>() {
        Err(_) => Versionless::NotNeeded,
        Ok(doc) if doc.contains_key("version") => Versionless::NotNeeded,
        Ok(doc) if doc.is_empty() => Versionless::Empty,
        Ok(_) => Versionless::Settings,
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, ConfigError> {
    text.parse::<DocumentMut>().map_err(|e| {
        let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
        ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

/// 1-based line and column of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The schema the file declares, or `None` without a `version` key.
fn declared_schema(path: &Path, doc: &DocumentMut) -> Result<Option<Schema>, ConfigError> {
    let Some(item) = doc.get("version") else {
        return Ok(None);
    };
    match item.as_integer() {
        Some(1) => Ok(Some(Schema::V1)),
        Some(2) => Ok(Some(Schema::V2)),
        Some(3) => Ok(Some(Schema::V3)),
        _ => Err(ConfigError::UnknownVersion {
            path: path.to_path_buf(),
            found: item.to_string().trim().to_string(),
        }),
    }
}

/// Adds the `rekindle` runtime to the config `original` (`None`: the file does not exist).
/// `containerd` is needed only when [`needs_containerd_version`] says so.
///
/// Idempotent: when a `rekindle` runtime with our runtime_type is there already (whatever
/// else an operator put in it), the answer is [`Change::Unchanged`] (which points out
/// options a version 1 or 2 table sets besides `ConfigPath`: containerd 1.x ignores them).
/// Whether [`OPTIONS_FILE`] is wanted, and with what, is [`options_file`] of the result.
pub fn add_runtime(
    path: &Path,
    original: Option<&str>,
    containerd: Option<ContainerdVersion>,
) -> Result<Change, ConfigError> {
    let mut doc = match original {
        Some(text) => parse(path, text)?,
        None => DocumentMut::new(),
    };
    let need_version = |why: Versionless| {
        containerd.ok_or_else(|| ConfigError::NeedContainerdVersion {
            path: path.to_path_buf(),
            why: why.why(),
            detail: "no --containerd-version given".into(),
        })
    };
    let (schema, add_version) = match declared_schema(path, &doc)? {
        Some(schema) => (schema, None),
        None if original.is_none() => {
            let v = need_version(Versionless::Absent)?;
            (Schema::for_containerd(v), Some(MARK_CREATED))
        }
        None if doc.is_empty() => {
            let v = need_version(Versionless::Empty)?;
            (Schema::for_containerd(v), Some(MARK_VERSION))
        }
        None => {
            let v = need_version(Versionless::Settings)?;
            if v.major >= 2 {
                return Err(ConfigError::Version1ForContainerd2 {
                    path: path.to_path_buf(),
                    containerd: v,
                });
            }
            (Schema::V1, None)
        }
    };
    let header = schema.table_header();

    if let Some(existing) = find_runtime(&doc, schema) {
        let found = runtime_type(existing);
        if found.as_deref() == Some(RUNTIME_TYPE) {
            let mut why = format!(
                "{header} is already there with runtime_type = \"{RUNTIME_TYPE}\" (left as it is)"
            );
            let ignored = keys_besides_config_path(existing);
            if schema.options_in_file() && !ignored.is_empty() {
                why.push_str(&format!(
                    "; but its options table sets {}, which containerd 1.x does not pass to \
                     the shim (only ConfigPath): `rekindle uninstall` then `rekindle install` \
                     moves runc's options to {OPTIONS_FILE}",
                    ignored.join(", ")
                ));
            }
            return Ok(Change::Unchanged(why));
        }
        return Err(ConfigError::RuntimeTaken {
            path: path.to_path_buf(),
            found: found.map_or_else(|| "(none)".into(), |t| format!("\"{t}\"")),
            header,
        });
    }

    if let Some(mark) = add_version {
        let key = Key::new("version").with_leaf_decor(Decor::new(mark, " "));
        let value = Value::from(schema.version()).decorated(" ", "");
        // Before any table: root key-values are written first.
        doc.as_table_mut()
            .insert_formatted(&key, Item::Value(value));
    }

    let runtimes = runtimes_table_mut(path, &mut doc, schema, &header)?;
    let (table, copied) = runtime_table(runtimes, schema);
    runtimes.insert(RUNTIME_NAME, Item::Table(table));

    let mut summary = format!(
        "add the {RUNTIME_NAME} runtime: {header} ({})",
        schema.describe()
    );
    if add_version.is_some() {
        summary.push_str(&format!(", with `version = {}`", schema.version()));
    }
    if !copied.is_empty() {
        let copied = copied.join(", ");
        if schema.options_in_file() {
            summary.push_str(&format!(
                "; the runc runtime's options ({copied}) copied to {OPTIONS_FILE}, which its \
                 options table names as ConfigPath (containerd 1.x passes the shim that path \
                 and none of the table's other keys)"
            ));
        } else {
            summary.push_str(&format!(
                "; the runc runtime's options ({copied}) copied into its options table"
            ));
        }
    }
    Ok(Change::Write {
        text: doc.to_string(),
        summary,
    })
}

/// The file's runtimes table for `schema`, if any.
fn find_runtimes(doc: &DocumentMut, schema: Schema) -> Option<&dyn TableLike> {
    let mut item = doc.as_item();
    for key in schema.runtimes_path() {
        item = item.as_table_like()?.get(key)?;
    }
    item.as_table_like()
}

/// The `rekindle` runtime entry in the file's runtimes table for `schema`, if any.
fn find_runtime(doc: &DocumentMut, schema: Schema) -> Option<&Item> {
    find_runtimes(doc, schema)?.get(RUNTIME_NAME)
}

/// The value of `table`'s key `name`, matched case-insensitively (containerd decodes
/// runc's options so, and the shim its own).
fn get_ignore_case<'t>(table: &'t dyn TableLike, name: &str) -> Option<&'t Item> {
    table
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, item)| item)
}

/// The keys of a runtime's `options` table other than `ConfigPath`.
fn keys_besides_config_path(runtime: &Item) -> Vec<String> {
    runtime
        .as_table_like()
        .and_then(|t| t.get("options"))
        .and_then(Item::as_table_like)
        .map(|o| {
            o.iter()
                .map(|(k, _)| k.to_string())
                .filter(|k| !k.eq_ignore_ascii_case("ConfigPath"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a runtime's `options` table names [`OPTIONS_FILE`] as its `ConfigPath`.
fn names_options_file(runtime: &Item) -> bool {
    runtime
        .as_table_like()
        .and_then(|t| t.get("options"))
        .and_then(Item::as_table_like)
        .and_then(|o| get_ignore_case(o, "ConfigPath"))
        .and_then(Item::as_str)
        == Some(OPTIONS_FILE)
}

/// The runc runtime's options the rekindle runtime takes over: `BinaryName` and
/// `SystemdCgroup`, when they differ from the defaults (which are also the shim's, so a
/// default node copies nothing), under their canonical names.
fn options_to_copy(runc_options: Option<&dyn TableLike>) -> Vec<(&'static str, &Value)> {
    let Some(runc_options) = runc_options else {
        return Vec::new();
    };
    let mut copied = Vec::new();
    for name in ["BinaryName", "SystemdCgroup"] {
        let Some(value) = get_ignore_case(runc_options, name).and_then(Item::as_value) else {
            continue;
        };
        let is_default = match value {
            Value::String(s) => s.value().is_empty(),
            Value::Boolean(b) => !*b.value(),
            _ => false,
        };
        if !is_default {
            copied.push((name, value));
        }
    }
    copied
}

/// The `options` table of the runc runtime in `runtimes`, if any.
fn runc_options(runtimes: &dyn TableLike) -> Option<&dyn TableLike> {
    runtimes
        .get(RUNC)?
        .as_table_like()?
        .get("options")?
        .as_table_like()
}

/// The text of [`OPTIONS_FILE`] for these options: the header, then one `key = value`
/// line each, values written plainly (basic strings). `None` without options.
pub fn options_file_text(options: &[(&str, &Value)]) -> Option<String> {
    if options.is_empty() {
        return None;
    }
    let mut text = OPTIONS_FILE_HEADER.to_string();
    for (name, value) in options {
        let plain = match *value {
            Value::String(s) => Value::from(s.value().as_str()),
            Value::Boolean(b) => Value::from(*b.value()),
            other => other.clone().decorated("", ""),
        };
        text.push_str(&format!("{name} = {plain}\n"));
    }
    Some(text)
}

/// [`OPTIONS_FILE`] as a config asks for it: see [`options_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsFile {
    /// A `rekindle` runtime of ours in the config names [`OPTIONS_FILE`] as `ConfigPath`
    /// (install adds it so in config versions 1 and 2 when it copies options).
    pub named: bool,
    /// What install writes there for the config's runc runtime (of the schema whose
    /// rekindle runtime names the file, else of the first schema with a runc runtime);
    /// `None` when runc's options are all defaults.
    pub text: Option<String>,
}

/// Whether the config `config` (as install left it) wants [`OPTIONS_FILE`], and with
/// what text. Install writes the file when it is named and has text; uninstall removes it
/// only when it still holds exactly that text.
pub fn options_file(path: &Path, config: &str) -> Result<OptionsFile, ConfigError> {
    let doc = parse(path, config)?;
    let mut first_runc = None;
    for schema in [Schema::V1, Schema::V2, Schema::V3] {
        let Some(runtimes) = find_runtimes(&doc, schema) else {
            continue;
        };
        let text = options_file_text(&options_to_copy(runc_options(runtimes)));
        if let Some(rekindle) = runtimes.get(RUNTIME_NAME) {
            if runtime_type(rekindle).as_deref() == Some(RUNTIME_TYPE)
                && names_options_file(rekindle)
            {
                return Ok(OptionsFile { named: true, text });
            }
        }
        if first_runc.is_none() && runtimes.contains_key(RUNC) {
            first_runc = Some(text);
        }
    }
    Ok(OptionsFile {
        named: false,
        text: first_runc.flatten(),
    })
}

fn runtime_type(runtime: &Item) -> Option<String> {
    runtime
        .as_table_like()?
        .get("runtime_type")?
        .as_str()
        .map(str::to_string)
}

/// The runtimes table for `schema`, created (as implicit tables, which print no header)
/// where missing.
fn runtimes_table_mut<'d>(
    path: &Path,
    doc: &'d mut DocumentMut,
    schema: Schema,
    header: &str,
) -> Result<&'d mut Table, ConfigError> {
    let mut table = doc.as_table_mut();
    let mut dotted = Vec::new();
    for key in schema.runtimes_path() {
        dotted.push(if key.contains('.') {
            format!("\"{key}\"")
        } else {
            key.to_string()
        });
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = match item {
            Item::Table(t) => t,
            Item::Value(Value::InlineTable(_)) => {
                return Err(ConfigError::InlineTable {
                    path: path.to_path_buf(),
                    key: dotted.join("."),
                    header: header.to_string(),
                })
            }
            other => {
                return Err(ConfigError::NotATable {
                    path: path.to_path_buf(),
                    key: dotted.join("."),
                    found: other.type_name(),
                    header: header.to_string(),
                })
            }
        };
    }
    Ok(table)
}

/// The indentation (spaces and tabs) at the end of a decor prefix, if it has a newline or
/// is all blanks.
fn trailing_indent(prefix: Option<&str>) -> Option<String> {
    let p = prefix?;
    let last = p.rsplit('\n').next().unwrap_or(p);
    last.chars()
        .all(|c| c == ' ' || c == '\t')
        .then(|| last.to_string())
}

fn prefix_str(decor: &Decor) -> Option<&str> {
    decor.prefix().and_then(|p| p.as_str())
}

/// The indentation of the `[header]` of `parent`'s sub-table `name` (the table's decor or
/// its key's leaf decor holds it), if there is such a table.
fn header_indent(parent: &Table, name: &str) -> Option<String> {
    let table = parent.get(name)?.as_table()?;
    Some(
        trailing_indent(prefix_str(table.decor()))
            .or_else(|| {
                parent
                    .key(name)
                    .and_then(|k| trailing_indent(prefix_str(k.leaf_decor())))
            })
            .unwrap_or_default(),
    )
}

/// The indentation of the first key-value line of `table`, if it has one.
fn key_indent(table: &Table) -> Option<String> {
    let (name, _) = table.iter().find(|(_, item)| item.is_value())?;
    let key = table.key(name)?;
    Some(trailing_indent(prefix_str(key.leaf_decor())).unwrap_or_default())
}

/// The runtime table, laid out like its runc sibling when there is one (indentation,
/// quotes), and the names of the options copied from runc (into its `options` table for
/// `Schema::V3`, else into [`OPTIONS_FILE`], which the table names as `ConfigPath`).
fn runtime_table(runtimes: &Table, schema: Schema) -> (Table, Vec<&'static str>) {
    let runc = runtimes.get(RUNC).and_then(Item::as_table);
    let runc_options_table = runc.and_then(|t| t.get("options")).and_then(Item::as_table);
    let indent = header_indent(runtimes, RUNC).unwrap_or_default();
    let body_indent = runc
        .and_then(key_indent)
        .unwrap_or_else(|| format!("{indent}  "));
    let options_indent = runc
        .and_then(|t| header_indent(t, "options"))
        .unwrap_or_else(|| body_indent.clone());
    let options_body_indent = runc_options_table
        .and_then(key_indent)
        .unwrap_or_else(|| format!("{options_indent}  "));
    // Quotes: the runc runtime_type's ('...' in containerd 2.x's default config).
    let literal = runc
        .and_then(|t| t.get("runtime_type"))
        .and_then(Item::as_value)
        .and_then(|v| match v {
            Value::String(s) => s.as_repr(),
            _ => None,
        })
        .and_then(|r| r.as_raw().as_str())
        .is_some_and(|raw| raw.starts_with('\''));
    let type_value: Value = if literal {
        format!("'{RUNTIME_TYPE}'")
            .parse()
            .expect("a TOML literal string")
    } else {
        Value::from(RUNTIME_TYPE)
    };

    let mut table = Table::new();
    table.decor_mut().set_prefix(format!(
        "\n{indent}{MARK_TABLE}\n{indent}# Pods select it with a RuntimeClass whose handler is `{RUNTIME_NAME}`.\n{indent}"
    ));
    table.insert_formatted(
        &Key::new("runtime_type").with_leaf_decor(Decor::new(body_indent, " ")),
        Item::Value(type_value.decorated(" ", "")),
    );

    // The shim drives runc, and takes runc's options: the same runc binary and cgroup
    // driver as the node's runc pods, else pods of this runtime class land in cgroups the
    // kubelet does not manage (SystemdCgroup = true nodes). Only settings that differ
    // from the defaults are copied; the defaults are also the shim's, so a default node
    // gets no options table at all. containerd's CRI passes a non-runc runtime type's
    // options as runtimeoptions.v1.Options: 2.x with the table as TOML in config_body
    // (the keys go into the table), 1.x with only the table's ConfigPath, every other key
    // dropped (the keys go to OPTIONS_FILE, which the caller writes: see options_file).
    let copied = options_to_copy(runc_options(runtimes));
    let names: Vec<&'static str> = copied.iter().map(|(name, _)| *name).collect();
    if copied.is_empty() {
        return (table, names);
    }
    let key =
        |name: &str| Key::new(name).with_leaf_decor(Decor::new(options_body_indent.clone(), " "));
    let mut options = Table::new();
    let comment = if schema.options_in_file() {
        let path_value: Value = if literal {
            format!("'{OPTIONS_FILE}'")
                .parse()
                .expect("a TOML literal string")
        } else {
            Value::from(OPTIONS_FILE)
        };
        options.insert_formatted(
            &key("ConfigPath"),
            Item::Value(path_value.decorated(" ", "")),
        );
        format!(
            "# containerd 1.x passes the shim only ConfigPath: the runc runtime's options ({}),\n\
             {options_indent}# the same runc binary and cgroup driver as the node's other pods, \
             are in that file.",
            names.join(", ")
        )
    } else {
        for (name, value) in &copied {
            options.insert_formatted(&key(name), Item::Value((*value).clone().decorated(" ", "")));
        }
        "# Copied from the runc runtime: the same runc binary and cgroup driver as the node's \
         other pods."
            .to_string()
    };
    options
        .decor_mut()
        .set_prefix(format!("\n{options_indent}{comment}\n{options_indent}"));
    table.insert("options", Item::Table(options));
    (table, names)
}

/// Takes the `rekindle` runtime out of the config `original` (every schema's place for
/// it), and what install added with it: the `version` key it marked, or the whole file
/// when install created it. An operator's edits inside the runtime table go with it; the
/// rest of the file stays byte for byte as it was.
pub fn remove_runtime(path: &Path, original: &str) -> Result<Change, ConfigError> {
    let mut doc = parse(path, original)?;
    let mut removed = Vec::new();
    let mut foreign = Vec::new();
    for schema in [Schema::V1, Schema::V2, Schema::V3] {
        let Some(existing) = find_runtime(&doc, schema) else {
            continue;
        };
        match runtime_type(existing) {
            Some(t) if t == RUNTIME_TYPE => {
                remove_and_prune(doc.as_table_mut(), &schema.runtimes_path());
                removed.push(schema.table_header());
            }
            other => foreign.push(format!(
                "{} has runtime_type {}, not {RUNTIME_TYPE}: not ours, left as it is",
                schema.table_header(),
                other.map_or_else(|| "(none)".into(), |t| format!("\"{t}\""))
            )),
        }
    }
    if removed.is_empty() {
        let mut why = format!("no {RUNTIME_NAME} runtime with runtime_type {RUNTIME_TYPE}");
        if !foreign.is_empty() {
            why = format!("{why} ({})", foreign.join("; "));
        }
        return Ok(Change::Unchanged(why));
    }
    let mut summary = format!("remove {}", removed.join(" and "));
    let mark = doc
        .key("version")
        .and_then(|k| k.leaf_decor().prefix())
        .and_then(|p| p.as_str())
        .map(str::to_string);
    let created = mark.as_deref() == Some(MARK_CREATED);
    if created || mark.as_deref() == Some(MARK_VERSION) {
        doc.remove("version");
        summary.push_str(" and the `version` install added");
    }
    for note in foreign {
        summary.push_str(&format!("; {note}"));
    }
    let text = doc.to_string();
    if created && doc.is_empty() && text.trim().is_empty() {
        return Ok(Change::Delete {
            summary: format!("{summary}; install created the file and nothing else is in it"),
        });
    }
    Ok(Change::Write { text, summary })
}

/// Removes `rekindle` under `path`, then every table on the path left empty that prints
/// no header of its own (implicit), as install creates them.
fn remove_and_prune(root: &mut Table, path: &[&str]) {
    fn walk(table: &mut Table, path: &[&str]) {
        match path.split_first() {
            None => {
                table.remove(RUNTIME_NAME);
            }
            Some((first, rest)) => {
                if let Some(Item::Table(child)) = table.get_mut(first) {
                    walk(child, rest);
                    if child.is_implicit() && child.is_empty() {
                        table.remove(first);
                    }
                }
            }
        }
    }
    walk(root, path);
}

/// A unified diff of a file's text before and after (`None`: the file does not exist).
pub fn unified_diff(path: &Path, before: Option<&str>, after: Option<&str>) -> String {
    let name = path.display().to_string();
    let old_header = if before.is_some() {
        name.clone()
    } else {
        "/dev/null".into()
    };
    let new_header = if after.is_some() {
        name
    } else {
        "/dev/null".into()
    };
    similar::TextDiff::from_lines(before.unwrap_or(""), after.unwrap_or(""))
        .unified_diff()
        .context_radius(3)
        .header(&old_header, &new_header)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V16: Option<ContainerdVersion> = Some(ContainerdVersion { major: 1, minor: 6 });
    const V21: Option<ContainerdVersion> = Some(ContainerdVersion { major: 2, minor: 1 });

    fn path() -> &'static Path {
        Path::new("/etc/containerd/config.toml")
    }

    fn written(c: Change) -> String {
        match c {
            Change::Write { text, .. } => text,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    /// install, then install again (no-op), then uninstall: the original back.
    fn round_trip(original: &str, containerd: Option<ContainerdVersion>) -> String {
        let installed = written(add_runtime(path(), Some(original), containerd).unwrap());
        assert!(
            matches!(
                add_runtime(path(), Some(&installed), containerd).unwrap(),
                Change::Unchanged(_)
            ),
            "second install changes something:\n{installed}"
        );
        let back = written(remove_runtime(path(), &installed).unwrap());
        assert_eq!(back, original, "uninstall did not restore:\n{installed}");
        installed
    }

    const HAND: &str = r#"# containerd config, hand-written
version = 2
root = "/var/lib/containerd"   # keep

[grpc]
  address = "/run/containerd/containerd.sock"

# the CRI plugin
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9" # pinned
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # systemd cgroups, as the kubelet
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
        BinaryName = ""

# after the runtimes
[metrics]
  address = "127.0.0.1:1338"
"#;

    #[test]
    fn a_hand_written_v2_config_gets_the_runtime_next_to_runc_and_back() {
        let installed = round_trip(HAND, None);
        let expected_table = r#"
    # Added by `rekindle install`; `rekindle uninstall` removes this table.
    # Pods select it with a RuntimeClass whose handler is `rekindle`.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rekindle]
      runtime_type = "io.containerd.rekindle.v2"

      # containerd 1.x passes the shim only ConfigPath: the runc runtime's options (SystemdCgroup),
      # the same runc binary and cgroup driver as the node's other pods, are in that file.
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.rekindle.options]
        ConfigPath = "/etc/rekindle/runtime-options.toml"
"#;
        assert!(
            installed.contains(&format!(
                "        BinaryName = \"\"\n{expected_table}\n# after the runtimes"
            )),
            "{installed}"
        );
        // Every line of the original is still there, in order.
        let mut rest = installed.as_str();
        for line in HAND.lines() {
            let at = rest.find(line).unwrap_or_else(|| panic!("{line:?} lost"));
            rest = &rest[at + line.len()..];
        }
    }

    /// HAND as containerd 2.x's version 3 file.
    fn hand_v3() -> String {
        HAND.replace("version = 2", "version = 3")
            .replace("io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime")
    }

    fn summary(c: Change) -> String {
        match c {
            Change::Write { summary, .. } => summary,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn version_2_copies_runc_options_to_the_file_that_config_path_names() {
        let s = summary(add_runtime(path(), Some(HAND), None).unwrap());
        assert!(
            s.contains("options (SystemdCgroup) copied to /etc/rekindle/runtime-options.toml")
                && s.contains("names as ConfigPath"),
            "{s}"
        );
        let installed = written(add_runtime(path(), Some(HAND), None).unwrap());
        let doc: DocumentMut = installed.parse().unwrap();
        let options = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            ["rekindle"]["options"]
            .as_table()
            .unwrap();
        assert_eq!(
            options.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["ConfigPath"]
        );
        assert_eq!(options["ConfigPath"].as_str(), Some(OPTIONS_FILE));
        assert_eq!(
            options_file(path(), &installed).unwrap(),
            OptionsFile {
                named: true,
                text: Some(format!("{OPTIONS_FILE_HEADER}SystemdCgroup = true\n")),
            }
        );
        // Before install: nothing names the file, but uninstall knows what install writes.
        assert_eq!(
            options_file(path(), HAND).unwrap(),
            OptionsFile {
                named: false,
                text: Some(format!("{OPTIONS_FILE_HEADER}SystemdCgroup = true\n")),
            }
        );
    }

    #[test]
    fn version_1_copies_runc_options_to_the_file_too() {
        let v1 = "[plugins.cri.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.cri.containerd.runtimes.runc.options]\n    BinaryName = \"/usr/sbin/runc\"\n";
        let installed = round_trip(v1, V16);
        assert!(
            installed.contains(
                "  [plugins.cri.containerd.runtimes.rekindle.options]\n    ConfigPath = \"/etc/rekindle/runtime-options.toml\"\n"
            ),
            "{installed}"
        );
        let file = options_file(path(), &installed).unwrap();
        assert!(file.named);
        assert!(file
            .text
            .unwrap()
            .ends_with("\nBinaryName = \"/usr/sbin/runc\"\n"),);
    }

    #[test]
    fn version_3_copies_runc_options_into_the_table_and_names_no_file() {
        let v3 = hand_v3();
        let s = summary(add_runtime(path(), Some(&v3), None).unwrap());
        assert!(
            s.contains("options (SystemdCgroup) copied into its options table"),
            "{s}"
        );
        assert!(!s.contains(OPTIONS_FILE), "{s}");
        let installed = round_trip(&v3, None);
        assert!(
            installed.contains(
                "      # Copied from the runc runtime: the same runc binary and cgroup driver as the node's other pods.\n      [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.rekindle.options]\n        SystemdCgroup = true\n"
            ),
            "{installed}"
        );
        assert!(!installed.contains("ConfigPath"), "{installed}");
        assert!(!options_file(path(), &installed).unwrap().named);
    }

    #[test]
    fn default_runc_options_are_not_copied_and_want_no_file() {
        for config in [HAND.to_string(), hand_v3()] {
            let defaults = config.replace("SystemdCgroup = true", "SystemdCgroup = false");
            let change = add_runtime(path(), Some(&defaults), None).unwrap();
            let s = summary(change.clone());
            assert!(!s.contains("copied"), "{s}");
            let text = written(change);
            assert!(!text.contains("rekindle.options"), "{text}");
            assert_eq!(
                options_file(path(), &text).unwrap(),
                OptionsFile {
                    named: false,
                    text: None
                }
            );
        }
        // No runc runtime at all.
        assert_eq!(
            options_file(path(), "version = 2\n").unwrap(),
            OptionsFile {
                named: false,
                text: None
            }
        );
    }

    #[test]
    fn runc_option_names_match_case_insensitively_and_values_are_written_plainly() {
        let odd = HAND.replace(
            "        SystemdCgroup = true\n        BinaryName = \"\"\n",
            "        systemdcgroup = true   # lower case\n        binaryname = '/opt/runc'\n",
        );
        let installed = written(add_runtime(path(), Some(&odd), None).unwrap());
        let text = options_file(path(), &installed).unwrap().text.unwrap();
        assert_eq!(
            text,
            format!("{OPTIONS_FILE_HEADER}BinaryName = \"/opt/runc\"\nSystemdCgroup = true\n")
        );
        assert!(
            text.starts_with("# Written by `rekindle install`"),
            "{text}"
        );
        // What the shim reads: valid TOML, the keys and nothing else.
        let parsed: toml::Table = text.parse().unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed["SystemdCgroup"].as_bool(), Some(true));
        assert_eq!(options_file_text(&[]), None);
    }

    #[test]
    fn an_older_installs_table_options_on_version_2_are_pointed_out() {
        // What install wrote before it knew containerd 1.x drops the table's keys.
        let installed = written(add_runtime(path(), Some(&hand_v3()), None).unwrap())
            .replace("version = 3", "version = 2")
            .replace("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri");
        match add_runtime(path(), Some(&installed), None).unwrap() {
            Change::Unchanged(why) => assert!(
                why.contains("sets SystemdCgroup, which containerd 1.x does not pass")
                    && why.contains("rekindle uninstall"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!options_file(path(), &installed).unwrap().named);
        // Ours: only ConfigPath, nothing to point out.
        let ours = written(add_runtime(path(), Some(HAND), None).unwrap());
        match add_runtime(path(), Some(&ours), None).unwrap() {
            Change::Unchanged(why) => assert!(!why.contains("but"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_runtime_type_of_a_v3_config_keeps_its_literal_quotes() {
        let v3 = "version = 3\n\n[plugins]\n  [plugins.'io.containerd.cri.v1.runtime']\n    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n      runtime_type = 'io.containerd.runc.v2'\n";
        let installed = round_trip(v3, None);
        assert!(installed.contains(
            "    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.rekindle]\n      runtime_type = 'io.containerd.rekindle.v2'\n"
        ), "{installed}");
        assert!(!installed.contains("options"), "{installed}");
        let doc: DocumentMut = installed.parse().unwrap();
        assert_eq!(
            doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["rekindle"]
                ["runtime_type"]
                .as_str(),
            Some(RUNTIME_TYPE)
        );
    }

    #[test]
    fn missing_parent_tables_are_added_without_headers_and_removed_again() {
        let minimal = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = \"/usr/lib/cni\"\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"/var/lib/containerd/opt\"\n";
        let installed = round_trip(minimal, None);
        assert_eq!(
            installed.matches('[').count(),
            minimal.matches('[').count() + 1
        );
        let doc: DocumentMut = installed.parse().unwrap();
        assert_eq!(
            doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["rekindle"]
                ["runtime_type"]
                .as_str(),
            Some(RUNTIME_TYPE)
        );
    }

    #[test]
    fn an_absent_file_is_created_for_the_containerd_version_and_deleted_again() {
        for (v, header) in [
            (
                V16,
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rekindle]",
            ),
            (
                V21,
                "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.rekindle]",
            ),
        ] {
            let text = written(add_runtime(path(), None, v).unwrap());
            assert!(text.starts_with(MARK_CREATED), "{text}");
            assert!(text.contains(header), "{text}");
            let version = Schema::for_containerd(v.unwrap()).version();
            assert!(text.contains(&format!("\nversion = {version}\n")), "{text}");
            assert!(matches!(
                add_runtime(path(), Some(&text), None).unwrap(),
                Change::Unchanged(_)
            ));
            assert!(matches!(
                remove_runtime(path(), &text).unwrap(),
                Change::Delete { .. }
            ));
        }
        let e = add_runtime(path(), None, None).unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("--containerd-version"),
            "{e}"
        );
    }

    #[test]
    fn a_comment_only_file_gets_a_marked_version_that_uninstall_removes() {
        let comments = "# nothing configured yet\n\n# see containerd config default\n";
        round_trip(comments, V21);
        round_trip("", V16);
        assert_eq!(needs_containerd_version(Some(comments)), Versionless::Empty);
        assert_eq!(needs_containerd_version(None), Versionless::Absent);
        assert_eq!(
            needs_containerd_version(Some("version = 2\n")),
            Versionless::NotNeeded
        );
    }

    #[test]
    fn a_versionless_file_with_settings_is_version_1_for_containerd_1_and_refused_for_2() {
        let v1 = "root = \"/data/containerd\"\n\n[plugins.cri]\n  sandbox_image = \"pause:3.9\"\n";
        assert_eq!(needs_containerd_version(Some(v1)), Versionless::Settings);
        let installed = round_trip(v1, V16);
        assert!(
            installed.contains("[plugins.cri.containerd.runtimes.rekindle]"),
            "{installed}"
        );
        let e = add_runtime(path(), Some(v1), V21).unwrap_err().to_string();
        assert!(
            e.contains("version = 2") && e.contains("no `version` key"),
            "{e}"
        );
        let e = add_runtime(path(), Some(v1), None).unwrap_err().to_string();
        assert!(
            e.contains("has no `version` key") && e.contains("--containerd-version"),
            "{e}"
        );
    }

    #[test]
    fn uninstall_removes_an_edited_runtime_table_and_only_it() {
        let installed = written(add_runtime(path(), Some(HAND), None).unwrap());
        let edited = installed.replace(
            "runtime_type = \"io.containerd.rekindle.v2\"\n",
            "runtime_type = \"io.containerd.rekindle.v2\"\n      pod_annotations = [\"io.rekindle.*\"]  # mine\n",
        );
        assert_ne!(edited, installed);
        assert_eq!(written(remove_runtime(path(), &edited).unwrap()), HAND);
    }

    #[test]
    fn uninstall_without_the_runtime_changes_nothing() {
        assert!(matches!(
            remove_runtime(path(), HAND).unwrap(),
            Change::Unchanged(_)
        ));
        let foreign = format!(
            "{HAND}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rekindle]\n  runtime_type = \"io.containerd.kata.v2\"\n"
        );
        match remove_runtime(path(), &foreign).unwrap() {
            Change::Unchanged(why) => assert!(why.contains("not ours"), "{why}"),
            other => panic!("{other:?}"),
        }
        let e = add_runtime(path(), Some(&foreign), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("io.containerd.kata.v2") && e.contains("rename or remove"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_file_the_place_and_the_fix() {
        let broken = "version = 2\n[plugins\n";
        let e = add_runtime(path(), Some(broken), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot parse /etc/containerd/config.toml at line 2, column"),
            "{e}"
        );
        assert!(e.contains("fix the file or pass --config"), "{e}");
        let e = remove_runtime(path(), broken).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");

        let e = add_runtime(path(), Some("version = 4\n"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`version = 4`"), "{e}");

        let e = add_runtime(
            path(),
            Some("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\ncontainerd = 5\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("is a TOML integer") && e.contains("add [plugins"),
            "{e}"
        );

        let e = add_runtime(
            path(),
            Some("version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\nruntimes = { runc = { runtime_type = \"io.containerd.runc.v2\" } }\n"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("inline table"), "{e}");
    }

    #[test]
    fn containerd_versions_parse_from_the_flag_and_from_containerd_version() {
        assert_eq!(ContainerdVersion::parse("1.6"), V16);
        assert_eq!(ContainerdVersion::parse("v2.1.9"), V21);
        assert_eq!(
            ContainerdVersion::parse("2"),
            Some(ContainerdVersion { major: 2, minor: 0 })
        );
        assert_eq!(ContainerdVersion::parse("two"), None);
        assert_eq!(
            ContainerdVersion::from_version_output(
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown \n"
            ),
            V21
        );
        assert_eq!(
            ContainerdVersion::from_version_output(
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n"
            ),
            Some(ContainerdVersion { major: 1, minor: 6 })
        );
    }

    #[test]
    fn the_diff_is_unified_with_the_file_name() {
        let installed = written(add_runtime(path(), Some(HAND), None).unwrap());
        let diff = unified_diff(path(), Some(HAND), Some(&installed));
        assert!(
            diff.starts_with(
                "--- /etc/containerd/config.toml\n+++ /etc/containerd/config.toml\n@@ "
            ),
            "{diff}"
        );
        assert!(
            diff.contains("\n+      runtime_type = \"io.containerd.rekindle.v2\"\n"),
            "{diff}"
        );
        assert!(
            !diff
                .lines()
                .any(|l| l.starts_with('-') && !l.starts_with("---")),
            "{diff}"
        );
        let created = unified_diff(path(), None, Some("version = 3\n"));
        assert!(
            created.starts_with("--- /dev/null\n+++ /etc/containerd/config.toml\n"),
            "{created}"
        );
    }
}
