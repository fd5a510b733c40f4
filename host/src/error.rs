//! The host library's error type.

use std::path::PathBuf;

/// The result type of the host library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop the host from starting or serving.
///
/// Failures of a single connection (a bad request, a trapping guest) are not errors of
/// the host: they end that connection with the fitting HTTP status or close code and are
/// logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file could not be read. Check the path and its permissions.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },

    /// The configuration is not valid. The message names the offending field; fix it.
    #[error("invalid config {path}: {message}", path = path.display())]
    ConfigInvalid {
        /// The file, empty when parsed from text.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },

    /// A component could not be loaded: unreadable, not a component, or not one that
    /// implements the `wasmsocket:service/service` world. The chain says which.
    #[error("cannot load component {path} for service {service}: {source:#}")]
    Component {
        /// The service path the component serves.
        service: String,
        /// The component file.
        path: PathBuf,
        /// What went wrong.
        source: wasmtime::Error,
    },

    /// The TLS settings are unusable: a file is missing or not PEM, the key does not
    /// fit the certificate, or no cipher or version is left. The message names the
    /// field and the file.
    #[error("invalid TLS configuration: {0}")]
    Tls(String),

    /// The WebAssembly engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0:#}")]
    Engine(wasmtime::Error),

    /// The listening socket could not be bound. Is the port in use?
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },

    /// The host could not register for SIGINT/SIGTERM, so it could not stop
    /// gracefully. Rare; check the process's signal limits.
    #[error("cannot listen for stop signals: {0}")]
    Signal(std::io::Error),

    /// Accepting connections failed in a way the host cannot recover from.
    #[error("listener failed: {0}")]
    Accept(std::io::Error),
}
