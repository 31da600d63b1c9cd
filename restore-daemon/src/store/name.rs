//! Image names: untrusted (they come from the socket and from archives) and used as
//! directory names, so strictly `[a-zA-Z0-9][a-zA-Z0-9._-]{0,127}`, never `..`.

use super::Error;

/// Longest image name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks an image name; the error says what is wrong with it.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "invalid image name {name:?}: {why} (allowed: [a-zA-Z0-9][a-zA-Z0-9._-]{{0,127}})"
        )))
    };
    let Some(first) = name.bytes().next() else {
        return bad("empty");
    };
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} bytes"));
    }
    if !first.is_ascii_alphanumeric() {
        return bad("must start with a letter or digit");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!("contains {c:?}"));
    }
    if name.contains("..") {
        return bad("contains \"..\"");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in [
            "a",
            "hello-fn",
            "hello_fn.v2",
            "0",
            "Fn-1.2.3",
            &"x".repeat(128),
        ] {
            validate_name(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn bad_names_fail_with_the_reason() {
        for (name, why) in [
            ("", "empty"),
            (".hidden", "must start"),
            ("-x", "must start"),
            ("_x", "must start"),
            ("..", "must start"),
            ("a..b", "\"..\""),
            ("a/b", "'/'"),
            ("/etc", "must start"),
            ("a b", "' '"),
            ("a\0b", "'\\0'"),
            ("é", "must start"),
            ("aé", "'é'"),
            (&"x".repeat(129), "longer than 128"),
        ] {
            let e = validate_name(name).unwrap_err().to_string();
            assert!(e.contains(why), "{name:?}: {e}");
            assert!(e.starts_with("invalid image name"), "{e}");
        }
    }
}
