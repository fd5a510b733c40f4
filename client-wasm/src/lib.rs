//! A WebSocket client with one API in the browser and natively: Ballerina's
//! `websocket:Client` in Rust.
//!
//! On `wasm32-unknown-unknown` it drives the browser's `WebSocket` (web-sys); elsewhere
//! it speaks the protocol itself with the same engine as the wasmsocket host (yawc).
//! Code written against [`Client`] compiles for both.
//!
//! ```no_run
//! # async fn demo() -> wasmsocket_client::Result<()> {
//! use wasmsocket_client::{Client, ClientConfig};
//!
//! let mut client = Client::connect("ws://127.0.0.1:9090/echo", ClientConfig::default()).await?;
//! client.write_text("Text message").await?;
//! let reply = client.read_text().await?;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Point { x: i32, y: i32 }
//! client.write_message(&Point { x: 1, y: 2 }).await?; // a JSON text frame
//! let point: Point = client.read_message().await?;
//! client.close(1000, "done", std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! # Data binding
//!
//! [`Client::write_message`] sends strings as they are and every other value as JSON
//! in a text frame; [`Xml`] values go as XML text, and byte strings
//! (`serde_bytes::ByteBuf`, `&serde_bytes::Bytes`) in a binary frame.
//! [`Client::read_message`] follows the specification: a text frame read as `String` is
//! presented as it is, as [`Xml<T>`] is parsed as XML, as anything else is parsed as
//! JSON; a binary frame read as `Vec<u8>` or a byte buffer is presented as it is,
//! otherwise it is first taken as UTF-8 text and then bound as above.
//!
//! # Browser differences
//!
//! A browser's `WebSocket` cannot set headers, send pings or pongs, close with codes
//! other than 1000 and 3000–4999, limit frame sizes, disable compression or use its own
//! TLS settings. Configuring one of those in the browser makes [`Client::connect`] (or
//! the call) fail with [`Error::Unsupported`] naming the feature; nothing is silently
//! ignored. Each such field says "Native only."
//!
//! That includes every [`ClientAuth`]: Basic, bearer tokens, self-issued JWTs
//! ([`JwtIssuerConfig`]) and OAuth2 grants ([`OAuth2Config`]) all travel in the
//! `Authorization` header. A browser application gets its token by its own means and
//! passes it in the URL or in a subprotocol offer, which the wasmsocket host accepts
//! when the service sets `token_query_param` or `token_subprotocol_prefix`.

#![cfg_attr(docsrs, feature(doc_cfg))]

use std::time::Duration;

pub use wasmsocket_binding::Message;
#[cfg(feature = "xml")]
#[cfg_attr(docsrs, doc(cfg(feature = "xml")))]
pub use wasmsocket_binding::Xml;

#[cfg(not(target_arch = "wasm32"))]
mod native;
#[cfg(not(target_arch = "wasm32"))]
use native as backend;

#[cfg(target_arch = "wasm32")]
mod web;
#[cfg(target_arch = "wasm32")]
use web as backend;

#[cfg(target_arch = "wasm32")]
mod js;

mod auth;
pub use auth::{
    ClientAuth, CredentialBearer, DEFAULT_JWT_EXP_TIME, DEFAULT_TOKEN_EXPIRES_IN, JwtAlgorithm,
    JwtIssuerConfig, JwtSigningKey, OAuth2Config, OAuth2Grant,
};

/// The browser bundle's allocator: see the `talc-allocator` feature.
#[cfg(all(
    feature = "talc-allocator",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client operation can fail with.
