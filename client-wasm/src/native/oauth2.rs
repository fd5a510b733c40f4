//! OAuth2 access tokens for [`crate::ClientAuth::OAuth2`]: a form `POST` to the token
//! endpoint (RFC 6749 §4.3, §4.4, §6) over HTTP/1.1 or HTTPS, a cache shared by the
//! config's clones, and a refresh (or a new grant) once a token is about to expire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{CredentialBearer, Error, OAuth2Config, OAuth2Grant, Result};

/// Largest token endpoint answer read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest lifetime believed, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// The tokens an [`OAuth2Config`] and its clones share. The lock is held while a token
/// is fetched, so concurrent connects ask the endpoint once and never spend one
/// refresh token twice.
#[derive(Clone, Default)]
pub(crate) struct TokenCache(Arc<tokio::sync::Mutex<Cached>>);

#[derive(Default)]
struct Cached {
    /// The access token and the instant it stops being used.
    access: Option<(String, Instant)>,
    /// The latest refresh token the endpoint gave.
    refresh: Option<String>,
}

// The cache is state, not configuration: configurations compare by their settings.
impl PartialEq for TokenCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for TokenCache {}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

/// A token for the next upgrade request: the cached one while it is valid, else a
/// fresh one from the endpoint.
pub(super) async fn access_token(config: &OAuth2Config) -> Result<String> {
    let mut cached = config.cache.0.lock().await;
    if let Some((token, until)) = &cached.access
        && Instant::now() < *until
    {
        return Ok(token.clone());
    }
    cached.access = None;
    let started = Instant::now();
    let configured = match &config.grant {
        OAuth2Grant::RefreshToken { refresh_token } => Some(refresh_token.clone()),
        _ => None,
    };
    let response = match cached.refresh.clone().or_else(|| configured.clone()) {
        Some(refresh) => {
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
            ];
            match request(config, &form).await {
                Ok(response) => response,
                // A refused refresh token (expired, revoked): start over with the
                // grant, when it is one that can be repeated.
                Err(Error::TokenEndpoint {
                    status: Some(400 | 401),
                    ..
                }) if configured.is_none() => {
                    cached.refresh = None;
                    request(config, &grant_form(&config.grant)).await?
                }
                Err(error) => return Err(error),
            }
        }
        None => request(config, &grant_form(&config.grant)).await?,
    };
    let lifetime = response
        .expires_in
        .map_or(config.default_token_expires_in, Duration::from_secs)
        .min(MAX_LIFETIME)
        .saturating_sub(config.clock_skew);
    cached.access = Some((response.access_token.clone(), started + lifetime));
    if let Some(refresh) = response.refresh_token {
        cached.refresh = Some(refresh);
    }
    Ok(response.access_token)
}

/// Drops `token` from the cache (the server refused it), keeping the refresh token.
pub(super) async fn forget(config: &OAuth2Config, token: &str) {
    let mut cached = config.cache.0.lock().await;
    if cached.access.as_ref().is_some_and(|(t, _)| t == token) {
        cached.access = None;
    }
}

fn grant_form(grant: &OAuth2Grant) -> Vec<(&'static str, &str)> {
    match grant {
        OAuth2Grant::ClientCredentials => vec![("grant_type", "client_credentials")],
        OAuth2Grant::Password { username, password } => vec![
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ],
        OAuth2Grant::RefreshToken { refresh_token } => vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    }
}

/// A successful token response (RFC 6749 §5.1).
#[derive(Debug)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

