//! `rekindle-extender`: a kube-scheduler extender (HTTP JSON, the `k8s.io/kube-scheduler/
//! extender/v1` types) in front of the agents' scheduler hooks.
//!
//! - `POST <prefix>/filter` (`ExtenderArgs` → `ExtenderFilterResult`): every candidate
//!   node whose agent answers that the pod's request does not fit its memory budget (or
//!   CPUs) fails, with the agent's reason; a node whose agent does not answer within the
//!   deadline, is not in the node map, or does not know the function passes (the
//!   scheduler's own filters still apply).
//! - `POST <prefix>/prioritize` (`ExtenderArgs` → `HostPriorityList`): the agent's
//!   score (0–100) scaled to 0–10 (`round(score / 10)`), so a hot instance is 10, a
//!   staged restore 6, a cold start 3 with the placeholder latencies; an unknown function
//!   or a request that does not fit is 0; an agent that does not answer within the
//!   deadline, or a node not in the map, gets the neutral [`NEUTRAL_SCORE`] (5).
//!
//! Both accept `Nodes` (a `NodeList`, `nodeCacheCapable: false`) or `NodeNames`
//! (`nodeCacheCapable: true`) and answer in the same form. The function is the pod's
//! annotation `io.rekindle.function`, else `io.rekindle.image` (the stored image, named
//! like the function by default); a pod with neither is not Rekindle's: every node
//! passes, every score is neutral. Its request is the sum of its containers'
//! `resources.requests` (cpu, memory).
//!
//! The agents are called in parallel, each with the deadline (`deadline_ms`), over the
//! address in the node map: `unix:/path`, `http://host:port`, or `https://host:port`
//! (mutual TLS: `[tls]` gives the CA of the agents' certificates and the extender's
//! client certificate and key, PEM).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use super::pb;

/// The score of a node whose agent does not answer.
pub const NEUTRAL_SCORE: i64 = 5;
/// kube-scheduler's `MaxExtenderPriority`.
pub const MAX_SCORE: i64 = 10;
/// The pod annotation naming the function.
pub const FUNCTION_ANNOTATION: &str = "io.rekindle.function";
/// The shim's annotation naming the stored image (the function's, by default).
pub const IMAGE_ANNOTATION: &str = "io.rekindle.image";

const MAX_BODY: usize = 64 << 20;

/// `/etc/rekindle/extender.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtenderConfig {
    /// Where kube-scheduler calls the extender.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Each agent's answer is awaited this long at most.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Node name → the agent's hook (`unix:/path`, `http://host:port`,
    /// `https://host:port`).
    #[serde(default)]
    pub nodes: BTreeMap<String, String>,
    /// Mutual TLS with the agents' `https://` hooks.
    #[serde(default)]
    pub tls: Option<ExtenderTls>,
}

/// `[tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtenderTls {
    /// The CA the agents' certificates chain to.
    pub ca: PathBuf,
    /// The extender's client certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:8888".parse().expect("a valid address")
}

fn default_deadline_ms() -> u64 {
    200
}

impl ExtenderConfig {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let c: ExtenderConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for (node, addr) in &c.nodes {
            let a = parse_address(addr).map_err(|e| format!("node {node:?}: {e}"))?;
            if matches!(a, HookAddress::Https(_)) && c.tls.is_none() {
                return Err(format!("node {node:?}: {addr} needs [tls]"));
            }
        }
        if c.deadline_ms == 0 {
            return Err("deadline_ms must be positive".into());
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A hook's address.
#[derive(Debug, Clone, PartialEq)]
pub enum HookAddress {
    Unix(PathBuf),
    Http(String),
    Https(String),
}

pub fn parse_address(a: &str) -> Result<HookAddress, String> {
    if let Some(p) = a
        .strip_prefix("unix://")
        .or_else(|| a.strip_prefix("unix:"))
    {
        if !p.starts_with('/') {
            return Err(format!("{a:?}: the unix socket path must be absolute"));
        }
        return Ok(HookAddress::Unix(p.into()));
    }
    if a.starts_with("http://") || a.starts_with("https://") {
        Endpoint::from_shared(a.to_string()).map_err(|e| format!("{a:?}: {e}"))?;
        return Ok(if a.starts_with("https://") {
            HookAddress::Https(a.to_string())
        } else {
            HookAddress::Http(a.to_string())
        });
    }
    Err(format!(
        "{a:?}: expected unix:/path, http://host:port or https://host:port"
    ))
}

/// A channel that connects on first use (and reconnects): a node whose agent is down
/// costs one failed call, not the extender's start.
fn lazy_channel(
    a: &HookAddress,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Channel, String> {
    Ok(match a {
        HookAddress::Http(u) => Endpoint::from_shared(u.clone())
            .map_err(|e| e.to_string())?
            .connect_lazy(),
        HookAddress::Https(u) => Endpoint::from_shared(u.clone())
            .map_err(|e| e.to_string())?
            .tls_config(tls.ok_or_else(|| format!("{u}: needs [tls]"))?.clone())
            .map_err(|e| format!("{u}: {e}"))?
            .connect_lazy(),
        HookAddress::Unix(p) => {
            let p = p.clone();
            Endpoint::from_static("http://[::]:50051").connect_with_connector_lazy(
                tower::service_fn(move |_| {
                    let p = p.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(p).await?,
                        ))
                    }
                }),
            )
        }
    })
}

