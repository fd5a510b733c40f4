//! The native echo servers the host is compared with, one per engine, each run as its
//! own process (`wasmsocket-bench serve <engine>`) so its CPU time and memory are its
//! own.
//!
//! All share everything but the framing engine: the tokio runtime (multi-thread,
//! the same worker count and event interval as the host), `TCP_NODELAY`, and one
//! minimal HTTP upgrade (like the host's own, not the engines' optional hyper-based
//! ones). Each echo loop is the engine's documented idiom: read a message, write it
//! back. The floor is yawc's loop with the host's buffers and a bare WebAssembly call
//! on the way ([`WasmHop`]).

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
        Engine::Yawc | Engine::Floor => yawc_echo(stream, extensions, hop(engine)?).await,
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

/// The floor's connections pass their messages through an instance of their own.
fn hop(engine: Engine) -> anyhow::Result<Option<WasmHop>> {
    match engine {
        Engine::Floor => Ok(Some(WasmHop::new()?)),
        _ => Ok(None),
    }
}

/// yawc's echo; with `hop`, every message goes through it on the way back.
async fn yawc_echo(
    stream: TcpStream,
    extensions: Option<&str>,
    mut hop: Option<WasmHop>,
) -> anyhow::Result<()> {
    use yawc::{Frame, OpCode, Options, Role, WebSocket};
    // The host's engine settings (host/src/engine.rs), but for its buffers: the yawc
    // target reads with yawc's default 8 KiB buffer, the floor as the host does.
    let mut options = Options::default()
        .with_utf8()
        .with_no_delay()
        .with_limits(MAX_MESSAGE + 1, MAX_MESSAGE + 1);
    if hop.is_some() {
        options = options
            .with_read_buffer_capacity(HOST_READ_BUFFER)
            .with_idle_buffers_released();
    }
    if extensions.is_some() {
        static POOL: OnceLock<yawc::DeflatePool> = OnceLock::new();
        options = options
            .with_compression_level(yawc::CompressionLevel::fast())
            .with_deflate_pool(POOL.get_or_init(|| yawc::DeflatePool::new(16)).clone());
    }
    let mut ws = WebSocket::from_stream_with_extensions(stream, Role::Server, extensions, options)?;
    loop {
        let frame = ws.next_frame().await?;
        let text = match frame.opcode() {
            OpCode::Close => {
                // Sends the close reply the engine queued.
                ws.flush().await?;
                return Ok(());
            }
            OpCode::Text => true,
            OpCode::Binary => false,
            _ => continue,
        };
        let payload = match &mut hop {
            Some(hop) => hop.call(frame.payload(), text)?,
            None => frame.into_payload(),
        };
        let reply = if text {
            Frame::text(payload)
        } else {
            Frame::binary(payload)
        };
        ws.send(reply).await?;
    }
}

/// The least a host that hands each message to a WebAssembly handler does with it:
/// per connection a wasmtime store with an instance of its own (the host's isolated
/// mode), per message the payload copied into the instance's memory, one call, and
/// the reply copied out (checked as UTF-8 when it is text, as a string lifted from a
/// component is). No component model, no allocator call in the guest, no
/// bookkeeping. Nor the host's pool of linear memories: for set-up and idle memory the
/// floor is no bound, only what a plain instance per connection costs.
struct WasmHop {
    store: wasmtime::Store<()>,
    echo: wasmtime::TypedFunc<u32, u32>,
    memory: wasmtime::Memory,
    /// The replies' buffer, taken back once the last reply is written.
    replies: bytes::BytesMut,
}

/// A core module exporting its memory (one page, growable) and
/// `echo(len: i32) -> i32`, which returns `len`: the reply is the message in place.
const FLOOR_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x06, 0x01, 0x60, 0x01, 0x7f, 0x01, 0x7f, // types: (i32) -> i32
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x05, 0x03, 0x01, 0x00, 0x01, // memories: one, at least one page
    0x07, 0x11, 0x02, // exports: two
    0x04, b'e', b'c', b'h', b'o', 0x00, 0x00, // "echo": function 0
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // "memory": memory 0
    0x0a, 0x06, 0x01, 0x04, 0x00, 0x20, 0x00, 0x0b, // code: local.get 0
];

