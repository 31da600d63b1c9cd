//! The scheduler hook over a real unix socket (and TCP), called by real tonic clients:
//! Placement, WatchNode, grpc.health.v1 and server reflection (what grpcurl uses).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rekindle_agent::hook::pb::scheduler_hook_client::SchedulerHookClient;
use rekindle_agent::hook::{
    self, pb, Bound, FunctionSnapshot, Hook, HookOptions, Listen, NodeSnapshot,
};
use rekindle_agent::pool::ImageState;
use rekindle_agent::sim::LatencyTable;
use tokio::sync::watch;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

const GIB: u64 = 1 << 30;
const DEADLINE: Duration = Duration::from_secs(10);

fn function(name: &str, hot: u32, warm: u32, image: ImageState) -> FunctionSnapshot {
    FunctionSnapshot {
        function: name.into(),
        memory_mb: 256.0,
        hot,
        warm,
        busy: 0,
        starting: 0,
        image,
    }
}

fn node() -> NodeSnapshot {
    NodeSnapshot {
        functions: vec![
            function("hello", 1, 0, ImageState::Disk),
            function("resize", 0, 0, ImageState::Staged),
        ],
        memory_budget_bytes: Some(4 * GIB),
        available_bytes: None,
        cpu_capacity_millis: Some(2000),
    }
}

struct Server {
    snapshot: watch::Sender<NodeSnapshot>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn hook_of(rx: watch::Receiver<NodeSnapshot>) -> Hook {
    Hook::new(
        Arc::new(rx),
        LatencyTable::placeholder(),
        HookOptions {
            watch_interval: Duration::from_millis(300),
            watch_poll: Duration::from_millis(20),
        },
    )
}

async fn serve(bound: Bound) -> Server {
    let (snapshot, rx) = watch::channel(node());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(hook::serve(bound, hook_of(rx), stop_rx));
    Server {
        snapshot,
        stop,
        task,
    }
}

async fn channel(path: &Path) -> tonic::transport::Channel {
    // the server task may not accept yet: retry briefly
    for _ in 0..50 {
        if let Ok(c) = hook::connect_unix(path).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {}", path.display());
}

fn tier(t: i32) -> pb::Tier {
    pb::Tier::try_from(t).unwrap()
}

#[tokio::test]
async fn placement_watch_health_and_reflection_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/agent.sock");
    let bound = Bound::bind(&Listen::Unix(sock.clone())).await.unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let server = serve(bound).await;
    let ch = channel(&sock).await;

    // Placement
    let mut c = SchedulerHookClient::new(ch.clone());
    let r = c
        .placement(pb::PlacementRequest {
            function: "hello".into(),
            cpu_millis: 250,
            memory_bytes: 128 << 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier(r.tier), pb::Tier::Hot, "{r:?}");
    assert_eq!((r.expected_start_ms, r.score), (0.0, 100));
    // 4 GiB − one 256 MB instance − a staged image (256 MB × the staged factor)
    let used = 256.0 * (1.0 + rekindle_agent::pool::STAGED_MEMORY_FACTOR);
    assert_eq!(
        r.free_memory_bytes,
        4 * GIB - (used * 1048576.0).round() as u64
    );
    let r = c
        .placement(pb::PlacementRequest {
            function: "resize".into(),
            cpu_millis: 0,
            memory_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tier(r.tier), r.score),
        (pb::Tier::RestoreStaged, 61),
        "{r:?}"
    );
    let r = c
        .placement(pb::PlacementRequest {
            function: "nope".into(),
            cpu_millis: 0,
            memory_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((tier(r.tier), r.score), (pb::Tier::UnknownFunction, 0));
    assert!(r.reason.contains("not registered"), "{}", r.reason);
    let e = c
        .placement(pb::PlacementRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // WatchNode: the state at once, then the change
    let mut stream = c
        .watch_node(pb::WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.functions.len(), 2);
    assert_eq!(first.functions[0].function, "hello");
    assert_eq!(tier(first.functions[0].tier), pb::Tier::Hot);
    assert_eq!(first.memory_budget_bytes, 4 * GIB);
    assert!(first.generated_at.is_some());
    assert!(first.latency_source.contains("PLACEHOLDER"));
    server.snapshot.send_modify(|n| {
        n.functions[0].hot = 0;
        n.functions[0].warm = 1;
    });
    let changed = tokio::time::timeout(DEADLINE, async {
        loop {
            let s = stream.message().await.unwrap().unwrap();
            if tier(s.functions[0].tier) == pb::Tier::Warm {
                return s;
            }
        }
    })
    .await
    .expect("the change is streamed");
    assert_eq!(changed.functions[0].warm, 1);
    // and again without a change, at least every watch_interval
    let again = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.functions, changed.functions);
    drop(stream);

    // grpc.health.v1: the server and the service are SERVING
    let mut h = HealthClient::new(ch.clone());
    for service in ["", hook::SERVICE_NAME] {
        let s = h
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(s.status(), ServingStatus::Serving, "{service:?}");
    }

    // reflection (grpcurl list / describe)
    let mut refl = ServerReflectionClient::new(ch.clone());
    let reqs = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "rekindle.v1.SchedulerHook".into(),
            )),
        },
    ];
    let mut resp = refl
        .server_reflection_info(tokio_stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "rekindle.v1.SchedulerHook",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let Some(MessageResponse::FileDescriptorResponse(fd)) =
        resp.message().await.unwrap().unwrap().message_response
    else {
        panic!("no file descriptor for rekindle.v1.SchedulerHook");
    };
    let files: Vec<prost_types::FileDescriptorProto> = fd
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).unwrap())
        .collect();
    let hook_file = files
        .iter()
        .find(|f| f.name() == "rekindle/v1/hook.proto")
        .expect("hook.proto is described");
    assert_eq!(hook_file.package(), "rekindle.v1");
    let methods: Vec<&str> = hook_file.service[0]
        .method
        .iter()
        .map(|m| m.name())
        .collect();
    assert_eq!(methods, ["Placement", "WatchNode"]);

    // stop: the server ends and removes its socket
    server.stop.send(true).unwrap();
    tokio::time::timeout(DEADLINE, server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(!sock.exists(), "the socket is removed at stop");
}

