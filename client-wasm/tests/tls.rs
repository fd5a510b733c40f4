//! TLS end to end (spec 5.1): the host's `wss` listener with the native client, mutual
//! TLS, and what a TLS-only listener says to plain clients. Certificates are made
//! fresh for each run with rcgen.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};
use wasmsocket_client::{Client, ClientConfig, Error, SecureSocket};
use wasmsocket_tests::{Host, components, scratch_dir};

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate,
/// as PEM files in a scratch directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = scratch_dir("pki");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();

        let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
            "server",
        );
        leaf(
            vec!["client".into()],
            ExtendedKeyUsagePurpose::ClientAuth,
            "client",
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn tls_host(pki: &Pki, mutual: &str) -> Host {
    let p = |name: &str| pki.path(name).display().to_string();
    Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [listener.secure_socket]\nkey = {{ cert_file = {:?}, key_file = {:?} }}\n{mutual}\n\n\
         [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n",
        p("server.pem"),
        p("server.key"),
        components::FAULTY
    ))
}

fn wss(host: &Host, path: &str) -> String {
    format!("wss://127.0.0.1:{}{path}", host.addr().port())
}

fn trusting(pki: &Pki) -> ClientConfig {
    ClientConfig::default()
        .secure_socket(SecureSocket::trust(pki.path("ca.pem")))
        .handshake_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn wss_round_trip_and_the_guest_sees_tls() {
    let pki = Pki::new();
    let host = tls_host(&pki, "");
    let mut client = Client::connect(&wss(&host, "/faulty"), trusting(&pki))
        .await
        .unwrap();
    client.write_text("info").await.unwrap();
    let info = client.read_text().await.unwrap();
    assert!(info.contains("secure=true"), "{info}");
    client.write_text("over TLS").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "over TLS");
    assert_eq!(
        client
            .close(1000, "done", Duration::from_secs(5))
            .await
            .unwrap()
            .0,
        1000
    );
}

