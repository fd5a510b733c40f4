//! The host configuration: `wasmsocket.toml`.
//!
//! Keys are the Ballerina specification's field names in snake case
//! (`idleTimeout` → `idle_timeout`), so a Ballerina user finds them where they expect.
//! Durations are decimal seconds, as in the specification. Paths are relative to the
//! configuration file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Where and how the host listens (Ballerina `ListenerConfiguration`).
    pub listener: ListenerConfig,
    /// The services, one per path (Ballerina upgrade services).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// A directory of static files (the browser front end) served over plain HTTP.
    #[serde(default)]
    pub static_files: Option<StaticFiles>,
    /// The operators' endpoint: Prometheus metrics at `/metrics`, liveness at
    /// `/healthz`. Off unless configured.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// How the host logs.
    #[serde(default)]
    pub log: LogConfig,
    /// Where the topics guests subscribe and publish to live: in this process (the
    /// default) or in Redis, shared by several hosts.
    #[serde(default)]
    pub topics: TopicsConfig,
    /// A profiler for the guests' compiled code. Not a key of the file: the
    /// `wasmsocket` binary sets it from `WASMSOCKET_PROFILE`.
    #[serde(skip)]
    pub profiler: Profiler,
}

/// What the host tells a profiler about the guests' compiled code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profiler {
    /// Nothing (the default).
    #[default]
    None,
    /// `/tmp/perf-PID.map`, from which `perf report` names the guests' functions
    /// instead of showing `[JIT]` addresses. Appended to, never truncated or removed.
    PerfMap,
}

impl std::str::FromStr for Profiler {
    type Err = String;

    /// `"none"` (or empty) and `"perfmap"`, as `WASMSOCKET_PROFILE` takes them.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "" | "none" => Ok(Profiler::None),
            "perfmap" => Ok(Profiler::PerfMap),
            other => Err(format!("unknown profiler `{other}` (`perfmap` or `none`)")),
        }
    }
}

/// `[topics]`: the backend behind `subscribe`, `unsubscribe` and `publish`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TopicsConfig {
    /// `"memory"` (the default: connections of this host only) or `"redis"` (every
    /// host sharing the Redis server at `url`).
    #[serde(default)]
    pub backend: TopicsBackend,
    /// The Redis server, `redis://[[user]:password@]host[:port][/db]` (port 6379 by
    /// default; the database number is accepted and does not matter, as Redis
    /// channels are shared by all databases). Required with `backend = "redis"`.
    /// TLS (`rediss://`) is not supported.
    #[serde(default)]
    pub url: Option<String>,
    /// Put before a topic's name to make its Redis channel, so that several
    /// deployments can share one Redis. Default `"wasmsocket:"`.
    #[serde(default)]
    pub channel_prefix: Option<String>,
}

/// Where topics live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TopicsBackend {
    /// In this process: a message reaches the subscribers connected to this host.
    #[default]
    Memory,
    /// Redis pub/sub: a message reaches the subscribers of every host that uses the
    /// same Redis server (and channel prefix).
    Redis,
}

/// The channel prefix when `topics.channel_prefix` is not set.
pub(crate) const DEFAULT_CHANNEL_PREFIX: &str = "wasmsocket:";

impl TopicsConfig {
    /// The Redis channel prefix in force.
    pub fn channel_prefix(&self) -> &str {
        self.channel_prefix
            .as_deref()
            .unwrap_or(DEFAULT_CHANNEL_PREFIX)
    }

    /// Checks the section; messages name the field (`topics.url`).
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        match self.backend {
            TopicsBackend::Memory => {
                for (name, set) in [
                    ("url", self.url.is_some()),
                    ("channel_prefix", self.channel_prefix.is_some()),
                ] {
                    if set {
                        return Err(format!("topics.{name}: only with backend = \"redis\""));
                    }
                }
            }
            TopicsBackend::Redis => {
                let Some(url) = &self.url else {
                    return Err("topics.url: required with backend = \"redis\"".into());
                };
                crate::topics::RedisUrl::parse(url, "topics.url")?;
                if self.channel_prefix().len() > 256 {
                    return Err("topics.channel_prefix: at most 256 bytes".into());
                }
            }
        }
        Ok(())
    }
}

/// The admin endpoint's address. Keep it private (loopback or an internal network):
/// it has no authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// The interface. Default `127.0.0.1`.
    #[serde(default = "loopback")]
    pub host: IpAddr,
    /// The port (0 picks a free one; the host prints it).
    pub port: u16,
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Logging: `RUST_LOG` picks the levels (default `info`); this picks the format.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LogConfig {
    /// `"text"` (default) or `"json"` (one object per line, with the connection's
    /// span: id, service path and remote address).
    #[serde(default)]
    pub format: LogFormat,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// JSON objects, one per line.
    Json,
}

