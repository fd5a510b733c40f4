//! Listener authentication end to end (spec 5.2): Basic against a file user store,
//! JWT validation (HMAC and EC signatures), scopes, browser-friendly token carriers,
//! the principal reaching the guest, and the per-service connection limit.
#![cfg(not(target_arch = "wasm32"))]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::PasswordHasher;
use wasmsocket_client::{Client, ClientAuth, ClientConfig, Error};
use wasmsocket_tests::{Host, components, scratch_dir};

const SECRET: &str = "a shared secret for the test";

fn hash(password: &str) -> String {
    let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(
    claims: serde_json::Value,
    key: &jsonwebtoken::EncodingKey,
    algorithm: jsonwebtoken::Algorithm,
) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, key).unwrap()
}

fn hs256(claims: serde_json::Value) -> String {
    token(
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        jsonwebtoken::Algorithm::HS256,
    )
}

fn claims(scope: &str) -> serde_json::Value {
    serde_json::json!({"sub": "carol", "iss": "wasmsocket-test", "aud": "ws", "exp": now() + 300, "scope": scope})
}

/// A host whose `/faulty` service requires `auth` (TOML `[[service.auth]]` tables).
fn host(auth: &str, extra: &str) -> Host {
    let dir = scratch_dir("auth");
    let users = dir.join("users.toml");
    std::fs::write(
        &users,
        format!(
            "[[user]]\nusername = \"alice\"\npassword = {:?}\nscopes = [\"chat\", \"read\"]\n\n\
             [[user]]\nusername = \"bob\"\npassword = {:?}\nscopes = []\n",
            hash("alice's password"),
            hash("bob's password"),
        ),
    )
    .unwrap();
    Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n[[service]]\npath = \"/faulty\"\ncomponent = {:?}\n{extra}\n{}",
        components::FAULTY,
        auth.replace("USERS", &users.display().to_string())
    ))
}

async fn status(url: &str, config: ClientConfig) -> u16 {
    match Client::connect(url, config).await {
        Ok(client) => client.handshake_response().unwrap().status,
        Err(Error::Handshake { status, .. }) => status,
        Err(other) => panic!("unexpected {other:?}"),
    }
}

/// The `WWW-Authenticate` of the 401 an upgrade without credentials gets.
async fn challenge_without_credentials(url: &str) -> String {
    match Client::connect(url, ClientConfig::default()).await {
        Err(Error::Handshake {
            status: 401,
            headers,
            ..
        }) => headers
            .into_iter()
            .find(|(name, _)| name == "www-authenticate")
            .map(|(_, value)| value)
            .expect("a WWW-Authenticate header"),
        other => panic!("expected 401, got {other:?}"),
    }
}

fn basic(username: &str, password: &str) -> ClientConfig {
    ClientConfig::default().auth(ClientAuth::Basic {
        username: username.into(),
        password: password.into(),
    })
}

fn bearer(token: String) -> ClientConfig {
    ClientConfig::default().auth(ClientAuth::Bearer { token })
}

const FILE_STORE: &str = "[[service.auth]]\nfile_user_store = \"USERS\"\nscopes = [\"chat\"]\n";

#[tokio::test]
async fn basic_auth_against_a_file_user_store() {
    let host = host(FILE_STORE, "");
    let url = host.url("/faulty");
    assert_eq!(
        challenge_without_credentials(&url).await,
        "Basic realm=\"wasmsocket\""
    );
    assert_eq!(status(&url, basic("alice", "wrong")).await, 401);
    assert_eq!(status(&url, basic("nobody", "x")).await, 401);
    // Bob is who he says, but lacks the scope.
    assert_eq!(status(&url, basic("bob", "bob's password")).await, 403);

    let mut alice = Client::connect(&url, basic("alice", "alice's password"))
        .await
        .unwrap();
    let response = alice.handshake_response().unwrap();
    assert_eq!(response.header("x-principal"), Some("alice"));
    assert_eq!(response.header("x-scopes"), Some("chat read"));
    alice.write_text("hello").await.unwrap();
    assert_eq!(alice.read_text().await.unwrap(), "hello");
}

