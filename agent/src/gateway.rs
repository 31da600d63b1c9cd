//! The agent's HTTP endpoints: the invoke gateway (on `gateway_addr`, for edge boxes
//! without Kubernetes) and Prometheus' `GET /metrics` on `metrics_addr`. HTTP/1.1 (hyper).
//!
//! The gateway has two modes, told apart by the path:
//! - **invoke**, `POST /invoke/<function>[?query]`: the request goes to the function's
//!   handler, `POST <invoke_path>[?query]` on an instance (`invoke_path` per function,
//!   default `/invoke`). Other methods on that path get 405. This is the FaaS call an
//!   event source or a client makes (as Lambda's and OpenFaaS' invoke endpoints): the
//!   caller names the function, not a route inside it.
//! - **passthrough**, `<ANY METHOD> /invoke/<function>/<path>[?query]`: the request goes to
//!   `/<path>[?query]` on an instance with its method, for functions that are whole HTTP
//!   services (a REST API, a webhook receiver). `/invoke/<function>/` is the function's `/`.
//!
//! Both forward the request's headers minus the hop-by-hop ones (RFC 9110 §7.6.1:
//! `Connection` and the headers it names, `Proxy-Connection`, `Keep-Alive`, `TE`,
//! `Transfer-Encoding`, `Upgrade`), with `Host` set to the instance's address and
//! `X-Forwarded-For`/`-Host`/`-Proto` added; and the body, at most the function's
//! `max_body_bytes` (default 6 MiB; 413 past it, before anything starts). The answer is
//! the function's status, headers (minus hop-by-hop ones) and body (at most
//! `max_response_bytes`, else 502), with:
//! - `x-rekindle-tier`: how the instance was had (`hot`, `warm`, `restore_staged`,
//!   `restore_disk`, `cold`);
//! - `x-rekindle-instance`: the instance's container id;
//! - `x-rekindle-start-ms`: how long the start made for this request took, only when one
//!   was (restore or cold start);
//! - `x-rekindle-queue-ms`: how long it waited for an instance, only when it did.
//!
//! When no instance could serve it: 404 (no such function), 502 (every path failed, or a
//! failure after the request reached an instance for a method that is not safe to
//! repeat), 503 with `Retry-After` and `x-rekindle-refused: <reason>` when it was refused
//! (`queue_full`, `queue_timeout`, `budget`, `shutdown`; see [`crate::pool::admission`]),
//! counted in `rekindle_gateway_refused_total{function,reason}`. The reason is in the body
//! as text.
//!
//! A request runs in a task of its own: a client that goes away does not cancel it half
//! way (its instance is released, its queue place given back, as for any other).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::driver::ForwardRequest;
use crate::metrics::Metrics;
use crate::pool::manager::{InvokeError, PoolManager};

pub const TIER_HEADER: &str = "x-rekindle-tier";
pub const INSTANCE_HEADER: &str = "x-rekindle-instance";
pub const START_MS_HEADER: &str = "x-rekindle-start-ms";
pub const QUEUE_MS_HEADER: &str = "x-rekindle-queue-ms";
pub const REFUSED_HEADER: &str = "x-rekindle-refused";

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("a valid response")
}

/// A gateway path, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/invoke/<function>`: `POST` to the function's handler, with the query.
    Invoke {
        function: String,
        query: Option<String>,
    },
    /// `/invoke/<function>/<rest>`: any method on `/<rest>` (with the query).
    Passthrough { function: String, path: String },
}

