//! The instance driver: the I/O the pool manager does on a function's instances, in the
//! words of the tiers (issue #4).
//!
//! - [`InstanceDriver::cold_start`]: a container from the function's image, started and
//!   answering on its port (the bottom tier: a full cold start).
//! - [`InstanceDriver::checkpoint`]: CRIU checkpoint of a running instance into
//!   rekindle-restored's store (the instance keeps running), so the next start is a
//!   restore.
//! - [`InstanceDriver::stage`] / [`InstanceDriver::unstage`]: the stored image kept
//!   decompressed in memory (staged tier) or only on disk (cold tier).
//! - [`InstanceDriver::restore`]: an instance restored from a stored image, answering.
//! - [`InstanceDriver::freeze`] / [`InstanceDriver::thaw`]: warm ⇄ hot (cgroup freezer).
//! - [`InstanceDriver::stop`]: the end of an instance, leaving nothing behind.
//! - [`InstanceDriver::invoke`]: one HTTP GET to an instance, bounded.
//! - [`InstanceDriver::forward`]: one HTTP request of the invoke gateway's (any method,
//!   headers, body) to an instance, its whole answer back, bounded in time and size.
//!
//! [`ContainerdDriver`] implements it with containerd (runtime
//! `io.containerd.rekindle.v2`) and rekindle-restored. [`FunctionSpec`] and [`Instance`]
//! are plain data (serde), for the pool manager and the configuration.

pub mod containerd;
mod netns;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::containerd::{ContainerdConfig, ContainerdDriver, REKINDLE_RUNTIME};

/// The shim's annotations (shim/src/annotations.rs).
pub const IMAGE_ANNOTATION: &str = "io.rekindle.image";
pub const STORE_AS_ANNOTATION: &str = "io.rekindle.checkpoint.store-as";
/// Set on every instance: its checkpoints replace the stored image. The agent
/// decides whether one may ([`InstanceDriver::checkpoint`]'s `replace`).
pub const REPLACE_ANNOTATION: &str = "io.rekindle.checkpoint.replace";
/// The label the driver puts on every container it makes: the function's name.
pub const FUNCTION_LABEL: &str = "io.rekindle.agent/function";
/// The label naming the agent that made the container (its `agent_id`): an agent
/// restarted adopts or removes only its own instances, never another agent's sharing
/// the containerd namespace.
pub const OWNER_LABEL: &str = "io.rekindle.agent/owner";

/// Which network namespace an instance runs in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// A network namespace of its own (loopback only), made by the driver before the
    /// container and named in its spec by path, so CRIU treats it as external and a
    /// restore lands in the new instance's namespace: every instance of a function can
    /// listen on the same port.
    #[default]
    Own,
    /// The host's network namespace: the instance listens on the host's `port`, so only
    /// one instance of the function can run at a time (restores included).
    Host,
}

fn default_ready_path() -> String {
    "/healthz".to_string()
}

/// A function, as the driver needs it to make instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// The function's name (also the prefix of its instances' container ids).
    pub name: String,
    /// The containerd image (already pulled/imported and unpacked for the driver's
    /// snapshotter), e.g. `docker.io/rekindle/python-fn:latest`.
    pub image_ref: String,
    /// Added to the image's environment (`KEY=value`), after `PORT=<port>`.
    #[serde(default)]
    pub env: Vec<String>,
    /// The port the function listens on (given to it as `$PORT`).
    pub port: u16,
    /// The container's memory limit (cgroup), bytes; 0: none.
    #[serde(default)]
    pub memory_limit_bytes: u64,
    /// The container's CPU shares (cgroup v1 `cpu.shares`; 1024 = one CPU's worth).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// The name the agent stores this function's checkpoints under in rekindle-restored.
    /// Every instance's container carries it (`io.rekindle.checkpoint.store-as`: the
    /// annotation must be on the spec at Create), so any instance can be checkpointed.
    pub store_as: String,
    #[serde(default)]
    pub netns: NetMode,
    /// `GET` on this path answering 200 means the instance is ready (it should count
    /// nothing); default `/healthz`.
    #[serde(default = "default_ready_path")]
    pub ready_path: String,
}

