//! The browser backend: the page's `WebSocket` (web-sys).
//!
//! The browser owns the handshake, pings, frame limits and TLS; configuration the
//! browser cannot honour is refused with [`Error::Unsupported`] at connect time.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::{
    ClientAuth, ClientConfig, Error, HandshakeResponse, Message, Result, RetryConfig, WsUrl,
};

/// The browser has no OAuth2 token cache: configuring OAuth2 is refused at connect.
/// (Braced, so the shared code can build it with `default()` on both targets.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenCache {}

/// A write waits while the browser holds more than this many unsent bytes.
const HIGH_WATER_MARK: u32 = 1 << 20;
/// How often a waiting write looks at `bufferedAmount` again.
const DRAIN_POLL: Duration = Duration::from_millis(5);

/// What the browser honours of a [`ClientConfig`]: the rest is refused at connect. The
/// JavaScript class builds it directly, so the native-only configuration (credentials,
/// TLS, handlers) stays out of the browser bundle.
pub(crate) struct Settings {
    /// The subprotocols to offer, as the strings the `WebSocket` constructor takes.
    pub(crate) subprotocols: js_sys::Array,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) retry: Option<RetryConfig>,
}

/// What the socket's handlers have seen and the reader has not taken yet. (A queue
/// and a waker rather than a futures channel: the browser is single-threaded, and the
/// channel's atomics and node queue would double this part of the bundle.)
#[derive(Default)]
struct Inbox {
    opened: bool,
    messages: VecDeque<Message>,
    /// The close event's code and reason, once the browser has fired it.
    closed: Option<(u16, String)>,
    /// The reader waiting for one of the above.
    waker: Option<Waker>,
    /// A `close` waiting for the close event (beside a pending read).
    closer: Option<Waker>,
}

