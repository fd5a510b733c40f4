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
