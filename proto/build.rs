//! Compiles `crossflow/v1/*.proto` with protox (a pure-Rust protobuf compiler),
//! so building needs no system `protoc`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let dir = root.join("crossflow/v1");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed={}", dir.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves this set, so generated clients in any language work.
    fs::write(out.join("crossflow_descriptor.bin"), fds.encode_to_vec())?;
    // Servers decode requests with our codec, which answers an undecodable
    // request INVALID_ARGUMENT MALFORMED_MESSAGE. tonic-build takes one codec
    // for servers and clients alike, and a response that does not decode is
    // the server's bug, not the caller's, so clients are generated in a second
    // pass with tonic-prost's codec (INTERNAL), reusing the first pass's types.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(fds.clone())?;
    let clients = out.join("client");
    fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .extern_path(".crossflow.v1", "crate::v1")
        .out_dir(&clients)
        .compile_fds(fds)?;
    Ok(())
}
