//! Client authentication end to end (spec 5.2, client side): self-issued JWTs checked
//! by the host's `jwt_validator`.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::time::Duration;

use wasmsocket_client::{Client, ClientAuth, ClientConfig, Error, JwtAlgorithm, JwtIssuerConfig};
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
