//! Basic authentication against an LDAP directory (Ballerina's `LdapUserStoreConfig`):
//! bind as the service account, find the user's entry, bind as that entry with the
//! offered password, then read the names of the groups it is a member of — those are
//! the user's scopes. One connection per authentication, bounded by `read_timeout`.

use std::sync::Arc;
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry, ldap_escape};
use tracing::warn;

use crate::auth::Principal;
use crate::config::LdapUserStoreConfig;

pub(crate) struct LdapUserStore {
    config: LdapUserStoreConfig,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    timeout: Duration,
}

impl LdapUserStore {
    pub(crate) fn new(config: &LdapUserStoreConfig, field: &str) -> Result<Self, String> {
        let url = &config.connection_url;
        if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
            return Err(format!(
                "{field}.connection_url: must start with ldap:// or ldaps://"
            ));
        }
        if config.start_tls && url.starts_with("ldaps://") {
            return Err(format!(
                "{field}.start_tls: an ldaps:// connection is already encrypted"
            ));
        }
        if !config.user_name_search_filter.contains('?') {
            return Err(format!(
                "{field}.user_name_search_filter: needs a `?` where the user name goes"
            ));
        }
        for (name, value) in [
            ("connection_timeout", config.connection_timeout),
            ("read_timeout", config.read_timeout),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(format!("{field}.{name}: must be positive"));
            }
        }
        let tls = crate::outbound::client_tls(config.cert.as_deref(), field)?;
        Ok(Self {
            config: config.clone(),
            tls,
            connect_timeout: Duration::from_secs_f64(config.connection_timeout),
            timeout: Duration::from_secs_f64(config.read_timeout),
        })
    }

    /// The principal for `username`/`password`, or `None` when the directory does
    /// not know the user, the password is wrong, or the directory cannot be reached
    /// (logged).
    pub(crate) async fn authenticate(&self, username: &str, password: &str) -> Option<Principal> {
        // An empty password would be an unauthenticated bind, which LDAP servers
        // answer with success (RFC 4513 §5.1.2).
        if password.is_empty() || username.is_empty() {
            return None;
        }
        match tokio::time::timeout(self.timeout, self.ask(username, password)).await {
            Ok(Ok(principal)) => principal,
            Ok(Err(error)) => {
                warn!(%error, url = %self.config.connection_url, domain = %self.config.domain_name,
                    "LDAP user store failed");
                None
            }
            Err(_) => {
                warn!(url = %self.config.connection_url, domain = %self.config.domain_name,
                    "LDAP user store timed out");
                None
            }
        }
    }

    async fn ask(
        &self,
        username: &str,
        password: &str,
    ) -> ldap3::result::Result<Option<Principal>> {
        let config = &self.config;
        let settings = LdapConnSettings::new()
            .set_conn_timeout(self.connect_timeout)
            .set_starttls(config.start_tls)
            .set_config(self.tls.clone());
        let (connection, mut ldap) =
            LdapConnAsync::with_settings(settings, &config.connection_url).await?;
        ldap3::drive!(connection);
        ldap.simple_bind(&config.connection_name, &config.connection_password)
            .await?
            .success()?;
        let filter = config
            .user_name_search_filter
            .replace('?', &ldap_escape(username));
        let (entries, _) = ldap
            .search(
                &config.user_search_base,
                Scope::Subtree,
                &filter,
                vec!["1.1"],
            )
            .await?
            .success()?;
        // Exactly one entry, or the user name is ambiguous.
        let mut entries = entries.into_iter();
        let (Some(entry), None) = (entries.next(), entries.next()) else {
            let _ = ldap.unbind().await;
            return Ok(None);
        };
        let dn = SearchEntry::construct(entry).dn;
        let bound = ldap.simple_bind(&dn, password).await?;
        if bound.rc != 0 {
            let _ = ldap.unbind().await;
            return Ok(None);
        }
        // Back to the service account: users may not read group entries.
        ldap.simple_bind(&config.connection_name, &config.connection_password)
            .await?
            .success()?;
        let filter = format!(
            "(&(objectClass={})({}={}))",
            ldap_escape(&config.group_entry_object_class),
            config.membership_attribute,
            ldap_escape(&dn)
        );
        let mut scopes = Vec::new();
        for base in &config.group_search_base {
            let (groups, _) = ldap
                .search(
                    base,
                    Scope::Subtree,
                    &filter,
                    vec![config.group_name_attribute.as_str()],
                )
                .await?
                .success()?;
            for group in groups {
                let group = SearchEntry::construct(group);
                if let Some(names) = group.attrs.get(&config.group_name_attribute) {
                    scopes.extend(names.iter().cloned());
                }
            }
        }
        let _ = ldap.unbind().await;
        scopes.sort();
        scopes.dedup();
        let claims = serde_json::json!({ "dn": dn, "groups": scopes }).to_string();
        Ok(Some(Principal {
            subject: username.to_owned(),
            scopes,
            claims,
        }))
    }
}
