//! The listener: binds the socket, loads every service's component, accepts
//! connections and hands each to a task of its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{Instrument, info, warn};

use crate::auth::Auth;
use crate::config::{Config, ListenerConfig, ServiceConfig, StaticFiles};
use crate::metrics::{Metrics, ServiceMetrics};
use crate::runtime::{Runtime, ServiceComponent};
use crate::topics::Topics;
use crate::{Error, Result, connection};

/// A bound WebSocket host, ready to serve.
///
/// ```no_run
/// # async fn run() -> wasmsocket_host::Result<()> {
/// let config = wasmsocket_host::Config::load("wasmsocket.toml".as_ref())?;
/// let server = wasmsocket_host::Server::bind(config).await?;
/// println!("listening on {}", server.local_addr());
/// server.serve().await
/// # }
/// ```
pub struct Server {
    listener: TcpListener,
    /// The operators' endpoint (metrics, health), if configured.
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

/// What every connection task reads.
pub(crate) struct Shared {
    pub(crate) listener: ListenerConfig,
    tls: Option<(tokio_rustls::TlsAcceptor, Duration)>,
    pub(crate) services: std::sync::RwLock<HashMap<String, Arc<Service>>>,
    pub(crate) static_files: Option<StaticFiles>,
    pub(crate) shutdown: Arc<Shutdown>,
    next_id: AtomicU64,
    runtime: Runtime,
    /// The guests' topics (the runtime hands them to the instances).
    topics: Arc<Topics>,
    pub(crate) metrics: Arc<Metrics>,
}

/// A service: its configuration, its loaded component, its authenticators and its
/// count of open connections.
pub(crate) struct Service {
    pub(crate) config: ServiceConfig,
    /// The component new connections get; a reload swaps it, and connections keep
    /// the one they started with.
    component: std::sync::RwLock<Arc<ServiceComponent>>,
    /// The component file's modification time when it was last loaded (or tried).
    loaded: std::sync::Mutex<Option<std::time::SystemTime>>,
    pub(crate) auth: Arc<Auth>,
    open: Arc<AtomicUsize>,
    pub(crate) metrics: Arc<ServiceMetrics>,
}

/// Kernel memory mappings an isolated connection takes: its linear memory and the
/// reservation behind it (measured: 2, as neighbouring ones merge).
const MAPPINGS_PER_INSTANCE: usize = 2;

/// Warns when the isolated services' `max_connections` would need more memory
/// mappings than the kernel allows a process (`vm.max_map_count`): past that, upgrades
/// get 503.
fn warn_if_mappings_run_out<'a>(services: impl Iterator<Item = &'a ServiceConfig>) {
    let Some(allowed) = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
    else {
        return;
    };
    let isolated: usize = services
        .filter(|service| service.mode == crate::config::InstanceMode::Isolated)
        .map(|service| service.limits.max_connections)
        .sum();
    let needed = isolated.saturating_mul(MAPPINGS_PER_INSTANCE);
    if needed > allowed {
        warn!(
            isolated_connections = isolated,
            vm_max_map_count = allowed,
            "isolated services allow more connections than the kernel's vm.max_map_count \
             can map (about {MAPPINGS_PER_INSTANCE} per connection): past about {} of them \
             upgrades get 503; raise vm.max_map_count (sysctl) or use mode = \"shared\"",
            allowed / MAPPINGS_PER_INSTANCE
        );
    }
}

/// Descriptors the host holds besides its connections' sockets: listeners, the admin
/// endpoint, the epoll instance, component and static files, outbound connections.
const RESERVED_DESCRIPTORS: u64 = 64;

/// Warns when the services' `max_connections` add up to more sockets than the
/// open-file limit allows: past it, new connections wait in the listen backlog until
/// others close.
fn warn_if_descriptors_run_out<'a>(services: impl Iterator<Item = &'a ServiceConfig>) {
    // `None` is unlimited.
    let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current else {
        return;
    };
    let connections: u64 = services
        .map(|service| service.limits.max_connections as u64)
        .sum();
    if connections.saturating_add(RESERVED_DESCRIPTORS) > limit {
        warn!(
            connections,
            open_file_limit = limit,
            "the services allow more connections than the open-file limit: past about {} \
             of them, new connections wait until others close; raise the hard limit \
             (`ulimit -Hn`, systemd's LimitNOFILE=)",
            limit.saturating_sub(RESERVED_DESCRIPTORS)
        );
    }
}

