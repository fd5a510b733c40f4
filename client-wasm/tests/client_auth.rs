//! Client authentication end to end (spec 5.2, client side): self-issued JWTs checked
//! by the host's `jwt_validator`, and OAuth2 grants against a local token endpoint
//! whose tokens the host checks through `oauth2_introspection` at the same server.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wasmsocket_client::{
    Client, ClientAuth, ClientConfig, CredentialBearer, Error, JwtAlgorithm, JwtIssuerConfig,
    OAuth2Config, RetryConfig, SecureSocket,
};
use wasmsocket_tests::{Host, components, scratch_dir};

const SECRET: &str = "a shared secret for the test";

/// A host serving the `faulty` component at `/faulty` behind `auth` (TOML
/// `[[service.auth]]` tables).
fn host(auth: &str) -> Host {
    Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/faulty\"\ncomponent = {:?}\n{auth}",
        components::FAULTY,
    ))
}

async fn status(url: &str, config: ClientConfig) -> u16 {
    match Client::connect(url, config).await {
        Ok(client) => client.handshake_response().unwrap().status,
        Err(Error::Handshake { status, .. }) => status,
        Err(other) => panic!("unexpected {other:?}"),
    }
}

fn with(auth: impl Into<ClientAuth>) -> ClientConfig {
    ClientConfig::default()
        .auth(auth.into())
        .handshake_timeout(Duration::from_secs(10))
}

// ---------------------------------------------------------------- JWT issuer

fn jwt_host(signature: &str) -> Host {
    host(&format!(
        "[[service.auth]]\njwt_validator = {{ issuer = \"wasmsocket-test\", audience = [\"ws\"], signature = {signature} }}\nscopes = [\"chat\"]\n"
    ))
}

/// The claims the host above wants.
fn issued(config: JwtIssuerConfig) -> JwtIssuerConfig {
    config
        .issuer("wasmsocket-test")
        .username("carol")
        .audience(["ws"])
        .claim("scope", "chat read")
}

#[tokio::test]
async fn jwt_issuer_with_an_hmac_secret() {
    let host = jwt_host(&format!("{{ secret = {SECRET:?} }}"));
    let url = host.url("/faulty");
    let client = Client::connect(&url, with(issued(JwtIssuerConfig::hmac(SECRET))))
        .await
        .unwrap();
    let response = client.handshake_response().unwrap();
    // `sub` from the username, the scopes from a custom claim.
    assert_eq!(response.header("x-principal"), Some("carol"));
    assert_eq!(response.header("x-scopes"), Some("chat read"));

    for (what, config) in [
        (
            "wrong issuer",
            issued(JwtIssuerConfig::hmac(SECRET)).issuer("someone-else"),
        ),
        (
            "wrong audience",
            issued(JwtIssuerConfig::hmac(SECRET)).audience(["elsewhere"]),
        ),
        (
            "expired",
            issued(JwtIssuerConfig::hmac(SECRET)).exp_time(-60),
        ),
        (
            "wrong secret",
            issued(JwtIssuerConfig::hmac("not the secret")),
        ),
        (
            "HS512 is checked too",
            issued(JwtIssuerConfig::hmac("not the secret")).algorithm(JwtAlgorithm::Hs512),
        ),
    ] {
        assert_eq!(status(&url, with(config)).await, 401, "{what}");
    }
    let narrow = issued(JwtIssuerConfig::hmac(SECRET)).claim("scope", "read");
    assert_eq!(status(&url, with(narrow)).await, 403, "missing scope");
    let hs384 = issued(JwtIssuerConfig::hmac(SECRET)).algorithm(JwtAlgorithm::Hs384);
    assert_eq!(status(&url, with(hs384)).await, 101, "HS384");
}

