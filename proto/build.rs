//! Compiles the protobuf definitions with a vendored protoc so a fresh
//! machine needs no system-wide protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let protos = [
        "raftstream/v1/raftstream.proto",
        "raftstream/v1/ingest.proto",
        "raftstream/v1/subscriptions.proto",
        "raftstream/v1/raft.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // The decode budget (src/decode_budget.rs) walks requests by their
    // descriptors, found by each message's full name.
    config.enable_type_names();
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .bytes(".")
        // Every service encodes through our codec, which sizes each message's buffer once.
        .codec_path("crate::codec::PresizedCodec")
        .file_descriptor_set_path(descriptors)
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
