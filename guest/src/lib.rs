//! Write a wasmsocket WebSocket service as a WebAssembly component.
//!
//! A service reads like a Ballerina `websocket:Service` class: implement [`Service`]
//! on a type that holds one connection's state, write the callbacks you need (every one
//! has a default that does nothing), and put [`service`] on the `impl` block. The
//! `upgrade` function plays the upgrade service's `get` resource: it sees the upgrade
//! request and accepts it with a new session, or rejects it with an HTTP status.
//!
//! ```ignore
//! use wasmsocket_guest::prelude::*;
//!
//! struct Echo;
//!
//! #[wasmsocket_guest::service]
//! impl Service for Echo {
//!     fn upgrade(_request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError> {
//!         Ok(Echo.into())
//!     }
//!
//!     fn on_text_message(&mut self, _caller: &Caller, text: String) -> Result<Reply> {
//!         Ok(Reply::Text(text))
//!     }
//! }
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2 --release`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component the host's `[[service]]` names.
//! Give the release profile `lto = true` and `codegen-units = 1` (this repository builds
//! its components with such a profile, `guest`): an instance's runtime state follows the
//! module's size, and for the echo example that is about 5 KiB less per connection.
//!
//! Each connection gets an instance of its own by default: state in `self` (and in
//! statics) belongs to that connection alone. A panic ends only that connection, with
//! close code 1011.

use std::fmt;

#[cfg(feature = "xml")]
pub use wasmsocket_binding::Xml;
pub use wasmsocket_guest_macro::service;

#[doc(hidden)]
pub mod wit {
    //! The raw bindings of the `wasmsocket:service/service` world.
    wit_bindgen::generate!({
        path: "../wit",
        world: "service",
        pub_export_macro: true,
        default_bindings_module: "wasmsocket_guest::wit",
    });
}

use wit::exports::wasmsocket::service::handler as exports;
use wit::wasmsocket::service::{caller as imports, types};

pub use types::Callbacks;

/// What most services need: `use wasmsocket_guest::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Accept, Caller, CallerError, Data, Error, Reply, Result, Service, UpgradeError,
        UpgradeRequest,
    };
}

/// The result of a callback: `Ok(())` keeps the connection open; an [`Error`] closes it.
pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// A WebSocket service: the state and callbacks of one connection.
///
/// Implement the callbacks you need; the others keep their defaults and are never
/// called (the [`service`] attribute tells the host which ones exist). When
/// [`on_ping`](Service::on_ping) is not implemented the host answers pings itself.
pub trait Service: Sized + 'static {
    /// Decides on an upgrade request: accept it with a new session, or refuse it with
    /// an HTTP status (Ballerina's `UpgradeError`).
    fn upgrade(request: &UpgradeRequest) -> Result<Accept<Self>, UpgradeError>;

    /// The connection is open.
    fn on_open(&mut self, caller: &Caller) -> Result {
        let _ = caller;
        Ok(())
    }

    /// A text message arrived (fragments joined, UTF-8 checked). Unless implemented,
    /// it goes to [`on_message`](Service::on_message).
    fn on_text_message(&mut self, caller: &Caller, text: String) -> Result<Reply> {
        self.on_message(caller, Data(Message::Text(text)))
    }

    /// A binary message arrived (fragments joined). Unless implemented, it goes to
    /// [`on_message`](Service::on_message).
    fn on_binary_message(&mut self, caller: &Caller, data: Vec<u8>) -> Result<Reply> {
        self.on_message(caller, Data(Message::Binary(data)))
    }

    /// A text or binary message arrived that no `on_text_message` /
    /// `on_binary_message` takes: Ballerina's `onMessage`. Bind it to a type with
    /// [`Data::bind`]; a failed binding returned with `?` closes the connection with
    /// 1003, as the specification says.
    ///
    /// Like the other message callbacks it may return a [`Reply`], sent back on the
    /// same connection: Ballerina's returned value.
    fn on_message(&mut self, caller: &Caller, data: Data) -> Result<Reply> {
        let _ = (caller, data);
        Ok(Reply::None)
    }

    /// A ping arrived. Implementing this makes answering it yours: call
    /// [`Caller::pong`].
    fn on_ping(&mut self, caller: &Caller, data: Vec<u8>) -> Result {
        let _ = (caller, data);
        Ok(())
    }

    /// A pong arrived.
    fn on_pong(&mut self, caller: &Caller, data: Vec<u8>) -> Result {
        let _ = (caller, data);
        Ok(())
    }

    /// Nothing arrived for the service's `idle_timeout`. The connection stays open
    /// unless this closes it.
    fn on_idle_timeout(&mut self, caller: &Caller) -> Result {
        let _ = caller;
        Ok(())
    }

    /// The peer closed the connection with `code` and `reason` (1005 when its close
    /// frame had no code, 1006 when the connection dropped without one).
    fn on_close(&mut self, caller: &Caller, code: u16, reason: String) -> Result {
        let _ = (caller, code, reason);
        Ok(())
    }

    /// The connection failed; the host has already sent the fitting close frame.
    fn on_error(&mut self, caller: &Caller, message: String) -> Result {
        let _ = (caller, message);
        Ok(())
    }

    /// Timer `id`, set with [`Caller::set_timer`], fired.
    fn on_timer(&mut self, caller: &Caller, id: u32) -> Result {
        let _ = (caller, id);
        Ok(())
    }

    #[doc(hidden)]
    fn __implemented_callbacks() -> Callbacks {
        Callbacks::all()
    }
}