/// How often component files are checked for changes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The component file's modification time, if it can be read.
fn modified(config: &ServiceConfig) -> Option<std::time::SystemTime> {
    std::fs::metadata(&config.component)
        .and_then(|meta| meta.modified())
        .ok()
}

/// Holds one of a service's connection slots until dropped.
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Service {
    async fn load(
        runtime: &Runtime,
        metrics: &Metrics,
        config: ServiceConfig,
        field: &str,
    ) -> Result<Self> {
        let auth = Auth::new(
            &config.auth,
            config.token_query_param.clone(),
            config.token_subprotocol_prefix.clone(),
            field,
        )
        .map_err(|message| Error::ConfigInvalid {
            path: Default::default(),
            message,
        })?;
        let modified = modified(&config);
        let metrics = metrics.service(&config.path);
        let component = Self::compile(runtime, &config, &metrics)?;
        Ok(Self {
            config,
            component: std::sync::RwLock::new(Arc::new(component)),
            loaded: std::sync::Mutex::new(modified),
            auth: Arc::new(auth),
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        })
    }

    fn compile(
        runtime: &Runtime,
        config: &ServiceConfig,
        metrics: &ServiceMetrics,
    ) -> Result<ServiceComponent> {
        runtime.load(
            &config.path,
            &config.component,
            &config.limits,
            &config.grants,
            (config.mode == crate::config::InstanceMode::Shared)
                .then(|| config.shared_instance_count()),
            metrics.memory.clone(),
        )
    }

    /// The component a new connection runs.
    pub(crate) fn component(&self) -> Arc<ServiceComponent> {
        self.component
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Compiles the component file again and, if that works, serves new connections
    /// with it; open connections finish on the old one. A failure leaves the old one
    /// serving.
    async fn reload(&self, runtime: &Runtime) -> Result<()> {
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = modified(&self.config);
        let component = Self::compile(runtime, &self.config, &self.metrics)?;
        *self.component.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(component);
        Ok(())
    }

    /// Whether the component file changed since it was last loaded (or tried).
    fn changed_on_disk(&self) -> bool {
        let now = modified(&self.config);
        now.is_some() && now != *self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a connection slot, unless the service is at `max_connections`.
    pub(crate) fn try_open(&self) -> Option<Slot> {
        let limit = self.config.limits.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .ok()
            .map(|_| Slot(self.open.clone()))
    }
}

impl Shared {
    /// A host-unique connection number (its id is the number in hex).
    pub(crate) fn next_connection_number(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

impl Server {
    /// Loads every component (compiling it once) and binds the listening socket.
    pub async fn bind(config: Config) -> Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let topics = Topics::new(&config.topics, metrics.relay.clone()).map_err(|message| {
            Error::ConfigInvalid {
                path: Default::default(),
                message,
            }
        })?;
        if topics.has_relay() {
            metrics.enable_relay();
        }
        let topics = Arc::new(topics);
        let runtime = Runtime::new(topics.clone(), config.profiler)?;
        let mut services = HashMap::with_capacity(config.services.len());
        for (index, service) in config.services.into_iter().enumerate() {
            let field = format!("service[{index}]");
            let service = Service::load(&runtime, &metrics, service, &field).await?;
            let config = &service.config;
            info!(path = %config.path, component = %config.component.display(), "service loaded");
            services.insert(config.path.clone(), Arc::new(service));
        }
        warn_if_mappings_run_out(services.values().map(|service| &service.config));
        warn_if_descriptors_run_out(services.values().map(|service| &service.config));
        let tls = match &config.listener.secure_socket {
            Some(secure) => Some((
                crate::tls::acceptor(secure).map_err(Error::Tls)?,
                Duration::from_secs_f64(secure.handshake_timeout),
            )),
            None => None,
        };
        let address = config.listener.address();
        let grace = config.listener.grace_period();
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        let admin = match &config.admin {
            Some(admin) => {
                let address = SocketAddr::new(admin.host, admin.port);
                Some(
                    TcpListener::bind(address)
                        .await
                        .map_err(|source| Error::Bind { address, source })?,
                )
            }
            None => None,
        };
        Ok(Self {
            listener,
            admin,
            shared: Arc::new(Shared {
                listener: config.listener,
                tls,
                services: std::sync::RwLock::new(services),
                static_files: config.static_files,
                shutdown: Arc::new(Shutdown::new(grace)),
                next_id: AtomicU64::new(1),
                runtime,
                topics,
                metrics,
            }),
        })
    }

    /// A handle to attach and detach services and to stop the server while it serves.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The admin endpoint's address, if one is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.local_addr().ok())
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until a [`ServerHandle`] stops it.
    pub async fn serve(self) -> Result<()> {
        self.serve_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then stops gracefully: stops accepting,
    /// closes every connection with 1001 (Going Away) and waits up to the listener's
    /// `grace_period` for the close handshakes. Connections still open then are
    /// dropped.
    pub async fn serve_until(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Component files are watched (polled) for changes while serving.
        let admin = self.admin.take().map(|admin| {
            let metrics = self.shared.metrics.clone();
            AbortOnDrop(tokio::spawn(crate::admin::serve(admin, metrics)))
        });
        // With Redis: the connections that relay topic messages between hosts. They
        // outlive the connections' close handshakes, so goodbyes still get out.
        let relay = self
            .shared
            .topics
            .has_relay()
            .then(|| AbortOnDrop(tokio::spawn(self.shared.topics.clone().run_relay())));
        let watcher = self.shared.listener.watch_components.then(|| {
            let handle = self.handle();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(WATCH_INTERVAL).await;
                    handle.reload_changed().await;
                }
            }))
        });
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => break,
                () = self.shared.shutdown.requested() => break,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_transient(&error) => {
                    // Out of descriptors or a connection reset before accept: keep
                    // serving, after a pause that lets descriptors free up.
                    warn!(%error, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(Error::Accept(error)),
            };
            let _ = stream.set_nodelay(true);
            let shared = self.shared.clone();
            // `id` and `service` are recorded once the request is routed.
            let span = tracing::info_span!(
                "conn",
                %remote,
                id = tracing::field::Empty,
                service = tracing::field::Empty
            );
            let guard = self.shared.shutdown.track();
            // Every connection's task lives as long as the connection, so it holds
            // little: `connection::serve` boxes what it needs, and a TLS stream is
            // handed over in a scope that ends before the `.await` (a value in scope
            // there keeps its space in the task, moved or not).
            let task = async move {
                match &shared.tls {
                    None => connection::serve(&shared, stream, remote, false).await,
                    Some((acceptor, limit)) => {
                        let accept = Box::pin(acceptor.accept(stream));
                        let serving = match tokio::time::timeout(*limit, accept).await {
                            Ok(Ok(tls)) => Some(connection::serve(&shared, tls, remote, true)),
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                None
                            }
                        };
                        if let Some(serving) = serving {
                            serving.await;
                        }
                    }
                }
                drop(guard);
            }
            .instrument(span);
            tokio::spawn(task);
        }
        drop(watcher);
        drop(admin);
        drop(self.listener);
        let open = self.shared.shutdown.active();
        info!(open, "stopping: closing connections with 1001");
        self.shared.shutdown.begin();
        let grace = if self.shared.shutdown.is_immediate() {
            Duration::ZERO
        } else {
            self.shared.shutdown.grace()
        };
        if tokio::time::timeout(
            grace + Duration::from_millis(200),
            self.shared.shutdown.drained(),
        )
        .await
        .is_err()
        {
            warn!(
                open = self.shared.shutdown.active(),
                "grace period over; dropping the connections still open"
            );
        }
        drop(relay);
        info!("stopped");
        Ok(())
    }
}

