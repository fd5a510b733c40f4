//! Drives the Autobahn TestSuite's fuzzingserver with the native client: each case is
//! a connection on which every message is echoed back.
//!
//! Run with `scripts/autobahn-client.sh` (it starts wstest), or by hand:
//! `cargo run --release -p wasmsocket-client --example autobahn -- ws://127.0.0.1:9001 wasmsocket`

#![cfg_attr(
    target_arch = "wasm32",
    allow(unused_imports, reason = "native-only example")
)]

use std::time::Duration;

use wasmsocket_client::{Client, ClientConfig, Message};

/// The suite drives a native client; in a browser build this example is empty.
#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn config() -> ClientConfig {
    // Autobahn's limits (9.*: 16 MiB messages, frames as large) are this example's
    // configuration, not the client's defaults.
    ClientConfig::default()
        .max_frame_size(64 << 20)
        .handshake_timeout(Duration::from_secs(30))
}

#[cfg(not(target_arch = "wasm32"))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let agent = args.next().unwrap_or_else(|| "wasmsocket-client".into());

    let mut counter = Client::connect(&format!("{base}/getCaseCount"), config()).await?;
    let count: u32 = counter.read_text().await?.trim().parse()?;
    println!("{count} cases");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let mut client = match Client::connect(&url, config()).await {
            Ok(client) => client,
            Err(error) => {
                eprintln!("case {case}: {error}");
                continue;
            }
        };
        // Echo until the case ends; errors here are the suite's to judge.
        loop {
            let echoed = match client.read().await {
                Ok(Message::Text(text)) => client.write_text(&text).await,
                Ok(Message::Binary(data)) => client.write_binary(&data).await,
                Err(_) => break,
            };
            if echoed.is_err() {
                break;
            }
        }
    }

    let mut report =
        Client::connect(&format!("{base}/updateReports?agent={agent}"), config()).await?;
    while report.read().await.is_ok() {}
    println!("reports updated");
    Ok(())
}
