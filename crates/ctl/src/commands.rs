//! What each flotctl command does.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::SystemTime;

use flotilla_api::kinds::{meta, meta_mut, Kind};
use flotilla_client::{Client, ClientError, DeleteParams};
use flotilla_proto::api::{self as pb, object::Kind as O};
use flotilla_proto::etcdserverpb as ep;
use serde::Deserialize;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::print;
use crate::{manifest, ClusterCommand, Command, CtlArgs, CtlError, Output};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    endpoints: Vec<String>,
    cacert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token: Option<String>,
}

/// The masters and how to reach them.
struct Conn {
    eps: Vec<String>,
    tls: Option<std::sync::Arc<flotilla_client::pool::ClientTls>>,
    token: Option<String>,
}

/// The endpoints to use (flag, then environment, then config file, then the default) and
/// the TLS files (flags or environment, else the config file's; paths in the file are
/// relative to it).
fn conn(args: &CtlArgs) -> Result<Conn, CtlError> {
    let split = |s: &str| s.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect::<Vec<_>>();
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".flotilla/config.yaml")).filter(|p| p.exists()),
    };
    let file = match &path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| CtlError::Io(format!("cannot read {}: {e}", p.display())))?;
            let cfg: ConfigFile = serde_yaml::from_str(&text)
                .map_err(|e| CtlError::Usage(format!("config file {}: {e}", p.display())))?;
            if cfg.endpoints.is_empty() {
                return Err(CtlError::Usage(format!("config file {}: endpoints is empty", p.display())));
            }
            Some(cfg)
        }
        None => None,
    };
    let eps = match (&args.endpoints, std::env::var("FLOTILLA_ENDPOINTS")) {
        (Some(e), _) => split(e),
        (None, Ok(e)) if !e.trim().is_empty() => split(&e),
        _ => file.as_ref().map_or_else(|| vec!["127.0.0.1:2379".into()], |f| f.endpoints.clone()),
    };
    let mut creds = args.credentials.clone();
    if creds.cacert.is_none() && creds.cert.is_none() && creds.key.is_none() && creds.token.is_none() {
        if let (Some(f), Some(p)) = (file, &path) {
            let dir = p.parent().unwrap_or(std::path::Path::new("."));
            creds = crate::CredentialArgs {
                cacert: f.cacert.map(|c| dir.join(c)),
                cert: f.cert.map(|c| dir.join(c)),
                key: f.key.map(|c| dir.join(c)),
                token: f.token,
            };
        }
    }
    Ok(Conn { eps, tls: creds.client_tls()?, token: creds.token })
}

fn kind(s: &str) -> Result<Kind, CtlError> {
    Kind::lookup(s).ok_or_else(|| {
        CtlError::Usage(format!(
            "unknown kind {s:?}; use one of: pods, deployments, replicasets, services, endpoints, nodes, namespaces, leases, events"
        ))
    })
}

fn read_file(f: &str) -> Result<String, CtlError> {
    if f == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| CtlError::Io(format!("reading stdin: {e}")))?;
        return Ok(s);
    }
    std::fs::read_to_string(f).map_err(|e| CtlError::Io(format!("cannot read {f}: {e}")))
}

/// Every object of every file, all parsed before anything is sent.
fn objects(files: &[String], ns: Option<&str>) -> Result<Vec<O>, CtlError> {
    let mut out = Vec::new();
    for f in files {
        for mut o in manifest::parse(f, &read_file(f)?)? {
            let k = Kind::of(&o);
            if k.namespaced() {
                let m = meta_mut(&mut o);
                match (ns, m.namespace.is_empty()) {
                    (Some(n), true) => m.namespace = n.to_string(),
                    (Some(n), false) if m.namespace != n => {
                        return Err(CtlError::Usage(format!(
                            "{f}: {} {:?} is in namespace {:?}, not {n:?} given with -n",
                            k.name(),
                            m.name,
                            m.namespace
                        )))
                    }
                    (None, true) => m.namespace = "default".into(),
                    _ => {}
                }
            }
            out.push(o);
        }
    }
    Ok(out)
}

fn ref_of(o: &O) -> String {
    format!("{}/{}", Kind::of(o).name().to_lowercase(), meta(o).name)
}