#[tokio::test]
async fn untrusted_servers_and_plain_clients_are_refused() {
    let pki = Pki::new();
    let host = tls_host(&pki, "");
    // The Mozilla roots do not know our CA.
    match Client::connect(&wss(&host, "/faulty"), ClientConfig::default()).await {
        Err(Error::Connect(message)) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // Plain ws:// to a TLS listener gets no WebSocket.
    let plain = format!("ws://127.0.0.1:{}/faulty", host.addr().port());
    assert!(
        Client::connect(
            &plain,
            ClientConfig::default().handshake_timeout(Duration::from_secs(5))
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn mutual_tls_requires_a_trusted_client_certificate() {
    let pki = Pki::new();
    let mutual = format!(
        "mutual_ssl = {{ verify_client = \"require\", cert = {:?} }}",
        pki.path("ca.pem").display().to_string()
    );
    let host = tls_host(&pki, &mutual);
    let url = wss(&host, "/faulty");
    // Without a certificate the handshake (or the first read) fails.
    let anonymous = match Client::connect(&url, trusting(&pki)).await {
        Err(_) => true,
        Ok(mut client) => {
            client.write_text("x").await.is_err() || client.read_text().await.is_err()
        }
    };
    assert!(anonymous, "a client without a certificate was served");
    let with_identity = trusting(&pki).secure_socket(
        SecureSocket::trust(pki.path("ca.pem"))
            .identity(pki.path("client.pem"), pki.path("client.key")),
    );
    let mut client = Client::connect(&url, with_identity).await.unwrap();
    client.write_text("mutual").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "mutual");
}

#[tokio::test]
async fn a_bad_key_file_is_a_startup_error_naming_it() {
    let pki = Pki::new();
    let config = pki.path("wasmsocket.toml");
    std::fs::write(
        &config,
        format!(
            "[listener]\nport = 0\n[listener.secure_socket]\nkey = {{ cert_file = {:?}, key_file = {:?} }}\n",
            pki.path("server.pem").display().to_string(),
            pki.path("missing.key").display().to_string()
        ),
    )
    .unwrap();
    let stderr = wasmsocket_tests::failing_check(&config);
    assert!(
        stderr.contains("key_file") && stderr.contains("missing.key"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_flat_secure_socket_form_works_too() {
    // `[listener.secure_socket] cert_file = ..., key_file = ...`, as in the issue's
    // config shape, alongside `key = { ... }`.
    let pki = Pki::new();
    let p = |name: &str| pki.path(name).display().to_string();
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n[listener.secure_socket]\ncert_file = {:?}\nkey_file = {:?}\n\n\
         [[service]]\npath = \"/faulty\"\ncomponent = {:?}\n",
        p("server.pem"),
        p("server.key"),
        components::FAULTY
    ));
    let mut client = Client::connect(&wss(&host, "/faulty"), trusting(&pki))
        .await
        .unwrap();
    client.write_text("flat").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "flat");
}

/// A `wss` host whose listener offers only `versions` and `ciphers` (TOML arrays).
fn restricted_host(pki: &Pki, versions: &str, ciphers: &str) -> Host {
    tls_host(
        pki,
        &format!("protocol = {{ name = \"TLS\", versions = {versions} }}\nciphers = {ciphers}"),
    )
}

fn offering(pki: &Pki, versions: &[&str], ciphers: &[&str]) -> ClientConfig {
    trusting(pki).secure_socket(
        SecureSocket::trust(pki.path("ca.pem"))
            .protocol_versions(versions.iter().copied())
            .ciphers(ciphers.iter().copied()),
    )
}

async fn handshake_fails(url: &str, config: ClientConfig) {
    match Client::connect(url, config).await {
        Err(Error::Connect(message)) => assert!(message.contains("TLS"), "{message}"),
        other => panic!("expected a TLS handshake failure, got {other:?}"),
    }
}

#[tokio::test]
async fn client_tls_versions_must_meet_the_server_s() {
    let pki = Pki::new();
    let host = restricted_host(&pki, "[\"TLSv1.3\"]", "[]");
    let url = wss(&host, "/faulty");
    handshake_fails(&url, offering(&pki, &["TLSv1.2"], &[])).await;
    let mut client = Client::connect(&url, offering(&pki, &["TLSv1.3"], &[]))
        .await
        .unwrap();
    client.write_text("1.3").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "1.3");

    // And the other way round: a TLS 1.2 server, a TLS 1.3 client.
    let host = restricted_host(&pki, "[\"TLSv1.2\"]", "[]");
    let url = wss(&host, "/faulty");
    handshake_fails(&url, offering(&pki, &["TLSv1.3"], &[])).await;
    assert!(
        Client::connect(&url, offering(&pki, &["TLSv1.2", "TLSv1.3"], &[]))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn client_cipher_suites_must_meet_the_server_s() {
    let pki = Pki::new();
    // TLS 1.3 suites.
    let host = restricted_host(&pki, "[\"TLSv1.3\"]", "[\"TLS13_AES_128_GCM_SHA256\"]");
    let url = wss(&host, "/faulty");
    handshake_fails(&url, offering(&pki, &[], &["TLS13_AES_256_GCM_SHA384"])).await;
    assert!(
        Client::connect(&url, offering(&pki, &[], &["TLS13_AES_128_GCM_SHA256"]))
            .await
            .is_ok()
    );
    // TLS 1.2 suites (the server key is ECDSA).
    let host = restricted_host(
        &pki,
        "[\"TLSv1.2\"]",
        "[\"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\"]",
    );
    let url = wss(&host, "/faulty");
    handshake_fails(
        &url,
        offering(
            &pki,
            &[],
            &["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"],
        ),
    )
    .await;
    let mut client = Client::connect(
        &url,
        offering(&pki, &[], &["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]),
    )
    .await
    .unwrap();
    client.write_text("1.2").await.unwrap();
    assert_eq!(client.read_text().await.unwrap(), "1.2");
}

#[tokio::test]
async fn unknown_cipher_and_version_names_are_config_errors() {
    let pki = Pki::new();
    let host = tls_host(&pki, "");
    let url = wss(&host, "/faulty");
    for (config, name) in [
        (
            offering(
                &pki,
                &[],
                &["TLS13_AES_128_GCM_SHA256", "TLS_RSA_WITH_RC4_128_MD5"],
            ),
            "TLS_RSA_WITH_RC4_128_MD5",
        ),
        (offering(&pki, &["TLSv1.1"], &[]), "TLSv1.1"),
    ] {
        match Client::connect(&url, config).await {
            Err(Error::InvalidConfig(message)) => {
                assert!(message.contains(name), "{message}");
                assert!(message.starts_with("secure_socket."), "{message}");
            }
            other => panic!("expected InvalidConfig naming {name}, got {other:?}"),
        }
    }
}
