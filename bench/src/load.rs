//! The load generator: echo loads, connection set-up, idle connections.
//!
//! Each connection is a raw tokio `TcpStream` with the bench's own upgrade. Frames are
//! masked once before the run and written from that buffer; echoed frames are parsed
//! in place in one buffer per connection and their payloads skipped. Latencies go to a
//! per-connection histogram, merged at the end. Nothing is allocated per message.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::system;
use crate::wire::{self, OP_BINARY, OP_TEXT, Reader, XorShift};

/// How long to warm up and how long to measure.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Load before measuring starts.
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
}

/// An echo load: `conns` connections, each keeping `depth` messages of `size` bytes
/// in flight.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EchoSpec {
    /// Connections.
    pub(crate) conns: usize,
    /// Message size, bytes (before compression).
    pub(crate) size: usize,
    /// Text (else binary) messages.
    pub(crate) text: bool,
    /// Messages in flight per connection (1: one echo round trip at a time).
    pub(crate) depth: usize,
    /// Offer permessage-deflate and send compressed messages.
    pub(crate) deflate: bool,
}

/// What the server's process did during a measured window.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    /// Server CPU time over wall time, percent (100 = one core).
    pub(crate) server: f64,
    /// The part of `server` spent in user space (the rest is the kernel's).
    pub(crate) server_user: f64,
    /// The load generator's, likewise.
    pub(crate) client: f64,
    /// Every other process's (the machine is shared), likewise.
    pub(crate) other: f64,
}

impl Cpu {
    /// The part of `server` spent in the kernel.
    pub(crate) fn server_kernel(&self) -> f64 {
        self.server - self.server_user
    }
}

/// Throughput and latency of a measured window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rate {
    /// Messages (or connections) per second.
    pub(crate) per_second: f64,
    /// Median latency, microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub(crate) p99_us: f64,
    /// CPU use.
    pub(crate) cpu: Cpu,
}

/// Idle-connection memory.
#[derive(Debug, Clone)]
pub(crate) struct Idle {
    /// Connections held open at the end.
    pub(crate) conns: usize,
    /// Server RSS before, KiB.
    pub(crate) rss_before_kib: u64,
    /// Server RSS with every connection open, KiB.
    pub(crate) rss_after_kib: u64,
    /// Seconds it took to open them.
    pub(crate) open_seconds: f64,
    /// Why fewer connections than asked for were opened, if they were.
    pub(crate) stopped: Option<String>,
}

