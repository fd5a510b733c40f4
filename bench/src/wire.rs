//! The load generator's side of the wire: the upgrade request, frames masked once and
//! kept as bytes, and a minimal parser for the server's frames.
//!
//! Nothing here allocates per message. A frame to send is a slice of a buffer built
//! before the run; a received frame is only measured (header parsed, payload skipped)
//! unless the caller asks for its payload, which it does for the first echo of a
//! connection to check that the server echoes what it was sent.

use std::net::SocketAddr;

use anyhow::{Context as _, bail, ensure};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Continuation frame.
pub(crate) const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub(crate) const OP_BINARY: u8 = 0x2;
/// Close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;

/// The extension offer of the compression load: the client compresses every message
/// on its own, so each message's compressed frame can be built once, before the run.
pub(crate) const DEFLATE_OFFER: &str = "permessage-deflate; client_no_context_takeover";

/// The upgrade request the load generator sends (the same bytes on every connection).
pub(crate) fn upgrade_request(addr: SocketAddr, path: &str, deflate: bool) -> Vec<u8> {
    let extensions = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    format!(
        "GET {path} HTTP/1.1\r\n\
         Host: {addr}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\
         {extensions}\r\n"
    )
    .into_bytes()
}

/// What the server's `101` agreed on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upgraded {
    /// The response carried a `permessage-deflate` extension.
    pub(crate) deflate: bool,
    /// Bytes after the response head already in the buffer: `buf[start..end]`.
    pub(crate) start: usize,
    /// End of the bytes read.
    pub(crate) end: usize,
}

