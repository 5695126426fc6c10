//! Logins: the flows a connector offers, the steps of a login in progress
//! ([`LoginProcess`]) and the login as the store keeps it ([`LoginData`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{LoginId, NetworkClient, NetworkError, RemoteUserId};

/// A login as the store keeps it. `data` is the connector's own, opaque to the core.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoginData {
    /// Unique per network and Matrix user.
    pub id: LoginId,
    /// The remote account this login acts as.
    pub remote_user: RemoteUserId,
    /// A name for the account, shown in `logins`.
    pub remote_name: String,
    /// Whatever the connector needs to restore the session (may hold credentials).
    #[serde(default)]
    pub data: serde_json::Value,
}

/// One input a login step asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginField {
    /// Key under which the value is submitted.
    pub id: String,
    /// Label shown to the user.
    pub name: String,
    /// Whether the value is secret (the command message holding it is redacted).
    pub secret: bool,
}

impl LoginField {
    /// A field asking for `id`, labelled `name`.
    pub fn new(id: &str, name: &str, secret: bool) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            secret,
        }
    }
}

/// The trimmed value submitted for `key`; `None` when missing, empty, or `-` (which login
/// steps offer as "the default").
pub fn login_value(input: &BTreeMap<String, String>, key: &str) -> Option<String> {
    input
        .get(key)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty() && *v != "-")
        .map(str::to_owned)
}

/// A login flow a connector offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginFlow {
    /// ID passed to [`Connector::start_login`].
    ///
    /// [`Connector::start_login`]: super::Connector::start_login
    pub id: String,
    /// Name shown to the user.
    pub name: String,
    /// One line on what the flow does.
    pub description: String,
}

/// What a login process wants next.
pub enum LoginStep {
    /// Ask the user for these fields, with instructions.
    Input {
        /// Text shown before asking.
        instructions: String,
        /// The fields, asked one by one in the management room.
        fields: Vec<LoginField>,
    },
    /// Logged in: store `login` and use `client`.
    Complete {
        /// What to store.
        login: LoginData,
        /// The client, already connected or connecting.
        client: Arc<dyn NetworkClient>,
    },
}

/// A login in progress, driven step by step by the core.
#[async_trait]
pub trait LoginProcess: Send {
    /// The first step.
    fn first_step(&mut self) -> LoginStep;

    /// Submits the values for the fields of the last `Input` step.
    async fn submit(&mut self, input: BTreeMap<String, String>) -> Result<LoginStep, NetworkError>;
}