use wasmsocket_binding::Message;

/// A received message for [`Service::on_message`], to bind to a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data(Message);

impl Data {
    /// Binds the message to `T` with Ballerina's rules: a text message read as
    /// `String` as it is, as [`Xml<T>`] as XML, as anything else as JSON; a binary
    /// message read as `Vec<u8>` as it is, as anything else through its UTF-8 text.
    /// Dispatch on a JSON field (Ballerina's `dispatcherKey`) with a serde
    /// internally-tagged enum: `#[serde(tag = "type")]`.
    ///
    /// A failure is [`Error::UnsupportedData`]: returned with `?` it closes the
    /// connection with 1003.
    pub fn bind<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        wasmsocket_binding::from_message(&self.0)
            .map_err(|error| Error::UnsupportedData(format!("data binding failed: {error}")))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            Message::Text(text) => Some(text),
            Message::Binary(_) => None,
        }
    }

    /// The payload bytes (a text message's UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(data) => data,
        }
    }

    /// Whether this is a binary message.
    pub fn is_binary(&self) -> bool {
        matches!(self.0, Message::Binary(_))
    }
}

/// What a message callback sends back, as a Ballerina remote function's return value
/// is: nothing, a text or binary message, any value (JSON), or a close frame.
///
/// A reply goes out after whatever the callback wrote through the [`Caller`], within the
/// same `max_write_buffer`. It is the cheaper way to answer: the host takes a text or
/// binary reply from the callback's result, with no call back into the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Reply {
    /// Send nothing.
    #[default]
    None,
    /// Send a text message.
    Text(String),
    /// Send a binary message.
    Binary(Vec<u8>),
    /// Close the connection with this code and reason (waiting up to 60 s for the
    /// peer's close frame).
    Close {
        /// The close code (1000-1003, 1007-1014, 3000-4999).
        code: u16,
        /// The reason, at most 123 bytes.
        reason: String,
    },
}

impl Reply {
    /// A reply carrying `value` framed as [`Caller::write_message`] frames it:
    /// strings as they are, byte strings as binary, everything else as JSON.
    pub fn message<T: serde::Serialize + ?Sized>(value: &T) -> Result<Reply> {
        match wasmsocket_binding::to_message(value) {
            Ok(Message::Text(text)) => Ok(Reply::Text(text)),
            Ok(Message::Binary(data)) => Ok(Reply::Binary(data)),
            Err(error) => Err(Error::Internal(format!("reply: {error}"))),
        }
    }

    /// The message the host sends after the callback returns (a close goes through
    /// the caller, as it always did).
    fn into_message(self, caller: &Caller) -> Result<Option<types::Message>> {
        match self {
            Reply::None => Ok(None),
            Reply::Text(text) => Ok(Some(types::Message::Text(text))),
            Reply::Binary(data) => Ok(Some(types::Message::Binary(data))),
            Reply::Close { code, reason } => {
                caller.close(code, &reason)?;
                Ok(None)
            }
        }
    }
}

