//! The agent's HTTP endpoints: the invoke gateway (`GET /invoke/<function>/<path...>` on
//! `gateway_addr`, for edge boxes without Kubernetes) and Prometheus' `GET /metrics` on
//! `metrics_addr`. HTTP/1.1 (hyper), GET only.
//!
//! The gateway answers with the instance's status and body, and says how the request was
//! served in two headers: `x-rekindle-tier` (`hot`, `warm`, `restore_staged`,
//! `restore_disk`, `cold`) and `x-rekindle-instance` (the instance's container id). When
//! no path could serve it: 502 (every path failed), 503 (memory budget, shutting down),
//! 404 (no such function), with the reason as text.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::pool::manager::{InvokeError, PoolManager};

pub const TIER_HEADER: &str = "x-rekindle-tier";
pub const INSTANCE_HEADER: &str = "x-rekindle-instance";

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())))
        .expect("a valid response")
}

/// Splits `/invoke/<function>/<rest>` into the function and the path to forward
/// (`/<rest>`, with the query).
pub fn route(path: &str, query: Option<&str>) -> Option<(String, String)> {
    let rest = path.strip_prefix("/invoke/")?;
    let (function, tail) = match rest.find('/') {
        Some(k) => (&rest[..k], &rest[k..]),
        None => (rest, "/"),
    };
    if function.is_empty() {
        return None;
    }
    let mut forward = tail.to_string();
    if let Some(q) = query {
        forward.push('?');
        forward.push_str(q);
    }
    Some((function.to_string(), forward))
}

async fn gateway(pool: PoolManager, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let Some((function, path)) = route(req.uri().path(), req.uri().query()) else {
        return text(StatusCode::NOT_FOUND, "GET /invoke/<function>/<path>\n");
    };
    match pool.invoke(&function, &path).await {
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
            Response::builder()
                .status(
                    StatusCode::from_u16(served.response.status).unwrap_or(StatusCode::BAD_GATEWAY),
                )
                .header(TIER_HEADER, served.tier.name())
                .header(INSTANCE_HEADER, served.instance)
                .body(Full::new(Bytes::from(served.response.body)))
                .expect("a valid response")
        }
        Err(e) => {
            let status = match e {
                InvokeError::UnknownFunction(_) => StatusCode::NOT_FOUND,
                InvokeError::Failed { .. } => StatusCode::BAD_GATEWAY,
                InvokeError::Budget(_) | InvokeError::ShuttingDown => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
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
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
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
                let fut = handle(req);
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
    serve(listener, move |req| gateway(pool.clone(), req), stop).await
}

/// `/metrics` on `listener`.
pub async fn serve_metrics(listener: TcpListener, m: Arc<Metrics>, stop: watch::Receiver<bool>) {
    serve(listener, move |req| metrics(m.clone(), req), stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_take_the_function_and_forward_the_rest() {
        assert_eq!(
            route("/invoke/hello/a/b", Some("x=1")),
            Some(("hello".into(), "/a/b?x=1".into()))
        );
        assert_eq!(
            route("/invoke/hello", None),
            Some(("hello".into(), "/".into()))
        );
        assert_eq!(
            route("/invoke/hello/", None),
            Some(("hello".into(), "/".into()))
        );
        assert_eq!(route("/invoke/", None), None);
        assert_eq!(route("/metrics", None), None);
    }
}
