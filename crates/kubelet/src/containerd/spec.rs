//! The OCI runtime spec of one container, built from the pod's container and its image's
//! config the way Kubernetes does: the container's `command` replaces the image's
//! entrypoint and `args` its cmd; env is the image's, then the container's; the working
//! directory is the container's, else the image's. cpu and memory limits become cgroup
//! limits (cpu requests become shares), the container joins its pod's network namespace,
//! and runs in the cgroup `<parent>/<id>`, as the user its securityContext (or its pod's,
//! or its image) says, with the pod's volumes bind-mounted where it asks.

use std::collections::BTreeMap;

use flotilla_core::quantity::Quantity;
use flotilla_proto::api as pb;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, MountBuilder, Spec,
};

/// What the image says about how to run it (the `config` of its OCI config).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// The entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// The working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// `uid[:gid]` (numeric) to run as.
    #[serde(default)]
    pub user: Option<String>,
}

/// Where a container runs.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// The container's id (also its cgroup's name).
    pub id: String,
    /// The parent cgroup path (e.g. `/flotilla/<worker>`).
    pub cgroup_parent: String,
    /// The pod's network namespace; none for the host's.
    pub netns: Option<String>,
    /// The pod's hostname.
    pub hostname: String,
    /// Bind mounts: (path in the container, path on the node, read-only).
    pub mounts: Vec<(String, String, bool)>,
    /// The pod's security context (defaults for the container's).
    pub pod_security: Option<pb::PodSecurityContext>,
}

/// cpu period the cpu limit is expressed in (100 ms, as the kubelet uses).
const CPU_PERIOD: u64 = 100_000;

fn quantity(m: &BTreeMap<String, String>, name: &str, field: &str) -> Result<Option<Quantity>, String> {
    m.get(name).map(|q| Quantity::parse(q).map_err(|e| format!("{field}.{name}: {e}"))).transpose()
}

/// The process to run: argv, env, cwd.
pub fn process_args(c: &pb::Container, image: &ImageConfig) -> Result<Vec<String>, String> {
    let entry = image.entrypoint.clone().unwrap_or_default();
    let cmd = image.cmd.clone().unwrap_or_default();
    let argv: Vec<String> = match (c.command.is_empty(), c.args.is_empty()) {
        (false, _) => c.command.iter().chain(&c.args).cloned().collect(),
        (true, false) => entry.into_iter().chain(c.args.iter().cloned()).collect(),
        (true, true) => entry.into_iter().chain(cmd).collect(),
    };
    if argv.is_empty() {
        return Err("neither the container nor its image says what to run (command)".into());
    }
    Ok(argv)
}

