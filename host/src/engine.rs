//! The WebSocket protocol engine: the one module that knows which crate frames the
//! bytes (yawc, chosen for its RFC 7692 support; see `docs/decisions.md`).
//!
//! The HTTP upgrade is ours (see [`crate::http`]); once the `101` is written, the
//! socket is handed to the engine together with the agreed extensions. Everything the
//! rest of the host needs from the engine goes through the items here, so replacing the
//! engine touches this file only.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) use yawc::close::CloseCode;
pub(crate) use yawc::{Frame, OpCode, WebSocketError};

/// A server-side WebSocket over a stream whose first bytes may already have been read.
pub(crate) type WebSocket<S> = yawc::WebSocket<Rewind<S>>;

/// What the engine enforces on one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Largest frame payload accepted, bytes.
    pub(crate) max_frame_size: usize,
    /// Largest reassembled message accepted, bytes.
    pub(crate) max_message_size: usize,
}

/// Who answers pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pong {
    /// The engine answers every ping.
    Automatic,
    /// The application answers (the session implements `on-ping`).
    Manual,
}

/// The socket read buffer's size (yawc's default is 8 KiB). The bench's wasmtime floor
/// reads with the same (`HOST_READ_BUFFER` in bench/src/serve.rs).
const READ_BUFFER: usize = 64 * 1024;

/// Wraps an upgraded stream in the engine, honouring the agreed `permessage-deflate`
/// parameters (`extensions` is what the `101` response carried).
pub(crate) fn server<S>(
    io: S,
    leftover: Bytes,
    extensions: Option<&str>,
    limits: Limits,
    pong: Pong,
) -> Result<WebSocket<S>, WebSocketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // yawc rejects a payload whose length reaches its limit; ours are inclusive.
    let mut options = yawc::Options::default()
        .with_utf8()
        .with_no_delay()
        // A 16 KiB message arrives in one read instead of three. Only the pages a
        // read touches become resident: an idle connection's RSS is the same as with
        // 8 KiB (measured with the bench's idle load).
        .with_read_buffer_capacity(READ_BUFFER)
        // An idle connection holds no buffer.
        .with_idle_buffers_released()
        .with_limits(limits.max_frame_size + 1, limits.max_message_size + 1);
    if pong == Pong::Manual {
        options = options.with_manual_pong();
    }
    if extensions.is_some() {
        options = options
            .with_compression_level(yawc::CompressionLevel::fast())
            .with_deflate_pool(deflate_pool());
    }
    yawc::WebSocket::from_stream_with_extensions(
        Rewind::new(io, leftover),
        yawc::Role::Server,
        extensions,
        options,
    )
}

/// Deflate contexts kept for reuse. A connection whose direction negotiated no
/// context takeover borrows a context for one message and gives it back, instead of
/// holding ~300 KiB (deflate) or ~45 KiB (inflate) of zlib state for its whole life.
fn deflate_pool() -> yawc::DeflatePool {
    /// Idle contexts kept per window size and direction.
    const IDLE_CONTEXTS: usize = 16;
    static POOL: std::sync::OnceLock<yawc::DeflatePool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| yawc::DeflatePool::new(IDLE_CONTEXTS))
        .clone()
}

/// The close code an engine error ends the connection with (the engine has already
/// queued that close frame).
pub(crate) fn close_code_of(error: &WebSocketError) -> u16 {
    match error {
        WebSocketError::FrameTooLarge => 1009,
        WebSocketError::InvalidUTF8 => 1007,
        WebSocketError::ConnectionClosed => 1006,
        error if error.is_io_error() => 1006,
        error if error.is_protocol_error() => 1002,
        _ => 1011,
    }
}

