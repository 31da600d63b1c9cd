//! The OCI annotations the shim understands. Annotations come from pod specs
//! and API clients: untrusted input, bounded and validated here, with errors
//! that name the annotation.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Restore the container from this image in `rekindle-restored` instead of
/// cold-starting it.
pub const IMAGE: &str = "io.rekindle.image";
/// What to do when a restore fails: `cold` (start the container normally,
/// counted and logged) or `none` (fail the start; the default).
pub const FALLBACK: &str = "io.rekindle.fallback";
/// After a Checkpoint, also store the image in `rekindle-restored` under this name.
pub const STORE_AS: &str = "io.rekindle.checkpoint.store-as";
/// `true`: a checkpoint stored under [`STORE_AS`] replaces an image of that name
/// (in one step: restores find the old image or the new); `false` (the default):
/// it is refused with `already exists`, and the checkpoint stays where CRIU wrote it.
pub const REPLACE: &str = "io.rekindle.checkpoint.replace";

const MAX_NAME: usize = 128;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Fail the start: the caller asked for a restore, not for a cold start.
    #[default]
    None,
    /// Cold-start the container when its restore fails.
    Cold,
}

/// What a container's annotations ask of restores and checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestorePolicy {
    pub image: Option<String>,
    pub fallback: Fallback,
    pub store_as: Option<String>,
    pub replace: bool,
}

impl RestorePolicy {
    pub fn from_annotations(annotations: Option<&HashMap<String, String>>) -> Result<Self> {
        let Some(a) = annotations else {
            return Ok(Self::default());
        };
        let fallback = match a.get(FALLBACK).map(|s| s.trim()) {
            None | Some("") | Some("none") => Fallback::None,
            Some("cold") => Fallback::Cold,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "annotation {FALLBACK}={other:?}: expected \"cold\" or \"none\""
                )))
            }
        };
        let replace = match a.get(REPLACE).map(|s| s.trim()) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(Error::InvalidArgument(format!(
                    "annotation {REPLACE}={:?}: expected \"true\" or \"false\"",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        Ok(Self {
            image: image_name(a, IMAGE)?,
            fallback,
            store_as: image_name(a, STORE_AS)?,
            replace,
        })
    }
}

/// An image name as rekindle-restored accepts it: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
fn image_name(a: &HashMap<String, String>, key: &str) -> Result<Option<String>> {
    let Some(v) = a.get(key) else {
        return Ok(None);
    };
    let ok = !v.is_empty()
        && v.len() <= MAX_NAME
        && v.as_bytes()[0].is_ascii_alphanumeric()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        && !v.contains("..");
    if !ok {
        return Err(Error::InvalidArgument(format!(
            "annotation {key}={:?}: an image name is 1-{MAX_NAME} characters of [A-Za-z0-9._-], starting with a letter or digit",
            v.chars().take(MAX_NAME + 8).collect::<String>()
        )));
    }
    Ok(Some(v.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_annotations_mean_no_restore_and_no_fallback() {
        assert_eq!(
            RestorePolicy::from_annotations(None).unwrap(),
            RestorePolicy::default()
        );
        let p = RestorePolicy::from_annotations(Some(&ann(&[("other", "x")]))).unwrap();
        assert_eq!(p, RestorePolicy::default());
    }

    #[test]
    fn a_restore_with_cold_fallback_is_understood() {
        let p = RestorePolicy::from_annotations(Some(&ann(&[
            (IMAGE, "python-fn.v1"),
            (FALLBACK, "cold"),
            (STORE_AS, "python-fn_2"),
        ])))
        .unwrap();
        assert_eq!(p.image.as_deref(), Some("python-fn.v1"));
        assert_eq!(p.fallback, Fallback::Cold);
        assert_eq!(p.store_as.as_deref(), Some("python-fn_2"));
        assert!(!p.replace, "a stored image is replaced only when asked");
        let p = RestorePolicy::from_annotations(Some(&ann(&[
            (STORE_AS, "python-fn_2"),
            (REPLACE, "true"),
        ])))
        .unwrap();
        assert!(p.replace);
    }

    #[test]
    fn hostile_values_are_rejected_with_the_annotation_named() {
        let long = "a".repeat(200);
        for (k, v) in [
            (IMAGE, "../etc/passwd"),
            (IMAGE, "a/b"),
            (IMAGE, ""),
            (IMAGE, ".hidden"),
            (IMAGE, long.as_str()),
            (STORE_AS, "x y"),
            (FALLBACK, "warm"),
            (REPLACE, "yes"),
        ] {
            let err = RestorePolicy::from_annotations(Some(&ann(&[(k, v)]))).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{k}={v}");
            assert!(err.to_string().contains(k), "{err}");
            assert!(err.to_string().len() < 400, "bounded message: {err}");
        }
    }
}
