//! Compiles the `.proto` files with protox, a protobuf compiler written in Rust, so that a
//! fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "switchyard/forwarding/v1/forwarding.proto",
        "switchyard/registry/v1/registry.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        // Maps are iterated (digests, listings), so they must have a stable order.
        .btree_map(".")
        .bytes(".switchyard.forwarding.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
