//! [`ConfigError`]: everything wrong with a configuration, naming the key and how to fix it.

use std::path::PathBuf;

/// Everything wrong with a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not match the expected structure.
    #[error("config file {path} is not valid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// YAML text does not match the expected structure (text given directly, no file).
    #[error("the configuration is not valid: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },
    /// A setting has a wrong value.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the setting.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// The error for setting `key` with a wrong value; `message` says what is wrong and how to fix
/// it.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}