/// Static files served for paths no service claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StaticFiles {
    /// The directory, relative to the config file.
    pub dir: PathBuf,
    /// The URL prefix the directory is served under. Default `/`.
    #[serde(default = "default_static_path")]
    pub path: String,
}

fn default_static_path() -> String {
    "/".into()
}

/// Ballerina's `ListenerConfiguration`, plus the port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// The address to bind. Default `0.0.0.0`, as in the specification.
    #[serde(default = "default_host")]
    pub host: IpAddr,
    /// The port to bind; 0 picks a free one (the host logs which).
    pub port: u16,
    /// Seconds allowed to receive the upgrade request; 0 disables the limit. Default 120.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// The value of the `Server` response header; none is sent when unset.
    #[serde(default)]
    pub server: Option<String>,
    /// Whether permessage-deflate (RFC 7692) is offered to clients. Default true.
    #[serde(default = "yes", alias = "websocket_compression_enabled")]
    pub web_socket_compression_enabled: bool,
    /// Whether the host's compressor keeps its context between messages (better
    /// compression, ~300 KiB of zlib state per connection). `false` answers every
    /// offer with `server_no_context_takeover`: the host then borrows a compressor
    /// per message from a shared pool. Default true.
    #[serde(default = "yes")]
    pub compression_context_takeover: bool,
    /// Size limits on the upgrade request.
    #[serde(default)]
    pub request_limits: RequestLimits,
    /// TLS (`wss`): Ballerina's `ListenerSecureSocket`. Plain `ws` when absent.
    #[serde(default)]
    pub secure_socket: Option<ListenerSecureSocket>,
    /// HTTP/1.x settings for the requests before an upgrade (Ballerina's
    /// `ListenerHttp1Settings`).
    #[serde(default)]
    pub http1_settings: Http1Settings,
    /// Seconds a graceful stop (SIGTERM, SIGINT) waits for connections to finish
    /// their close handshakes after sending them 1001 Going Away. Default 10.
    #[serde(default = "default_grace_period")]
    pub grace_period: f64,
    /// Whether a changed component file is loaded for new connections (checked every
    /// second; open connections finish on the old one). `SIGHUP` reloads every
    /// component either way. Default true.
    #[serde(default = "yes")]
    pub watch_components: bool,
}

fn default_grace_period() -> f64 {
    10.0
}

/// Ballerina's `ListenerSecureSocket`: the listener's TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ListenerSecureSocket {
    /// The server's certificate chain and private key (or give `cert_file` and
    /// `key_file` directly in this table).
    #[serde(default)]
    pub key: Option<CertKey>,
    /// The certificate chain (PEM), when `key` is not given.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The private key (PEM), when `key` is not given.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Client certificates (mutual TLS).
    #[serde(default)]
    pub mutual_ssl: Option<MutualSsl>,
    /// TLS versions. Default: TLS 1.2 and 1.3.
    #[serde(default)]
    pub protocol: Option<TlsProtocol>,
    /// Cipher suites, by IANA name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`,
    /// `TLS13_AES_128_GCM_SHA256`). Names rustls does not implement (CBC, DHE) are
    /// skipped. Default: rustls's secure set.
    #[serde(default)]
    pub ciphers: Vec<String>,
    /// Whether clients may resume sessions (session cache and TLS 1.3 tickets).
    /// Default true.
    #[serde(default = "yes")]
    pub share_session: bool,
    /// Seconds the TLS handshake may take. Default 10.
    #[serde(default = "default_tls_handshake_timeout")]
    pub handshake_timeout: f64,
    /// Seconds a TLS session may be resumed after it was established (session cache
    /// and tickets). Default: rustls's, 6 hours for tickets.
    #[serde(default)]
    pub session_timeout: Option<f64>,
}

fn default_tls_handshake_timeout() -> f64 {
    10.0
}

impl ListenerSecureSocket {
    /// The certificate and key, from `key` or from `cert_file` and `key_file`.
    pub fn cert_key(&self) -> std::result::Result<CertKey, String> {
        match (&self.key, &self.cert_file, &self.key_file) {
            (Some(key), None, None) => Ok(key.clone()),
            (None, Some(cert_file), Some(key_file)) => Ok(CertKey {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
            }),
            _ => Err(
                "listener.secure_socket: give either key = { cert_file, key_file } \
                      or cert_file and key_file"
                    .into(),
            ),
        }
    }
}

