//! Listener authentication (spec 5.2), checked on the upgrade request before the
//! guest sees it: Basic against a file user store (argon2id PHC hashes) or an LDAP
//! directory, JWT validation (fixed key or JWKS URL) and OAuth2 token introspection,
//! each with required scopes. The first entry that authenticates and
//! grants the scopes wins; no credentials or bad ones → 401, missing scope → 403.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use argon2::PasswordVerifier;
use base64::Engine as _;
use serde::Deserialize;

use crate::config::{AuthEntry, JwtSignature, JwtValidatorConfig};
use crate::http::Request;

/// Who authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub(crate) subject: String,
    pub(crate) scopes: Vec<String>,
    /// JWT claims as a JSON object, `{}` otherwise.
    pub(crate) claims: String,
}

/// The outcome of checking an upgrade request.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Authenticated, with every required scope.
    Allowed(Principal),
    /// No or bad credentials: 401 with this `WWW-Authenticate`.
    Unauthorized(String),
    /// Authenticated, but a required scope is missing: 403.
    Forbidden,
}

/// One service's authenticators, built from its `[[service.auth]]` entries.
pub(crate) struct Auth {
    entries: Vec<(Mechanism, Vec<String>)>,
    token_query_param: Option<String>,
    token_subprotocol_prefix: Option<String>,
}

enum Mechanism {
    FileUserStore(HashMap<String, StoredUser>),
    Ldap(Box<crate::ldap::LdapUserStore>),
    Jwt(Box<JwtValidator>),
    Introspection(Box<crate::introspection::Introspector>),
}

struct StoredUser {
    hash: String,
    scopes: Vec<String>,
}

struct JwtValidator {
    keys: JwtKeys,
    validation: jsonwebtoken::Validation,
    scope_key: String,
}

enum JwtKeys {
    /// One key; the validation lists its algorithms.
    Fixed(jsonwebtoken::DecodingKey),
    /// Keys from a JWKS URL, chosen per token.
    Jwks(crate::jwks::Jwks),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    username: String,
    password: String,
    #[serde(default)]
    scopes: Vec<String>,
}

/// Credentials found on the request.
enum Credentials {
    Basic { username: String, password: String },
    Bearer(String),
}