/// One instance of a function, whatever its tier (running or frozen).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The container id (and task id) in containerd.
    pub id: String,
    /// The function's name.
    pub function: String,
    /// The init's pid (host view).
    pub pid: u32,
    /// The port it answers on (inside its network namespace, if it has one).
    pub port: u16,
    /// Its own network namespace (a bind mount the driver removes at stop), if any.
    pub netns: Option<PathBuf>,
    /// The stored image it was restored from; `None` for a cold start.
    pub restored_from: Option<String>,
    /// The image name its checkpoints are stored under (its `store-as` annotation).
    pub store_as: String,
}

/// An instance's task state, as containerd reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Created,
    Running,
    Paused,
    Pausing,
    Stopped,
    Unknown,
}

/// An instance found in containerd by [`InstanceDriver::discover`]: made by an earlier
/// run of this agent (same owner label), with its task's state (`None`: no task).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub instance: Instance,
    pub state: Option<TaskState>,
}

/// What [`InstanceDriver::stage`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    /// Decompressed bytes held in memory for the image.
    pub bytes: u64,
    pub already_staged: bool,
}

/// An HTTP answer of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// A request the invoke gateway forwards to an instance (hop-by-hop headers already
/// removed, the body whole: the gateway bounds it).
#[derive(Clone, Debug)]
pub struct ForwardRequest {
    pub method: hyper::Method,
    /// Path and query, as the instance is to see them (`/invoke?x=1`).
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: hyper::body::Bytes,
}

/// An instance's whole answer to a [`ForwardRequest`].
#[derive(Clone, Debug)]
pub struct ForwardResponse {
    pub status: hyper::StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: hyper::body::Bytes,
}

/// Why [`InstanceDriver::forward`] failed: whether the request may have reached the
/// instance decides whether the gateway may try another one.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection to the instance: nothing of the request reached it.
    #[error("{0}")]
    NotSent(DriverError),
    /// The exchange failed after the connection was made: the instance may have seen
    /// (part of) the request.
    #[error("{0}")]
    Failed(DriverError),
    /// The instance answered, with a body over the limit (it is fine; the answer is not
    /// forwarded).
    #[error("the answer of instance {instance} exceeds {limit} bytes")]
    TooLarge { instance: String, limit: usize },
}

/// The operations of the driver, for errors and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Connect,
    Discover,
    ColdStart,
    Restore,
    Checkpoint,
    Freeze,
    Thaw,
    State,
    Stop,
    Stage,
    Unstage,
    Invoke,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Connect => "connect",
            Op::Discover => "discover",
            Op::ColdStart => "cold start",
            Op::Restore => "restore",
            Op::Checkpoint => "checkpoint",
            Op::Freeze => "freeze",
            Op::Thaw => "thaw",
            Op::State => "state",
            Op::Stop => "stop",
            Op::Stage => "stage",
            Op::Unstage => "unstage",
            Op::Invoke => "invoke",
        })
    }
}

/// A failed driver operation: which operation, on which function, instance and image,
/// and why.
#[derive(Debug, thiserror::Error)]
#[error("{op}{}: {cause}", describe(function, instance.as_deref(), image.as_deref()))]
pub struct DriverError {
    pub op: Op,
    /// The function's name ("" for operations on an image alone: stage, unstage).
    pub function: String,
    pub instance: Option<String>,
    /// The stored image involved (restore, checkpoint, stage, unstage).
    pub image: Option<String>,
    #[source]
    pub cause: Cause,
}

