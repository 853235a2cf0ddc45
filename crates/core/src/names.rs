//! Syntax rules for names, label keys and values, and ports, as Kubernetes defines them.
//!
//! Each check returns `Err(reason)` with a short human reason; the caller adds the field
//! path (`metadata.name: ...`).

/// Longest DNS-1123 label (a namespace, a service, a container name).
pub const MAX_LABEL_NAME: usize = 63;
/// Longest DNS-1123 subdomain (most object names).
pub const MAX_SUBDOMAIN: usize = 253;

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: at most 63 characters of `a-z`, `0-9` and `-`, starting and ending
/// with a letter or digit.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_LABEL_NAME {
        return Err(format!("must be no more than {MAX_LABEL_NAME} characters (is {})", s.len()));
    }
    let b = s.as_bytes();
    if !b.iter().all(|&c| is_alnum_lower(c) || c == b'-') || !is_alnum_lower(b[0]) || !is_alnum_lower(b[b.len() - 1]) {
        return Err(format!(
            "{s:?} must consist of lower case letters, digits and '-', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, DNS-1123 labels joined by dots.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > MAX_SUBDOMAIN {
        return Err(format!("must be no more than {MAX_SUBDOMAIN} characters (is {})", s.len()));
    }
    if s.split('.').any(|part| dns1123_label(part).is_err()) {
        return Err(format!(
            "{s:?} must consist of lower case letters, digits, '-' and '.', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// The name part of a label key, or a label value: at most 63 characters of letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_NAME
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A path segment name (Kubernetes' rule for RBAC objects, whose names hold colons, as
/// `system:node-proxier`): 1-253 characters, none of `/` or `%`, and not `.` or `..`.
pub fn path_segment(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} must be 1 to 253 characters"));
    }
    if s == "." || s == ".." || s.contains('/') || s.contains('%') || s.contains(char::is_control) {
        return Err(format!("{s:?} may not be . or .. nor hold /, % or control characters"));
    }
    Ok(())
}

/// A label or annotation key: `name` or `prefix/name`, where the prefix is a DNS-1123
/// subdomain and the name a qualified name.
pub fn label_key(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix of key {s:?}: {e}"))?;
    }
    if !qualified_name_part(name) {
        return Err(format!(
            "key {s:?}: the name part must be 1-63 characters of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A label value: empty, or a qualified name part.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_name_part(s) {
        Ok(())
    } else {
        Err(format!(
            "value {s:?} must be at most 63 characters of letters, digits, '-', '_' and '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// A TCP/UDP port number: 1 to 65535.
pub fn port(p: i32) -> Result<(), String> {
    if (1..=65535).contains(&p) {
        Ok(())
    } else {
        Err(format!("{p} is not a valid port (1-65535)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels_table() {
        for ok in ["a", "web", "web-1", "0abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-web", "web-", "we_b", "web.x", &"a".repeat(64)] {
            assert!(dns1123_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dns1123_subdomains_table() {
        for ok in ["a", "web.example.com", "x-1.y"] {
            assert!(dns1123_subdomain(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "A.b", &"a".repeat(254)] {
            assert!(dns1123_subdomain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values_table() {
        for ok in ["app", "app.kubernetes.io/name", "A_b.c-d", "x/Y"] {
            assert!(label_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/app", "app/", "-app", "UPPER.example/x", "a/b/c", &"a".repeat(64)] {
            assert!(label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v1", "a.b_c-d"] {
            assert!(label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-v", "v-", "a b", "ä", &"a".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_table() {
        assert!(port(1).is_ok() && port(65535).is_ok());
        assert!(port(0).is_err() && port(65536).is_err() && port(-1).is_err());
    }
}
