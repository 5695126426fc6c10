//! Logins: per-user clients and login flows in progress.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::{Bridge, BridgeError, UserLogin};
use crate::network::{
    BridgeState, LoginData, LoginField, LoginId, LoginProcess, LoginStep, NetworkClient,
    NetworkError, NetworkId,
};

/// A login flow a user is going through in the management room.
pub struct LoginSession {
    /// The network.
    pub network: NetworkId,
    /// The connector's process.
    pub process: Box<dyn LoginProcess>,
    /// Fields of the current step.
    pub fields: Vec<LoginField>,
    /// Values given so far for the current step.
    pub values: BTreeMap<String, String>,
}

impl LoginSession {
    /// The field asked next.
    pub fn next_field(&self) -> Option<&LoginField> {
        self.fields.get(self.values.len())
    }
}

/// What the management room shows after a login step.
pub enum LoginProgress {
    /// Ask for this field.
    Ask(LoginField, Option<String>),
    /// Logged in as this remote account.
    Done(String),
}

impl Bridge {
    /// Live logins of `user` on `network`.
    pub fn logins_of(&self, user: &str, network: &NetworkId) -> Vec<UserLogin> {
        self.logins.live(user, network)
    }

    /// Every live login of `user`, with its network.
    pub fn all_logins_of(&self, user: &str) -> Vec<(NetworkId, UserLogin)> {
        self.logins.all_live(user)
    }

    /// The client of one login.
    pub fn login_client(
        &self,
        user: &str,
        network: &NetworkId,
        id: &LoginId,
    ) -> Option<Arc<dyn NetworkClient>> {
        self.logins_of(user, network)
            .into_iter()
            .find(|l| &l.id == id)
            .map(|l| l.client)
    }

    /// Restores every stored login at start-up. A login that fails is kept in the store with
    /// its state reported, so `relogin` or `logout` can deal with it.
    pub async fn load_logins(&self) -> Result<usize, BridgeError> {
        let mut n = 0;
        for (user, network, data) in self.store.all_logins()? {
            let network = NetworkId::new(network);
            let Some(connector) = self.networks.get(&network) else {
                warn!(user, network = %network, "stored login for a network that is not enabled");
                continue;
            };
            match connector.load_login(&user, &data).await {
                Ok(client) => {
                    self.logins.register(
                        &user,
                        &network,
                        UserLogin {
                            id: data.id.clone(),
                            remote_name: data.remote_name.clone(),
                            client,
                        },
                    );
                    n += 1;
                }
                Err(e) => {
                    let state = match e {
                        NetworkError::BadCredentials(_) => BridgeState::BadCredentials,
                        _ => BridgeState::UnknownError,
                    };
                    warn!(user, network = %network, error = %crate::error::chain(&e), "could not restore login");
                    self.set_state(&network, Some(&user), state, Some(e.to_string()));
                }
            }
        }
        Ok(n)
    }

    /// Starts a login flow for `user`; returns the first question.
    pub async fn begin_login(
        &self,
        user: &str,
        network: &NetworkId,
        flow: Option<&str>,
    ) -> Result<LoginProgress, BridgeError> {
        let connector = self.network(network)?;
        let flows = connector.login_flows();
        let flow_id = match flow {
            Some(f) => f.to_owned(),
            None => flows.first().map(|f| f.id.clone()).ok_or_else(|| {
                BridgeError::Invalid(format!("{network} has no login flows").into())
            })?,
        };
        if !flows.iter().any(|f| f.id == flow_id) {
            let names: Vec<_> = flows.iter().map(|f| f.id.as_str()).collect();
            return Err(BridgeError::Invalid(
                format!(
                    "unknown login flow `{flow_id}`; {network} offers: {}",
                    names.join(", ")
                )
                .into(),
            ));
        }
        let mut process = connector
            .start_login(user, &flow_id)
            .await
            .map_err(|source| BridgeError::Network {
                network: network.clone(),
                source,
            })?;
        let step = process.first_step();
        let session = LoginSession {
            network: network.clone(),
            process,
            fields: Vec::new(),
            values: BTreeMap::new(),
        };
        self.advance_login(user, session, step).await
    }

    /// Whether `user` is in the middle of a login.
    pub async fn login_pending(&self, user: &str) -> Option<LoginField> {
        self.logins.next_field(user).await
    }

    /// The fields still asked for in the login in progress, in order.
    pub async fn login_remaining_fields(&self, user: &str) -> Vec<LoginField> {
        self.logins.remaining_fields(user).await
    }

    /// Abandons a login in progress; returns whether there was one.
    pub async fn cancel_login(&self, user: &str) -> bool {
        self.logins.take_session(user).await.is_some()
    }