/// Writes `pem` to a scratch file.
fn pem_file(label: &str, pem: &str) -> PathBuf {
    let path = scratch_dir("jwt-key").join(format!("{label}.pem"));
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn jwt_issuer_with_ec_keys_picks_the_curve_s_algorithm() {
    for (curve, algorithm) in [
        ("P-256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("P-384", &rcgen::PKCS_ECDSA_P384_SHA384),
    ] {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let public = pem_file("public", &key.public_key_pem());
        let host = jwt_host(&format!(
            "{{ cert_file = {:?} }}",
            public.display().to_string()
        ));
        let url = host.url("/faulty");
        let private = pem_file("private", &key.serialize_pem());
        let config = issued(JwtIssuerConfig::key_file(&private));
        assert_eq!(status(&url, with(config)).await, 101, "{curve}");

        let other = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let other = pem_file("other", &other.serialize_pem());
        assert_eq!(
            status(&url, with(issued(JwtIssuerConfig::key_file(other)))).await,
            401,
            "{curve}, a key the host does not know"
        );
    }
}

#[tokio::test]
async fn jwt_issuer_with_an_rsa_key() {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let public = pem_file("public", &public);
    let host = jwt_host(&format!(
        "{{ cert_file = {:?} }}",
        public.display().to_string()
    ));
    let url = host.url("/faulty");

    let pkcs1 = pem_file("pkcs1", &key.to_pkcs1_pem(LineEnding::LF).unwrap());
    assert_eq!(
        status(&url, with(issued(JwtIssuerConfig::key_file(&pkcs1)))).await,
        101,
        "PKCS#1, RS256 by default"
    );
    let pkcs8 = pem_file("pkcs8", &key.to_pkcs8_pem(LineEnding::LF).unwrap());
    let rs512 = issued(JwtIssuerConfig::key_file(&pkcs8)).algorithm(JwtAlgorithm::Rs512);
    assert_eq!(status(&url, with(rs512)).await, 101, "PKCS#8, RS512");

    // An algorithm that does not fit the key fails before anything is sent.
    let misfit = issued(JwtIssuerConfig::key_file(&pkcs8)).algorithm(JwtAlgorithm::Es256);
    match Client::connect(&url, with(misfit)).await {
        Err(Error::InvalidConfig(message)) => assert!(message.contains("ES256"), "{message}"),
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
}

// ---------------------------------------------------------------- OAuth2

const CLIENT_ID: &str = "app";
const CLIENT_SECRET: &str = "s3cr3t";

/// What the local authorization server has seen and issued.
#[derive(Default)]
struct AuthState {
    /// `expires_in` of the access tokens it issues.
    lifetime: u64,
    /// Whether it issues refresh tokens (rotated: each works once).
    issue_refresh: bool,
    issued: usize,
    /// access token → (scope, when it expires)
    tokens: HashMap<String, (String, Instant)>,
    refresh_tokens: HashSet<String>,
    /// The `grant_type` of every token request, in order, refused ones included.
    grants: Vec<String>,
    /// Every token the host asked about, and whether it was still valid then.
    presented: Vec<(String, bool)>,
}

/// A local OAuth2 authorization server: `/token` (client `app`/`s3cr3t`, by Basic or
/// in the body; user `alice`/`wonderland`) and `/introspect` (RFC 7662) for the host.
struct AuthServer {
    base: String,
    state: Arc<Mutex<AuthState>>,
}

impl AuthServer {
    async fn start(lifetime: u64, issue_refresh: bool) -> Self {
        Self::start_with(lifetime, issue_refresh, None).await
    }

    async fn start_with(
        lifetime: u64,
        issue_refresh: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(AuthState {
            lifetime,
            issue_refresh,
            ..AuthState::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (state, tls) = (shared.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(stream, state).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                serve(stream, state).await;
                            }
                        }
                    }
                });
            }
        });
        Self { base, state }
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    /// The `[[service.auth]]` entry for a host that checks tokens here, asking every
    /// time (no cache), and requires scope `chat`.
    fn introspection(&self, extra: &str) -> String {
        format!(
            "[[service.auth]]\noauth2_introspection = {{ url = \"{}/introspect\", cache_seconds = 0{extra} }}\nscopes = [\"chat\"]\n",
            self.base
        )
    }

    fn grants(&self) -> Vec<String> {
        self.state.lock().unwrap().grants.clone()
    }

    fn presented(&self) -> Vec<(String, bool)> {
        self.state.lock().unwrap().presented.clone()
    }

    /// Asserts that the host never saw an expired or unknown token.
    fn assert_no_stale_token(&self) {
        let presented = self.presented();
        assert!(!presented.is_empty(), "the host asked about no token");
        assert!(
            presented.iter().all(|(_, valid)| *valid),
            "a stale token reached the host: {presented:?}"
        );
    }
}

