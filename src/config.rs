//! Configuration: typed sections, loaded from YAML and validated before anything starts.
//!
//! The doc comments on the fields are the configuration reference (`docs/configuration.md`
//! follows them). Secrets can be written inline, or as `{file: PATH}` or `{env: NAME}`.
mod bridge;
mod database;
mod error;
mod limits;
mod logging;
mod matrix;
mod secret;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use self::bridge::{BridgeConfig, MediaConfig, PermissionLevel, RelayConfig};
pub use self::database::DatabaseConfig;
pub use self::error::{ConfigError, invalid};
pub use self::limits::{LimitsConfig, RateLimit};
pub use self::logging::{LogFormat, LoggingConfig};
pub use self::matrix::{AppserviceConfig, HomeserverConfig};
pub use self::secret::{ResolvedSecrets, Secret, check_placeholder};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The homeserver the bridge registers with.
    pub homeserver: HomeserverConfig,
    /// The bridge's own appservice endpoint and identity.
    pub appservice: AppserviceConfig,
    /// Behaviour of the bridge core.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// The embedded database.
    pub database: DatabaseConfig,
    /// Logging.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Remote networks, one section per network under its key. A section is read and checked
    /// by its connector, not here (see `network::config`); unknown keys are refused there.
    #[serde(default)]
    pub networks: BTreeMap<String, serde_json::Value>,
}

impl Config {
    /// Reads and parses `path` (no validation).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Syntax { message } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses YAML text (no validation); the error holds the parser's message, with line
    /// and column.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            message: e.to_string(),
        })
    }

    /// The files the config reads secrets from, with the key naming each: they must be
    /// readable by the owner only.
    pub fn secret_files(&self) -> Vec<(&'static str, PathBuf)> {
        let mut out = Vec::new();
        let mut add = |key: &'static str, s: Option<&Secret>| {
            if let Some(Secret::File { file }) = s {
                out.push((key, file.clone()));
            }
        };
        add("appservice.as_token", Some(&self.appservice.as_token));
        add("appservice.hs_token", Some(&self.appservice.hs_token));
        add(
            "appservice.provisioning_secret",
            self.appservice.provisioning_secret.as_ref(),
        );
        add("bridge.login_key", self.bridge.login_key.as_ref());
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
