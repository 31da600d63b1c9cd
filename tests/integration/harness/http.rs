//! Just enough HTTP/1.0 to talk to the reference function on 127.0.0.1.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{bail, Context as _, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A port that was free a moment ago on 127.0.0.1 (the function binds it itself).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:port; the status code and the body. The whole exchange must
/// finish within `timeout`.
pub async fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| {
            format!("GET {path} on 127.0.0.1:{port}: no answer within {timeout:?}")
        })??;
    parse_response(&raw, path, &format!("127.0.0.1:{port}"))
}

/// The status code and the body of the HTTP response `raw` to `GET path` on `addr`.
pub fn parse_response(raw: &[u8], path: &str, addr: &str) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET {path} on {addr}: not an HTTP response: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// An HTTP/1.1 answer with its headers (names lowercased).
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) to `addr` and reads
/// the answer to the end, within `timeout`.
pub async fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Answer> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(timeout, s.read_to_end(&mut raw))
        .await
        .with_context(|| format!("no answer within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

/// `GET path` over HTTP/1.1 on `addr` (the agent's gateway or /metrics): status,
/// headers, body.
pub async fn get_with_headers(
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, BTreeMap<String, String>, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let a = exchange(addr, request.as_bytes(), Duration::from_secs(60)).await?;
    Ok((a.status, a.headers, a.body))
}

/// `GET /` on the reference function: its invocation counter.
pub async fn count(port: u16, timeout: Duration) -> Result<u64> {
    let (status, body) = get(port, "/", timeout).await?;
    if status != 200 {
        bail!("GET / answered {status}: {body}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("GET / body is not JSON: {body:?}"))?;
    json.get("count")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("GET / body has no numeric \"count\": {body}"))
}

/// The reference function's counter in one of its JSON answers (`{"count": n, ...}`).
pub fn count_in(body: &str) -> Result<u64> {
    let v: serde_json::Value =
        serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?;
    v.get("count")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no count in {v}"))
}
