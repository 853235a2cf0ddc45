//! Images on containerd 1.6, brought in by the kubelet itself (1.6 has no transfer
//! service): blobs are written into containerd's content store under a lease — pulled from
//! an OCI registry over the distribution API (`oci-client`), or read from OCI / docker
//! image archives in `--image-dir` — the image is registered, and its layers are unpacked
//! into snapshots with the diff service, one committed snapshot per chain ID.
//!
//! Content gets containerd's garbage-collection labels (manifest → config and layers,
//! config → top snapshot), so an image's blobs and snapshots live as long as its record.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use containerd_client::services::v1 as cd;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::{Descriptor, Mount};
use futures::{Stream, StreamExt};
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tonic::Code;

use super::spec::ImageConfig;
use super::{cd_err, Conn};
use crate::KubeletError;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Bytes per content write message (well under gRPC's 4 MiB).
const CHUNK: usize = 1 << 20;

/// An image ready to run: its name, its top snapshot and how to run it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The normalized reference (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The manifest's digest.
    pub digest: String,
    /// The chain ID of its top layer (the snapshot containers are prepared on).
    pub chain_id: String,
    /// Entrypoint, cmd, env, working directory.
    pub config: ImageConfig,
}

/// How to reach one registry (`--registry-config`, keyed by host[:port]).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryHost {
    /// Plain HTTP instead of HTTPS (loopback registries are plain HTTP by default).
    #[serde(default)]
    pub insecure: bool,
    /// Basic-auth user.
    #[serde(default)]
    pub username: Option<String>,
    /// Basic-auth password.
    #[serde(default)]
    pub password: Option<String>,
}

/// Registry settings by host, from the node's `--registry-config` file (YAML).
pub type Registries = BTreeMap<String, RegistryHost>;

/// Reads a `--registry-config` file: a map of registry host to `insecure`, `username`,
/// `password`.
pub fn load_registries(path: &Path) -> Result<Registries, KubeletError> {
    let text = std::fs::read_to_string(path).map_err(|e| KubeletError::io(path, e))?;
    let regs: Registries =
        serde_yaml::from_str(&text).map_err(|e| KubeletError::Runtime(format!("{}: {e}", path.display())))?;
    for (host, r) in &regs {
        if r.username.is_some() != r.password.is_some() {
            return Err(KubeletError::Runtime(format!(
                "{}: {host}: username and password go together",
                path.display()
            )));
        }
    }
    Ok(regs)
}

/// Why an image cannot be had, as the container's waiting reason says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageFailure {
    /// The name does not parse (`InvalidImageName`).
    InvalidName(String),
    /// The pull failed (`ErrImagePull`, then `ImagePullBackOff`).
    Pull(String),
    /// Not present and the policy is Never (`ErrImageNeverPull`).
    NeverPull(String),
}

impl ImageFailure {
    /// The container's waiting reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageFailure::InvalidName(_) => "InvalidImageName",
            ImageFailure::Pull(_) => "ErrImagePull",
            ImageFailure::NeverPull(_) => "ErrImageNeverPull",
        }
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            ImageFailure::InvalidName(m) | ImageFailure::Pull(m) | ImageFailure::NeverPull(m) => m,
        }
    }
}

impl From<ImageFailure> for KubeletError {
    fn from(e: ImageFailure) -> KubeletError {
        KubeletError::Image { reason: e.reason(), message: e.message().to_string() }
    }
}

/// `image` as containerd names it (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize(image: &str) -> Result<String, ImageFailure> {
    let r = Reference::try_from(image)
        .map_err(|e| ImageFailure::InvalidName(format!("invalid image name {image:?}: {e}")))?;
    Ok(r.whole())
}

/// The pull policy in force: the container's, else Always for `:latest` (or no tag) and
/// IfNotPresent otherwise, as Kubernetes defaults it.
pub fn pull_policy<'a>(policy: &'a str, image: &str) -> &'a str {
    if !policy.is_empty() {
        return policy;
    }
    match Reference::try_from(image) {
        Ok(r) if r.digest().is_none() && r.tag().is_none_or(|t| t == "latest") => "Always",
        _ => "IfNotPresent",
    }
}