// ---- the kube-scheduler extender API (k8s.io/kube-scheduler/extender/v1), as Go's
// encoding/json writes it: field names as in Go (no json tags), nil pointers as null.
// Reading accepts lower-case names too (Go's decoder is case-insensitive).

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderArgs {
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Value>,
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<Value>,
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExtenderFilterResult {
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<Value>,
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
    #[serde(rename = "FailedNodes", alias = "failedNodes", default)]
    pub failed_nodes: BTreeMap<String, String>,
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        default
    )]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    #[serde(rename = "Error", alias = "error", default)]
    pub error: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPriority {
    #[serde(rename = "Host", alias = "host")]
    pub host: String,
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

pub type HostPriorityList = Vec<HostPriority>;

/// What the pod asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodRequest {
    /// `None`: not a Rekindle function.
    pub function: Option<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The function and the summed requests of a `v1.Pod`'s containers.
pub fn pod_request(pod: &Value) -> PodRequest {
    let ann = &pod["metadata"]["annotations"];
    let function = [FUNCTION_ANNOTATION, IMAGE_ANNOTATION]
        .iter()
        .find_map(|k| ann[*k].as_str().filter(|s| !s.is_empty()))
        .map(str::to_string);
    let mut r = PodRequest {
        function,
        ..PodRequest::default()
    };
    if let Some(cs) = pod["spec"]["containers"].as_array() {
        for c in cs {
            let req = &c["resources"]["requests"];
            if let Some(q) = req["cpu"].as_str() {
                r.cpu_millis += parse_cpu_millis(q).unwrap_or(0);
            }
            if let Some(q) = req["memory"].as_str() {
                r.memory_bytes += parse_bytes(q).unwrap_or(0);
            }
        }
    }
    r
}

/// A Kubernetes CPU quantity (`"250m"`, `"1"`, `"0.5"`) in millicores.
pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    let q = q.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.ceil() as u64);
    }
    q.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| (v * 1000.0).ceil() as u64)
}

/// A Kubernetes memory quantity (`"128Mi"`, `"1G"`, `"1e9"`, `"512"`) in bytes.
pub fn parse_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    for (s, f) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            return n.parse::<f64>().ok().map(|v| (v * f).ceil() as u64);
        }
    }
    q.parse::<f64>()
        .ok()
        .filter(|v| *v >= 0.0)
        .map(|v| v.ceil() as u64)
}