impl Inbox {
    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// What the reader takes from the inbox, in the order the browser reported it.
enum Event {
    Open,
    Message(Message),
    Closed(u16, String),
}

/// One browser `WebSocket` with its handlers. Dropping it closes the socket and removes
/// the handlers.
pub(crate) struct Socket {
    ws: WebSocket,
    inbox: Rc<RefCell<Inbox>>,
    /// Whether a read is waiting on the inbox: a second one is refused.
    reading: Cell<bool>,
    _on_open: Closure<dyn FnMut(web_sys::Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        self.ws.set_onerror(None);
        let _ = self.ws.close();
    }
}

/// Clears [`Socket::reading`] when the read ends or is cancelled.
struct Reading<'a>(&'a Cell<bool>);

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Socket {
    fn open(url: &str, config: &Settings) -> Result<Self> {
        let ws = WebSocket::new_with_str_sequence(url, &config.subprotocols)
            .map_err(|e| Error::Connect(describe(&e)))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        // The browser buffers what arrives; the inbox only hands it to the reader.
        let inbox = Rc::new(RefCell::new(Inbox::default()));

        let seen = inbox.clone();
        let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            let mut inbox = seen.borrow_mut();
            inbox.opened = true;
            inbox.wake();
        });
        let seen = inbox.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let data = event.data();
            let message = if let Some(text) = data.as_string() {
                Message::Text(text)
            } else if let Ok(buffer) = data.dyn_into::<js_sys::ArrayBuffer>() {
                Message::Binary(js_sys::Uint8Array::new(&buffer).to_vec())
            } else {
                return;
            };
            let mut inbox = seen.borrow_mut();
            inbox.messages.push_back(message);
            inbox.wake();
        });
        let seen = inbox.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |event: CloseEvent| {
            let mut inbox = seen.borrow_mut();
            inbox.closed = Some((event.code(), event.reason()));
            inbox.wake();
            if let Some(closer) = inbox.closer.take() {
                closer.wake();
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            ws,
            inbox,
            reading: Cell::new(false),
            _on_open: on_open,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    /// What the browser reported next: the opening, then the messages, then the close
    /// (again on every later call).
    async fn next_event(&self) -> Result<Event> {
        if self.reading.replace(true) {
            return Err(Error::Unsupported("a second read while one is pending"));
        }
        let _reading = Reading(&self.reading);
        poll_fn(|cx| {
            let mut inbox = self.inbox.borrow_mut();
            if inbox.opened {
                inbox.opened = false;
                return Poll::Ready(Ok(Event::Open));
            }
            if let Some(message) = inbox.messages.pop_front() {
                return Poll::Ready(Ok(Event::Message(message)));
            }
            if let Some((code, reason)) = inbox.closed.clone() {
                return Poll::Ready(Ok(Event::Closed(code, reason)));
            }
            inbox.waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits for the close event (leaving messages still in flight to the reader).
    async fn close_event(&self) -> Result<(u16, String)> {
        poll_fn(|cx| {
            let mut inbox = self.inbox.borrow_mut();
            if let Some(event) = inbox.closed.clone() {
                return Poll::Ready(Ok(event));
            }
            inbox.closer = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    async fn opened(&self) -> Result<()> {
        match self.next_event().await? {
            Event::Closed(code, reason) => Err(Error::Connect(
                [
                    "the browser could not open the WebSocket (close ",
                    &crate::close_text(code, &reason),
                    ")",
                ]
                .concat(),
            )),
            _ => Ok(()),
        }
    }
}

/// The browser connection, shared by [`crate::Client`] and the JavaScript class.
pub(crate) struct Shared {
    /// The URL, already checked.
    url: String,
    config: Settings,
    socket: RefCell<Rc<Socket>>,
    closed: RefCell<Option<(u16, String)>>,
}

pub(crate) struct Connection {
    pub(crate) shared: Rc<Shared>,
    /// The subprotocols offered, which own the agreed one that `subprotocol` lends.
    subprotocols: Vec<String>,
}

fn check_supported(config: &ClientConfig) -> Result<()> {
    if !config.custom_headers.is_empty() {
        return Err(Error::Unsupported(
            "custom_headers (a browser WebSocket sends no custom headers)",
        ));
    }
    if config.secure_socket.is_some() {
        return Err(Error::Unsupported(
            "secure_socket (the browser uses its own TLS: its trusted CAs, client \
             certificates, versions and cipher suites)",
        ));
    }
    if config.max_frame_size.is_some() {
        return Err(Error::Unsupported(
            "max_frame_size (a browser WebSocket cannot limit frames)",
        ));
    }
    if config.compression == Some(false) {
        return Err(Error::Unsupported(
            "turning compression off (the browser negotiates it)",
        ));
    }
    if !config.cookies.is_empty() {
        return Err(Error::Unsupported("cookies (the browser sends its own)"));
    }
    match &config.auth {
        None => {}
        Some(ClientAuth::Jwt(_)) => {
            return Err(Error::Unsupported(
                "auth: issuing JWTs (a browser WebSocket cannot send Authorization; pass a \
                 token in the URL or a subprotocol offer, which the host accepts with \
                 token_query_param or token_subprotocol_prefix)",
            ));
        }
        Some(ClientAuth::OAuth2(_)) => {
            return Err(Error::Unsupported(
                "auth: OAuth2 grants (a browser WebSocket cannot send Authorization; get \
                 the token in the page and pass it in the URL or a subprotocol offer, which \
                 the host accepts with token_query_param or token_subprotocol_prefix)",
            ));
        }
        Some(ClientAuth::Basic { .. } | ClientAuth::Bearer { .. }) => {
            return Err(Error::Unsupported(
                "auth (a browser WebSocket cannot send Authorization; pass a token in the \
                 URL or a subprotocol offer, which the host accepts with token_query_param \
                 or token_subprotocol_prefix)",
            ));
        }
    }
    if config.ping_pong_handler.is_some() {
        return Err(Error::Unsupported(
            "ping_pong_handler (the browser answers pings itself)",
        ));
    }
    Ok(())
}

#[wasm_bindgen::prelude::wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, millis: f64) -> wasm_bindgen::JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &wasm_bindgen::JsValue);
}

/// A `setTimeout` as a future; dropping it clears the timeout. (gloo-timers does the
/// same through a futures oneshot channel, which costs the bundle a kilobyte more.)
struct Sleep {
    id: wasm_bindgen::JsValue,
    /// Whether it fired, and the task waiting for it.
    state: Rc<RefCell<(bool, Option<Waker>)>>,
    _callback: Closure<dyn FnMut()>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut state = self.state.borrow_mut();
        if state.0 {
            return Poll::Ready(());
        }
        state.1 = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

/// Sleeps for `duration` (at most `i32::MAX` milliseconds, about 24 days: browsers
/// fire longer timeouts at once).
fn sleep(duration: Duration) -> Sleep {
    let state = Rc::new(RefCell::new((false, None::<Waker>)));
    let fired = state.clone();
    let callback = Closure::<dyn FnMut()>::new(move || {
        let mut fired = fired.borrow_mut();
        fired.0 = true;
        if let Some(waker) = fired.1.take() {
            waker.wake();
        }
    });
    let millis = (duration.as_secs_f64() * 1000.0).min(f64::from(i32::MAX));
    Sleep {
        id: set_timeout(callback.as_ref().unchecked_ref(), millis),
        state,
        _callback: callback,
    }
}

/// Runs `future`, failing with `timeout_error` after `limit`.
async fn with_timeout<T>(
    limit: Option<Duration>,
    future: impl Future<Output = Result<T>>,
    timeout_error: fn() -> Error,
) -> Result<T> {
    let Some(limit) = limit else {
        return future.await;
    };
    let mut future = pin!(future);
    let mut timer = pin!(sleep(limit));
    poll_fn(|cx| {
        if let Poll::Ready(result) = future.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        timer.as_mut().poll(cx).map(|()| Err(timeout_error()))
    })
    .await
}

async fn open_with_retry(url: &str, config: &Settings) -> Result<Socket> {
    let mut attempt = 0;
    loop {
        let limit = config
            .handshake_timeout
            .or(Some(crate::DEFAULT_HANDSHAKE_TIMEOUT));
        let result = with_timeout(
            limit,
            async {
                let socket = Socket::open(url, config)?;
                socket.opened().await?;
                Ok(socket)
            },
            || Error::HandshakeTimeout,
        )
        .await;
        match (&config.retry, result) {
            (Some(retry), Err(Error::Connect(_) | Error::HandshakeTimeout))
                if retry.allows(attempt + 1) =>
            {
                attempt += 1;
                sleep(retry.wait(attempt)).await;
            }
            (_, result) => return result,
        }
    }
}

impl Connection {
    pub(crate) async fn connect(url: WsUrl, config: ClientConfig) -> Result<Self> {
        check_supported(&config)?;
        let settings = Settings {
            subprotocols: config.subprotocols.iter().map(JsValue::from).collect(),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
            handshake_timeout: config.handshake_timeout,
            retry: config.retry,
        };
        Ok(Self {
            shared: Shared::connect(url.as_str().to_owned(), settings).await?,
            subprotocols: config.subprotocols,
        })
    }

    pub(crate) async fn write(&mut self, message: Message) -> Result<()> {
        self.shared.write(message).await
    }

    pub(crate) async fn read(&mut self) -> Result<Message> {
        self.shared.read().await
    }

    pub(crate) async fn ping(&mut self, _data: &[u8]) -> Result<()> {
        Err(Error::Unsupported("sending pings from a browser"))
    }

    pub(crate) async fn pong(&mut self, _data: &[u8]) -> Result<()> {
        Err(Error::Unsupported("sending pongs from a browser"))
    }

    pub(crate) async fn close(
        &mut self,
        code: u16,
        reason: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        self.shared.close(code, reason, timeout).await
    }

    pub(crate) fn subprotocol(&self) -> Option<&str> {
        // The agreed subprotocol, found in the list offered.
        let agreed = self.shared.protocol()?;
        self.subprotocols
            .iter()
            .find(|p| **p == agreed)
            .map(String::as_str)
    }

    pub(crate) fn handshake_response(&self) -> Result<&HandshakeResponse> {
        Err(Error::Unsupported(
            "reading the upgrade response in a browser",
        ))
    }
}

impl Shared {
    /// Opens the socket (retrying as `config.retry` says); `config` is already valid.
    pub(crate) async fn connect(url: String, config: Settings) -> Result<Rc<Self>> {
        let socket = open_with_retry(&url, &config).await?;
        Ok(Rc::new(Self {
            url,
            config,
            socket: RefCell::new(Rc::new(socket)),
            closed: RefCell::new(None),
        }))
    }

    fn socket(&self) -> Rc<Socket> {
        self.socket.borrow().clone()
    }

    fn closed_error(&self) -> Option<Error> {
        self.closed
            .borrow()
            .as_ref()
            .map(|(code, reason)| Error::ConnectionClosed {
                code: *code,
                reason: reason.clone(),
            })
    }

    /// The agreed subprotocol; the browser reports `""` for none.
    pub(crate) fn protocol(&self) -> Option<String> {
        let protocol = self.socket().ws.protocol();
        (!protocol.is_empty()).then_some(protocol)
    }

    /// Replaces a dropped connection when `retry` is configured.
    async fn recover(&self, code: u16, reason: String) -> Result<()> {
        if self.config.retry.is_none() || code != 1006 {
            *self.closed.borrow_mut() = Some((code, reason.clone()));
            return Err(Error::ConnectionClosed { code, reason });
        }
        let socket = open_with_retry(&self.url, &self.config).await?;
        *self.socket.borrow_mut() = Rc::new(socket);
        Ok(())
    }

    pub(crate) async fn write(&self, message: Message) -> Result<()> {
        if let Some(error) = self.closed_error() {
            return Err(error);
        }
        let socket = self.socket();
        if socket.ws.ready_state() != WebSocket::OPEN {
            self.recover(1006, "the socket is not open".into()).await?;
            return Box::pin(self.write(message)).await;
        }
        // Backpressure: let the browser drain what it holds before adding more.
        with_timeout(
            self.config.write_timeout,
            async {
                while socket.ws.buffered_amount() > HIGH_WATER_MARK {
                    sleep(DRAIN_POLL).await;
                }
                Ok(())
            },
            || Error::WriteTimeout,
        )
        .await?;
        let sent = match &message {
            Message::Text(text) => socket.ws.send_with_str(text),
            Message::Binary(data) => socket.ws.send_with_u8_array(data),
        };
        sent.map_err(|e| Error::Connect(describe(&e)))
    }

    pub(crate) async fn read(&self) -> Result<Message> {
        loop {
            if let Some(error) = self.closed_error() {
                return Err(error);
            }
            let socket = self.socket();
            let event = with_timeout(self.config.read_timeout, socket.next_event(), || {
                Error::ReadTimeout
            })
            .await?;
            match event {
                Event::Message(message) => return Ok(message),
                Event::Open => {}
                Event::Closed(code, reason) => self.recover(code, reason).await?,
            }
        }
    }

    pub(crate) async fn close(
        &self,
        code: u16,
        reason: &str,
        timeout: Duration,
    ) -> Result<(u16, String)> {
        if code != 1000 && !(3000..=4999).contains(&code) {
            return Err(Error::Unsupported(
                "close codes other than 1000 and 3000-4999 in a browser",
            ));
        }
        if let Some(closed) = self.closed.borrow().clone() {
            return Ok(closed);
        }
        let socket = self.socket();
        socket
            .ws
            .close_with_code_and_reason(code, reason)
            .map_err(|e| Error::Connect(describe(&e)))?;
        let limit = (!timeout.is_zero()).then_some(timeout);
        let peer = with_timeout(limit, socket.close_event(), || Error::ReadTimeout)
            .await
            .unwrap_or((1006, String::new()));
        *self.closed.borrow_mut() = Some(peer.clone());
        Ok(peer)
    }
}

/// What a thrown JavaScript value says: an `Error`'s message, or the value as a string.
pub(crate) fn describe(value: &wasm_bindgen::JsValue) -> String {
    value
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| value.as_string())
        .unwrap_or_else(|| "the browser reported an error".to_owned())
}
