//! The wire types: one request per connection, one JSON object per line each way.
//!
//! ```text
//! → {"v":1,"op":"prepare_restore","name":"hello-fn"}
//! ← {"ok":{"image_dir":"/run/rekindle/staged/hello-fn","staged":true,"lease":"5f0c…"}}
//! ← {"error":{"code":"not_found","message":"image hello-fn does not exist"}}
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (the request's `v`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Where `rekindle-restored` listens by default.
pub const DEFAULT_SOCKET: &str = "/run/rekindle/restored.sock";

/// Longest request line the daemon reads (a request names paths and labels, nothing big).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Longest response line the client reads (a manifest of 4096 files is ~600 KiB).
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A request as sent: the protocol version and the operation, flattened into one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub v: u32,
    #[serde(flatten)]
    pub op: Op,
}

impl Request {
    /// A request in this crate's protocol version.
    pub fn new(op: Op) -> Self {
        Request {
            v: PROTOCOL_VERSION,
            op,
        }
    }
}

/// Why a request line was refused before any operation ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestParseError {
    /// Not JSON, not an object, or an operation with missing/unknown/ill-typed fields.
    Malformed(String),
    /// `v` missing or not a version this side speaks.
    Version(String),
}

impl RequestParseError {
    pub fn message(&self) -> &str {
        match self {
            RequestParseError::Malformed(m) | RequestParseError::Version(m) => m,
        }
    }
}

/// Parses one request line: the version is checked first, so that a client of another
/// protocol version is told so rather than that its fields are wrong.
pub fn parse_request(line: &str) -> Result<Request, RequestParseError> {
    let mut value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| RequestParseError::Malformed(format!("request is not valid JSON: {e}")))?;
    let obj = value
        .as_object_mut()
        .ok_or_else(|| RequestParseError::Malformed("request must be a JSON object".to_string()))?;
    let v = match obj.remove("v") {
        None => {
            return Err(RequestParseError::Version(format!(
                "request has no protocol version \"v\"; this rekindle-restored speaks v{PROTOCOL_VERSION}"
            )))
        }
        Some(v) => v,
    };
    match v.as_u64() {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        _ => {
            return Err(RequestParseError::Version(format!(
            "unsupported protocol version {v}; this rekindle-restored speaks v{PROTOCOL_VERSION} \
                 (upgrade the client or the daemon so that they match)"
        )))
        }
    }
    let op: Op =
        serde_json::from_value(value).map_err(|e| RequestParseError::Malformed(e.to_string()))?;
    Ok(Request {
        v: PROTOCOL_VERSION,
        op,
    })
}

