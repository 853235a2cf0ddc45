//! Joining Prometheus/OpenMetrics text expositions of several registries into one: every
//! part but the last loses its closing `# EOF`, so the whole has exactly one, at the end.

/// The expositions in `parts`, as one.
pub fn join<I: IntoIterator<Item = String>>(parts: I) -> String {
    let mut out = String::new();
    for p in parts {
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out.truncate(body.len());
        }
        out.push_str(&p);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_expositions_become_one_with_one_eof() {
        let a = "# TYPE a counter\na_total 1\n# EOF\n".to_string();
        let b = "# TYPE b gauge\nb 2\n# EOF\n".to_string();
        let joined = super::join([a, b]);
        assert_eq!(joined, "# TYPE a counter\na_total 1\n# TYPE b gauge\nb 2\n# EOF\n");
        assert_eq!(super::join(Vec::<String>::new()), "");
    }
}