impl Auth {
    /// Builds the authenticators; the error names the field and the file.
    pub(crate) fn new(
        entries: &[AuthEntry],
        token_query_param: Option<String>,
        token_subprotocol_prefix: Option<String>,
        field: &str,
    ) -> Result<Self, String> {
        let mut built = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let field = format!("{field}.auth[{index}]");
            let mechanism = match (
                &entry.file_user_store,
                &entry.ldap_user_store,
                &entry.jwt_validator,
                &entry.oauth2_introspection,
            ) {
                (Some(path), None, None, None) => {
                    Mechanism::FileUserStore(load_users(path, &field)?)
                }
                (None, Some(ldap), None, None) => Mechanism::Ldap(Box::new(
                    crate::ldap::LdapUserStore::new(ldap, &format!("{field}.ldap_user_store"))?,
                )),
                (None, None, Some(jwt), None) => {
                    Mechanism::Jwt(Box::new(jwt_validator(jwt, &field)?))
                }
                (None, None, None, Some(introspection)) => Mechanism::Introspection(Box::new(
                    crate::introspection::Introspector::new(introspection, &field)?,
                )),
                _ => {
                    return Err(format!(
                        "{field}: give exactly one of file_user_store, ldap_user_store, \
                         jwt_validator and oauth2_introspection"
                    ));
                }
            };
            built.push((mechanism, entry.scopes.clone()));
        }
        Ok(Self {
            entries: built,
            token_query_param,
            token_subprotocol_prefix,
        })
    }

    /// Whether the service asks for authentication at all.
    pub(crate) fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The subprotocol offers that carry a token, to hide from the guest and never
    /// agree on.
    pub(crate) fn is_token_subprotocol(&self, offer: &str) -> bool {
        self.token_subprotocol_prefix
            .as_deref()
            .is_some_and(|prefix| offer.starts_with(prefix))
    }

    /// Checks `request`. Password hashing is slow on purpose, so this runs on the
    /// blocking pool.
    pub(crate) async fn check(&self, request: &Request) -> Verdict {
        let credentials = self.credentials(request);
        self.verdict(credentials).await
    }

    fn credentials(&self, request: &Request) -> Option<Credentials> {
        if let Some(value) = request
            .header("authorization")
            .and_then(|v| std::str::from_utf8(v).ok())
        {
            let (scheme, rest) = value.trim().split_once(' ')?;
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                let decoded = String::from_utf8(decoded).ok()?;
                let (username, password) = decoded.split_once(':')?;
                return Some(Credentials::Basic {
                    username: username.to_owned(),
                    password: password.to_owned(),
                });
            }
            if scheme.eq_ignore_ascii_case("bearer") {
                return Some(Credentials::Bearer(rest.to_owned()));
            }
            return None;
        }
        // Browsers cannot set Authorization on a WebSocket: optionally take a bearer
        // token from the query or from a subprotocol offer.
        if let (Some(name), Some(query)) = (&self.token_query_param, &request.query) {
            let token = query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                (key == name).then(|| value.to_owned())
            });
            if let Some(token) = token {
                return Some(Credentials::Bearer(token));
            }
        }
        if let Some(prefix) = &self.token_subprotocol_prefix {
            let token = request
                .header_tokens("sec-websocket-protocol")
                .find_map(|offer| offer.strip_prefix(prefix.as_str()));
            if let Some(token) = token {
                return Some(Credentials::Bearer(token.to_owned()));
            }
        }
        None
    }

    async fn verdict(&self, credentials: Option<Credentials>) -> Verdict {
        let mut forbidden = false;
        if let Some(credentials) = &credentials {
            for (mechanism, required) in &self.entries {
                let Some(principal) = mechanism.authenticate(credentials).await else {
                    continue;
                };
                if required
                    .iter()
                    .all(|scope| principal.scopes.contains(scope))
                {
                    return Verdict::Allowed(principal);
                }
                forbidden = true;
            }
        }
        if forbidden {
            return Verdict::Forbidden;
        }
        let mut challenges: Vec<&str> = self
            .entries
            .iter()
            .map(|(mechanism, _)| match mechanism {
                Mechanism::FileUserStore(_) | Mechanism::Ldap(_) => "Basic realm=\"wasmsocket\"",
                Mechanism::Jwt(_) | Mechanism::Introspection(_) => "Bearer realm=\"wasmsocket\"",
            })
            .collect();
        challenges.dedup();
        Verdict::Unauthorized(challenges.join(", "))
    }
}

impl Mechanism {
    async fn authenticate(&self, credentials: &Credentials) -> Option<Principal> {
        match (self, credentials) {
            (Mechanism::FileUserStore(users), Credentials::Basic { username, password }) => {
                let user = users.get(username)?;
                let (hash, password) = (user.hash.clone(), password.clone());
                // Hashing is slow on purpose: off the async workers. The comparison is
                // constant-time inside the argon2 verifier.
                let verified = tokio::task::spawn_blocking(move || {
                    let hash = argon2::PasswordHash::new(&hash).ok()?;
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .ok()
                })
                .await
                .ok()
                .flatten();
                verified?;
                Some(Principal {
                    subject: username.clone(),
                    scopes: user.scopes.clone(),
                    claims: "{}".into(),
                })
            }
            (Mechanism::Ldap(store), Credentials::Basic { username, password }) => {
                store.authenticate(username, password).await
            }
            (Mechanism::Introspection(introspector), Credentials::Bearer(token)) => {
                introspector.introspect(token).await
            }
            (Mechanism::Jwt(jwt), Credentials::Bearer(token)) => {
                let claims = jwt.decode(token).await?;
                let subject = claims
                    .get("sub")
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_owned();
                let scopes = scopes_of(claims.get(&jwt.scope_key));
                Some(Principal {
                    subject,
                    scopes,
                    claims: serde_json::Value::Object(claims).to_string(),
                })
            }
            _ => None,
        }
    }
}

