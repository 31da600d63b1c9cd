//! The shim's one error type, named after what the caller can do about it,
//! and its single mapping to ttrpc status codes (which containerd turns into
//! its errdefs: `NotFound`, `AlreadyExists`, ...).

use containerd_shim::protos::ttrpc::{self, Code};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such container, exec or process (already gone).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The request itself is malformed: bad options, spec or stdio URI.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is fine but the task is in the wrong state for it, or the
    /// node lacks something it needs (for example the runc binary).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not supported by containerd-shim-rekindle-v2 yet")]
    Unimplemented(String),
    /// The OCI runtime (runc) failed; `message` is its own last error line.
    #[error("{action} failed: {message}")]
    Runtime { action: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Errors from the containerd-shim toolkit (mounts, cgroups, fifos).
    #[error(transparent)]
    Shim(#[from] containerd_shim::Error),
}

impl Error {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Runtime { .. } | Error::Io { .. } => Code::UNKNOWN,
            Error::Shim(e) => match e {
                containerd_shim::Error::NotFoundError(_) => Code::NOT_FOUND,
                containerd_shim::Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
                containerd_shim::Error::FailedPreconditionError(_) => Code::FAILED_PRECONDITION,
                containerd_shim::Error::Unimplemented(_) => Code::UNIMPLEMENTED,
                _ => Code::UNKNOWN,
            },
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_the_grpc_code_containerd_expects() {
        let cases = [
            (Error::NotFound("container x".into()), Code::NOT_FOUND),
            (Error::AlreadyExists("exec e".into()), Code::ALREADY_EXISTS),
            (Error::InvalidArgument("bad".into()), Code::INVALID_ARGUMENT),
            (
                Error::FailedPrecondition("not running".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::Unimplemented("update".into()), Code::UNIMPLEMENTED),
            (
                Error::Runtime {
                    action: "runc create".into(),
                    message: "boom".into(),
                },
                Code::UNKNOWN,
            ),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(status) => {
                    assert_eq!(status.code(), code);
                    assert_eq!(status.message(), msg);
                }
                other => panic!("expected an RPC status, got {other:?}"),
            }
        }
    }

    #[test]
    fn toolkit_errors_keep_their_meaning() {
        let err = Error::from(containerd_shim::Error::NotFoundError("gone".into()));
        assert_eq!(err.code(), Code::NOT_FOUND);
    }
}
