//! rustls client configuration from a [`SecureSocket`]: trusted CAs, a client
//! certificate, TLS versions and cipher suites. Used for `wss://` and for `https://`
//! token endpoints.

use std::path::Path;
use std::sync::Arc;

use rustls::SupportedProtocolVersion;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{Error, Result, SecureSocket};

/// The connector for `secure` (`None`: the Mozilla roots and rustls' defaults).
/// Errors name `field` (`secure_socket`, `auth.secure_socket`) and the file.
pub(super) fn connector(
    secure: Option<&SecureSocket>,
    field: &str,
) -> Result<tokio_rustls::TlsConnector> {
    let invalid = |what: &str, path: &Path, error: &dyn std::fmt::Display| {
        Error::InvalidConfig(format!("{field}.{what}: {}: {error}", path.display()))
    };
    let default = SecureSocket::default();
    let secure = secure.unwrap_or(&default);
    let mut roots = rustls::RootCertStore::empty();
    match &secure.cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("cert", path, &e))?;
            for cert in certs {
                roots.add(cert).map_err(|e| invalid("cert", path, &e))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(provider(&secure.ciphers, field)?);
    let versions = versions(&secure.protocol_versions, field)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| {
            Error::InvalidConfig(format!(
                "{field}: the ciphers and protocol versions do not fit together: {e}"
            ))
        })?
        .with_root_certificates(roots);
    let mut tls = match &secure.key {
        None => builder.with_no_client_auth(),
        Some(key) => {
            let chain = CertificateDer::pem_file_iter(&key.cert_file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid("key.cert_file", &key.cert_file, &e))?;
            let private = PrivateKeyDer::from_pem_file(&key.key_file)
                .map_err(|e| invalid("key.key_file", &key.key_file, &e))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| Error::InvalidConfig(format!("{field}.key: {e}")))?
        }
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls)))
}

/// The versions named (`TLSv1.2`, `TLSv1.3`; `TLSv1_2` too, as Java spells it), or
/// both when none are.
fn versions(names: &[String], field: &str) -> Result<Vec<&'static SupportedProtocolVersion>> {
    if names.is_empty() {
        return Ok(rustls::DEFAULT_VERSIONS.to_vec());
    }
    names
        .iter()
        .map(|name| match name.as_str() {
            "TLSv1.2" | "TLSv1_2" => Ok(&rustls::version::TLS12),
            "TLSv1.3" | "TLSv1_3" => Ok(&rustls::version::TLS13),
            other => Err(Error::InvalidConfig(format!(
                "{field}.protocol_versions: {other:?} is not a TLS version this client \
                 speaks (TLSv1.2 or TLSv1.3)"
            ))),
        })
        .collect()
}

/// The ring provider, restricted to `ciphers` (IANA names) when any are named. Unlike
/// the host's listener, which skips names rustls lacks, a client refuses them: the
/// caller asked for a suite it would silently not get.
fn provider(ciphers: &[String], field: &str) -> Result<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if ciphers.is_empty() {
        return Ok(provider);
    }
    let known = |name: &str| {
        provider
            .cipher_suites
            .iter()
            .any(|suite| suite.suite().as_str() == Some(name))
    };
    if let Some(unknown) = ciphers.iter().find(|name| !known(name)) {
        let available: Vec<&str> = provider
            .cipher_suites
            .iter()
            .filter_map(|suite| suite.suite().as_str())
            .collect();
        return Err(Error::InvalidConfig(format!(
            "{field}.ciphers: {unknown:?} is not a cipher suite this client implements; \
             it has {}",
            available.join(", ")
        )));
    }
    provider.cipher_suites.retain(|suite| {
        suite
            .suite()
            .as_str()
            .is_some_and(|name| ciphers.iter().any(|c| c == name))
    });
    Ok(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(secure: SecureSocket) -> String {
        match connector(Some(&secure), "secure_socket") {
            Err(Error::InvalidConfig(message)) => message,
            Err(other) => panic!("expected InvalidConfig, got {other:?}"),
            Ok(_) => panic!("expected InvalidConfig, got a connector"),
        }
    }

    #[test]
    fn versions_and_ciphers_are_checked_by_name() {
        let ok = SecureSocket::default()
            .protocol_versions(["TLSv1.2", "TLSv1.3"])
            .ciphers([
                "TLS13_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            ]);
        assert!(connector(Some(&ok), "secure_socket").is_ok());

        let message = error_of(SecureSocket::default().protocol_versions(["SSLv3"]));
        assert!(message.contains("protocol_versions") && message.contains("SSLv3"));

        let message = error_of(
            SecureSocket::default().ciphers(["TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "bogus"]),
        );
        assert!(
            message.contains("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
                && message.contains("TLS13_AES_256_GCM_SHA384"),
            "{message}"
        );

        // TLS 1.3 suites only, TLS 1.2 only: nothing left to offer.
        let message = error_of(
            SecureSocket::default()
                .protocol_versions(["TLSv1.2"])
                .ciphers(["TLS13_AES_128_GCM_SHA256"]),
        );
        assert!(message.contains("do not fit"), "{message}");
    }
}
