//! The agent's admin API: what an operator asks of the node (`rekindle status`,
//! `rekindle functions ls|add|rm`, `rekindle checkpoint`, `rekindle invoke`).
//!
//! Protocol: HTTP/1.1 with JSON bodies on a unix socket (`admin_socket`, default
//! /run/rekindle/admin.sock), mode 0600, and only peers of uid 0 are served (checked with
//! SO_PEERCRED on every connection, as rekindle-restored does). Not an extension of the
//! gRPC scheduler hook: the hook is a read-only API for schedulers that can also be
//! served on TCP (`hook_addr`), and these operations (register, stop, checkpoint,
//! invoke) must never be reachable from the network; and HTTP/JSON is what an operator
//! can drive with `curl --unix-socket` without a .proto, with the same hyper as the
//! gateway and /metrics.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | [`NodeStatus`]: pools per function and tier, instances, images, memory budget and use, recent start latencies by tier |
//! | `GET /v1/functions` | `[`[`FunctionStatus`]`]` |
//! | `POST /v1/functions` (a `[[function]]` table as JSON) | 201, [`FunctionStatus`] |
//! | `DELETE /v1/functions/<name>` | [`Removed`] |
//! | `POST /v1/functions/<name>/checkpoint` ([`CheckpointRequest`]) | [`CheckpointDone`] |
//! | `POST /v1/functions/<name>/invoke` ([`InvokeRequest`]) | [`InvokeDone`] |
//!
//! Errors: 400 bad request, 403 not root, 404 no such function or route, 409 conflict
//! (registered already, busy), 501 what the agent cannot do yet, 502 the driver or the
//! function failed, 503 shutting down or no room; body `{"error":{"code","message"}}`
//! ([`ErrorBody`]).
//!
//! Functions added here live until the agent stops: they are not written anywhere (add
//! them to agent.toml to keep them); the answer says so (`persisted: false`).

pub mod client;
pub mod persist;
pub mod render;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{Config, FunctionConfig};
use crate::driver::NetMode;

pub use client::{Client, ClientError};
pub use server::{bind, serve, Access, AdminState};

/// Largest request body the API reads (a function's table, an invoke's parameters).
/// (An invoke's body is bounded by the function's own max_body_bytes as well.)
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Where a function's checkpoint image is, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageWhere {
    None,
    Disk,
    Staged,
}

impl From<crate::pool::ImageState> for ImageWhere {
    fn from(s: crate::pool::ImageState) -> Self {
        use crate::pool::ImageState;
        match s {
            ImageState::None => ImageWhere::None,
            ImageState::Disk => ImageWhere::Disk,
            ImageState::Staged => ImageWhere::Staged,
        }
    }
}

impl ImageWhere {
    pub fn name(self) -> &'static str {
        match self {
            ImageWhere::None => "none",
            ImageWhere::Disk => "disk",
            ImageWhere::Staged => "staged",
        }
    }
}

/// A function's configuration as the API shows it (the `[[function]]` keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpecView {
    pub image_ref: String,
    pub port: u16,
    pub env: Vec<String>,
    pub memory_mb: u64,
    pub cpu_shares: Option<u64>,
    pub store_as: String,
    pub netns: NetMode,
    pub ready_path: String,
    pub min_instances: u32,
    pub max_instances: u32,
    pub keep_alive_min_secs: f64,
    pub keep_alive_max_secs: f64,
    pub invoke_timeout_secs: f64,
    pub invoke_path: String,
    pub max_body_bytes: usize,
    pub max_response_bytes: usize,
    pub max_queue: u32,
    pub max_queue_wait_secs: f64,
}

