//! Compiles `proto/` with protox (pure Rust, no protoc needed) and hands the descriptors to
//! tonic-prost-build. The encoded descriptor set is also written to OUT_DIR for the gRPC
//! reflection service, with imports and source info so `grpcurl describe` shows comments.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(["events/v1/events.proto"])?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("events_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
