//! Listener authentication against identity services started by the test (spec 5.2):
//! Basic credentials checked in a real OpenLDAP `slapd` (Debian's package, plain and
//! `ldaps://`), and JWTs verified with keys from a JWKS URL served by the test, with
//! key rotation.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wasmsocket_tests::{Host, components, free_port, scratch_dir};

/// The upgrade's status and the principal the guest saw (its `x-principal` and
/// `x-scopes` response headers), or the `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    principal: Option<String>,
    scopes: Option<String>,
    challenge: Option<String>,
}

async fn upgrade(url: &str, authorization: Option<String>) -> Outcome {
    let mut request = url.into_client_request().unwrap();
    if let Some(value) = authorization {
        request
            .headers_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let response = match tokio_tungstenite::connect_async(request).await {
        Ok((_, response)) => response.map(|_| None::<Vec<u8>>),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => *response,
        Err(other) => panic!("upgrade failed: {other}"),
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Outcome {
        status: response.status().as_u16(),
        principal: header("x-principal"),
        scopes: header("x-scopes"),
        challenge: header("www-authenticate"),
    }
}

fn basic(username: &str, password: &str) -> Option<String> {
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    ))
}

/// A throwaway CA and a certificate it signed for `localhost`/127.0.0.1; returns
/// the CA file, certificate file and key file.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wasmsocket test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let files = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&files.0, ca_cert.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    (files.0, files.1, files.2)
}

/// A real `slapd` with a small directory: alice in groups `chat` and `read`, bob in
/// none, carol in `read`. Killed when dropped.
struct Slapd {
    child: Child,
    ldap: u16,
    ldaps: u16,
    ca: PathBuf,
}