impl From<&FunctionConfig> for FunctionSpecView {
    fn from(f: &FunctionConfig) -> Self {
        FunctionSpecView {
            image_ref: f.image_ref.clone(),
            port: f.port,
            env: f.env.clone(),
            memory_mb: f.memory_mb,
            cpu_shares: f.cpu_shares,
            store_as: f.store_as().to_string(),
            netns: f.netns,
            ready_path: f.ready_path.clone(),
            min_instances: f.min_instances,
            max_instances: f.max_instances,
            keep_alive_min_secs: f.keep_alive_min_secs,
            keep_alive_max_secs: f.keep_alive_max_secs,
            invoke_timeout_secs: f.invoke_timeout_secs,
            invoke_path: f.invoke_path.clone(),
            max_body_bytes: f.max_body_bytes,
            max_response_bytes: f.max_response_bytes,
            max_queue: f.max_queue,
            max_queue_wait_secs: f.max_queue_wait_secs,
        }
    }
}

/// Instances per tier and the plan's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Tiers {
    pub hot: u32,
    pub warm: u32,
    /// 1 when the image is staged (decompressed in memory), else 0.
    pub staged: u32,
}

/// One registered function: its configuration and its pool now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionStatus {
    pub name: String,
    /// Where it came from: `config` (agent.toml) or `api` (added while running).
    pub source: String,
    /// Whether it survives a restart of the agent.
    pub persisted: bool,
    pub spec: FunctionSpecView,
    /// Loaded instances (busy included) per tier.
    pub instances: Tiers,
    /// Serving a request or under an action.
    pub busy: u32,
    pub starting: u32,
    pub image: ImageWhere,
    /// What the policy wants now.
    pub targets: Tiers,
    /// What the memory budget counts for it now, bytes.
    pub memory_bytes: u64,
}

/// One loaded instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub function: String,
    pub id: String,
    /// `hot` (running) or `warm` (frozen).
    pub tier: String,
    pub busy: bool,
    pub idle_secs: f64,
    /// The image it was restored from; absent: cold-started.
    pub restored_from: Option<String>,
}

/// A function's image in rekindle-restored's store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageStatus {
    pub name: String,
    pub function: String,
    pub staged: bool,
    /// Decompressed size, bytes.
    pub size_bytes: u64,
    /// On disk (LZ4), bytes.
    pub compressed_bytes: u64,
    pub created_unix: u64,
}

/// Recent starts served to requests, one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierLatency {
    /// `hot`, `warm`, `restore_staged`, `restore_disk` or `cold`.
    pub tier: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub last_ms: f64,
}

/// The node's memory budget and what the pools hold against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// `None`: no budget.
    pub budget_bytes: Option<u64>,
    pub used_bytes: u64,
}

/// Whether rekindle-restored answered, and its images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoredStatus {
    pub socket: String,
    pub reachable: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Every image in the store, and those staged.
    pub images_total: u64,
    pub images_staged: u64,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub version: String,
    pub uptime_secs: f64,
    pub policy: String,
    pub memory: Memory,
    pub functions: Vec<FunctionStatus>,
    pub instances: Vec<InstanceStatus>,
    /// The registered functions' images in the store.
    pub images: Vec<ImageStatus>,
    pub restored: RestoredStatus,
    /// Whether checkpoints and restores work on this node, and why not.
    pub fast_path: crate::fast_path::FastPath,
    /// Over the last starts served to requests (at most
    /// [`crate::pool::manager::RECENT_STARTS`]), by tier, fastest tier first.
    pub start_latencies: Vec<TierLatency>,
}

/// `DELETE /v1/functions/<name>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Removed {
    pub name: String,
    pub instances_stopped: usize,
}

/// `POST /v1/functions/<name>/checkpoint`'s body (may be empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointRequest {
    /// Which instance; unset: an idle running one, else an idle frozen one.
    pub instance: Option<String>,
    /// Leave it in the pool afterwards; else it is stopped.
    pub keep_running: bool,
    /// Replace the function's stored image; else a checkpoint of a function that
    /// has one is refused (409), before anything is dumped.
    pub replace: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointDone {
    pub function: String,
    pub instance: String,
    pub image: String,
    pub kept_running: bool,
    pub secs: f64,
}

