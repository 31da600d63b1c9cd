//! rekindle-extender over HTTP with kube-scheduler's JSON bodies (fixtures in
//! tests/data/extender/, written from the Kubernetes API types: `ExtenderArgs` with a
//! `v1.Pod` and a `v1.NodeList` or node names), in front of real scheduler hooks: one node
//! with a hot instance, one whose budget is full, one whose agent is down (no socket) and
//! one whose agent accepts connections but never answers (the deadline).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rekindle_agent::hook::extender::{self, Extender, ExtenderConfig, NEUTRAL_SCORE};
use rekindle_agent::hook::{
    self, Bound, FunctionSnapshot, Hook, HookOptions, Listen, NodeSnapshot,
};
use rekindle_agent::pool::ImageState;
use rekindle_agent::sim::LatencyTable;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const DEADLINE_MS: u64 = 300;

fn fixture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/extender")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f(name: &str, hot: u32, busy: u32, image: ImageState) -> FunctionSnapshot {
    FunctionSnapshot {
        function: name.into(),
        memory_mb: 256.0,
        hot,
        warm: 0,
        busy,
        starting: 0,
        image,
    }
}

async fn agent(sock: &Path, node: NodeSnapshot, stop: watch::Receiver<bool>) {
    let bound = Bound::bind(&Listen::Unix(sock.to_path_buf()))
        .await
        .unwrap();
    let (_keep, rx) = watch::channel(node);
    let hook = Hook::new(
        Arc::new(rx),
        LatencyTable::placeholder(),
        HookOptions::default(),
    );
    tokio::spawn(hook::serve(bound, hook, stop));
    // wait until it answers
    for _ in 0..100 {
        if hook::connect_unix(sock).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the agent on {} does not answer", sock.display());
}

/// POST over HTTP/1.1, as kube-scheduler does; returns the status and the JSON body.
async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

struct Setup {
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let budget = 1u64 << 30;
    // node-hot: an idle running instance of python-fn
    let hot = dir.path().join("hot.sock");
    agent(
        &hot,
        NodeSnapshot {
            functions: vec![f("python-fn", 1, 0, ImageState::Disk)],
            memory_budget_bytes: Some(budget),
            available_bytes: None,
            cpu_capacity_millis: Some(2000),
        },
        stop_rx.clone(),
    )
    .await;
    // node-full: python-fn only on disk, and the budget held by another function
    let full = dir.path().join("full.sock");
    agent(
        &full,
        NodeSnapshot {
            functions: vec![
                f("python-fn", 0, 0, ImageState::Disk),
                f("other", 4, 4, ImageState::None),
            ],
            memory_budget_bytes: Some(budget),
            available_bytes: None,
            cpu_capacity_millis: Some(2000),
        },
        stop_rx.clone(),
    )
    .await;
    // node-slow: accepts, never speaks HTTP/2
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = slow.accept().await {
            held.push(s);
        }
    });
    let config = ExtenderConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\ndeadline_ms = {DEADLINE_MS}\n[nodes]\n\
         node-hot = \"unix:{}\"\nnode-full = \"unix://{}\"\n\
         node-down = \"unix:{}\"\nnode-slow = \"http://{slow_addr}\"\n",
        hot.display(),
        full.display(),
        dir.path().join("down.sock").display(),
    ))
    .unwrap();
    let ext = Arc::new(Extender::new(&config).unwrap());
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(extender::serve(listener, ext, stop_rx));
    Setup {
        addr,
        _dir: dir,
        _stop: stop,
    }
}

