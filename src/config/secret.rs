//! Secrets ([`Secret`]: inline, from a file or from the environment, never printed), their
//! resolved values, and the refusal of the example file's placeholders.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// Values that mark a setting as not filled in yet; `check-config` refuses them.
const PLACEHOLDERS: &[&str] = &["CHANGE_ME", "changeme", "generate", "REPLACE_ME"];

/// A secret value: inline, read from a file, or read from an environment variable. Never
/// printed: its `Debug` output is `<redacted>`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Secret {
    /// Written in the config file.
    Inline(String),
    /// Read from a file (surrounding whitespace trimmed).
    File {
        /// Path of the file.
        file: PathBuf,
    },
    /// Read from an environment variable.
    Env {
        /// Name of the variable.
        env: String,
    },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("Secret(<redacted>)"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
        }
    }
}

impl Secret {
    /// Resolves the secret. `env` looks up environment variables (passed in so that only the
    /// application's edge reads the environment).
    pub fn resolve(
        &self,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        let value = match self {
            Secret::Inline(s) => s.clone(),
            Secret::File { file } => std::fs::read_to_string(file)
                .map_err(|e| {
                    invalid(
                        key,
                        format!("cannot read secret file {}: {e}", file.display()),
                    )
                })?
                .trim()
                .to_owned(),
            Secret::Env { env: name } => env(name).ok_or_else(|| {
                invalid(
                    key,
                    format!("environment variable {name} is not set; set it or write the value in the file"),
                )
            })?,
        };
        if value.is_empty() {
            return Err(invalid(key, "is empty; give a value"));
        }
        if PLACEHOLDERS.iter().any(|p| value.eq_ignore_ascii_case(p)) {
            return Err(invalid(
                key,
                "still holds the example placeholder; put a long random value here (for example the output of `openssl rand -hex 32`)",
            ));
        }
        Ok(value)
    }
}

/// The secrets of a configuration, resolved.
#[derive(Clone)]
pub struct ResolvedSecrets {
    /// Token towards the homeserver.
    pub as_token: String,
    /// Token from the homeserver.
    pub hs_token: String,
    /// The provisioning API secret, when the API is on.
    pub provisioning_secret: Option<String>,
    /// The login sealing secret, when configured.
    pub login_key: Option<String>,
}

impl fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResolvedSecrets(<redacted>)")
    }
}

/// Refuses a value that still holds one of the example file's placeholders.
pub fn check_placeholder(key: &str, value: &str) -> Result<(), ConfigError> {
    if PLACEHOLDERS
        .iter()
        .any(|p| value.to_ascii_lowercase().contains(&p.to_ascii_lowercase()))
    {
        return Err(invalid(
            key,
            "still holds the example placeholder; put your real value here",
        ));
    }
    Ok(())
}
