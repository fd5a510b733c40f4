//! The native backend: TCP, our own HTTP/1.1 upgrade, and yawc for the frames (the
//! same engine as the host).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use yawc::{Frame, OpCode};

use crate::{ClientAuth, ClientConfig, Error, HandshakeResponse, Message, Result, WsUrl};

mod jwt;
mod oauth2;
mod tls;

pub(crate) use oauth2::TokenCache;

/// Largest response head accepted from a server.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest message accepted, unless `max_frame_size` is larger.
const MAX_MESSAGE_SIZE: usize = 16 << 20;

type Socket = yawc::WebSocket<Rewind<Transport>>;

/// TCP, or TLS over TCP for `wss://`.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) struct Connection {
    ws: Socket,
    url: WsUrl,
    config: ClientConfig,
    response: HandshakeResponse,
    subprotocol: Option<String>,
    /// The close frame received (or 1006), once the connection has ended.
    closed: Option<(u16, String)>,
}

impl Connection {
    pub(crate) async fn connect(url: WsUrl, config: ClientConfig) -> Result<Self> {
        let (ws, response, subprotocol) = open_with_retry(&url, &config).await?;
        Ok(Self {
            ws,
            url,
            config,
            response,
            subprotocol,
            closed: None,
        })
    }

    pub(crate) fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    pub(crate) fn handshake_response(&self) -> Result<&HandshakeResponse> {
        Ok(&self.response)
    }

    fn closed_error(&self) -> Option<Error> {
        self.closed
            .as_ref()
            .map(|(code, reason)| Error::ConnectionClosed {
                code: *code,
                reason: reason.clone(),
            })
    }

    /// Replaces a broken connection when `retry` is configured; otherwise records
    /// the abnormal end.
    async fn recover(&mut self, error: String) -> Result<()> {
        if self.config.retry.is_none() {
            self.closed = Some((1006, String::new()));
            return Err(Error::ConnectionClosed {
                code: 1006,
                reason: error,
            });
        }
        let (ws, response, subprotocol) = open_with_retry(&self.url, &self.config).await?;
        self.ws = ws;
        self.response = response;
        self.subprotocol = subprotocol;
        Ok(())
    }

    pub(crate) async fn write(&mut self, message: Message) -> Result<()> {
        if let Some(error) = self.closed_error() {
            return Err(error);
        }
        let frame = |message: &Message| match message {
            Message::Text(text) => Frame::text(Bytes::from(text.clone())),
            Message::Binary(data) => Frame::binary(Bytes::from(data.clone())),
        };
        match self.send(frame(&message)).await {
            Ok(()) => Ok(()),
            Err(Error::WriteTimeout) => Err(Error::WriteTimeout),
            Err(error) => {
                // Ballerina's retrying client reconnects and sends the message again.
                self.recover(error.to_string()).await?;
                self.send(frame(&message)).await
            }
        }
    }

    async fn send(&mut self, frame: Frame) -> Result<()> {
        let send = self.ws.send(frame);
        match self.config.write_timeout {
            Some(limit) => tokio::time::timeout(limit, send)
                .await
                .map_err(|_| Error::WriteTimeout)?,
            None => send.await,
        }
        .map_err(|e| Error::Connect(e.to_string()))
    }

    pub(crate) async fn read(&mut self) -> Result<Message> {
        loop {
            if let Some(error) = self.closed_error() {
                return Err(error);
            }
            let next = self.ws.next_frame();
            let received = match self.config.read_timeout {
                Some(limit) => tokio::time::timeout(limit, next)
                    .await
                    .map_err(|_| Error::ReadTimeout)?,
                None => next.await,
            };
            let frame = match received {
                Ok(frame) => frame,
                Err(error) => {
                    let protocol = !matches!(error, yawc::WebSocketError::ConnectionClosed)
                        && !error.is_io_error();
                    if protocol {
                        // The engine has queued a close frame with the fitting code.
                        self.closed = Some((1002, error.to_string()));
                        let _ = self.ws.next_frame().await;
                        let _ = SinkExt::close(&mut self.ws).await;
                        return Err(Error::Protocol(error.to_string()));
                    }
                    self.recover(error.to_string()).await?;
                    continue;
                }
            };
            match frame.opcode() {
                OpCode::Text => {
                    // The engine has checked the UTF-8.
                    let text = String::from_utf8_lossy(frame.payload()).into_owned();
                    return Ok(Message::Text(text));
                }
                OpCode::Binary => return Ok(Message::Binary(frame.payload().to_vec())),
                OpCode::Ping => {
                    if let Some(handler) = &self.config.ping_pong_handler
                        && let Some(pong) = handler.on_ping(frame.payload())
                    {
                        let handler_pong = Frame::pong(Bytes::from(pong));
                        self.send(handler_pong).await?;
                    }
                }
                OpCode::Pong => {
                    if let Some(handler) = &self.config.ping_pong_handler {
                        handler.on_pong(frame.payload());
                    }
                }
                OpCode::Close => {
                    self.closed = Some(close_of(&frame));
                    // Send the close reply the engine queued, then shut the socket.
                    let _ = self.ws.next_frame().await;
                    let _ = SinkExt::close(&mut self.ws).await;
                }
                OpCode::Continuation => {}
            }
        }
    }