///
/// `Display` is written by hand, without `core::fmt`'s argument formatting, which would
/// otherwise make up much of the browser bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a valid `ws://` or `wss://` URL. Fix the URL.
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration asks for something impossible. The message names the field.
    InvalidConfig(String),
    /// The server could not be reached or the connection broke. Retry later, or
    /// configure [`ClientConfig::retry`].
    Connect(String),
    /// The server answered the upgrade with something other than `101`: the status,
    /// headers and body are here (a `401` or `403` means credentials are missing).
    Handshake {
        /// The HTTP status.
        status: u16,
        /// The response headers, lower-case names.
        headers: Vec<(String, String)>,
        /// The response body, when it came with a `content-length`.
        body: String,
    },
    /// The server broke the protocol during the handshake (bad accept key, an
    /// extension or subprotocol that was not offered).
    Protocol(String),
    /// The handshake did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// No message arrived within `read_timeout`. The connection stays open.
    ReadTimeout,
    /// A write did not complete within `write_timeout`.
    WriteTimeout,
    /// The connection was closed (by the peer, or by [`Client::close`]); this is how a
    /// normal end shows up. `code` is 1006 when it dropped without a close frame.
    ConnectionClosed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The message arrived but is not of the kind asked for (e.g. binary for
    /// `read_text`). It is consumed.
    UnexpectedMessage {
        /// What the call reads.
        expected: &'static str,
        /// What arrived.
        got: &'static str,
    },
    /// The message could not be bound to (or from) the requested type.
    Binding(String),
    /// The operation or configured feature is not available on this target (usually
    /// the browser). The message names it.
    Unsupported(&'static str),
    /// No OAuth2 access token could be had ([`ClientAuth::OAuth2`]), so no upgrade was
    /// attempted. `status` is the endpoint's HTTP status (`None`: it could not be
    /// reached), `error` its OAuth2 error code: `invalid_client` means fix the client
    /// id or secret, `invalid_grant` the password or refresh token. With `retry`,
    /// only an unreachable endpoint or a 5xx is retried.
    TokenEndpoint {
        /// The token endpoint.
        url: String,
        /// Its HTTP status, if it answered.
        status: Option<u16>,
        /// The `error` field of its answer (RFC 6749 §5.2), if any.
        error: String,
        /// The `error_description`, or what else went wrong.
        description: String,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl Error {
    /// The `Display` text.
    pub(crate) fn message(&self) -> String {
        match self {
            Error::InvalidUrl { url, reason } => {
                ["invalid WebSocket URL \"", url, "\": ", reason].concat()
            }
            Error::InvalidConfig(what) => ["invalid configuration: ", what].concat(),
            Error::Connect(what) => ["connection failed: ", what].concat(),
            Error::Handshake { status, .. } => {
                ["upgrade refused with status ", &decimal(*status)].concat()
            }
            Error::Protocol(what) => ["protocol error: ", what].concat(),
            Error::HandshakeTimeout => "handshake timed out".to_owned(),
            Error::ReadTimeout => "read timed out".to_owned(),
            Error::WriteTimeout => "write timed out".to_owned(),
            Error::ConnectionClosed { code, reason } => {
                ["connection closed (", &close_text(*code, reason), ")"].concat()
            }
            Error::UnexpectedMessage { expected, got } => {
                ["expected a ", expected, " message, got a ", got, " message"].concat()
            }
            Error::Binding(what) => ["data binding failed: ", what].concat(),
            Error::Unsupported(what) => [what, " is not supported on this target"].concat(),
            Error::TokenEndpoint {
                url,
                status,
                error,
                description,
            } => {
                let outcome = match (status, error.is_empty(), description.is_empty()) {
                    (None, ..) => ["failed: ", description].concat(),
                    (Some(status), true, true) => ["answered ", &decimal(*status)].concat(),
                    (Some(status), true, false) => {
                        ["answered ", &decimal(*status), ": ", description].concat()
                    }
                    (Some(status), false, true) => {
                        ["answered ", &decimal(*status), ": ", error].concat()
                    }
                    (Some(status), false, false) => [
                        "answered ",
                        &decimal(*status),
                        ": ",
                        error,
                        " (",
                        description,
                        ")",
                    ]
                    .concat(),
                };
                ["OAuth2 token endpoint ", url, " ", &outcome].concat()
            }
        }
    }
}

/// A close code and reason as messages show them: `1000` or `4000: bye`.
pub(crate) fn close_text(code: u16, reason: &str) -> String {
    if reason.is_empty() {
        decimal(code)
    } else {
        [&decimal(code), ": ", reason].concat()
    }
}

/// `n` in decimal, without `core::fmt`.
pub(crate) fn decimal(n: u16) -> String {
    let mut text = String::with_capacity(5);
    let mut place = 10_000;
    while place > 1 && n < place {
        place /= 10;
    }
    while place > 0 {
        text.push(char::from(b'0' + (n / place % 10) as u8));
        place /= 10;
    }
    text
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
    }
}

impl From<wasmsocket_binding::BindError> for Error {
    fn from(error: wasmsocket_binding::BindError) -> Self {
        Error::Binding(error.to_string())
    }
}

/// Reconnection on failure: Ballerina's `RetryConfig`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts after the first failure; 0 retries forever.
    pub max_count: u32,
    /// Wait before the first retry.
    pub interval: Duration,
    /// Each wait is the previous one times this factor.
    pub back_off_factor: f64,
    /// No wait is longer than this.
    pub max_wait_interval: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_count: 0,
            interval: Duration::from_secs(1),
            back_off_factor: 1.0,
            max_wait_interval: Duration::from_secs(30),
        }
    }
}

