//! Compiles `proto/switchyard/bench/v1/echo.proto` with protox (no system `protoc`): Rust code
//! for the Echo service, and the encoded descriptor set, with its imports and the
//! `google.api.http` options, that Envoy's gRPC-JSON transcoder loads.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler
        .include_imports(true)
        .include_source_info(false)
        .open_file("switchyard/bench/v1/echo.proto")?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Options such as google.api.http survive only in the reflective encoding.
    std::fs::write(
        out_dir.join("echo_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    // Code for the Echo package alone; google.api and google.protobuf are not used from Rust.
    let mut set = compiler.file_descriptor_set();
    set.file.retain(|f| f.package() == "switchyard.bench.v1");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(set)?;
    Ok(())
}
