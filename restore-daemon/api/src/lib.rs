//! `rekindle-restore-api`: how the shim, the agent and the `rekindle` CLI talk to
//! `rekindle-restored`.
//!
//! Protocol: a unix socket (default [`DEFAULT_SOCKET`], root-only), **one request per
//! connection**, newline-delimited JSON. The request is an object with the protocol
//! version `v` ([`PROTOCOL_VERSION`]), the operation `op` and its fields ([`Op`]); the
//! response is `{"ok": <body>}` or `{"error": {"code": <ErrorCode>, "message": "..."}}`
//! ([`Response`]). A request of another version is refused with `invalid_argument` and a
//! message naming both versions.
//!
//! This crate is linked by the shim, which runs once per container on the restore's
//! critical path: it depends on serde, serde_json, tokio (net, io-util) and thiserror only.

pub mod client;
pub mod proto;

pub use client::{Client, Error};
pub use proto::*;