impl RetryConfig {
    /// Retries up to `max_count` times (0: forever), starting after `interval`.
    pub fn new(max_count: u32, interval: Duration) -> Self {
        Self {
            max_count,
            interval,
            ..Self::default()
        }
    }

    /// Multiplies the wait by `factor` after each attempt, up to `max_wait_interval`.
    pub fn back_off(mut self, factor: f64, max_wait_interval: Duration) -> Self {
        self.back_off_factor = factor;
        self.max_wait_interval = max_wait_interval;
        self
    }

    /// The wait before retry number `attempt` (1-based).
    fn wait(&self, attempt: u32) -> Duration {
        let factor = self
            .back_off_factor
            .max(1.0)
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        // Not `mul_f64`, which panics once the factor overflows (retrying forever):
        // then the wait is the longest.
        Duration::try_from_secs_f64(self.interval.as_secs_f64() * factor)
            .map_or(self.max_wait_interval, |wait| {
                wait.min(self.max_wait_interval)
            })
    }

    fn allows(&self, attempt: u32) -> bool {
        self.max_count == 0 || attempt <= self.max_count
    }
}

/// A cookie sent with the upgrade request (Ballerina's `http:Cookie`, name and value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    /// The cookie name.
    pub name: String,
    /// The cookie value.
    pub value: String,
}

/// Called with each ping or pong the server sends: Ballerina's `PingPongService`.
pub trait PingPongHandler: Send + Sync {
    /// A ping arrived. Return the payload to answer with a pong, or `None` to send
    /// none. When no handler is configured, every ping is answered automatically.
    fn on_ping(&self, data: &[u8]) -> Option<Vec<u8>> {
        Some(data.to_vec())
    }

    /// A pong arrived.
    fn on_pong(&self, data: &[u8]) {
        let _ = data;
    }
}

/// Ballerina's `ClientConfiguration`, plus the fields its implementation has beyond the
/// specification text. `ClientConfig::default()` matches the specification's defaults.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Subprotocols to offer, most preferred first.
    pub subprotocols: Vec<String>,
    /// Extra headers for the upgrade request. Native only.
    pub custom_headers: Vec<(String, String)>,
    /// How long a read waits for a message; `None` waits forever.
    pub read_timeout: Option<Duration>,
    /// How long a write may take (in the browser: waiting for `bufferedAmount` to
    /// drain); `None` waits forever.
    pub write_timeout: Option<Duration>,
    /// How long connecting (TCP and the upgrade) may take. Default 300 s, as in the
    /// specification.
    pub handshake_timeout: Option<Duration>,
    /// TLS settings for `wss://`: trusted CA certificates and a client certificate.
    /// Native only (a browser uses its own TLS).
    pub secure_socket: Option<SecureSocket>,
    /// The largest frame payload accepted, bytes; `None` means the specification's
    /// 65536. Native only.
    pub max_frame_size: Option<usize>,
    /// Whether to offer permessage-deflate. `None` means yes (the specification's
    /// default); `Some(false)` is native only (a browser decides for itself).
    pub compression: Option<bool>,
    /// Cookies for the upgrade request. Native only (a browser sends its own).
    pub cookies: Vec<Cookie>,
    /// Credentials for the upgrade request. Native only.
    pub auth: Option<ClientAuth>,
    /// Reconnect on connect failure, and on read/write failure, as Ballerina's
    /// `RetryConfig` does.
    pub retry: Option<RetryConfig>,
    /// Receives pings and pongs; the handler then answers pings. Native only.
    pub ping_pong_handler: Option<std::sync::Arc<dyn PingPongHandler>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("subprotocols", &self.subprotocols)
            .field("custom_headers", &self.custom_headers)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_frame_size", &self.max_frame_size)
            .field("compression", &self.compression)
            .field("cookies", &self.cookies.len())
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .field("ping_pong_handler", &self.ping_pong_handler.is_some())
            .finish()
    }
}