fn describe(function: &str, instance: Option<&str>, image: Option<&str>) -> String {
    let mut s = String::new();
    if !function.is_empty() {
        s.push_str(&format!(" of function {function:?}"));
    }
    if let Some(i) = instance {
        s.push_str(&format!(" (instance {i})"));
    }
    if let Some(i) = image {
        s.push_str(&format!(" (image {i:?})"));
    }
    s
}

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// containerd answered a call with an error.
    #[error("{call}: {code:?}: {message}")]
    Grpc {
        call: &'static str,
        code: containerd_client::tonic::Code,
        message: String,
    },
    /// containerd (or the instance) did not answer in time.
    #[error("{call}: no answer within {after:?}")]
    Timeout { call: &'static str, after: Duration },
    /// The instance started but did not answer its ready path in time.
    #[error(
        "not ready: GET {path} on port {port} did not answer 200 within {after:?} (last: {last})"
    )]
    NotReady {
        path: String,
        port: u16,
        after: Duration,
        last: String,
    },
    /// A local system call failed (network namespace, HTTP, log files).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// rekindle-restored refused or could not be reached.
    #[error(transparent)]
    Restored(#[from] rekindle_restore_api::Error),
    /// containerd's answer or the request made no sense (e.g. an image without layers).
    #[error("{0}")]
    Invalid(String),
    /// A checkpoint would replace a stored image, and replacing was not asked for.
    #[error("image {0} exists already (replace it with rekindle checkpoint --replace)")]
    ImageExists(String),
    /// Several steps of a clean-up failed; the first cause, then how many more.
    #[error("{first} (and {more} more clean-up failures)")]
    Several { first: Box<Cause>, more: usize },
}

impl DriverError {
    /// The gRPC code, when containerd answered with an error.
    pub fn code(&self) -> Option<containerd_client::tonic::Code> {
        match &self.cause {
            Cause::Grpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// containerd said the container or task does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(containerd_client::tonic::Code::NotFound)
    }
}

/// Told about each instance the driver starts, after Tasks.Create made its cgroup and
/// before Tasks.Start runs it: the node collector ([`crate::ebpf::StartWatch`]) watches
/// the cgroup with eBPF there, so the instance's first schedule and its whole start are
/// seen. Called on the driver's task: must not block for long.
pub trait StartHook: Send + Sync {
    /// `cgroups_path`: the instance's cgroup as in its OCI spec (`/<namespace>/<id>`),
    /// relative to each hierarchy's root.
    fn before_start(&self, function: &str, instance: &str, cgroups_path: &str);
}

/// What the pool manager does to instances. Object safe (`Box<dyn InstanceDriver>`).
#[async_trait::async_trait]
pub trait InstanceDriver: Send + Sync {
    /// A new instance from the function's image (a full cold start), answering its ready
    /// path. On failure nothing of it is left.
    async fn cold_start(&self, f: &FunctionSpec) -> Result<Instance, DriverError>;

    /// A new instance restored from the stored image `image` (staged or not), answering
    /// its ready path. On failure nothing of it is left.
    async fn restore(&self, f: &FunctionSpec, image: &str) -> Result<Instance, DriverError>;

    /// Checkpoints a running (or frozen) instance into rekindle-restored's store under
    /// `image`, which must be the instance's `store_as`. The instance keeps running (a
    /// frozen one stays frozen).
    /// Without `replace`, a checkpoint whose image exists already is refused
    /// before anything is dumped ([`Cause::ImageExists`]).
    async fn checkpoint(&self, i: &Instance, image: &str, replace: bool)
        -> Result<(), DriverError>;

    /// Freezes the instance (cgroup freezer): warm.
    async fn freeze(&self, i: &Instance) -> Result<(), DriverError>;

    /// Thaws a frozen instance: hot.
    async fn thaw(&self, i: &Instance) -> Result<(), DriverError>;

    /// The instance's task state.
    async fn state(&self, i: &Instance) -> Result<TaskState, DriverError>;

    /// Ends the instance, frozen or not: every process killed, the task, the container,
    /// its snapshot, its network namespace and its log removed. Steps whose object is
    /// already gone are skipped; the others are all tried even when one fails.
    async fn stop(&self, i: Instance) -> Result<(), DriverError>;