/// Ballerina's `CertKey`: PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CertKey {
    /// The certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// Mutual TLS: which clients are asked for, and trusted with, a certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MutualSsl {
    /// `require` (the default) refuses clients without a trusted certificate;
    /// `optional` accepts them too.
    #[serde(default)]
    pub verify_client: VerifyClient,
    /// The CA certificates (PEM) client certificates must chain to.
    pub cert: PathBuf,
}

/// Ballerina's `VerifyClient`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    /// A trusted client certificate is required.
    #[default]
    #[serde(alias = "REQUIRE")]
    Require,
    /// A client certificate is verified if sent.
    #[serde(alias = "OPTIONAL")]
    Optional,
}

/// TLS protocol settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsProtocol {
    /// `TLS`.
    pub name: String,
    /// `TLSv1.2`, `TLSv1.3`; empty means both.
    #[serde(default)]
    pub versions: Vec<String>,
}

/// Ballerina's `ListenerHttp1Settings`, as they apply to the plain HTTP requests a
/// connection makes before (or instead of) upgrading: 404, 426, static files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Http1Settings {
    /// `auto` keeps a connection open unless the client asks to close it, `always`
    /// keeps it open, `never` closes it after each response. Default `auto`.
    #[serde(default)]
    pub keep_alive: KeepAlive,
    /// How many requests of one pipelined burst (each sent before the answer to the
    /// previous one) the host answers; the answer that reaches the limit closes the
    /// connection and the rest of the burst is dropped. Default 10.
    #[serde(default = "default_max_pipelined_requests")]
    pub max_pipelined_requests: usize,
}

impl Default for Http1Settings {
    fn default() -> Self {
        Self {
            keep_alive: KeepAlive::default(),
            max_pipelined_requests: default_max_pipelined_requests(),
        }
    }
}

fn default_max_pipelined_requests() -> usize {
    10
}

impl Http1Settings {
    /// Whether to keep the connection open after answering a request.
    pub fn keeps_alive(&self, client_wants_close: bool) -> bool {
        match self.keep_alive {
            KeepAlive::Auto => !client_wants_close,
            KeepAlive::Always => true,
            KeepAlive::Never => false,
        }
    }
}

/// Ballerina's `KeepAlive`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepAlive {
    /// Respect the client's `Connection` header.
    #[default]
    #[serde(alias = "KEEPALIVE_AUTO")]
    Auto,
    /// Keep the connection open.
    #[serde(alias = "KEEPALIVE_ALWAYS")]
    Always,
    /// Close after each response.
    #[serde(alias = "KEEPALIVE_NEVER")]
    Never,
}

/// Ballerina's `RequestLimitConfigs`: limits on the upgrade request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RequestLimits {
    /// The longest request target accepted; longer ones get `414 URI Too Long`.
    /// Default 4096.
    #[serde(default = "default_max_uri_length")]
    pub max_uri_length: usize,
    /// The largest request head (request line and headers) accepted; larger ones get
    /// `431 Request Header Fields Too Large`. Default 8192.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: usize,
    /// The largest request body accepted, by `content-length`; larger ones get
    /// `413 Payload Too Large`. -1 (the default) sets no limit. (An upgrade request
    /// with a body is refused with 400 either way.)
    #[serde(default = "no_limit")]
    pub max_entity_body_size: i64,
}

fn no_limit() -> i64 {
    -1
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_uri_length: default_max_uri_length(),
            max_header_size: default_max_header_size(),
            max_entity_body_size: no_limit(),
        }
    }
}

/// One service: Ballerina's `WSServiceConfig` plus the component that implements it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The path the service is attached to, e.g. `/echo`. Matched exactly.
    pub path: String,
    /// The component (`.wasm`) that implements the service, relative to the config file.
    pub component: PathBuf,
    /// Subprotocols the service may agree on. When the component does not choose one,
    /// the host picks the first the client offered that is in this list.
    #[serde(default, alias = "sub_protocols")]
    pub subprotocols: Vec<String>,
    /// Seconds without a received frame before `on-idle-timeout` is called; 0 disables.
    #[serde(default)]
    pub idle_timeout: f64,
    /// The largest frame payload accepted, in bytes; a larger frame closes the connection
    /// with 1009. Zero or negative means the default, 65536, as in the specification.
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: i64,
    /// The largest message (all fragments, after decompression) accepted, in bytes; a
    /// larger one closes the connection with 1009. Default 1 MiB.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// How connections map to component instances: `"isolated"` (the default, one
    /// instance per connection) or `"shared"` (many connections' sessions in a few
    /// instances).
    #[serde(default)]
    pub mode: InstanceMode,
    /// In shared mode, how many instances the connections are spread over. Default:
    /// four per CPU.
    #[serde(default)]
    pub shared_instances: Option<usize>,
    /// Limits on the component's sandbox.
    #[serde(default)]
    pub limits: SandboxLimits,
    /// What the sandbox lets the component reach. Nothing by default: no
    /// environment variables, no files, no network.
    #[serde(default)]
    pub grants: Grants,
    /// Authentication of the upgrade request (spec 5.2): the first entry that
    /// authenticates the client and grants every scope it lists wins.
    #[serde(default)]
    pub auth: Vec<AuthEntry>,
    /// A query parameter that may carry a bearer token (browsers cannot send an
    /// `Authorization` header on a WebSocket), e.g. `"access_token"`. Off by default:
    /// tokens in URLs end up in logs.
    #[serde(default)]
    pub token_query_param: Option<String>,
    /// A `Sec-WebSocket-Protocol` offer starting with this prefix carries a bearer
    /// token (e.g. `"bearer."`: offer `bearer.<token>`). It is never agreed on nor
    /// shown to the guest. Off by default.
    #[serde(default)]
    pub token_subprotocol_prefix: Option<String>,
}