impl WasmHop {
    fn new() -> anyhow::Result<Self> {
        static PRE: OnceLock<(wasmtime::Engine, wasmtime::InstancePre<()>)> = OnceLock::new();
        let (engine, pre) = match PRE.get() {
            Some(pre) => pre,
            None => {
                // As in host/src/runtime.rs (but for its memory pool): deadlines armed
                // per call, no guard region before linear memory, no copy-on-write
                // image, synchronous calls.
                let mut config = wasmtime::Config::new();
                config
                    .epoch_interruption(true)
                    .guard_before_linear_memory(false)
                    .memory_init_cow(false)
                    .concurrency_support(false);
                let engine = wasmtime::Engine::new(&config)?;
                let module = wasmtime::Module::new(&engine, FLOOR_MODULE)?;
                let pre = wasmtime::Linker::new(&engine).instantiate_pre(&module)?;
                PRE.get_or_init(|| (engine, pre))
            }
        };
        let mut store = wasmtime::Store::new(engine, ());
        store.set_epoch_deadline(HOP_DEADLINE);
        let instance = pre.instantiate(&mut store)?;
        let echo = instance.get_typed_func(&mut store, "echo")?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .context("the floor module exports its memory")?;
        Ok(Self {
            store,
            echo,
            memory,
            replies: bytes::BytesMut::new(),
        })
    }

    /// Passes `payload` through the instance.
    fn call(&mut self, payload: &[u8], text: bool) -> anyhow::Result<bytes::Bytes> {
        let len = payload.len();
        let size = self.memory.data_size(&self.store);
        if len > size {
            self.memory
                .grow(&mut self.store, (len - size).div_ceil(PAGE) as u64)?;
        }
        self.memory.data_mut(&mut self.store)[..len].copy_from_slice(payload);
        self.store.set_epoch_deadline(HOP_DEADLINE);
        let returned = self.echo.call(&mut self.store, len as u32)? as usize;
        let reply = self
            .memory
            .data(&self.store)
            .get(..returned)
            .context("the floor module returned a length past its memory")?;
        if text {
            std::str::from_utf8(reply)?;
        }
        // Reuses the allocation of the last reply, which yawc has written and dropped:
        // no allocator in the way.
        self.replies.clear();
        self.replies.reserve(returned);
        self.replies.extend_from_slice(reply);
        Ok(self.replies.split().freeze())
    }
}

/// The host's socket read buffer (`READ_BUFFER` in host/src/engine.rs).
const HOST_READ_BUFFER: usize = 64 << 10;

/// WebAssembly's page size.
const PAGE: usize = 64 << 10;

/// Epoch ticks a call may take: nothing advances the epoch here, so this only arms the
/// check, as the host arms it before every call.
const HOP_DEADLINE: u64 = 1;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_floor_has_an_instance() -> anyhow::Result<()> {
        assert!(hop(Engine::Floor)?.is_some());
        assert!(hop(Engine::Yawc)?.is_none());
        Ok(())
    }

    #[test]
    fn the_floor_passes_messages_through_its_instance() -> anyhow::Result<()> {
        let mut hop = WasmHop::new()?;
        assert_eq!(hop.call(b"hello", true)?, "hello");
        // Past the instance's one page: its memory grows, and a shorter message after
        // a longer one comes back at its own length.
        let large: Vec<u8> = (0..3 * PAGE + 7).map(|i| i as u8).collect();
        assert_eq!(hop.call(&large, false)?, large);
        assert_eq!(hop.call(b"\xff\x00", false)?, &b"\xff\x00"[..]);
        // Text that is not UTF-8 is refused, as a lifted string would be.
        assert!(hop.call(b"\xff", true).is_err());
        Ok(())
    }
}
