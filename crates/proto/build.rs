//! Compiles the .proto sources under `proto/` into Rust with prost + tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest dir as cargo gives it to this run, not as it was when the script was
    // compiled (`env!`): a build script compiled for one checkout may be reused for
    // another that shares the target dir, and must read that checkout's protos.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let etcd = root.join("etcd");
    let raft = root.join("flotilla/raft/v1");
    // Relative paths: cargo resolves them against this package, so checkouts at different
    // paths that share one target dir each watch their own files.
    for f in ["etcd/kv.proto", "etcd/rpc.proto", "flotilla/raft/v1/raft.proto"] {
        println!("cargo:rerun-if-changed=../../proto/{f}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[etcd.join("kv.proto"), etcd.join("rpc.proto"), raft.join("raft.proto")], &[etcd, raft])?;

    // The resource API also has a JSON form (manifests, patches, `-o json|yaml`) in
    // Kubernetes' field names: camelCase, unknown fields refused, absent fields defaulted,
    // empty fields left out (as Kubernetes' `omitempty`).
    let api = root.join("flotilla/api/v1");
    println!("cargo:rerun-if-changed=../../proto/flotilla/api/v1/api.proto");
    let mut b = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .btree_map(".flotilla.api.v1")
        .message_attribute(
            ".flotilla.api.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]\n#[serde(rename_all = \"camelCase\", deny_unknown_fields, default)]",
        )
        .enum_attribute(
            ".flotilla.api.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]\n#[serde(rename_all = \"camelCase\")]",
        )
;
    // Every field of every message but the oneof of `Object` (serde has no such attribute
    // on enum variants).
    let text = std::fs::read_to_string(api.join("api.proto"))?;
    for name in text.lines().filter_map(|l| l.strip_prefix("message ")?.split_whitespace().next()) {
        if name != "Object" {
            b = b.field_attribute(
                format!(".flotilla.api.v1.{name}"),
                "#[serde(skip_serializing_if = \"crate::is_default\")]",
            );
        }
    }
    // Kubernetes spells these initialisms in capitals.
    for (field, json) in [
        ("PodStatus.pod_ip", "podIP"),
        ("PodStatus.host_ip", "hostIP"),
        ("ContainerPort.host_ip", "hostIP"),
        ("ServiceSpec.cluster_ip", "clusterIP"),
        ("NodeSpec.pod_cidr", "podCIDR"),
        ("NodeSpec.provider_id", "providerID"),
        ("ContainerStatus.container_id", "containerID"),
        ("NodeSystemInfo.machine_id", "machineID"),
    ] {
        b = b.field_attribute(format!(".flotilla.api.v1.{field}"), format!("#[serde(rename = \"{json}\")]"));
    }
    b.compile_protos(&[api.join("api.proto")], &[api])?;
    Ok(())
}