/// Runs the command.
pub async fn dispatch(args: CtlArgs) -> Result<(), CtlError> {
    let conn = conn(&args)?;
    let ns_flag = args.namespace.clone();
    let ns = ns_flag.clone().unwrap_or_else(|| "default".into());
    let opts = flotilla_client::Options {
        tls: conn.tls.clone(),
        token: conn.token.clone(),
        impersonate: args.as_user.clone(),
        ..Default::default()
    };
    let client = Client::with_options(&conn.eps, opts)?;
    match args.command {
        Command::Get { kind: k, names, all_namespaces, selector, field_selector, output, watch } => {
            // `get deploy,svc`: several kinds, one table each.
            let kinds = k.split(',').map(kind).collect::<Result<Vec<_>, _>>()?;
            if kinds.len() > 1 && (watch || !names.is_empty()) {
                return Err(CtlError::Usage("names and --watch take a single kind".into()));
            }
            if kinds.len() > 1 && matches!(output, Some(Output::Json) | Some(Output::Yaml)) {
                // One List holding every kind, so the output stays one document.
                let mut all = Vec::new();
                for k in kinds {
                    let ns = if all_namespaces || !k.namespaced() { String::new() } else { ns.clone() };
                    all.extend(fetch(&client, k, &ns, &[], &selector, &field_selector).await?.0);
                }
                print_documents(&all, false, output == Some(Output::Json));
                return Ok(());
            }
            for (i, k) in kinds.into_iter().enumerate() {
                if i > 0 {
                    outln!();
                }
                let ns = if all_namespaces || !k.namespaced() { String::new() } else { ns.clone() };
                get(&client, k, &ns, &names, selector.clone(), field_selector.clone(), output, watch, all_namespaces)
                    .await?;
            }
            Ok(())
        }
        Command::Describe { kind: k, name } => describe(&client, kind(&k)?, &ns, &name).await,
        Command::Create { files } => {
            for o in objects(&files, ns_flag.as_deref())? {
                let r = ref_of(&o);
                client.create_object(o).await.map_err(|e| CtlError::Usage(format!("{r}: {e}")))?;
                outln!("{r} created");
            }
            Ok(())
        }
        Command::Apply { files } => {
            for o in objects(&files, ns_flag.as_deref())? {
                let r = ref_of(&o);
                let what = apply(&client, o).await.map_err(|e| CtlError::Usage(format!("{r}: {e}")))?;
                outln!("{r} {what}");
            }
            Ok(())
        }
        Command::Delete { kind: k, names, files, selector, grace_period, cascade } => {
            let policy = match cascade.as_str() {
                "background" => "Background",
                "foreground" => "Foreground",
                "orphan" => "Orphan",
                other => {
                    return Err(CtlError::Usage(format!("--cascade {other:?}: use background, foreground or orphan")))
                }
            };
            let p = DeleteParams {
                grace_period_seconds: grace_period,
                propagation_policy: policy.into(),
                ..Default::default()
            };
            let mut targets: Vec<(Kind, String, String)> = Vec::new();
            if !files.is_empty() {
                // Last first: a namespace at the top of a file goes after what is in it.
                for o in objects(&files, ns_flag.as_deref())?.iter().rev() {
                    targets.push((Kind::of(o), meta(o).namespace.clone(), meta(o).name.clone()));
                }
            } else {
                let k = kind(k.as_deref().ok_or_else(|| CtlError::Usage("delete needs a kind, or -f".into()))?)?;
                let ns = if k.namespaced() { ns.clone() } else { String::new() };
                if let Some(sel) = selector {
                    let req = pb::ListRequest {
                        kind: k.name().into(),
                        namespace: ns.clone(),
                        label_selector: sel,
                        ..Default::default()
                    };
                    for o in client.list_page(req).await?.items.into_iter().filter_map(|o| o.kind) {
                        targets.push((k, ns.clone(), meta(&o).name.clone()));
                    }
                } else if names.is_empty() {
                    return Err(CtlError::Usage("delete needs names, -l SELECTOR or -f FILE".into()));
                }
                targets.extend(names.into_iter().map(|n| (k, ns.clone(), n)));
            }
            for (k, ns, name) in targets {
                let gone = client
                    .delete_object(k.name(), &ns, &name, &p)
                    .await
                    .map_err(|e| CtlError::Usage(format!("{}/{name}: {e}", k.name().to_lowercase())))?;
                let r = format!("{}/{name}", k.name().to_lowercase());
                outln!("{r} {}", if gone { "deleted" } else { "marked for deletion" });
            }
            Ok(())
        }
        Command::Label(c) => set_map(&client, &ns, "labels", &c).await,
        Command::Annotate(c) => set_map(&client, &ns, "annotations", &c).await,
        Command::Scale { kind: k, name, replicas } => {
            let k = kind(&k)?;
            if !matches!(k, Kind::Deployment | Kind::ReplicaSet) {
                return Err(CtlError::Usage(format!(
                    "{} cannot be scaled (deployments and replicasets can)",
                    k.plural()
                )));
            }
            if replicas < 0 {
                return Err(CtlError::Usage("--replicas must not be negative".into()));
            }
            let patch = serde_json::json!({"spec": {"replicas": replicas}});
            client.patch_object(k.name(), &ns, &name, &patch, false).await?;
            outln!("{}/{name} scaled", k.name().to_lowercase());
            Ok(())
        }
        Command::Rollout(c) => crate::rollout::rollout(&client, &ns, c).await,
        Command::Set(c) => crate::rollout::set(&client, &ns, c).await,
        Command::Logs { pod, container, follow, tail, previous } => {
            if tail.is_some_and(|n| n < 0) {
                return Err(CtlError::Usage("--tail must not be negative".into()));
            }
            let name = pod.strip_prefix("pod/").or_else(|| pod.strip_prefix("pods/")).unwrap_or(&pod).to_string();
            let req = pb::PodLogsRequest {
                namespace: ns.clone(),
                name,
                container: container.unwrap_or_default(),
                follow,
                tail_lines: tail,
                previous,
            };
            let mut stream = client.pod_logs(req).await?;
            use std::io::Write as _;
            let mut out = std::io::stdout();
            while let Some(chunk) = stream.message().await.map_err(CtlError::Cluster)? {
                if out.write_all(&chunk.data).and_then(|()| out.flush()).is_err() {
                    return Ok(()); // the reader went away (`| head`)
                }
            }
            Ok(())
        }
        Command::Cordon { node } => {
            outln!("{}", crate::node::cordon(&client, &node, true).await?);
            Ok(())
        }
        Command::Uncordon { node } => {
            outln!("{}", crate::node::cordon(&client, &node, false).await?);
            Ok(())
        }
        Command::Drain(a) => crate::node::drain(&client, a).await,
        Command::Cluster(c) => cluster(&conn, c).await,
        Command::Auth(crate::AuthCommand::CanI { verb, resource, name }) => {
            let r = client.access_review(&verb, &resource, &ns, name.as_deref().unwrap_or_default()).await?;
            if r.allowed {
                outln!("yes");
                Ok(())
            } else {
                outln!("no");
                Err(CtlError::Denied(r.reason))
            }
        }
    }
}

