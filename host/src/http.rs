//! The HTTP/1.1 side of a connection: reading the upgrade request within its limits,
//! classifying it, and writing the response.

use std::fmt::Write as _;

#[cfg(test)]
use bytes::Bytes;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::RequestLimits;

/// Most header fields accepted in one request.
const MAX_HEADERS: usize = 100;

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: String,
    /// The path part of the request target, as sent.
    pub(crate) path: String,
    /// The query part of the request target, without `?`.
    pub(crate) query: Option<String>,
    /// Header fields with lower-case names, in order.
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// Why no request could be read; each maps to the response the client gets.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The peer closed or reset the connection before sending a full request head.
    Closed,
    /// The head is not valid HTTP/1.1: 400.
    Malformed(&'static str),
    /// The request target is longer than `max_uri_length`: 414.
    UriTooLong,
    /// The head is larger than `max_header_size`: 431.
    HeaderTooLarge,
}

impl ReadError {
    /// The status and body to answer with, `None` when there is no one to answer.
    pub(crate) fn response(&self) -> Option<(u16, &'static str)> {
        match self {
            Self::Closed => None,
            Self::Malformed(why) => Some((400, why)),
            Self::UriTooLong => Some((414, "request target too long")),
            Self::HeaderTooLarge => Some((431, "request header fields too large")),
        }
    }
}

/// Reads one request head from `io`, starting with what `buf` already holds (bytes of
/// an earlier read on this connection). On success `buf` holds what followed the head:
/// a body, the next pipelined request, or frames a client sent right after its
/// upgrade request.
pub(crate) async fn read_request<S>(
    io: &mut S,
    limits: &RequestLimits,
    buf: &mut BytesMut,
) -> Result<Request, ReadError>
where
    S: AsyncRead + Unpin,
{
    // The request line is bounded by the URI limit, the fields by the header limit.
    let max_head = limits.max_uri_length + limits.max_header_size + 32;
    loop {
        if !buf.is_empty()
            && let Some((request, head_len)) = parse(buf, limits)?
        {
            let _ = buf.split_to(head_len);
            return Ok(request);
        }
        if buf.len() >= max_head {
            return Err(too_large(buf, limits));
        }
        let room = max_head - buf.len();
        buf.reserve(1024.min(room));
        let n = (&mut *io)
            .take(room as u64)
            .read_buf(buf)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed inside the request head")
            });
        }
    }
}