/// The candidate nodes' names, from `NodeNames` or `Nodes.items[].metadata.name`.
pub fn candidate_names(args: &ExtenderArgs) -> Vec<String> {
    if let Some(n) = &args.node_names {
        return n.clone();
    }
    args.nodes
        .as_ref()
        .and_then(|l| l["items"].as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// One node's answer: `None` when its agent did not answer (in time) or is not mapped.
pub type Answers = HashMap<String, Option<pb::PlacementResponse>>;

/// The filter's result from the agents' answers (pure).
pub fn filter_result(args: &ExtenderArgs, answers: &Answers) -> ExtenderFilterResult {
    let mut failed = BTreeMap::new();
    for (node, a) in answers {
        if let Some(a) = a {
            if a.score == 0 && a.tier != pb::Tier::UnknownFunction as i32 {
                failed.insert(node.clone(), format!("rekindle: {}", a.reason));
            }
        }
    }
    let keep = |name: &str| !failed.contains_key(name);
    let mut out = ExtenderFilterResult {
        failed_nodes: failed.clone(),
        ..ExtenderFilterResult::default()
    };
    if let Some(names) = &args.node_names {
        out.node_names = Some(names.iter().filter(|n| keep(n)).cloned().collect());
    } else if let Some(list) = &args.nodes {
        let mut list = list.clone();
        if let Some(items) = list.get_mut("items").and_then(|i| i.as_array_mut()) {
            items.retain(|n| n["metadata"]["name"].as_str().is_none_or(keep));
        }
        out.nodes = Some(list);
    }
    out
}

/// The scores from the agents' answers (pure), in the candidates' order.
pub fn priorities(names: &[String], answers: &Answers) -> HostPriorityList {
    names
        .iter()
        .map(|n| HostPriority {
            host: n.clone(),
            score: match answers.get(n) {
                Some(Some(a)) => ((a.score.min(100) as f64) / 10.0).round() as i64,
                _ => NEUTRAL_SCORE,
            },
        })
        .collect()
}

/// The extender: the agents' channels and the deadline.
pub struct Extender {
    channels: HashMap<String, Channel>,
    deadline: Duration,
}

impl Extender {
    /// Must run inside a tokio runtime (the channels' workers).
    pub fn new(config: &ExtenderConfig) -> Result<Self, String> {
        let tls = match &config.tls {
            Some(t) => {
                let read = |p: &Path| {
                    std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))
                };
                Some(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(read(&t.ca)?))
                        .identity(tonic::transport::Identity::from_pem(
                            read(&t.cert)?,
                            read(&t.key)?,
                        )),
                )
            }
            None => None,
        };
        let mut channels = HashMap::new();
        for (node, addr) in &config.nodes {
            let ch = lazy_channel(&parse_address(addr)?, tls.as_ref())?;
            channels.insert(node.clone(), ch);
        }
        Ok(Extender {
            channels,
            deadline: Duration::from_millis(config.deadline_ms),
        })
    }

    /// Asks every node's agent at once, each within the deadline.
    pub async fn ask(&self, names: &[String], req: &PodRequest) -> Answers {
        let Some(function) = &req.function else {
            return names.iter().map(|n| (n.clone(), None)).collect();
        };
        let calls = names.iter().map(|n| {
            let ch = self.channels.get(n).cloned();
            let msg = pb::PlacementRequest {
                function: function.clone(),
                cpu_millis: req.cpu_millis,
                memory_bytes: req.memory_bytes,
            };
            let deadline = self.deadline;
            async move {
                let Some(ch) = ch else {
                    tracing::debug!(node = %n, "not in the node map: neutral");
                    return (n.clone(), None);
                };
                let mut c = pb::scheduler_hook_client::SchedulerHookClient::new(ch);
                let mut r = tonic::Request::new(msg);
                r.set_timeout(deadline);
                let a = match tokio::time::timeout(deadline, c.placement(r)).await {
                    Ok(Ok(a)) => Some(a.into_inner()),
                    Ok(Err(e)) => {
                        tracing::warn!(node = %n, error = %e, "agent did not answer: neutral");
                        None
                    }
                    Err(_) => {
                        tracing::warn!(node = %n, ?deadline, "agent too slow: neutral");
                        None
                    }
                };
                (n.clone(), a)
            }
        });
        futures_join_all(calls).await.into_iter().collect()
    }

    pub async fn filter(&self, args: &ExtenderArgs) -> ExtenderFilterResult {
        let req = args.pod.as_ref().map(pod_request).unwrap_or_default();
        let answers = self.ask(&candidate_names(args), &req).await;
        filter_result(args, &answers)
    }

    pub async fn prioritize(&self, args: &ExtenderArgs) -> HostPriorityList {
        let req = args.pod.as_ref().map(pod_request).unwrap_or_default();
        let names = candidate_names(args);
        let answers = self.ask(&names, &req).await;
        priorities(&names, &answers)
    }
}

/// Runs the futures concurrently (a JoinSet would need 'static ones).
async fn futures_join_all<F: std::future::Future>(
    fs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).map(Some).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (k, f) in fs.iter_mut().enumerate() {
            if let Some(fut) = f {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out[k] = Some(v);
                        *f = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

type Body = Full<Bytes>;

fn json(status: StatusCode, v: &impl Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(v).expect("serialisable"),
        )))
        .expect("a valid response")
}

async fn handle(ext: Arc<Extender>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if req.method() == Method::GET && path.ends_with("/healthz") {
        return json(StatusCode::OK, &"ok");
    }
    let verb = if path.ends_with("/filter") {
        "filter"
    } else if path.ends_with("/prioritize") {
        "prioritize"
    } else {
        return json(
            StatusCode::NOT_FOUND,
            &"POST <prefix>/filter or <prefix>/prioritize",
        );
    };
    if req.method() != Method::POST {
        return json(StatusCode::METHOD_NOT_ALLOWED, &"POST only");
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
    };
    let args: ExtenderArgs = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            let msg = format!("not an ExtenderArgs: {e}");
            return if verb == "filter" {
                json(
                    StatusCode::BAD_REQUEST,
                    &ExtenderFilterResult {
                        error: msg,
                        ..ExtenderFilterResult::default()
                    },
                )
            } else {
                json(StatusCode::BAD_REQUEST, &msg)
            };
        }
    };
    if verb == "filter" {
        json(StatusCode::OK, &ext.filter(&args).await)
    } else {
        json(StatusCode::OK, &ext.prioritize(&args).await)
    }
}

