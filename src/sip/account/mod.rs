//! Own-account mode: a Matrix user's own SIP account. The bridge REGISTERs a contact for the
//! account at its own endpoint (digest authentication, refreshed at three quarters of the
//! granted time), sends the user's messages as the account, and turns what reaches the
//! contact into the user's direct chats. Once connected, it watches the presence of the
//! contacts of the user's direct chats as the account (`presence::watch_contacts`), and
//! after a first message to a contact; at logout those watches end. The password lives in
//! the login data, which the core seals at rest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rsipstack::dialog::authenticate::Credential;
use rsipstack::sip::prelude::HeadersExt;
use rsipstack::sip::{Header, Method};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Shared;
use super::body;
use super::endpoint::{Outgoing, SendError};
use super::ids;
use super::presence::{self, OwnAccount};
use crate::backoff::Policy;
use crate::network::kit::login;
use crate::network::kit::registry::Entry;
use crate::network::kit::send::send_parts;
use crate::network::kit::state::StateCell;
use crate::network::{
    BridgeState, ChatKind, LoginData, MatrixSender, MessageKind, NetworkClient, NetworkError,
    OutgoingMessage, PortalRef, RemoteMessageId, RemoteUserId, contacts,
};

mod password;

pub(super) use self::password::Accounts;

/// Delays between registration attempts after a passing failure: every 10 s.
const REGISTER_RETRY: Policy = Policy::constant(Duration::from_secs(10));

/// The prefix of the contact user part the bridge registers for an account.
pub const ACCOUNT_PREFIX: &str = "~a.";

/// What a login stores (sealed by the core).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct AccountData {
    /// The address of record, `user@host`.
    pub address: String,
    /// Digest user name, when it differs from the address's user part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
    /// The password.
    pub password: String,
    /// The account's outbound proxy, when not the bridge's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<SocketAddr>,
}

/// One Matrix user's SIP account.
pub(crate) struct Account {
    shared: Arc<Shared>,
    /// The Matrix user.
    user: String,
    data: AccountData,
    /// The account as its presence subscriptions use it; its key is the user part of the
    /// registered contact (routes incoming requests to this account).
    own: Arc<OwnAccount>,
    call_id: String,
    cseq: tokio::sync::Mutex<u32>,
    state: StateCell,
    stop: watch::Sender<bool>,
}

impl Account {
    fn new(shared: Arc<Shared>, user: &str, data: AccountData) -> Arc<Self> {
        let (name, _) = data.address.rsplit_once('@').unwrap_or((&data.address, ""));
        let credential = Credential {
            username: name.to_owned(),
            password: data.password.clone(),
            realm: None,
            auth_username: data.auth_user.clone(),
        };
        let contact_user = format!(
            "{ACCOUNT_PREFIX}{}",
            &ids::room_chat(&format!("{user}\u{1f}{}", data.address))[ids::ROOM_PREFIX.len()..]
        );
        let call_id = shared
            .endpoint()
            .map(|e| e.call_id())
            .unwrap_or_else(|_| format!("{contact_user}@isthmus"));
        let own = Arc::new(OwnAccount {
            key: contact_user,
            aor: ids::contact_uri(&data.address),
            credential,
            proxy: data.proxy,
        });
        Arc::new(Self {
            shared,
            user: user.to_owned(),
            data,
            own,
            call_id,
            cseq: tokio::sync::Mutex::new(0),
            state: StateCell::new(BridgeState::Connecting),
            stop: watch::channel(false).0,
        })
    }

    fn aor_uri(&self) -> String {
        self.own.aor.clone()
    }

    /// Watches, as the account, the contacts of the user's direct chats: in the background,
    /// each time the account connects.
    fn watch_contacts(self: &Arc<Self>) {
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        let account = self.clone();
        // Cancellable at any wait: a watch is stored before its SUBSCRIBE goes out, and the
        // next connection refreshes those of the account.
        tasks.spawn_loop(async move {
            presence::watch_contacts(&account.shared, &account.user, &account.own).await;
        });
    }