fn decode(value: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).unwrap()
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: Arc<Mutex<AuthState>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= length {
                break (head.to_owned(), body.to_owned());
            }
        }
    };
    let form: HashMap<String, String> = body
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
    let basic = head.lines().find_map(|l| {
        let value = l.strip_prefix("authorization: Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        Some((decode(id), decode(secret)))
    });
    let (status, body) = match path.as_str() {
        "/token" => token(&state, &form, basic),
        "/introspect" => introspect(&state, &form),
        _ => (404, r#"{"error":"not_found"}"#.to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn token(
    state: &Mutex<AuthState>,
    form: &HashMap<String, String>,
    basic: Option<(String, String)>,
) -> (u16, String) {
    let mut state = state.lock().unwrap();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    state.grants.push(grant.clone());
    let client = basic.or_else(|| {
        Some((
            form.get("client_id")?.clone(),
            form.get("client_secret")?.clone(),
        ))
    });
    if client != Some((CLIENT_ID.into(), CLIENT_SECRET.into())) {
        return (
            401,
            r#"{"error":"invalid_client","error_description":"client authentication failed"}"#
                .into(),
        );
    }
    let invalid_grant = (400, r#"{"error":"invalid_grant"}"#.to_owned());
    match grant.as_str() {
        "client_credentials" => {}
        "password" => {
            if form.get("username").map(String::as_str) != Some("alice")
                || form.get("password").map(String::as_str) != Some("wonder land&co")
            {
                return invalid_grant;
            }
        }
        "refresh_token" => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            if !state.refresh_tokens.remove(&presented) {
                return invalid_grant;
            }
        }
        _ => return (400, r#"{"error":"unsupported_grant_type"}"#.into()),
    }
    state.issued += 1;
    let access = format!("tok-{}", state.issued);
    let scope = form.get("scope").cloned().unwrap_or_default();
    let expires = Instant::now() + Duration::from_secs(state.lifetime);
    state
        .tokens
        .insert(access.clone(), (scope.clone(), expires));
    let mut answer = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": state.lifetime,
        "scope": scope,
    });
    if state.issue_refresh {
        let refresh = format!("ref-{}", state.issued);
        state.refresh_tokens.insert(refresh.clone());
        answer["refresh_token"] = refresh.into();
    }
    (200, answer.to_string())
}

fn introspect(state: &Mutex<AuthState>, form: &HashMap<String, String>) -> (u16, String) {
    let mut state = state.lock().unwrap();
    let presented = form.get("token").cloned().unwrap_or_default();
    let valid = state
        .tokens
        .get(&presented)
        .filter(|(_, expires)| Instant::now() < *expires)
        .map(|(scope, _)| scope.clone());
    state.presented.push((presented, valid.is_some()));
    let answer = match valid {
        Some(scope) => serde_json::json!({"active": true, "scope": scope, "sub": "app-user"}),
        None => serde_json::json!({"active": false}),
    };
    (200, answer.to_string())
}

#[tokio::test]
async fn oauth2_client_credentials_grant_is_fetched_once_and_cached() {
    let auth = AuthServer::start(300, false).await;
    let host = host(&auth.introspection(""));
    let url = host.url("/faulty");
    let oauth2 = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, CLIENT_SECRET)
        .scopes(["chat", "read"]);
    let config = with(oauth2);
    let mut client = Client::connect(&url, config.clone()).await.unwrap();
    let response = client.handshake_response().unwrap();
    assert_eq!(response.header("x-principal"), Some("app-user"));
    // The scopes asked for reached the endpoint (and came back through the host).
    assert_eq!(response.header("x-scopes"), Some("chat read"));
    client.write_text("hello").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "hello");

    // A second client from a clone of the configuration reuses the cached token.
    assert_eq!(status(&url, config.clone()).await, 101);
    assert_eq!(auth.grants(), ["client_credentials"]);
    let presented = auth.presented();
    assert_eq!(presented.len(), 2);
    assert_eq!(presented[0].0, presented[1].0);
    auth.assert_no_stale_token();

    // Revoked before its time: the upgrade gets 401, and the next connect a new token.
    auth.state.lock().unwrap().tokens.clear();
    assert_eq!(status(&url, config.clone()).await, 401);
    assert_eq!(status(&url, config).await, 101);
    assert_eq!(auth.grants(), ["client_credentials", "client_credentials"]);

    // Without the scope the host wants: 403, though the token is good.
    let narrow = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, CLIENT_SECRET)
        .scopes(["read"]);
    assert_eq!(status(&url, with(narrow)).await, 403);
}

