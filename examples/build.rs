//! Generates the example services from `proto/examples/` with qrpc-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    qrpc_build::compile_protos(
        &[
            "proto/examples/echo/v1/echo.proto",
            "proto/examples/chat/v1/chat.proto",
        ]
        .map(|p| format!("../{p}")),
        &["../proto/examples"],
    )?;
    Ok(())
}
