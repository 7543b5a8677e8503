//! Runs the middleware example: a server-wide audit layer, a guarded chat room next to an open
//! echo service, and a client-side deadline.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("qrpc::audit=info")
        .init();
    let report = qrpc_examples::middleware::run().await?;
    println!("echo before joining the room: {:?}", report.echoed);
    println!("post before join, then four posts: {:?}", report.posts);
    Ok(())
}