/// The operations. Each is an object with `"op": "<snake_case name>"` and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Store a CRIU image directory (as `runc checkpoint --image-path` writes it).
    /// → [`ImageInfo`].
    StoreImage {
        name: String,
        source_dir: PathBuf,
        #[serde(default)]
        labels: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        spec_digest: Option<String>,
        /// Replace an image of that name (in one rename; a staged copy is staged
        /// anew) instead of refusing with `already_exists`. Refused while restore
        /// leases hold the staged copy.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        replace: bool,
    },
    /// → [`ImageList`] (manifests without their file lists).
    ListImages {},
    /// → [`ImageInfo`] with the full manifest.
    GetImage { name: String },
    /// → [`Deleted`]. Refused while the image is leased by a restore.
    DeleteImage { name: String },
    /// Keep a verified, decompressed copy in memory (tmpfs). → [`Staged`].
    StageImage { name: String },
    /// → [`Unstaged`]. Refused while a restore holds a lease on the staged copy.
    UnstageImage { name: String },
    /// A verified, decompressed image directory for CRIU, held until released.
    /// → [`Prepared`].
    PrepareRestore {
        name: String,
        /// Go ahead although the image was made by another CRIU version or kernel.
        #[serde(default)]
        allow_mismatch: bool,
    },
    /// → [`Released`].
    ReleaseRestore { lease: String },
    /// Write the image as one zstd-compressed tar archive to `dest` (which must not
    /// exist). → [`Exported`].
    ExportImage {
        name: String,
        dest: PathBuf,
        /// zstd level (1–19, default 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zstd_level: Option<i32>,
    },
    /// Validate and store an archive written by `export_image`, under its own name or
    /// `name`. → [`ImageInfo`].
    ImportImage {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// Delete images unused for longer than `max_age_secs`, then least-recently-used
    /// images until the store holds at most `max_bytes` (compressed). Staged or leased
    /// images are never deleted. → [`GcReport`].
    Gc {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_age_secs: Option<u64>,
        /// Report what would be deleted without deleting it.
        #[serde(default)]
        dry_run: bool,
    },
    /// → [`Stats`].
    Stats {},
    /// How a restore went, as the shim saw it: one report per engine tried, so that
    /// every failure on the fast path is counted with its reason (shown by `stats` in
    /// [`Stats::restores`]). Counted and logged only; nothing else changes. → [`Reported`].
    ///
    /// ```text
    /// → {"v":1,"op":"report_restore","image":"hello-fn","engine":"direct","outcome":"failed","reason":"criu: restore failed: ..."}
    /// ← {"ok":{}}
    /// ```
    ReportRestore {
        /// The stored image restored from, when the restore came from this daemon's
        /// store; `None` for containerd's own checkpoints. Must be a valid image name,
        /// but need not exist (it may have been deleted since).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        /// The engine: one of [`RESTORE_ENGINES`] — `direct` (libcriu), `runc`
        /// (`runc restore`) or `cold` (a cold start, the last fallback).
        engine: String,
        /// One of [`RESTORE_OUTCOMES`]: `ok` or `failed`.
        outcome: String,
        /// Why, in a few words (mostly for `failed`). The daemon keeps at most
        /// [`MAX_RESTORE_REASON_BYTES`] of it, control characters turned into spaces
        /// (see [`clip_reason`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// The engines a restore report may name, in fallback order: libcriu in the shim, then
/// `runc restore`, then a cold start.
pub const RESTORE_ENGINES: [&str; 3] = ["direct", "runc", "cold"];

/// The outcomes a restore report may name.
pub const RESTORE_OUTCOMES: [&str; 2] = ["ok", "failed"];

/// Longest restore reason the daemon keeps, in bytes (longer ones are cut at a character
/// boundary).
pub const MAX_RESTORE_REASON_BYTES: usize = 512;

/// A restore reason as the daemon keeps it: control characters (newlines included)
/// turned into spaces, trimmed, cut to at most [`MAX_RESTORE_REASON_BYTES`] bytes at a
/// character boundary; `None` when nothing is left.
pub fn clip_reason(reason: &str) -> Option<String> {
    let cleaned: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    let mut end = cleaned.len().min(MAX_RESTORE_REASON_BYTES);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    let clipped = cleaned[..end].trim_end();
    (!clipped.is_empty()).then(|| clipped.to_string())
}

impl Op {
    /// The operation's wire name, e.g. `prepare_restore`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::StoreImage { .. } => "store_image",
            Op::ListImages {} => "list_images",
            Op::GetImage { .. } => "get_image",
            Op::DeleteImage { .. } => "delete_image",
            Op::StageImage { .. } => "stage_image",
            Op::UnstageImage { .. } => "unstage_image",
            Op::PrepareRestore { .. } => "prepare_restore",
            Op::ReleaseRestore { .. } => "release_restore",
            Op::ExportImage { .. } => "export_image",
            Op::ImportImage { .. } => "import_image",
            Op::Gc { .. } => "gc",
            Op::Stats {} => "stats",
            Op::ReportRestore { .. } => "report_restore",
        }
    }

    /// The image the operation is about, if it names one.
    pub fn image_name(&self) -> Option<&str> {
        match self {
            Op::StoreImage { name, .. }
            | Op::GetImage { name }
            | Op::DeleteImage { name }
            | Op::StageImage { name }
            | Op::UnstageImage { name }
            | Op::PrepareRestore { name, .. }
            | Op::ExportImage { name, .. } => Some(name),
            Op::ImportImage { name, .. } | Op::ReportRestore { image: name, .. } => name.as_deref(),
            _ => None,
        }
    }
}

/// A response: `{"ok": <body>}` or `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response<T> {
    Ok(T),
    Error(ApiError),
}