/// Manages a serving [`Server`]: Ballerina's `attach`, `detach`, `gracefulStop` and
/// `immediateStop`. Cheap to clone.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Loads `service`'s component and serves it at its path from now on.
    ///
    /// Fails if the configuration is invalid, the component does not load, or the
    /// path is taken.
    pub async fn attach(&self, service: ServiceConfig) -> Result<()> {
        let taken = |path: &str| Error::ConfigInvalid {
            path: Default::default(),
            message: format!("service.path: {path:?} is already attached"),
        };
        service
            .validate("service")
            .map_err(|message| Error::ConfigInvalid {
                path: Default::default(),
                message,
            })?;
        if self.is_attached(&service.path) {
            return Err(taken(&service.path));
        }
        let service = Service::load(
            &self.shared.runtime,
            &self.shared.metrics,
            service,
            "service",
        )
        .await?;
        let mut services = self
            .shared
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let path = service.config.path.clone();
        if services.contains_key(&path) {
            return Err(taken(&path));
        }
        info!(%path, "service attached");
        services.insert(path, Arc::new(service));
        Ok(())
    }

    /// Stops serving `path`: new upgrades there get 404; connections already open
    /// keep their session until they end. Returns whether a service was attached.
    pub fn detach(&self, path: &str) -> bool {
        let removed = self
            .shared
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path)
            .is_some();
        if removed {
            info!(path, "service detached");
        }
        removed
    }

    /// Compiles every service's component file again; each that compiles serves new
    /// connections from now on, while open connections finish on the old one. One
    /// that fails keeps the old one serving; the error says why.
    pub async fn reload(&self) -> Vec<(String, Result<()>)> {
        self.reload_where(|_| true).await
    }

    /// Reloads the services whose component file changed since it was loaded.
    async fn reload_changed(&self) {
        self.reload_where(Service::changed_on_disk).await;
    }

    async fn reload_where(&self, pick: impl Fn(&Service) -> bool) -> Vec<(String, Result<()>)> {
        let services: Vec<Arc<Service>> = self
            .shared
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|service| pick(service))
            .cloned()
            .collect();
        let mut outcomes = Vec::with_capacity(services.len());
        for service in services {
            let outcome = service.reload(&self.shared.runtime).await;
            log_reload(&service.config.path, &outcome);
            outcomes.push((service.config.path.clone(), outcome));
        }
        outcomes
    }

    /// Whether a service is attached at `path`.
    pub fn is_attached(&self, path: &str) -> bool {
        self.shared
            .services
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(path)
    }

    /// Stops gracefully, as a completed shutdown future does: `serve_until` stops
    /// accepting, closes every connection with 1001 and waits up to the grace period.
    pub fn graceful_stop(&self) {
        self.shared.shutdown.request(false);
    }

    /// Stops at once: connections are dropped without a close handshake.
    pub fn immediate_stop(&self) {
        self.shared.shutdown.request(true);
    }
}