/// `POST /v1/functions/<name>/invoke`'s body (may be empty). As the gateway: without
/// `path`, `POST <invoke_path>` with `body` (its `POST /invoke/<function>`); with `path`,
/// `method` (default GET, POST with a body) on that path (its passthrough).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvokeRequest {
    /// Path and query on the instance; unset: the function's invoke_path.
    pub path: Option<String>,
    /// HTTP method with `path`.
    pub method: Option<String>,
    /// The request body (at most the function's max_body_bytes).
    pub body: Option<String>,
}

impl InvokeRequest {
    /// The method and path to send, given the function's invoke_path.
    pub fn target(&self, invoke_path: &str) -> Result<(hyper::Method, String), ApiError> {
        let has_body = self.body.as_deref().is_some_and(|b| !b.is_empty());
        let Some(path) = &self.path else {
            if self.method.as_deref().is_some_and(|m| m != "POST") {
                return Err(ApiError::BadRequest(
                    "a method other than POST needs a path (the function's handler takes POST)"
                        .into(),
                ));
            }
            return Ok((hyper::Method::POST, invoke_path.to_string()));
        };
        if !path.starts_with('/') {
            return Err(ApiError::BadRequest(format!(
                "path {path:?} must start with /"
            )));
        }
        let method = match self.method.as_deref() {
            Some(m) => hyper::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ApiError::BadRequest(format!("{m:?} is not an HTTP method")))?,
            None if has_body => hyper::Method::POST,
            None => hyper::Method::GET,
        };
        Ok((method, path.clone()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvokeDone {
    pub function: String,
    /// The function's HTTP status.
    pub status: u16,
    /// How the request was served: `hot`, `warm`, `restore_staged`, `restore_disk`, `cold`.
    pub tier: String,
    pub instance: String,
    /// The whole request, arrival to answer, seconds.
    pub secs: f64,
    /// The start made for this request (restore or cold start), if one was, seconds.
    pub start_secs: Option<f64>,
    /// How long it waited in the function's queue, if it did, seconds.
    pub queued_secs: Option<f64>,
    /// The function's `content-type`, if it said.
    pub content_type: Option<String>,
    /// The function's answer (as text; bytes that are not UTF-8 are replaced).
    pub body: String,
}

/// Every error's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `bad_request`, `forbidden`, `not_found`, `conflict`, `not_implemented`, `failed`,
    /// `unavailable`, `internal`.
    pub code: String,
    pub message: String,
}

/// Why the API refused a request; each maps to an HTTP status and an error code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::Conflict(_) => 409,
            ApiError::NotImplemented(_) => 501,
            ApiError::Failed(_) => 502,
            ApiError::Unavailable(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Failed(_) => "failed",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().into(),
                message: self.to_string(),
            },
        }
    }
}

impl From<crate::pool::manager::ManageError> for ApiError {
    fn from(e: crate::pool::manager::ManageError) -> Self {
        use crate::pool::manager::ManageError as M;
        let m = e.to_string();
        match e {
            M::UnknownFunction(_) | M::NoSuchInstance { .. } => ApiError::NotFound(m),
            M::Exists(_) | M::ImageTaken { .. } | M::NoInstance(_) | M::ImageExists { .. } => {
                ApiError::Conflict(m)
            }
            M::Busy { .. } | M::ImageBusy(_) => ApiError::Conflict(m),
            M::Checkpoint { .. } => ApiError::Failed(m),
            M::ShuttingDown | M::NoFastPath(_) => ApiError::Unavailable(m),
        }
    }
}

impl From<crate::pool::manager::InvokeError> for ApiError {
    fn from(e: crate::pool::manager::InvokeError) -> Self {
        use crate::pool::manager::InvokeError as I;
        let m = e.to_string();
        match e {
            I::UnknownFunction(_) => ApiError::NotFound(m),
            I::Failed { .. } => ApiError::Failed(m),
            // Not served: no room in the budget, the pool's queue full or waited out,
            // shutting down. Worth trying again later (the gateway's 503).
            _ => ApiError::Unavailable(m),
        }
    }
}

