//! The `process` runtime: each container is a process on the host, for development and
//! tests without root. It runs the container's `command` and `args` with its `env` and
//! `workingDir`, on the host's network (the pod's address is the node's). It refuses what
//! it cannot do — a container without a `command` (it cannot run an image's entrypoint:
//! images are not pulled), resource limits, host ports — with a message naming the field.
//!
//! Every container runs under a shim (`flotilla process-shim`, [`run_shim`]), in its own
//! process group, as containerd runs each container under its shim: the shim writes the
//! container's output to a file, records its pid, start time and exit status in the
//! container's directory, and outlives the worker — so a worker killed and restarted
//! finds its containers still running and adopts them from those files.
//!
//! Layout: `<dir>/containers/<id>/` with `meta.json` (pod uid, name, attempt), `pid`,
//! `started`, `exit` (written last, atomically) and `log`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, SystemTime};

use flotilla_proto::api as pb;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::runtime::{ContainerInfo, ContainerSpec, Runtime, State};
use crate::KubeletError;

#[derive(Serialize, Deserialize)]
struct Meta {
    pod_uid: String,
    name: String,
    attempt: u32,
    /// The container's environment and working directory (for exec).
    #[serde(default)]
    env: Vec<(String, String)>,
    #[serde(default)]
    working_dir: String,
    /// The machine's boot when it started: after a reboot its pids mean nothing.
    #[serde(default)]
    boot_id: String,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
struct Exit {
    code: i32,
    signal: Option<i32>,
    finished_at: String,
}

/// Host processes under a shim each.
pub struct ProcessRuntime {
    dir: PathBuf,
    shim: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

fn parse_stamp(s: &str) -> SystemTime {
    humantime::parse_rfc3339(s.trim()).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl ProcessRuntime {
    /// A runtime keeping its containers under `dir`, starting each with the shim binary
    /// `shim` (the `flotilla` binary itself).
    pub fn new(dir: &Path, shim: &Path) -> Result<ProcessRuntime, KubeletError> {
        let dir = dir.join("containers");
        std::fs::create_dir_all(&dir).map_err(|e| KubeletError::io(&dir, e))?;
        Ok(ProcessRuntime { dir, shim: shim.to_path_buf() })
    }

    fn read(&self, id: &str) -> Option<ContainerInfo> {
        let d = self.dir.join(id);
        let meta: Meta = serde_json::from_slice(&std::fs::read(d.join("meta.json")).ok()?).ok()?;
        // `exit` before `started`: the shim writes `started` first, so an exit read here
        // always comes with its start.
        let exit: Option<Exit> = std::fs::read(d.join("exit")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let started_at = std::fs::read_to_string(d.join("started")).map(|s| parse_stamp(&s)).ok();
        let rebooted = meta.boot_id != boot_id();
        let alive = !rebooted && (self.shim_alive(&d) || self.group_alive(id));
        // The shim may have written `exit` and gone since it was read.
        let exit = exit.or_else(|| {
            (!alive).then(|| std::fs::read(d.join("exit")).ok().and_then(|b| serde_json::from_slice(&b).ok()))?
        });
        let state = match (exit, started_at) {
            (Some(e), s) => State::Exited {
                code: e.code,
                signal: e.signal,
                started_at: s.unwrap_or(SystemTime::UNIX_EPOCH),
                finished_at: parse_stamp(&e.finished_at),
                oom_killed: false,
            },
            (None, Some(s)) if alive => State::Running { started_at: s },
            // Neither the shim nor the container is there, and nothing was recorded (the
            // machine rebooted, or both were killed): how it ended is unknown.
            (None, s) if !alive => State::Exited {
                code: 255,
                signal: None,
                started_at: s.unwrap_or(SystemTime::UNIX_EPOCH),
                finished_at: s.unwrap_or(SystemTime::UNIX_EPOCH),
                oom_killed: false,
            },
            // Still starting.
            (None, _) => State::Running { started_at: SystemTime::now() },
        };
        Some(ContainerInfo {
            id: id.to_string(),
            pod_uid: meta.pod_uid,
            name: meta.name,
            attempt: meta.attempt,
            state,
            log: d.join("log"),
        })
    }

    fn shim_alive(&self, d: &Path) -> bool {
        let Some(pid) = std::fs::read_to_string(d.join("shim.pid")).ok().and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return false;
        };
        // Signal 0: only whether the process exists.
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    fn child_group(&self, id: &str) -> Option<Pid> {
        let pid = std::fs::read_to_string(self.dir.join(id).join("pid")).ok()?;
        pid.trim().parse::<i32>().ok().map(Pid::from_raw)
    }

    /// Whether the container's process group still has a process (the shim may be gone
    /// while the container runs on).
    fn group_alive(&self, id: &str) -> bool {
        self.child_group(id).is_some_and(|g| killpg(g, None).is_ok())
    }

    fn exited(&self, id: &str) -> bool {
        let d = self.dir.join(id);
        d.join("exit").exists() || (!self.shim_alive(&d) && !self.group_alive(id))
    }
}

impl Runtime for ProcessRuntime {
    fn version(&self) -> String {
        format!("process://flotilla-{}", env!("CARGO_PKG_VERSION"))
    }

    fn check(&self, spec: &pb::PodSpec) -> Result<(), String> {
        for (i, c) in spec.containers.iter().enumerate() {
            let f = format!("spec.containers[{i}]");
            if c.command.is_empty() {
                return Err(format!(
                    "{f}.command: the process runtime runs a command on the host and does not pull images; \
                     give the container a command"
                ));
            }
            if c.resources.as_ref().is_some_and(|r| !r.limits.is_empty()) {
                return Err(format!("{f}.resources.limits: the process runtime cannot enforce limits"));
            }
            if !c.volume_mounts.is_empty() {
                return Err(format!("{f}.volumeMounts: the process runtime has no volumes"));
            }
            if c.security_context.is_some() {
                return Err(format!("{f}.securityContext: the process runtime runs everything as the worker's user"));
            }
            if c.ports.iter().any(|p| p.host_port != 0) {
                return Err(format!("{f}.ports: the process runtime has no port mapping (hostPort)"));
            }
        }
        Ok(())
    }

    async fn sandbox(&self, pod: &crate::runtime::PodSandbox) -> Result<String, KubeletError> {
        Ok(pod.node_ip.clone())
    }

    async fn remove_sandbox(&self, _: &str) -> Result<(), KubeletError> {
        Ok(())
    }

    fn sandboxes(&self) -> Vec<String> {
        Vec::new()
    }

    fn pod_network(&self) -> bool {
        false
    }

    async fn pull(&self, _: &pb::Container) -> Result<bool, KubeletError> {
        Ok(false)
    }

    async fn start(&self, c: &ContainerSpec) -> Result<String, KubeletError> {
        let id = format!("{}-{}-{}", c.pod_uid, c.container.name, c.attempt);
        let d = self.dir.join(&id);
        std::fs::create_dir_all(&d).map_err(|e| KubeletError::io(&d, e))?;
        let mut cmd = Command::new(&self.shim);
        cmd.arg("process-shim").arg("--dir").arg(&d).arg("--");
        cmd.args(&c.container.command).args(&c.container.args);
        cmd.env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        for e in &c.container.env {
            cmd.env(&e.name, &e.value);
        }
        if !c.container.working_dir.is_empty() {
            cmd.current_dir(&c.container.working_dir);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // Its own process group: a signal to the worker's group does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| KubeletError::Runtime(format!("starting the shim for {}: {e}", c.pod)))?;
        write_atomic(&d.join("shim.pid"), child.id().to_string().as_bytes()).map_err(|e| KubeletError::io(&d, e))?;
        // Written last: a container is listed only once its shim's pid is known.
        let meta = Meta {
            pod_uid: c.pod_uid.clone(),
            name: c.container.name.clone(),
            attempt: c.attempt,
            env: c.container.env.iter().map(|e| (e.name.clone(), e.value.clone())).collect(),
            working_dir: c.container.working_dir.clone(),
            boot_id: boot_id(),
        };
        let meta = serde_json::to_vec(&meta).map_err(|e| KubeletError::Runtime(e.to_string()))?;
        write_atomic(&d.join("meta.json"), &meta).map_err(|e| KubeletError::io(&d, e))?;
        // The shim is not waited for here: it is reaped by whoever adopts it (init, once
        // this worker is gone); a thread keeps it from staying a zombie meanwhile.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        Ok(id)
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, KubeletError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| KubeletError::io(&self.dir, e))?;
        Ok(entries.filter_map(|e| e.ok()).filter_map(|e| self.read(&e.file_name().to_string_lossy())).collect())
    }

    async fn inspect(&self, id: &str) -> Option<ContainerInfo> {
        self.read(id)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), KubeletError> {
        // A container just started may not have its pid written yet.
        let waited = tokio::time::Instant::now();
        let group = loop {
            if self.exited(id) {
                return Ok(());
            }
            if let Some(g) = self.child_group(id) {
                break g;
            }
            if waited.elapsed() > Duration::from_secs(5) {
                return Err(KubeletError::Runtime(format!("container {id} has no pid after 5 s")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let _ = killpg(group, Signal::SIGTERM);
        // At most a day: a grace period near i64::MAX seconds must not overflow.
        let grace = grace.min(Duration::from_secs(86_400));
        let deadline = tokio::time::Instant::now() + grace;
        while !self.exited(id) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.exited(id) {
            let _ = killpg(group, Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !self.exited(id) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if self.exited(id) {
            Ok(())
        } else {
            Err(KubeletError::Runtime(format!("container {id} did not end after SIGKILL")))
        }
    }

    async fn exec(&self, id: &str, command: &[String], timeout: Duration) -> Result<Option<i32>, KubeletError> {
        let d = self.dir.join(id);
        let meta: Meta = std::fs::read(d.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| KubeletError::Runtime(format!("container {id} is not known")))?;
        let Some((program, args)) = command.split_first() else { return Ok(None) };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).env_clear();
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()));
        cmd.envs(meta.env.iter().map(|(k, v)| (k, v)));
        if !meta.working_dir.is_empty() {
            cmd.current_dir(&meta.working_dir);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
        // A group of its own, so that a timeout kills what it started too.
        cmd.process_group(0);
        let Ok(mut child) = cmd.spawn() else { return Ok(None) };
        let group = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Ok(status.code()),
            _ => {
                if let Some(g) = group {
                    let _ = killpg(g, Signal::SIGKILL);
                }
                Ok(None) // timed out, or lost
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), KubeletError> {
        let d = self.dir.join(id);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KubeletError::io(&d, e)),
        }
    }
}

/// The shim (`flotilla process-shim --dir D -- COMMAND ARGS...`): runs the command in a
/// process group of its own with its output appended to `D/log`, writes `D/pid` and
/// `D/started`, waits, and writes `D/exit`. Exits 0 once the exit is recorded.
pub fn run_shim(dir: &Path, argv: &[String]) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let fail = |what: &str| {
        eprintln!("process-shim: {what}");
        ExitCode::from(1)
    };
    let Some((program, args)) = argv.split_first() else { return fail("no command given") };
    let log = match std::fs::OpenOptions::new().create(true).append(true).open(dir.join("log")) {
        Ok(f) => f,
        Err(e) => return fail(&format!("{}: {e}", dir.join("log").display())),
    };
    let err = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return fail(&format!("log: {e}")),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let started = SystemTime::now();
    let record_exit = |code: i32, signal: Option<i32>| {
        let e = Exit { code, signal, finished_at: stamp(SystemTime::now()) };
        let bytes = serde_json::to_vec(&e).unwrap_or_default();
        let _ = write_atomic(&dir.join("exit"), &bytes);
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            // As a shell would: 127 for a command not found, 126 for one not runnable.
            let _ = std::fs::write(dir.join("log"), format!("cannot run {program:?}: {e}\n"));
            let _ = write_atomic(&dir.join("started"), stamp(started).as_bytes());
            record_exit(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 }, None);
            return ExitCode::SUCCESS;
        }
    };
    let _ = write_atomic(&dir.join("pid"), child.id().to_string().as_bytes());
    let _ = write_atomic(&dir.join("started"), stamp(started).as_bytes());
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => record_exit(code, None),
            (None, Some(sig)) => record_exit(128 + sig, Some(sig)),
            (None, None) => record_exit(255, None),
        },
        Err(e) => return fail(&format!("waiting for the command: {e}")),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: &[&str]) -> pb::Container {
        pb::Container {
            name: "c".into(),
            image: "busybox".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_process_runtime_refuses_what_it_cannot_do_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = ProcessRuntime::new(dir.path(), Path::new("/bin/false")).expect("runtime");
        let mut spec = pb::PodSpec { containers: vec![container(&["sleep", "1"])], ..Default::default() };
        assert_eq!(rt.check(&spec), Ok(()));
        spec.containers[0].command.clear();
        assert!(rt.check(&spec).expect_err("no command").starts_with("spec.containers[0].command"));
        spec.containers[0] = container(&["sleep", "1"]);
        spec.containers[0].resources =
            Some(pb::ResourceRequirements { limits: [("memory".into(), "64Mi".into())].into(), ..Default::default() });
        assert!(rt.check(&spec).expect_err("limits").contains("resources.limits"));
    }
}
