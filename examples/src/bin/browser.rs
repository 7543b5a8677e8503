//! Serves the echo and chat examples to a browser page: `cargo run -p qrpc-examples --bin
//! browser -- [--http ADDR] [--quic ADDR] [--static DIR] [--ask-client-certificates]`, then
//! open the printed address.
//! Build the page's scripts first: `(cd clients/typescript && npm ci && npm run build)`.

use std::net::SocketAddr;
use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // web-transport-quinn logs a peer's malformed input at WARN, once per
                // input: a peer could fill the log.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,web_transport_quinn=error")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut http: SocketAddr = "127.0.0.1:8080".parse()?;
    let mut quic: SocketAddr = "127.0.0.1:4433".parse()?;
    let mut root = qrpc_examples::browser::default_static_dir();
    let mut ask_client_certificates = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--http" => http = value()?.parse()?,
            "--quic" => quic = value()?.parse()?,
            "--static" => root = PathBuf::from(value()?),
            "--ask-client-certificates" => ask_client_certificates = true,
            other => anyhow::bail!(
                "unknown argument {other}; usage: browser [--http ADDR] [--quic ADDR] [--static DIR] [--ask-client-certificates]"
            ),
        }
    }
    if !root.join("dist/examples/page/main.js").exists() {
        anyhow::bail!(
            "the page's scripts are not built under {}: run `npm ci && npm run build` in clients/typescript",
            root.display()
        );
    }
    let running = qrpc_examples::browser::serve(qrpc_examples::browser::Options {
        quic,
        http,
        static_dir: root,
        ask_client_certificates,
    })
    .await?;
    println!("qrpc (native and WebTransport) on udp {}", running.quic);
    println!(
        "native clients pin {}",
        qrpc::tls::format_fingerprint(&running.fingerprint)
    );
    // The line tools read: where the page is.
    println!("page {}", running.page_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