/// What the daemon reports when an operation fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// Error codes, named after what the caller can do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No such image or lease.
    NotFound,
    /// The request is wrong (bad name, bad path, unknown op or version); do not retry it.
    InvalidArgument,
    /// The request is fine but the state is not (version mismatch, image leased,
    /// staged, ...): change the state, or ask differently.
    FailedPrecondition,
    /// The image already exists.
    AlreadyExists,
    /// Stored data or an archive failed validation: checksums, sizes, paths. The message
    /// names the file. Fall back to another path; do not retry the same image.
    Corrupt,
    /// Anything else (I/O errors, bugs). Retrying may help.
    Internal,
    /// A code from a newer daemon that this client does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::NotFound,
        ErrorCode::InvalidArgument,
        ErrorCode::FailedPrecondition,
        ErrorCode::AlreadyExists,
        ErrorCode::Corrupt,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The format of [`Manifest`] this crate reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// An image's manifest: what the store keeps beside the compressed files
/// (`<store>/<name>/manifest.json`) and what an export archive starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`].
    pub format: u32,
    pub name: String,
    /// When the image was stored, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The CRIU version that wrote the image (the node's CRIU when it was stored), e.g.
    /// `4.2.1`; `None` when it could not be told.
    pub criu_version: Option<String>,
    /// `uname -r` of the node that stored it.
    pub kernel_release: String,
    /// Digest of the container's OCI spec, e.g. `sha256:…`, when the storer gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub file_count: u32,
    /// Sum of the original sizes.
    pub total_size: u64,
    /// Sum of the compressed sizes (what the image takes on disk).
    pub total_compressed_size: u64,
    /// Every file of the CRIU image directory. Left out by `list_images`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
}

/// One file of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the CRIU image directory, e.g. `pages-1.img`.
    pub path: String,
    /// Original size in bytes.
    pub size: u64,
    /// Size of the stored LZ4 frame (`<path>.lz4`).
    pub compressed_size: u64,
    /// SHA-256 of the original bytes, lowercase hex.
    pub sha256: String,
    /// SHA-256 of the stored LZ4 frame, lowercase hex. A restore checks the frame it
    /// decompresses against it — a quarter of the bytes to hash for a CRIU image, and the
    /// same bytes always decompress to the same content — while `sha256` is checked when
    /// the image is stored or imported. Images stored before it have none: their restores
    /// hash the decompressed bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_sha256: Option<String>,
}