    pub(crate) async fn ping(&mut self, data: &[u8]) -> Result<()> {
        self.control(Frame::ping(Bytes::copy_from_slice(data)), data.len())
            .await
    }

    pub(crate) async fn pong(&mut self, data: &[u8]) -> Result<()> {
        self.control(Frame::pong(Bytes::copy_from_slice(data)), data.len())
            .await
    }

    async fn control(&mut self, frame: Frame, len: usize) -> Result<()> {
        if len > 125 {
            return Err(Error::InvalidConfig(
                "control frame payload: at most 125 bytes".into(),
            ));
        }
        if let Some(error) = self.closed_error() {
            return Err(error);
        }
        self.send(frame).await
    }

    pub(crate) async fn close(
        &mut self,
        code: u16,
        reason: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            return Err(Error::InvalidConfig(format!(
                "close code {code} cannot be sent"
            )));
        }
        if let Some(closed) = &self.closed {
            return Ok(closed.clone());
        }
        self.send(Frame::close(yawc::close::CloseCode::from(code), reason))
            .await?;
        let wait = async {
            loop {
                match self.ws.next_frame().await {
                    Ok(frame) if frame.opcode() == OpCode::Close => {
                        return close_of(&frame);
                    }
                    Ok(_) => continue,
                    Err(_) => return (1006, String::new()),
                }
            }
        };
        let peer = if timeout.is_zero() {
            wait.await
        } else {
            tokio::time::timeout(timeout, wait)
                .await
                .unwrap_or((1006, String::new()))
        };
        let _ = SinkExt::close(&mut self.ws).await;
        self.closed = Some(peer.clone());
        Ok(peer)
    }
}

async fn open_with_retry(
    url: &WsUrl,
    config: &ClientConfig,
) -> Result<(Socket, HandshakeResponse, Option<String>)> {
    let mut attempt = 0;
    loop {
        let limit = config
            .handshake_timeout
            .unwrap_or(crate::DEFAULT_HANDSHAKE_TIMEOUT);
        let result = match tokio::time::timeout(limit, open(url, config)).await {
            Ok(result) => result,
            Err(_) => Err(Error::HandshakeTimeout),
        };
        // Unreachable, slow, or temporarily unavailable (5xx): try again.
        let retryable = matches!(
            result,
            Err(Error::Connect(_)
                | Error::HandshakeTimeout
                | Error::Handshake { status: 500.., .. }
                | Error::TokenEndpoint {
                    status: None | Some(500..),
                    ..
                })
        );
        match (&config.retry, result) {
            (Some(retry), Err(_)) if retryable && retry.allows(attempt + 1) => {
                attempt += 1;
                tokio::time::sleep(retry.wait(attempt)).await;
            }
            (_, result) => return result,
        }
    }
}