/// Parses `/invoke/<function>` and `/invoke/<function>/<rest>`.
pub fn route(path: &str, query: Option<&str>) -> Option<Route> {
    let rest = path.strip_prefix("/invoke/")?;
    let (function, tail) = match rest.find('/') {
        Some(k) => (&rest[..k], Some(&rest[k..])),
        None => (rest, None),
    };
    if function.is_empty() {
        return None;
    }
    let function = function.to_string();
    Some(match tail {
        None => Route::Invoke {
            function,
            query: query.map(str::to_string),
        },
        Some(tail) => {
            let mut path = tail.to_string();
            if let Some(q) = query {
                path.push('?');
                path.push_str(q);
            }
            Route::Passthrough { function, path }
        }
    })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): meant for one connection, not forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers: those of `HOP_BY_HOP` and those `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// The headers to send the instance: the client's minus hop-by-hop ones, `Host` (the
/// driver sets the instance's), `Content-Length` (recomputed from the body) and `Expect`
/// (the gateway has read the whole body already: a `100-continue` was its to answer), plus
/// `X-Forwarded-For` (the client's address appended), `X-Forwarded-Host` and
/// `X-Forwarded-Proto`.
pub fn request_headers(mut h: HeaderMap, peer: SocketAddr) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    let host = h.remove(header::HOST);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::EXPECT);
    let xff = HeaderName::from_static("x-forwarded-for");
    let chain = match h.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&chain) {
        h.insert(xff, v);
    }
    if let Some(host) = host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    h.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    h
}

/// The answer's headers: the function's minus hop-by-hop ones and `Content-Length`
/// (hyper writes the body's), except for `HEAD`, whose length is the function's to say.
pub fn response_headers(mut h: HeaderMap, method: &Method) -> HeaderMap {
    strip_hop_by_hop(&mut h);
    if method != Method::HEAD {
        h.remove(header::CONTENT_LENGTH);
    }
    h
}

const USAGE: &str =
    "POST /invoke/<function> (its handler), or any method on /invoke/<function>/<path>\n";

async fn gateway(pool: PoolManager, peer: SocketAddr, req: Request<Incoming>) -> Response<Body> {
    let Some(route) = route(req.uri().path(), req.uri().query()) else {
        return text(StatusCode::NOT_FOUND, USAGE);
    };
    let (function, passthrough_path) = match route {
        Route::Invoke { function, query } => {
            if req.method() != Method::POST {
                let mut r = text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("/invoke/{function} takes POST (the function's handler); other methods: /invoke/{function}/<path>\n"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return r;
            }
            (function, query.map(|q| (false, q)))
        }
        Route::Passthrough { function, path } => (function, Some((true, path))),
    };
    let Some(limits) = pool.gateway_limits(&function) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no function {function:?} is registered\n"),
        );
    };
    let path = match passthrough_path {
        Some((true, path)) => path,
        Some((false, query)) => format!("{}?{query}", limits.invoke_path),
        None => limits.invoke_path.clone(),
    };
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body exceeds {function:?}'s max_body_bytes ({})\n",
                limits.max_body_bytes
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, limits.max_body_bytes).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}\n"),
            )
        }
    };
    let method = parts.method.clone();
    let fwd = ForwardRequest {
        method: parts.method,
        path,
        headers: request_headers(parts.headers, peer),
        body,
    };
    let task = {
        let pool = pool.clone();
        let function = function.clone();
        tokio::spawn(async move { pool.forward(&function, fwd).await })
    };
    let result = match task.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(function, error = %e, "the request's task failed");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request's task failed\n",
            );
        }
    };
    match result {
        Ok(served) => {
            if served.tier.starts_instance() {
                // The end of the instance's start-up timeline: the agent has its first
                // answer. Taken here rather than from a BPF-observed first socket write
                // in the instance's cgroup: without kprobes the only per-send
                // tracepoint, sock:sock_send_length, also fires for CRIU's replies to
                // the shim (its swrk runs in the instance's cgroup) and for the
                // readiness probe's answer, so "first write" is not "first response";
                // and this is the moment the client's answer is on its way.
                pool.metrics().node.first_response(
                    &served.instance,
                    served.tier,
                    rekindle::bpf::monotonic_ns(),
                );
            }
            let mut r = Response::new(Full::new(served.response.body));
            *r.status_mut() = served.response.status;
            *r.headers_mut() = response_headers(served.response.headers, &method);
            let h = r.headers_mut();
            h.insert(TIER_HEADER, HeaderValue::from_static(served.tier.name()));
            if let Ok(v) = HeaderValue::from_str(&served.instance) {
                h.insert(INSTANCE_HEADER, v);
            }
            if let Some(d) = served.start {
                h.insert(START_MS_HEADER, HeaderValue::from(d.as_millis() as u64));
            }
            if let Some(d) = served.queued {
                h.insert(QUEUE_MS_HEADER, HeaderValue::from(d.as_millis() as u64));
            }
            r
        }
        Err(e) => {
            if let Some(reason) = e.refusal() {
                let retry = reason.retry_after().as_secs();
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{e} (reason: {}; retry after {retry} s)\n", reason.label()),
                );
                let h = r.headers_mut();
                h.insert(header::RETRY_AFTER, HeaderValue::from(retry));
                h.insert(REFUSED_HEADER, HeaderValue::from_static(reason.label()));
                return r;
            }
            let status = match e {
                InvokeError::UnknownFunction(_) => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_GATEWAY,
            };
            text(status, format!("{e}\n"))
        }
    }
}

async fn metrics(m: Arc<Metrics>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET || req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "GET /metrics\n");
    }
    Response::builder()
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(m.encode())))
        .expect("a valid response")
}

/// Serves HTTP/1.1 on `listener` with `handle` until `stop` turns true; connections
/// already accepted finish on their own.
async fn serve<H, F>(listener: TcpListener, handle: H, mut stop: watch::Receiver<bool>)
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fut = handle(peer, req);
                async move { Ok::<_, Infallible>(fut.await) }
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

/// The invoke gateway on `listener`.
pub async fn serve_gateway(listener: TcpListener, pool: PoolManager, stop: watch::Receiver<bool>) {
    serve(
        listener,
        move |peer, req| gateway(pool.clone(), peer, req),
        stop,
    )
    .await
}

/// `/metrics` on `listener`.
pub async fn serve_metrics(listener: TcpListener, m: Arc<Metrics>, stop: watch::Receiver<bool>) {
    serve(listener, move |_, req| metrics(m.clone(), req), stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passthrough(function: &str, path: &str) -> Option<Route> {
        Some(Route::Passthrough {
            function: function.into(),
            path: path.into(),
        })
    }

    #[test]
    fn routes_tell_invoke_from_passthrough() {
        assert_eq!(
            route("/invoke/hello", Some("x=1")),
            Some(Route::Invoke {
                function: "hello".into(),
                query: Some("x=1".into())
            })
        );
        assert_eq!(
            route("/invoke/hello", None),
            Some(Route::Invoke {
                function: "hello".into(),
                query: None
            })
        );
        assert_eq!(
            route("/invoke/hello/a/b", Some("x=1")),
            passthrough("hello", "/a/b?x=1")
        );
        assert_eq!(route("/invoke/hello/", None), passthrough("hello", "/"));
        assert_eq!(route("/invoke/", None), None);
        assert_eq!(route("/invoke//x", None), None);
        assert_eq!(route("/metrics", None), None);
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "close"),
            ("content-length", "5"),
            ("expect", "100-continue"),
            ("host", "edge.example:8080"),
            ("x-forwarded-for", "10.0.0.1"),
            ("authorization", "Bearer t"),
            ("content-type", "application/json"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let out = request_headers(h, "192.0.2.7:40000".parse().unwrap());
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "authorization",
                "content-type",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(out["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(out["x-forwarded-host"], "edge.example:8080");

        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("2"));
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("x-fn", HeaderValue::from_static("1"));
        let get = response_headers(h.clone(), &Method::GET);
        assert_eq!(get.len(), 1, "{get:?}");
        assert_eq!(get["x-fn"], "1");
        let head = response_headers(h, &Method::HEAD);
        assert_eq!(head["content-length"], "2");
    }
}
