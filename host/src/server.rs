//! The listener: binds the socket, loads every service's component, accepts
//! connections and hands each to a task of its own.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{Instrument, info, warn};

use crate::config::{Config, ListenerConfig, ServiceConfig, StaticFiles};
use crate::runtime::{Runtime, ServiceComponent};
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
    shared: Arc<Shared>,
}

/// What every connection task reads.
pub(crate) struct Shared {
    pub(crate) listener: ListenerConfig,
    pub(crate) services: HashMap<String, Service>,
    pub(crate) static_files: Option<StaticFiles>,
    next_id: AtomicU64,
    // Keeps the engine's deadline ticker running while the server lives.
    _runtime: Runtime,
}

/// A service: its configuration and its loaded component.
pub(crate) struct Service {
    pub(crate) config: ServiceConfig,
    pub(crate) component: ServiceComponent,
}

impl Shared {
    /// A host-unique connection id.
    pub(crate) fn next_connection_id(&self) -> String {
        format!("{:x}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

impl Server {
    /// Loads every component (compiling it once) and binds the listening socket.
    pub async fn bind(config: Config) -> Result<Self> {
        let runtime = Runtime::new()?;
        let mut services = HashMap::with_capacity(config.services.len());
        for service in config.services {
            let component = runtime
                .load(&service.path, &service.component, &service.limits)
                .await?;
            info!(path = %service.path, component = %service.component.display(), "service loaded");
            services.insert(
                service.path.clone(),
                Service {
                    config: service,
                    component,
                },
            );
        }
        let address = config.listener.address();
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| Error::Bind { address, source })?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                listener: config.listener,
                services,
                static_files: config.static_files,
                next_id: AtomicU64::new(1),
                _runtime: runtime,
            }),
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until the process ends.
    pub async fn serve(self) -> Result<()> {
        self.serve_until(std::future::pending()).await
    }

    /// Serves until `shutdown` completes, then stops accepting connections.
    ///
    /// Connections already open are abandoned when the runtime shuts down.
    pub async fn serve_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = &mut shutdown => {
                    info!("shutting down");
                    return Ok(());
                }
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
            tokio::spawn(
                async move { connection::serve(&shared, stream, remote, false).await }
                    .instrument(span),
            );
        }
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(error.raw_os_error(), Some(23 | 24 | 105 | 12)) // ENFILE EMFILE ENOBUFS ENOMEM
}