/// Sends `request` and reads the response head into `buf`; fails unless it is a `101`.
pub(crate) async fn upgrade(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut [u8],
) -> anyhow::Result<Upgraded> {
    stream.write_all(request).await?;
    let mut end = 0;
    loop {
        ensure!(end < buf.len(), "the upgrade response head is too long");
        let read = stream.read(&mut buf[end..]).await?;
        ensure!(
            read > 0,
            "the server closed the connection during the upgrade"
        );
        end += read;
        let Some(head_end) = find(&buf[..end], b"\r\n\r\n") else {
            continue;
        };
        let head = &buf[..head_end];
        if !head.starts_with(b"HTTP/1.1 101") {
            let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            bail!("upgrade refused: {}", String::from_utf8_lossy(line));
        }
        let lower = head.to_ascii_lowercase();
        let deflate = find(&lower, b"\r\nsec-websocket-extensions:")
            .is_some_and(|at| find(&lower[at..], b"permessage-deflate").is_some());
        return Ok(Upgraded {
            deflate,
            start: head_end + 4,
            end,
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Appends one masked client frame (FIN set) carrying `payload` to `out`.
pub(crate) fn push_masked_frame(
    out: &mut Vec<u8>,
    opcode: u8,
    compressed: bool,
    payload: &[u8],
    mask: [u8; 4],
) {
    let rsv1 = if compressed { 0x40 } else { 0 };
    out.push(0x80 | rsv1 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

/// A normal close frame (1000), masked.
pub(crate) fn close_frame(mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8);
    push_masked_frame(&mut frame, OP_CLOSE, false, &1000u16.to_be_bytes(), mask);
    frame
}

/// One complete data message the server sent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Message {
    /// [`OP_TEXT`] or [`OP_BINARY`].
    pub(crate) opcode: u8,
    /// Payload bytes on the wire, summed over its frames.
    pub(crate) len: u64,
    /// RSV1 was set on its first frame (permessage-deflate).
    pub(crate) compressed: bool,
}

/// Reads the server's frames through one buffer that lives as long as the connection.
/// Payloads are skipped, not copied, unless a capture buffer is given.
pub(crate) struct Reader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    in_frame: bool,
    remaining: u64,
    fin: bool,
    frame_opcode: u8,
    message: Message,
}

impl Reader {
    /// A reader with a buffer of `capacity` bytes (at least one frame header).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(64)].into_boxed_slice(),
            start: 0,
            end: 0,
            in_frame: false,
            remaining: 0,
            fin: false,
            frame_opcode: 0,
            message: Message {
                opcode: 0,
                len: 0,
                compressed: false,
            },
        }
    }

    /// The whole buffer, for [`upgrade`] to read the response head into; then
    /// [`Reader::upgraded`] keeps whatever followed the head.
    pub(crate) fn buffer(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Keeps the bytes that followed the upgrade response head.
    pub(crate) fn upgraded(&mut self, upgraded: Upgraded) {
        self.start = upgraded.start;
        self.end = upgraded.end;
    }

    /// Parses what is buffered: the next complete data message, or `None` when more
    /// bytes are needed. With `capture`, data payload bytes are appended to it.
    pub(crate) fn next_buffered(
        &mut self,
        mut capture: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<Option<Message>> {
        loop {
            if self.in_frame {
                let available = (self.end - self.start) as u64;
                let take = available.min(self.remaining) as usize;
                if let Some(capture) = capture.as_deref_mut()
                    && self.frame_opcode <= OP_BINARY
                {
                    capture.extend_from_slice(&self.buf[self.start..self.start + take]);
                }
                self.start += take;
                self.remaining -= take as u64;
                if self.remaining > 0 {
                    return Ok(None);
                }
                self.in_frame = false;
                match self.frame_opcode {
                    OP_CONTINUATION | OP_TEXT | OP_BINARY if self.fin => {
                        return Ok(Some(self.message));
                    }
                    OP_CLOSE => bail!("the server closed the connection"),
                    // Pings, pongs and non-final fragments: nothing to do.
                    _ => continue,
                }
            }
            let head = &self.buf[self.start..self.end];
            if head.len() < 2 {
                return Ok(None);
            }
            let masked = head[1] & 0x80 != 0;
            let length_bytes = match head[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let header = 2 + length_bytes + if masked { 4 } else { 0 };
            if head.len() < header {
                return Ok(None);
            }
            ensure!(!masked, "the server sent a masked frame");
            let len = match head[1] & 0x7f {
                126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
                127 => u64::from_be_bytes(head[2..10].try_into()?),
                len => u64::from(len),
            };
            let opcode = head[0] & 0x0f;
            self.fin = head[0] & 0x80 != 0;
            self.frame_opcode = opcode;
            if opcode == OP_TEXT || opcode == OP_BINARY {
                self.message = Message {
                    opcode,
                    len: 0,
                    compressed: head[0] & 0x40 != 0,
                };
            }
            if opcode <= OP_BINARY {
                self.message.len += len;
            }
            self.start += header;
            self.remaining = len;
            self.in_frame = true;
        }
    }

    /// Reads more bytes from `stream`; fails on end of stream.
    pub(crate) async fn fill(&mut self, stream: &mut TcpStream) -> anyhow::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let read = stream.read(&mut self.buf[self.end..]).await?;
        ensure!(read > 0, "the server closed the connection");
        self.end += read;
        Ok(())
    }

    /// Reads until the next complete data message.
    pub(crate) async fn next_message(
        &mut self,
        stream: &mut TcpStream,
        mut capture: Option<&mut Vec<u8>>,
    ) -> anyhow::Result<Message> {
        loop {
            if let Some(message) = self.next_buffered(capture.as_deref_mut())? {
                return Ok(message);
            }
            self.fill(stream).await?;
        }
    }
}

/// A small deterministic generator for payloads and mask keys.
pub(crate) struct XorShift(u64);

impl XorShift {
    /// A generator seeded with `seed` (any value).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next pseudo-random value.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A mask key.
    pub(crate) fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_be_bytes()
    }
}

/// A payload of `size` bytes: random ASCII letters for text, random bytes for binary,
/// or (with `compressible`) JSON-like text that deflate shrinks the way it shrinks
/// real JSON.
pub(crate) fn payload(size: usize, text: bool, compressible: bool) -> Vec<u8> {
    let mut rng = XorShift::new(size as u64);
    let mut out = Vec::with_capacity(size + 128);
    if compressible {
        const NAMES: [&str; 8] = [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        ];
        let mut id = 0u64;
        out.push(b'[');
        while out.len() < size {
            id += 1;
            let r = rng.next_u64();
            let record = format!(
                "{{\"id\":{id},\"name\":\"{}-{}\",\"score\":{}.{:03},\"active\":{},\"tags\":[\"{}\",\"{}\"]}},",
                NAMES[(r & 7) as usize],
                (r >> 3) % 10_000,
                (r >> 17) % 100,
                (r >> 24) % 1000,
                (r >> 34) & 1 == 1,
                NAMES[((r >> 35) & 7) as usize],
                NAMES[((r >> 38) & 7) as usize],
            );
            out.extend_from_slice(record.as_bytes());
        }
        out.truncate(size);
    } else if text {
        while out.len() < size {
            out.push(b'a' + (rng.next_u64() % 26) as u8);
        }
    } else {
        while out.len() < size {
            out.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        out.truncate(size);
    }
    out
}

/// The permessage-deflate payload of one message compressed on its own (RFC 7692
/// §7.2.1: raw deflate, sync flush, the final empty block's 4 bytes removed).
pub(crate) fn deflate_message(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut compress = flate2::Compress::new(flate2::Compression::default(), false);
    // Room for incompressible input too (stored blocks add 5 bytes per 64 KiB).
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 64);
    compress
        .compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .context("deflate")?;
    ensure!(
        compress.total_in() as usize == data.len() && out.len() < out.capacity(),
        "deflate did not take the whole message at once"
    );
    ensure!(
        out.ends_with(&[0, 0, 0xff, 0xff]),
        "deflate did not sync-flush"
    );
    out.truncate(out.len() - 4);
    Ok(out)
}

/// Inflates a permessage-deflate payload that starts a fresh context (the first
/// message of a connection, or any message without context takeover).
pub(crate) fn inflate_message(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflate = flate2::Decompress::new(false);
    let mut out = Vec::with_capacity(input.len() * 4);
    while (inflate.total_in() as usize) < input.len() {
        if out.len() == out.capacity() {
            out.reserve(out.capacity());
        }
        let before = (inflate.total_in(), inflate.total_out());
        inflate
            .decompress_vec(
                &input[inflate.total_in() as usize..],
                &mut out,
                flate2::FlushDecompress::Sync,
            )
            .context("inflate")?;
        ensure!(
            out.len() == out.capacity() || before != (inflate.total_in(), inflate.total_out()),
            "inflate made no progress"
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        push_masked_frame(&mut frame, opcode, false, payload, [0; 4]);
        frame[0] = if fin { 0x80 } else { 0 } | opcode;
        frame[1] &= 0x7f;
        frame.drain(frame.len() - payload.len() - 4..frame.len() - payload.len());
        frame
    }

    fn feed(reader: &mut Reader, bytes: &[u8]) {
        let end = reader.end;
        reader.buf[end..end + bytes.len()].copy_from_slice(bytes);
        reader.end += bytes.len();
    }

    #[test]
    fn parses_messages_split_anywhere() {
        let mut wire = unmasked(OP_TEXT, true, b"hello");
        wire.extend(unmasked(OP_BINARY, false, &[7; 300]));
        wire.extend(unmasked(0x9, true, b"ping"));
        wire.extend(unmasked(OP_CONTINUATION, true, &[8; 70_000]));
        for split in [1, 2, 3, 7, 100, 4096] {
            let mut reader = Reader::new(1 << 20);
            let mut messages = Vec::new();
            let mut captured = Vec::new();
            for chunk in wire.chunks(split) {
                feed(&mut reader, chunk);
                while let Some(message) = reader.next_buffered(Some(&mut captured)).unwrap() {
                    messages.push((message.opcode, message.len));
                }
            }
            assert_eq!(
                messages,
                [(OP_TEXT, 5), (OP_BINARY, 70_300)],
                "split {split}"
            );
            assert_eq!(captured.len(), 70_305);
            assert_eq!(&captured[..5], b"hello");
        }
    }

    #[test]
    fn masked_frames_unmask_to_the_payload() {
        let payload = payload(1000, false, false);
        let mut frame = Vec::new();
        push_masked_frame(&mut frame, OP_BINARY, false, &payload, [1, 2, 3, 4]);
        assert_eq!(&frame[..4], &[0x82, 0x80 | 126, 0x03, 0xe8]);
        let unmasked: Vec<u8> = frame[8..]
            .iter()
            .zip([1u8, 2, 3, 4].iter().cycle())
            .map(|(b, k)| b ^ k)
            .collect();
        assert_eq!(unmasked, payload);
    }

    #[test]
    fn deflate_round_trips() {
        let data = payload(1 << 20, true, true);
        assert_eq!(data.len(), 1 << 20);
        let compressed = deflate_message(&data).unwrap();
        assert!(compressed.len() < data.len() / 3, "{}", compressed.len());
        assert_eq!(inflate_message(&compressed).unwrap(), data);
    }
}
