//! One TCP connection, from the upgrade request to the last close frame.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Sleep;
use tracing::{debug, info, warn};

use crate::auth::Verdict;
use crate::engine::{self, CloseCode, Frame, OpCode, WebSocket};
use crate::http::{self, ReadError, Request, Upgrade};
use crate::metrics::{Refusal, ServiceMetrics};
use crate::quiet::Quiet;
use crate::runtime::ServiceComponent;
use crate::runtime::{
    Accepted, CallbackError, Callbacks, Decision, Event, Header, InstanceHandle, Outgoing, Session,
    UpgradeRequest, describe_trap, is_sendable_close_code, truncate_reason,
};
use crate::server::{Service, Shared};
use crate::topics::{self, Published};

/// How long the host waits for the peer's close frame after a close it started itself
/// (an error or a trap), rather than one the session asked for with a timeout.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted TCP connection: plain HTTP requests (kept alive as
/// `http1_settings` says) until one upgrades to a WebSocket, then the WebSocket.
///
/// What this future holds lives as long as the connection, so the HTTP phase (with the
/// socket and its buffers) is boxed here, before the future starts, and freed before
/// the WebSocket runs, in a box of its own. (A value in scope at an `.await` keeps its
/// space in the future even once moved; an `async fn` stores its arguments too.)
pub(crate) fn serve<S>(
    shared: &Shared,
    io: S,
    remote: SocketAddr,
    secure: bool,
) -> impl Future<Output = ()> + '_
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let http = Box::pin(http(shared, io, remote, secure));
    async move {
        let serving = match http.await {
            Some(connection) => Box::pin(connection.serve()),
            None => return,
        };
        serving.await;
    }
}

/// The HTTP phase of a connection: plain requests until one upgrades; the WebSocket
/// connection, ready to run, or `None` when the connection ended without one.
async fn http<S>(
    shared: &Shared,
    mut io: S,
    remote: SocketAddr,
    secure: bool,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = &shared.listener;
    let server = listener.server.as_deref();
    let mut buf = BytesMut::new();
    // Requests answered in a row that had arrived before their predecessor's answer.
    let mut pipelined = 0;
    let mut first = true;
    loop {
        let read = http::read_request(&mut io, &listener.request_limits, &mut buf);
        let read = match listener.request_timeout() {
            Some(limit) => match tokio::time::timeout(limit, read).await {
                Ok(read) => read,
                Err(_) => {
                    // An idle kept-alive connection just ends; a slow request gets 408.
                    if first || !buf.is_empty() {
                        debug!(%remote, "request timed out");
                        let _ = http::respond(&mut io, 408, &[], server, "request timeout").await;
                    }
                    return None;
                }
            },
            None => read.await,
        };
        first = false;
        let request = match read {
            Ok(request) => request,
            Err(error) => {
                if let Some((status, body)) = error.response() {
                    debug!(%remote, status, "rejected request: {body}");
                    let _ = http::respond(&mut io, status, &[], server, body).await;
                } else if error != ReadError::Closed {
                    debug!(%remote, ?error, "bad request");
                }
                return None;
            }
        };
        if request.body_exceeds(listener.request_limits.max_entity_body_size) {
            let _ = http::respond(&mut io, 413, &[], server, "payload too large").await;
            return None;
        }
        let service = shared
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(request.path.as_str())
            .cloned();
        let upgrade = request.upgrade();
        if let (Some(service), Upgrade::WebSocket { key }) = (&service, &upgrade) {
            // Bytes the client sent after its request: copied out, so that the read
            // buffer is freed with this phase rather than held for the connection's life.
            let leftover = Bytes::copy_from_slice(&buf);
            // The request's headers and read buffer go with this future once the
            // upgrade is answered.
            return Box::pin(websocket(
                shared, service, io, &request, key, leftover, remote, secure,
            ))
            .await;
        }

        // A plain HTTP exchange; the body, if any, is not used.
        let Some(body_length) = request.body_length() else {
            let _ = http::respond(
                &mut io,
                400,
                &[],
                server,
                "request bodies must have a content-length",
            )
            .await;
            return None;
        };
        if http::discard_body(&mut io, &mut buf, body_length)
            .await
            .is_err()
        {
            return None;
        }
        pipelined = if buf.is_empty() { 0 } else { pipelined + 1 };
        let settings = &listener.http1_settings;
        let mut keep_alive = settings.keeps_alive(request.wants_close())
            && pipelined < settings.max_pipelined_requests;
        let answered = match (service, upgrade) {
            (Some(_), Upgrade::NotRequested) => {
                let headers = [("upgrade", "websocket"), ("sec-websocket-version", "13")];
                let body = "this is a WebSocket endpoint: upgrade required";
                http::respond_with(&mut io, 426, &headers, server, body, keep_alive).await
            }
            (Some(_), Upgrade::UnsupportedVersion) => {
                let headers = [("sec-websocket-version", "13")];
                let body = "unsupported WebSocket version; this server speaks 13";
                http::respond_with(&mut io, 426, &headers, server, body, keep_alive).await
            }
            (Some(_), Upgrade::Invalid(why)) => {
                keep_alive = false;
                http::respond(&mut io, 400, &[], server, why).await
            }
            (None, Upgrade::NotRequested) if shared.static_files.is_some() => {
                let files = shared.static_files.as_ref().expect("checked");
                let sent = crate::files::serve(files, &request, &mut io, server, keep_alive);
                match Box::pin(sent).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        http::respond_with(&mut io, 404, &[], server, "not found", keep_alive).await
                    }
                    Err(error) => Err(error),
                }
            }
            (None, _) | (Some(_), Upgrade::WebSocket { .. }) => {
                http::respond_with(
                    &mut io,
                    404,
                    &[],
                    server,
                    "no service at this path",
                    keep_alive,
                )
                .await
            }
        };
        if answered.is_err() || !keep_alive {
            return None;
        }
    }
}