impl From<()> for Reply {
    fn from((): ()) -> Self {
        Reply::None
    }
}

impl From<String> for Reply {
    fn from(text: String) -> Self {
        Reply::Text(text)
    }
}

impl From<&str> for Reply {
    fn from(text: &str) -> Self {
        Reply::Text(text.to_owned())
    }
}

impl From<Vec<u8>> for Reply {
    fn from(data: Vec<u8>) -> Self {
        Reply::Binary(data)
    }
}

/// The upgrade request a service decides on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpgradeRequest {
    /// The request method (`GET`).
    pub method: String,
    /// The request path, percent-encoded as sent.
    pub path: String,
    /// The query string without `?`, percent-encoded as sent.
    pub query: Option<String>,
    /// Every header as `(lower-case name, value)`, in the order received.
    pub headers: Vec<(String, String)>,
    /// The peer's `ip:port`.
    pub remote_address: String,
    /// Whether the connection came over TLS.
    pub secure: bool,
    /// The subprotocols the client offered, most preferred first.
    pub subprotocols: Vec<String>,
    /// Who the service's `auth` configuration authenticated, if it has any.
    pub principal: Option<Principal>,
}

/// An authenticated client (from the service's `[[service.auth]]` configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The user name (Basic) or the token's `sub` claim (JWT).
    pub subject: String,
    /// The granted scopes.
    pub scopes: Vec<String>,
    /// A JWT's claims as a JSON object (`{}` for Basic).
    pub claims: String,
}

impl UpgradeRequest {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The raw (still percent-encoded) value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }
}

impl From<types::UpgradeRequest> for UpgradeRequest {
    fn from(request: types::UpgradeRequest) -> Self {
        Self {
            method: request.method,
            path: request.path,
            query: request.query,
            headers: request
                .headers
                .into_iter()
                .map(|header| (header.name, header.value))
                .collect(),
            remote_address: request.remote_address,
            secure: request.secure,
            subprotocols: request.subprotocols,
            principal: request.principal.map(|p| Principal {
                subject: p.subject,
                scopes: p.scopes,
                claims: p.claims,
            }),
        }
    }
}

/// An accepted upgrade: the new session, plus response headers and a subprotocol.
#[derive(Debug)]
pub struct Accept<S> {
    session: S,
    headers: Vec<(String, String)>,
    subprotocol: Option<String>,
}

impl<S> Accept<S> {
    /// Accepts with `session` and nothing else.
    pub fn new(session: S) -> Self {
        Self {
            session,
            headers: Vec::new(),
            subprotocol: None,
        }
    }

    /// Adds a header to the `101` response. The host refuses the upgrade (500) for
    /// names it owns, such as `connection` or `sec-websocket-*`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Agrees on `protocol`, which must be one the client offered.
    pub fn subprotocol(mut self, protocol: impl Into<String>) -> Self {
        self.subprotocol = Some(protocol.into());
        self
    }
}

impl<S> From<S> for Accept<S> {
    fn from(session: S) -> Self {
        Self::new(session)
    }
}

/// A refused upgrade: Ballerina's `websocket:UpgradeError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeError {
    /// The HTTP status, 400..=599.
    pub status: u16,
    /// The response body.
    pub message: String,
}

impl UpgradeError {
    /// Refuses with `status` (400..=599; the host answers 500 for anything else).
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// `400 Bad Request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// `401 Unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, message)
    }

    /// `403 Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, message)
    }
}