    /// Registers the contact for `expires` seconds (0 removes it); returns the time granted.
    async fn register(&self, expires: u32) -> Result<u64, NetworkError> {
        let ep = self.shared.endpoint()?;
        let host = self
            .data
            .address
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or("");
        let registrar = format!("sip:{host}");
        let aor = self.aor_uri();
        let mut asked = expires;
        for _ in 0..2 {
            let cseq = {
                let mut c = self.cseq.lock().await;
                // The challenge retry takes the next number.
                *c += 2;
                *c
            };
            let out = Outgoing {
                method: Method::Register,
                uri: &registrar,
                from: format!("<{aor}>;tag={}", ep.tag()),
                to: format!("<{aor}>"),
                call_id: Some(self.call_id.clone()),
                cseq,
                headers: vec![
                    Header::Contact(ep.contact(&self.own.key).into()),
                    Header::Expires(asked.into()),
                ],
                body: Vec::new(),
                credential: Some(&self.own.credential),
                proxy: self.data.proxy,
            };
            let answer = match ep.send(out).await {
                Ok(a) => a,
                Err(SendError::Transport(e)) => return Err(NetworkError::Down(e)),
                Err(e @ SendError::Stopped) => {
                    return Err(NetworkError::Down(crate::error::Reason::from_error(e)));
                }
                Err(SendError::Invalid(e)) => return Err(NetworkError::InvalidInput(e)),
            };
            match answer.code {
                200..=299 => {
                    // The registrar states the granted time as the `expires` of our binding
                    // in the 200's Contact list (RFC 3261 §10.2.4), else in Expires.
                    let ours = format!("{}@", self.own.key);
                    let from_contact =
                        super::headers::header_values(&answer.response.headers, "Contact")
                            .into_iter()
                            .find(|c| c.contains(&ours))
                            .and_then(|c| {
                                c.split(';')
                                    .filter_map(|p| p.trim().split_once('='))
                                    .find(|(k, _)| k.eq_ignore_ascii_case("expires"))
                                    .and_then(|(_, v)| v.trim().parse::<u32>().ok())
                            });
                    let granted = from_contact
                        .or_else(|| {
                            answer
                                .response
                                .expires_header()
                                .and_then(|e| e.value().trim().parse::<u32>().ok())
                        })
                        .unwrap_or(asked)
                        .min(asked);
                    return Ok(u64::from(granted));
                }
                // Interval too brief: ask again with the registrar's minimum.
                423 => {
                    asked = answer
                        .response
                        .min_expires_header()
                        .and_then(|e| e.value().trim().parse::<u32>().ok())
                        .unwrap_or(asked.saturating_mul(2));
                }
                401 | 403 | 407 => {
                    return Err(NetworkError::BadCredentials(
                        format!(
                            "the registrar refused the credentials ({} {})",
                            answer.code, answer.reason
                        )
                        .into(),
                    ));
                }
                404 => {
                    return Err(NetworkError::BadCredentials(
                        format!(
                            "the registrar does not know this address ({} {})",
                            answer.code, answer.reason
                        )
                        .into(),
                    ));
                }
                code => {
                    return Err(NetworkError::Transient(
                        format!("the registrar answered {code} {}", answer.reason).into(),
                    ));
                }
            }
        }
        Err(NetworkError::Transient(
            "the registrar keeps asking for a longer registration".into(),
        ))
    }

    async fn set_state(&self, state: BridgeState, message: Option<String>) {
        self.state
            .report(self.shared.sink.get(), Some(&self.user), state, message)
            .await;
    }

    /// Keeps the registration alive until logout: refreshes at three quarters of the granted
    /// time, retries passing failures every 10 s, stops on refused credentials.
    async fn keep_registered(self: Arc<Self>, mut wait: Duration) {
        let mut stop = self.stop.subscribe();
        let mut retry = REGISTER_RETRY.start();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
            match self.register(self.shared.register_seconds).await {
                Ok(granted) => {
                    retry.reset();
                    let reconnected = self.state.get() != BridgeState::Connected;
                    self.set_state(BridgeState::Connected, None).await;
                    if reconnected {
                        self.watch_contacts();
                    }
                    wait = Duration::from_secs((granted.saturating_mul(3) / 4).max(5));
                }
                Err(NetworkError::BadCredentials(why)) => {
                    warn!(user = %self.user, address = %self.data.address, "SIP registration refused");
                    self.set_state(BridgeState::BadCredentials, Some(why.to_string()))
                        .await;
                    return;
                }
                Err(e) => {
                    self.set_state(BridgeState::TransientDisconnect, Some(e.to_string()))
                        .await;
                    wait = retry.next_delay().unwrap_or(REGISTER_RETRY.cap());
                }
            }
        }
    }

    /// Routes requests for this account's contact to its user, and stops the registration
    /// loop of an earlier login of the same account (a `login` again, say after a password
    /// change), so only this one keeps the binding.
    fn track(self: &Arc<Self>) {
        self.shared.accounts.track(
            &self.own.key,
            Entry {
                user: self.user.clone(),
                stop: self.stop.clone(),
                account: self.own.clone(),
            },
        );
    }

    fn login_data(&self) -> LoginData {
        login::login_data("sip", &self.data.address, &self.data)
    }

    async fn send_to(
        &self,
        to_aor: &str,
        display: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<String, NetworkError> {
        let ep = self.shared.endpoint()?;
        let to_uri = ids::contact_uri(to_aor);
        let call_id = ep.call_id();
        let out = Outgoing {
            method: Method::Message,
            uri: &to_uri,
            from: format!(
                "{} <{}>;tag={}",
                super::headers::quoted(display),
                self.aor_uri(),
                ep.tag()
            ),
            to: format!("<{to_uri}>"),
            call_id: Some(call_id.clone()),
            cseq: 1,
            headers: vec![Header::ContentType(content_type.into())],
            body,
            credential: Some(&self.own.credential),
            proxy: self.data.proxy,
        };
        super::handle_matrix::outcome(ep.send(out).await).map(|()| call_id)
    }
}