/// TLS settings of a `wss://` client (Ballerina's `ClientSecureSocket`), with rustls
/// (ring). Native only: a browser uses its own TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SecureSocket {
    /// A PEM file of CA certificates to trust instead of the Mozilla roots.
    pub cert: Option<std::path::PathBuf>,
    /// A client certificate and key for mutual TLS.
    pub key: Option<CertKey>,
    /// The TLS versions offered, `"TLSv1.2"` and `"TLSv1.3"` (Ballerina's
    /// `protocol.versions`); empty offers both. Any other name is
    /// [`Error::InvalidConfig`].
    pub protocol_versions: Vec<String>,
    /// The cipher suites offered, IANA names as rustls spells them, e.g.
    /// `TLS13_AES_128_GCM_SHA256` or `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`
    /// (Ballerina's `ciphers`); empty offers rustls' defaults. A name rustls does not
    /// implement (CBC and DHE suites among them) is [`Error::InvalidConfig`] listing
    /// the ones it does.
    pub ciphers: Vec<String>,
}

/// A certificate chain and its private key, as PEM files (Ballerina's `CertKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    /// The certificate chain, leaf first.
    pub cert_file: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
}

impl SecureSocket {
    /// Trusts the CA certificates in `cert` (PEM).
    pub fn trust(cert: impl Into<std::path::PathBuf>) -> Self {
        Self {
            cert: Some(cert.into()),
            ..Self::default()
        }
    }

    /// Offers only these TLS versions (`"TLSv1.2"`, `"TLSv1.3"`).
    pub fn protocol_versions<S: Into<String>>(
        mut self,
        versions: impl IntoIterator<Item = S>,
    ) -> Self {
        self.protocol_versions = versions.into_iter().map(Into::into).collect();
        self
    }

    /// Offers only these cipher suites (IANA names).
    pub fn ciphers<S: Into<String>>(mut self, ciphers: impl IntoIterator<Item = S>) -> Self {
        self.ciphers = ciphers.into_iter().map(Into::into).collect();
        self
    }

    /// Presents this certificate and key (mutual TLS).
    pub fn identity(
        mut self,
        cert_file: impl Into<std::path::PathBuf>,
        key_file: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.key = Some(CertKey {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        });
        self
    }
}

/// The specification's default frame size limit.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 65536;
/// The specification's default handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(300);

impl ClientConfig {
    /// Offers `subprotocols`.
    pub fn subprotocols<S: Into<String>>(
        mut self,
        subprotocols: impl IntoIterator<Item = S>,
    ) -> Self {
        self.subprotocols = subprotocols.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a header to the upgrade request. Native only.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.custom_headers.push((name.into(), value.into()));
        self
    }

    /// Sets the read timeout.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Sets the write timeout.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = Some(timeout);
        self
    }

    /// Sets the handshake timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Sets the largest frame accepted. Native only.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = Some(bytes);
        self
    }

    /// Offers permessage-deflate, or not (`false` is native only).
    pub fn compression(mut self, enabled: bool) -> Self {
        self.compression = Some(enabled);
        self
    }

    /// Adds a cookie. Native only.
    pub fn cookie(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.cookies.push(Cookie {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Sends credentials: Basic, a bearer token, a self-issued JWT or an OAuth2 access
    /// token. Native only.
    pub fn auth(mut self, auth: ClientAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Reconnects on failure.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// TLS settings for `wss://`. Native only.
    pub fn secure_socket(mut self, secure_socket: SecureSocket) -> Self {
        self.secure_socket = Some(secure_socket);
        self
    }

    /// Handles pings and pongs. Native only.
    pub fn ping_pong_handler(mut self, handler: impl PingPongHandler + 'static) -> Self {
        self.ping_pong_handler = Some(std::sync::Arc::new(handler));
        self
    }

    fn validate(&self) -> Result<()> {
        check_subprotocols(&self.subprotocols)?;
        if self.max_frame_size == Some(0) {
            return Err(Error::InvalidConfig(
                "max_frame_size: must be positive".into(),
            ));
        }
        if let Some(ClientAuth::OAuth2(oauth2)) = &self.auth {
            oauth2.validate()?;
        }
        Ok(())
    }
}

/// Each subprotocol must be an HTTP token.
fn check_subprotocols(subprotocols: &[String]) -> Result<()> {
    for protocol in subprotocols {
        let token = !protocol.is_empty()
            && protocol
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Error::InvalidConfig(
                ["subprotocols: \"", protocol, "\" is not a valid token"].concat(),
            ));
        }
    }
    Ok(())
}

/// What the server answered to the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The HTTP status (101).
    pub status: u16,
    /// The response headers, lower-case names.
    pub headers: Vec<(String, String)>,
}

