//! Produce and consume a few messages.
//!
//! Start a node with `scripts/dev.sh`, then:
//! `cargo run -p raftstream-client --example quickstart`
//! (the token is read from RAFTSTREAM_TOKEN or ./data/admin-token).

use std::time::Duration;

use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::Consumer;
use raftstream_client::Error;
use raftstream_client::Position;
use raftstream_client::Producer;
use raftstream_client::ProducerConfig;
use raftstream_client::Record;
use raftstream_client::pb;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("RAFTSTREAM_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let token = std::env::var("RAFTSTREAM_TOKEN")
        .or_else(|_| std::fs::read_to_string("data/admin-token").map(|t| t.trim().to_string()))?;
    let client = Client::connect(ClientConfig::new([addr]).with_token(token)).await?;

    let request = pb::CreateTopicRequest {
        name: "quickstart".into(),
        partitions: 1,
        ..Default::default()
    };
    match client.create_topic(request).await {
        Ok(_) | Err(Error::AlreadyExists(_)) => {}
        Err(e) => return Err(e.into()),
    }

    let producer = Producer::new(&client, "quickstart", ProducerConfig::default()).await?;
    let mut deliveries = Vec::new();
    for i in 0..10 {
        deliveries.push(producer.send(Record::new(format!("hello {i}"))).await?);
    }
    for delivery in deliveries {
        let ack = delivery.await??;
        println!("stored {}", ack.message_id);
    }

    let mut consumer = Consumer::new(&client, "quickstart", 0, Position::Earliest).await?;
    for message in consumer.poll(100, Duration::from_secs(1)).await? {
        println!(
            "read {}: {}",
            message.message_id,
            String::from_utf8_lossy(&message.value)
        );
    }
    Ok(())
}
