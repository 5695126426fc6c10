//! The loopback [`Connector`]: the control socket's listener, IDs, and the password login
//! flow.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::client::LoopbackClient;
use super::control::serve;
use super::{Loopback, PASSWORD, Shared};
use crate::network::{
    BridgeState, Connector, EventSink, LoginData, LoginField, LoginFlow, LoginId, LoginProcess,
    LoginStep, NetworkClient, NetworkError, NetworkInfo, RemoteChatId, RemoteUserId,
};

fn valid_id(raw: &str) -> Result<String, NetworkError> {
    let id = raw.trim();
    if id.is_empty() || id.len() > 255 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NetworkError::InvalidInput(
            "a loopback ID is 1 to 255 characters without spaces".into(),
        ));
    }
    Ok(id.to_lowercase())
}

#[async_trait]
impl Connector for Loopback {
    fn info(&self) -> &NetworkInfo {
        &self.info
    }

    async fn undelivered(&self, event: &crate::network::RemoteEvent, reason: &str) {
        let op = json!({"op": "undelivered", "event": event, "reason": reason});
        self.shared.log.lock().expect("log lock").push(op.clone());
        let _ = self.shared.feed.send(json!({"sent": op}).to_string());
    }

    fn rate_key(&self, user: &RemoteUserId) -> String {
        // Loopback IDs have no domains; `name@group` puts users in a group, for tests of
        // the per-domain limits. A plain ID is a group of its own.
        match user.as_str().rsplit_once('@') {
            Some((_, group)) => group.to_owned(),
            None => user.as_str().to_owned(),
        }
    }

    async fn start(&self, sink: EventSink) -> Result<(), NetworkError> {
        let listener = TcpListener::bind(self.control).await.map_err(|e| {
            NetworkError::Internal(format!("cannot listen on {}: {e}", self.control).into())
        })?;
        info!(control = %self.control, "loopback network control socket listening");
        let shared = Arc::clone(&self.shared);
        let mut stop = self.shared.stop.subscribe();
        let tasks = sink.tasks().clone();
        self.shared
            .sink
            .set(sink)
            .map_err(|_| NetworkError::Internal("the loopback network was started twice".into()))?;
        tasks.clone().spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            debug!(%peer, "loopback control client connected");
                            tasks.spawn_loop(serve(Arc::clone(&shared), stream));
                        }
                        Err(e) => warn!(error = %crate::error::chain(&e), "loopback accept failed"),
                    },
                }
            }
        });
        Ok(())
    }

    async fn stop(&self) {
        self.shared.stop.send_replace(true);
    }

    fn bridge_client(&self) -> Option<Arc<dyn NetworkClient>> {
        Some(self.gateway.clone())
    }

    fn login_flows(&self) -> Vec<LoginFlow> {
        vec![LoginFlow {
            id: "password".into(),
            name: "Username and password".into(),
            description: "Log in with a loopback username and password.".into(),
        }]
    }

    async fn start_login(
        &self,
        _user_id: &str,
        flow_id: &str,
    ) -> Result<Box<dyn LoginProcess>, NetworkError> {
        if flow_id != "password" {
            return Err(NetworkError::InvalidInput(
                format!("unknown flow {flow_id}").into(),
            ));
        }
        Ok(Box::new(PasswordLogin {
            shared: Arc::clone(&self.shared),
        }))
    }

    async fn load_login(
        &self,
        _user_id: &str,
        login: &LoginData,
    ) -> Result<Arc<dyn NetworkClient>, NetworkError> {
        if login.data.get("password").and_then(Value::as_str) != Some(PASSWORD) {
            return Err(NetworkError::BadCredentials(
                "the stored password is wrong".into(),
            ));
        }
        Ok(Arc::new(LoopbackClient {
            shared: Arc::clone(&self.shared),
            login: Some(login.remote_user.to_string()),
            direct_only: login.data.get("chats").and_then(Value::as_str) == Some("direct"),
        }))
    }

    fn parse_user_id(&self, raw: &str) -> Result<RemoteUserId, NetworkError> {
        valid_id(raw).map(RemoteUserId::new)
    }

    fn parse_group_chat_id(&self, raw: &str) -> Result<Option<RemoteChatId>, NetworkError> {
        let id = valid_id(raw)?;
        if !id.starts_with('#') {
            return Err(NetworkError::InvalidInput(
                "loopback group chats start with #".into(),
            ));
        }
        Ok(Some(RemoteChatId::new(id)))
    }

    fn status(&self) -> Vec<(String, BridgeState)> {
        vec![(
            format!("control socket {}", self.control),
            BridgeState::Connected,
        )]
    }
}

struct PasswordLogin {
    shared: Arc<Shared>,
}

#[async_trait]
impl LoginProcess for PasswordLogin {
    fn first_step(&mut self) -> LoginStep {
        LoginStep::Input {
            instructions: "Log in to the loopback network.".into(),
            fields: vec![
                LoginField {
                    id: "username".into(),
                    name: "username".into(),
                    secret: false,
                },
                LoginField {
                    id: "password".into(),
                    name: "password".into(),
                    secret: true,
                },
            ],
        }
    }

    async fn submit(&mut self, input: BTreeMap<String, String>) -> Result<LoginStep, NetworkError> {
        let user = valid_id(input.get("username").map(String::as_str).unwrap_or(""))?;
        if input.get("password").map(String::as_str) != Some(PASSWORD) {
            return Err(NetworkError::BadCredentials(
                "wrong username or password".into(),
            ));
        }
        let client = Arc::new(LoopbackClient {
            shared: Arc::clone(&self.shared),
            login: Some(user.clone()),
            direct_only: false,
        });
        Ok(LoginStep::Complete {
            login: LoginData {
                id: LoginId::new(user.as_str()),
                remote_user: RemoteUserId::new(user.as_str()),
                remote_name: user.clone(),
                data: json!({"password": PASSWORD}),
            },
            client,
        })
    }
}