impl JwtValidator {
    /// The claims of a valid token.
    async fn decode(&self, token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        type Claims = serde_json::Map<String, serde_json::Value>;
        match &self.keys {
            JwtKeys::Fixed(key) => jsonwebtoken::decode::<Claims>(token, key, &self.validation)
                .ok()
                .map(|data| data.claims),
            JwtKeys::Jwks(jwks) => {
                let header = jsonwebtoken::decode_header(token).ok()?;
                let mut validation = self.validation.clone();
                validation.algorithms = vec![header.alg];
                for key in jwks.keys_for(header.kid.as_deref(), header.alg).await {
                    if let Ok(data) = jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                        return Some(data.claims);
                    }
                }
                None
            }
        }
    }
}

/// The scopes in a JWT claim or introspection field: a space-separated string or an
/// array of strings (RFC 8693 §4.2 and common practice).
pub(crate) fn scopes_of(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(list)) => {
            list.split_whitespace().map(str::to_owned).collect()
        }
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn load_users(path: &Path, field: &str) -> Result<HashMap<String, StoredUser>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "{field}.file_user_store: cannot read {}: {e}",
            path.display()
        )
    })?;
    let file: UserFile = toml::from_str(&text)
        .map_err(|e| format!("{field}.file_user_store: {}: {e}", path.display()))?;
    let mut users = HashMap::with_capacity(file.user.len());
    for (index, user) in file.user.into_iter().enumerate() {
        let hash = argon2::PasswordHash::new(&user.password).map_err(|e| {
            format!(
                "{field}.file_user_store: {} user[{index}].password: not a PHC-format hash ({e}); \
                 plaintext passwords are not accepted",
                path.display()
            )
        })?;
        if hash.algorithm.as_str() != "argon2id"
            && hash.algorithm.as_str() != "argon2i"
            && hash.algorithm.as_str() != "argon2d"
        {
            return Err(format!(
                "{field}.file_user_store: {} user[{index}].password: an argon2 hash is required",
                path.display()
            ));
        }
        users.insert(
            user.username,
            StoredUser {
                hash: user.password,
                scopes: user.scopes,
            },
        );
    }
    Ok(users)
}

fn jwt_validator(config: &JwtValidatorConfig, field: &str) -> Result<JwtValidator, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let (keys, algorithms) = match &config.signature {
        JwtSignature::CertFile { cert_file } => {
            let pem = std::fs::read(cert_file).map_err(|e| {
                format!(
                    "{field}.jwt_validator.signature.cert_file: cannot read {}: {e}",
                    cert_file.display()
                )
            })?;
            match DecodingKey::from_rsa_pem(&pem) {
                Ok(key) => (
                    JwtKeys::Fixed(key),
                    vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
                ),
                Err(_) => (
                    JwtKeys::Fixed(DecodingKey::from_ec_pem(&pem).map_err(|e| {
                        format!(
                            "{field}.jwt_validator.signature.cert_file: {} holds no RSA or EC public key: {e}",
                            cert_file.display()
                        )
                    })?),
                    vec![Algorithm::ES256, Algorithm::ES384],
                ),
            }
        }
        JwtSignature::Secret { secret } => (
            JwtKeys::Fixed(DecodingKey::from_secret(secret.as_bytes())),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ),
        // Each key allows its own algorithms; the list here is replaced per token.
        JwtSignature::Jwks { jwks } => (
            JwtKeys::Jwks(crate::jwks::Jwks::new(
                jwks,
                &format!("{field}.jwt_validator.signature.jwks"),
            )?),
            vec![Algorithm::RS256],
        ),
    };
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms;
    validation.leeway = Duration::from_secs_f64(config.clock_skew.max(0.0)).as_secs();
    validation.validate_exp = true;
    validation.required_spec_claims = ["exp".to_owned()].into_iter().collect();
    match &config.issuer {
        Some(issuer) => validation.set_issuer(&[issuer]),
        None => validation.iss = None,
    }
    if config.audience.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&config.audience);
    }
    Ok(JwtValidator {
        keys,
        validation,
        scope_key: config.scope_key.clone(),
    })
}