/// How a callback ends the connection; the host sends the matching close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Data the service cannot accept: close 1003.
    UnsupportedData(String),
    /// Data against the service's policy: close 1008.
    PolicyViolation(String),
    /// The service failed: close 1011.
    Internal(String),
    /// Close with exactly this code (1000-1003, 1007-1014, 3000-4999) and reason.
    Close {
        /// The close code.
        code: u16,
        /// The reason, at most 123 bytes.
        reason: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedData(why) => write!(f, "unsupported data: {why}"),
            Self::PolicyViolation(why) => write!(f, "policy violation: {why}"),
            Self::Internal(why) => write!(f, "internal error: {why}"),
            Self::Close { code, reason } => write!(f, "close {code}: {reason}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<CallerError> for Error {
    fn from(error: CallerError) -> Self {
        Self::Internal(error.to_string())
    }
}

impl From<Error> for types::CallbackError {
    fn from(error: Error) -> Self {
        match error {
            Error::UnsupportedData(why) => Self::UnsupportedData(why),
            Error::PolicyViolation(why) => Self::PolicyViolation(why),
            Error::Internal(why) => Self::Internal(why),
            Error::Close { code, reason } => Self::Close(types::CloseFrame { code, reason }),
        }
    }
}

/// Why a [`Caller`] operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallerError {
    /// The connection is closing or closed. Stop writing.
    ConnectionClosed,
    /// The close code is not one an endpoint may send.
    InvalidCloseCode(u16),
    /// A ping, pong or close reason longer than 125 bytes (123 for a reason).
    ControlFrameTooLarge,
    /// This callback queued more than the service's `max_write_buffer`.
    WriteBufferFull,
    /// `write_message` could not serialize the value.
    Unserializable,
    /// A per-connection limit (64 topics, 16 timers) or the 256-byte topic name limit
    /// was reached.
    LimitExceeded,
}

impl fmt::Display for CallerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectionClosed => f.write_str("connection closed"),
            Self::InvalidCloseCode(code) => write!(f, "invalid close code {code}"),
            Self::ControlFrameTooLarge => f.write_str("control frame payload too large"),
            Self::WriteBufferFull => f.write_str("write buffer full"),
            Self::Unserializable => f.write_str("the value could not be serialized"),
            Self::LimitExceeded => f.write_str("limit exceeded"),
        }
    }
}

impl std::error::Error for CallerError {}

impl From<types::CallerError> for CallerError {
    fn from(error: types::CallerError) -> Self {
        match error {
            types::CallerError::ConnectionClosed => Self::ConnectionClosed,
            types::CallerError::InvalidCloseCode(code) => Self::InvalidCloseCode(code),
            types::CallerError::ControlFrameTooLarge => Self::ControlFrameTooLarge,
            types::CallerError::WriteBufferFull => Self::WriteBufferFull,
            types::CallerError::LimitExceeded => Self::LimitExceeded,
        }
    }
}

/// The connection a callback runs for: Ballerina's `websocket:Caller`.
///
/// Writes are queued and sent in order when the callback returns.
///
/// It exists only for the duration of a callback: the host's caller functions act on
/// whichever connection's callback is running, so a `Caller` cannot be kept for later.
pub struct Caller<'a> {
    _callback: std::marker::PhantomData<&'a ()>,
}

impl fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller").field("id", &self.id()).finish()
    }
}

/// How long [`Caller::close`] waits for the peer's close frame: Ballerina's default.
pub const DEFAULT_CLOSE_TIMEOUT_MS: u32 = 60_000;

