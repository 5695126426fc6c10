//! The `networks.xmpp` section: owned, documented and checked here.
//!
//! The doc comments on the fields are the configuration reference (`docs/configuration.md`
//! follows them).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::network::Connector;
use crate::network::config::{
    ConfigContext, ConfigError, NetworkConfig, Secret, check_placeholder, invalid, key,
};

/// `networks.xmpp` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// The component link (XEP-0114) to the XMPP server.
    pub component: XmppComponentConfig,
    /// Largest inbound stanza, in bytes; a larger one is skipped and its sender gets a stanza
    /// error (the link stays up).
    #[serde(default = "default_max_stanza")]
    pub max_stanza_bytes: usize,
    /// Deepest element nesting accepted in an inbound stanza (the stream root is 1); a deeper
    /// stanza is skipped and answered like an oversized one.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// What to do when an XMPP contact asks to see a Matrix user's presence.
    #[serde(default)]
    pub subscriptions: crate::network::contacts::SubscriptionPolicy,
    /// Matrix rooms (by alias) that XMPP users may join as group chats hosted on the component:
    /// `#lobby:example.org` is `#lobby@<component domain>` on XMPP. The bot must be able to
    /// join the room (public, or invited).
    #[serde(default)]
    pub hosted_rooms: Vec<String>,
    /// Own-account logins: Matrix users who log in with their own XMPP account.
    #[serde(default)]
    pub accounts: XmppAccountsConfig,
}

/// `networks.xmpp.accounts` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XmppAccountsConfig {
    /// A PEM file of certificates to trust beside the system's (a private CA, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Servers (host names or IP addresses) that users may connect to although they resolve
    /// to loopback or private addresses. Others must be public.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
}

/// `networks.xmpp.component` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XmppComponentConfig {
    /// Host of the XMPP server's component port.
    #[serde(default = "default_xmpp_host")]
    pub host: String,
    /// The component port (5347 by convention).
    #[serde(default = "default_xmpp_port")]
    pub port: u16,
    /// The component's domain, as declared in the XMPP server (`Component "matrix.example.org"`);
    /// Matrix users are reachable at addresses on it.
    pub domain: String,
    /// The component secret shared with the XMPP server.
    pub secret: Secret,
}

fn default_max_stanza() -> usize {
    512 * 1024
}
fn default_max_depth() -> usize {
    32
}
fn default_xmpp_host() -> String {
    "127.0.0.1".into()
}
fn default_xmpp_port() -> u16 {
    5347
}

impl NetworkConfig for XmppConfig {
    const KEY: &'static str = "xmpp";

    fn validate(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        let d = &self.component.domain;
        // The placeholder first: it is not lowercase either, and this says why.
        check_placeholder(&key::<Self>("component.domain"), d)?;
        if d.is_empty() || d.contains(['@', '/', ' ', ':']) || d != &d.to_lowercase() {
            return Err(invalid(
                &key::<Self>("component.domain"),
                "must be the component's domain in lowercase, such as matrix.example.org",
            ));
        }
        if self.max_stanza_bytes < 4096 {
            return Err(invalid(
                &key::<Self>("max_stanza_bytes"),
                "must be at least 4096",
            ));
        }
        for alias in &self.hosted_rooms {
            if !alias.starts_with('#') || !alias.contains(':') {
                return Err(invalid(
                    &key::<Self>("hosted_rooms"),
                    format!("{alias:?} is not a room alias such as #lobby:example.org"),
                ));
            }
        }
        if !(4..=256).contains(&self.max_depth) {
            return Err(invalid(
                &key::<Self>("max_depth"),
                "must be between 4 and 256",
            ));
        }
        if let Some(ca) = &self.accounts.ca_file {
            super::load_ca_file(ca)
                .map_err(|e| invalid(&key::<Self>("accounts.ca_file"), e.to_string()))?;
        }
        self.secret(ctx)?;
        Ok(())
    }

    fn secret_files(&self) -> Vec<(String, std::path::PathBuf)> {
        match &self.component.secret {
            Secret::File { file } => vec![(key::<Self>("component.secret"), file.clone())],
            _ => Vec::new(),
        }
    }

    fn domains(&self) -> Vec<String> {
        vec![self.component.domain.clone()]
    }

    fn connector(&self, ctx: &ConfigContext<'_>) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(super::Xmpp::new(
            self,
            self.secret(ctx)?,
            ctx.homeserver_domain,
        )))
    }
}

impl XmppConfig {
    /// The component secret, resolved.
    fn secret(&self, ctx: &ConfigContext<'_>) -> Result<String, ConfigError> {
        self.component
            .secret
            .resolve(&key::<Self>("component.secret"), ctx.env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::{parse, test_context as ctx};

    fn err_key(section: serde_json::Value) -> String {
        let cfg: XmppConfig = parse(&section).expect("the section parses");
        match cfg.validate(&ctx()) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "component": {"domain": "matrix.example.org", "secret": "s3cret_component"}
        })
    }

    #[test]
    fn a_good_section_builds_its_connector() {
        let cfg: XmppConfig = parse(&good()).unwrap();
        cfg.validate(&ctx()).unwrap();
        assert_eq!(cfg.domains(), ["matrix.example.org"]);
        assert_eq!(cfg.connector(&ctx()).unwrap().info().id.as_str(), "xmpp");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut bad = good();
        bad["component"]["domain"] = "Matrix.Example.org".into();
        assert_eq!(err_key(bad), "networks.xmpp.component.domain");
        let mut bad = good();
        bad["max_depth"] = 2.into();
        assert_eq!(err_key(bad), "networks.xmpp.max_depth");
        let mut bad = good();
        bad["max_stanza_bytes"] = 100.into();
        assert_eq!(err_key(bad), "networks.xmpp.max_stanza_bytes");
        let mut bad = good();
        bad["hosted_rooms"] = serde_json::json!(["lobby"]);
        assert_eq!(err_key(bad), "networks.xmpp.hosted_rooms");
        let mut bad = good();
        bad["component"]["secret"] = serde_json::json!({"env": "NOT_SET_ANYWHERE"});
        assert_eq!(err_key(bad), "networks.xmpp.component.secret");
        let mut bad = good();
        bad["accounts"] = serde_json::json!({"ca_file": "/nonexistent/ca.pem"});
        assert_eq!(err_key(bad), "networks.xmpp.accounts.ca_file");
    }

    #[test]
    fn a_secret_file_is_listed_for_the_permission_check() {
        let mut cfg = good();
        cfg["component"]["secret"] = serde_json::json!({"file": "/etc/isthmus/component"});
        let cfg: XmppConfig = parse(&cfg).unwrap();
        assert_eq!(
            cfg.secret_files(),
            [(
                "networks.xmpp.component.secret".to_owned(),
                std::path::PathBuf::from("/etc/isthmus/component")
            )]
        );
    }
}