const JWT: &str = "[[service.auth]]\njwt_validator = { issuer = \"wasmsocket-test\", audience = [\"ws\"], clock_skew = 5, signature = { secret = \"a shared secret for the test\" } }\nscopes = [\"chat\"]\n";

#[tokio::test]
async fn jwt_validation() {
    let host = host(
        JWT,
        "token_query_param = \"access_token\"\ntoken_subprotocol_prefix = \"bearer.\"",
    );
    let url = host.url("/faulty");
    let valid = hs256(claims("chat read"));
    let client = Client::connect(&url, bearer(valid.clone())).await.unwrap();
    assert_eq!(
        client.handshake_response().unwrap().header("x-principal"),
        Some("carol")
    );

    let mut expired = claims("chat");
    expired["exp"] = (now() - 60).into();
    let mut wrong_issuer = claims("chat");
    wrong_issuer["iss"] = "someone-else".into();
    let mut wrong_audience = claims("chat");
    wrong_audience["aud"] = "elsewhere".into();
    let forged = token(
        claims("chat"),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret"),
        jsonwebtoken::Algorithm::HS256,
    );
    for (what, token) in [
        ("expired", hs256(expired)),
        ("wrong issuer", hs256(wrong_issuer)),
        ("wrong audience", hs256(wrong_audience)),
        ("bad signature", forged),
        ("garbage", "not.a.jwt".to_owned()),
    ] {
        assert_eq!(status(&url, bearer(token)).await, 401, "{what}");
    }
    assert_eq!(
        status(&url, bearer(hs256(claims("read")))).await,
        403,
        "missing scope"
    );

    // Browsers: the token in the query, or in a subprotocol offer.
    let in_query = format!("{url}?access_token={valid}");
    assert_eq!(status(&in_query, ClientConfig::default()).await, 101);
    let offer =
        ClientConfig::default().subprotocols([format!("bearer.{valid}"), "faulty.v1".to_owned()]);
    let mut client = Client::connect(&url, offer).await.unwrap();
    // The token offer is hidden from the guest, which picks faulty.v1.
    assert_eq!(client.negotiated_subprotocol(), Some("faulty.v1"));
    client.write_text("info").await.unwrap();
    assert!(
        client
            .read_text()
            .await
            .unwrap()
            .contains("subprotocol=faulty.v1")
    );
}

#[tokio::test]
async fn tokens_in_urls_are_off_by_default() {
    let host = host(JWT, "");
    let url = format!(
        "{}?access_token={}",
        host.url("/faulty"),
        hs256(claims("chat"))
    );
    assert_eq!(status(&url, ClientConfig::default()).await, 401);
}

#[tokio::test]
async fn jwt_signed_with_an_ec_key() {
    let key = rcgen::KeyPair::generate().unwrap();
    let dir = scratch_dir("jwt-ec");
    let public = dir.join("public.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let auth = format!(
        "[[service.auth]]\njwt_validator = {{ issuer = \"wasmsocket-test\", signature = {{ cert_file = {:?} }} }}\n",
        public.display().to_string()
    );
    let host = host(&auth, "");
    let signing = jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
    let good = token(claims("chat"), &signing, jsonwebtoken::Algorithm::ES256);
    assert_eq!(status(&host.url("/faulty"), bearer(good)).await, 101);
    let other = rcgen::KeyPair::generate().unwrap();
    let other = jsonwebtoken::EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let bad = token(claims("chat"), &other, jsonwebtoken::Algorithm::ES256);
    assert_eq!(status(&host.url("/faulty"), bearer(bad)).await, 401);
}

#[tokio::test]
async fn the_first_entry_that_succeeds_wins() {
    let both = format!("{}{}", FILE_STORE.replace("\"chat\"", "\"admin\""), JWT);
    let host = host(&both, "");
    let url = host.url("/faulty");
    assert_eq!(status(&url, bearer(hs256(claims("chat")))).await, 101);
    // Alice authenticates against the file store but lacks "admin": 403.
    assert_eq!(status(&url, basic("alice", "alice's password")).await, 403);
    assert_eq!(
        challenge_without_credentials(&url).await,
        "Basic realm=\"wasmsocket\", Bearer realm=\"wasmsocket\""
    );
}

