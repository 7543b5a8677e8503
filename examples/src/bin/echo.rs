//! Runs the echo example: a server on loopback and a client making every kind of call.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = qrpc_examples::echo::run().await?;
    println!("unary:            {}", report.said);
    println!("server-streaming: {:?}", report.repeated);
    println!("client-streaming: sum = {}", report.sum);
    println!("bidi:             {:?}", report.doubled);
    Ok(())
}