/// The chain IDs of a stack of layers (by their uncompressed digests).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!("sha256:{:x}", Sha256::digest(format!("{prev} {d}").as_bytes())),
        };
        out.push(next);
    }
    out
}

#[derive(serde::Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(serde::Deserialize)]
struct FullConfig {
    #[serde(default)]
    config: ImageConfig,
    rootfs: RootFs,
}

#[derive(serde::Deserialize, serde::Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
struct Desc {
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

impl Manifest {
    fn is_index(&self) -> bool {
        !self.manifests.is_empty() || matches!(self.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST))
    }
}

fn descriptor(d: &Desc) -> Descriptor {
    Descriptor { media_type: d.media_type.clone(), digest: d.digest.clone(), size: d.size, ..Default::default() }
}

/// Picks the linux/amd64 (this machine's) manifest of an index.
fn pick_platform(index: &Manifest) -> Option<&Desc> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    index
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p["os"] == "linux" && p["architecture"] == arch))
        .or_else(|| index.manifests.iter().find(|m| m.platform.is_none()))
}

/// Disk use of the filesystem holding `dir`, in percent.
pub fn disk_used_percent(dir: &Path) -> Option<f64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let total = st.blocks() as f64;
    (total > 0.0).then(|| 100.0 * (total - st.blocks_available() as f64) / total)
}