/// Defence in depth behind the socket's mode: a peer that is neither root nor the
/// agent's user is dropped at once (SO_PEERCRED), even on a socket opened up to it. The
/// other user is a real process (python3 as nobody) speaking HTTP/2's preface.
#[tokio::test]
async fn a_peer_that_is_not_root_is_refused_even_if_the_mode_lets_it_connect() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (to run the other peer as nobody)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let bound = Bound::bind(&Listen::Unix(sock.clone())).await.unwrap();
    let server = serve(bound).await;
    // Opened up (as an operator's mistake would): only the peer check is left.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let _ = channel(&sock).await;
    // Sends the HTTP/2 client preface and an empty SETTINGS frame, prints how many bytes
    // the server answered before closing (a served peer gets the server's SETTINGS).
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(5)
n = 0
try:
    # Refused: the server has closed already (EPIPE/ECONNRESET here, or EOF below).
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    while True:
        b = s.recv(4096)
        if not b:
            break
        n += len(b)
        if n >= 9:
            break
except (socket.timeout, BrokenPipeError, ConnectionResetError):
    pass
print(n)
"#;
    // Async: the server runs on this test's runtime.
    let run = |uid: Option<u32>| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.arg("-c").arg(script).arg(&sock);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        async move {
            let out = cmd.output().await.expect("python3 runs");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<usize>()
                .unwrap()
        }
    };
    assert!(run(None).await >= 9, "root was not answered");
    assert_eq!(run(Some(65534)).await, 0, "nobody was answered");
    let _ = server.stop.send(true);
    let _ = server.task.await;
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    // Stale: a socket file nobody accepts on. Made by a datagram socket: a stream listener
    // dropped here could still accept for a moment through the copy a fork by a parallel
    // test holds until its exec (CI saw that once); a stream connect to this never succeeds.
    drop(std::os::unix::net::UnixDatagram::bind(&sock).unwrap());
    assert!(sock.exists());
    let bound = Bound::bind(&Listen::Unix(sock.clone())).await.unwrap();
    let server = serve(bound).await;
    let _ = channel(&sock).await;
    // live: a second agent on the same path says why it cannot start
    let e = Bound::bind(&Listen::Unix(sock.clone()))
        .await
        .err()
        .expect("a live socket is refused");
    assert!(
        e.to_string().contains("a live process listens on it"),
        "{e}"
    );
    assert!(sock.exists(), "the live socket is left alone");
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
    // a regular file is not removed
    std::fs::write(&sock, "x").unwrap();
    let e = Bound::bind(&Listen::Unix(sock.clone()))
        .await
        .err()
        .expect("a file is refused");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "x");
}

