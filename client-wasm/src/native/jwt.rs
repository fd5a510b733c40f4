//! Self-issued JWTs ([`JwtIssuerConfig`]), signed with jsonwebtoken (RustCrypto).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

use crate::{Error, JwtAlgorithm, JwtIssuerConfig, JwtSigningKey, Result};

/// DER encodings of the object identifiers that tell the key kinds apart inside a
/// PKCS#8 `PrivateKeyInfo`.
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Issues and signs a token for one connection attempt.
pub(super) fn issue(config: &JwtIssuerConfig) -> Result<String> {
    let (key, fitting) = signing_key(&config.signing_key)?;
    let algorithm = match config.algorithm {
        Some(algorithm) => {
            let algorithm = jsonwebtoken_algorithm(algorithm);
            if !key.family().algorithms().contains(&algorithm) {
                return Err(Error::InvalidConfig(format!(
                    "auth.algorithm: {algorithm:?} does not fit the signing key (use one of {:?})",
                    key.family().algorithms()
                )));
            }
            algorithm
        }
        None => fitting,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut claims = serde_json::Map::new();
    if let Some(issuer) = &config.issuer {
        claims.insert("iss".into(), issuer.clone().into());
    }
    if let Some(username) = &config.username {
        claims.insert("sub".into(), username.clone().into());
    }
    match config.audience.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    if let Some(jwt_id) = &config.jwt_id {
        claims.insert("jti".into(), jwt_id.clone().into());
    }
    claims.insert("exp".into(), now.saturating_add(config.exp_time).into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    for (name, value) in &config.custom_claims {
        claims.insert(name.clone(), value.clone());
    }
    let mut header = Header::new(algorithm);
    header.kid = config.key_id.clone();
    jsonwebtoken::encode(&header, &Value::Object(claims), &key)
        .map_err(|e| Error::InvalidConfig(format!("auth: cannot sign the JWT: {e}")))
}

fn jsonwebtoken_algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Hs384 => Algorithm::HS384,
        JwtAlgorithm::Hs512 => Algorithm::HS512,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Ps256 => Algorithm::PS256,
        JwtAlgorithm::Ps384 => Algorithm::PS384,
        JwtAlgorithm::Ps512 => Algorithm::PS512,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
    }
}

/// The key, and the algorithm that fits it best.
fn signing_key(key: &JwtSigningKey) -> Result<(EncodingKey, Algorithm)> {
    let path = match key {
        JwtSigningKey::Secret(secret) if secret.is_empty() => {
            return Err(Error::InvalidConfig(
                "auth.signing_key: the HMAC secret is empty".into(),
            ));
        }
        JwtSigningKey::Secret(secret) => {
            return Ok((EncodingKey::from_secret(secret), Algorithm::HS256));
        }
        JwtSigningKey::KeyFile(path) => path,
    };
    let invalid = |what: &dyn std::fmt::Display| {
        Error::InvalidConfig(format!("auth.signing_key: {}: {what}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| invalid(&e))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| invalid(&format!("no PEM private key ({e})")))?;
    let contains = |der: &[u8], oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    match der {
        PrivateKeyDer::Pkcs1(rsa) => Ok((
            EncodingKey::from_rsa_der(rsa.secret_pkcs1_der()),
            Algorithm::RS256,
        )),
        PrivateKeyDer::Pkcs8(pkcs8) => {
            let der = pkcs8.secret_pkcs8_der();
            if contains(der, OID_RSA) {
                // jsonwebtoken wants the PKCS#1 key inside; its PEM reader unwraps it.
                let key = EncodingKey::from_rsa_pem(&pem).map_err(|e| invalid(&e))?;
                Ok((key, Algorithm::RS256))
            } else if contains(der, OID_EC_PUBLIC_KEY) {
                let algorithm = if contains(der, OID_P256) {
                    Algorithm::ES256
                } else if contains(der, OID_P384) {
                    Algorithm::ES384
                } else {
                    return Err(invalid(&"an EC key on a curve other than P-256 or P-384"));
                };
                Ok((EncodingKey::from_ec_der(der), algorithm))
            } else if contains(der, OID_ED25519) {
                Ok((EncodingKey::from_ed_der(der), Algorithm::EdDSA))
            } else {
                Err(invalid(&"a private key that is not RSA, EC or Ed25519"))
            }
        }
        PrivateKeyDer::Sec1(_) => Err(invalid(
            &"an EC key in SEC1 form (EC PRIVATE KEY); convert it to PKCS#8 with \
              `openssl pkcs8 -topk8 -nocrypt`",
        )),
        _ => Err(invalid(&"an unsupported private key format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_of(token: &str) -> serde_json::Map<String, Value> {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn claims_follow_the_configuration() {
        let config = JwtIssuerConfig::hmac("secret")
            .issuer("me")
            .username("alice")
            .audience(["a", "b"])
            .jwt_id("42")
            .claim("scope", "chat")
            .exp_time(-60);
        let claims = claims_of(&issue(&config).unwrap());
        assert_eq!(claims["iss"], "me");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
        assert_eq!(claims["jti"], "42");
        assert_eq!(claims["scope"], "chat");
        let (exp, iat) = (
            claims["exp"].as_i64().unwrap(),
            claims["iat"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, -60);

        let one = claims_of(&issue(&JwtIssuerConfig::hmac("s").audience(["ws"])).unwrap());
        assert_eq!(one["aud"], "ws");
        assert!(!one.contains_key("iss") && !one.contains_key("jti"));
    }

    #[test]
    fn keys_and_algorithms_must_fit() {
        let misfit = JwtIssuerConfig::hmac("secret").algorithm(JwtAlgorithm::Rs256);
        assert!(matches!(issue(&misfit), Err(Error::InvalidConfig(m)) if m.contains("algorithm")));
        assert!(matches!(
            issue(&JwtIssuerConfig::hmac("")),
            Err(Error::InvalidConfig(_))
        ));
        let missing = JwtIssuerConfig::key_file("/nonexistent/key.pem");
        assert!(
            matches!(issue(&missing), Err(Error::InvalidConfig(m)) if m.contains("/nonexistent/key.pem"))
        );
    }
}
