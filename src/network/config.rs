//! A connector's own section of the configuration (`networks.<key>`).
//!
//! The core's `config` module knows its own sections only and keeps `networks` as raw values,
//! one per key. Each connector owns, documents and validates its section through
//! [`NetworkConfig`]; the application's composition root hands every raw section to the
//! connector that claims its key. So adding a network never touches `config`, and nothing
//! imports from `config` into a connector's settings.

use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::Connector;
pub use crate::config::{ConfigError, Secret, check_placeholder, invalid};

/// What a section may read while it is checked and its connector built.
pub struct ConfigContext<'a> {
    /// The homeserver's server name (`homeserver.domain`).
    pub homeserver_domain: &'a str,
    /// Looks up environment variables (passed in, so that only the application's edge reads
    /// the environment).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// A connector's configuration section.
pub trait NetworkConfig: DeserializeOwned + Sized {
    /// The section's key under `networks` (`xmpp`, `sip`).
    const KEY: &'static str;

    /// Checks every setting, naming the key of the first problem (`networks.<KEY>.…`) and how
    /// to fix it. Secrets are resolved here too, so that a missing one is reported by
    /// `check-config`.
    fn validate(&self, ctx: &ConfigContext<'_>) -> Result<(), ConfigError>;

    /// The files the section reads secrets from, with the key naming each: they must be
    /// readable by their owner only.
    fn secret_files(&self) -> Vec<(String, PathBuf)> {
        Vec::new()
    }

    /// The domains the connector answers for on its network. Two networks may not claim the
    /// same one: addresses on it could not say which network they belong to.
    fn domains(&self) -> Vec<String> {
        Vec::new()
    }

    /// The connector, built from a section that [`NetworkConfig::validate`] accepted. Nothing
    /// starts yet: that is [`Connector::start`].
    fn connector(&self, ctx: &ConfigContext<'_>) -> Result<Arc<dyn Connector>, ConfigError>;
}

/// The dotted key of a setting in `C`'s section: `key::<XmppConfig>("max_depth")` is
/// `networks.xmpp.max_depth`.
pub fn key<C: NetworkConfig>(setting: &str) -> String {
    if setting.is_empty() {
        format!("networks.{}", C::KEY)
    } else {
        format!("networks.{}.{setting}", C::KEY)
    }
}

/// Reads a raw section into `C`, naming the section in the error.
pub fn parse<C: NetworkConfig>(raw: &serde_json::Value) -> Result<C, ConfigError> {
    C::deserialize(raw).map_err(|e| invalid(&key::<C>(""), e.to_string()))
}

/// A context for the unit tests of a section: homeserver `example.org`, no environment.
#[cfg(test)]
pub(crate) fn test_context() -> ConfigContext<'static> {
    fn no_env(_: &str) -> Option<String> {
        None
    }
    ConfigContext {
        homeserver_domain: "example.org",
        env: &no_env,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        #[allow(dead_code)]
        name: String,
    }

    impl NetworkConfig for Demo {
        const KEY: &'static str = "demo";
        fn validate(&self, _: &ConfigContext<'_>) -> Result<(), ConfigError> {
            Ok(())
        }
        fn connector(&self, _: &ConfigContext<'_>) -> Result<Arc<dyn Connector>, ConfigError> {
            Err(invalid("networks.demo", "not built in this test"))
        }
    }

    #[test]
    fn a_section_error_names_the_section_and_the_field() {
        let err = parse::<Demo>(&serde_json::json!({"name": "x", "bogus": 1}))
            .err()
            .expect("an unknown field is refused");
        let text = err.to_string();
        assert!(text.contains("networks.demo"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        let err = parse::<Demo>(&serde_json::Value::Null)
            .err()
            .expect("an empty section is refused");
        assert!(err.to_string().contains("networks.demo"), "{err}");
        assert_eq!(key::<Demo>("name"), "networks.demo.name");
    }
}