/// Parses `POST /v1/functions`' body: one `[[function]]` table as JSON, with the same
/// keys, defaults and unknown-key refusal as the configuration file.
pub fn parse_function(body: &[u8]) -> Result<FunctionConfig, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("not a function table: {e}")))
}

/// Checks `new` as the configuration loader would check it next to the functions
/// already registered (name, image_ref, port, memory_mb, ready_path, instance and
/// keep-alive bounds, netns, a name or store_as used twice, the memory budget): the
/// same [`Config::validate`], so the file and the API accept the same functions.
pub fn validate_function(
    new: &FunctionConfig,
    registered: &[FunctionConfig],
    memory_budget_mb: Option<u64>,
) -> Result<(), ApiError> {
    if registered.iter().any(|f| f.name == new.name) {
        return Err(ApiError::Conflict(format!(
            "a function {:?} is registered already: remove it first (rekindle functions rm {})",
            new.name, new.name
        )));
    }
    let mut functions = registered.to_vec();
    functions.push(new.clone());
    let check = Config {
        memory_budget_mb,
        functions,
        ..Config::default()
    };
    check.validate().map_err(|e| match e {
        crate::config::Error::Invalid(m) => ApiError::BadRequest(m),
        other => ApiError::BadRequest(other.to_string()),
    })
}

