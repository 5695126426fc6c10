//! [`Config::validate`]: every setting of the core's sections checked, and the secrets
//! resolved.

use super::{Config, ConfigError, ResolvedSecrets, check_placeholder, invalid};

impl Config {
    /// Checks every setting and resolves the secrets. The first problem found is returned,
    /// naming the key and saying how to fix it.
    pub fn validate(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedSecrets, ConfigError> {
        let hs = &self.homeserver;
        if !(hs.url.starts_with("http://") || hs.url.starts_with("https://")) {
            return Err(invalid(
                "homeserver.url",
                "must start with http:// or https://",
            ));
        }
        check_placeholder("homeserver.url", &hs.url)?;
        if hs.domain.is_empty() || hs.domain.contains(['/', '@', ' ']) {
            return Err(invalid(
                "homeserver.domain",
                "must be the server name only, such as example.org",
            ));
        }
        check_placeholder("homeserver.domain", &hs.domain)?;
        if hs.max_concurrency == 0 {
            return Err(invalid("homeserver.max_concurrency", "must be at least 1"));
        }
        let asc = &self.appservice;
        if asc.id.is_empty() {
            return Err(invalid("appservice.id", "must not be empty"));
        }
        if !(asc.url.starts_with("http://") || asc.url.starts_with("https://")) {
            return Err(invalid(
                "appservice.url",
                "must be the http(s) URL where the homeserver reaches the bridge",
            ));
        }
        check_placeholder("appservice.url", &asc.url)?;
        if !asc.namespace_prefix.starts_with('_') {
            return Err(invalid(
                "appservice.namespace_prefix",
                "must start with `_` so that it cannot collide with normal users",
            ));
        }
        if !asc.bot_localpart.starts_with(&asc.namespace_prefix) {
            return Err(invalid(
                "appservice.bot_localpart",
                format!(
                    "must start with the namespace prefix `{}`",
                    asc.namespace_prefix
                ),
            ));
        }
        if asc.request_header_timeout_secs == 0 || asc.request_body_timeout_secs == 0 {
            return Err(invalid(
                "appservice.request_header_timeout_secs",
                "the request timeouts must be at least 1 second",
            ));
        }
        if asc.max_connections < 16 {
            return Err(invalid(
                "appservice.max_connections",
                "must be at least 16 so that the homeserver always gets a connection",
            ));
        }
        if asc.max_body_bytes < (1 << 20) {
            return Err(invalid(
                "appservice.max_body_bytes",
                "must be at least 1 MiB (16 MiB or more recommended): a refused transaction is retried forever",
            ));
        }
        let b = &self.bridge;
        for (key, tpl) in [
            (
                "bridge.ghost_localpart_template",
                &b.ghost_localpart_template,
            ),
            (
                "bridge.alias_localpart_template",
                &b.alias_localpart_template,
            ),
        ] {
            if !tpl.contains("{network}") || !tpl.contains("{id}") {
                return Err(invalid(key, "must contain both {network} and {id}"));
            }
            if !tpl.starts_with(&asc.namespace_prefix) {
                return Err(invalid(
                    key,
                    format!(
                        "must start with the namespace prefix `{}`",
                        asc.namespace_prefix
                    ),
                ));
            }
        }
        if !b.ghost_displayname_template.contains("{name}") {
            return Err(invalid(
                "bridge.ghost_displayname_template",
                "must contain {name}",
            ));
        }
        if b.quarantine_after_attempts == 0 {
            return Err(invalid(
                "bridge.quarantine_after_attempts",
                "must be at least 1 (10 sets an item aside after about five minutes of failures)",
            ));
        }
        for (key, limit) in b.limits.all() {
            if limit.rate == 0 || limit.per_seconds == 0 || limit.burst == 0 {
                return Err(invalid(
                    &format!("bridge.limits.{key}"),
                    "rate, per_seconds and burst must each be at least 1 (set large values to relax a limit)",
                ));
            }
        }
        if b.permissions.is_empty() {
            return Err(invalid(
                "bridge.permissions",
                "is empty, so nobody could use the bridge; add for example `example.org: user` and `@you:example.org: admin`",
            ));
        }
        for key in b.permissions.keys() {
            let ok = key == "*"
                || (key.starts_with('@') && key.contains(':'))
                || (!key.is_empty() && !key.contains(['@', ':', ' ', '/']));
            if !ok {
                return Err(invalid(
                    &format!("bridge.permissions.{key}"),
                    "keys are `*`, a server name, or a full user ID such as @you:example.org",
                ));
            }
            check_placeholder(&format!("bridge.permissions.{key}"), key)?;
        }
        if !b.command_prefix.starts_with('!') || b.command_prefix.contains(char::is_whitespace) {
            return Err(invalid(
                "bridge.command_prefix",
                "must start with `!` and contain no spaces",
            ));
        }
        let as_token = asc.as_token.resolve("appservice.as_token", env)?;
        let hs_token = asc.hs_token.resolve("appservice.hs_token", env)?;
        if as_token == hs_token {
            return Err(invalid(
                "appservice.hs_token",
                "must differ from appservice.as_token",
            ));
        }
        let provisioning_secret = asc
            .provisioning_secret
            .as_ref()
            .map(|s| s.resolve("appservice.provisioning_secret", env))
            .transpose()?;
        for (key, url) in [
            ("bridge.public_url", &self.bridge.public_url),
            ("bridge.media.public_url", &self.bridge.media.public_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    key,
                    "must be an http:// or https:// URL, such as https://bridge.example.org",
                ));
            }
        }
        if !(1..=4096).contains(&self.database.cache_mb) {
            return Err(invalid(
                "database.cache_mb",
                "must be between 1 and 4096 (MiB); 16 suits most bridges",
            ));
        }
        let login_key = self
            .bridge
            .login_key
            .as_ref()
            .map(|s| s.resolve("bridge.login_key", env))
            .transpose()?;
        if let Some(k) = &login_key
            && let Err(why) = crate::store::LoginKey::from_secret(k)
        {
            return Err(invalid("bridge.login_key", why.to_string()));
        }
        Ok(ResolvedSecrets {
            login_key,
            as_token,
            hs_token,
            provisioning_secret,
        })
    }
}