/// Waits for `sleep`; forever without one.
async fn wait(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Authenticates, runs the upgrade hook and answers `101`: the connection, ready to
/// run; `None` when the upgrade was refused (and answered).
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one request"
)]
async fn websocket<S>(
    shared: &Shared,
    service: &Service,
    mut io: S,
    request: &Request,
    key: &[u8],
    leftover: Bytes,
    remote: SocketAddr,
    secure: bool,
) -> Option<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = &shared.listener;
    let server = listener.server.as_deref();
    let accept = engine::accept_key(key);
    let number = shared.next_connection_number();
    let span = tracing::Span::current();
    span.record("id", format!("{number:x}"));
    span.record("service", service.config.path.as_str());
    // The service's connection limit (503 beyond it), held until the connection ends.
    let metrics = &service.metrics;
    let Some(slot) = service.try_open() else {
        metrics.refused(Refusal::ConnectionLimit);
        warn!(
            limit = service.config.limits.max_connections,
            "service is at its connection limit"
        );
        let _ = http::respond(
            &mut io,
            503,
            &[("retry-after", "1")],
            server,
            "too many connections",
        )
        .await;
        return None;
    };
    let principal = if service.auth.is_enabled() {
        // Boxed, like the other one-time steps: a task's future is as large as its
        // largest state, and idle connections should not carry these.
        match Box::pin(service.auth.check(request)).await {
            Verdict::Allowed(principal) => Some(principal),
            Verdict::Unauthorized(challenge) => {
                metrics.refused(Refusal::Unauthorized);
                debug!("upgrade without valid credentials: 401");
                let headers = [("www-authenticate", challenge.as_str())];
                let _ =
                    http::respond(&mut io, 401, &headers, server, "authentication required").await;
                return None;
            }
            Verdict::Forbidden => {
                metrics.refused(Refusal::Forbidden);
                debug!("upgrade without a required scope: 403");
                let _ =
                    http::respond(&mut io, 403, &[], server, "a required scope is missing").await;
                return None;
            }
        }
    } else {
        None
    };
    // The component of this connection, for its whole life, even if a reload
    // swaps the service's.
    let component = service.component();
    let (mut instance, decision) = Box::pin(upgrade(
        service, &component, request, principal, remote, secure, &mut io, server,
    ))
    .await?;
    let (mut session, extra_headers, subprotocol) = match decision {
        Decision::Accept {
            session,
            headers,
            subprotocol,
        } => (session, headers, subprotocol),
        Decision::Reject(rejection) => {
            metrics.refused(Refusal::GuestRejected);
            let status = if (400..=599).contains(&rejection.status) {
                rejection.status
            } else {
                warn!(
                    status = rejection.status,
                    "guest rejected with a non-error status; answering 500"
                );
                500
            };
            debug!(status, "guest rejected the upgrade");
            let _ = http::respond(&mut io, status, &[], server, &rejection.message).await;
            return None;
        }
    };

    let offered: Vec<&str> = offered_subprotocols(service, request).collect();
    let subprotocol = match subprotocol {
        Some(chosen) if offered.contains(&chosen.as_str()) => Some(chosen),
        Some(chosen) => {
            warn!(subprotocol = %chosen, "guest chose a subprotocol the client did not offer");
            metrics.refused(Refusal::GuestFailed);
            let _ = http::respond(&mut io, 500, &[], server, "internal server error").await;
            instance.end(session).await;
            return None;
        }
        None => offered
            .iter()
            .find(|p| service.config.subprotocols.iter().any(|s| s == *p))
            .map(|p| (*p).to_owned()),
    };
    if let Some(bad) = extra_headers.iter().find(|h| !is_allowed_header(h)) {
        warn!(header = %bad.name, "guest returned a header the host does not allow");
        metrics.refused(Refusal::GuestFailed);
        let _ = http::respond(&mut io, 500, &[], server, "internal server error").await;
        instance.end(session).await;
        return None;
    }
    let extensions = if listener.web_socket_compression_enabled {
        engine::negotiate_deflate(
            request
                .header_values("sec-websocket-extensions")
                .filter_map(|v| std::str::from_utf8(v).ok()),
            listener.compression_context_takeover,
        )
    } else {
        None
    };

    let mut head = String::with_capacity(256);
    head.push_str(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n",
    );
    let _ = write!(head, "sec-websocket-accept: {accept}\r\n");
    if let Some(protocol) = &subprotocol {
        let _ = write!(head, "sec-websocket-protocol: {protocol}\r\n");
    }
    if let Some(extensions) = &extensions {
        let _ = write!(head, "sec-websocket-extensions: {extensions}\r\n");
    }
    if let Some(server) = server {
        let _ = write!(head, "server: {server}\r\n");
    }
    for header in &extra_headers {
        let _ = write!(head, "{}: {}\r\n", header.name, header.value);
    }
    head.push_str("\r\n");
    // Counted as open from before the client can see the 101 until the connection
    // ends (or fails to start).
    let counted = Counted::new(metrics.clone());
    if let Err(error) = io.write_all(head.as_bytes()).await {
        debug!(%error, "peer left during the handshake");
        instance.end(session).await;
        return None;
    }

    let limits = engine::Limits {
        max_frame_size: service.config.frame_size_limit(),
        max_message_size: service.config.max_message_size,
    };
    let callbacks = component.callbacks();
    let pong = if callbacks.contains(Callbacks::ON_PING) {
        engine::Pong::Manual
    } else {
        engine::Pong::Automatic
    };
    let ws = match engine::server(io, leftover, extensions.as_deref(), limits, pong) {
        Ok(ws) => ws,
        Err(error) => {
            warn!(%error, "cannot start the WebSocket engine");
            instance.end(session).await;
            return None;
        }
    };
    info!(subprotocol = ?subprotocol, compression = extensions.is_some(), "connection open");
    let accepted = Accepted {
        number,
        secure,
        subprotocol,
    };
    let opened = instance.lock().await.open(&mut session, accepted);
    if let Err(trap) = opened {
        warn!("{}", describe_trap(&trap));
        instance.end(session).await;
        return None;
    }
    Some(Connection {
        metrics: counted,
        ws,
        instance,
        session,
        callbacks,
        idle_timeout: service.config.idle_timeout(),
        shutdown: shared.shutdown.signal(),
        inbox: None,
        _slot: slot,
        unflushed: false,
        next_due: None,
        outbox: Vec::new(),
    })
}

