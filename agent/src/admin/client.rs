//! A client of the admin API (the `rekindle` CLI's): one HTTP/1.1 request per
//! connection on the unix socket.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::{
    CheckpointDone, CheckpointRequest, ErrorBody, FunctionStatus, InvokeDone, InvokeRequest,
    NodeStatus, Removed,
};

/// Why a request to the agent failed; the messages name the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "rekindle-agent is not running on {socket} ({source}): start it (`systemctl start \
         rekindle-agent`, or `rekindle-agent --admin-socket {socket}`), or pass the socket \
         its admin_socket names with --socket"
    )]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "permission denied on {socket}: rekindle-agent's admin API is root only; run \
         rekindle as root (sudo rekindle ...)"
    )]
    PermissionDenied { socket: PathBuf },
    /// The agent answered with an error.
    #[error("rekindle-agent refused: {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to rekindle-agent on {socket}: {message}")]
    Protocol { socket: PathBuf, message: String },
}

impl ClientError {
    /// The CLI's exit status: 69 (EX_UNAVAILABLE) when the agent cannot be reached, 1
    /// when it refused or failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } | ClientError::PermissionDenied { .. } => {
                crate::EXIT_UNAVAILABLE
            }
            ClientError::Refused { .. } | ClientError::Protocol { .. } => 1,
        }
    }
}

/// A client of the agent's admin socket. Holds no connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// Percent-encodes a path segment (function names are `[A-Za-z0-9._-]`, so this only
/// matters for names the agent will refuse anyway).
fn segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.call(Method::GET, "/v1/status", None).await
    }

    pub async fn functions(&self) -> Result<Vec<FunctionStatus>, ClientError> {
        self.call(Method::GET, "/v1/functions", None).await
    }

    /// Registers a function: `table` has the keys of a `[[function]]` table.
    pub async fn add_function(
        &self,
        table: &serde_json::Value,
    ) -> Result<FunctionStatus, ClientError> {
        self.call(Method::POST, "/v1/functions", Some(table.to_string()))
            .await
    }

    pub async fn remove_function(&self, name: &str) -> Result<Removed, ClientError> {
        let path = format!("/v1/functions/{}", segment(name));
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn checkpoint(
        &self,
        name: &str,
        req: &CheckpointRequest,
    ) -> Result<CheckpointDone, ClientError> {
        let path = format!("/v1/functions/{}/checkpoint", segment(name));
        self.call(Method::POST, &path, Some(self.encode(req)?))
            .await
    }

    pub async fn invoke(&self, name: &str, req: &InvokeRequest) -> Result<InvokeDone, ClientError> {
        let path = format!("/v1/functions/{}/invoke", segment(name));
        self.call(Method::POST, &path, Some(self.encode(req)?))
            .await
    }

    fn encode<T: serde::Serialize>(&self, v: &T) -> Result<String, ClientError> {
        serde_json::to_string(v).map_err(|e| self.protocol(format!("cannot encode: {e}")))
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol {
            socket: self.socket.clone(),
            message,
        }
    }

    /// One request; a 2xx answer's JSON body as `T`, any other as [`ClientError::Refused`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        let stream = match tokio::net::UnixStream::connect(&self.socket).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ClientError::PermissionDenied {
                    socket: self.socket.clone(),
                })
            }
            Err(e) => {
                return Err(ClientError::NotRunning {
                    socket: self.socket.clone(),
                    source: e,
                })
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(format!("HTTP handshake: {e}")))?;
        let conn = tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "rekindle-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(format!("bad request {method} {path}: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(format!("{method} {path}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(format!("reading the answer to {method} {path}: {e}")))?
            .to_bytes();
        conn.abort();
        tracing::debug!(%method, path, status, bytes = bytes.len(), "admin API");
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                self.protocol(format!(
                    "{method} {path}: unexpected answer ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                ))
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => ClientError::Refused {
                status,
                code: b.error.code,
                message: b.error.message,
            },
            Err(_) => ClientError::Refused {
                status,
                code: "http".into(),
                message: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes).trim()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("hello-fn_1.2"), "hello-fn_1.2");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn a_missing_socket_says_how_to_start_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let e = Client::new(&socket).status().await.unwrap_err();
        assert_eq!(e.exit_code(), crate::EXIT_UNAVAILABLE);
        let m = e.to_string();
        assert!(m.contains(&socket.display().to_string()), "{m}");
        assert!(m.contains("systemctl start rekindle-agent"), "{m}");
        assert!(m.contains("--socket"), "{m}");
    }
}