#[tokio::test]
async fn connection_limit_per_service() {
    let host = host("", "[service.limits]\nmax_connections = 2");
    let url = host.url("/faulty");
    let mut first = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    let _second = Client::connect(&url, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(status(&url, ClientConfig::default()).await, 503);
    first.close(1000, "", Duration::from_secs(5)).await.unwrap();
    // The slot is free once the first connection has ended.
    let mut attempts = 0;
    while status(&url, ClientConfig::default()).await != 101 {
        attempts += 1;
        assert!(attempts < 50, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn plaintext_passwords_are_refused_at_start() {
    let dir = scratch_dir("plaintext");
    std::fs::write(
        dir.join("users.toml"),
        "[[user]]\nusername = \"eve\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let config = dir.join("wasmsocket.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[[service]]\npath = \"/x\"\ncomponent = {:?}\n[[service.auth]]\nfile_user_store = \"users.toml\"\n",
            components::ECHO
        ),
    )
    .unwrap();
    let stderr = wasmsocket_tests::failing_check(&config);
    assert!(
        stderr.contains("service[0].auth[0].file_user_store") && stderr.contains("PHC"),
        "{stderr}"
    );
}

/// A local RFC 7662 endpoint: `good` is active with scope `chat`, `narrow` is active
/// with scope `read`, anything else is inactive. Counts the requests it answers and
/// insists on the host's client credentials.
async fn introspection_endpoint() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/introspect", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let answered = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The host sends the whole request, then waits for the answer.
                while !String::from_utf8_lossy(&request).contains("token_type_hint=") {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                let request = String::from_utf8_lossy(&request).into_owned();
                answered.fetch_add(1, Ordering::SeqCst);
                let authorized = request.contains("authorization: Basic aG9zdDpzM2NyM3Q=");
                let token = request
                    .split("token=")
                    .nth(1)
                    .unwrap_or("")
                    .split('&')
                    .next()
                    .unwrap_or("");
                let exp = now() + 300;
                let body = match (authorized, token) {
                    (false, _) => String::from(r#"{"error":"unauthorized"}"#),
                    (true, "good") => {
                        format!(r#"{{"active":true,"scope":"chat read","sub":"dave","exp":{exp}}}"#)
                    }
                    (true, "narrow") => {
                        format!(r#"{{"active":true,"scope":"read","sub":"erin","exp":{exp}}}"#)
                    }
                    _ => String::from(r#"{"active":false}"#),
                };
                let status = if authorized {
                    "200 OK"
                } else {
                    "401 Unauthorized"
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).await.unwrap();
            });
        }
    });
    (url, count)
}

#[tokio::test]
async fn oauth2_introspection() {
    use std::sync::atomic::Ordering;
    let (endpoint, count) = introspection_endpoint().await;
    let auth = format!(
        "[[service.auth]]\noauth2_introspection = {{ url = {endpoint:?}, client_id = \"host\", client_secret = \"s3cr3t\" }}\nscopes = [\"chat\"]\n"
    );
    let host = host(&auth, "");
    let url = host.url("/faulty");
    let client = Client::connect(&url, bearer("good".into())).await.unwrap();
    assert_eq!(
        client.handshake_response().unwrap().header("x-principal"),
        Some("dave")
    );
    assert_eq!(
        status(&url, bearer("revoked".into())).await,
        401,
        "revoked token"
    );
    assert_eq!(
        status(&url, bearer("narrow".into())).await,
        403,
        "missing scope"
    );
    assert_eq!(status(&url, ClientConfig::default()).await, 401, "no token");
    let asked = count.load(Ordering::SeqCst);
    // A second connection with the same token is answered from the cache.
    assert_eq!(status(&url, bearer("good".into())).await, 101);
    assert_eq!(count.load(Ordering::SeqCst), asked, "the answer was cached");

    // Wrong client credentials at the endpoint: nobody gets in.
    let wrong = auth.replace("s3cr3t", "nope");
    let refused = self::host(&wrong, "");
    assert_eq!(
        status(&refused.url("/faulty"), bearer("good".into())).await,
        401
    );
}