/// The environment: the image's, overridden by the container's.
pub fn env(c: &pb::Container, image: &ImageConfig) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(n, _)| n == k) {
        Some(slot) => slot.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    if image.env.as_ref().is_none_or(|e| !e.iter().any(|kv| kv.starts_with("PATH="))) {
        set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    }
    for kv in image.env.iter().flatten() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    for e in &c.env {
        set(&e.name, &e.value);
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The uid and gid container `c` runs as: its securityContext's, else its pod's, else
/// its image's (numeric only), else root.
pub fn user(
    c: &pb::Container,
    field: &str,
    image: &ImageConfig,
    pod: Option<&pb::PodSecurityContext>,
) -> Result<(u32, u32), String> {
    let sc = c.security_context.as_ref();
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (us, gs) = u.split_once(':').unwrap_or((u, ""));
        uid = us.parse().map_err(|_| {
            format!("{field}: the image runs as user {u:?} by name; give securityContext.runAsUser (a uid)")
        })?;
        if !gs.is_empty() {
            gid = gs.parse().map_err(|_| {
                format!("{field}: the image's group {gs:?} is not numeric; give securityContext.runAsGroup")
            })?;
        }
    }
    let pick = |c: Option<i64>, p: Option<i64>| c.or(p).map(|v| u32::try_from(v).unwrap_or(u32::MAX));
    if let Some(u) = pick(sc.and_then(|s| s.run_as_user), pod.and_then(|p| p.run_as_user)) {
        uid = u;
    }
    if let Some(g) = pick(sc.and_then(|s| s.run_as_group), pod.and_then(|p| p.run_as_group)) {
        gid = g;
    }
    let non_root = sc.and_then(|s| s.run_as_non_root).or(pod.and_then(|p| p.run_as_non_root)).unwrap_or(false);
    if non_root && uid == 0 {
        return Err(format!("{field}.securityContext.runAsNonRoot: the container would run as root (uid 0)"));
    }
    Ok((uid, gid))
}

/// The runtime spec of container `c` (field path `field`, for messages) from its image.
pub fn build(c: &pb::Container, field: &str, image: &ImageConfig, at: &Placement) -> Result<Spec, String> {
    let mut spec = Spec::default();
    let argv = process_args(c, image).map_err(|e| format!("{field}: {e}"))?;
    let cwd = if !c.working_dir.is_empty() {
        c.working_dir.clone()
    } else {
        image.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into())
    };
    if !cwd.starts_with('/') {
        return Err(format!("{field}.workingDir: {cwd:?} is not an absolute path"));
    }
    let (uid, gid) = user(c, field, image, at.pod_security.as_ref())?;
    let mut process = spec.process().clone().unwrap_or_default();
    let mut u = process.user().clone();
    u.set_uid(uid);
    u.set_gid(gid);
    process.set_user(u);
    process.set_args(Some(argv));
    process.set_env(Some(env(c, image)));
    process.set_cwd(cwd.into());
    spec.set_process(Some(process));
    spec.set_hostname(Some(at.hostname.clone()));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path("rootfs".into());
    let read_only = c.security_context.as_ref().and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
    root.set_readonly(Some(read_only));
    spec.set_root(Some(root));
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (dest, source, ro) in &at.mounts {
        let options = vec!["rbind".to_string(), "rprivate".to_string(), if *ro { "ro" } else { "rw" }.to_string()];
        mounts.push(
            MountBuilder::default()
                .destination(dest)
                .source(source)
                .typ("bind")
                .options(options)
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    spec.set_mounts(Some(mounts));

    let none = BTreeMap::new();
    let limits = c.resources.as_ref().map_or(&none, |r| &r.limits);
    let requests = c.resources.as_ref().map_or(&none, |r| &r.requests);
    let lf = format!("{field}.resources.limits");
    let mut resources = LinuxResourcesBuilder::default().devices(vec![]);
    if let Some(mem) = quantity(limits, "memory", &lf)? {
        let bytes = i64::try_from(mem.units_ceil()).map_err(|_| format!("{lf}.memory: too large"))?;
        if bytes < 4 * 1024 * 1024 {
            return Err(format!("{lf}.memory: {bytes} bytes is below the 4Mi a container needs to start"));
        }
        let memory = LinuxMemoryBuilder::default().limit(bytes).swap(bytes).build().map_err(|e| e.to_string())?;
        resources = resources.memory(memory);
    }
    let cpu_limit = quantity(limits, "cpu", &lf)?;
    let cpu_request = quantity(requests, "cpu", &format!("{field}.resources.requests"))?.or(cpu_limit);
    let mut cpu = LinuxCpuBuilder::default();
    let mut any_cpu = false;
    if let Some(q) = cpu_limit {
        let millis = u64::try_from(q.millis()).map_err(|_| format!("{lf}.cpu: must be positive"))?.max(10);
        cpu = cpu.quota(i64::try_from(millis * CPU_PERIOD / 1000).unwrap_or(i64::MAX)).period(CPU_PERIOD);
        any_cpu = true;
    }
    if let Some(q) = cpu_request {
        // 1024 shares per core, at least 2 (the kernel's minimum).
        let millis = u64::try_from(q.millis()).unwrap_or(0);
        cpu = cpu.shares((millis * 1024 / 1000).max(2));
        any_cpu = true;
    }
    if any_cpu {
        resources = resources.cpu(cpu.build().map_err(|e| e.to_string())?);
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.build().map_err(|e| e.to_string())?));
    linux.set_cgroups_path(Some(format!("{}/{}", at.cgroup_parent.trim_end_matches('/'), at.id).into()));
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    if let Some(path) = &at.netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path.clone())
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> pb::Container {
        pb::Container { name: "main".into(), image: "busybox".into(), ..Default::default() }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "MODE=image".into()]),
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            working_dir: Some("/srv".into()),
            user: None,
        }
    }

    #[test]
    fn command_and_args_replace_the_images_entrypoint_and_cmd_as_kubernetes_does() {
        let mut c = container();
        assert_eq!(process_args(&c, &image()).expect("argv"), ["/entry", "serve"]);
        c.args = vec!["debug".into()];
        assert_eq!(process_args(&c, &image()).expect("argv"), ["/entry", "debug"]);
        c.command = vec!["sh".into(), "-c".into()];
        assert_eq!(process_args(&c, &image()).expect("argv"), ["sh", "-c", "debug"]);
        c.args.clear();
        assert_eq!(process_args(&c, &image()).expect("argv"), ["sh", "-c"]);
        assert!(process_args(&container(), &ImageConfig::default()).is_err(), "nothing to run");
    }

    #[test]
    fn the_containers_env_overrides_the_images() {
        let mut c = container();
        c.env = vec![pb::EnvVar { name: "MODE".into(), value: "pod".into() }];
        assert_eq!(env(&c, &image()), ["PATH=/bin", "MODE=pod"]);
        assert!(env(&c, &ImageConfig::default())[0].starts_with("PATH=/usr/local/sbin"), "a default PATH");
    }

    #[test]
    fn limits_become_cgroup_limits_and_the_pods_netns_is_joined() {
        let mut c = container();
        c.resources = Some(pb::ResourceRequirements {
            requests: BTreeMap::from([("cpu".into(), "250m".into())]),
            limits: BTreeMap::from([("memory".into(), "64Mi".into()), ("cpu".into(), "500m".into())]),
        });
        let at = Placement {
            id: "abc".into(),
            cgroup_parent: "/flotilla/w1".into(),
            netns: Some("/run/netns/p".into()),
            hostname: "web-0".into(),
            mounts: vec![("/data".into(), "/var/lib/w/pods/u/volumes/data".into(), true)],
            pod_security: None,
        };
        c.security_context = Some(pb::SecurityContext {
            run_as_user: Some(1000),
            read_only_root_filesystem: Some(true),
            ..Default::default()
        });
        let spec = build(&c, "spec.containers[0]", &image(), &at).expect("spec");
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(json["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(json["linux"]["cgroupsPath"], "/flotilla/w1/abc");
        assert_eq!(json["process"]["cwd"], "/srv");
        assert_eq!(json["hostname"], "web-0");
        let ns = json["linux"]["namespaces"].as_array().expect("namespaces");
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/run/netns/p"), "{ns:?}");
        assert!(ns.iter().any(|n| n["type"] == "pid"));
        assert_eq!(json["process"]["user"]["uid"], 1000);
        assert_eq!(json["root"]["readonly"], true);
        let data = json["mounts"].as_array().expect("mounts").iter().find(|m| m["destination"] == "/data").cloned();
        let data = data.expect("the volume's mount");
        assert_eq!(data["type"], "bind");
        assert!(data["options"].as_array().expect("options").iter().any(|o| o == "ro"), "{data}");
    }

    #[test]
    fn the_user_comes_from_the_container_then_the_pod_then_the_image() {
        let mut c = container();
        let mut img = image();
        assert_eq!(user(&c, "f", &img, None), Ok((0, 0)));
        img.user = Some("100:101".into());
        assert_eq!(user(&c, "f", &img, None), Ok((100, 101)));
        let pod = pb::PodSecurityContext { run_as_user: Some(200), ..Default::default() };
        assert_eq!(user(&c, "f", &img, Some(&pod)), Ok((200, 101)));
        c.security_context = Some(pb::SecurityContext { run_as_user: Some(300), ..Default::default() });
        assert_eq!(user(&c, "f", &img, Some(&pod)), Ok((300, 101)));
        img.user = Some("nginx".into());
        c.security_context = None;
        assert!(user(&c, "f", &img, None).expect_err("by name").contains("runAsUser"));
        let strict = pb::PodSecurityContext { run_as_non_root: Some(true), ..Default::default() };
        assert!(user(&container(), "f", &image(), Some(&strict)).expect_err("root").contains("runAsNonRoot"));
    }

    #[test]
    fn bad_limits_and_paths_are_refused_naming_the_field() {
        let mut c = container();
        c.resources = Some(pb::ResourceRequirements {
            limits: BTreeMap::from([("memory".into(), "lots".into())]),
            ..Default::default()
        });
        let at = Placement::default();
        let e = build(&c, "spec.containers[0]", &image(), &at).expect_err("bad quantity");
        assert!(e.starts_with("spec.containers[0].resources.limits.memory"), "{e}");
        c.resources = Some(pb::ResourceRequirements {
            limits: BTreeMap::from([("memory".into(), "1Ki".into())]),
            ..Default::default()
        });
        assert!(build(&c, "f", &image(), &at).expect_err("tiny").contains("4Mi"));
        let mut c = container();
        c.working_dir = "relative".into();
        assert!(build(&c, "f", &image(), &at).expect_err("relative").starts_with("f.workingDir"));
    }
}