/// Which images to remove, in order: those no container uses, least recently updated
/// first, and none younger than `min_age`.
pub fn unused_oldest_first(
    images: &[(String, SystemTime)],
    used: &std::collections::HashSet<String>,
    now: SystemTime,
    min_age: Duration,
) -> Vec<String> {
    let mut c: Vec<&(String, SystemTime)> = images
        .iter()
        .filter(|(n, at)| !used.contains(n) && now.duration_since(*at).unwrap_or_default() >= min_age)
        .collect();
    c.sort_by_key(|(_, at)| *at);
    c.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The images of one worker's containerd namespace.
pub struct Images {
    conn: Conn,
    snapshotter: String,
    image_dir: Option<PathBuf>,
    scratch: PathBuf,
    registries: Registries,
    ready: Mutex<HashMap<String, Arc<Image>>>,
    /// Archives already imported (path, size, mtime).
    imported: Mutex<Vec<(PathBuf, u64, SystemTime)>>,
    /// One pull of a name at a time.
    pulls: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    /// Images through `conn`, unpacked with `snapshotter`; archives from `image_dir`
    /// (extracted under `scratch`); registries reached as `registries` say.
    pub fn new(
        conn: Conn,
        snapshotter: &str,
        image_dir: Option<PathBuf>,
        scratch: PathBuf,
        registries: Registries,
    ) -> Images {
        Images {
            conn,
            snapshotter: snapshotter.into(),
            image_dir,
            scratch,
            registries,
            ready: Mutex::default(),
            imported: Mutex::default(),
            pulls: tokio::sync::Mutex::default(),
        }
    }

    /// The image `image`, brought in as `policy` (Always, IfNotPresent, Never) says, and
    /// whether it had to be pulled or imported.
    pub async fn ensure(&self, image: &str, policy: &str) -> Result<(Arc<Image>, bool), ImageFailure> {
        let name = normalize(image)?;
        let policy = pull_policy(policy, image);
        let lock = self.pulls.lock().await.entry(name.clone()).or_default().clone();
        let _one = lock.lock().await;
        if policy != "Always" {
            if let Some(i) = self.local(&name).await.map_err(|e| ImageFailure::Pull(e.to_string()))? {
                return Ok((i, false));
            }
            if self.import_dir().await.map_err(|e| ImageFailure::Pull(e.to_string()))? {
                if let Some(i) = self.local(&name).await.map_err(|e| ImageFailure::Pull(e.to_string()))? {
                    return Ok((i, true));
                }
            }
        }
        if policy == "Never" {
            return Err(ImageFailure::NeverPull(format!("image {name:?} is not present and imagePullPolicy is Never")));
        }
        self.pull(&name).await.map_err(|e| {
            let why = match e {
                KubeletError::Runtime(m) => m,
                other => other.to_string(),
            };
            ImageFailure::Pull(format!("pulling {name}: {why}"))
        })?;
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        let image = self
            .local(&name)
            .await
            .map_err(|e| ImageFailure::Pull(e.to_string()))?
            .ok_or_else(|| ImageFailure::Pull(format!("{name} was pulled but is not registered")))?;
        Ok((image, true))
    }

    /// The image if containerd has it (unpacking it if its snapshots are missing).
    pub async fn local(&self, name: &str) -> Result<Option<Arc<Image>>, KubeletError> {
        if let Some(i) = self.ready.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(Some(i.clone()));
        }
        let got = cd::images_client::ImagesClient::new(self.conn.channel.clone())
            .get(self.conn.req(cd::GetImageRequest { name: name.into() }))
            .await;
        let target = match got {
            Ok(r) => r.into_inner().image.and_then(|i| i.target),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(cd_err("getting an image", s)),
        };
        let Some(target) = target else { return Ok(None) };
        let mut manifest_desc = Desc {
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size: target.size,
            platform: None,
            annotations: None,
        };
        let mut manifest: Manifest = serde_json::from_slice(&self.read_blob(&target.digest).await?)
            .map_err(|e| KubeletError::Runtime(format!("image {name}: bad manifest: {e}")))?;
        if manifest.is_index() {
            let Some(m) = pick_platform(&manifest).cloned() else {
                return Err(KubeletError::Runtime(format!("image {name} has no manifest for this platform")));
            };
            manifest = serde_json::from_slice(&self.read_blob(&m.digest).await?)
                .map_err(|e| KubeletError::Runtime(format!("image {name}: bad manifest: {e}")))?;
            manifest_desc = m;
        }
        let config_desc = manifest
            .config
            .clone()
            .ok_or_else(|| KubeletError::Runtime(format!("image {name}: manifest without a config")))?;
        let config: FullConfig = serde_json::from_slice(&self.read_blob(&config_desc.digest).await?)
            .map_err(|e| KubeletError::Runtime(format!("image {name}: bad config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(KubeletError::Runtime(format!(
                "image {name}: {} layers but {} diff ids",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let Some(top) = chains.last().cloned() else {
            return Err(KubeletError::Runtime(format!("image {name} has no layers")));
        };
        self.unpack(&manifest.layers, &config.rootfs.diff_ids, &chains).await?;
        let image =
            Arc::new(Image { name: name.into(), digest: manifest_desc.digest, chain_id: top, config: config.config });
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).insert(name.into(), image.clone());
        Ok(Some(image))
    }

    /// Unpacks the layers whose snapshots are missing.
    async fn unpack(&self, layers: &[Desc], diff_ids: &[String], chains: &[String]) -> Result<(), KubeletError> {
        let mut snaps = snap::snapshots_client::SnapshotsClient::new(self.conn.channel.clone());
        let mut have = 0;
        for (i, chain) in chains.iter().enumerate().rev() {
            let stat = snap::StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: chain.clone() };
            match snaps.stat(self.conn.req(stat)).await {
                Ok(_) => {
                    have = i + 1;
                    break;
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(cd_err("looking up a snapshot", s)),
            }
        }
        if have == chains.len() {
            return Ok(());
        }
        let lease = self.conn.lease().await?;
        let out = self.unpack_from(&lease, have, layers, diff_ids, chains).await;
        self.conn.drop_lease(&lease).await;
        out
    }

    async fn unpack_from(
        &self,
        lease: &str,
        from: usize,
        layers: &[Desc],
        diff_ids: &[String],
        chains: &[String],
    ) -> Result<(), KubeletError> {
        let mut snaps = snap::snapshots_client::SnapshotsClient::new(self.conn.channel.clone());
        let mut diff = cd::diff_client::DiffClient::new(self.conn.channel.clone());
        for i in from..chains.len() {
            let key = format!("extract-{}-{}", nanos(), chains[i]);
            let parent = if i == 0 { String::new() } else { chains[i - 1].clone() };
            let prep = snap::PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.clone(),
                parent,
                labels: HashMap::new(),
            };
            let mounts: Vec<Mount> = snaps
                .prepare(self.conn.leased(prep, lease))
                .await
                .map_err(|s| cd_err("preparing a snapshot to unpack into", s))?
                .into_inner()
                .mounts;
            let apply = cd::ApplyRequest { diff: Some(descriptor(&layers[i])), mounts, ..Default::default() };
            let applied = diff.apply(self.conn.leased(apply, lease)).await;
            let outcome = match applied {
                Ok(r) => match r.into_inner().applied {
                    Some(d) if d.digest == diff_ids[i] => Ok(()),
                    other => Err(KubeletError::Runtime(format!(
                        "layer {} unpacked to {:?}, not the image's diff id {}",
                        layers[i].digest,
                        other.map(|d| d.digest),
                        diff_ids[i]
                    ))),
                },
                Err(s) => Err(cd_err("unpacking a layer", s)),
            };
            let outcome = match outcome {
                Ok(()) => {
                    let commit = snap::CommitSnapshotRequest {
                        snapshotter: self.snapshotter.clone(),
                        name: chains[i].clone(),
                        key: key.clone(),
                        labels: HashMap::new(),
                    };
                    match snaps.commit(self.conn.leased(commit, lease)).await {
                        Ok(_) => Ok(()),
                        // Unpacked meanwhile by someone else: theirs is as good.
                        Err(s) if s.code() == Code::AlreadyExists => Err(None),
                        Err(s) => Err(Some(cd_err("committing a snapshot", s))),
                    }
                }
                Err(e) => Err(Some(e)),
            };
            if let Err(e) = outcome {
                let rm = snap::RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key };
                let _ = snaps.remove(self.conn.leased(rm, lease)).await;
                if let Some(e) = e {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A blob from the content store.
    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, KubeletError> {
        let mut stream = cd::content_client::ContentClient::new(self.conn.channel.clone())
            .read(self.conn.req(cd::ReadContentRequest { digest: digest.into(), offset: 0, size: 0 }))
            .await
            .map_err(|s| cd_err(&format!("reading {digest}"), s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(part) = stream.next().await {
            out.extend_from_slice(&part.map_err(|s| cd_err(&format!("reading {digest}"), s))?.data);
        }
        Ok(out)
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, KubeletError> {
        match cd::content_client::ContentClient::new(self.conn.channel.clone())
            .info(self.conn.req(cd::InfoRequest { digest: digest.into() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(cd_err("looking up content", s)),
        }
    }

    /// Writes a blob into the content store (checked against `digest` and `size` by
    /// containerd), with GC `labels`; nothing when it is there already.
    async fn write_blob<S>(
        &self,
        lease: &str,
        desc: &Desc,
        labels: HashMap<String, String>,
        data: S,
    ) -> Result<(), KubeletError>
    where
        S: Stream<Item = Result<Bytes, String>> + Send + 'static,
    {
        if self.has_blob(&desc.digest).await? {
            return Ok(());
        }
        let reference = format!("flotilla-{}-{}", desc.digest.replace(':', "-"), nanos());
        let (tx, rx) = tokio::sync::mpsc::channel::<cd::WriteContentRequest>(4);
        let (total, expected) = (desc.size, desc.digest.clone());
        let feeder = tokio::spawn(async move {
            tokio::pin!(data);
            let mut offset = 0i64;
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                for piece in chunk.chunks(CHUNK) {
                    let msg = cd::WriteContentRequest {
                        action: cd::WriteAction::Write as i32,
                        r#ref: reference.clone(),
                        total,
                        expected: expected.clone(),
                        offset,
                        data: piece.to_vec(),
                        labels: HashMap::new(),
                    };
                    offset += i64::try_from(piece.len()).unwrap_or(i64::MAX);
                    if tx.send(msg).await.is_err() {
                        return Err("containerd closed the write".to_string());
                    }
                }
            }
            if offset != total {
                return Err(format!("{expected}: got {offset} bytes, the descriptor says {total}"));
            }
            let commit = cd::WriteContentRequest {
                action: cd::WriteAction::Commit as i32,
                r#ref: reference,
                total,
                expected,
                offset,
                data: Vec::new(),
                labels,
            };
            tx.send(commit).await.map_err(|_| "containerd closed the write".to_string())
        });
        let call = cd::content_client::ContentClient::new(self.conn.channel.clone())
            .write(self.conn.leased(tokio_stream::wrappers::ReceiverStream::new(rx), lease))
            .await;
        let mut responses = match call {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(()),
            Err(s) => return Err(cd_err(&format!("writing {}", desc.digest), s)),
        };
        let mut committed = false;
        loop {
            match responses.message().await {
                Ok(Some(r)) => committed |= r.action == cd::WriteAction::Commit as i32,
                Ok(None) => break,
                Err(s) if s.code() == Code::AlreadyExists => {
                    committed = true;
                    break;
                }
                Err(s) => {
                    feeder.abort();
                    return Err(cd_err(&format!("writing {}", desc.digest), s));
                }
            }
        }
        match feeder.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(KubeletError::Runtime(format!("{}: {e}", desc.digest))),
            Err(e) => return Err(KubeletError::Runtime(format!("{}: {e}", desc.digest))),
        }
        if !committed {
            return Err(KubeletError::Runtime(format!("{}: containerd did not commit the blob", desc.digest)));
        }
        Ok(())
    }

    /// Registers (or re-points) image `name` at `target`.
    async fn register(&self, lease: &str, name: &str, target: &Desc) -> Result<(), KubeletError> {
        let mut images = cd::images_client::ImagesClient::new(self.conn.channel.clone());
        let image = cd::Image { name: name.into(), target: Some(descriptor(target)), ..Default::default() };
        match images
            .create(
                self.conn.leased(cd::CreateImageRequest { image: Some(image.clone()), ..Default::default() }, lease),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => images
                .update(self.conn.leased(cd::UpdateImageRequest { image: Some(image), ..Default::default() }, lease))
                .await
                .map(|_| ())
                .map_err(|s| cd_err("updating an image", s)),
            Err(s) => Err(cd_err("registering an image", s)),
        }
    }

    /// GC labels of a manifest (its config and layers) or an index (its manifests).
    fn manifest_labels(m: &Manifest) -> HashMap<String, String> {
        let mut l = HashMap::new();
        if let Some(c) = &m.config {
            l.insert("containerd.io/gc.ref.content.config".into(), c.digest.clone());
        }
        for (i, d) in m.layers.iter().enumerate() {
            l.insert(format!("containerd.io/gc.ref.content.l.{i}"), d.digest.clone());
        }
        for (i, d) in m.manifests.iter().enumerate() {
            l.insert(format!("containerd.io/gc.ref.content.m.{i}"), d.digest.clone());
        }
        l
    }

    fn config_labels(&self, config: &[u8]) -> HashMap<String, String> {
        let mut l = HashMap::new();
        if let Ok(c) = serde_json::from_slice::<FullConfig>(config) {
            if let Some(top) = chain_ids(&c.rootfs.diff_ids).last() {
                l.insert(format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter), top.clone());
            }
        }
        l
    }

    /// Pulls `name` from its registry into the content store and registers it.
    async fn pull(&self, name: &str) -> Result<(), KubeletError> {
        let reference = Reference::try_from(name).map_err(|e| KubeletError::Runtime(e.to_string()))?;
        let host = reference.resolve_registry().to_string();
        let settings = self.registries.get(&host).cloned().unwrap_or_default();
        let loopback = host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]");
        let protocol = if settings.insecure || loopback {
            oci_client::client::ClientProtocol::Http
        } else {
            oci_client::client::ClientProtocol::Https
        };
        let auth = match (&settings.username, &settings.password) {
            (Some(u), Some(p)) => oci_client::secrets::RegistryAuth::Basic(u.clone(), p.clone()),
            _ => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        let accept = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let (raw, digest) = client.pull_manifest_raw(&reference, &auth, &accept).await.map_err(pull_err)?;
        let lease = self.conn.lease().await?;
        let out = async {
            let mut top: Manifest =
                serde_json::from_slice(&raw).map_err(|e| KubeletError::Runtime(format!("bad manifest: {e}")))?;
            let top_desc = Desc {
                media_type: top
                    .media_type
                    .clone()
                    .unwrap_or_else(|| if top.is_index() { OCI_INDEX } else { OCI_MANIFEST }.into()),
                digest: digest.clone(),
                size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
                platform: None,
                annotations: None,
            };
            let mut manifest_raw = raw.clone();
            if top.is_index() {
                let m = pick_platform(&top)
                    .cloned()
                    .ok_or_else(|| KubeletError::Runtime("no manifest for this platform".into()))?;
                let by_digest = reference.clone_with_digest(m.digest.clone());
                let (r, _) = client.pull_manifest_raw(&by_digest, &auth, &accept).await.map_err(pull_err)?;
                manifest_raw = r;
                let labels = Self::manifest_labels(&top);
                self.write_blob(&lease, &top_desc, labels, once(raw.clone())).await?;
                top = serde_json::from_slice(&manifest_raw)
                    .map_err(|e| KubeletError::Runtime(format!("bad manifest: {e}")))?;
                let mdesc = Desc { size: i64::try_from(manifest_raw.len()).unwrap_or(i64::MAX), ..m };
                self.fetch_manifest(&client, &reference, &lease, &mdesc, &top, manifest_raw).await?;
            } else {
                self.fetch_manifest(&client, &reference, &lease, &top_desc, &top, manifest_raw).await?;
            }
            self.register(&lease, name, &top_desc).await
        }
        .await;
        self.conn.drop_lease(&lease).await;
        out
    }

    /// Writes one platform manifest's config, layers and the manifest itself.
    async fn fetch_manifest(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        lease: &str,
        desc: &Desc,
        manifest: &Manifest,
        raw: Bytes,
    ) -> Result<(), KubeletError> {
        let config =
            manifest.config.clone().ok_or_else(|| KubeletError::Runtime("manifest without a config".into()))?;
        let mut config_bytes = Vec::new();
        client.pull_blob(reference, &oci_layer(&config), &mut config_bytes).await.map_err(pull_err)?;
        for layer in &manifest.layers {
            if self.has_blob(&layer.digest).await? {
                continue;
            }
            let stream = client.pull_blob_stream(reference, &oci_layer(layer)).await.map_err(pull_err)?;
            let data = stream.stream.map(|r| r.map_err(|e| e.to_string()));
            self.write_blob(lease, layer, HashMap::new(), data).await?;
        }
        let labels = self.config_labels(&config_bytes);
        self.write_blob(lease, &config, labels, once(Bytes::from(config_bytes))).await?;
        self.write_blob(lease, desc, Self::manifest_labels(manifest), once(raw)).await
    }

    /// Removes unused images (see [`unused_oldest_first`]) while the disk of `dir` is
    /// fuller than `high` percent, until it is at most `low` (`high` 0: every unused one);
    /// the names removed.
    pub async fn collect(
        &self,
        used: &std::collections::HashSet<String>,
        dir: &Path,
        high: u8,
        low: u8,
        min_age: Duration,
    ) -> Result<Vec<String>, KubeletError> {
        let full = |d: &Path| disk_used_percent(d).unwrap_or(0.0);
        if high > 0 && full(dir) < f64::from(high) {
            return Ok(Vec::new());
        }
        let mut images = cd::images_client::ImagesClient::new(self.conn.channel.clone());
        let list = images
            .list(self.conn.req(cd::ListImagesRequest { filters: vec![] }))
            .await
            .map_err(|s| cd_err("listing images", s))?
            .into_inner()
            .images;
        let known: Vec<(String, SystemTime)> =
            list.iter().map(|i| (i.name.clone(), super::ts(&i.updated_at).max(super::ts(&i.created_at)))).collect();
        let mut removed = Vec::new();
        for name in unused_oldest_first(&known, used, SystemTime::now(), min_age) {
            if high > 0 && full(dir) <= f64::from(low) {
                break;
            }
            let req = cd::DeleteImageRequest { name: name.clone(), sync: true, ..Default::default() };
            match images.delete(self.conn.req(req)).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(cd_err("removing an image", s)),
            }
            self.ready.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            // An archive's image comes back from --image-dir when it is wanted again.
            self.imported.lock().unwrap_or_else(|p| p.into_inner()).clear();
            tracing::info!(image = %name, "unused image removed");
            removed.push(name);
        }
        Ok(removed)
    }

    /// Imports every archive in `--image-dir` not imported yet; whether any was.
    pub async fn import_dir(&self) -> Result<bool, KubeletError> {
        let Some(dir) = self.image_dir.clone() else { return Ok(false) };
        let rd = std::fs::read_dir(&dir).map_err(|e| KubeletError::io(&dir, e))?;
        let mut any = false;
        for entry in rd.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "tar") {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            let key = (path.clone(), md.len(), md.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            if self.imported.lock().unwrap_or_else(|p| p.into_inner()).contains(&key) {
                continue;
            }
            match self.import(&path).await {
                Ok(names) => {
                    tracing::info!(archive = %path.display(), images = ?names, "imported image archive");
                    any = true;
                }
                Err(e) => tracing::warn!(archive = %path.display(), error = %e, "cannot import image archive"),
            }
            self.imported.lock().unwrap_or_else(|p| p.into_inner()).push(key);
        }
        Ok(any)
    }

    /// Imports one OCI image layout or `docker save` archive; the names it registered.
    pub async fn import(&self, archive: &Path) -> Result<Vec<String>, KubeletError> {
        let out = self.scratch.join(format!("import-{}", nanos()));
        let (a, o) = (archive.to_path_buf(), out.clone());
        tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&o).map_err(|e| KubeletError::io(&o, e))?;
            let f = std::fs::File::open(&a).map_err(|e| KubeletError::io(&a, e))?;
            tar::Archive::new(f).unpack(&o).map_err(|e| KubeletError::io(&a, e))
        })
        .await
        .map_err(|e| KubeletError::Runtime(e.to_string()))??;
        let lease = self.conn.lease().await?;
        let result = self.import_layout(&out, &lease).await;
        self.conn.drop_lease(&lease).await;
        let _ = std::fs::remove_dir_all(&out);
        let names = result?;
        for n in &names {
            self.ready.lock().unwrap_or_else(|p| p.into_inner()).remove(n);
        }
        Ok(names)
    }

    async fn import_layout(&self, root: &Path, lease: &str) -> Result<Vec<String>, KubeletError> {
        let index_path = root.join("index.json");
        if index_path.exists() {
            let index: Manifest = read_json(&index_path)?;
            let mut names = Vec::new();
            for m in &index.manifests {
                let ann = m.annotations.clone().unwrap_or_default();
                let Some(name) = ann
                    .get("io.containerd.image.name")
                    .cloned()
                    .or_else(|| ann.get("org.opencontainers.image.ref.name").filter(|n| n.contains('/')).cloned())
                else {
                    tracing::warn!(digest = %m.digest, "an archive's image has no name (io.containerd.image.name); skipped");
                    continue;
                };
                let name = normalize(&name).map_err(|e| KubeletError::Runtime(e.message().to_string()))?;
                self.import_tree(root, m, lease).await?;
                self.register(lease, &name, m).await?;
                names.push(name);
            }
            return Ok(names);
        }
        // `docker save` (before OCI layouts): manifest.json with config and layer files.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct DockerEntry {
            config: String,
            #[serde(default)]
            repo_tags: Vec<String>,
            layers: Vec<String>,
        }
        let entries: Vec<DockerEntry> = read_json(&root.join("manifest.json"))?;
        let mut names = Vec::new();
        for e in entries {
            let file_desc = |rel: &str, media: &str| -> Result<Desc, KubeletError> {
                let p = root.join(rel);
                let bytes = std::fs::read(&p).map_err(|err| KubeletError::io(&p, err))?;
                Ok(Desc {
                    media_type: media.into(),
                    digest: format!("sha256:{:x}", Sha256::digest(&bytes)),
                    size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
                    platform: None,
                    annotations: None,
                })
            };
            let config = file_desc(&e.config, DOCKER_CONFIG)?;
            let layers: Vec<Desc> = e.layers.iter().map(|l| file_desc(l, DOCKER_LAYER)).collect::<Result<_, _>>()?;
            for (d, rel) in layers.iter().zip(&e.layers) {
                self.write_blob(lease, d, HashMap::new(), file_stream(root.join(rel))).await?;
            }
            let config_bytes =
                std::fs::read(root.join(&e.config)).map_err(|err| KubeletError::io(&root.join(&e.config), err))?;
            self.write_blob(lease, &config, self.config_labels(&config_bytes), once(Bytes::from(config_bytes))).await?;
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": config,
                "layers": layers,
            });
            let raw = serde_json::to_vec(&manifest).map_err(|err| KubeletError::Runtime(err.to_string()))?;
            let mdesc = Desc {
                media_type: DOCKER_MANIFEST.into(),
                digest: format!("sha256:{:x}", Sha256::digest(&raw)),
                size: i64::try_from(raw.len()).unwrap_or(i64::MAX),
                platform: None,
                annotations: None,
            };
            let parsed: Manifest =
                serde_json::from_slice(&raw).map_err(|err| KubeletError::Runtime(err.to_string()))?;
            self.write_blob(lease, &mdesc, Self::manifest_labels(&parsed), once(Bytes::from(raw))).await?;
            for tag in &e.repo_tags {
                let name = normalize(tag).map_err(|err| KubeletError::Runtime(err.message().to_string()))?;
                self.register(lease, &name, &mdesc).await?;
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Writes a manifest (or index) from an OCI layout and everything it refers to.
    async fn import_tree(&self, root: &Path, desc: &Desc, lease: &str) -> Result<(), KubeletError> {
        let blob_path = |digest: &str| root.join("blobs").join(digest.replace(':', "/"));
        let raw = std::fs::read(blob_path(&desc.digest)).map_err(|e| KubeletError::io(&blob_path(&desc.digest), e))?;
        let m: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| KubeletError::Runtime(format!("{}: bad manifest: {e}", desc.digest)))?;
        for child in &m.manifests {
            Box::pin(self.import_tree(root, child, lease)).await?;
        }
        for l in &m.layers {
            self.write_blob(lease, l, HashMap::new(), file_stream(blob_path(&l.digest))).await?;
        }
        if let Some(c) = &m.config {
            let bytes = std::fs::read(blob_path(&c.digest)).map_err(|e| KubeletError::io(&blob_path(&c.digest), e))?;
            self.write_blob(lease, c, self.config_labels(&bytes), once(Bytes::from(bytes))).await?;
        }
        self.write_blob(lease, desc, Self::manifest_labels(&m), once(Bytes::from(raw))).await
    }
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, KubeletError> {
    let bytes = std::fs::read(p).map_err(|e| KubeletError::io(p, e))?;
    serde_json::from_slice(&bytes).map_err(|e| KubeletError::Runtime(format!("{}: {e}", p.display())))
}

fn once(b: Bytes) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
    futures::stream::once(async move { Ok(b) })
}

/// A file's bytes, a chunk at a time.
fn file_stream(path: PathBuf) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
    futures::stream::once(
        async move { tokio::fs::File::open(&path).await.map_err(|e| format!("{}: {e}", path.display())) },
    )
    .map(|f| match f {
        Ok(f) => tokio_util_stream(f).boxed(),
        Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
    })
    .flatten()
}