/// Reads and drops a request body of `length` bytes, part of which may be in `buf`.
pub(crate) async fn discard_body<S>(
    io: &mut S,
    buf: &mut BytesMut,
    length: u64,
) -> std::io::Result<()>
where
    S: AsyncRead + Unpin,
{
    let buffered = (buf.len() as u64).min(length);
    let _ = buf.split_to(buffered as usize);
    let rest = length - buffered;
    if rest > 0 {
        let copied = tokio::io::copy(&mut (&mut *io).take(rest), &mut tokio::io::sink()).await?;
        if copied < rest {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

fn parse(buf: &[u8], limits: &RequestLimits) -> Result<Option<(Request, usize)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // Fail early on a request line that can no longer fit.
            if buf.iter().position(|&b| b == b'\n').is_none()
                && buf.len() > limits.max_uri_length + 32
            {
                return Err(ReadError::UriTooLong);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ReadError::HeaderTooLarge),
        Err(httparse::Error::Version) => {
            return Err(ReadError::Malformed("not an HTTP/1.x request"));
        }
        Err(_) => return Err(ReadError::Malformed("malformed request head")),
    };
    let target = parsed.path.unwrap_or("/");
    if target.len() > limits.max_uri_length {
        return Err(ReadError::UriTooLong);
    }
    let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(0) + 1;
    if head_len - line_len > limits.max_header_size {
        return Err(ReadError::HeaderTooLarge);
    }
    if parsed.version != Some(1) {
        return Err(ReadError::Malformed("HTTP/1.1 is required"));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let request = Request {
        method: parsed.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        query,
        headers: parsed
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((request, head_len)))
}

fn too_large(buf: &[u8], limits: &RequestLimits) -> ReadError {
    match buf.iter().position(|&b| b == b'\n') {
        Some(line) if line <= limits.max_uri_length + 32 => ReadError::HeaderTooLarge,
        _ => ReadError::UriTooLong,
    }
}

impl Request {
    /// Every value of header `name` (lower-case).
    pub(crate) fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The declared body length: `Some(0)` without one, `None` when it cannot be
    /// known (chunked, or an unparsable length).
    pub(crate) fn body_length(&self) -> Option<u64> {
        if self.header("transfer-encoding").is_some() {
            return None;
        }
        match self.header("content-length") {
            None => Some(0),
            Some(value) => std::str::from_utf8(value).ok()?.trim().parse().ok(),
        }
    }

    /// Whether the client asked to close the connection after this request.
    pub(crate) fn wants_close(&self) -> bool {
        self.has_token("connection", "close")
    }

    /// Whether the declared body is over `limit` bytes (a negative limit: never).
    pub(crate) fn body_exceeds(&self, limit: i64) -> bool {
        let Ok(limit) = u64::try_from(limit) else {
            return false;
        };
        self.header("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|length| length > limit)
    }

    /// The single value of header `name`, `None` when absent.
    pub(crate) fn header<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.header_values(name).next()
    }

    /// The comma-separated elements of every value of header `name`, trimmed.
    pub(crate) fn header_tokens<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.header_values(name)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header_tokens(name)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// Classifies the request as a WebSocket upgrade (RFC 6455 §4.2.1).
    pub(crate) fn upgrade(&self) -> Upgrade<'_> {
        if !self.has_token("upgrade", "websocket") {
            return Upgrade::NotRequested;
        }
        if self.method != "GET" {
            return Upgrade::Invalid("a WebSocket upgrade must use GET");
        }
        if !self.has_token("connection", "upgrade") {
            return Upgrade::Invalid("the Connection header must contain \"upgrade\"");
        }
        if self.header("sec-websocket-version") != Some(b"13") {
            return Upgrade::UnsupportedVersion;
        }
        let mut keys = self.header_values("sec-websocket-key");
        let key = match (keys.next(), keys.next()) {
            (Some(key), None) if is_valid_key(key) => key,
            _ => return Upgrade::Invalid("Sec-WebSocket-Key must be one 16-byte base64 nonce"),
        };
        if self.header("content-length").is_some_and(|v| v != b"0")
            || self.header("transfer-encoding").is_some()
        {
            return Upgrade::Invalid("a WebSocket upgrade request must not have a body");
        }
        Upgrade::WebSocket { key }
    }
}

fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|nonce| nonce.len() == 16)
}

