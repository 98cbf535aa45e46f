//! Compiles the `.proto` files with protox, a protobuf compiler written in Rust, so that a
//! fresh machine needs no system `protoc`.
//!
//! Without the `grpc` feature only the prost message types are generated, so that a crate
//! which needs the wire types alone (the pure core, the fuzz targets) pulls in neither tonic
//! nor a transport. With it, the gRPC clients and servers are generated beside the messages.
//! Cargo builds the crate once per feature set, so the two never share an `OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "switchyard/forwarding/v1/forwarding.proto",
        "switchyard/registry/v1/registry.proto",
        "switchyard/audit/v1/audit.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // Maps are iterated (digests, listings), so they must have a stable order.
        .btree_map(".")
        .bytes(".switchyard.forwarding.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