impl Idle {
    /// Server memory per connection, KiB.
    pub(crate) fn kib_per_conn(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.conns.max(1) as f64
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs the warm-up and the measured window while `phase` is shared with the
/// connection tasks; returns the measured wall time and CPU use.
async fn measure_window(phase: &AtomicU8, timing: Timing, server_pid: u32) -> (Duration, Cpu) {
    tokio::time::sleep(timing.warmup).await;
    let own = std::process::id();
    let server_cpu = system::cpu_times(server_pid).unwrap_or_default();
    let client_cpu = system::cpu_seconds(own).unwrap_or(0.0);
    let machine_cpu = system::machine_busy_seconds().unwrap_or(0.0);
    let start = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    tokio::time::sleep(timing.duration).await;
    phase.store(STOP, Ordering::Relaxed);
    let wall = start.elapsed();
    let percent = |before: f64, after: f64| 100.0 * (after - before) / wall.as_secs_f64();
    let server_after = system::cpu_times(server_pid).unwrap_or(server_cpu);
    let server_user = percent(server_cpu.user, server_after.user);
    let server = server_user + percent(server_cpu.system, server_after.system);
    let client = percent(client_cpu, system::cpu_seconds(own).unwrap_or(client_cpu));
    let machine = percent(
        machine_cpu,
        system::machine_busy_seconds().unwrap_or(machine_cpu),
    );
    let cpu = Cpu {
        server,
        server_user,
        client,
        other: (machine - server - client).max(0.0),
    };
    (wall, cpu)
}

/// Opens a connection from `source` (any local address when `None`).
async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let stream = match source {
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((ip, 0)))?;
            socket.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The echo load: messages per second over all connections and round-trip latency
/// (for `depth` > 1, from a message's send to its echo).
pub(crate) async fn echo(
    addr: SocketAddr,
    path: &str,
    spec: EchoSpec,
    timing: Timing,
    server_pid: u32,
) -> anyhow::Result<Rate> {
    let request: Arc<[u8]> = wire::upgrade_request(addr, path, spec.deflate).into();
    let payload = Arc::new(wire::payload(spec.size, spec.text, spec.deflate));
    let wire_payload = if spec.deflate {
        wire::deflate_message(&payload)?
    } else {
        payload.to_vec()
    };
    let opcode = if spec.text { OP_TEXT } else { OP_BINARY };
    // Big messages stream through the buffer; small ones arrive many per read.
    let buffer = (spec.size + 64).clamp(16 << 10, 256 << 10);

    let mut connecting = JoinSet::new();
    for index in 0..spec.conns {
        let request = request.clone();
        connecting.spawn(async move {
            let mut stream = connect(addr, None).await?;
            let mut reader = Reader::new(buffer);
            let upgraded = wire::upgrade(&mut stream, &request, reader.buffer()).await?;
            reader.upgraded(upgraded);
            ensure!(
                upgraded.deflate == spec.deflate,
                "permessage-deflate was {}agreed",
                if upgraded.deflate { "" } else { "not " }
            );
            anyhow::Ok((index, stream, reader))
        });
    }
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut running = JoinSet::new();
    while let Some(connected) = connecting.join_next().await {
        let (index, stream, reader) = connected??;
        let mut rng = XorShift::new(index as u64 + 1);
        let mut frames = Vec::with_capacity((wire_payload.len() + 14) * spec.depth);
        let mask = rng.mask();
        for _ in 0..spec.depth {
            wire::push_masked_frame(&mut frames, opcode, spec.deflate, &wire_payload, mask);
        }
        let connection = Connection {
            stream,
            reader,
            frames,
            depth: spec.depth,
            opcode,
            payload: payload.clone(),
            wire_len: wire_payload.len() as u64,
            deflate: spec.deflate,
            phase: phase.clone(),
        };
        running.spawn(connection.run());
    }
    let (wall, cpu) = measure_window(&phase, timing, server_pid).await;
    let mut messages = 0;
    let mut latency = histogram();
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Some(done) = tokio::time::timeout_at(deadline.into(), running.join_next())
        .await
        .context("connections did not finish within 30 s of the end")?
    {
        let (count, histogram) = done??;
        messages += count;
        latency.add(&histogram)?;
    }
    Ok(Rate {
        per_second: messages as f64 / wall.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: latency.value_at_quantile(0.99) as f64 / 1000.0,
        cpu,
    })
}

/// One echo connection's state.
struct Connection {
    stream: TcpStream,
    reader: Reader,
    /// `depth` masked frames back to back.
    frames: Vec<u8>,
    depth: usize,
    opcode: u8,
    payload: Arc<Vec<u8>>,
    wire_len: u64,
    deflate: bool,
    phase: Arc<AtomicU8>,
}

impl Connection {
    /// Checks one echo, then keeps `depth` messages in flight until told to stop;
    /// returns the messages echoed and their latencies in the measured window.
    async fn run(mut self) -> anyhow::Result<(u64, Histogram<u64>)> {
        let frame_len = self.frames.len() / self.depth;
        let mut latency = histogram();
        let mut sent_at = VecDeque::with_capacity(self.depth);

        // The first echo is checked in full.
        self.stream.write_all(&self.frames[..frame_len]).await?;
        let mut echoed = Vec::with_capacity(self.payload.len() + 64);
        let message = self
            .reader
            .next_message(&mut self.stream, Some(&mut echoed))
            .await?;
        ensure!(message.opcode == self.opcode, "echo of another opcode");
        if message.compressed {
            echoed = wire::inflate_message(&echoed)?;
        } else {
            ensure!(!self.deflate, "the server did not compress its echo");
        }
        ensure!(echoed == *self.payload, "the echo differs from the message");
        drop(echoed);

        let mut count = 0u64;
        let now = Instant::now();
        sent_at.extend(std::iter::repeat_n(now, self.depth));
        self.stream
            .write_all(&self.frames[..frame_len * self.depth])
            .await?;
        loop {
            self.reader.fill(&mut self.stream).await?;
            let now = Instant::now();
            let mut done = 0;
            while let Some(message) = self.reader.next_buffered(None)? {
                if !message.compressed && message.len != self.wire_len {
                    bail!("echo of {} bytes, sent {}", message.len, self.wire_len);
                }
                let sent = sent_at.pop_front().context("an echo nobody asked for")?;
                if self.phase.load(Ordering::Relaxed) == MEASURE {
                    count += 1;
                    latency.saturating_record(now.duration_since(sent).as_nanos() as u64);
                }
                done += 1;
            }
            if done > 0 {
                if self.phase.load(Ordering::Relaxed) == STOP {
                    return Ok((count, latency));
                }
                let now = Instant::now();
                sent_at.extend(std::iter::repeat_n(now, done));
                self.stream
                    .write_all(&self.frames[..frame_len * done])
                    .await?;
            }
        }
    }
}

/// Connection set-up: `concurrency` clients each open a connection, upgrade, close it
/// with a close handshake and start over. Counts complete cycles per second; the
/// latency is connect to `101`.
pub(crate) async fn setup(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    timing: Timing,
    server_pid: u32,
) -> anyhow::Result<Rate> {
    let request: Arc<[u8]> = wire::upgrade_request(addr, path, false).into();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut running = JoinSet::new();
    for index in 0..concurrency {
        let request = request.clone();
        let phase = phase.clone();
        running.spawn(async move {
            let close = wire::close_frame(XorShift::new(index as u64 + 1).mask());
            let mut buf = [0u8; 1024];
            let mut latency = histogram();
            let mut count = 0u64;
            loop {
                let phase = phase.load(Ordering::Relaxed);
                if phase == STOP {
                    return anyhow::Ok((count, latency));
                }
                let start = Instant::now();
                let mut stream = connect(addr, None).await?;
                let upgraded = wire::upgrade(&mut stream, &request, &mut buf).await?;
                let opened = start.elapsed();
                ensure!(
                    upgraded.start == upgraded.end,
                    "data before the first frame"
                );
                stream.write_all(&close).await?;
                // The server answers with its close frame and closes the TCP
                // connection first (RFC 6455 §7.1.1), so TIME_WAIT stays on its side.
                let closed = tokio::time::timeout(Duration::from_secs(5), async {
                    while stream.read(&mut buf).await? > 0 {}
                    std::io::Result::Ok(())
                })
                .await;
                ensure!(
                    matches!(closed, Ok(Ok(()))),
                    "the server did not close the connection"
                );
                if phase == MEASURE {
                    count += 1;
                    latency.saturating_record(opened.as_nanos() as u64);
                }
            }
        });
    }
    let (wall, cpu) = measure_window(&phase, timing, server_pid).await;
    let mut connections = 0;
    let mut latency = histogram();
    while let Some(done) = running.join_next().await {
        let (count, histogram) = done??;
        connections += count;
        latency.add(&histogram)?;
    }
    Ok(Rate {
        per_second: connections as f64 / wall.as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: latency.value_at_quantile(0.99) as f64 / 1000.0,
        cpu,
    })
}

/// Idle connections: opens `conns` connections (each upgraded and echoing one 20-byte
/// message, so the server has set it up completely), then compares the server's RSS
/// with what it was before. `sources` spreads the client ends over several loopback
/// addresses (about 28,000 ephemeral ports each). With `allow_fewer`, a connection
/// that cannot be opened (or the machine running low on memory) ends the opening and
/// the result says why; without, it fails the load.
pub(crate) async fn idle(
    addr: SocketAddr,
    path: &str,
    conns: usize,
    sources: &[Ipv4Addr],
    server_pid: u32,
    allow_fewer: bool,
) -> anyhow::Result<(Idle, Vec<TcpStream>)> {
    /// Connections being opened at once.
    const CONCURRENCY: usize = 128;
    /// Stop opening connections when less memory than this is left (KiB).
    const MEMORY_RESERVE_KIB: u64 = 2 << 20;

    let request: Arc<[u8]> = wire::upgrade_request(addr, path, false).into();
    let payload = wire::payload(20, true, false);
    let mut frame = Vec::new();
    wire::push_masked_frame(&mut frame, OP_TEXT, false, &payload, [1, 2, 3, 4]);
    let frame: Arc<[u8]> = frame.into();
    let open_one = |index: usize| {
        let request = request.clone();
        let frame = frame.clone();
        let source = (!sources.is_empty()).then(|| sources[index % sources.len()]);
        async move {
            let mut stream = connect(addr, source).await?;
            let mut buf = [0u8; 512];
            let upgraded = wire::upgrade(&mut stream, &request, &mut buf).await?;
            ensure!(
                upgraded.start == upgraded.end,
                "data before the first frame"
            );
            stream.write_all(&frame).await?;
            // An unmasked 20-byte text frame: 2 header bytes and the payload.
            stream.read_exact(&mut buf[..22]).await?;
            ensure!(buf[..2] == [0x81, 20], "unexpected echo");
            anyhow::Ok(stream)
        }
    };

    // One-time set-up in the server (thread pools, first instance) is not per
    // connection: open and close a few before the first reading.
    let mut warm = Vec::new();
    for index in 0..100.min(conns) {
        warm.push(open_one(index).await?);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = system::vm_rss_kib(server_pid)?;

    let start = Instant::now();
    let mut streams = Vec::with_capacity(conns);
    let mut opening = JoinSet::new();
    let mut stopped = None;
    for index in 0..conns {
        if opening.len() >= CONCURRENCY {
            match opening.join_next().await.context("opening")?? {
                Ok(stream) => streams.push(stream),
                Err(error) => {
                    stopped = Some(format!("{error:#}"));
                    break;
                }
            }
        }
        if index % 1000 == 0 && system::mem_available_kib()? < MEMORY_RESERVE_KIB {
            stopped = Some("the machine ran low on memory".to_owned());
            break;
        }
        opening.spawn(open_one(index));
    }
    while let Some(opened) = opening.join_next().await {
        match opened? {
            Ok(stream) => streams.push(stream),
            Err(error) => {
                stopped.get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    if let Some(why) = &stopped
        && !allow_fewer
    {
        bail!("{why} (after {} connections)", streams.len());
    }
    let open_seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_after_kib = system::vm_rss_kib(server_pid)?;
    Ok((
        Idle {
            conns: streams.len(),
            rss_before_kib,
            rss_after_kib,
            open_seconds,
            stopped,
        },
        streams,
    ))
}
