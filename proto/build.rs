//! Generates the gRPC code with a vendored protoc (no system protoc needed) and a file
//! descriptor set for server reflection.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("stockade_descriptor.bin"))
        .compile_protos(
            &[
                "proto/stockade/v1/stockade.proto",
                "proto/stockade/v1/raft.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