impl Slapd {
    fn start() -> Self {
        let slapd = Path::new("/usr/sbin/slapd");
        assert!(
            slapd.exists(),
            "OpenLDAP's slapd is missing: run scripts/setup.sh (installs Debian's slapd)"
        );
        let dir = scratch_dir("slapd");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let (ca, cert, key) = certificates(&dir);
        let config = dir.join("slapd.conf");
        std::fs::write(
            &config,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {dir}/slapd.pid\n\
                 TLSCACertificateFile {ca}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n\
                 database mdb\nmaxsize 10485760\nsuffix \"dc=example,dc=com\"\n\
                 rootdn \"cn=admin,dc=example,dc=com\"\nrootpw admin-secret\n\
                 directory {dir}/data\n",
                dir = dir.display(),
                ca = ca.display(),
                cert = cert.display(),
                key = key.display(),
            ),
        )
        .unwrap();
        let mut seed = String::from(
            "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=users,dc=example,dc=com\nobjectClass: organizationalUnit\nou: users\n\n\
             dn: ou=groups,dc=example,dc=com\nobjectClass: organizationalUnit\nou: groups\n\n",
        );
        for (user, password) in [
            ("alice", "alice's password"),
            ("bob", "bob's password"),
            ("carol", "carol's password"),
        ] {
            seed += &format!(
                "dn: uid={user},ou=users,dc=example,dc=com\nobjectClass: inetOrgPerson\n\
                 uid: {user}\ncn: {user}\nsn: {user}\nuserPassword: {password}\n\n"
            );
        }
        for (group, members) in [("chat", &["alice"][..]), ("read", &["alice", "carol"][..])] {
            seed += &format!(
                "dn: cn={group},ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {group}\n"
            );
            for member in members {
                seed += &format!("member: uid={member},ou=users,dc=example,dc=com\n");
            }
            seed += "\n";
        }
        let seed_file = dir.join("seed.ldif");
        std::fs::write(&seed_file, seed).unwrap();
        let status = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(&config)
            .arg("-l")
            .arg(&seed_file)
            .stdout(Stdio::null())
            .status()
            .expect("run slapadd");
        assert!(status.success(), "slapadd failed");
        let (ldap, ldaps) = (free_port(), free_port());
        let child = Command::new(slapd)
            .arg("-f")
            .arg(&config)
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{ldap}/ ldaps://127.0.0.1:{ldaps}/"
            ))
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start slapd");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", ldaps)).is_err() {
            assert!(std::time::Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            ldap,
            ldaps,
            ca,
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ldap_store(url: &str, extra: &str) -> String {
    format!(
        "[[service.auth]]\nscopes = [\"chat\"]\n[service.auth.ldap_user_store]\n\
         domain_name = \"example.com\"\nconnection_url = \"{url}\"\n\
         connection_name = \"cn=admin,dc=example,dc=com\"\nconnection_password = \"admin-secret\"\n\
         user_search_base = \"ou=users,dc=example,dc=com\"\n\
         group_search_base = [\"ou=groups,dc=example,dc=com\"]\n{extra}\n"
    )
}

/// Spec 5.2, `LdapUserStoreConfig`: the directory decides who is who, its groups are
/// the scopes, and a missing group is 403.
#[tokio::test]
async fn ldap_user_store() {
    let mut slapd = Slapd::start();
    let ca = slapd.ca.display().to_string();
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [[service]]\npath = \"/ldap\"\ncomponent = {c:?}\n{plain}\n\
         [[service]]\npath = \"/ldaps\"\ncomponent = {c:?}\n{tls}\n\
         [[service]]\npath = \"/starttls\"\ncomponent = {c:?}\n{starttls}\n\
         [[service]]\npath = \"/untrusted\"\ncomponent = {c:?}\n{untrusted}\n\
         [[service]]\npath = \"/open\"\ncomponent = {c:?}\n",
        c = components::FAULTY,
        plain = ldap_store(&format!("ldap://127.0.0.1:{}", slapd.ldap), ""),
        tls = ldap_store(
            &format!("ldaps://localhost:{}", slapd.ldaps),
            &format!("cert = {ca:?}")
        ),
        untrusted = ldap_store(&format!("ldaps://localhost:{}", slapd.ldaps), ""),
        starttls = ldap_store(
            &format!("ldap://localhost:{}", slapd.ldap),
            &format!("start_tls = true\ncert = {ca:?}")
        ),
    ));
    let url = host.url("/ldap");

    let alice = upgrade(&url, basic("alice", "alice's password")).await;
    assert_eq!(alice.status, 101);
    assert_eq!(alice.principal.as_deref(), Some("alice"));
    assert_eq!(alice.scopes.as_deref(), Some("chat read"));

    for path in ["/ldaps", "/starttls"] {
        let over_tls = upgrade(&host.url(path), basic("alice", "alice's password")).await;
        assert_eq!(over_tls.status, 101, "{path}");
    }

    // A directory whose certificate is not trusted is not asked.
    assert_eq!(
        upgrade(&host.url("/untrusted"), basic("alice", "alice's password"))
            .await
            .status,
        401
    );

    // Wrong, empty (an unauthenticated bind would "succeed") and unknown.
    for (user, password) in [
        ("alice", "bob's password"),
        ("alice", ""),
        ("mallory", "x"),
        // Filter injection: escaped, so it matches nobody.
        ("*", "alice's password"),
        ("alice)(uid=*", "alice's password"),
    ] {
        let outcome = upgrade(&url, basic(user, password)).await;
        assert_eq!(outcome.status, 401, "{user}:{password}");
        assert_eq!(
            outcome.challenge.as_deref(),
            Some("Basic realm=\"wasmsocket\"")
        );
    }
    assert_eq!(upgrade(&url, None).await.status, 401);

    // Right password, outside the group.
    assert_eq!(
        upgrade(&url, basic("bob", "bob's password")).await.status,
        403
    );
    assert_eq!(
        upgrade(&url, basic("carol", "carol's password"))
            .await
            .status,
        403
    );

    // The directory goes away: authentication fails closed, the host keeps serving.
    drop(slapd.child.kill());
    let _ = slapd.child.wait();
    assert_eq!(
        upgrade(&url, basic("alice", "alice's password"))
            .await
            .status,
        401
    );
    assert_eq!(upgrade(&host.url("/open"), None).await.status, 101);
}

