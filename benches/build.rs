//! Generates the benchmark service twice: with qrpc-build, and with tonic-prost-build for the
//! tonic peer.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::create_dir_all(out.join("qrpc"))?;
    std::fs::create_dir_all(out.join("tonic"))?;
    qrpc_build::configure()
        .out_dir(out.join("qrpc"))
        .compile(&["proto/bench.proto"], &["proto"])?;
    let fds = protox::compile(["tonic_bench.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .out_dir(out.join("tonic"))
        .bytes(".")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
