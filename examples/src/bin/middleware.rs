//! Runs the middleware example: auth and per-method rate limits.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("qrpc::audit=info")
        .init();
    let codes = qrpc_examples::middleware::run().await?;
    println!("post before join, then four posts: {codes:?}");
    Ok(())
}