/// Latency percentiles per tier of `starts` (tier, seconds; oldest first), fastest tier
/// first, tiers without a start left out.
pub fn tier_latencies(starts: &[(crate::metrics::StartTier, f64)]) -> Vec<TierLatency> {
    let mut by: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for (tier, secs) in starts {
        let k = crate::metrics::StartTier::ALL
            .iter()
            .position(|t| t == tier)
            .unwrap_or(0);
        by.entry(k).or_default().push(secs * 1000.0);
    }
    by.into_iter()
        .map(|(k, ms)| {
            let last = *ms.last().unwrap_or(&0.0);
            let mut sorted = ms.clone();
            sorted.sort_by(f64::total_cmp);
            // Nearest rank.
            let pct = |p: f64| {
                let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                sorted[i - 1]
            };
            TierLatency {
                tier: crate::metrics::StartTier::ALL[k].name().to_string(),
                count: sorted.len() as u64,
                p50_ms: pct(0.50),
                p99_ms: pct(0.99),
                max_ms: *sorted.last().unwrap_or(&0.0),
                last_ms: last,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::StartTier;

    fn hello() -> FunctionConfig {
        FunctionConfig::new("hello", "docker.io/rekindle/python-fn:latest", 8080)
    }

    #[test]
    fn a_function_table_parses_with_the_files_defaults() {
        let f = parse_function(
            br#"{"name":"hello","image_ref":"docker.io/rekindle/python-fn:latest","port":8080,"env":["STATE_MB=8"]}"#,
        )
        .unwrap();
        assert_eq!(f.memory_mb, 256);
        assert_eq!(f.max_instances, 10);
        assert_eq!(f.ready_path, "/healthz");
        assert_eq!(f.env, ["STATE_MB=8"]);
        assert_eq!(f.store_as(), "hello");
        validate_function(&f, &[], None).unwrap();
    }

    #[test]
    fn bad_function_tables_are_refused_with_the_reason() {
        let e = parse_function(br#"{"name":"a","image_ref":"i","port":1,"prot":2}"#).unwrap_err();
        assert!(
            matches!(&e, ApiError::BadRequest(m) if m.contains("prot")),
            "{e}"
        );
        let e = parse_function(br#"{"name":"a","port":1}"#).unwrap_err();
        assert!(e.to_string().contains("image_ref"), "{e}");
        let e = parse_function(b"port = 1").unwrap_err();
        assert_eq!(e.status(), 400);

        let check = |f: FunctionConfig, want: &str| {
            let e = validate_function(&f, &[], Some(1024)).unwrap_err();
            assert_eq!(e.status(), 400, "{e}");
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        };
        let mut f = hello();
        f.name = "a b".into();
        check(f, "[A-Za-z0-9._-]");
        let mut f = hello();
        f.port = 0;
        check(f, "port is 0");
        let mut f = hello();
        f.memory_mb = 2048;
        check(f, "exceeds memory_budget_mb 1024");
        let mut f = hello();
        f.min_instances = 3;
        f.max_instances = 2;
        check(f, "min_instances (3)");
        let mut f = hello();
        f.netns = NetMode::Host;
        check(f, "one instance at a time");
        let mut f = hello();
        f.ready_path = "healthz".into();
        check(f, "must start with /");
        let mut f = hello();
        f.image_ref = String::new();
        check(f, "image_ref is empty");
    }

    #[test]
    fn names_and_images_are_one_functions_each() {
        let e = validate_function(&hello(), &[hello()], None).unwrap_err();
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("rekindle functions rm hello"), "{e}");
        let mut other = FunctionConfig::new("other", "img", 1);
        other.store_as = Some("hello".into());
        let e = validate_function(&other, &[hello()], None).unwrap_err();
        assert!(e.to_string().contains("store_as \"hello\""), "{e}");
    }

    #[test]
    fn invoke_targets_are_the_gateways() {
        let req = |path: Option<&str>, method: Option<&str>, body: Option<&str>| InvokeRequest {
            path: path.map(Into::into),
            method: method.map(Into::into),
            body: body.map(Into::into),
        };
        let t = |r: InvokeRequest| r.target("/invoke").map(|(m, p)| (m.to_string(), p));
        assert_eq!(
            t(req(None, None, None)),
            Ok(("POST".into(), "/invoke".into()))
        );
        assert_eq!(
            t(req(None, None, Some("{}"))),
            Ok(("POST".into(), "/invoke".into()))
        );
        assert_eq!(
            t(req(Some("/?x=1"), None, None)),
            Ok(("GET".into(), "/?x=1".into()))
        );
        assert_eq!(
            t(req(Some("/a"), None, Some("b"))),
            Ok(("POST".into(), "/a".into()))
        );
        assert_eq!(
            t(req(Some("/a"), Some("put"), None)),
            Ok(("PUT".into(), "/a".into()))
        );
        assert!(t(req(Some("a"), None, None)).is_err());
        assert!(t(req(None, Some("GET"), None)).is_err());
        assert!(t(req(Some("/"), Some("BAD METHOD"), None)).is_err());
    }

    #[test]
    fn errors_map_to_statuses_and_codes() {
        use crate::pool::manager::{InvokeError, ManageError};
        let e: ApiError = ManageError::UnknownFunction("f".into()).into();
        assert_eq!((e.status(), e.code()), (404, "not_found"));
        let e: ApiError = ManageError::NoInstance("f".into()).into();
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("invoke it first"), "{e}");
        let e: ApiError = InvokeError::Budget("f".into()).into();
        assert_eq!((e.status(), e.code()), (503, "unavailable"));
        let body = serde_json::to_value(ApiError::Conflict("x".into()).body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "conflict", "message": "x"}})
        );
    }

    #[test]
    fn start_latencies_are_summarised_per_tier_fastest_first() {
        let starts = [
            (StartTier::Cold, 1.5),
            (StartTier::Hot, 0.001),
            (StartTier::Hot, 0.003),
            (StartTier::Hot, 0.002),
            (StartTier::RestoreDisk, 0.2),
        ];
        let t = tier_latencies(&starts);
        let tiers: Vec<&str> = t.iter().map(|l| l.tier.as_str()).collect();
        assert_eq!(tiers, ["hot", "restore_disk", "cold"]);
        assert_eq!(t[0].count, 3);
        assert_eq!(t[0].p50_ms, 2.0);
        assert_eq!(t[0].max_ms, 3.0);
        assert_eq!(t[0].last_ms, 2.0);
        assert_eq!(t[2].p99_ms, 1500.0);
        assert!(tier_latencies(&[]).is_empty());
    }
}