/// The subprotocols the client offered, without one that carries a bearer token.
fn offered_subprotocols<'a>(
    service: &'a Service,
    request: &'a Request,
) -> impl Iterator<Item = &'a str> {
    request
        .header_tokens("sec-websocket-protocol")
        .filter(|offer| !service.auth.is_token_subprotocol(offer))
}

/// Instantiates the service's component (or takes a shared instance) and runs its
/// upgrade hook. On failure answers — 503 when the host is out of resources for
/// another instance, 500 when the guest failed — and returns `None`.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces of one request"
)]
async fn upgrade<S>(
    service: &Service,
    component: &ServiceComponent,
    request: &Request,
    principal: Option<crate::auth::Principal>,
    remote: SocketAddr,
    secure: bool,
    io: &mut S,
    server: Option<&str>,
) -> Option<(InstanceHandle, Decision)>
where
    S: AsyncWrite + Unpin,
{
    let mut instance = match component.instance().await {
        Ok(instance) => instance,
        Err(error) if is_out_of_resources(&error) => {
            warn!(
                "cannot instantiate another copy of the component: {error:#}; each isolated \
                 connection maps its own memory (about 3 of the kernel's vm.max_map_count \
                 mappings): raise that limit or use mode = \"shared\""
            );
            service.metrics.refused(Refusal::Capacity);
            let headers = [("retry-after", "1")];
            let _ = http::respond(io, 503, &headers, server, "server at capacity").await;
            return None;
        }
        Err(error) => {
            warn!(
                "cannot instantiate the component: {}",
                describe_trap(&error)
            );
            service.metrics.trapped(crate::runtime::is_deadline(&error));
            service.metrics.refused(Refusal::GuestFailed);
            let _ = http::respond(io, 500, &[], server, "internal server error").await;
            return None;
        }
    };
    let result = async {
        let upgrade_request = UpgradeRequest {
            method: request.method.clone(),
            path: request.path.clone(),
            query: request.query.clone(),
            headers: request
                .headers
                .iter()
                .map(|(name, value)| Header {
                    name: name.clone(),
                    value: String::from_utf8_lossy(value).trim().to_owned(),
                })
                .collect(),
            remote_address: remote.to_string(),
            secure,
            subprotocols: offered_subprotocols(service, request)
                .map(str::to_owned)
                .collect(),
            principal: principal.map(|p| crate::runtime::Principal {
                subject: p.subject,
                scopes: p.scopes,
                claims: p.claims,
            }),
        };
        let decision = instance.lock().await.upgrade(&upgrade_request);
        match decision {
            Ok(decision) => Ok((instance, decision)),
            Err(trap) => {
                service.metrics.trapped(crate::runtime::is_deadline(&trap));
                instance.poison();
                Err(trap)
            }
        }
    }
    .await;
    match result {
        Ok(accepted) => Some(accepted),
        Err(trap) => {
            warn!("upgrade failed: {}", describe_trap(&trap));
            service.metrics.refused(Refusal::GuestFailed);
            let _ = http::respond(io, 500, &[], server, "internal server error").await;
            None
        }
    }
}