fn names(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_and_prioritize_with_node_names() {
    let s = setup().await;
    let body = fixture("extender-args-nodenames.json");

    let t = Instant::now();
    let (status, r) = post(s.addr, "/scheduler/filter", &body).await;
    assert_eq!(status, 200, "{r}");
    // every agent is asked at once: the slow one costs one deadline, not more
    assert!(
        t.elapsed() < Duration::from_millis(DEADLINE_MS * 4),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        names(&r["NodeNames"]),
        ["node-hot", "node-down", "node-slow"],
        "{r}"
    );
    assert!(r["Nodes"].is_null(), "{r}");
    let why = r["FailedNodes"]["node-full"].as_str().unwrap();
    assert!(why.contains("does not fit"), "{why}");
    assert_eq!(r["Error"], "");

    let (status, r) = post(s.addr, "/scheduler/prioritize", &body).await;
    assert_eq!(status, 200, "{r}");
    let scores: Vec<(&str, i64)> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["Host"].as_str().unwrap(), h["Score"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        scores,
        [
            ("node-hot", 10),
            ("node-full", 0),
            ("node-down", NEUTRAL_SCORE),
            ("node-slow", NEUTRAL_SCORE),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filter_with_a_node_list_keeps_the_node_objects() {
    let s = setup().await;
    let body = fixture("extender-args-nodes.json");
    let (status, r) = post(s.addr, "/filter", &body).await;
    assert_eq!(status, 200, "{r}");
    let items = r["Nodes"]["items"].as_array().unwrap();
    let kept: Vec<&str> = items
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(kept, ["node-hot", "node-down", "node-slow"]);
    // the nodes come back whole, as kube-scheduler sent them
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(items[0], sent["Nodes"]["items"][0]);
    assert_eq!(r["Nodes"]["kind"], "NodeList");
    assert!(r["NodeNames"].is_null());
    assert!(r["FailedNodes"]["node-full"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_that_is_not_a_function_and_bad_bodies() {
    let s = setup().await;
    let mut args: Value = serde_json::from_str(&fixture("extender-args-nodenames.json")).unwrap();
    args["Pod"]["metadata"]["annotations"] = serde_json::json!({});
    let (_, r) = post(s.addr, "/prioritize", &args.to_string()).await;
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|h| h["Score"] == NEUTRAL_SCORE),
        "{r}"
    );
    let (_, r) = post(s.addr, "/filter", &args.to_string()).await;
    assert_eq!(names(&r["NodeNames"]).len(), 4, "{r}");
    let (status, r) = post(s.addr, "/filter", "{not json").await;
    assert_eq!(status, 400);
    assert!(
        r["Error"].as_str().unwrap().contains("not an ExtenderArgs"),
        "{r}"
    );
    let (status, _) = post(s.addr, "/bind", "{}").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_over_mutual_tls() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.distinguished_name
        .push(DnType::CommonName, "rekindle test CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca).unwrap();
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}.key"), key.serialize_pem()),
        )
    };
    let (srv_cert, srv_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (cli_cert, cli_key) = leaf("extender", ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = write("ca.pem", ca.pem());

    let tls = hook::server_tls(&rekindle_agent::config::HookTls {
        cert: srv_cert,
        key: srv_key,
        client_ca: ca_file.clone(),
    })
    .unwrap();
    let bound = Bound::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let port = bound.local_addr().unwrap().port();
    let (_keep, rx) = watch::channel(NodeSnapshot {
        functions: vec![f("python-fn", 1, 0, ImageState::Disk)],
        memory_budget_bytes: Some(1 << 30),
        available_bytes: None,
        cpu_capacity_millis: None,
    });
    let (stop, stop_rx) = watch::channel(false);
    let h = Hook::new(
        Arc::new(rx),
        LatencyTable::placeholder(),
        HookOptions::default(),
    );
    tokio::spawn(hook::serve_with(bound, h, Some(tls), stop_rx.clone()));

    let config = ExtenderConfig::from_toml(&format!(
        "deadline_ms = 2000\n[nodes]\nnode-hot = \"https://localhost:{port}\"\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca_file.display(),
        cli_cert.display(),
        cli_key.display()
    ))
    .unwrap();
    let ext = Extender::new(&config).unwrap();
    let args: extender::ExtenderArgs = serde_json::from_value(serde_json::json!({
        "Pod": serde_json::from_str::<Value>(&fixture("pod.json")).unwrap(),
        "Nodes": null,
        "NodeNames": ["node-hot"],
    }))
    .unwrap();
    let p = ext.prioritize(&args).await;
    assert_eq!(p[0].score, 10, "{p:?}");
    let _ = stop.send(true);
}
