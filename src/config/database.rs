//! The `database` section: where the embedded store lives and how much cache it takes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `database` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Folder of the embedded store; created when missing, owner-only.
    pub path: PathBuf,
    /// Most memory the store's cache takes, in MiB (1 to 4096). The store's memory use stays
    /// near this however large the transactions are.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
}

fn default_cache_mb() -> u64 {
    crate::store::DEFAULT_CACHE_BYTES / (1024 * 1024)
}

impl DatabaseConfig {
    /// The cache size in bytes.
    pub fn cache_bytes(&self) -> u64 {
        self.cache_mb * 1024 * 1024
    }
}