fn tokio_util_stream(f: tokio::fs::File) -> impl Stream<Item = Result<Bytes, String>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e.to_string()), None)),
        }
    })
}

fn oci_layer(d: &Desc) -> oci_client::manifest::OciDescriptor {
    oci_client::manifest::OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size,
        ..Default::default()
    }
}

fn pull_err(e: oci_client::errors::OciDistributionError) -> KubeletError {
    KubeletError::Runtime(e.to_string())
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_and_the_default_policy_follows_the_tag() {
        assert_eq!(normalize("busybox").expect("ok"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("127.0.0.1:5000/bb:1.35").expect("ok"), "127.0.0.1:5000/bb:1.35");
        assert!(matches!(normalize("Bad Name"), Err(ImageFailure::InvalidName(_))));
        assert_eq!(pull_policy("", "busybox"), "Always");
        assert_eq!(pull_policy("", "busybox:latest"), "Always");
        assert_eq!(pull_policy("", "busybox:1.35"), "IfNotPresent");
        assert_eq!(pull_policy("Never", "busybox"), "Never");
    }

    #[test]
    fn unused_images_go_least_recently_used_first_and_never_young_ones() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let images = [
            ("a".to_string(), t(300)),
            ("b".to_string(), t(100)),
            ("c".to_string(), t(200)),
            ("d".to_string(), t(990)),
        ];
        let used = std::collections::HashSet::from(["c".to_string()]);
        assert_eq!(unused_oldest_first(&images, &used, t(1000), Duration::from_secs(60)), ["b", "a"]);
    }

    #[test]
    fn chain_ids_fold_the_diff_ids_as_the_oci_spec_says() {
        let d = ["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], format!("sha256:{:x}", Sha256::digest(b"sha256:a sha256:b")));
    }
}