/// How a service's connections map to component instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum InstanceMode {
    /// One instance (one store, one linear memory) per connection: a trap, a runaway
    /// loop or a memory blow-up ends that connection only.
    #[default]
    Isolated,
    /// Each instance holds the sessions of many connections, as resources: far less
    /// memory and set-up time per connection, but a trap in one callback closes every
    /// connection of that instance (1011) and a fresh instance takes over. The memory
    /// limit is per instance.
    Shared,
}

/// What a component may reach beyond the WebSocket: explicit environment variables
/// and directories. Sockets are never granted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Grants {
    /// Environment variables the component sees (and no others).
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// Host directories the component sees.
    #[serde(default)]
    pub dirs: Vec<DirGrant>,
}

/// A host directory granted to a component.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DirGrant {
    /// The directory on the host, relative to the config file.
    pub host: PathBuf,
    /// Where the component sees it, e.g. `/data`.
    pub guest: String,
    /// Whether the component may write there. Default false.
    #[serde(default)]
    pub writable: bool,
}

/// One `[[service.auth]]` entry: a mechanism and the scopes it requires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthEntry {
    /// Basic authentication against a TOML file of `[[user]]` tables: `username`,
    /// `password` (a PHC-format argon2 hash) and `scopes`.
    #[serde(default)]
    pub file_user_store: Option<PathBuf>,
    /// Basic authentication against an LDAP directory; the user's groups are its
    /// scopes.
    #[serde(default)]
    pub ldap_user_store: Option<LdapUserStoreConfig>,
    /// Bearer JWT validation.
    #[serde(default)]
    pub jwt_validator: Option<JwtValidatorConfig>,
    /// Bearer tokens checked at an OAuth2 introspection endpoint (RFC 7662).
    #[serde(default)]
    pub oauth2_introspection: Option<OAuth2IntrospectionConfig>,
    /// Scopes the client must have, all of them; missing ones → 403.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Ballerina's `OAuth2IntrospectionConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OAuth2IntrospectionConfig {
    /// The endpoint, `http://` or `https://`.
    pub url: String,
    /// Sent as `token_type_hint`. Default `access_token`.
    #[serde(default = "default_token_type_hint")]
    pub token_type_hint: String,
    /// The response field holding the scopes (space-separated or an array). Default
    /// `scope`.
    #[serde(default = "default_scope_key")]
    pub scope_key: String,
    /// Credentials the host presents to the endpoint (HTTP Basic), if it wants them.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The secret that goes with `client_id`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A PEM file of CA certificates to trust for an `https://` endpoint (default:
    /// the Mozilla roots).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Seconds an answer is cached (never past the token's `exp`). Default 60; 0
    /// asks every time.
    #[serde(default = "default_introspection_cache")]
    pub cache_seconds: f64,
    /// Seconds one introspection may take. Default 5.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: f64,
}

fn default_token_type_hint() -> String {
    "access_token".into()
}

fn default_introspection_cache() -> f64 {
    60.0
}

fn default_introspection_timeout() -> f64 {
    5.0
}