    /// Gives the answer to the field asked last.
    pub async fn login_input(&self, user: &str, value: &str) -> Result<LoginProgress, BridgeError> {
        let Some(mut session) = self.logins.take_session(user).await else {
            return Err(BridgeError::Invalid("no login in progress".into()));
        };
        let field = session
            .next_field()
            .cloned()
            .ok_or_else(|| BridgeError::Invalid("no question pending".into()))?;
        session.values.insert(field.id.clone(), value.to_owned());
        if let Some(next) = session.next_field().cloned() {
            self.logins.keep_session(user, session).await;
            return Ok(LoginProgress::Ask(next, None));
        }
        let values = std::mem::take(&mut session.values);
        let step = session
            .process
            .submit(values)
            .await
            .map_err(|source| BridgeError::Network {
                network: session.network.clone(),
                source,
            })?;
        self.advance_login(user, session, step).await
    }

    async fn advance_login(
        &self,
        user: &str,
        mut session: LoginSession,
        step: LoginStep,
    ) -> Result<LoginProgress, BridgeError> {
        match step {
            LoginStep::Input {
                instructions,
                fields,
            } => {
                let first = fields
                    .first()
                    .cloned()
                    .ok_or_else(|| BridgeError::Invalid("login step asks for nothing".into()))?;
                session.fields = fields;
                session.values.clear();
                self.logins.keep_session(user, session).await;
                Ok(LoginProgress::Ask(first, Some(instructions)))
            }
            LoginStep::Complete { login, client } => {
                self.complete_login(user, &session.network, login, client)
            }
        }
    }

    pub(super) fn complete_login(
        &self,
        user: &str,
        network: &NetworkId,
        login: LoginData,
        client: Arc<dyn NetworkClient>,
    ) -> Result<LoginProgress, BridgeError> {
        self.store.put_login(user, network.as_str(), &login)?;
        let name = login.remote_name.clone();
        self.set_state(network, Some(user), client.state(), None);
        self.logins.register(
            user,
            network,
            UserLogin {
                id: login.id,
                remote_name: name.clone(),
                client,
            },
        );
        info!(user, network = %network, remote = %name, "logged in");
        Ok(LoginProgress::Done(name))
    }

    /// Whether the bot may redact the messages of others in `room`, so that an answer
    /// holding a secret can be removed. `false` when that cannot be told.
    pub async fn bot_can_redact(&self, room: &str) -> bool {
        let Ok(rid) = super::room_id(room) else {
            return false;
        };
        match self.rooms.bot_can_redact(&rid).await {
            Ok(can) => can,
            Err(e) => {
                warn!(room_id = room, error = %crate::error::chain(&e), "could not read the room's power levels");
                false
            }
        }
    }

    /// Creates a direct chat between the bot (power 100) and `user`, where the bot can redact,
    /// and makes it the user's management room. Returns the room.
    pub async fn open_login_room(&self, user: &str) -> Result<String, BridgeError> {
        let room = self.portals.open_login_room(user).await?;
        self.ghosts.note_joined(self.bot.as_str(), &room, true);
        Ok(room)
    }

    /// Logs out one login (or every login of `user` on `network` when `id` is `None`).
    /// Returns the names of the accounts logged out.
    pub async fn logout(
        &self,
        user: &str,
        network: &NetworkId,
        id: Option<&LoginId>,
    ) -> Result<Vec<String>, BridgeError> {
        let removed = self.logins.remove(user, network, id);
        let mut names = Vec::new();
        for l in &removed {
            if let Err(e) = l.client.logout().await {
                warn!(user, network = %network, error = %crate::error::chain(&e), "remote logout failed; forgetting the login anyway");
            }
            self.store.delete_login(user, network.as_str(), &l.id)?;
            names.push(l.remote_name.clone());
        }
        // Logins that failed to load are only in the store.
        for (n, data) in self.store.logins_of(user)? {
            if n == network.as_str() && id.is_none_or(|i| &data.id == i) {
                self.store.delete_login(user, &n, &data.id)?;
                names.push(data.remote_name);
            }
        }
        if !names.is_empty() {
            self.set_state(network, Some(user), BridgeState::LoggedOut, None);
        }
        Ok(names)
    }
}

impl Bridge {
    /// Tells a user, in the management room, how one of their logins is doing.
    pub(super) async fn state_notice(
        &self,
        network: &NetworkId,
        user: &str,
        state: BridgeState,
        message: Option<String>,
    ) {
        let Ok(Some(room)) = self.portals.management_room_of(user) else {
            return;
        };
        let detail = message.map(|m| format!(": {m}")).unwrap_or_default();
        let text = match state {
            BridgeState::Connected => format!("{network}: connected again."),
            BridgeState::TransientDisconnect => {
                format!("{network}: connection lost, reconnecting{detail}.")
            }
            BridgeState::BadCredentials => format!(
                "{network}: the login was refused{detail}. Send `login {network}` to log in again."
            ),
            other => format!("{network} login is now {}{detail}", other.as_str()),
        };
        let txn = format!("isthmus.state.{}.{}", super::now_ms(), state.as_str());
        if let Err(e) = self.send_notice(None, &room, &txn, &text).await {
            warn!(error = %crate::error::chain(&e), "could not tell the user about a state change");
        }
    }
}