fn log_reload(path: &str, outcome: &Result<()>) {
    match outcome {
        Ok(()) => info!(path, "component reloaded: new connections run the new one"),
        Err(error) => warn!(path, %error, "component reload failed; the old one keeps serving"),
    }
}

/// Graceful stop: a flag every connection watches, and a count of open connections.
pub(crate) struct Shutdown {
    stopping: tokio::sync::watch::Sender<bool>,
    requested: tokio::sync::Notify,
    immediate: std::sync::atomic::AtomicBool,
    active: Arc<AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
    grace: Duration,
}

/// What one connection holds to learn that the server is stopping.
pub(crate) struct ShutdownSignal {
    stopping: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
    shutdown: Arc<Shutdown>,
}

/// Counts a connection as open until dropped.
pub(crate) struct ConnectionGuard {
    active: Arc<AtomicUsize>,
    drained: Arc<tokio::sync::Notify>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

impl Shutdown {
    fn new(grace: Duration) -> Self {
        Self {
            stopping: tokio::sync::watch::Sender::new(false),
            requested: tokio::sync::Notify::new(),
            immediate: std::sync::atomic::AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
            drained: Arc::new(tokio::sync::Notify::new()),
            grace,
        }
    }

    fn track(&self) -> ConnectionGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnectionGuard {
            active: self.active.clone(),
            drained: self.drained.clone(),
        }
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn begin(&self) {
        self.stopping.send_replace(true);
    }

    fn request(&self, immediate: bool) {
        if immediate {
            self.immediate.store(true, Ordering::Release);
            // Connections see the flag and drop at once.
            self.begin();
        }
        // `notify_one` keeps a permit if `serve_until` is not waiting yet.
        self.requested.notify_one();
    }

    async fn requested(&self) {
        self.requested.notified().await;
    }

    pub(crate) fn is_immediate(&self) -> bool {
        self.immediate.load(Ordering::Acquire)
    }

    fn grace(&self) -> Duration {
        self.grace
    }

    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn signal(self: &Arc<Self>) -> ShutdownSignal {
        ShutdownSignal {
            stopping: self.stopping.subscribe(),
            grace: self.grace,
            shutdown: self.clone(),
        }
    }
}

impl ShutdownSignal {
    /// Completes when the server starts stopping. Owns what it waits on, so one
    /// future can be polled for a connection's whole life.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing.
    pub(crate) fn stopping(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopping = self.stopping.clone();
        async move {
            if stopping.wait_for(|stopping| *stopping).await.is_err() {
                // The server is gone; there is nothing to wait for.
                std::future::pending::<()>().await;
            }
        }
    }

    /// How long a closing connection waits for the peer's close frame (never zero,
    /// which would mean "forever").
    pub(crate) fn grace(&self) -> Duration {
        self.grace.max(Duration::from_millis(1))
    }

    /// Whether the stop is immediate: drop the connection, no close handshake.
    pub(crate) fn is_immediate(&self) -> bool {
        self.shutdown.is_immediate()
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE EMFILE ENOBUFS ENOMEM
}