#[async_trait]
impl NetworkClient for Account {
    fn state(&self) -> BridgeState {
        self.state.get()
    }

    async fn send_message(
        &self,
        portal: &PortalRef,
        message: &OutgoingMessage,
    ) -> Result<RemoteMessageId, NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Err(NetworkError::Unsupported("group chats"));
        }
        let text = match message.content.kind {
            MessageKind::Emote if message.content.attachment.is_none() => {
                format!("/me {}", message.content.body.trim_end())
            }
            _ => super::handle_matrix::text_of(message),
        };
        let parts = body::split(&text, self.shared.max_body());
        let first = send_parts(parts, &message.sent, |part| async move {
            self.send_to(
                portal.chat.as_str(),
                &message.sender.displayname,
                "text/plain;charset=UTF-8",
                part.into_bytes(),
            )
            .await
            .map(RemoteMessageId::new)
        })
        .await?;
        // After the first message, watch the contact's presence as the account (once: the
        // watch is kept).
        let (shared, own) = (self.shared.clone(), self.own.clone());
        let (user, contact) = (self.user.clone(), portal.chat.as_str().to_owned());
        if let Ok(tasks) = self.shared.tasks() {
            tasks.spawn_loop(async move {
                if let Err(e) = presence::watch(&shared, &user, &contact, Some(&own)).await {
                    debug!(error = %crate::error::chain(&e), %contact, "could not subscribe to a contact's presence through an account");
                }
            });
        }
        Ok(first.unwrap_or_else(|| RemoteMessageId::new("")))
    }

    async fn send_typing(
        &self,
        portal: &PortalRef,
        sender: &MatrixSender,
        typing: bool,
    ) -> Result<(), NetworkError> {
        if portal.kind != ChatKind::Direct {
            return Ok(());
        }
        self.send_to(
            portal.chat.as_str(),
            &sender.displayname,
            body::ISCOMPOSING,
            body::iscomposing(typing),
        )
        .await
        .map(|_| ())
    }

    /// Watchers of the account reach the bridge through the registrar (the account's
    /// contact is the bridge), so the account's presence is the Matrix user's, served by
    /// the same watcher handling as the gateway's.
    async fn set_presence(
        &self,
        sender: &MatrixSender,
        presence: &crate::network::Presence,
    ) -> Result<(), NetworkError> {
        presence::publish(&self.shared, &sender.user_id, presence).await
    }

    async fn answer_contact_request(
        &self,
        user: &MatrixSender,
        contact: &RemoteUserId,
        accept: bool,
    ) -> Result<(), NetworkError> {
        presence::answer(&self.shared, &user.user_id, contact.as_str(), accept).await
    }

    async fn contacts(
        &self,
        user: &MatrixSender,
    ) -> Result<Vec<crate::network::Contact>, NetworkError> {
        Ok(contacts::list(self.shared.store()?, &user.user_id)?)
    }

    async fn logout(&self) -> Result<(), NetworkError> {
        self.stop.send_replace(true);
        // Watchers of the account stop seeing the Matrix user's presence.
        presence::end_watchers_of(&self.shared, &self.aor_uri()).await;
        // What the account watched is no longer seen through it (unless a newer login of the
        // account holds it now, and its watches with it).
        let holds = self
            .shared
            .accounts
            .account_of(&self.own.key, &self.user)
            .is_some_and(|own| Arc::ptr_eq(&own, &self.own));
        if holds {
            presence::unwatch_account(&self.shared, &self.user, &self.own).await;
        }
        // Only this login's entry: a newer login of the same account keeps its own.
        self.shared.accounts.untrack(&self.own.key, &self.stop);
        let r = self.register(0).await.map(|_| ());
        info!(user = %self.user, address = %self.data.address, "SIP account unregistered");
        r
    }
}