impl Caller<'_> {
    /// The connection's host-unique id.
    pub fn id(&self) -> String {
        imports::id()
    }

    /// Sends a text message.
    pub fn write_text(&self, text: &str) -> Result<(), CallerError> {
        Ok(imports::write_text(text)?)
    }

    /// Sends a binary message.
    pub fn write_binary(&self, data: &[u8]) -> Result<(), CallerError> {
        Ok(imports::write_binary(data)?)
    }

    /// Sends any serializable value: strings as text as they are, byte strings
    /// (`serde_bytes`) as binary, [`Xml`] as XML text, everything else as JSON text.
    pub fn write_message<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<(), CallerError> {
        match wasmsocket_binding::to_message(value) {
            Ok(Message::Text(text)) => self.write_text(&text),
            Ok(Message::Binary(data)) => self.write_binary(&data),
            Err(_) => Err(CallerError::Unserializable),
        }
    }

    /// Sends a ping (at most 125 bytes).
    pub fn ping(&self, data: &[u8]) -> Result<(), CallerError> {
        Ok(imports::ping(data)?)
    }

    /// Sends a pong (at most 125 bytes).
    pub fn pong(&self, data: &[u8]) -> Result<(), CallerError> {
        Ok(imports::pong(data)?)
    }

    /// Closes with `code` and `reason`, waiting up to 60 s for the peer's close frame.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), CallerError> {
        self.close_with_timeout(code, reason, DEFAULT_CLOSE_TIMEOUT_MS)
    }

    /// Closes with `code` and `reason`, waiting up to `timeout_ms` for the peer's close
    /// frame (0: wait as long as it takes).
    pub fn close_with_timeout(
        &self,
        code: u16,
        reason: &str,
        timeout_ms: u32,
    ) -> Result<(), CallerError> {
        Ok(imports::close(code, reason, timeout_ms)?)
    }

    /// Whether the connection is open (no close frame sent or received).
    pub fn is_open(&self) -> bool {
        imports::is_open()
    }

    /// Whether the connection runs over TLS.
    pub fn is_secure(&self) -> bool {
        imports::is_secure()
    }

    /// The subprotocol agreed in the handshake.
    pub fn negotiated_subprotocol(&self) -> Option<String> {
        imports::negotiated_subprotocol()
    }

    /// Sets a per-connection attribute.
    pub fn set_attribute(&self, key: &str, value: &str) {
        imports::set_attribute(key, value)
    }

    /// Subscribes this connection to `topic`: what other connections of this host
    /// (and, with the host's Redis topics backend, of the other hosts) publish there
    /// is sent to it by the host (no callback runs).
    pub fn subscribe(&self, topic: &str) -> Result<(), CallerError> {
        Ok(imports::subscribe(topic)?)
    }

    /// Ends the subscription to `topic`.
    pub fn unsubscribe(&self, topic: &str) {
        imports::unsubscribe(topic)
    }

    /// Sends a text message to every other connection subscribed to `topic`; returns
    /// how many connections of this host it was queued for.
    pub fn publish_text(&self, topic: &str, text: &str) -> Result<u32, CallerError> {
        Ok(imports::publish(
            topic,
            &types::Message::Text(text.to_owned()),
        )?)
    }

    /// Sends a binary message to every other connection subscribed to `topic`.
    pub fn publish_binary(&self, topic: &str, data: &[u8]) -> Result<u32, CallerError> {
        Ok(imports::publish(
            topic,
            &types::Message::Binary(data.to_vec()),
        )?)
    }

    /// Publishes any serializable value, framed as [`Caller::write_message`] frames it.
    pub fn publish_message<T: serde::Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<u32, CallerError> {
        match wasmsocket_binding::to_message(value) {
            Ok(Message::Text(text)) => self.publish_text(topic, &text),
            Ok(Message::Binary(data)) => self.publish_binary(topic, &data),
            Err(_) => Err(CallerError::Unserializable),
        }
    }

    /// Calls [`Service::on_timer`] with `id` after `delay`, then every `delay` if
    /// `repeat`. Setting an `id` again replaces that timer. At most 16 per connection.
    pub fn set_timer(
        &self,
        id: u32,
        delay: std::time::Duration,
        repeat: bool,
    ) -> Result<(), CallerError> {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        Ok(imports::set_timer(id, ms, repeat)?)
    }

    /// Cancels timer `id`.
    pub fn cancel_timer(&self, id: u32) {
        imports::cancel_timer(id)
    }

    /// Reads a per-connection attribute.
    pub fn get_attribute(&self, key: &str) -> Option<String> {
        imports::get_attribute(key)
    }

    /// Removes a per-connection attribute, returning its value.
    pub fn remove_attribute(&self, key: &str) -> Option<String> {
        imports::remove_attribute(key)
    }
}

#[doc(hidden)]
pub mod __private {
    //! Glue the `#[service]` attribute expands to. Not a public API.

    use super::*;

    pub use crate::wit::export;

    /// The component type exported for service `S`.
    pub struct Component<S>(std::marker::PhantomData<S>);

    /// A service type whose sessions the component keeps: `#[service]` implements it
    /// with a `thread_local!` of the concrete type, so a callback finds its session
    /// without a downcast.
    pub trait Stored: Sized {
        /// Runs `f` on the instance's sessions (one service value per connection), by
        /// the number handed to the host at upgrade. An isolated instance has one; a
        /// shared one as many as it serves connections.
        fn with_sessions<R>(f: impl FnOnce(&mut Sessions<Self>) -> R) -> R;
    }