impl HandshakeResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A WebSocket client connection: Ballerina's `websocket:Client`.
///
/// Reads and writes are `&mut self`: a client is used from one task at a time. Split
/// the work with a channel if you need concurrent reads and writes.
pub struct Client {
    inner: backend::Connection,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`ws://` or `wss://`), retrying as `config.retry` says.
    pub async fn connect(url: &str, config: ClientConfig) -> Result<Self> {
        config.validate()?;
        let url = parse_url(url)?;
        Ok(Self {
            inner: backend::Connection::connect(url, config).await?,
        })
    }

    /// Sends a text message.
    pub async fn write_text(&mut self, text: &str) -> Result<()> {
        self.inner.write(Message::Text(text.to_owned())).await
    }

    /// Sends a binary message.
    pub async fn write_binary(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write(Message::Binary(data.to_vec())).await
    }

    /// Sends any serializable value: strings as text, byte strings as binary, [`Xml`]
    /// as XML text, everything else as JSON text.
    pub async fn write_message<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        let message = wasmsocket_binding::to_message(value)?;
        self.inner.write(message).await
    }

    /// Reads the next message, text or binary.
    ///
    /// # Cancel safety
    /// Cancelling loses no message: one that arrives later is returned by the next read.
    pub async fn read(&mut self) -> Result<Message> {
        self.inner.read().await
    }

    /// Reads the next message, which must be text.
    pub async fn read_text(&mut self) -> Result<String> {
        match self.read().await? {
            Message::Text(text) => Ok(text),
            other => Err(Error::UnexpectedMessage {
                expected: "text",
                got: kind(&other),
            }),
        }
    }

    /// Reads the next message, which must be binary.
    pub async fn read_binary(&mut self) -> Result<Vec<u8>> {
        match self.read().await? {
            Message::Binary(data) => Ok(data),
            other => Err(Error::UnexpectedMessage {
                expected: "binary",
                got: kind(&other),
            }),
        }
    }

    /// Reads the next message and binds it to `T` (see the crate docs).
    pub async fn read_message<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let message = self.read().await?;
        Ok(wasmsocket_binding::from_message(&message)?)
    }

    /// Sends a ping (at most 125 bytes). Native only.
    pub async fn ping(&mut self, data: &[u8]) -> Result<()> {
        self.inner.ping(data).await
    }

    /// Sends a pong (at most 125 bytes). Native only.
    pub async fn pong(&mut self, data: &[u8]) -> Result<()> {
        self.inner.pong(data).await
    }

    /// Closes with `code` and `reason` and waits up to `timeout` for the peer's close
    /// frame (`Duration::ZERO`: as long as it takes). In the browser only 1000 and
    /// 3000–4999 can be sent. Returns the peer's close code and reason.
    pub async fn close(
        &mut self,
        code: u16,
        reason: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        if reason.len() > 123 {
            return Err(Error::InvalidConfig(
                "close reason: at most 123 bytes".into(),
            ));
        }
        self.inner.close(code, reason, timeout).await
    }

    /// The subprotocol the server agreed to.
    pub fn negotiated_subprotocol(&self) -> Option<&str> {
        self.inner.subprotocol()
    }

    /// The server's answer to the upgrade request. Native only (a browser does not
    /// expose it).
    pub fn handshake_response(&self) -> Result<&HandshakeResponse> {
        self.inner.handshake_response()
    }
}

/// A parsed `ws://` or `wss://` URL (or `http(s)://`, for a token endpoint): what the
/// backends need, without a URL crate (whose Unicode tables would triple the browser
/// build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WsUrl {
    /// The URL as given.
    raw: String,
    /// `wss`.
    secure: bool,
    /// The host as written (IPv6 in brackets), for the `Host` header.
    authority: String,
    /// The host to connect to (IPv6 without brackets).
    host: String,
    /// The port, explicit or the scheme's default.
    port: u16,
    /// Path and query, at least `/`.
    target: String,
}

impl WsUrl {
    #[cfg_attr(
        not(target_arch = "wasm32"),
        expect(dead_code, reason = "the browser backend's")
    )]
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }
}