/// Asks the endpoint with `grant` plus the configured scopes, parameters and client
/// credentials.
async fn request(config: &OAuth2Config, grant: &[(&str, &str)]) -> Result<TokenResponse> {
    let failed = |status: Option<u16>, error: &str, description: String| Error::TokenEndpoint {
        url: config.token_url.clone(),
        status,
        error: error.to_owned(),
        description,
    };
    let url = crate::parse_http_url(&config.token_url)
        .map_err(|reason| Error::InvalidConfig(format!("auth.token_url: {reason}")))?;
    let connector = if url.secure {
        Some(super::tls::connector(
            config.secure_socket.as_ref(),
            "auth.secure_socket",
        )?)
    } else {
        None
    };

    let mut form: Vec<(&str, &str)> = grant.to_vec();
    let scopes: Vec<&str> = config
        .scopes
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    let scope = scopes.join(" ");
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    for (name, value) in &config.optional_params {
        form.push((name, value));
    }
    let mut authorization = String::new();
    if let Some(id) = &config.client_id {
        let secret = config.client_secret.as_deref().unwrap_or("");
        match config.credential_bearer {
            // RFC 6749 §2.3.1: both form-encoded, then Basic.
            CredentialBearer::AuthHeader => {
                let credentials = base64::engine::general_purpose::STANDARD.encode(format!(
                    "{}:{}",
                    form_encode(id),
                    form_encode(secret)
                ));
                authorization = format!("authorization: Basic {credentials}\r\n");
            }
            CredentialBearer::PostBody => {
                form.push(("client_id", id));
                form.push(("client_secret", secret));
            }
        }
    }
    let body: Vec<String> = form
        .iter()
        .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect();
    let body = body.join("&");
    let request = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/x-www-form-urlencoded\r\n\
         accept: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{authorization}\r\n{body}",
        url.target,
        url.authority,
        body.len()
    );

    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| failed(None, "", format!("cannot connect: {e}")))?;
    let answer = match connector {
        None => exchange(tcp, &request).await,
        Some(connector) => {
            let name = rustls_pki_types::ServerName::try_from(url.host.clone()).map_err(|e| {
                Error::InvalidConfig(format!(
                    "auth.token_url: {:?} is not a TLS server name: {e}",
                    url.host
                ))
            })?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| failed(None, "", format!("TLS handshake: {e}")))?;
            exchange(tls, &request).await
        }
    };
    let (status, body) = answer.map_err(|e| failed(None, "", e))?;

    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let access_token = field("access_token");
    if !(200..300).contains(&status) || access_token.is_empty() {
        let description = match (&json, field("error_description")) {
            (None, _) => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(200).collect();
                if (200..300).contains(&status) {
                    format!("the answer is not JSON: {text}")
                } else {
                    text
                }
            }
            (Some(_), d) if d.is_empty() && (200..300).contains(&status) => {
                "the answer has no access_token".to_owned()
            }
            (Some(_), d) => d,
        };
        return Err(failed(Some(status), &field("error"), description));
    }
    if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(failed(
            Some(status),
            "",
            "the access_token has characters a bearer token cannot have".into(),
        ));
    }
    let expires_in = json
        .as_ref()
        .and_then(|j| j.get("expires_in"))
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        });
    let refresh_token = Some(field("refresh_token")).filter(|t| !t.is_empty());
    Ok(TokenResponse {
        access_token,
        expires_in,
        refresh_token,
    })
}

/// Sends `request` and reads the answer: its status and body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &str,
) -> Result<(u16, Vec<u8>), String> {
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(answer) = parse_response(&buf, false)? {
            return Ok(answer);
        }
        if buf.len() > MAX_RESPONSE {
            return Err(format!("the answer is larger than {MAX_RESPONSE} bytes"));
        }
        let n = match io.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the end all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("reading the answer: {e}")),
        };
        if n == 0 {
            return parse_response(&buf, true)?
                .ok_or_else(|| "the connection closed in the middle of the answer".to_owned());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status and body of `buf`, once it holds a whole response (`at_eof`: nothing
/// more will come); `None` while more is needed.
fn parse_response(buf: &[u8], at_eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed answer: {e}")),
    };
    let status = parsed.code.unwrap_or(0);
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let body = &buf[head..];
    if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        return match dechunk(body)? {
            Some(body) => Ok(Some((status, body))),
            None if at_eof => Err("truncated chunked answer".into()),
            None => Ok(None),
        };
    }
    if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad content-length {length:?}"))?;
        if body.len() >= length {
            return Ok(Some((status, body[..length].to_vec())));
        }
        return if at_eof {
            Err("truncated answer".into())
        } else {
            Ok(None)
        };
    }
    Ok(at_eof.then(|| (status, body.to_vec())))
}

/// Undoes a chunked transfer encoding; `None` until the last chunk has arrived.
fn dechunk(mut body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&body[..line_end]);
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .ok()
            .filter(|size| *size <= MAX_RESPONSE)
            .ok_or_else(|| format!("bad chunk size {size:?}"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if body.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// `application/x-www-form-urlencoded`, every byte but the unreserved ones escaped.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_whole_whatever_their_framing() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(plain, false).unwrap(),
            Some((200, b"{}".to_vec()))
        );
        assert_eq!(
            parse_response(&plain[..plain.len() - 1], false).unwrap(),
            None
        );
        assert!(parse_response(&plain[..plain.len() - 1], true).is_err());

        let chunked = b"HTTP/1.1 400 Bad\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap(),
            Some((400, b"{\"a\":1}".to_vec()))
        );
        assert_eq!(parse_response(&chunked[..60], false).unwrap(), None);

        let until_close = b"HTTP/1.1 200 OK\r\n\r\n{\"x\":1}";
        assert_eq!(parse_response(until_close, false).unwrap(), None);
        assert_eq!(
            parse_response(until_close, true).unwrap(),
            Some((200, b"{\"x\":1}".to_vec()))
        );
        assert!(parse_response(b"garbage\r\n\r\n", true).is_err());
    }

    #[test]
    fn form_values_are_escaped() {
        assert_eq!(form_encode("a b+c/=&"), "a%20b%2Bc%2F%3D%26");
        assert_eq!(form_encode("plain-1.0_~"), "plain-1.0_~");
    }
}
