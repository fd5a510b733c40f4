//! Client authentication (spec 5.2, client side): Ballerina's `CredentialsConfig`,
//! `BearerTokenConfig`, `JwtIssuerConfig` and the OAuth2 grant configurations.
//!
//! All of them end up in the upgrade request's `Authorization` header, which a
//! browser's `WebSocket` cannot send: they are native only.

use std::path::PathBuf;
use std::time::Duration;

use crate::{SecureSocket, backend};

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
    /// An access token from an OAuth2 token endpoint, sent as a bearer token
    /// (`OAuth2ClientCredentialsGrantConfig`, `OAuth2PasswordGrantConfig`,
    /// `OAuth2RefreshTokenGrantConfig`).
    OAuth2(OAuth2Config),
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
            ClientAuth::OAuth2(oauth2) => f.debug_tuple("OAuth2").field(oauth2).finish(),
        }
    }
}

impl From<JwtIssuerConfig> for ClientAuth {
    fn from(config: JwtIssuerConfig) -> Self {
        ClientAuth::Jwt(config)
    }
}

impl From<OAuth2Config> for ClientAuth {
    fn from(config: OAuth2Config) -> Self {
        ClientAuth::OAuth2(config)
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

/// Which OAuth2 grant gets the access token.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OAuth2Grant {
    /// The client credentials grant (RFC 6749 §4.4): `client_id` and `client_secret`
    /// are required.
    ClientCredentials,
    /// The resource owner password grant (RFC 6749 §4.3).
    Password {
        /// The resource owner's user name.
        username: String,
        /// The resource owner's password.
        password: String,
    },
    /// The refresh token grant (RFC 6749 §6): `client_id` and `client_secret` are
    /// required. A refresh token the endpoint returns replaces this one.
    RefreshToken {
        /// The refresh token to start with.
        refresh_token: String,
    },
}

impl std::fmt::Debug for OAuth2Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OAuth2Grant::ClientCredentials => f.write_str("ClientCredentials"),
            OAuth2Grant::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            OAuth2Grant::RefreshToken { .. } => {
                f.debug_struct("RefreshToken").finish_non_exhaustive()
            }
        }
    }
}

/// How the client id and secret reach the token endpoint (Ballerina's
/// `CredentialBearer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialBearer {
    /// HTTP Basic authentication (`AUTH_HEADER_BEARER`, Ballerina's default and the
    /// one RFC 6749 §2.3.1 requires servers to support).
    #[default]
    AuthHeader,
    /// `client_id` and `client_secret` form parameters (`POST_BODY_BEARER`).
    PostBody,
}

/// Ballerina's default `defaultTokenExpTime`: the lifetime assumed when the token
/// response has no `expires_in`.
pub const DEFAULT_TOKEN_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// An access token from an OAuth2 token endpoint: Ballerina's
/// `OAuth2ClientCredentialsGrantConfig`, `OAuth2PasswordGrantConfig` and
/// `OAuth2RefreshTokenGrantConfig` in one struct. Native only.
///
/// Before each connection attempt the client takes the cached access token if it is
/// still valid, that is younger than `expires_in` (or `default_token_expires_in`)
/// minus `clock_skew`. Otherwise it asks the endpoint: with the refresh token it was
/// given, if any, else with the grant. A token the upgrade answers with `401` is
/// dropped from the cache. The cache lives in this value and its clones, so retries,
/// reconnects and clients built from clones of one `ClientConfig` share it; build a
/// new `OAuth2Config` for a separate cache.
///
/// The request is a form `POST` (RFC 6749) over HTTP/1.1, `https://` with this crate's
/// TLS stack. A refusal is [`crate::Error::TokenEndpoint`] and no upgrade is attempted.
///
/// ```
/// use wasmsocket_client::{ClientConfig, OAuth2Config, SecureSocket};
///
/// let oauth2 = OAuth2Config::client_credentials("https://auth.example/token", "my-app", "secret")
///     .scopes(["chat"])
///     .secure_socket(SecureSocket::trust("auth-ca.pem"));
/// let config = ClientConfig::default().auth(oauth2.into());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OAuth2Config {
    /// The grant.
    pub grant: OAuth2Grant,
    /// The token endpoint, `http://` or `https://` (Ballerina's `tokenUrl`, or
    /// `refreshUrl` for the refresh token grant). Refresh requests go here too.
    pub token_url: String,
    /// The client id (required for the client credentials and refresh token grants).
    pub client_id: Option<String>,
    /// The client secret (with `client_id`). Left out of `Debug` output.
    pub client_secret: Option<String>,
    /// Scopes to ask for, sent space-separated as `scope`.
    pub scopes: Vec<String>,
    /// Further form parameters (Ballerina's `optionalParams`).
    pub optional_params: Vec<(String, String)>,
    /// The lifetime assumed when the response has no `expires_in` (Ballerina's
    /// `defaultTokenExpTime`); default [`DEFAULT_TOKEN_EXPIRES_IN`] (3600 s).
    pub default_token_expires_in: Duration,
    /// How much earlier than its expiry a token is replaced (Ballerina's
    /// `clockSkew`); default zero.
    pub clock_skew: Duration,
    /// How the client id and secret are sent; default HTTP Basic.
    pub credential_bearer: CredentialBearer,
    /// TLS for an `https://` endpoint (Ballerina's `clientConfig.secureSocket`):
    /// trusted CA certificates (default: the Mozilla roots), a client certificate,
    /// versions and ciphers.
    pub secure_socket: Option<SecureSocket>,
    /// The token cache, shared by clones.
    pub(crate) cache: backend::TokenCache,
}