/// A received close frame's code (1005 when it carries none) and reason.
pub(crate) fn close_of(frame: &Frame) -> (u16, String) {
    let code = frame.close_code().map_or(1005, u16::from);
    let reason = frame.close_reason().ok().flatten().unwrap_or("").to_owned();
    (code, reason)
}

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// Picks the first `permessage-deflate` offer this server can honour (RFC 7692 §5),
/// and returns the response parameters, or `None` to proceed without compression.
///
/// `offers` holds every `Sec-WebSocket-Extensions` header value of the request. An
/// offer with an unknown or repeated parameter, or an invalid value, is skipped, as is
/// `server_max_window_bits=8` (zlib cannot produce an 8-bit window). The server's
/// inflater always runs with a 15-bit window, which decodes any window the client
/// uses, so `client_max_window_bits` is never narrowed.
///
/// With `context_takeover` false the server always answers
/// `server_no_context_takeover` (RFC 7692 §7.1.1.1 lets it), so its compressor keeps
/// no state between messages and borrows one from the pool instead.
pub(crate) fn negotiate_deflate<'a>(
    offers: impl IntoIterator<Item = &'a str>,
    context_takeover: bool,
) -> Option<String> {
    offers
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(|offer| accept_deflate_offer(offer, context_takeover))
}

fn accept_deflate_offer(offer: &str, context_takeover: bool) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut server_no_context_takeover = false;
    let mut client_no_context_takeover = false;
    let mut server_max_window_bits = None;
    let mut client_max_window_bits = false;
    for parameter in parts {
        let (name, value) = match parameter.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (parameter, None),
        };
        let seen = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut server_no_context_takeover, true)
            }
            "client_no_context_takeover" if value.is_none() => {
                std::mem::replace(&mut client_no_context_takeover, true)
            }
            "server_max_window_bits" => {
                let bits = window_bits(value?)?;
                server_max_window_bits.replace(bits).is_some()
            }
            "client_max_window_bits" => {
                if let Some(value) = value {
                    window_bits(value)?;
                }
                std::mem::replace(&mut client_max_window_bits, true)
            }
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    if server_max_window_bits == Some(8) {
        return None;
    }
    let mut response = String::from("permessage-deflate");
    if server_no_context_takeover || !context_takeover {
        response.push_str("; server_no_context_takeover");
    }
    if client_no_context_takeover {
        response.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = server_max_window_bits {
        response.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(response)
}

fn window_bits(value: &str) -> Option<u8> {
    // RFC 7692 §7.1.2: 1*DIGIT in 8..=15, no leading zero.
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A stream that first yields bytes already read from it (what followed the upgrade
/// request in the same read), then reads from the stream itself.
#[derive(Debug)]
pub(crate) struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(inner: S, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Read in full: release its allocation.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn browser_offer_keeps_a_full_client_window() {
        // What Chromium sends.
        let agreed = negotiate_deflate(["permessage-deflate; client_max_window_bits"], true);
        assert_eq!(agreed.as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn first_acceptable_of_several_offers_wins() {
        // Autobahn 13.7.*: several offers in one header, the first unacceptable.
        let agreed = negotiate_deflate(
            [
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_no_context_takeover",
            ],
            true,
        );
        assert_eq!(
            agreed.as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        let agreed = negotiate_deflate(["x-webkit-deflate-frame", "permessage-deflate"], true);
        assert_eq!(agreed.as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn parameters_are_echoed() {
        let agreed = negotiate_deflate(
            ["permessage-deflate; client_no_context_takeover; server_max_window_bits=\"10\""],
            true,
        );
        assert_eq!(
            agreed.as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=10")
        );
    }

    #[test]
    fn the_server_may_drop_its_own_context() {
        let agreed = negotiate_deflate(["permessage-deflate; client_max_window_bits"], false);
        assert_eq!(
            agreed.as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn invalid_offers_are_declined() {
        for offer in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "deflate-frame",
        ] {
            assert_eq!(negotiate_deflate([offer], true), None, "{offer}");
        }
    }

    #[tokio::test]
    async fn rewind_yields_prefix_first() {
        use tokio::io::AsyncReadExt;
        let inner: &[u8] = b" world";
        let mut stream = Rewind::new(inner, Bytes::from_static(b"hello"));
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
