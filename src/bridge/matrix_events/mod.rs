//! Matrix → remote network: what Matrix users do in portal rooms, bridged to the networks.
//!
//! [`Bridge::handle_matrix_event`] gets each timeline event read once (`bridge/event.rs`)
//! and hands it, by an exhaustive match on its kind, to one handler per kind, each in the
//! file of its topic:
//!
//! | file | what |
//! |---|---|
//! | `membership.rs` | invites (of the bot, of ghosts: direct chats and fan-out members), joins and leaves |
//! | `messages.rs` | messages and edits to the room's portal, fan-out to members on other networks, relaying |
//! | `reactions.rs` | reactions, and redactions (retractions, moderation) |
//! | `ephemeral.rs` | typing, read receipts, presence |
//! | `reporting.rs` | telling senders what did not cross, and why |
//! | `content.rs` | the pure reading of message contents: conversion, relations, reply fallbacks |
//!
//! This file holds the dispatch and what the handlers share: which identity sends for a
//! Matrix user, and how networks see the sender.

mod content;
mod ephemeral;
mod membership;
mod messages;
mod reactions;
mod reporting;

use std::sync::Arc;
use std::time::Instant;

use super::event::{EventKind, MatrixEvent};
use super::{Bridge, BridgeError};
use crate::config::PermissionLevel;
use crate::network::{
    MatrixSender, NetworkClient, NetworkError, NetworkId, PortalRef, RemoteUserId,
};
use crate::store::PortalRecord;

pub use self::content::message_content;

impl Bridge {
    /// Bridges one Matrix timeline event, read already: one handler per kind.
    pub(super) async fn handle_matrix_event(
        &self,
        seq: u64,
        ev: &MatrixEvent,
    ) -> Result<(), BridgeError> {
        if self.in_namespace(&ev.sender) {
            // A ghost's message in a room shared with another network's members goes on to
            // them (Matrix is the hub); everything else from the bridge's own users is an echo.
            if let EventKind::Message(content) = &ev.kind
                && ev.sender != self.bot().as_str()
                && self.portals.has_fanout(&ev.room_id)
            {
                return self.ghost_message(seq, ev, content).await;
            }
            return Ok(());
        }
        match &ev.kind {
            EventKind::Member(content) => self.handle_membership(seq, ev, content).await,
            EventKind::Message(content) => self.handle_message(seq, ev, content).await,
            EventKind::Reaction(content) => self.handle_reaction(seq, ev, content).await,
            EventKind::Redaction(content) => self.handle_redaction(seq, ev, content).await,
            EventKind::Encryption(_) => self.encryption_turned_on(seq, ev).await.map(drop),
            EventKind::Encrypted => self.encrypted_event(seq, ev).await,
            EventKind::Topic(content) => self.topic_changed(ev, &content.topic).await,
            EventKind::Other(_) => Ok(()),
        }
    }