impl std::fmt::Debug for OAuth2Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Config")
            .field("grant", &self.grant)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scopes", &self.scopes)
            .field("optional_params", &self.optional_params)
            .field("default_token_expires_in", &self.default_token_expires_in)
            .field("clock_skew", &self.clock_skew)
            .field("credential_bearer", &self.credential_bearer)
            .field("secure_socket", &self.secure_socket)
            .finish_non_exhaustive()
    }
}

impl OAuth2Config {
    fn new(grant: OAuth2Grant, token_url: impl Into<String>) -> Self {
        Self {
            grant,
            token_url: token_url.into(),
            client_id: None,
            client_secret: None,
            scopes: Vec::new(),
            optional_params: Vec::new(),
            default_token_expires_in: DEFAULT_TOKEN_EXPIRES_IN,
            clock_skew: Duration::ZERO,
            credential_bearer: CredentialBearer::default(),
            secure_socket: None,
            cache: backend::TokenCache::default(),
        }
    }

    /// The client credentials grant at `token_url`.
    pub fn client_credentials(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        Self::new(OAuth2Grant::ClientCredentials, token_url).client(client_id, client_secret)
    }

    /// The password grant at `token_url`; add [`OAuth2Config::client`] if the endpoint
    /// wants client credentials too.
    pub fn password(
        token_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let grant = OAuth2Grant::Password {
            username: username.into(),
            password: password.into(),
        };
        Self::new(grant, token_url)
    }

    /// The refresh token grant at `refresh_url`.
    pub fn refresh_token(
        refresh_url: impl Into<String>,
        refresh_token: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        let grant = OAuth2Grant::RefreshToken {
            refresh_token: refresh_token.into(),
        };
        Self::new(grant, refresh_url).client(client_id, client_secret)
    }

    /// Sets the client id and secret.
    pub fn client(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        self.client_id = Some(client_id.into());
        self.client_secret = Some(client_secret.into());
        self
    }

    /// Asks for `scopes`.
    pub fn scopes<S: Into<String>>(mut self, scopes: impl IntoIterator<Item = S>) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a form parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.optional_params.push((name.into(), value.into()));
        self
    }

    /// Sets the lifetime assumed when the response has no `expires_in`.
    pub fn default_token_expires_in(mut self, lifetime: Duration) -> Self {
        self.default_token_expires_in = lifetime;
        self
    }

    /// Replaces tokens this much before they expire.
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// Sets how the client id and secret are sent.
    pub fn credential_bearer(mut self, bearer: CredentialBearer) -> Self {
        self.credential_bearer = bearer;
        self
    }

    /// TLS settings for an `https://` endpoint.
    pub fn secure_socket(mut self, secure_socket: SecureSocket) -> Self {
        self.secure_socket = Some(secure_socket);
        self
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        let invalid = |message: String| Err(crate::Error::InvalidConfig(message));
        if let Err(reason) = crate::parse_http_url(&self.token_url) {
            return invalid(format!("auth.token_url: \"{}\": {reason}", self.token_url));
        }
        let has_credentials = self.client_id.as_deref().is_some_and(|id| !id.is_empty())
            && self.client_secret.as_deref().is_some_and(|s| !s.is_empty());
        match &self.grant {
            OAuth2Grant::ClientCredentials | OAuth2Grant::RefreshToken { .. }
                if !has_credentials =>
            {
                return invalid("auth: this grant needs a client_id and a client_secret".into());
            }
            OAuth2Grant::RefreshToken { refresh_token } if refresh_token.is_empty() => {
                return invalid("auth.refresh_token: must not be empty".into());
            }
            _ => {}
        }
        if self.client_secret.is_some() && self.client_id.is_none() {
            return invalid("auth.client_secret: needs a client_id".into());
        }
        Ok(())
    }
}