    /// Keeps the stored image decompressed in memory (rekindle-restored).
    async fn stage(&self, image: &str) -> Result<StageOutcome, DriverError>;

    /// Frees the staged copy of the image (it stays on disk).
    async fn unstage(&self, image: &str) -> Result<(), DriverError>;

    /// `GET path` on the instance (inside its network namespace, if it has one); the
    /// whole exchange bounded by `timeout`.
    async fn invoke(
        &self,
        i: &Instance,
        path: &str,
        timeout: Duration,
    ) -> Result<Response, DriverError>;

    /// The gateway's request on the instance (inside its network namespace, if it has
    /// one), HTTP/1.1; its status, headers and body (at most `max_response_bytes`). The
    /// whole exchange bounded by `timeout`.
    async fn forward(
        &self,
        i: &Instance,
        req: ForwardRequest,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<ForwardResponse, ForwardError>;

    /// The instances an earlier run of this agent left in containerd (an agent killed,
    /// or restarted while its instances run), read back from their containers: id,
    /// function, pid, port, network namespace, image, store name, task state. Also
    /// removes what such a run left without a container (a network namespace or a log
    /// made before the container was). A driver without containers finds none.
    async fn discover(&self) -> Result<Vec<Found>, DriverError> {
        Ok(Vec::new())
    }

    /// Calls `hook` before each instance's Tasks.Start from now on (replacing any
    /// earlier one). A driver without tasks to start ignores it.
    fn set_start_hook(&self, _hook: Arc<dyn StartHook>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_spec_defaults_from_toml() {
        let f: FunctionSpec = toml::from_str(
            r#"
            name = "hello"
            image_ref = "docker.io/rekindle/python-fn:latest"
            port = 8080
            store_as = "hello"
            "#,
        )
        .expect("parses");
        assert_eq!(f.netns, NetMode::Own);
        assert_eq!(f.ready_path, "/healthz");
        assert_eq!(f.memory_limit_bytes, 0);
        assert_eq!(f.cpu_shares, None);
        assert!(f.env.is_empty());
        let host: FunctionSpec = toml::from_str(
            r#"
            name = "h"
            image_ref = "i"
            port = 1
            store_as = "h"
            netns = "host"
            "#,
        )
        .expect("parses");
        assert_eq!(host.netns, NetMode::Host);
    }

    #[test]
    fn instance_round_trips_through_json() {
        let i = Instance {
            id: "hello-0123abcd".into(),
            function: "hello".into(),
            pid: 42,
            port: 8080,
            netns: Some("/run/netns/rekindle-hello-0123abcd".into()),
            restored_from: Some("hello".into()),
            store_as: "hello".into(),
        };
        let back: Instance =
            serde_json::from_str(&serde_json::to_string(&i).expect("encodes")).expect("decodes");
        assert_eq!(back, i);
    }

    #[test]
    fn errors_name_operation_function_instance_image_and_cause() {
        let e = DriverError {
            op: Op::Restore,
            function: "hello".into(),
            instance: Some("hello-0123abcd".into()),
            image: Some("hello".into()),
            cause: Cause::Grpc {
                call: "Tasks.Start",
                code: containerd_client::tonic::Code::NotFound,
                message: "no such image".into(),
            },
        };
        assert_eq!(
            e.to_string(),
            "restore of function \"hello\" (instance hello-0123abcd) (image \"hello\"): \
             Tasks.Start: NotFound: no such image"
        );
        assert!(e.is_not_found());
        let stage = DriverError {
            op: Op::Stage,
            function: String::new(),
            instance: None,
            image: Some("hello".into()),
            cause: Cause::Invalid("x".into()),
        };
        assert_eq!(stage.to_string(), "stage (image \"hello\"): x");
    }

    #[test]
    fn the_trait_is_object_safe() {
        fn takes(_: Option<Box<dyn InstanceDriver>>) {}
        takes(None);
    }
}
