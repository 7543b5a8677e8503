//! Generates the messenger's services from `proto/qpq/v1/` with qrpc-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "common",
        "auth",
        "delivery",
        "keys",
        "channel",
        "user",
        "blob",
        "device",
        "p2p",
        "federation",
        "push",
        "content",
        "cluster",
    ]
    .map(|name| format!("../../proto/qpq/v1/{name}.proto"));
    qrpc_build::compile_protos(&files, &["../../proto"])?;
    Ok(())
}