/// Ballerina's `JwtValidatorConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JwtValidatorConfig {
    /// The required `iss` claim.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty skips the check.
    #[serde(default)]
    pub audience: Vec<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`. Default 0.
    #[serde(default)]
    pub clock_skew: f64,
    /// How the signature is checked.
    pub signature: JwtSignature,
    /// The claim holding the scopes (space-separated string or array). Default `scope`.
    #[serde(default = "default_scope_key")]
    pub scope_key: String,
}

fn default_scope_key() -> String {
    "scope".into()
}

/// A JWT signature check.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
#[non_exhaustive]
pub enum JwtSignature {
    /// An RSA or EC public key (PEM: `PUBLIC KEY` or `RSA PUBLIC KEY`): RS256/384/512 or
    /// ES256/384.
    CertFile {
        /// The PEM file.
        cert_file: PathBuf,
    },
    /// A shared HMAC secret: HS256/384/512.
    Secret {
        /// The secret.
        secret: String,
    },
    /// Public keys from a JWKS URL (RFC 7517), chosen by the token's `kid`.
    Jwks {
        /// Where the key set is.
        jwks: JwksConfig,
    },
}

/// Ballerina's `JwksConfig`: a key set fetched over HTTP(S).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct JwksConfig {
    /// The key set's URL, `http://` or `https://`.
    pub url: String,
    /// A PEM file of CA certificates to trust for an `https://` URL (default: the
    /// Mozilla roots).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Seconds the keys are kept before they are fetched again. Default 3600. A token
    /// naming an unknown key id fetches them early (at most once a second).
    #[serde(default = "default_jwks_cache")]
    pub cache_seconds: f64,
    /// Seconds one fetch may take. Default 5.
    #[serde(default = "default_introspection_timeout")]
    pub timeout: f64,
}

fn default_jwks_cache() -> f64 {
    3600.0
}

/// Ballerina's `LdapUserStoreConfig`: Basic credentials checked against an LDAP
/// directory. The host binds with the service account, finds the user's entry, binds
/// as the user with the given password, and takes the names of the groups the entry
/// is a member of as the user's scopes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LdapUserStoreConfig {
    /// The directory's domain, e.g. `example.com` (used in log messages).
    #[serde(default)]
    pub domain_name: String,
    /// `ldap://host:port` or `ldaps://host:port`.
    pub connection_url: String,
    /// The service account's DN, used to search (empty: anonymous).
    #[serde(default)]
    pub connection_name: String,
    /// The service account's password.
    #[serde(default)]
    pub connection_password: String,
    /// Where user entries are searched (subtree).
    pub user_search_base: String,
    /// The filter finding a user; `?` stands for the (escaped) user name. Default
    /// `(&(objectClass=inetOrgPerson)(uid=?))`.
    #[serde(default = "default_user_filter")]
    pub user_name_search_filter: String,
    /// Where groups are searched (subtree), each in turn. Empty: no groups, no scopes.
    #[serde(default)]
    pub group_search_base: Vec<String>,
    /// The object class of group entries. Default `groupOfNames`.
    #[serde(default = "default_group_class")]
    pub group_entry_object_class: String,
    /// The group attribute naming it (the scope). Default `cn`.
    #[serde(default = "default_group_name")]
    pub group_name_attribute: String,
    /// The group attribute listing member DNs. Default `member`.
    #[serde(default = "default_membership")]
    pub membership_attribute: String,
    /// Seconds to connect. Default 5.
    #[serde(default = "default_introspection_timeout")]
    pub connection_timeout: f64,
    /// Seconds one authentication (all its LDAP operations) may take. Default 5.
    #[serde(default = "default_introspection_timeout")]
    pub read_timeout: f64,
    /// Upgrade an `ldap://` connection with StartTLS. Default false.
    #[serde(default)]
    pub start_tls: bool,
    /// A PEM file of CA certificates to trust for `ldaps://` or StartTLS (default:
    /// the Mozilla roots).
    #[serde(default)]
    pub cert: Option<PathBuf>,
}

fn default_user_filter() -> String {
    "(&(objectClass=inetOrgPerson)(uid=?))".into()
}

fn default_group_class() -> String {
    "groupOfNames".into()
}

fn default_group_name() -> String {
    "cn".into()
}

fn default_membership() -> String {
    "member".into()
}

/// What one component instance may consume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SandboxLimits {
    /// Seconds one callback may run before it is interrupted (and its connection closed
    /// with 1011). Default 1.
    #[serde(default = "default_callback_timeout")]
    pub callback_timeout: f64,
    /// Bytes of linear memory one instance may grow to. Default 64 MiB.
    #[serde(default = "default_max_memory")]
    pub max_memory: usize,
    /// Bytes one callback may queue for sending before writes fail with
    /// `write-buffer-full`. Default 16 MiB.
    #[serde(default = "default_max_write_buffer")]
    pub max_write_buffer: usize,
    /// Open connections the service takes at once; more upgrades get 503. Default
    /// 10000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_max_connections() -> usize {
    10_000
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            callback_timeout: default_callback_timeout(),
            max_memory: default_max_memory(),
            max_write_buffer: default_max_write_buffer(),
            max_connections: default_max_connections(),
        }
    }
}

