//! `--config-file` for `flotilla worker` and `flotilla proxy`: a YAML mapping of flag
//! names (without the dashes) to values, read before the command line is parsed and
//! turned into flags placed ahead of it, so that the command line wins and every setting
//! is checked exactly as its flag is (an unknown name is refused naming it).
//!
//! ```yaml
//! masters: [10.0.0.1:2379, 10.0.0.2:2379, 10.0.0.3:2379]
//! node-ip: 10.0.1.5
//! cluster-cidr: 10.244.0.0/16
//! disable-lb-announce: false
//! ```

use std::ffi::OsString;

use anyhow::{bail, Context};

/// The subcommands whose `--config-file` is read here (the master reads its own).
pub const COMMANDS: [&str; 2] = ["worker", "proxy"];

fn scalar(key: &str, v: &serde_yaml::Value) -> anyhow::Result<String> {
    Ok(match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        _ => bail!("{key}: expected a string, a number or a list of them"),
    })
}

/// The flags a config file stands for; every key must be one of `known` (the command's
/// long flag names), whatever its value.
pub fn flags(text: &str, known: &[String]) -> anyhow::Result<Vec<OsString>> {
    let map: serde_yaml::Mapping = match serde_yaml::from_str::<Option<serde_yaml::Mapping>>(text)? {
        Some(m) => m,
        None => return Ok(Vec::new()),
    };
    let mut out = Vec::new();
    for (k, v) in &map {
        let key = k.as_str().context("every key must be a flag name (a string)")?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            bail!("{key:?} is not a flag name (lowercase, digits and dashes, as the flag without its `--`)");
        }
        if key == "config-file" {
            bail!("config-file: a config file cannot name another");
        }
        if !known.iter().any(|k| k == key) {
            bail!("{key}: no such flag (--{key})");
        }
        match v {
            serde_yaml::Value::Bool(true) => out.push(OsString::from(format!("--{key}"))),
            serde_yaml::Value::Bool(false) | serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(items) => {
                let parts: Vec<String> = items.iter().map(|i| scalar(key, i)).collect::<anyhow::Result<_>>()?;
                out.push(OsString::from(format!("--{key}={}", parts.join(","))));
            }
            other => out.push(OsString::from(format!("--{key}={}", scalar(key, other)?))),
        }
    }
    Ok(out)
}

/// `argv` with the `--config-file FILE` of a worker or proxy replaced by the flags in it
/// (placed right after the subcommand, before the command line's own); `known` gives a
/// subcommand's long flag names.
pub fn expand(argv: Vec<OsString>, known: impl Fn(&str) -> Vec<String>) -> anyhow::Result<Vec<OsString>> {
    let Some(cmd) = argv.get(1).and_then(|a| a.to_str()) else { return Ok(argv) };
    if !COMMANDS.contains(&cmd) {
        return Ok(argv);
    }
    let mut rest: Vec<OsString> = Vec::new();
    let mut file: Option<String> = None;
    let mut it = argv[2..].iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--config-file") => {
                let v = it.next().context("--config-file needs a FILE")?;
                file = Some(v.to_string_lossy().into_owned());
            }
            Some(s) if s.starts_with("--config-file=") => file = Some(s["--config-file=".len()..].to_string()),
            _ => rest.push(a.clone()),
        }
    }
    let Some(path) = file else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read --config-file {path}"))?;
    let from_file = flags(&text, &known(cmd)).with_context(|| format!("--config-file {path}"))?;
    let mut out = vec![argv[0].clone(), argv[1].clone()];
    out.extend(from_file);
    out.extend(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(_cmd: &str) -> Vec<String> {
        ["masters", "node-ip", "max-pods", "disable-proxy", "disable-dns", "labels", "config-file"]
            .map(String::from)
            .to_vec()
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_config_file_becomes_flags_ahead_of_the_command_line() {
        let text = "masters: [a:1, b:2]\nnode-ip: 10.0.0.5\nmax-pods: 20\ndisable-proxy: true\ndisable-dns: false\n";
        assert_eq!(
            strs(&flags(text, &known("worker")).expect("valid")),
            ["--masters=a:1,b:2", "--node-ip=10.0.0.5", "--max-pods=20", "--disable-proxy"]
        );
        let dir = std::env::temp_dir().join(format!("flotilla-cfg-{}", std::process::id()));
        std::fs::write(&dir, text).expect("write");
        let argv: Vec<OsString> =
            ["flotilla", "worker", "--config-file", &dir.display().to_string(), "--max-pods", "30"]
                .map(OsString::from)
                .to_vec();
        let out = strs(&expand(argv, known).expect("expanded"));
        assert_eq!(out[..2], ["flotilla", "worker"]);
        assert_eq!(out[out.len() - 2..], ["--max-pods", "30"], "the command line last, so it wins");
        let _ = std::fs::remove_file(&dir);
        let master: Vec<OsString> = ["flotilla", "master", "--config-file", "x"].map(OsString::from).to_vec();
        assert_eq!(expand(master.clone(), known).expect("untouched"), master, "the master reads its own");
    }

    #[test]
    fn bad_config_files_are_refused_naming_what_is_wrong() {
        let k = known("worker");
        assert!(flags("Node_IP: x", &k).expect_err("bad name").to_string().contains("Node_IP"));
        assert!(flags("labels: {a: b}", &k).expect_err("a map").to_string().contains("labels"));
        assert!(flags("config-file: other.yaml", &k).expect_err("nested").to_string().contains("config-file"));
        assert!(flags("node-ipp: false", &k).expect_err("unknown").to_string().contains("--node-ipp"), "even when off");
        assert!(flags("node-ipp:", &k).expect_err("unknown").to_string().contains("--node-ipp"), "even when empty");
        assert!(flags("- a\n- b", &k).is_err(), "not a mapping");
        assert!(flags("", &k).expect("empty").is_empty());
    }
}