fn parse_url(raw: &str) -> Result<WsUrl> {
    split_url(raw, ["ws", "wss"], "the scheme must be ws or wss").map_err(|reason| {
        Error::InvalidUrl {
            url: raw.to_owned(),
            reason: reason.to_owned(),
        }
    })
}

/// An `http://` or `https://` URL (an OAuth2 token endpoint), in the same form.
pub(crate) fn parse_http_url(raw: &str) -> Result<WsUrl, &'static str> {
    split_url(raw, ["http", "https"], "the scheme must be http or https")
}

/// Splits `raw`, whose scheme must be `schemes[0]` (plain) or `schemes[1]` (TLS), in
/// any case.
///
/// Byte by byte: every delimiter is ASCII, so each index found is a char boundary and
/// `get` cannot fail. `&str` searchers, `split_at` and `parse` would pull UTF-8
/// decoding, core's char-boundary panic and its `Debug` formatting into the browser
/// bundle, where they made up a third of the JavaScript class's `connect`.
fn split_url(
    raw: &str,
    schemes: [&str; 2],
    wrong_scheme: &'static str,
) -> Result<WsUrl, &'static str> {
    let part = |from: usize, to: usize| raw.get(from..to).unwrap_or_default();
    let bytes = raw.as_bytes();
    let colon = position(bytes, b":").ok_or("no scheme")?;
    let start = colon + 3;
    if bytes.get(colon..start) != Some(b"://") {
        return Err("no scheme");
    }
    let scheme = part(0, colon);
    let secure = if scheme.eq_ignore_ascii_case(schemes[0]) {
        false
    } else if scheme.eq_ignore_ascii_case(schemes[1]) {
        true
    } else {
        return Err(wrong_scheme);
    };
    let rest = bytes.get(start..).unwrap_or_default();
    if rest.contains(&b'#') {
        return Err("a fragment is not allowed");
    }
    if rest
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("spaces and control characters must be percent-encoded");
    }
    let end = start + position(rest, b"/?").unwrap_or(rest.len());
    let authority = part(start, end);
    if authority.contains('@') {
        return Err("credentials in the URL are not supported; use `auth`");
    }
    let (host, port) = if authority.starts_with('[') {
        let close = start + position(authority.as_bytes(), b"]").ok_or("unclosed IPv6 bracket")?;
        let port = (bytes.get(close + 1) == Some(&b':')).then(|| part(close + 2, end));
        (part(start + 1, close), port)
    } else {
        match authority.bytes().rposition(|b| b == b':') {
            Some(i) => (part(start, start + i), Some(part(start + i + 1, end))),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host");
    }
    let port = match port {
        Some(port) => decimal_port(port).ok_or("bad port")?,
        None if secure => 443,
        None => 80,
    };
    let target = part(end, raw.len());
    let target = if target.starts_with('/') {
        target.to_owned()
    } else {
        ["/", target].concat()
    };
    Ok(WsUrl {
        raw: raw.to_owned(),
        secure,
        authority: authority.to_owned(),
        host: host.to_owned(),
        port,
        target,
    })
}

/// The index of the first byte of `bytes` that is one of `any`.
fn position(bytes: &[u8], any: &[u8]) -> Option<usize> {
    bytes.iter().position(|b| any.contains(b))
}