fn default_host() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}
fn default_timeout() -> f64 {
    120.0
}
fn yes() -> bool {
    true
}
fn default_max_uri_length() -> usize {
    4096
}
fn default_max_header_size() -> usize {
    8192
}
fn default_max_frame_size() -> i64 {
    65536
}
fn default_max_message_size() -> usize {
    1 << 20
}
fn default_callback_timeout() -> f64 {
    1.0
}
fn default_max_memory() -> usize {
    64 << 20
}
fn default_max_write_buffer() -> usize {
    16 << 20
}

impl Config {
    /// Reads, parses and validates a configuration file, resolving component paths
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|error| match error {
            Error::ConfigInvalid { message, .. } => Error::ConfigInvalid {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for service in &mut config.services {
            service.component = base.join(&service.component);
            for dir in &mut service.grants.dirs {
                dir.host = base.join(&dir.host);
            }
            for entry in &mut service.auth {
                if let Some(path) = &mut entry.file_user_store {
                    *path = base.join(&*path);
                }
                if let Some(JwtValidatorConfig {
                    signature: JwtSignature::CertFile { cert_file },
                    ..
                }) = &mut entry.jwt_validator
                {
                    *cert_file = base.join(&*cert_file);
                }
                if let Some(OAuth2IntrospectionConfig {
                    cert: Some(cert), ..
                }) = &mut entry.oauth2_introspection
                {
                    *cert = base.join(&*cert);
                }
                if let Some(JwtValidatorConfig {
                    signature:
                        JwtSignature::Jwks {
                            jwks:
                                JwksConfig {
                                    cert: Some(cert), ..
                                },
                        },
                    ..
                }) = &mut entry.jwt_validator
                {
                    *cert = base.join(&*cert);
                }
                if let Some(LdapUserStoreConfig {
                    cert: Some(cert), ..
                }) = &mut entry.ldap_user_store
                {
                    *cert = base.join(&*cert);
                }
            }
        }
        if let Some(files) = &mut config.static_files {
            files.dir = base.join(&files.dir);
        }
        if let Some(tls) = &mut config.listener.secure_socket {
            if let Some(key) = &mut tls.key {
                key.cert_file = base.join(&key.cert_file);
                key.key_file = base.join(&key.key_file);
            }
            for path in [&mut tls.cert_file, &mut tls.key_file]
                .into_iter()
                .flatten()
            {
                *path = base.join(&*path);
            }
            if let Some(mutual) = &mut tls.mutual_ssl {
                mutual.cert = base.join(&mutual.cert);
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text. Component paths are left as written.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text).map_err(|error| Error::ConfigInvalid {
            path: PathBuf::new(),
            message: error.to_string(),
        })?;
        config.validate().map_err(|message| Error::ConfigInvalid {
            path: PathBuf::new(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let listener = &self.listener;
        seconds("listener.timeout", listener.timeout)?;
        seconds("listener.grace_period", listener.grace_period)?;
        if let Some(tls) = &listener.secure_socket {
            seconds(
                "listener.secure_socket.handshake_timeout",
                tls.handshake_timeout,
            )?;
            tls.cert_key()?;
        }
        if let Some(server) = &listener.server
            && !server
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err("listener.server: must be printable ASCII".into());
        }
        if listener.request_limits.max_uri_length == 0 {
            return Err("listener.request_limits.max_uri_length: must be positive".into());
        }
        if listener.request_limits.max_header_size < 64 {
            return Err("listener.request_limits.max_header_size: must be at least 64".into());
        }
        if let Some(files) = &self.static_files
            && !files.path.starts_with('/')
        {
            return Err("static_files.path: must start with '/'".into());
        }
        for (index, service) in self.services.iter().enumerate() {
            let field = |name: &str| format!("service[{index}].{name}");
            if let Some(other) = self.services[..index]
                .iter()
                .position(|s| s.path == service.path)
            {
                return Err(format!(
                    "{}: {:?} is already used by service[{other}]",
                    field("path"),
                    service.path
                ));
            }
            service.validate(&format!("service[{index}]"))?;
        }
        self.topics.validate()?;
        Ok(())
    }
}

impl ListenerConfig {
    /// The socket address to bind.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// How long a graceful stop waits for close handshakes.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs_f64(self.grace_period)
    }

    /// How long the upgrade request may take to arrive, `None` for no limit.
    pub fn request_timeout(&self) -> Option<Duration> {
        optional_seconds(self.timeout)
    }
}

impl ServiceConfig {
    /// Checks the service's own fields; `prefix` names it in messages
    /// (`service[0]`).
    pub(crate) fn validate(&self, prefix: &str) -> std::result::Result<(), String> {
        let service = self;
        let field = |name: &str| format!("{prefix}.{name}");
        if !service.path.starts_with('/') {
            return Err(format!("{}: must start with '/'", field("path")));
        }
        if service.path.contains(['?', '#', ' ']) {
            return Err(format!(
                "{}: must not contain '?', '#' or spaces",
                field("path")
            ));
        }
        for protocol in &service.subprotocols {
            if !is_token(protocol) {
                return Err(format!(
                    "{}: {protocol:?} is not a valid subprotocol token",
                    field("subprotocols")
                ));
            }
        }
        seconds(&field("idle_timeout"), service.idle_timeout)?;
        if service.limits.max_connections == 0 {
            return Err(format!(
                "{}: must be positive",
                field("limits.max_connections")
            ));
        }
        if service.max_message_size == 0 {
            return Err(format!("{}: must be positive", field("max_message_size")));
        }
        let limits = &service.limits;
        seconds(&field("limits.callback_timeout"), limits.callback_timeout)?;
        if limits.callback_timeout == 0.0 {
            return Err(format!(
                "{}: must be positive",
                field("limits.callback_timeout")
            ));
        }
        if limits.max_memory < (1 << 16) {
            return Err(format!(
                "{}: must be at least 65536 (one wasm page)",
                field("limits.max_memory")
            ));
        }
        match (service.mode, service.shared_instances) {
            (InstanceMode::Shared, Some(0)) => {
                return Err(format!("{}: must be positive", field("shared_instances")));
            }
            (InstanceMode::Isolated, Some(_)) => {
                return Err(format!(
                    "{}: only with mode = \"shared\"",
                    field("shared_instances")
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// In shared mode, how many instances serve the service: four per CPU unless
    /// configured. One callback runs at a time in an instance, so with as many
    /// instances as workers two workers often want the same one; four per CPU made
    /// load (i) 3–5% faster than one per CPU (docs/decisions.md, 6).
    pub fn shared_instance_count(&self) -> usize {
        self.shared_instances.unwrap_or_else(|| {
            4 * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// A service at `path` served by `component`, with the specification's defaults.
    pub fn new(path: impl Into<String>, component: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            component: component.into(),
            subprotocols: Vec::new(),
            idle_timeout: 0.0,
            max_frame_size: default_max_frame_size(),
            max_message_size: default_max_message_size(),
            mode: InstanceMode::default(),
            shared_instances: None,
            limits: SandboxLimits::default(),
            grants: Grants::default(),
            auth: Vec::new(),
            token_query_param: None,
            token_subprotocol_prefix: None,
        }
    }

    /// The effective frame size limit: the spec's default for zero or negative values.
    pub fn frame_size_limit(&self) -> usize {
        if self.max_frame_size <= 0 {
            default_max_frame_size() as usize
        } else {
            self.max_frame_size as usize
        }
    }

    /// The idle timeout, `None` when disabled.
    pub fn idle_timeout(&self) -> Option<Duration> {
        optional_seconds(self.idle_timeout)
    }
}

impl SandboxLimits {
    /// The CPU deadline of one callback.
    pub fn callback_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.callback_timeout)
    }
}

fn seconds(field: &str, value: f64) -> std::result::Result<(), String> {
    if value.is_finite() && (0.0..1e9).contains(&value) {
        Ok(())
    } else {
        Err(format!("{field}: must be a number of seconds, 0 or more"))
    }
}

fn optional_seconds(value: f64) -> Option<Duration> {
    (value > 0.0).then(|| Duration::from_secs_f64(value))
}

/// Whether `s` is an RFC 7230 token, as subprotocol names must be.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [listener]
        host = "127.0.0.1"
        port = 9090

        [[service]]
        path = "/echo"
        component = "path/to/echo.wasm"
    "#;

    #[test]
    fn minimal_config_gets_spec_defaults() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.listener.address(), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(
            config.listener.request_timeout(),
            Some(Duration::from_secs(120))
        );
        assert!(config.listener.web_socket_compression_enabled);
        assert_eq!(config.listener.request_limits.max_uri_length, 4096);
        assert_eq!(config.listener.request_limits.max_header_size, 8192);
        let service = &config.services[0];
        assert_eq!(service.path, "/echo");
        assert_eq!(service.frame_size_limit(), 65536);
        assert_eq!(service.idle_timeout(), None);
        assert_eq!(service.limits.callback_deadline(), Duration::from_secs(1));
    }

    #[test]
    fn static_files_resolve_against_the_file() {
        let config = Config::parse(&format!("{MINIMAL}\n[static_files]\ndir = \"www\"")).unwrap();
        let files = config.static_files.unwrap();
        assert_eq!(files.path, "/");
        assert_eq!(files.dir, Path::new("www"));
        let bad = format!("{MINIMAL}\n[static_files]\ndir = \"www\"\npath = \"ui\"");
        assert!(
            Config::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("static_files.path")
        );
    }

    #[test]
    fn host_defaults_to_all_interfaces() {
        let config = Config::parse("[listener]\nport = 1").unwrap();
        assert_eq!(config.listener.host, IpAddr::from([0, 0, 0, 0]));
        assert!(config.services.is_empty());
    }

    #[test]
    fn non_positive_frame_size_means_the_default() {
        let text = MINIMAL.replace("component =", "max_frame_size = -1\ncomponent =");
        assert_eq!(
            Config::parse(&text).unwrap().services[0].frame_size_limit(),
            65536
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let error = Config::parse(&MINIMAL.replace("port", "prot")).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("prot"), "{message}");
    }

    #[test]
    fn wrong_type_is_named() {
        let error = Config::parse(&MINIMAL.replace("9090", "\"ninety\"")).unwrap_err();
        assert!(error.to_string().contains("port"), "{error}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            (MINIMAL.replace("/echo", "echo"), "service[0].path"),
            (
                MINIMAL.replace("component =", "idle_timeout = -3\ncomponent ="),
                "service[0].idle_timeout",
            ),
            (
                MINIMAL.replace("component =", "subprotocols = [\"a b\"]\ncomponent ="),
                "service[0].subprotocols",
            ),
            (
                format!("{MINIMAL}\n[[service]]\npath = \"/echo\"\ncomponent = \"x.wasm\""),
                "service[1].path",
            ),
            (
                MINIMAL.replace("port = 9090", "port = 9090\ntimeout = nan"),
                "listener.timeout",
            ),
            (
                format!("{MINIMAL}\n[service.limits]\nmax_memory = 10"),
                "service[0].limits.max_memory",
            ),
        ];
        for (text, field) in cases {
            let message = Config::parse(&text).unwrap_err().to_string();
            assert!(message.contains(field), "{field} not in {message}");
        }
    }

    #[test]
    fn topics_default_to_memory_and_redis_is_validated() {
        let config = Config::parse(MINIMAL).unwrap();
        assert_eq!(config.topics.backend, TopicsBackend::Memory);
        let redis = format!(
            "{MINIMAL}\n[topics]\nbackend = \"redis\"\nurl = \"redis://:pw@10.0.0.5:6380/0\""
        );
        let config = Config::parse(&redis).unwrap();
        assert_eq!(config.topics.backend, TopicsBackend::Redis);
        assert_eq!(config.topics.channel_prefix(), "wasmsocket:");
        let prefixed = format!("{redis}\nchannel_prefix = \"staging:\"");
        assert_eq!(
            Config::parse(&prefixed).unwrap().topics.channel_prefix(),
            "staging:"
        );
        for (topics, field, why) in [
            ("backend = \"redis\"", "topics.url", "required"),
            (
                "backend = \"redis\"\nurl = \"http://x\"",
                "topics.url",
                "redis://",
            ),
            (
                "backend = \"redis\"\nurl = \"redis://x:70000\"",
                "topics.url",
                "port",
            ),
            (
                "backend = \"redis\"\nurl = \"rediss://x\"",
                "topics.url",
                "TLS",
            ),
            ("url = \"redis://x\"", "topics.url", "only with"),
            (
                "channel_prefix = \"a:\"",
                "topics.channel_prefix",
                "only with",
            ),
            ("backend = \"kafka\"", "backend", "memory"),
            ("backend = \"redis\"\nuri = \"redis://x\"", "uri", "unknown"),
        ] {
            let text = format!("{MINIMAL}\n[topics]\n{topics}");
            let message = Config::parse(&text).unwrap_err().to_string();
            assert!(
                message.contains(field) && message.contains(why),
                "{topics}: {message}"
            );
        }
    }

    #[test]
    fn load_resolves_components_against_the_file() {
        let dir = std::env::temp_dir().join(format!("wasmsocket-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("wasmsocket.toml");
        std::fs::write(&file, MINIMAL).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(config.services[0].component, dir.join("path/to/echo.wasm"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let error = Config::load(Path::new("/nonexistent/wasmsocket.toml")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/wasmsocket.toml"));
    }

    #[test]
    fn tokens() {
        assert!(is_token("chat.v2"));
        assert!(!is_token(""));
        assert!(!is_token("a,b"));
        assert!(!is_token("a b"));
    }
}