    /// A slab of sessions; a freed slot's number is given to the next one.
    pub struct Sessions<S> {
        slots: Vec<Option<S>>,
        free: Vec<u32>,
    }

    impl<S> Sessions<S> {
        #[expect(
            clippy::new_without_default,
            reason = "a `const` initialiser for `thread_local!`"
        )]
        pub const fn new() -> Self {
            Self {
                slots: Vec::new(),
                free: Vec::new(),
            }
        }

        fn insert(&mut self, session: S) -> u32 {
            match self.free.pop() {
                Some(number) => {
                    self.slots[number as usize] = Some(session);
                    number
                }
                None => {
                    self.slots.push(Some(session));
                    u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 sessions")
                }
            }
        }

        fn remove(&mut self, number: u32) -> Option<S> {
            let session = self.slots.get_mut(number as usize)?.take()?;
            self.free.push(number);
            Some(session)
        }
    }

    impl<S: Service + Stored> exports::Guest for Component<S> {
        fn implemented_callbacks() -> Callbacks {
            S::__implemented_callbacks()
        }

        fn upgrade(
            request: types::UpgradeRequest,
        ) -> std::result::Result<exports::Acceptance, types::UpgradeRejection> {
            match S::upgrade(&request.into()) {
                Ok(accept) => Ok(exports::Acceptance {
                    session: S::with_sessions(|sessions| sessions.insert(accept.session)),
                    headers: accept
                        .headers
                        .into_iter()
                        .map(|(name, value)| types::Header { name, value })
                        .collect(),
                    subprotocol: accept.subprotocol,
                }),
                Err(error) => Err(types::UpgradeRejection {
                    status: error.status,
                    message: error.message,
                }),
            }
        }

        fn on_open(session: u32) -> Outcome {
            with::<S, _>(session, |s, c| s.on_open(c))
        }

        fn on_text_message(session: u32, data: String) -> Outcome<Option<types::Message>> {
            with::<S, _>(session, |s, c| s.on_text_message(c, data)?.into_message(c))
        }

        fn on_binary_message(session: u32, data: Vec<u8>) -> Outcome<Option<types::Message>> {
            with::<S, _>(session, |s, c| {
                s.on_binary_message(c, data)?.into_message(c)
            })
        }

        fn on_ping(session: u32, data: Vec<u8>) -> Outcome {
            with::<S, _>(session, |s, c| s.on_ping(c, data))
        }

        fn on_pong(session: u32, data: Vec<u8>) -> Outcome {
            with::<S, _>(session, |s, c| s.on_pong(c, data))
        }

        fn on_idle_timeout(session: u32) -> Outcome {
            with::<S, _>(session, |s, c| s.on_idle_timeout(c))
        }

        fn on_close(session: u32, code: u16, reason: String) -> Outcome {
            with::<S, _>(session, |s, c| s.on_close(c, code, reason))
        }

        fn on_error(session: u32, message: String) -> Outcome {
            with::<S, _>(session, |s, c| s.on_error(c, message))
        }

        fn on_timer(session: u32, id: u32) -> Outcome {
            with::<S, _>(session, |s, c| s.on_timer(c, id))
        }

        fn end(session: u32) {
            // Dropped outside the borrow: a service's `Drop` is user code.
            let ended = S::with_sessions(|sessions| sessions.remove(session));
            drop(ended);
        }
    }

    type Outcome<T = ()> = std::result::Result<T, types::CallbackError>;

    /// Runs `f` on session `number` with the running callback's caller.
    fn with<S: Service + Stored, T>(
        number: u32,
        f: impl FnOnce(&mut S, &Caller) -> Result<T>,
    ) -> Outcome<T> {
        let caller = Caller {
            _callback: std::marker::PhantomData,
        };
        // The host never calls into the component while one of its callbacks runs, so
        // nothing else borrows the sessions meanwhile.
        S::with_sessions(|sessions| {
            let session = sessions
                .slots
                .get_mut(number as usize)
                .and_then(Option::as_mut)
                .ok_or_else(|| types::CallbackError::Internal("no such session".to_owned()))?;
            f(session, &caller).map_err(Into::into)
        })
    }
}
