//! Runs the chat example: two members, one post, push events.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (events, members) = qrpc_examples::chat::run().await?;
    for event in events {
        println!("bob received {event:?}");
    }
    println!("members: {members:?}");
    Ok(())
}
