//! wasmsocket: a WebSocket host whose service handlers run as sandboxed WebAssembly
//! components.
//!
//! The host terminates TCP, the HTTP/1.1 upgrade and the WebSocket protocol; each
//! connection's callbacks run in a component instance of its own (see the
//! `wasmsocket:service` WIT package in `wit/`). The behaviour follows the Ballerina
//! WebSocket specification: listener, upgrade service, service callbacks, caller.
//!
//! Most users run the `wasmsocket` binary with a `wasmsocket.toml`; this library is
//! the same host for embedding and tests: [`Config`] and [`Server`].

mod admin;
mod auth;
mod config;
mod connection;
mod engine;
mod error;
mod files;
mod http;
mod introspection;
mod jwks;
mod ldap;
mod mappings;
mod metrics;
mod outbound;
mod quiet;
mod runtime;
mod server;
mod tls;
mod topics;
mod wasi;

pub use config::{
    AdminConfig, AuthEntry, CertKey, Config, DirGrant, Grants, Http1Settings, InstanceMode,
    JwksConfig, JwtSignature, JwtValidatorConfig, KeepAlive, LdapUserStoreConfig, ListenerConfig,
    ListenerSecureSocket, LogConfig, LogFormat, MutualSsl, OAuth2IntrospectionConfig, Profiler,
    RequestLimits, SandboxLimits, ServiceConfig, StaticFiles, TlsProtocol, TopicsBackend,
    TopicsConfig, VerifyClient,
};
pub use error::{Error, Result};
pub use server::{Server, ServerHandle};
