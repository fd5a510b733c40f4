//! Client authentication (spec 5.2, client side): Ballerina's `CredentialsConfig`,
//! `BearerTokenConfig` and `JwtIssuerConfig`.
//!
//! All of them end up in the upgrade request's `Authorization` header, which a
//! browser's `WebSocket` cannot send: they are native only.

use std::path::PathBuf;

/// Credentials sent with the upgrade request (spec 5.2, client). Native only: a
/// browser's `WebSocket` cannot send an `Authorization` header (see the crate docs for
/// what a browser can do instead).
///
/// `Debug` output leaves secrets out.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic authentication (`CredentialsConfig`).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// A bearer token (`BearerTokenConfig`).
    Bearer {
        /// The token.
        token: String,
    },
    /// A JWT the client issues and signs itself, anew for every connection attempt,
    /// sent as a bearer token (`JwtIssuerConfig`).
    Jwt(JwtIssuerConfig),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            ClientAuth::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
            ClientAuth::Jwt(jwt) => f.debug_tuple("Jwt").field(jwt).finish(),
        }
    }
}

impl From<JwtIssuerConfig> for ClientAuth {
    fn from(config: JwtIssuerConfig) -> Self {
        ClientAuth::Jwt(config)
    }
}

/// A JWT signing algorithm (the JWS `alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 (`HS256`).
    Hs256,
    /// HMAC with SHA-384 (`HS384`).
    Hs384,
    /// HMAC with SHA-512 (`HS512`).
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`), Ballerina's default.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384 (`RS384`).
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512 (`RS512`).
    Rs512,
    /// RSASSA-PSS with SHA-256 (`PS256`).
    Ps256,
    /// RSASSA-PSS with SHA-384 (`PS384`).
    Ps384,
    /// RSASSA-PSS with SHA-512 (`PS512`).
    Ps512,
    /// ECDSA with P-256 and SHA-256 (`ES256`).
    Es256,
    /// ECDSA with P-384 and SHA-384 (`ES384`).
    Es384,
    /// Ed25519 (`EdDSA`).
    EdDsa,
}

/// The key a JWT is signed with.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtSigningKey {
    /// A shared secret for the HMAC algorithms.
    Secret(Vec<u8>),
    /// A PEM file holding the private key: RSA (PKCS#1 `RSA PRIVATE KEY` or PKCS#8
    /// `PRIVATE KEY`), or EC P-256/P-384 or Ed25519 (PKCS#8 `PRIVATE KEY`; convert a
    /// SEC1 `EC PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt`).
    KeyFile(PathBuf),
}

impl std::fmt::Debug for JwtSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtSigningKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            JwtSigningKey::KeyFile(path) => f.debug_tuple("KeyFile").field(path).finish(),
        }
    }
}

/// The default lifetime of an issued JWT (Ballerina's `expTime`).
pub const DEFAULT_JWT_EXP_TIME: i64 = 300;

/// A self-issued JWT: Ballerina's `JwtIssuerConfig`.
///
/// The client signs a fresh token for every connection attempt (reconnects included)
/// with `iat` and `nbf` set to now and `exp` to now plus `exp_time`, and sends it as
/// `Authorization: Bearer <jwt>`. Native only.
///
/// ```
/// use wasmsocket_client::{ClientAuth, ClientConfig, JwtIssuerConfig};
///
/// let jwt = JwtIssuerConfig::hmac("a shared secret")
///     .issuer("my-app")
///     .username("alice")
///     .audience(["ws"])
///     .claim("scope", "chat read");
/// let config = ClientConfig::default().auth(ClientAuth::Jwt(jwt));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtIssuerConfig {
    /// The `iss` claim.
    pub issuer: Option<String>,
    /// The `sub` claim (Ballerina's `username`).
    pub username: Option<String>,
    /// The `aud` claim: one value goes as a string, several as an array, none leaves
    /// the claim out.
    pub audience: Vec<String>,
    /// The `jti` claim.
    pub jwt_id: Option<String>,
    /// The `kid` header.
    pub key_id: Option<String>,
    /// More claims (Ballerina's `customClaims`), added last: a custom claim with a
    /// registered name replaces the computed one.
    pub custom_claims: serde_json::Map<String, serde_json::Value>,
    /// Seconds from issue to `exp` (Ballerina's `expTime`); default
    /// [`DEFAULT_JWT_EXP_TIME`] (300). Zero or negative issues tokens that are already
    /// expired, which a server must refuse.
    pub exp_time: i64,
    /// The signing key.
    pub signing_key: JwtSigningKey,
    /// The algorithm; `None` picks one that fits the key: `HS256` for a secret, `RS256`
    /// for an RSA key (Ballerina's default), `ES256` or `ES384` by the EC key's curve,
    /// `EdDSA` for Ed25519. An algorithm that does not fit the key is
    /// [`crate::Error::InvalidConfig`]. Unsigned tokens (`none`) are not offered.
    pub algorithm: Option<JwtAlgorithm>,
}

impl JwtIssuerConfig {
    /// Signs with an HMAC `secret` (`HS256` unless [`JwtIssuerConfig::algorithm`]
    /// says otherwise).
    pub fn hmac(secret: impl AsRef<[u8]>) -> Self {
        Self::with_key(JwtSigningKey::Secret(secret.as_ref().to_vec()))
    }

    /// Signs with the private key in the PEM file `path` (see [`JwtSigningKey::KeyFile`]).
    /// The file is read for every token.
    pub fn key_file(path: impl Into<PathBuf>) -> Self {
        Self::with_key(JwtSigningKey::KeyFile(path.into()))
    }

    fn with_key(signing_key: JwtSigningKey) -> Self {
        Self {
            issuer: None,
            username: None,
            audience: Vec::new(),
            jwt_id: None,
            key_id: None,
            custom_claims: serde_json::Map::new(),
            exp_time: DEFAULT_JWT_EXP_TIME,
            signing_key,
            algorithm: None,
        }
    }

    /// Sets `iss`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets `sub`.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets `aud`.
    pub fn audience<S: Into<String>>(mut self, audience: impl IntoIterator<Item = S>) -> Self {
        self.audience = audience.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `jti`.
    pub fn jwt_id(mut self, jwt_id: impl Into<String>) -> Self {
        self.jwt_id = Some(jwt_id.into());
        self
    }

    /// Sets the `kid` header.
    pub fn key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = Some(key_id.into());
        self
    }

    /// Adds the custom claim `name`.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.custom_claims.insert(name.into(), value.into());
        self
    }

    /// Sets the lifetime, seconds (negative: already expired).
    pub fn exp_time(mut self, seconds: i64) -> Self {
        self.exp_time = seconds;
        self
    }

    /// Sets the signing algorithm.
    pub fn algorithm(mut self, algorithm: JwtAlgorithm) -> Self {
        self.algorithm = Some(algorithm);
        self
    }
}
