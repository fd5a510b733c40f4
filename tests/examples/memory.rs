//! Measures the host's memory per open connection, with and without
//! permessage-deflate, by opening connections to a real host and reading its RSS.
//!
//! Run with `cargo run --release -p wasmsocket-tests --example memory -- [CONNECTIONS]`
//! after `cargo test --release --workspace` has built the host and the components.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmsocket_tests::{Host, components};

/// (what is measured, `[listener]` settings, `[[service]]` settings, the client's
/// extension offer)
const MODES: &[(&str, &str, &str, &str)] = &[
    ("no compression", "", "", ""),
    ("no compression, shared mode", "", "mode = \"shared\"\n", ""),
    (
        "permessage-deflate, browser offer (context takeover)",
        "",
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    ),
    (
        "permessage-deflate, browser offer, compression_context_takeover = false",
        "compression_context_takeover = false\n",
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    ),
    (
        "permessage-deflate, client offers no context takeover both ways",
        "",
        "",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n",
    ),
];

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Opens one connection, sends one compressible message and reads its echo.
async fn open(host: &Host, extension: &str) -> TcpStream {
    let mut stream = TcpStream::connect(host.addr()).await.unwrap();
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extension}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    let compressed = String::from_utf8_lossy(&head).contains("permessage-deflate");
    // One uncompressed 100-byte text frame (a compressed peer may send uncompressed
    // messages too), masked with a zero key.
    let payload = [b'a'; 100];
    let mut frame = vec![0x81, 0x80 | 100, 0, 0, 0, 0];
    frame.extend_from_slice(&payload);
    stream.write_all(&frame).await.unwrap();
    let mut reply = [0u8; 2];
    stream.read_exact(&mut reply).await.unwrap();
    let len = (reply[1] & 0x7f) as usize;
    let mut body = vec![0; len];
    stream.read_exact(&mut body).await.unwrap();
    assert_eq!(
        reply[0] & 0x40 != 0,
        compressed,
        "RSV1 set exactly when compressed"
    );
    stream
}

#[tokio::main]
async fn main() {
    let connections: usize = std::env::args().nth(1).map_or(400, |n| n.parse().unwrap());
    println!("| mode | connections | host RSS per connection |");
    println!("|---|---|---|");
    for (mode, listener, service, extension) in MODES {
        let host = Host::start(&format!(
            "[listener]\nhost = \"127.0.0.1\"\nport = 0\n{listener}\n[[service]]\npath = \"/echo\"\ncomponent = {:?}\n{service}",
            components::ECHO
        ));
        let pid = host.pid();
        // Warm up: the first connections pay for lazily built state.
        let mut warm = Vec::new();
        for _ in 0..20 {
            warm.push(open(&host, extension).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = rss_kib(pid);
        let mut open_connections = Vec::with_capacity(connections);
        for _ in 0..connections {
            open_connections.push(open(&host, extension).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(pid);
        let per = (after.saturating_sub(before)) as f64 / connections as f64;
        println!("| {mode} | {connections} | {per:.1} KiB |");
        drop(open_connections);
        drop(warm);
    }
}