/// An image as the daemon sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub manifest: Manifest,
    /// A decompressed copy is staged in memory.
    pub staged: bool,
    /// Restores holding the image (`prepare_restore` without `release_restore`).
    pub leases: u32,
    /// Last stored, staged or prepared for a restore, seconds since the Unix epoch.
    pub last_used_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub name: String,
    /// Bytes freed on disk (compressed), plus the staged copy's if there was one.
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub name: String,
    /// The decompressed image directory (on tmpfs).
    pub dir: PathBuf,
    /// Decompressed bytes held in memory.
    pub bytes: u64,
    /// It was staged already; nothing was done.
    pub already_staged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unstaged {
    pub name: String,
    pub was_staged: bool,
    pub freed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepared {
    /// A verified, decompressed CRIU image directory. Read it only: when `staged`, it is
    /// the staged copy that other restores share.
    pub image_dir: PathBuf,
    /// `image_dir` is the staged copy (no decompression was needed).
    pub staged: bool,
    /// Pass to `release_restore` when CRIU is done with `image_dir`.
    pub lease: String,
    /// Set when `allow_mismatch` let a CRIU/kernel mismatch through: what differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub lease: String,
    pub name: String,
    /// A lease directory of its own was deleted (not the staged copy).
    pub removed_dir: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub name: String,
    pub path: PathBuf,
    /// Size of the archive.
    pub bytes: u64,
    pub file_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub deleted: Vec<GcDeleted>,
    pub freed_bytes: u64,
    /// Images left, and their compressed bytes.
    pub kept: u32,
    pub kept_bytes: u64,
    /// Images that the policy selected but that were kept, and why.
    pub skipped: Vec<GcSkipped>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDeleted {
    pub name: String,
    pub bytes: u64,
    /// `age` or `size`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcSkipped {
    pub name: String,
    /// `staged` or `leased`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The daemon's version.
    pub version: String,
    pub protocol: u32,
    pub uptime_secs: u64,
    /// The running CRIU's version, if it could be told.
    pub criu_version: Option<String>,
    pub kernel_release: String,
    pub images: u32,
    pub store_bytes: u64,
    pub staged_images: u32,
    pub staged_bytes: u64,
    pub leases: u32,
    /// Requests served, by op (including failed ones).
    pub requests: BTreeMap<String, u64>,
    /// Failed requests by reason (error code).
    pub failures: BTreeMap<String, u64>,
    /// Failed requests by op, then by reason.
    pub failures_by_op: BTreeMap<String, BTreeMap<String, u64>>,
    /// Restore outcomes the shim reported (`report_restore`) since the daemon started,
    /// one entry per (engine, outcome) reported at least once, in the order of
    /// [`RESTORE_ENGINES`] then [`RESTORE_OUTCOMES`]. Empty from a daemon that predates
    /// `report_restore`.
    #[serde(default)]
    pub restores: Vec<RestoreCount>,
}

/// How many restores an engine reported with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreCount {
    /// `direct`, `runc` or `cold`.
    pub engine: String,
    /// `ok` or `failed`.
    pub outcome: String,
    pub count: u64,
    /// The reason of the latest `failed` report that gave one (always `None` for `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// When the latest report of this engine and outcome came, seconds since the Unix
    /// epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_unix: Option<u64>,
}

/// The answer to `report_restore`: counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reported {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_flat_objects_with_version_and_op() {
        let req = Request::new(Op::PrepareRestore {
            name: "fn-1".into(),
            allow_mismatch: false,
        });
        let line = serde_json::to_string(&req).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"op":"prepare_restore","name":"fn-1","allow_mismatch":false}"#
        );
        assert_eq!(parse_request(&line).unwrap(), req);
        let stats = serde_json::to_string(&Request::new(Op::Stats {})).unwrap();
        assert_eq!(stats, r#"{"v":1,"op":"stats"}"#);
        assert_eq!(parse_request(&stats).unwrap().op, Op::Stats {});
    }

    #[test]
    fn optional_fields_default() {
        let r =
            parse_request(r#"{"v":1,"op":"store_image","name":"a","source_dir":"/x"}"#).unwrap();
        assert_eq!(
            r.op,
            Op::StoreImage {
                name: "a".into(),
                source_dir: "/x".into(),
                labels: BTreeMap::new(),
                spec_digest: None,
                replace: false
            }
        );
        let r = parse_request(r#"{"v":1,"op":"gc"}"#).unwrap();
        assert_eq!(
            r.op,
            Op::Gc {
                max_bytes: None,
                max_age_secs: None,
                dry_run: false
            }
        );
    }

    #[test]
    fn unknown_versions_are_refused_by_name() {
        let e = parse_request(r#"{"v":2,"op":"stats"}"#).unwrap_err();
        assert!(matches!(e, RequestParseError::Version(_)));
        assert!(
            e.message().contains("unsupported protocol version 2"),
            "{e:?}"
        );
        assert!(e.message().contains("speaks v1"), "{e:?}");
        let e = parse_request(r#"{"op":"stats"}"#).unwrap_err();
        assert!(e.message().contains("no protocol version"), "{e:?}");
        let e = parse_request(r#"{"v":"1","op":"stats"}"#).unwrap_err();
        assert!(matches!(e, RequestParseError::Version(_)));
    }

    #[test]
    fn unknown_ops_and_fields_are_malformed() {
        for line in [
            r#"{"v":1,"op":"launch_missiles"}"#,
            r#"{"v":1,"op":"get_image"}"#,
            r#"{"v":1,"op":"get_image","name":"a","nmae":"b"}"#,
            r#"{"v":1}"#,
            r#"[1]"#,
            r#"not json"#,
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(
                matches!(e, RequestParseError::Malformed(_)),
                "{line}: {e:?}"
            );
        }
    }

    #[test]
    fn responses_are_ok_or_error() {
        let ok: Response<Deleted> = Response::Ok(Deleted {
            name: "a".into(),
            freed_bytes: 3,
        });
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":{"name":"a","freed_bytes":3}}"#
        );
        let err: Response<Deleted> = Response::Error(ApiError::new(ErrorCode::Corrupt, "x"));
        let line = serde_json::to_string(&err).unwrap();
        assert_eq!(line, r#"{"error":{"code":"corrupt","message":"x"}}"#);
        let back: Response<Deleted> = serde_json::from_str(&line).unwrap();
        assert_eq!(back, err);
        let newer: Response<Deleted> =
            serde_json::from_str(r#"{"error":{"code":"quota_exceeded","message":"m"}}"#).unwrap();
        assert_eq!(
            newer,
            Response::Error(ApiError::new(ErrorCode::Unknown, "m"))
        );
    }

    #[test]
    fn every_op_names_itself_as_on_the_wire() {
        let ops = [
            Op::ListImages {},
            Op::Stats {},
            Op::GetImage { name: "a".into() },
            Op::ReleaseRestore { lease: "l".into() },
            Op::ImportImage {
                path: "/a".into(),
                name: None,
            },
            Op::ReportRestore {
                image: None,
                engine: "runc".into(),
                outcome: "ok".into(),
                reason: None,
            },
        ];
        for op in ops {
            let v = serde_json::to_value(Request::new(op.clone())).unwrap();
            assert_eq!(v["op"], op.name());
        }
    }

    #[test]
    fn restore_reports_are_flat_and_optional_fields_may_be_left_out() {
        let op = Op::ReportRestore {
            image: Some("hello-fn".into()),
            engine: "direct".into(),
            outcome: "failed".into(),
            reason: Some("criu: restore failed".into()),
        };
        let line = serde_json::to_string(&Request::new(op.clone())).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"op":"report_restore","image":"hello-fn","engine":"direct","outcome":"failed","reason":"criu: restore failed"}"#
        );
        assert_eq!(parse_request(&line).unwrap().op, op);
        let r = parse_request(r#"{"v":1,"op":"report_restore","engine":"runc","outcome":"ok"}"#)
            .unwrap();
        assert_eq!(
            r.op,
            Op::ReportRestore {
                image: None,
                engine: "runc".into(),
                outcome: "ok".into(),
                reason: None
            }
        );
        assert_eq!(r.op.image_name(), None);
        assert_eq!(op.image_name(), Some("hello-fn"));
        // Engine and outcome are required; unknown fields are refused as for every op.
        for line in [
            r#"{"v":1,"op":"report_restore","outcome":"ok"}"#,
            r#"{"v":1,"op":"report_restore","engine":"runc"}"#,
            r#"{"v":1,"op":"report_restore","engine":"runc","outcome":"ok","why":"x"}"#,
        ] {
            assert!(
                matches!(parse_request(line), Err(RequestParseError::Malformed(_))),
                "{line}"
            );
        }
        assert_eq!(serde_json::to_string(&Reported {}).unwrap(), "{}");
    }

    #[test]
    fn stats_from_an_older_daemon_have_no_restores() {
        let old = r#"{"version":"0.1.0","protocol":1,"uptime_secs":5,"criu_version":null,
            "kernel_release":"6.18.0","images":0,"store_bytes":0,"staged_images":0,
            "staged_bytes":0,"leases":0,"requests":{},"failures":{},"failures_by_op":{}}"#;
        let st: Stats = serde_json::from_str(old).unwrap();
        assert!(st.restores.is_empty());
    }

    #[test]
    fn reasons_are_clipped_to_one_bounded_line() {
        assert_eq!(clip_reason("  a\nb\tc \n"), Some("a b c".into()));
        assert_eq!(clip_reason(" \n "), None);
        assert_eq!(clip_reason("\u{1}x\u{7f}"), Some("x".into()));
        let long = "é".repeat(MAX_RESTORE_REASON_BYTES);
        let c = clip_reason(&long).unwrap();
        assert!(c.len() <= MAX_RESTORE_REASON_BYTES);
        assert_eq!(c.len(), MAX_RESTORE_REASON_BYTES);
        let odd = format!("x{long}");
        let c = clip_reason(&odd).unwrap();
        assert_eq!(c.len(), MAX_RESTORE_REASON_BYTES - 1);
        assert!(c.starts_with("xé"));
    }
}