/// Create, or update to match the manifest (labels, annotations and spec from the
/// manifest; status and server fields kept). Retries a lost compare-and-swap.
async fn apply(client: &Client, o: O) -> Result<&'static str, ClientError> {
    let k = Kind::of(&o);
    let (ns, name) = (meta(&o).namespace.clone(), meta(&o).name.clone());
    for _ in 0..5 {
        let cur = match client.get_object(k.name(), &ns, &name).await {
            Err(e) if e.is_not_found() => {
                return match client.create_object(o.clone()).await {
                    Ok(_) => Ok("created"),
                    Err(e) if e.code() == Some(tonic::Code::AlreadyExists) => continue,
                    Err(e) => Err(e),
                }
            }
            other => other?,
        };
        let mut new = o.clone();
        meta_mut(&mut new).resource_version = meta(&cur).resource_version.clone();
        let before = flotilla_api::kinds::to_json(&cur);
        match client.update_object(new).await {
            Ok(after) => {
                return Ok(if flotilla_api::kinds::to_json(&after) == before { "unchanged" } else { "configured" })
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ClientError::Unavailable("the object kept changing while being applied".into()))
}

async fn set_map(client: &Client, ns: &str, field: &str, c: &crate::MapChanges) -> Result<(), CtlError> {
    let (k, name, changes, overwrite) = (kind(&c.kind)?, c.name.as_str(), &c.changes, c.overwrite);
    let ns = if k.namespaced() { ns } else { "" };
    let cur = client.get_object(k.name(), ns, name).await?;
    let existing = if field == "labels" { &meta(&cur).labels } else { &meta(&cur).annotations };
    let mut patch = serde_json::Map::new();
    for c in changes {
        if let Some((key, value)) = c.split_once('=') {
            if !overwrite && existing.get(key).is_some_and(|v| v != value) {
                return Err(CtlError::Usage(format!(
                    "{field} {key:?} already has the value {:?}; use --overwrite to change it",
                    existing[key]
                )));
            }
            patch.insert(key.to_string(), serde_json::Value::String(value.to_string()));
        } else if let Some(key) = c.strip_suffix('-') {
            patch.insert(key.to_string(), serde_json::Value::Null);
        } else {
            return Err(CtlError::Usage(format!("{c:?} is neither key=value nor key-")));
        }
    }
    let mut body = serde_json::json!({"metadata": {}});
    body["metadata"][field] = serde_json::Value::Object(patch);
    body["metadata"]["resourceVersion"] = serde_json::Value::String(meta(&cur).resource_version.clone());
    client.patch_object(k.name(), ns, name, &body, false).await?;
    outln!("{}/{name} {}", k.name().to_lowercase(), if field == "labels" { "labeled" } else { "annotated" });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn get(
    client: &Client,
    k: Kind,
    ns: &str,
    names: &[String],
    selector: Option<String>,
    field_selector: Option<String>,
    output: Option<Output>,
    watch: bool,
    all_namespaces: bool,
) -> Result<(), CtlError> {
    let (items, rv, mut missing) = fetch(client, k, ns, names, &selector, &field_selector).await?;
    let single = names.len() == 1;
    match output {
        Some(Output::Json) | Some(Output::Yaml) => print_documents(&items, single, output == Some(Output::Json)),
        Some(Output::Name) => {
            for o in &items {
                outln!("{}", ref_of(o));
            }
        }
        None | Some(Output::Wide) => {
            let wide = output == Some(Output::Wide);
            if items.is_empty() && !watch && missing.is_empty() {
                if ns.is_empty() {
                    eprintln!("No resources found");
                } else {
                    eprintln!("No resources found in {ns} namespace.");
                }
                return Ok(());
            }
            if !items.is_empty() {
                out!("{}", render(k, &items, wide, all_namespaces, true));
            }
        }
    }
    // Names that were not found are reported after what was shown; the exit is 1.
    if let Some(last) = missing.pop() {
        for e in missing {
            eprintln!("error: {e}");
        }
        return Err(last.into());
    }
    if watch && names.is_empty() {
        let req = pb::WatchRequest {
            kind: k.name().into(),
            namespace: ns.into(),
            label_selector: selector.unwrap_or_default(),
            field_selector: field_selector.unwrap_or_default(),
            resource_version: rv,
            allow_bookmarks: false,
        };
        watch_print(client, k, req, output, all_namespaces).await?;
    }
    Ok(())
}

/// Reads the objects `get` shows: the named ones, or every page of a list (and the
/// revision the list was read at).
async fn fetch(
    client: &Client,
    k: Kind,
    ns: &str,
    names: &[String],
    selector: &Option<String>,
    field_selector: &Option<String>,
) -> Result<(Vec<O>, String, Vec<flotilla_client::ClientError>), CtlError> {
    if !names.is_empty() {
        // Like kubectl: every name that exists is shown, each missing one is reported.
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for n in names {
            match client.get_object(k.name(), ns, n).await {
                Ok(o) => items.push(o),
                Err(flotilla_client::ClientError::Api(st)) if st.code() == tonic::Code::NotFound => {
                    missing.push(flotilla_client::ClientError::Api(st));
                }
                Err(e) => return Err(e.into()),
            }
        }
        return Ok((items, String::new(), missing));
    }
    let mut req = pb::ListRequest {
        kind: k.name().into(),
        namespace: ns.into(),
        label_selector: selector.clone().unwrap_or_default(),
        field_selector: field_selector.clone().unwrap_or_default(),
        limit: flotilla_client::client::DEFAULT_PAGE,
        ..Default::default()
    };
    let mut items = Vec::new();
    loop {
        let page = client.list_page(req.clone()).await?;
        items.extend(page.items.into_iter().filter_map(|o| o.kind));
        if page.r#continue.is_empty() {
            return Ok((items, page.resource_version, Vec::new()));
        }
        req.r#continue = page.r#continue;
    }
}

/// Objects as one JSON or YAML document: the object itself when one was asked for by
/// name, else a List.
fn print_documents(items: &[O], single: bool, json: bool) {
    let v: Vec<serde_json::Value> = items.iter().map(manifest::to_value).collect();
    let doc = match (single, v.first()) {
        (true, Some(one)) => one.clone(),
        _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": v}),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        out!("{}", serde_yaml::to_string(&doc).unwrap_or_default());
    }
}

fn render(k: Kind, items: &[O], wide: bool, all_namespaces: bool, with_headers: bool) -> String {
    let now = SystemTime::now();
    let mut headers = print::headers(k, wide);
    let mut rows: Vec<Vec<String>> = items.iter().map(|o| print::row(o, wide, now)).collect();
    if all_namespaces && k.namespaced() {
        headers.insert(0, "NAMESPACE");
        for (r, o) in rows.iter_mut().zip(items) {
            r.insert(0, meta(o).namespace.clone());
        }
    }
    let t = print::table(&headers, &rows);
    if with_headers {
        t
    } else {
        t.lines().skip(1).map(|l| format!("{l}\n")).collect()
    }
}

async fn watch_print(
    client: &Client,
    k: Kind,
    req: pb::WatchRequest,
    output: Option<Output>,
    all: bool,
) -> Result<(), CtlError> {
    use flotilla_proto::api::api_client::ApiClient;
    let mut stream = ApiClient::new(client.channel()).watch(req).await.map_err(ClientError::Api)?.into_inner();
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(ClientError::Api)?;
        if let Some(o) = ev.object.and_then(|o| o.kind) {
            if ev.r#type == "BOOKMARK" {
                continue;
            }
            match output {
                Some(Output::Name) => outln!("{}", ref_of(&o)),
                Some(Output::Json) => {
                    outln!("{}", serde_json::to_string_pretty(&manifest::to_value(&o)).unwrap_or_default())
                }
                Some(Output::Yaml) => {
                    out!("---\n{}", serde_yaml::to_string(&manifest::to_value(&o)).unwrap_or_default())
                }
                _ => out!("{}", render(k, &[o], output == Some(Output::Wide), all, false)),
            }
        }
    }
    Ok(())
}

