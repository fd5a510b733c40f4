//! The native echo servers the host is compared with, one per engine, each run as its
//! own process (`wasmsocket-bench serve <engine>`) so its CPU time and memory are its
//! own.
//!
//! All three share everything but the framing engine: the tokio runtime (multi-thread,
//! the same worker count and event interval as the host), `TCP_NODELAY`, and one
//! minimal HTTP upgrade (like the host's own, not the engines' optional hyper-based
//! ones). Each echo loop is the engine's documented idiom: read a message, write it
//! back.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::targets::Engine;

/// Largest message the servers take (the compression load sends 1 MiB).
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

/// The host's tokio event interval (`EVENT_INTERVAL` in host/src/main.rs): the servers
/// compared run with the same tokio settings.
pub(crate) const EVENT_INTERVAL: u32 = 128;

/// Serves `/` (any path) on 127.0.0.1:`port` with `engine` until killed; prints
/// `listening on ADDR` once bound.
pub(crate) fn run(engine: Engine, port: u16, workers: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .event_interval(EVENT_INTERVAL)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(async move {
                        if let Err(error) = serve(engine, stream).await
                            && std::env::var_os("BENCH_DEBUG").is_some()
                        {
                            eprintln!("connection: {error:#}");
                        }
                    });
                }
                // Out of file descriptors, most likely: wait for some to be freed.
                Err(error) => {
                    eprintln!("accept: {error}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    })
}

async fn serve(engine: Engine, mut stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let extensions = handshake(&mut stream, engine.supports_deflate()).await?;
    match engine {
        Engine::Fastwebsockets => fastwebsockets_echo(stream).await,
        Engine::Yawc => yawc_echo(stream, extensions).await,
        Engine::Tungstenite => tungstenite_echo(stream).await,
    }
}

/// Reads the upgrade request and writes the `101`; returns the agreed extension.
/// The load generator waits for the `101` before it sends a frame, so the request is
/// all there is to read.
async fn handshake(
    stream: &mut TcpStream,
    deflate_supported: bool,
) -> anyhow::Result<Option<&'static str>> {
    let mut buf = [0u8; 4096];
    let mut len = 0;
    let (key, deflate_offered) = loop {
        ensure!(len < buf.len(), "upgrade request too long");
        let read = stream.read(&mut buf[len..]).await?;
        ensure!(read > 0, "closed before the upgrade request");
        len += read;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len])? {
            httparse::Status::Partial => continue,
            httparse::Status::Complete(head) => {
                ensure!(head == len, "bytes after the upgrade request");
                let mut key = None;
                let mut deflate_offered = false;
                for header in request.headers.iter() {
                    if header.name.eq_ignore_ascii_case("sec-websocket-key") {
                        key = Some(header.value.to_vec());
                    } else if header.name.eq_ignore_ascii_case("sec-websocket-extensions") {
                        deflate_offered |= String::from_utf8_lossy(header.value)
                            .split(',')
                            .any(|offer| offer.trim().starts_with("permessage-deflate"));
                    }
                }
                break (key.context("no Sec-WebSocket-Key")?, deflate_offered);
            }
        }
    };
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(&key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes());
    // The load generator offers exactly `wire::DEFLATE_OFFER`; this is its answer.
    let extensions = (deflate_supported && deflate_offered)
        .then_some("permessage-deflate; client_no_context_takeover");
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\
         {}\r\n",
        extensions.map_or(String::new(), |value| format!(
            "Sec-WebSocket-Extensions: {value}\r\n"
        )),
    );
    stream.write_all(response.as_bytes()).await?;
    Ok(extensions)
}

async fn fastwebsockets_echo(stream: TcpStream) -> anyhow::Result<()> {
    use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket};
    let mut ws = WebSocket::after_handshake(stream, Role::Server);
    ws.set_max_message_size(MAX_MESSAGE);
    let mut ws = FragmentCollector::new(ws);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

async fn yawc_echo(stream: TcpStream, extensions: Option<&str>) -> anyhow::Result<()> {
    use yawc::{Frame, OpCode, Options, Role, WebSocket};
    // The host's engine settings (host/src/engine.rs), minus the WebAssembly.
    let mut options = Options::default()
        .with_utf8()
        .with_no_delay()
        .with_limits(MAX_MESSAGE + 1, MAX_MESSAGE + 1);
    if extensions.is_some() {
        static POOL: OnceLock<yawc::DeflatePool> = OnceLock::new();
        options = options
            .with_compression_level(yawc::CompressionLevel::fast())
            .with_deflate_pool(POOL.get_or_init(|| yawc::DeflatePool::new(16)).clone());
    }
    let mut ws = WebSocket::from_stream_with_extensions(stream, Role::Server, extensions, options)?;
    loop {
        let frame = ws.next_frame().await?;
        let reply = match frame.opcode() {
            OpCode::Close => {
                // Sends the close reply the engine queued.
                ws.flush().await?;
                return Ok(());
            }
            OpCode::Text => Frame::text(frame.into_payload()),
            OpCode::Binary => Frame::binary(frame.into_payload()),
            _ => continue,
        };
        ws.send(reply).await?;
    }
}

async fn tungstenite_echo(stream: TcpStream) -> anyhow::Result<()> {
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE));
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await;
    while let Some(message) = ws.next().await {
        // On a close frame the engine queues its reply; the next poll sends it and
        // ends the stream.
        if let message @ (Message::Text(_) | Message::Binary(_)) = message? {
            ws.send(message).await?;
        }
    }
    Ok(())
}
