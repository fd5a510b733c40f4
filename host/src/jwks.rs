//! JWT signature keys from a JWKS URL (RFC 7517): fetched on first use, kept for
//! `cache_seconds`, fetched again early when a token names a key id the set lacks
//! (key rotation) — at most once a second, so forged key ids cannot flood the
//! endpoint.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::warn;

use crate::config::JwksConfig;
use crate::outbound::Endpoint;

/// The least time between two fetches.
const MIN_REFETCH: Duration = Duration::from_secs(1);

pub(crate) struct Jwks {
    endpoint: Endpoint,
    cache_for: Duration,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    keys: Vec<Key>,
    fetched: Option<Instant>,
}

/// One usable verification key.
#[derive(Clone)]
pub(crate) struct Key {
    kid: Option<String>,
    algorithms: Vec<Algorithm>,
    pub(crate) key: Arc<DecodingKey>,
}

impl Jwks {
    pub(crate) fn new(config: &JwksConfig, field: &str) -> Result<Self, String> {
        if !(config.cache_seconds.is_finite() && config.cache_seconds >= 0.0) {
            return Err(format!("{field}.cache_seconds: must be 0 or more"));
        }
        if !(config.timeout.is_finite() && config.timeout > 0.0) {
            return Err(format!("{field}.timeout: must be positive"));
        }
        Ok(Self {
            endpoint: Endpoint::new(
                &config.url,
                config.cert.as_deref(),
                Duration::from_secs_f64(config.timeout),
                &format!("{field}.url"),
            )?,
            cache_for: Duration::from_secs_f64(config.cache_seconds),
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// The keys that may have signed a token with this header: matching `kid` (every
    /// key when the token names none) and allowing `alg`.
    pub(crate) async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let stale = state
            .fetched
            .is_none_or(|at| now.duration_since(at) >= self.cache_for);
        let mut found = matching(&state.keys, kid, alg);
        let may_refetch = state
            .fetched
            .is_none_or(|at| now.duration_since(at) >= MIN_REFETCH);
        if (stale || found.is_empty()) && may_refetch {
            match self.fetch().await {
                Ok(keys) => {
                    state.keys = keys;
                    found = matching(&state.keys, kid, alg);
                }
                // Keep serving the keys we have; the endpoint may be back soon.
                Err(error) => warn!(%error, url = self.endpoint.url(), "JWKS fetch failed"),
            }
            state.fetched = Some(now);
        }
        found
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        let (status, body) = self.endpoint.get("application/json").await?;
        if status != 200 {
            return Err(format!("JWKS endpoint answered {status}"));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| format!("JWKS document: {e}"))?;
        Ok(set
            .keys
            .iter()
            .filter(|jwk| {
                !matches!(
                    jwk.common.public_key_use,
                    Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
                )
            })
            .filter_map(|jwk| {
                // Symmetric keys have no place in a public key set.
                let family: Vec<Algorithm> = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => vec![
                        Algorithm::RS256,
                        Algorithm::RS384,
                        Algorithm::RS512,
                        Algorithm::PS256,
                        Algorithm::PS384,
                        Algorithm::PS512,
                    ],
                    AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                        EllipticCurve::P256 => vec![Algorithm::ES256],
                        EllipticCurve::P384 => vec![Algorithm::ES384],
                        _ => return None,
                    },
                    AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
                    AlgorithmParameters::OctetKey(_) => return None,
                };
                let algorithms = match &jwk.common.key_algorithm {
                    Some(alg) => {
                        let alg = Algorithm::from_str(&alg.to_string()).ok()?;
                        family.contains(&alg).then(|| vec![alg])?
                    }
                    None => family,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithms,
                    key: Arc::new(key),
                })
            })
            .collect())
    }
}

fn matching(keys: &[Key], kid: Option<&str>, alg: Algorithm) -> Vec<Key> {
    keys.iter()
        .filter(|key| kid.is_none_or(|kid| key.kid.as_deref() == Some(kid)))
        .filter(|key| key.algorithms.contains(&alg))
        .cloned()
        .collect()
}