async fn describe(client: &Client, k: Kind, ns: &str, name: &str) -> Result<(), CtlError> {
    let ns = if k.namespaced() { ns } else { "" };
    let o = client.get_object(k.name(), ns, name).await?;
    let m = meta(&o);
    let fmt_map = |m: &BTreeMap<String, String>| {
        if m.is_empty() {
            "<none>".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("\n              ")
        }
    };
    outln!("Name:         {}", m.name);
    if k.namespaced() {
        outln!("Namespace:    {}", m.namespace);
    }
    outln!("Kind:         {}", k.name());
    outln!("Labels:       {}", fmt_map(&m.labels));
    outln!("Annotations:  {}", fmt_map(&m.annotations));
    outln!("UID:          {}", m.uid);
    outln!("Created:      {} ({} ago)", m.creation_timestamp, print::age(&m.creation_timestamp, SystemTime::now()));
    outln!("Version:      {} (generation {})", m.resource_version, m.generation);
    if !m.deletion_timestamp.is_empty() {
        outln!("Deleting:     since {}", m.deletion_timestamp);
    }
    if !m.finalizers.is_empty() {
        outln!("Finalizers:   {}", m.finalizers.join(", "));
    }
    let mut body = flotilla_api::kinds::to_json(&o);
    if let Some(map) = body.as_object_mut() {
        map.remove("metadata");
    }
    if body.as_object().is_some_and(|m| !m.is_empty()) {
        out!("{}", serde_yaml::to_string(&body).unwrap_or_default());
    }
    if k != Kind::Event {
        let req = pb::ListRequest {
            kind: "Event".into(),
            namespace: if k.namespaced() { ns.into() } else { String::new() },
            field_selector: format!("involvedObject.name={name},involvedObject.kind={}", k.name()),
            ..Default::default()
        };
        let events: Vec<O> = client.list_page(req).await?.items.into_iter().filter_map(|o| o.kind).collect();
        outln!("Events:");
        if events.is_empty() {
            outln!("  <none>");
        }
        for e in events {
            if let O::Event(e) = e {
                let when = if e.last_timestamp.is_empty() {
                    e.metadata.as_ref().map(|m| m.creation_timestamp.clone()).unwrap_or_default()
                } else {
                    e.last_timestamp.clone()
                };
                let times = if e.count > 1 { format!(" (x{})", e.count) } else { String::new() };
                outln!("  {}  {}  {}{times}  {}", print::age(&when, SystemTime::now()), e.r#type, e.reason, e.message);
            }
        }
    }
    Ok(())
}

async fn channel(conn: &Conn, ep: &str) -> Result<flotilla_client::pool::Conn, CtlError> {
    let url = flotilla_client::endpoint_url(ep, conn.tls.is_some())?;
    let endpoint = Channel::from_shared(url).map_err(|e| CtlError::Usage(format!("endpoint {ep:?}: {e}")))?;
    let endpoint = endpoint
        .connect_timeout(std::time::Duration::from_secs(1))
        .timeout(std::time::Duration::from_secs(3))
        .http2_keep_alive_interval(std::time::Duration::from_secs(5))
        .keep_alive_timeout(std::time::Duration::from_secs(5));
    let creds = flotilla_client::pool::Credentials::new(&flotilla_client::Options {
        token: conn.token.clone(),
        ..Default::default()
    })?;
    Ok(flotilla_client::pool::Conn::new(flotilla_client::pool::channel(endpoint, conn.tls.as_ref()), creds))
}

/// Longest pause between two messages of a snapshot stream.
const SNAPSHOT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Streams a snapshot from the first endpoint that answers into `file`.
async fn snapshot_save(conn: &Conn, file: &std::path::Path) -> Result<(), CtlError> {
    use ep::maintenance_client::MaintenanceClient;
    use std::io::Write;
    let part = PathBuf::from(format!("{}.part", file.display()));
    let mut last = String::new();
    for e in &conn.eps {
        let mut c = MaintenanceClient::new(channel(conn, e).await?);
        let mut stream = match c.snapshot(ep::SnapshotRequest {}).await {
            Ok(s) => s.into_inner(),
            Err(err) => {
                last = format!("{e}: {}", flotilla_client::error::describe(&err));
                continue;
            }
        };
        let io = |err: std::io::Error| CtlError::Io(format!("writing {}: {err}", part.display()));
        let mut out = std::fs::File::create(&part).map_err(io)?;
        let (mut bytes, mut revision, mut complete) = (0usize, 0, false);
        let stalled = || CtlError::Io(format!("the snapshot from {e} stalled; {} is incomplete", part.display()));
        while let Some(msg) = tokio::time::timeout(SNAPSHOT_IDLE, stream.next()).await.map_err(|_| stalled())? {
            let msg = msg?;
            revision = msg.header.as_ref().map_or(revision, |h| h.revision);
            bytes += msg.blob.len();
            complete = msg.remaining_bytes == 0;
            out.write_all(&msg.blob).map_err(io)?;
        }
        out.sync_all().map_err(io)?;
        let head = std::fs::read(&part).map_err(io)?;
        if !complete || !head.starts_with(b"FLOTSNAP1") {
            return Err(CtlError::Io(format!(
                "the snapshot from {e} ended early or is not a Flotilla snapshot; {} kept for inspection",
                part.display()
            )));
        }
        std::fs::rename(&part, file).map_err(io)?;
        outln!("snapshot saved to {} ({bytes} bytes, from {e} at revision {revision})", file.display());
        return Ok(());
    }
    Err(CtlError::Usage(format!("no master could send a snapshot ({last})")))
}

async fn cluster(conn: &Conn, c: ClusterCommand) -> Result<(), CtlError> {
    use ep::cluster_client::ClusterClient;
    use ep::maintenance_client::MaintenanceClient;
    if let ClusterCommand::Snapshot(crate::SnapshotCommand::Save { file }) = &c {
        return snapshot_save(conn, file).await;
    }
    // Members from the first endpoint that answers.
    let mut members = None;
    let mut last_err = None;
    for e in &conn.eps {
        match ClusterClient::new(channel(conn, e).await?)
            .member_list(ep::MemberListRequest { linearizable: false })
            .await
        {
            Ok(r) => {
                members = Some(r.into_inner().members);
                break;
            }
            Err(err) => last_err = Some(format!("{e}: {}", flotilla_client::error::describe(&err))),
        }
    }
    let members =
        members.ok_or_else(|| CtlError::Usage(format!("no master answered ({})", last_err.unwrap_or_default())))?;
    let name_of = |id: u64| members.iter().find(|m| m.id == id).map_or(format!("{id:x}"), |m| m.name.clone());
    let mut statuses = Vec::new();
    for e in &conn.eps {
        let r = MaintenanceClient::new(channel(conn, e).await?).status(ep::StatusRequest {}).await;
        statuses.push((e.clone(), r.map(|r| r.into_inner())));
    }
    let leader = statuses.iter().find_map(|(_, s)| s.as_ref().ok().map(|s| s.leader).filter(|l| *l != 0));
    match c {
        ClusterCommand::Members => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        format!("{:x}", m.id),
                        m.name.clone(),
                        m.peer_ur_ls.join(","),
                        m.client_ur_ls.join(","),
                        if m.is_learner { "learner".into() } else { "voter".into() },
                        if Some(m.id) == leader { "yes".into() } else { String::new() },
                    ]
                })
                .collect();
            out!("{}", print::table(&["ID", "NAME", "PEER-URLS", "CLIENT-URLS", "ROLE", "LEADER"], &rows));
        }
        ClusterCommand::Status => {
            let rows: Vec<Vec<String>> = statuses
                .iter()
                .map(|(e, s)| match s {
                    Ok(s) => vec![
                        e.clone(),
                        s.header.as_ref().map_or(String::new(), |h| name_of(h.member_id)),
                        if s.leader != 0 { name_of(s.leader) } else { "<none>".into() },
                        s.header.as_ref().map_or(0, |h| h.revision).to_string(),
                        s.raft_term.to_string(),
                        s.raft_index.to_string(),
                        s.raft_applied_index.to_string(),
                        format!("{:.1} MiB", s.db_size as f64 / (1 << 20) as f64),
                    ],
                    Err(err) => vec![e.clone(), "<unreachable>".into(), flotilla_client::error::describe(err)],
                })
                .collect();
            out!(
                "{}",
                print::table(
                    &["ENDPOINT", "MEMBER", "LEADER", "REVISION", "TERM", "INDEX", "APPLIED", "DB-SIZE"],
                    &rows
                )
            );
        }
        ClusterCommand::Leader => match leader {
            Some(l) => outln!("{}", name_of(l)),
            None => return Err(CtlError::Usage("no member knows a leader".into())),
        },
        ClusterCommand::MoveLeader { name } => {
            let target = members
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
                    CtlError::Usage(format!("no member named {name:?}; members: {}", names.join(", ")))
                })?
                .id;
            let leader = leader.ok_or_else(|| CtlError::Usage("no member knows a leader".into()))?;
            let at = members
                .iter()
                .find(|m| m.id == leader)
                .and_then(|m| m.client_ur_ls.first().cloned())
                .ok_or_else(|| CtlError::Usage("the leader has no client URL".into()))?;
            MaintenanceClient::new(channel(conn, &at).await?)
                .move_leader(ep::MoveLeaderRequest { target_id: target })
                .await?;
            outln!("leadership moved to {name}");
        }
        ClusterCommand::Snapshot(_) => {}
    }
    Ok(())
}
