//! TLS for the listener (`wss`): Ballerina's `ListenerSecureSocket`, with rustls.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerSecureSocket, VerifyClient};

/// Builds the acceptor for `config`. The error names the field and the file.
pub(crate) fn acceptor(config: &ListenerSecureSocket) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(provider(&config.ciphers)?);
    let versions = versions(config)?;
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("listener.secure_socket.protocol: {e}"))?;
    let builder = match &config.mutual_ssl {
        None => builder.with_no_client_auth(),
        Some(mutual) => {
            let roots = Arc::new(trust_store(
                &mutual.cert,
                "listener.secure_socket.mutual_ssl.cert",
            )?);
            let verifier = WebPkiClientVerifier::builder(roots);
            let verifier = match mutual.verify_client {
                VerifyClient::Require => verifier,
                VerifyClient::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("listener.secure_socket.mutual_ssl: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let cert_key = config.cert_key()?;
    let certs = certificates(&cert_key.cert_file, "listener.secure_socket.key.cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&cert_key.key_file).map_err(|e| {
        format!(
            "listener.secure_socket.key.key_file: cannot read a PEM private key from {}: {e}",
            cert_key.key_file.display()
        )
    })?;
    let mut server = builder.with_single_cert(certs, key).map_err(|e| {
        format!("listener.secure_socket.key: the certificate and key do not fit: {e}")
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    if config.share_session {
        server.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("listener.secure_socket.share_session: {e}"))?;
        if let Some(seconds) = config.session_timeout {
            if !(seconds.is_finite() && seconds >= 1.0 && seconds <= f64::from(u32::MAX)) {
                return Err(
                    "listener.secure_socket.session_timeout: must be 1 second or more".into(),
                );
            }
            let timeout = seconds as u64;
            server.session_storage = Arc::new(Expiring {
                inner: server.session_storage.clone(),
                timeout,
            });
            server.ticketer = Arc::new(Expiring {
                inner: server.ticketer.clone(),
                timeout,
            });
        }
    } else {
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
    }
    Ok(TlsAcceptor::from(Arc::new(server)))
}

fn certificates(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "{field}: cannot read PEM certificates from {}: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{field}: no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn trust_store(path: &Path, field: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, field)? {
        roots
            .add(cert)
            .map_err(|e| format!("{field}: {}: {e}", path.display()))?;
    }
    Ok(roots)
}

fn versions(
    config: &ListenerSecureSocket,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let Some(protocol) = &config.protocol else {
        return Ok(rustls::DEFAULT_VERSIONS.to_vec());
    };
    if !protocol.name.eq_ignore_ascii_case("TLS") {
        return Err(format!(
            "listener.secure_socket.protocol.name: {:?} (only TLS)",
            protocol.name
        ));
    }
    if protocol.versions.is_empty() {
        return Ok(rustls::DEFAULT_VERSIONS.to_vec());
    }
    protocol
        .versions
        .iter()
        .map(|version| match version.as_str() {
            "TLSv1.2" | "TLSv1_2" => Ok(&rustls::version::TLS12),
            "TLSv1.3" | "TLSv1_3" => Ok(&rustls::version::TLS13),
            other => Err(format!(
                "listener.secure_socket.protocol.versions: {other:?} (TLSv1.2 or TLSv1.3)"
            )),
        })
        .collect()
}

/// The ring provider, restricted to `ciphers` (IANA names, e.g.
/// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`, `TLS13_AES_128_GCM_SHA256`) when given.
/// Names rustls does not implement (CBC suites, DHE) are skipped; none left is an error.
fn provider(ciphers: &[String]) -> Result<rustls::crypto::CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if ciphers.is_empty() {
        return Ok(provider);
    }
    provider.cipher_suites.retain(|suite| {
        suite
            .suite()
            .as_str()
            .is_some_and(|name| ciphers.iter().any(|c| c == name))
    });
    if provider.cipher_suites.is_empty() {
        return Err(format!(
            "listener.secure_socket.ciphers: none of {ciphers:?} is available; rustls offers {:?}",
            rustls::crypto::ring::ALL_CIPHER_SUITES
                .iter()
                .filter_map(|s| s.suite().as_str())
                .collect::<Vec<_>>()
        ));
    }
    Ok(provider)
}

/// Session cache entries and tickets that stop resuming `timeout` seconds after they
/// were made (Ballerina's `sessionTimeout`): the creation time travels in front of
/// the stored value, and inside the encrypted ticket.
#[derive(Debug)]
struct Expiring<T: ?Sized> {
    inner: Arc<T>,
    timeout: u64,
}

impl<T: ?Sized> Expiring<T> {
    fn stamp(value: &[u8]) -> Vec<u8> {
        let mut stamped = Vec::with_capacity(8 + value.len());
        stamped.extend_from_slice(&unix_now().to_be_bytes());
        stamped.extend_from_slice(value);
        stamped
    }

    fn unstamp(&self, stamped: Vec<u8>) -> Option<Vec<u8>> {
        let made = u64::from_be_bytes(stamped.get(..8)?.try_into().ok()?);
        (unix_now().saturating_sub(made) < self.timeout).then(|| stamped[8..].to_vec())
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl rustls::server::StoresServerSessions for Expiring<dyn rustls::server::StoresServerSessions> {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, Self::stamp(&value))
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.unstamp(self.inner.get(key)?)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.unstamp(self.inner.take(key)?)
    }

    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

impl rustls::server::ProducesTickets for Expiring<dyn rustls::server::ProducesTickets> {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.inner
            .lifetime()
            .min(u32::try_from(self.timeout).unwrap_or(u32::MAX))
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.inner.encrypt(&Self::stamp(plain))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.unstamp(self.inner.decrypt(cipher)?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener config with a fresh self-signed certificate; the client config
    /// trusting it, with its own session cache.
    fn pair(
        share_session: bool,
        session_timeout: Option<f64>,
        versions: &[&str],
    ) -> (TlsAcceptor, Arc<rustls::ClientConfig>) {
        let dir = std::env::temp_dir().join(format!(
            "wasmsocket-tls-unit-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let protocol = if versions.is_empty() {
            String::new()
        } else {
            format!("protocol = {{ name = \"TLS\", versions = {versions:?} }}\n")
        };
        let config: ListenerSecureSocket = toml::from_str(&format!(
            "key = {{ cert_file = {:?}, key_file = {:?} }}\nshare_session = {share_session}\n{}{protocol}",
            dir.join("cert.pem"),
            dir.join("key.pem"),
            session_timeout
                .map(|s| format!("session_timeout = {s:?}\n"))
                .unwrap_or_default(),
        ))
        .unwrap();
        let acceptor = acceptor(&config).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        (acceptor, Arc::new(client))
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed)
    }

    /// One full TLS connection that exchanges a byte (so TLS 1.3 tickets arrive);
    /// how the handshake went.
    async fn connect(acceptor: &TlsAcceptor, client: &Arc<rustls::ClientConfig>) -> HandshakeKind {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.unwrap();
            tls.write_all(&byte).await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(client.clone());
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"x").await.unwrap();
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"x");
        let kind = tls.get_ref().1.handshake_kind().unwrap();
        server.await.unwrap();
        kind
    }

    #[tokio::test]
    async fn sessions_resume_until_the_session_timeout() {
        for versions in [&["TLSv1.3"][..], &["TLSv1.2"][..]] {
            let (acceptor, client) = pair(true, Some(1.0), versions);
            assert_eq!(connect(&acceptor, &client).await, HandshakeKind::Full);
            assert_eq!(
                connect(&acceptor, &client).await,
                HandshakeKind::Resumed,
                "{versions:?}"
            );
            tokio::time::sleep(Duration::from_millis(2100)).await;
            assert_eq!(
                connect(&acceptor, &client).await,
                HandshakeKind::Full,
                "{versions:?}: resumed after the session timeout"
            );
        }
    }

    #[tokio::test]
    async fn share_session_false_never_resumes() {
        let (acceptor, client) = pair(false, None, &[]);
        assert_eq!(connect(&acceptor, &client).await, HandshakeKind::Full);
        assert_eq!(connect(&acceptor, &client).await, HandshakeKind::Full);
    }
}
