//! A pod's volumes on its node: an `emptyDir` is a directory under the worker's
//! `pods/<uid>/volumes/` (a tmpfs of its sizeLimit for `medium: Memory`), made with the
//! pod's sandbox and removed with it; a `hostPath` is the node's own path, checked or
//! created as its `type` says. Containers get them as bind mounts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_core::quantity::Quantity;
use flotilla_proto::api as pb;

use crate::KubeletError;

/// The volumes of one pod, as made.
#[derive(Debug, Default)]
pub struct Made {
    /// Name → path on the node.
    pub paths: BTreeMap<String, String>,
    /// tmpfs mounts made (to unmount).
    pub tmpfs: Vec<String>,
}

fn bad(msg: String) -> KubeletError {
    KubeletError::Unsupported(msg)
}

/// Makes pod volumes under `dir` (the pod's own directory).
pub fn setup(dir: &Path, volumes: &[pb::Volume]) -> Result<Made, KubeletError> {
    let mut made = Made::default();
    for (i, v) in volumes.iter().enumerate() {
        let f = format!("spec.volumes[{i}]");
        let path = match (&v.empty_dir, &v.host_path) {
            (Some(e), _) => {
                let p = dir.join("volumes").join(&v.name);
                std::fs::create_dir_all(&p).map_err(|err| KubeletError::io(&p, err))?;
                if e.medium == "Memory" {
                    let mut opts = "mode=1777".to_string();
                    if !e.size_limit.is_empty() {
                        let q = Quantity::parse(&e.size_limit)
                            .map_err(|err| bad(format!("{f}.emptyDir.sizeLimit: {err}")))?;
                        opts.push_str(&format!(",size={}", q.units_ceil()));
                    }
                    let already = std::fs::read_to_string("/proc/self/mounts")
                        .unwrap_or_default()
                        .lines()
                        .any(|l| l.split_whitespace().nth(1) == Some(&p.display().to_string()));
                    if !already {
                        nix::mount::mount(
                            Some("tmpfs"),
                            &p,
                            Some("tmpfs"),
                            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                            Some(opts.as_str()),
                        )
                        .map_err(|err| {
                            KubeletError::Runtime(format!("{f}: mounting a tmpfs on {}: {err}", p.display()))
                        })?;
                    }
                    made.tmpfs.push(p.display().to_string());
                } else {
                    // Writable by whatever user the containers run as.
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
                        .map_err(|err| KubeletError::io(&p, err))?;
                }
                p
            }
            (None, Some(h)) => {
                let p = PathBuf::from(&h.path);
                match h.r#type.as_str() {
                    "DirectoryOrCreate" => std::fs::create_dir_all(&p).map_err(|err| KubeletError::io(&p, err))?,
                    "Directory" if !p.is_dir() => {
                        return Err(bad(format!("{f}.hostPath: {} is not a directory on this node", h.path)));
                    }
                    "FileOrCreate" if !p.exists() => {
                        if let Some(parent) = p.parent() {
                            std::fs::create_dir_all(parent).map_err(|err| KubeletError::io(parent, err))?;
                        }
                        std::fs::write(&p, b"").map_err(|err| KubeletError::io(&p, err))?;
                    }
                    "File" if !p.is_file() => {
                        return Err(bad(format!("{f}.hostPath: {} is not a file on this node", h.path)));
                    }
                    _ => {}
                }
                p
            }
            (None, None) => return Err(bad(format!("{f}: no source"))),
        };
        made.paths.insert(v.name.clone(), path.display().to_string());
    }
    Ok(made)
}

/// Removes what [`setup`] made under `dir` (tmpfs unmounted first); hostPaths stay.
pub fn teardown(dir: &Path, tmpfs: &[String]) -> Result<(), KubeletError> {
    for t in tmpfs {
        match nix::mount::umount2(Path::new(t), nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(KubeletError::Runtime(format!("unmounting {t}: {e}"))),
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(KubeletError::io(dir, e)),
    }
}

/// The node path a mount binds: its volume's path, and its subPath in it (made if
/// missing, for an emptyDir).
pub fn source(paths: &BTreeMap<String, String>, field: &str, m: &pb::VolumeMount) -> Result<String, KubeletError> {
    let base =
        paths.get(&m.name).ok_or_else(|| bad(format!("{field}.name: {:?} is not a volume of the pod", m.name)))?;
    if m.sub_path.is_empty() {
        return Ok(base.clone());
    }
    if m.sub_path.starts_with('/') || m.sub_path.split('/').any(|p| p == "..") {
        return Err(bad(format!("{field}.subPath: {:?} must be relative, without '..'", m.sub_path)));
    }
    let p = Path::new(base).join(&m.sub_path);
    if !p.exists() {
        std::fs::create_dir_all(&p).map_err(|e| KubeletError::io(&p, e))?;
    }
    Ok(p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dirs_are_made_and_removed_and_host_paths_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("pod");
        let host = dir.path().join("host");
        let vols = vec![
            pb::Volume { name: "scratch".into(), empty_dir: Some(Default::default()), ..Default::default() },
            pb::Volume {
                name: "data".into(),
                host_path: Some(pb::HostPathVolumeSource {
                    path: host.display().to_string(),
                    r#type: "DirectoryOrCreate".into(),
                }),
                ..Default::default()
            },
        ];
        let made = setup(&pod, &vols).expect("setup");
        assert!(Path::new(&made.paths["scratch"]).is_dir());
        assert!(host.is_dir(), "DirectoryOrCreate made it");
        let m = pb::VolumeMount { name: "scratch".into(), sub_path: "a/b".into(), ..Default::default() };
        let src = source(&made.paths, "f", &m).expect("source");
        assert!(src.ends_with("scratch/a/b") && Path::new(&src).is_dir());
        let bad_mount = pb::VolumeMount { name: "scratch".into(), sub_path: "../x".into(), ..Default::default() };
        assert!(source(&made.paths, "f", &bad_mount).is_err());
        teardown(&pod, &made.tmpfs).expect("teardown");
        assert!(!pod.exists() && host.is_dir(), "the emptyDir goes, the hostPath stays");
        let missing = vec![pb::Volume {
            name: "x".into(),
            host_path: Some(pb::HostPathVolumeSource { path: "/nonexistent/x".into(), r#type: "Directory".into() }),
            ..Default::default()
        }];
        let e = setup(&pod, &missing).expect_err("missing");
        assert!(e.to_string().contains("spec.volumes[0].hostPath"), "{e}");
    }
}