/// What kind of request arrived on a service path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Upgrade<'a> {
    /// A valid WebSocket upgrade with this key.
    WebSocket { key: &'a [u8] },
    /// A plain HTTP request: 426.
    NotRequested,
    /// A WebSocket version other than 13: 426 naming 13.
    UnsupportedVersion,
    /// A broken upgrade: 400.
    Invalid(&'static str),
}

/// The reason phrase of the statuses the host sends.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Writes a complete plain-text response and closes the write side.
pub(crate) async fn respond<S>(
    io: &mut S,
    status: u16,
    extra_headers: &[(&str, &str)],
    server: Option<&str>,
    body: &str,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    respond_with(io, status, extra_headers, server, body, false).await
}

/// Writes a complete plain-text response; closes the write side unless `keep_alive`.
pub(crate) async fn respond_with<S>(
    io: &mut S,
    status: u16,
    extra_headers: &[(&str, &str)],
    server: Option<&str>,
    body: &str,
    keep_alive: bool,
) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status));
    for (name, value) in extra_headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if let Some(server) = server {
        let _ = write!(head, "server: {server}\r\n");
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = write!(
        head,
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    io.write_all(head.as_bytes()).await?;
    if keep_alive {
        io.flush().await
    } else {
        io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            max_uri_length: 64,
            max_header_size: 256,
            max_entity_body_size: -1,
        }
    }

    async fn read(input: &[u8]) -> Result<(Request, Bytes), ReadError> {
        let mut io = input;
        let mut buf = BytesMut::new();
        let request = read_request(&mut io, &limits(), &mut buf).await?;
        Ok((request, buf.freeze()))
    }

    const UPGRADE: &str = "GET /echo?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[tokio::test]
    async fn reads_an_upgrade_and_keeps_what_follows() {
        let input = format!("{UPGRADE}\u{81}\u{0}");
        let (request, leftover) = read(input.as_bytes()).await.unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/echo");
        assert_eq!(request.query.as_deref(), Some("room=1"));
        assert_eq!(request.header("host"), Some(&b"x"[..]));
        assert_eq!(&leftover[..], "\u{81}\u{0}".as_bytes());
        assert_eq!(
            request.upgrade(),
            Upgrade::WebSocket {
                key: b"dGhlIHNhbXBsZSBub25jZQ=="
            }
        );
    }

    #[tokio::test]
    async fn classifies_requests() {
        let plain = read(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap()
            .0;
        assert_eq!(plain.upgrade(), Upgrade::NotRequested);
        let v8 = UPGRADE.replace("Version: 13", "Version: 8");
        let v8 = read(v8.as_bytes()).await.unwrap().0;
        assert_eq!(v8.upgrade(), Upgrade::UnsupportedVersion);
        for broken in [
            UPGRADE.replace("GET", "POST"),
            UPGRADE.replace("keep-alive, Upgrade", "keep-alive"),
            UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
            UPGRADE.replace("Host: x", "Content-Length: 5"),
        ] {
            let request = read(broken.as_bytes()).await.unwrap().0;
            assert!(matches!(request.upgrade(), Upgrade::Invalid(_)), "{broken}");
        }
    }

    #[tokio::test]
    async fn enforces_limits() {
        let long_uri = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(100));
        assert_eq!(
            read(long_uri.as_bytes()).await.unwrap_err(),
            ReadError::UriTooLong
        );
        let endless_uri = format!("GET /{}", "a".repeat(1000));
        assert_eq!(
            read(endless_uri.as_bytes()).await.unwrap_err(),
            ReadError::UriTooLong
        );
        let big_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(300));
        assert_eq!(
            read(big_header.as_bytes()).await.unwrap_err(),
            ReadError::HeaderTooLarge
        );
        let endless_header = format!("GET / HTTP/1.1\r\nX: {}", "b".repeat(1000));
        assert_eq!(
            read(endless_header.as_bytes()).await.unwrap_err(),
            ReadError::HeaderTooLarge
        );
    }

    #[tokio::test]
    async fn pipelined_requests_are_read_one_by_one() {
        let mut io: &[u8] =
            b"GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n";
        let mut buf = BytesMut::new();
        let first = read_request(&mut io, &limits(), &mut buf).await.unwrap();
        assert_eq!(first.path, "/a");
        assert_eq!(first.body_length(), Some(3));
        discard_body(&mut io, &mut buf, 3).await.unwrap();
        let second = read_request(&mut io, &limits(), &mut buf).await.unwrap();
        assert_eq!(second.path, "/b");
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn body_limit() {
        let (request, _) = read(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
            .await
            .unwrap();
        assert!(request.body_exceeds(9));
        assert!(!request.body_exceeds(10));
        assert!(!request.body_exceeds(-1));
    }

    #[tokio::test]
    async fn rejects_garbage_and_old_versions() {
        assert!(matches!(
            read(b"\x16\x03\x01garbage\r\n\r\n").await,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"GET / HTTP/1.0\r\n\r\n").await,
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            read(b"GET / HTT").await,
            Err(ReadError::Malformed(_))
        ));
        assert_eq!(read(b"").await.unwrap_err(), ReadError::Closed);
    }
}