    fn observe(&self, network: &NetworkId, op: &str, started: Instant) {
        self.metrics
            .remote_request_seconds
            .with_label_values(&[network.as_str(), op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The identity that sends for `user` in `portal`, and whether it relays.
    pub fn client_for(
        &self,
        portal: &PortalRecord,
        user: &str,
    ) -> Result<(Arc<dyn NetworkClient>, bool), NetworkError> {
        let level = self.level(user);
        if level >= PermissionLevel::User
            && let Some(c) = self.chat_client(user, portal)
        {
            return Ok((c, false));
        }
        if level >= PermissionLevel::Relay
            && self.config.bridge.relay.enabled
            && let Some((relay_user, login_id)) = &portal.relay
            && let Some(c) = self.login_client(relay_user, &portal.key.network, login_id)
        {
            // The relay's login, or the network's bridge-wide identity for chats the login
            // does not carry (the relayed message then speaks as the relay's owner there).
            let c = if c.serves(portal.kind) {
                Some(c)
            } else {
                self.bridge_client(&portal.key.network)
            };
            if let Some(c) = c {
                return Ok((c, true));
            }
        }
        Err(NetworkError::NotLoggedIn)
    }

    /// The identity that acts for `user` in `portal`: the user's own login when it carries
    /// chats of the portal's kind ([`NetworkClient::serves`]), else the network's bridge-wide
    /// identity. The one place that picks between the two for a chat.
    pub fn chat_client(&self, user: &str, portal: &PortalRecord) -> Option<Arc<dyn NetworkClient>> {
        if self.level(user) < PermissionLevel::User {
            return None;
        }
        let network = &portal.key.network;
        self.logins_of(user, network)
            .into_iter()
            .map(|l| l.client)
            .find(|c| c.serves(portal.kind))
            .or_else(|| self.bridge_client(network))
    }

    /// The network's bridge-wide identity, if it has one.
    fn bridge_client(&self, network: &NetworkId) -> Option<Arc<dyn NetworkClient>> {
        self.networks.get(network).and_then(|c| c.bridge_client())
    }

    /// For a relayed operation (`relayed`), the relay's owner as the network sees the
    /// sender: the only identity a relayed message may speak as.
    async fn relay_speaker(&self, portal: &PortalRecord, relayed: bool) -> Option<MatrixSender> {
        let (owner, _) = portal.relay.as_ref().filter(|_| relayed)?;
        Some(self.matrix_sender(owner).await)
    }

    /// The user's own login on a network, else the network's bridge-wide identity.
    pub fn user_client(&self, user: &str, network: &NetworkId) -> Option<Arc<dyn NetworkClient>> {
        if self.level(user) < PermissionLevel::User {
            return None;
        }
        if let Some(l) = self.logins_of(user, network).into_iter().next() {
            return Some(l.client);
        }
        self.bridge_client(network)
    }

    /// The sender as networks see it: user ID and display name. The name comes from the
    /// homeserver once per ten minutes (`MatrixUsers::display_name`) or after a member event
    /// of the user (which is how a change of name reaches the bridge), not once per message.
    pub async fn matrix_sender(&self, user: &str) -> MatrixSender {
        let displayname = self.matrix_users.display_name(user).await;
        let fallback = user
            .strip_prefix('@')
            .and_then(|u| u.split(':').next())
            .unwrap_or(user)
            .to_owned();
        MatrixSender {
            user_id: user.to_owned(),
            displayname: displayname.unwrap_or(fallback),
        }
    }
}

/// How a connector sees a portal.
pub fn portal_ref(p: &PortalRecord) -> PortalRef {
    PortalRef {
        chat: p.key.chat.clone(),
        kind: p.kind,
        receiver: p.key.receiver.clone(),
        members: p.members.iter().map(RemoteUserId::new).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::Bridge;
    use crate::matrix::{HomeserverClient, HsConfig};
    use crate::network::{
        ChatKind, Connector, LoginData, LoginId, NetworkClient, NetworkId, RemoteUserId,
    };
    use crate::store::{PortalKey, PortalRecord, Store};

    /// A bridge on the loopback network (not started), with no homeserver behind it: the
    /// identity pick asks neither.
    fn bridge(dir: &std::path::Path) -> Arc<Bridge> {
        let text = format!(
            r#"
homeserver: {{url: "http://127.0.0.1:9", domain: localhost}}
appservice:
  listen: 127.0.0.1:0
  url: http://127.0.0.1:0
  as_token: as_token_for_unit_tests
  hs_token: hs_token_for_unit_tests
database: {{path: "{}"}}
bridge:
  permissions: {{localhost: user}}
networks:
  loopback: {{control: "127.0.0.1:0"}}
"#,
            dir.display()
        );
        let config = Arc::new(crate::config::Config::parse(&text).unwrap());
        let store = Store::open(
            dir,
            crate::store::LoginKey::ephemeral().unwrap(),
            config.database.cache_bytes(),
        )
        .unwrap();
        let hs = HomeserverClient::new(
            HsConfig::new(
                "http://127.0.0.1:9",
                "localhost",
                "as_token_for_unit_tests",
                "isthmus",
                "_isthmus_bot",
            ),
            None,
        )
        .unwrap();
        let loopback: Arc<dyn Connector> = Arc::new(crate::loopback::Loopback::new(
            "127.0.0.1:0".parse().unwrap(),
        ));
        Bridge::new(
            config,
            hs,
            store,
            crate::metrics::Metrics::new(),
            vec![loopback],
            crate::tasks::Tasks::new(),
        )
        .unwrap()
    }

    /// Logs `user` in to the loopback network; `chats` is the login's knob (`"direct"`: it
    /// carries direct chats only).
    async fn log_in(bridge: &Bridge, user: &str, chats: Option<&str>) {
        let network = NetworkId::new("loopback");
        let login = LoginData {
            id: LoginId::new(format!("{user}-login")),
            remote_user: RemoteUserId::new("alice"),
            remote_name: "alice".into(),
            data: json!({"password": crate::loopback::PASSWORD, "chats": chats}),
        };
        let connector = bridge.connector(&network).expect("loopback").clone();
        let client = connector.load_login(user, &login).await.unwrap();
        bridge
            .complete_login(user, &network, login, client)
            .unwrap();
    }

    #[tokio::test]
    async fn a_login_that_carries_no_group_chats_is_passed_over_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = bridge(dir.path());
        let (direct_only, full) = ("@alice:localhost", "@carol:localhost");
        log_in(&bridge, direct_only, Some("direct")).await;
        log_in(&bridge, full, None).await;
        let gateway = bridge
            .connector(&NetworkId::new("loopback"))
            .and_then(|c| c.bridge_client())
            .expect("a bridge-wide identity");
        let bridge_wide =
            |c: &Arc<dyn NetworkClient>| std::ptr::addr_eq(Arc::as_ptr(c), Arc::as_ptr(&gateway));
        let group = PortalRecord::new(
            PortalKey::new("loopback", "room", None),
            "!group:localhost",
            ChatKind::Group,
        );
        for (user, own_in_group) in [(direct_only, false), (full, true)] {
            let dm = PortalRecord::new(
                PortalKey::new("loopback", "bob", Some(user)),
                "!dm:localhost",
                ChatKind::Direct,
            );
            let in_dm = bridge.chat_client(user, &dm).expect("an identity");
            assert!(
                !bridge_wide(&in_dm),
                "{user}: their own login speaks in their direct chat"
            );
            let in_group = bridge.chat_client(user, &group).expect("an identity");
            assert_eq!(
                !bridge_wide(&in_group),
                own_in_group,
                "{user}: their own login speaks in a group chat only when it carries group chats"
            );
        }
        // Below the `user` level, nobody speaks for a user.
        assert!(bridge.chat_client("@eve:elsewhere", &group).is_none());
    }
}
