//! Compiles the .proto sources under `proto/` into Rust with prost + tonic.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
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
    Ok(())
}