/// A port number: one to five digits, at most 65535.
fn decimal_port(digits: &str) -> Option<u16> {
    if digits.is_empty() {
        return None;
    }
    digits.bytes().try_fold(0_u16, |port, digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        port.checked_mul(10)?.checked_add(u16::from(digit - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let url = parse_url("ws://127.0.0.1:9090/echo?room=1").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.target.as_str()),
            ("127.0.0.1", 9090, "/echo?room=1")
        );
        assert_eq!(url.authority, "127.0.0.1:9090");
        let url = parse_url("wss://example.com").unwrap();
        assert_eq!(
            (url.secure, url.port, url.target.as_str()),
            (true, 443, "/")
        );
        let url = parse_url("ws://[::1]:8080?x").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.target.as_str()),
            ("::1", 8080, "/?x")
        );
        for bad in [
            "http://x/",
            "ws://",
            "ws://x/#frag",
            "nonsense",
            "ws://x:99999/",
            "ws://u:p@x/",
            "ws://x/a b",
        ] {
            assert!(
                matches!(parse_url(bad), Err(Error::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_endpoint_urls_are_checked() {
        let url = parse_http_url("https://auth.example/oauth2/token").unwrap();
        assert_eq!(
            (url.secure, url.port, url.target.as_str()),
            (true, 443, "/oauth2/token")
        );
        let url = parse_http_url("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (url.secure, url.port, url.target.as_str()),
            (false, 8080, "/")
        );
        for bad in ["ws://x/token", "https://", "https://u:p@x/", "token"] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
        let config = ClientConfig::default()
            .auth(OAuth2Config::client_credentials("ftp://x/token", "id", "secret").into());
        assert!(
            matches!(config.validate(), Err(Error::InvalidConfig(m)) if m.contains("token_url"))
        );
        let config = ClientConfig::default()
            .auth(OAuth2Config::client_credentials("http://x/token", "id", "").into());
        assert!(
            matches!(config.validate(), Err(Error::InvalidConfig(m)) if m.contains("client_secret"))
        );
        let config = ClientConfig::default()
            .auth(OAuth2Config::password("http://x/token", "alice", "pw").into());
        assert!(config.validate().is_ok());
    }

    #[test]
    fn token_endpoint_errors_name_the_endpoint_and_the_error() {
        let error = Error::TokenEndpoint {
            url: "https://auth.example/token".into(),
            status: Some(401),
            error: "invalid_client".into(),
            description: "bad secret".into(),
        };
        assert_eq!(
            error.to_string(),
            "OAuth2 token endpoint https://auth.example/token answered 401: invalid_client (bad secret)"
        );
        let error = Error::TokenEndpoint {
            url: "http://127.0.0.1:1/token".into(),
            status: None,
            error: String::new(),
            description: "connection refused".into(),
        };
        assert_eq!(
            error.to_string(),
            "OAuth2 token endpoint http://127.0.0.1:1/token failed: connection refused"
        );
    }

    #[test]
    fn messages_are_written_without_core_fmt() {
        for n in [0, 7, 10, 99, 1000, 1006, 4999, 10_000, u16::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
        let closed = |code, reason: &str| {
            Error::ConnectionClosed {
                code,
                reason: reason.into(),
            }
            .to_string()
        };
        assert_eq!(closed(1006, ""), "connection closed (1006)");
        assert_eq!(closed(4000, "bye"), "connection closed (4000: bye)");
        let error = Error::Handshake {
            status: 404,
            headers: Vec::new(),
            body: String::new(),
        };
        assert_eq!(error.to_string(), "upgrade refused with status 404");
        assert_eq!(
            Error::Unsupported("pings").to_string(),
            "pings is not supported on this target"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let configs = [
            ClientConfig::default().auth(ClientAuth::Basic {
                username: "alice".into(),
                password: "hunter2".into(),
            }),
            ClientConfig::default().auth(JwtIssuerConfig::hmac("hunter2").into()),
            ClientConfig::default().auth(
                OAuth2Config::password("http://x/token", "alice", "hunter2")
                    .client("app", "hunter2")
                    .into(),
            ),
        ];
        for config in configs {
            let auth = format!("{:?}", config.auth);
            assert!(!auth.contains("hunter2"), "{auth}");
        }
    }

    #[test]
    fn retry_backs_off_up_to_the_cap() {
        let retry = RetryConfig::new(3, Duration::from_millis(100))
            .back_off(2.0, Duration::from_millis(300));
        assert_eq!(retry.wait(1), Duration::from_millis(100));
        assert_eq!(retry.wait(2), Duration::from_millis(200));
        assert_eq!(retry.wait(3), Duration::from_millis(300));
        assert!(retry.allows(3) && !retry.allows(4));
        let forever =
            RetryConfig::new(0, Duration::from_millis(100)).back_off(10.0, Duration::from_secs(30));
        assert_eq!(forever.wait(400), Duration::from_secs(30));
        assert_eq!(forever.wait(u32::MAX), Duration::from_secs(30));
        assert!(RetryConfig::default().allows(u32::MAX));
    }

    #[test]
    fn config_is_validated() {
        assert!(
            ClientConfig::default()
                .subprotocols(["chat.v1"])
                .validate()
                .is_ok()
        );
        assert!(
            ClientConfig::default()
                .subprotocols(["a b"])
                .validate()
                .is_err()
        );
        assert!(
            ClientConfig::default()
                .max_frame_size(0)
                .validate()
                .is_err()
        );
    }
}
