//! OAuth2 token introspection (RFC 7662) for listener authentication: the host asks
//! the endpoint whether a bearer token is active, and caches the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::warn;

use crate::auth::Principal;
use crate::config::OAuth2IntrospectionConfig;

/// Most answers kept in the cache; beyond that the oldest are dropped.
const MAX_CACHED: usize = 10_000;
/// Largest introspection response read.
const MAX_RESPONSE: u64 = 64 * 1024;

pub(crate) struct Introspector {
    scheme_tls: Option<tokio_rustls::TlsConnector>,
    host: String,
    port: u16,
    path: String,
    token_type_hint: String,
    scope_key: String,
    authorization: Option<String>,
    cache_for: Duration,
    timeout: Duration,
    /// token → (the answer, `None` for inactive; when it expires)
    cache: Mutex<HashMap<String, (Option<Principal>, Instant)>>,
}

impl Introspector {
    pub(crate) fn new(config: &OAuth2IntrospectionConfig, field: &str) -> Result<Self, String> {
        let field = format!("{field}.oauth2_introspection");
        let (tls, rest) = if let Some(rest) = config.url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = config.url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{field}.url: must start with http:// or https://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host.to_owned(),
                port.parse().map_err(|_| format!("{field}.url: bad port"))?,
            ),
            None => (authority.to_owned(), if tls { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("{field}.url: no host"));
        }
        let scheme_tls = if tls {
            Some(connector(config.cert.as_deref(), &field)?)
        } else {
            None
        };
        let authorization = match (&config.client_id, &config.client_secret) {
            (Some(id), secret) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{id}:{}", secret.as_deref().unwrap_or("")))
            )),
            (None, Some(_)) => return Err(format!("{field}.client_secret: needs client_id")),
            (None, None) => None,
        };
        if !(config.cache_seconds.is_finite() && config.cache_seconds >= 0.0) {
            return Err(format!("{field}.cache_seconds: must be 0 or more"));
        }
        if !(config.timeout.is_finite() && config.timeout > 0.0) {
            return Err(format!("{field}.timeout: must be positive"));
        }
        Ok(Self {
            scheme_tls,
            host,
            port,
            path,
            token_type_hint: config.token_type_hint.clone(),
            scope_key: config.scope_key.clone(),
            authorization,
            cache_for: Duration::from_secs_f64(config.cache_seconds),
            timeout: Duration::from_secs_f64(config.timeout),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The principal `token` stands for, or `None` if it is not active (or the
    /// endpoint cannot say).
    pub(crate) async fn introspect(&self, token: &str) -> Option<Principal> {
        let now = Instant::now();
        if let Some((answer, until)) = self.lock().get(token)
            && *until > now
        {
            return answer.clone();
        }
        let answer = match tokio::time::timeout(self.timeout, self.ask(token)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                warn!(%error, "token introspection failed");
                return None;
            }
            Err(_) => {
                warn!("token introspection timed out");
                return None;
            }
        };
        let (principal, expires) = match answer {
            Some((principal, exp)) => (Some(principal), exp),
            None => (None, None),
        };
        if !self.cache_for.is_zero() {
            let mut until = now + self.cache_for;
            if let Some(exp) = expires {
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                until = until.min(now + Duration::from_secs(exp.saturating_sub(unix)));
            }
            let mut cache = self.lock();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (principal.clone(), until));
        }
        principal
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Principal>, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<Option<(Principal, Option<u64>)>, String> {
        let body = format!(
            "token={}&token_type_hint={}",
            form_encode(token),
            form_encode(&self.token_type_hint)
        );
        let mut request = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
             accept: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
            self.path,
            self.host,
            body.len()
        );
        if let Some(authorization) = &self.authorization {
            request.push_str(&format!("authorization: {authorization}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("{}:{}: {e}", self.host, self.port))?;
        let response = match &self.scheme_tls {
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
        let (status, body) = parse_response(&response)?;
        if status != 200 {
            return Err(format!("introspection endpoint answered {status}"));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("introspection response: {e}"))?;
        if json.get("active").and_then(|a| a.as_bool()) != Some(true) {
            return Ok(None);
        }
        let scopes = crate::auth::scopes_of(json.get(&self.scope_key));
        let subject = ["sub", "username"]
            .iter()
            .find_map(|key| json.get(*key).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_owned();
        let exp = json.get("exp").and_then(|e| e.as_u64());
        Ok(Some((
            Principal {
                subject,
                scopes,
                claims: json.to_string(),
            },
            exp,
        )))
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
        _ => return Err("malformed introspection response".into()),
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

fn connector(
    cert: Option<&std::path::Path>,
    field: &str,
) -> Result<tokio_rustls::TlsConnector, String> {
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
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
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
}