#[tokio::test]
async fn the_hook_also_listens_on_tcp() {
    let bound = Bound::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = bound.local_addr().unwrap();
    let server = serve(bound).await;
    let mut c = SchedulerHookClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let r = c
        .placement(pb::PlacementRequest {
            function: "hello".into(),
            cpu_millis: 4000,
            memory_bytes: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // more CPU than the node has: it does not fit
    assert_eq!((tier(r.tier), r.score), (pb::Tier::Hot, 0), "{r:?}");
    server.stop.send(true).unwrap();
    server.task.await.unwrap();
}

mod mtls {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rekindle_agent::config::HookTls;
    use tonic::transport::Endpoint;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.distinguished_name.push(DnType::CommonName, name);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    /// (certificate, key) PEM, signed by `ca`.
    fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, name: &str, client: bool) -> (String, String) {
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    async fn call(
        addr: std::net::SocketAddr,
        tls: tonic::transport::ClientTlsConfig,
    ) -> Result<pb::PlacementResponse, String> {
        let ch = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        SchedulerHookClient::new(ch)
            .placement(pb::PlacementRequest {
                function: "hello".into(),
                cpu_millis: 0,
                memory_bytes: 0,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|e| format!("call: {e:?}"))
    }

    #[tokio::test]
    async fn the_tcp_hook_requires_a_client_certificate_from_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca("rekindle test CA");
        let (srv_cert, srv_key) = leaf(&ca1, "localhost", false);
        let (cli_cert, cli_key) = leaf(&ca1, "kube-scheduler", true);
        let other = ca("another CA");
        let (bad_cert, bad_key) = leaf(&other, "intruder", true);
        let w = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let files = HookTls {
            cert: w("hook.pem", &srv_cert),
            key: w("hook.key", &srv_key),
            client_ca: w("ca.pem", &ca1.pem()),
        };
        let tls = hook::server_tls(&files).unwrap();
        let bound = Bound::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = bound.local_addr().unwrap();
        let (_snapshot, rx) = watch::channel(node());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(hook::serve_with(bound, hook_of(rx), Some(tls), stop_rx));

        let ca_pem = ca1.pem();
        let ok = call(
            addr,
            hook::client_tls(
                ca_pem.as_bytes(),
                cli_cert.as_bytes(),
                cli_key.as_bytes(),
                "localhost",
            ),
        )
        .await
        .expect("a client with a certificate from the CA is served");
        assert_eq!(tier(ok.tier), pb::Tier::Hot);

        // a certificate from another CA, or none: refused
        let bad = call(
            addr,
            hook::client_tls(
                ca_pem.as_bytes(),
                bad_cert.as_bytes(),
                bad_key.as_bytes(),
                "localhost",
            ),
        )
        .await;
        assert!(bad.is_err(), "{bad:?}");
        let none = call(
            addr,
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
                .domain_name("localhost"),
        )
        .await;
        assert!(none.is_err(), "{none:?}");
        // plaintext: refused
        let plain = SchedulerHookClient::connect(format!("http://{addr}")).await;
        if let Ok(mut c) = plain {
            assert!(c.placement(pb::PlacementRequest::default()).await.is_err());
        }

        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn hook_addr_and_hook_tls_in_the_configuration() {
        let c = rekindle_agent::Config::from_toml(
            "hook_addr = \"0.0.0.0:7070\"\n[hook_tls]\ncert = \"/etc/rekindle/hook.pem\"\n\
             key = \"/etc/rekindle/hook.key\"\nclient_ca = \"/etc/rekindle/ca.pem\"\n",
            Path::new("agent.toml"),
        )
        .unwrap();
        assert_eq!(c.hook_addr, Some("0.0.0.0:7070".parse().unwrap()));
        assert_eq!(
            c.hook_tls.as_ref().unwrap().client_ca,
            Path::new("/etc/rekindle/ca.pem")
        );
        c.validate().unwrap();
        let mut c2 = c.clone();
        c2.hook_addr = None;
        assert!(c2.validate().unwrap_err().to_string().contains("hook_addr"));
    }
}
