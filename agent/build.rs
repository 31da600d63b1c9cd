//! Generates the scheduler hook's gRPC code (src/hook/) from proto/rekindle/v1/hook.proto,
//! with its file descriptor set for server reflection. Needs `protoc` (protobuf-compiler).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("rekindle_v1_descriptor.bin"))
        .compile_protos(&["proto/rekindle/v1/hook.proto"], &["proto"])?;
    Ok(())
}