#[tokio::test]
async fn oauth2_password_grant_refreshes_an_expired_token_with_the_refresh_token() {
    let auth = AuthServer::start(1, true).await;
    let host = host(&auth.introspection(""));
    let url = host.url("/faulty");
    // A password that needs form encoding, and the client credentials in the body.
    let oauth2 = OAuth2Config::password(auth.token_url(), "alice", "wonder land&co")
        .client(CLIENT_ID, CLIENT_SECRET)
        .credential_bearer(CredentialBearer::PostBody)
        .scopes(["chat"]);
    let config = with(oauth2);
    assert_eq!(status(&url, config.clone()).await, 101);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(status(&url, config.clone()).await, 101);
    assert_eq!(auth.grants(), ["password", "refresh_token"]);
    let presented = auth.presented();
    assert_eq!(presented.len(), 2);
    assert_ne!(presented[0].0, presented[1].0, "the second token is new");
    auth.assert_no_stale_token();

    let wrong = OAuth2Config::password(auth.token_url(), "alice", "guess")
        .client(CLIENT_ID, CLIENT_SECRET)
        .scopes(["chat"]);
    match Client::connect(&url, with(wrong)).await {
        Err(Error::TokenEndpoint {
            status: Some(400),
            error,
            ..
        }) => assert_eq!(error, "invalid_grant"),
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn oauth2_refresh_token_grant_follows_the_rotated_refresh_token() {
    let auth = AuthServer::start(1, true).await;
    auth.state
        .lock()
        .unwrap()
        .refresh_tokens
        .insert("ref-0".into());
    let host = host(&auth.introspection(""));
    let url = host.url("/faulty");
    let oauth2 = OAuth2Config::refresh_token(auth.token_url(), "ref-0", CLIENT_ID, CLIENT_SECRET)
        .scopes(["chat"]);
    let config = with(oauth2);
    assert_eq!(status(&url, config.clone()).await, 101);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // ref-0 was spent; only the rotated ref-1 works now.
    assert_eq!(status(&url, config).await, 101);
    assert_eq!(auth.grants(), ["refresh_token", "refresh_token"]);
    assert!(auth.state.lock().unwrap().refresh_tokens.contains("ref-2"));
    auth.assert_no_stale_token();
}

#[tokio::test]
async fn oauth2_short_lived_tokens_are_replaced_between_retries() {
    let auth = AuthServer::start(1, false).await;
    let host = host(&auth.introspection(""));
    let until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 2500;
    // Unavailable (503) for 2.5 s: the retries outlive the first token.
    let url = host.url(&format!("/faulty?until={until}"));
    let oauth2 = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, CLIENT_SECRET)
        .scopes(["chat"]);
    let config = with(oauth2).retry(RetryConfig::new(20, Duration::from_millis(400)));
    let started = Instant::now();
    let client = Client::connect(&url, config).await.unwrap();
    assert_eq!(client.handshake_response().unwrap().status, 101);
    assert!(started.elapsed() >= Duration::from_secs(2));
    let grants = auth.grants();
    assert!(
        grants.len() >= 2,
        "one token for 2.5 s of retries: {grants:?}"
    );
    assert!(
        grants.iter().all(|g| g == "client_credentials"),
        "{grants:?}"
    );
    // Several attempts shared each token; none went out stale.
    assert!(
        auth.presented().len() > grants.len(),
        "{:?}",
        auth.presented()
    );
    auth.assert_no_stale_token();
}

#[tokio::test]
async fn oauth2_wrong_client_secret_fails_before_any_upgrade() {
    let auth = AuthServer::start(300, false).await;
    // Stands in for the WebSocket server: counts who connects.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/faulty", server.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while server.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let oauth2 = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, "wrong");
    // Retries do not hide a refusal.
    let config = with(oauth2).retry(RetryConfig::new(3, Duration::from_millis(50)));
    match Client::connect(&url, config).await {
        Err(
            error @ Error::TokenEndpoint {
                status: Some(401), ..
            },
        ) => {
            let message = error.to_string();
            assert!(
                message.contains(&auth.token_url()) && message.contains("invalid_client"),
                "{message}"
            );
        }
        other => panic!("expected a token endpoint error, got {other:?}"),
    }
    assert_eq!(auth.grants().len(), 1, "asked once, not retried");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no upgrade was attempted"
    );

    // An endpoint nobody listens on.
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_url = format!("http://{}/token", gone.local_addr().unwrap());
    drop(gone);
    let oauth2 = OAuth2Config::client_credentials(&gone_url, CLIENT_ID, CLIENT_SECRET);
    match Client::connect(&url, with(oauth2)).await {
        Err(Error::TokenEndpoint {
            status: None,
            url: reported,
            ..
        }) => assert_eq!(reported, gone_url),
        other => panic!("expected an unreachable token endpoint, got {other:?}"),
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oauth2_token_endpoint_over_https() {
    // A CA and a certificate for 127.0.0.1, made for this run.
    let dir = scratch_dir("oauth2-tls");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let auth = AuthServer::start_with(300, false, Some(acceptor)).await;
    let host = host(&auth.introspection(&format!(", cert = {:?}", ca_file.display().to_string())));
    let url = host.url("/faulty");

    let oauth2 = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, CLIENT_SECRET)
        .scopes(["chat"])
        .secure_socket(SecureSocket::trust(&ca_file));
    assert_eq!(status(&url, with(oauth2)).await, 101);
    auth.assert_no_stale_token();

    // The Mozilla roots do not know this CA.
    let untrusting = OAuth2Config::client_credentials(auth.token_url(), CLIENT_ID, CLIENT_SECRET);
    match Client::connect(&url, with(untrusting)).await {
        Err(Error::TokenEndpoint {
            status: None,
            description,
            ..
        }) => assert!(description.contains("TLS"), "{description}"),
        other => panic!("expected a TLS failure at the token endpoint, got {other:?}"),
    }
    assert_eq!(auth.grants().len(), 1);
}