/// Whether instantiating failed for want of memory or mappings (the kernel said
/// ENOMEM), rather than because of the guest.
fn is_out_of_resources(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
            || cause.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NOMEM)
            || cause.to_string().contains(crate::mappings::OUT_OF_MAPPINGS)
    })
}

/// Whether a guest-supplied response header may be sent: a valid field, and not one
/// the host owns.
fn is_allowed_header(header: &Header) -> bool {
    const RESERVED: &[&str] = &[
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "sec-websocket-accept",
        "sec-websocket-protocol",
        "sec-websocket-extensions",
        "sec-websocket-version",
        "server",
    ];
    crate::config::is_token(&header.name)
        && !RESERVED.contains(&header.name.to_ascii_lowercase().as_str())
        && header
            .value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// What ends a connection from outside.
enum Alarm {
    /// Another connection's callback trapped in the shared instance.
    Poisoned,
    /// The server is stopping.
    Stopping,
}

/// What to do after a callback.
enum Next {
    Continue,
    /// The connection is over; the close handshake is done or abandoned.
    Stop,
}

struct Connection<S> {
    ws: WebSocket<S>,
    instance: InstanceHandle,
    session: Session,
    callbacks: Callbacks,
    idle_timeout: Option<Duration>,
    shutdown: crate::server::ShutdownSignal,
    /// What this connection's topics publish; made on its first subscription (most
    /// connections never subscribe).
    inbox: Option<topics::Inbox>,
    /// The connection's place under the service's `max_connections`.
    _slot: crate::server::Slot,
    /// Frames were queued and not flushed yet.
    unflushed: bool,
    /// When the session's next timer is due.
    next_due: Option<tokio::time::Instant>,
    /// The frames the last callback queued, to send.
    outbox: Vec<Outgoing>,
    /// The service's metrics; the connection counts in `wasmsocket_connections_open`
    /// until this is dropped.
    metrics: Counted,
}

/// An accepted connection in the service's metrics, until dropped.
struct Counted(Arc<ServiceMetrics>);

impl std::ops::Deref for Counted {
    type Target = ServiceMetrics;

    fn deref(&self) -> &ServiceMetrics {
        &self.0
    }
}

impl Counted {
    fn new(metrics: Arc<ServiceMetrics>) -> Self {
        metrics.accepted();
        Self(metrics)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.ended();
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Runs the connection to its end, then ends its session.
    ///
    /// Not an `async fn`: one would store the connection twice (its argument and its
    /// binding), and this future lives as long as the connection.
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn stores its argument twice (see above)"
    )]
    fn serve(mut self) -> impl Future<Output = ()> {
        async move {
            self.run().await;
            // Boxed, so the connection's future is not also sized for the ending.
            Box::pin(self.finish()).await;
        }
    }

    /// Ends the connection's session.
    async fn finish(self) {
        let Connection {
            mut instance,
            session,
            metrics: counted,
            ..
        } = self;
        instance.end(session).await;
        drop(counted);
        debug!("connection closed");
    }

    async fn run(&mut self) {
        if let Next::Stop = self.deliver(Event::Open).await {
            return;
        }
        // Made once, and polled only when woken: both wait on something every
        // connection shares. Boxed, and only as large as the mode needs: an isolated
        // instance has no other connections to be poisoned by.
        let stopping = self.shutdown.stopping();
        let alarm: Pin<Box<dyn Future<Output = Alarm> + Send>> = match self.instance.poisoned() {
            None => Box::pin(async move {
                stopping.await;
                Alarm::Stopping
            }),
            Some(poisoned) => Box::pin(async move {
                tokio::select! {
                    () = poisoned => Alarm::Poisoned,
                    () = stopping => Alarm::Stopping,
                }
            }),
        };
        let mut alarm = Quiet::new(alarm);
        // The idle timeout's and the session's timers' sleeps: made when needed, kept
        // across turns (not made and registered anew for every message), boxed so
        // that a connection without them carries nothing. The idle sleep fires at the
        // deadline it was set to; activity since only moves `idle_due`, and the sleep
        // is reset to that when it fires early.
        let mut idle = self
            .idle_timeout
            .map(|limit| Box::pin(tokio::time::sleep(limit)));
        let mut idle_due = idle.as_ref().map(|sleep| sleep.deadline());
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        loop {
            if self.unflushed {
                self.unflushed = false;
                if let Err(error) = self.ws.flush().await {
                    debug!(%error, "write failed");
                    return;
                }
            }
            match (self.next_due, &mut timer) {
                (None, _) => timer = None,
                (Some(due), Some(sleep)) => {
                    if sleep.deadline() != due {
                        sleep.as_mut().reset(due);
                    }
                }
                (Some(due), None) => timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
            // Every branch is cancel safe: the engine keeps a partly read frame, and a
            // message taken from the inbox is sent before the next turn.
            let received = tokio::select! {
                received = self.ws.next_frame() => received,
                Some(published) = receive(&mut self.inbox) => {
                    idle_due = self.active();
                    if let Next::Stop = self.send_published(published).await {
                        return;
                    }
                    continue;
                }
                () = wait(&mut idle) => {
                    let sleep = idle.as_mut().expect("only a sleep wakes");
                    if let Some(due) = idle_due
                        && due > sleep.deadline()
                    {
                        // Not idle all along: wait for the rest.
                        sleep.as_mut().reset(due);
                        continue;
                    }
                    idle_due = self.active();
                    if let Next::Stop = self.deliver(Event::IdleTimeout).await {
                        return;
                    }
                    continue;
                }
                () = wait(&mut timer) => {
                    idle_due = self.active();
                    let due = {
                        let mut instance = self.instance.lock().await;
                        let due = instance.due_timers(&self.session, tokio::time::Instant::now());
                        self.next_due = instance.next_timer(&self.session);
                        due
                    };
                    for id in due {
                        if let Next::Stop = self.deliver(Event::Timer(id)).await {
                            return;
                        }
                    }
                    continue;
                }
                alarm = &mut alarm => {
                    if let Alarm::Poisoned = alarm {
                        // Another connection's callback trapped in the shared instance.
                        self.close(1011, "internal error", CLOSE_TIMEOUT).await;
                        return;
                    }
                    if self.shutdown.is_immediate() {
                        debug!("server stopping at once: dropping the connection");
                        return;
                    }
                    debug!("server stopping: closing with 1001");
                    let grace = self.shutdown.grace();
                    self.close(1001, "server shutting down", grace).await;
                    return;
                }
            };
            idle_due = self.active();
            let mut next = match received {
                Ok(frame) => self.on_frame(frame).await,
                Err(error) => self.on_engine_error(error).await,
            };
            // Frames that arrived together are handled together, and their answers
            // leave in one write.
            while let Next::Continue = next {
                next = match self.ws.next_frame().now_or_never() {
                    Some(Ok(frame)) => self.on_frame(frame).await,
                    Some(Err(error)) => self.on_engine_error(error).await,
                    None => break,
                };
            }
            if let Next::Stop = next {
                return;
            }
        }
    }

    /// When the connection, active now, turns idle (`None` without an idle timeout).
    fn active(&self) -> Option<tokio::time::Instant> {
        self.idle_timeout
            .map(|limit| tokio::time::Instant::now() + limit)
    }

    async fn on_frame(&mut self, frame: Frame) -> Next {
        match frame.opcode() {
            OpCode::Text => {
                self.metrics.received(frame.payload().len());
                // The engine has checked the payload is UTF-8.
                let text = std::str::from_utf8(frame.payload()).unwrap_or_default();
                self.deliver(Event::Text(text)).await
            }
            OpCode::Binary => {
                self.metrics.received(frame.payload().len());
                self.deliver(Event::Binary(frame.payload())).await
            }
            // The engine has queued the pong already, unless the session answers.
            OpCode::Ping => self.deliver(Event::Ping(frame.payload())).await,
            OpCode::Pong => self.deliver(Event::Pong(frame.payload())).await,
            OpCode::Close => {
                // The engine has queued the close reply; drain() sends it.
                let _ = self.instance.lock().await.mark_closing(&self.session);
                let (code, reason) = engine::close_of(&frame);
                debug!(code, %reason, "peer closed");
                self.metrics.closed(code, true);
                let _ = self.deliver_final(Event::Close(code, &reason)).await;
                self.drain().await;
                Next::Stop
            }
            OpCode::Continuation => Next::Continue,
        }
    }

    async fn on_engine_error(&mut self, error: engine::WebSocketError) -> Next {
        let code = engine::close_code_of(&error);
        let _ = self.instance.lock().await.mark_closing(&self.session);
        self.metrics.closed(code, code == 1006);
        if code == 1006 {
            debug!("connection dropped without a close frame");
            let _ = self.deliver_final(Event::Close(1006, "")).await;
        } else {
            // The engine has queued a close frame with `code`; send it, then tell the
            // session.
            debug!(code, %error, "closing on a protocol error");
            self.drain().await;
            let message = error.to_string();
            let _ = self.deliver_final(Event::Error(&message)).await;
        }
        Next::Stop
    }

    /// Delivers an event when the session implements its callback, then sends what the
    /// callback queued.
    async fn deliver(&mut self, event: Event<'_>) -> Next {
        if !self.callbacks.contains(event.callback()) {
            return Next::Continue;
        }
        if self.instance.is_poisoned() {
            self.close(1011, "internal error", CLOSE_TIMEOUT).await;
            return Next::Stop;
        }
        match self.call(event).await {
            Some(Ok(())) => self.queue_outbox().await,
            Some(Err(error)) => {
                let (code, reason) = close_for(&error);
                if let CallbackError::UnsupportedData(why) = &error {
                    // Ballerina logs binding failures at the listener, as errors.
                    tracing::error!(code, "session could not accept the data: {why}");
                } else {
                    debug!(code, reason = %reason, "session ended the connection");
                }
                if let Next::Stop = self.queue_outbox().await {
                    return Next::Stop;
                }
                self.close(code, &reason, CLOSE_TIMEOUT).await;
                Next::Stop
            }
            None => {
                self.close(1011, "internal error", CLOSE_TIMEOUT).await;
                Next::Stop
            }
        }
    }

    /// Calls the session. A trap is logged and poisons the instance: `None`.
    async fn call(&mut self, event: Event<'_>) -> Option<Result<(), CallbackError>> {
        let mut instance = self.instance.lock().await;
        let started = std::time::Instant::now();
        let result = instance.dispatch(&self.session, event);
        self.metrics.callback_took(started.elapsed());
        // Outbox, timers and subscriptions change only in callbacks: read them while
        // the instance is held anyway.
        let result = result.and_then(|result| {
            Ok((
                result,
                instance.after_callback(&self.session, &mut self.outbox)?,
            ))
        });
        drop(instance);
        match result {
            Ok((result, after)) => {
                self.next_due = after.next_due;
                if let Some(inbox) = after.new_inbox {
                    self.inbox = Some(inbox);
                }
                Some(result)
            }
            Err(trap) => {
                self.metrics.trapped(crate::runtime::is_deadline(&trap));
                warn!("{}; closing with 1011", describe_trap(&trap));
                self.instance.poison();
                None
            }
        }
    }

    /// Delivers a last event of a connection that is already closed: nothing it
    /// queues can be sent.
    async fn deliver_final(&mut self, event: Event<'_>) -> Next {
        if self.instance.is_poisoned() || !self.callbacks.contains(event.callback()) {
            return Next::Stop;
        }
        let _ = self.call(event).await;
        Next::Stop
    }

    /// Queues the frames the last callback asked for, in order. The run loop flushes
    /// them once the frames that had already arrived are handled: one write for a
    /// burst.
    async fn queue_outbox(&mut self) -> Next {
        if self.outbox.is_empty() {
            return Next::Continue;
        }
        // Emptied here and handed back for the next callback's frames.
        let mut outbox = std::mem::take(&mut self.outbox);
        for outgoing in outbox.drain(..) {
            let frame = match outgoing {
                Outgoing::Text(text) => {
                    self.metrics.sent(text.len());
                    Frame::text(Bytes::from(text))
                }
                Outgoing::Binary(data) => {
                    self.metrics.sent(data.len());
                    Frame::binary(data)
                }
                Outgoing::Ping(data) => Frame::ping(data),
                Outgoing::Pong(data) => Frame::pong(data),
                Outgoing::Close {
                    code,
                    reason,
                    timeout,
                } => {
                    if let Err(error) = self.ws.flush().await {
                        debug!(%error, "write failed");
                        return Next::Stop;
                    }
                    self.close(code, &reason, timeout).await;
                    return Next::Stop;
                }
            };
            if let Err(error) = self.ws.feed(frame).await {
                debug!(%error, "write failed");
                return Next::Stop;
            }
            self.unflushed = true;
        }
        self.outbox = outbox;
        Next::Continue
    }

    /// Writes a message a topic delivered, with any others already waiting.
    async fn send_published(&mut self, first: Published) -> Next {
        let mut next = Some(first);
        while let Some(published) = next {
            let frame = match published {
                Published::Text(text) => Frame::text(text),
                Published::Binary(data) => Frame::binary(data),
            };
            self.metrics.sent(frame.payload().len());
            if let Err(error) = self.ws.feed(frame).await {
                debug!(%error, "write failed");
                return Next::Stop;
            }
            next = self.inbox.as_mut().and_then(|inbox| inbox.try_recv().ok());
        }
        if let Err(error) = self.ws.flush().await {
            debug!(%error, "write failed");
            return Next::Stop;
        }
        Next::Continue
    }

    /// Sends a close frame, waits up to `timeout` for the peer's, and shuts the socket.
    /// The session's `on-close` runs if the peer's close frame arrives.
    ///
    /// Boxed: it runs once per connection, and inline it would add its size (a
    /// timeout, a send, a last callback) to every future that can close, for the
    /// connection's whole life.
    fn close<'a>(
        &'a mut self,
        code: u16,
        reason: &'a str,
        timeout: Duration,
    ) -> Pin<Box<impl Future<Output = ()> + 'a>> {
        Box::pin(self.send_close(code, reason, timeout))
    }

    /// [`Connection::close`], unboxed.
    async fn send_close(&mut self, code: u16, reason: &str, timeout: Duration) {
        self.metrics.closed(code, false);
        let _ = self.instance.lock().await.mark_closing(&self.session);
        let frame = Frame::close(CloseCode::from(code), truncate_reason(reason));
        if self.ws.send(frame).await.is_err() {
            return;
        }
        let wait = async {
            loop {
                match self.ws.next_frame().await {
                    Ok(frame) if frame.opcode() == OpCode::Close => {
                        return Some(engine::close_of(&frame));
                    }
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        };
        // A zero timeout means "wait as long as it takes", as in Ballerina's -1.
        let reply = if timeout.is_zero() {
            wait.await
        } else {
            tokio::time::timeout(timeout, wait).await.ok().flatten()
        };
        if let Some((code, reason)) = reply {
            let _ = self.deliver_final(Event::Close(code, &reason)).await;
        }
        let _ = SinkExt::close(&mut self.ws).await;
    }

    /// Sends whatever the engine has queued (a close reply) and shuts the socket.
    async fn drain(&mut self) {
        // Reading a closed engine flushes its queued control frames first.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.next_frame()).await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, SinkExt::close(&mut self.ws)).await;
    }
}

/// The next message for the connection's topics; never, before it subscribes.
async fn receive(inbox: &mut Option<topics::Inbox>) -> Option<Published> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// The close frame a session error asks for.
fn close_for(error: &CallbackError) -> (u16, String) {
    match error {
        CallbackError::UnsupportedData(reason) => (1003, reason.clone()),
        CallbackError::PolicyViolation(reason) => (1008, reason.clone()),
        CallbackError::Internal(reason) => (1011, reason.clone()),
        CallbackError::Close(frame) if is_sendable_close_code(frame.code) => {
            (frame.code, frame.reason.clone())
        }
        CallbackError::Close(frame) => {
            warn!(
                code = frame.code,
                "session asked for an invalid close code; using 1011"
            );
            (1011, frame.reason.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::CloseFrame;

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn guest_headers_are_checked() {
        assert!(is_allowed_header(&header("x-trace", "abc 123")));
        assert!(is_allowed_header(&header("set-cookie", "a=b; Path=/")));
        for (name, value) in [
            ("Connection", "close"),
            ("sec-websocket-accept", "forged"),
            ("server", "other"),
            ("bad name", "x"),
            ("", "x"),
            ("x-split", "a\r\nx-injected: yes"),
            ("x-nul", "a\0b"),
        ] {
            assert!(
                !is_allowed_header(&header(name, value)),
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn callback_errors_map_to_close_codes() {
        let cases = [
            (CallbackError::UnsupportedData("t".into()), 1003),
            (CallbackError::PolicyViolation("t".into()), 1008),
            (CallbackError::Internal("t".into()), 1011),
            (
                CallbackError::Close(CloseFrame {
                    code: 4002,
                    reason: "t".into(),
                }),
                4002,
            ),
            (
                CallbackError::Close(CloseFrame {
                    code: 1006,
                    reason: "t".into(),
                }),
                1011,
            ),
            (
                CallbackError::Close(CloseFrame {
                    code: 5000,
                    reason: "t".into(),
                }),
                1011,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(close_for(&error), (code, "t".to_owned()), "{error:?}");
        }
    }
}