/// A JWKS endpoint serving whatever key set the test puts in it; counts fetches.
struct JwksServer {
    addr: SocketAddr,
    document: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let document = Arc::new(Mutex::new(document));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let (doc, count) = (doc.clone(), count.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.ends_with(b"\r\n\r\n") {
                        let n = tcp.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    assert!(request.starts_with(b"GET /keys HTTP/1.1\r\n"));
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    tcp.write_all(response.as_bytes()).await.unwrap();
                });
            }
        });
        Self {
            addr,
            document,
            fetches,
        }
    }
}

/// An ES256 signing key and its public JWK.
struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Self {
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
                .unwrap(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..]),
            }),
        }
    }

    fn sign(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

fn key_set(keys: &[&SigningKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
        .to_string()
}

fn claims(scope: &str, exp_in: i64) -> serde_json::Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    serde_json::json!({"sub": "dave", "iss": "idp", "exp": now + exp_in, "scope": scope})
}

fn bearer(token: String) -> Option<String> {
    Some(format!("Bearer {token}"))
}

/// Spec 5.2, `JwtValidatorConfig` with a JWKS signature: keys come from the URL, are
/// cached, and a rotated-in key id is fetched once it is seen.
#[tokio::test]
async fn jwks_signature() {
    let first = SigningKey::generate("k1");
    let second = SigningKey::generate("k2");
    let jwks = JwksServer::start(key_set(&[&first])).await;
    let host = Host::start(&format!(
        "[listener]\nhost = \"127.0.0.1\"\nport = 0\n\n\
         [[service]]\npath = \"/jwt\"\ncomponent = {:?}\n\
         [[service.auth]]\nscopes = [\"chat\"]\n[service.auth.jwt_validator]\nissuer = \"idp\"\n\
         signature = {{ jwks = {{ url = \"http://{}/keys\" }} }}\n",
        components::FAULTY,
        jwks.addr
    ));
    let url = host.url("/jwt");

    let ok = upgrade(&url, bearer(first.sign("k1", claims("chat", 60)))).await;
    assert_eq!((ok.status, ok.principal.as_deref()), (101, Some("dave")));
    assert_eq!(
        upgrade(&url, bearer(first.sign("k1", claims("chat", 60))))
            .await
            .status,
        101
    );
    assert_eq!(
        jwks.fetches.load(Ordering::SeqCst),
        1,
        "keys are cached between tokens"
    );

    // Signed by a key the set does not hold, under a key id it does.
    let forged = upgrade(&url, bearer(second.sign("k1", claims("chat", 60)))).await;
    assert_eq!(forged.status, 401);
    assert_eq!(
        forged.challenge.as_deref(),
        Some("Bearer realm=\"wasmsocket\"")
    );
    // Algorithm confusion: HS256 keyed with the public key's coordinates.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("k1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims("chat", 60),
        &jsonwebtoken::EncodingKey::from_secret(first.jwk["x"].as_str().unwrap().as_bytes()),
    )
    .unwrap();
    assert_eq!(upgrade(&url, bearer(confused)).await.status, 401);
    assert_eq!(
        upgrade(&url, bearer(first.sign("k1", claims("chat", -120))))
            .await
            .status,
        401,
        "expired"
    );
    assert_eq!(
        upgrade(&url, bearer(first.sign("k1", claims("read", 60))))
            .await
            .status,
        403,
        "missing scope"
    );

    // Rotation: the issuer starts signing with k2 and publishes it.
    *jwks.document.lock().unwrap() = key_set(&[&first, &second]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = jwks.fetches.load(Ordering::SeqCst);
    let rotated = upgrade(&url, bearer(second.sign("k2", claims("chat", 60)))).await;
    assert_eq!(rotated.status, 101);
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), before + 1);
    // Unknown key ids do not make the host hammer the endpoint.
    for _ in 0..5 {
        let unknown = upgrade(&url, bearer(second.sign("k9", claims("chat", 60)))).await;
        assert_eq!(unknown.status, 401);
    }
    assert!(jwks.fetches.load(Ordering::SeqCst) <= before + 2);
    std::io::stderr().flush().unwrap();
}