async fn open(
    url: &WsUrl,
    config: &ClientConfig,
) -> Result<(Socket, HandshakeResponse, Option<String>)> {
    let (host, port) = (url.host.as_str(), url.port);
    // Configuration and credentials first: a bad setting or a refused token never
    // reaches the server.
    let connector = if url.secure {
        Some(tls::connector(
            config.secure_socket.as_ref(),
            "secure_socket",
        )?)
    } else {
        None
    };
    let authorization = authorization(config).await?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::Connect(format!("{host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let mut stream = if let Some(connector) = connector {
        let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
            Error::InvalidConfig(format!("url: {host:?} is not a TLS server name: {e}"))
        })?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| Error::Connect(format!("TLS handshake with {host}:{port}: {e}")))?;
        Transport::Tls(Box::new(tls))
    } else {
        Transport::Plain(tcp)
    };

    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| Error::Connect(format!("no randomness: {e}")))?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let compression = config.compression.unwrap_or(true);
    let request = upgrade_request(url, config, &key, compression, authorization.as_deref())?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Error::Connect(e.to_string()))?;

    let (response, body, leftover) = read_response(&mut stream).await?;
    if response.status == 401
        && let Some(ClientAuth::OAuth2(oauth2)) = &config.auth
        && let Some(token) = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
    {
        // Revoked before its time: the next attempt fetches a new one.
        oauth2::forget(oauth2, token).await;
    }
    if response.status != 101 {
        return Err(Error::Handshake {
            status: response.status,
            headers: response.headers,
            body,
        });
    }
    let header = |name: &str| response.header(name);
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(Error::Protocol(
            "101 response without the upgrade headers".into(),
        ));
    }
    if header("sec-websocket-accept") != Some(accept_key(key.as_bytes()).as_str()) {
        return Err(Error::Protocol("wrong Sec-WebSocket-Accept".into()));
    }
    let subprotocol = header("sec-websocket-protocol").map(str::to_owned);
    if let Some(chosen) = &subprotocol
        && !config.subprotocols.iter().any(|p| p == chosen)
    {
        return Err(Error::Protocol(format!(
            "server chose subprotocol {chosen:?}, which was not offered"
        )));
    }
    let extensions = header("sec-websocket-extensions").map(str::to_owned);
    if let Some(agreed) = &extensions {
        let name = agreed.split(';').next().unwrap_or("").trim();
        if !compression || !name.eq_ignore_ascii_case("permessage-deflate") || agreed.contains(',')
        {
            return Err(Error::Protocol(format!(
                "server agreed to extensions not offered: {agreed}"
            )));
        }
    }

    let max_frame = config
        .max_frame_size
        .unwrap_or(crate::DEFAULT_MAX_FRAME_SIZE);
    let mut options = yawc::Options::default()
        .with_utf8()
        .with_no_delay()
        .with_limits(max_frame + 1, max_frame.max(MAX_MESSAGE_SIZE) + 1);
    if config.ping_pong_handler.is_some() {
        options = options.with_manual_pong();
    }
    if extensions.is_some() {
        options = options.with_compression_level(yawc::CompressionLevel::fast());
    }
    let ws = yawc::WebSocket::from_stream_with_extensions(
        Rewind::new(stream, leftover),
        yawc::Role::Client,
        extensions.as_deref(),
        options,
    )
    .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok((ws, response, subprotocol))
}

/// The `Authorization` header value for `config.auth`: fixed credentials, a JWT signed
/// now, or an OAuth2 access token (cached or fetched).
async fn authorization(config: &ClientConfig) -> Result<Option<String>> {
    let value = match &config.auth {
        None => return Ok(None),
        Some(ClientAuth::Basic { username, password }) => {
            let credentials =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            format!("Basic {credentials}")
        }
        Some(ClientAuth::Bearer { token }) => format!("Bearer {token}"),
        Some(ClientAuth::Jwt(issuer)) => format!("Bearer {}", jwt::issue(issuer)?),
        Some(ClientAuth::OAuth2(oauth2)) => {
            format!("Bearer {}", oauth2::access_token(oauth2).await?)
        }
    };
    if value.contains(['\r', '\n', '\0']) {
        return Err(Error::InvalidConfig(
            "auth: credentials must not contain line breaks".into(),
        ));
    }
    Ok(Some(value))
}