/// Serves the extender on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, ext: Arc<Extender>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ext = ext.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ext = ext.clone();
                async move { Ok::<_, Infallible>(handle(ext, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        if *stop.borrow() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(tier: pb::Tier, score: u32) -> Option<pb::PlacementResponse> {
        Some(pb::PlacementResponse {
            tier: tier as i32,
            score,
            reason: format!("{tier:?}"),
            ..Default::default()
        })
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_cpu_millis("250m"), Some(250));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("x"), None);
        assert_eq!(parse_bytes("128Mi"), Some(128 << 20));
        assert_eq!(parse_bytes("1Gi"), Some(1 << 30));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("500k"), Some(500_000));
        assert_eq!(parse_bytes("1e9"), Some(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Some(4096));
    }

    #[test]
    fn the_pod_names_the_function_and_sums_its_requests() {
        let pod = json!({
            "metadata": {"name": "p", "annotations": {"io.rekindle.image": "python-fn"}},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "c"}
            ]}
        });
        let r = pod_request(&pod);
        assert_eq!(r.function.as_deref(), Some("python-fn"));
        assert_eq!(
            (r.cpu_millis, r.memory_bytes),
            (1100, (128 << 20) + (1 << 30))
        );
        let mut pod = pod;
        pod["metadata"]["annotations"]["io.rekindle.function"] = json!("hello");
        assert_eq!(pod_request(&pod).function.as_deref(), Some("hello"));
        assert_eq!(pod_request(&json!({})).function, None);
    }

    #[test]
    fn scores_scale_to_0_10_and_missing_answers_are_neutral() {
        let names: Vec<String> = ["hot", "cold", "nofit", "unknown", "down"]
            .map(String::from)
            .to_vec();
        let answers: Answers = [
            ("hot", answer(pb::Tier::Hot, 100)),
            ("cold", answer(pb::Tier::Cold, 25)),
            ("nofit", answer(pb::Tier::RestoreDisk, 0)),
            ("unknown", answer(pb::Tier::UnknownFunction, 0)),
            ("down", None),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_string(), a))
        .collect();
        let p = priorities(&names, &answers);
        let scores: Vec<i64> = p.iter().map(|h| h.score).collect();
        assert_eq!(scores, [10, 3, 0, 0, NEUTRAL_SCORE]);
        // filter: only the node that answered "does not fit" fails
        let args = ExtenderArgs {
            node_names: Some(names.clone()),
            ..Default::default()
        };
        let f = filter_result(&args, &answers);
        assert_eq!(
            f.node_names.unwrap(),
            ["hot", "cold", "unknown", "down"].map(String::from)
        );
        assert_eq!(f.failed_nodes.keys().collect::<Vec<_>>(), ["nofit"]);
        assert!(f.nodes.is_none());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("unix:///run/rekindle/agent.sock"),
            Ok(HookAddress::Unix("/run/rekindle/agent.sock".into()))
        );
        assert_eq!(
            parse_address("unix:/a.sock"),
            Ok(HookAddress::Unix("/a.sock".into()))
        );
        assert!(parse_address("http://10.0.0.2:7070").is_ok());
        assert_eq!(
            parse_address("https://n1:7070"),
            Ok(HookAddress::Https("https://n1:7070".into()))
        );
        assert!(ExtenderConfig::from_toml("[nodes]\nn1 = \"https://n1:7070\"\n").is_err());
        assert!(parse_address("unix:rel.sock").is_err());
        assert!(parse_address("10.0.0.2:7070").is_err());
        let c = ExtenderConfig::from_toml(
            "listen = \"0.0.0.0:8888\"\ndeadline_ms = 100\n[nodes]\nn1 = \"unix:/a.sock\"\n",
        )
        .unwrap();
        assert_eq!(c.nodes["n1"], "unix:/a.sock");
        assert!(ExtenderConfig::from_toml("[nodes]\nn1 = \"tcp:x\"\n").is_err());
        assert!(ExtenderConfig::from_toml("bogus = 1\n").is_err());
    }
}
