//! The host's own small HTTP/1.1 client for the endpoints authentication talks to:
//! OAuth2 introspection (RFC 7662) and JWKS documents (RFC 7517). One request per
//! connection (`connection: close`), `http://` or `https://` with rustls.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read.
const MAX_RESPONSE: u64 = 256 * 1024;

/// An endpoint parsed once from its URL.
pub(crate) struct Endpoint {
    url: String,
    tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    port: u16,
    path: String,
    timeout: Duration,
}

impl Endpoint {
    /// Parses `url`; `cert` is a PEM file of CA certificates to trust for `https://`
    /// (default: the Mozilla roots). Errors name `field`.
    pub(crate) fn new(
        url: &str,
        cert: Option<&Path>,
        timeout: Duration,
        field: &str,
    ) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{field}: must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host.to_owned(),
                port.parse().map_err(|_| format!("{field}: bad port"))?,
            ),
            None => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{field}: no host"));
        }
        let tls = if tls {
            Some(connector(cert, field)?)
        } else {
            None
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
            host,
            port,
            path,
            timeout,
        })
    }

    /// The URL, for messages.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Sends `GET` and returns the status and body.
    pub(crate) async fn get(&self, accept: &str) -> Result<(u16, Vec<u8>), String> {
        let request = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\naccept: {accept}\r\nconnection: close\r\n\r\n",
            self.path, self.host
        );
        self.send(request).await
    }

    /// Sends a form-encoded `POST` with an optional `Authorization` value and returns
    /// the status and body.
    pub(crate) async fn post_form(
        &self,
        form: &[(&str, &str)],
        authorization: Option<&str>,
    ) -> Result<(u16, Vec<u8>), String> {
        let body = form
            .iter()
            .map(|(key, value)| format!("{}={}", form_encode(key), form_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             accept: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.path,
            self.host,
            body.len()
        );
        if let Some(authorization) = authorization {
            request.push_str(&format!("authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.send(request).await
    }

    async fn send(&self, request: String) -> Result<(u16, Vec<u8>), String> {
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("{}:{}: {e}", self.host, self.port))?;
            let response = match &self.tls {
                None => exchange(tcp, &request).await?,
                Some(connector) => {
                    let name = rustls_pki_types::ServerName::try_from(self.host.clone())
                        .map_err(|e| e.to_string())?;
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| e.to_string())?;
                    exchange(tls, &request).await?
                }
            };
            parse_response(&response)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{}: no answer within {:?}", self.url, self.timeout))?
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &str,
) -> Result<Vec<u8>, String> {
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    (&mut io)
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// Splits a complete `connection: close` response into status and body, undoing a
/// chunked transfer encoding.
fn parse_response(response: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(response) {
        Ok(httparse::Status::Complete(head)) => head,
        _ => return Err("malformed HTTP response".into()),
    };
    let chunked = parsed.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let status = parsed.code.unwrap_or(0);
    let mut body = &response[head..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunk")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "malformed chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if body.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A TLS connector trusting the CA certificates in `cert` (PEM), or the Mozilla roots.
pub(crate) fn connector(
    cert: Option<&Path>,
    field: &str,
) -> Result<tokio_rustls::TlsConnector, String> {
    client_tls(cert, field).map(tokio_rustls::TlsConnector::from)
}

/// A TLS client configuration trusting the CA certificates in `cert` (PEM), or the
/// Mozilla roots.
pub(crate) fn client_tls(
    cert: Option<&Path>,
    field: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{field}.cert: {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{field}.cert: {}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{field}: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_plain_responses() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/="), "a%20b%2Bc%2F%3D");
    }

    #[test]
    fn urls() {
        let timeout = Duration::from_secs(1);
        let endpoint = Endpoint::new("http://127.0.0.1:8080/a/b", None, timeout, "f").unwrap();
        assert_eq!(
            (
                endpoint.host.as_str(),
                endpoint.port,
                endpoint.path.as_str()
            ),
            ("127.0.0.1", 8080, "/a/b")
        );
        let endpoint = Endpoint::new("https://example.com", None, timeout, "f").unwrap();
        assert_eq!((endpoint.port, endpoint.path.as_str()), (443, "/"));
        assert!(Endpoint::new("ftp://x", None, timeout, "f").is_err());
        assert!(Endpoint::new("http://:80/", None, timeout, "f").is_err());
    }
}
