//! OAuth2 token introspection (RFC 7662) for listener authentication: the host asks
//! the endpoint whether a bearer token is active, and caches the answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tracing::warn;

use crate::auth::Principal;
use crate::config::OAuth2IntrospectionConfig;
use crate::outbound::Endpoint;

/// Most answers kept in the cache; beyond that the oldest are dropped.
const MAX_CACHED: usize = 10_000;

pub(crate) struct Introspector {
    endpoint: Endpoint,
    token_type_hint: String,
    scope_key: String,
    authorization: Option<String>,
    cache_for: Duration,
    /// token → (the answer, `None` for inactive; when it expires)
    cache: Mutex<HashMap<String, (Option<Principal>, Instant)>>,
}

impl Introspector {
    pub(crate) fn new(config: &OAuth2IntrospectionConfig, field: &str) -> Result<Self, String> {
        let field = format!("{field}.oauth2_introspection");
        let authorization = match (&config.client_id, &config.client_secret) {
            (Some(id), secret) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{id}:{}", secret.as_deref().unwrap_or("")))
            )),
            (None, Some(_)) => return Err(format!("{field}.client_secret: needs client_id")),
            (None, None) => None,
        };
        if !(config.cache_seconds.is_finite() && config.cache_seconds >= 0.0) {
            return Err(format!("{field}.cache_seconds: must be 0 or more"));
        }
        if !(config.timeout.is_finite() && config.timeout > 0.0) {
            return Err(format!("{field}.timeout: must be positive"));
        }
        let endpoint = Endpoint::new(
            &config.url,
            config.cert.as_deref(),
            Duration::from_secs_f64(config.timeout),
            &format!("{field}.url"),
        )?;
        Ok(Self {
            endpoint,
            token_type_hint: config.token_type_hint.clone(),
            scope_key: config.scope_key.clone(),
            authorization,
            cache_for: Duration::from_secs_f64(config.cache_seconds),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The principal `token` stands for, or `None` if it is not active (or the
    /// endpoint cannot say).
    pub(crate) async fn introspect(&self, token: &str) -> Option<Principal> {
        let now = Instant::now();
        if let Some((answer, until)) = self.lock().get(token)
            && *until > now
        {
            return answer.clone();
        }
        let answer = match self.ask(token).await {
            Ok(answer) => answer,
            Err(error) => {
                warn!(%error, url = self.endpoint.url(), "token introspection failed");
                return None;
            }
        };
        let (principal, expires) = match answer {
            Some((principal, exp)) => (Some(principal), exp),
            None => (None, None),
        };
        if !self.cache_for.is_zero() {
            let mut until = now + self.cache_for;
            if let Some(exp) = expires {
                let unix = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                until = until.min(now + Duration::from_secs(exp.saturating_sub(unix)));
            }
            let mut cache = self.lock();
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(token.to_owned(), (principal.clone(), until));
        }
        principal
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<Principal>, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<Option<(Principal, Option<u64>)>, String> {
        let (status, body) = self
            .endpoint
            .post_form(
                &[("token", token), ("token_type_hint", &self.token_type_hint)],
                self.authorization.as_deref(),
            )
            .await?;
        if status != 200 {
            return Err(format!("introspection endpoint answered {status}"));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("introspection response: {e}"))?;
        if json.get("active").and_then(|a| a.as_bool()) != Some(true) {
            return Ok(None);
        }
        let scopes = crate::auth::scopes_of(json.get(&self.scope_key));
        let subject = ["sub", "username"]
            .iter()
            .find_map(|key| json.get(*key).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_owned();
        let exp = json.get("exp").and_then(|e| e.as_u64());
        Ok(Some((
            Principal {
                subject,
                scopes,
                claims: json.to_string(),
            },
            exp,
        )))
    }
}