fn upgrade_request(
    url: &WsUrl,
    config: &ClientConfig,
    key: &str,
    compression: bool,
    authorization: Option<&str>,
) -> Result<String> {
    let (target, host) = (&url.target, &url.authority);
    let mut request = format!(
        "GET {target} HTTP/1.1\r\nhost: {host}\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: {key}\r\nsec-websocket-version: 13\r\n"
    );
    if !config.subprotocols.is_empty() {
        request.push_str(&format!(
            "sec-websocket-protocol: {}\r\n",
            config.subprotocols.join(", ")
        ));
    }
    if compression {
        request
            .push_str("sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n");
    }
    if let Some(authorization) = authorization {
        request.push_str(&format!("authorization: {authorization}\r\n"));
    }
    if !config.cookies.is_empty() {
        let cookies: Vec<String> = config
            .cookies
            .iter()
            .map(|c| format!("{}={}", c.name, c.value))
            .collect();
        request.push_str(&format!("cookie: {}\r\n", cookies.join("; ")));
    }
    for (name, value) in &config.custom_headers {
        let clean = |s: &str| !s.is_empty() && !s.contains(['\r', '\n', '\0']);
        if !clean(name) || name.contains([':', ' ']) || value.contains(['\r', '\n', '\0']) {
            return Err(Error::InvalidConfig(format!(
                "custom_headers: {name:?} is not a valid header"
            )));
        }
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    Ok(request)
}

async fn read_response(stream: &mut Transport) -> Result<(HandshakeResponse, String, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(Error::Protocol("upgrade response head too large".into()));
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        if n == 0 {
            return Err(Error::Connect(
                "server closed the connection during the handshake".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(Error::Protocol(format!("bad upgrade response: {e}"))),
        };
        let response = HandshakeResponse {
            status: parsed.code.unwrap_or(0),
            headers: parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).trim().to_owned(),
                    )
                })
                .collect(),
        };
        let mut rest = buf.split_off(head_len);
        let mut body = String::new();
        if response.status != 101 {
            let length = response
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
                .min(64 * 1024);
            while rest.len() < length {
                match stream.read_buf(&mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            body = String::from_utf8_lossy(&rest[..rest.len().min(length)]).into_owned();
        }
        return Ok((response, body, rest.freeze()));
    }
}

/// A received close frame's code (1005 when it carries none) and reason.
fn close_of(frame: &Frame) -> (u16, String) {
    let code = frame.close_code().map_or(1005, u16::from);
    let reason = frame.close_reason().ok().flatten().unwrap_or("").to_owned();
    (code, reason)
}

fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// A stream that first yields bytes read past the upgrade response.
struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    fn new(inner: S, prefix: Bytes) -> Self {
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

    #[tokio::test]
    async fn credentials_become_the_authorization_header() {
        let basic = ClientConfig::default().auth(ClientAuth::Basic {
            username: "u".into(),
            password: "p".into(),
        });
        assert_eq!(
            authorization(&basic).await.unwrap().as_deref(),
            Some("Basic dTpw")
        );
        let jwt = ClientConfig::default().auth(crate::JwtIssuerConfig::hmac("s").into());
        let value = authorization(&jwt).await.unwrap().unwrap();
        assert_eq!(value.matches('.').count(), 2, "{value}");
        assert!(value.starts_with("Bearer ey"), "{value}");
        let injected = ClientConfig::default().auth(ClientAuth::Bearer {
            token: "t\r\nx-evil: 1".into(),
        });
        assert!(matches!(
            authorization(&injected).await,
            Err(Error::InvalidConfig(_))
        ));
    }

    #[test]
    fn upgrade_request_carries_the_configuration() {
        let url = crate::parse_url("ws://example.com:9090/chat?room=1").unwrap();
        let config = ClientConfig::default()
            .subprotocols(["a", "b"])
            .header("x-app", "demo")
            .cookie("session", "42");
        let request = upgrade_request(&url, &config, "KEY", true, Some("Basic dTpw")).unwrap();
        assert!(request.starts_with("GET /chat?room=1 HTTP/1.1\r\nhost: example.com:9090\r\n"));
        for line in [
            "sec-websocket-protocol: a, b\r\n",
            "sec-websocket-extensions: permessage-deflate; client_max_window_bits\r\n",
            "authorization: Basic dTpw\r\n",
            "cookie: session=42\r\n",
            "x-app: demo\r\n",
        ] {
            assert!(request.contains(line), "{line} in {request}");
        }
        let bad = ClientConfig::default().header("x-evil", "a\r\nb: c");
        assert!(matches!(
            upgrade_request(&url, &bad, "KEY", false, None),
            Err(Error::InvalidConfig(_))
        ));
    }
}
