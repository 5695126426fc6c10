//! Login pages: the values of a login step that asks for a secret are typed into a page the
//! bridge serves (`appservice/login_page.rs`), never into Matrix.
//!
//! `login` hands the flow it started to a *login link*: an unguessable token, kept in memory
//! only, bound to the Matrix user, the network and the flow in progress, valid for
//! [`LINK_LIFETIME`] and until the login succeeds. A refused attempt keeps the link (up to
//! [`MAX_FAILURES`] times), so the user can try again. The management room only hears the
//! outcome: "Logged in as …" or the error.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tracing::{info, warn};

use super::{Bridge, LoginSession};
use crate::network::{LoginField, LoginStep, NetworkId};

/// How long a login link works.
pub const LINK_LIFETIME: Duration = Duration::from_secs(600);
/// Refused attempts after which a login link stops working.
pub const MAX_FAILURES: u32 = 5;
/// The path under the public URL where login pages live; the token follows.
pub const LOGIN_PATH: &str = "/_isthmus/login/";

/// A login flow waiting for its values on a login page.
pub struct PendingPage {
    user: String,
    room_id: String,
    session: LoginSession,
    instructions: String,
    expires: Instant,
    failures: u32,
}

/// Login links by token.
#[derive(Default)]
pub struct LoginPages {
    pending: tokio::sync::Mutex<HashMap<String, PendingPage>>,
}

/// A login link just made.
pub struct LoginLink {
    /// The page's address, token included.
    pub url: String,
    /// The network it logs in to.
    pub network: NetworkId,
}

/// What a login page shows.
#[derive(Debug, PartialEq, Eq)]
pub enum PageView {
    /// A form for the fields of the current step.
    Form {
        /// The network's display name.
        network: String,
        /// What the step says before its fields.
        instructions: String,
        /// The fields.
        fields: Vec<LoginField>,
        /// Why the last attempt failed.
        error: Option<String>,
    },
    /// Logged in as this remote account.
    Done(String),
    /// The link works no longer: why, and what to do.
    Closed(String),
}

const GONE: &str = "This login link has expired or was already used. Send `login` in your management room for a new one.";

impl Bridge {
    /// The base of login links (`bridge.public_url`), without a trailing slash.
    pub fn login_page_base(&self) -> Option<&str> {
        self.config
            .bridge
            .public_url
            .as_deref()
            .map(|u| u.trim_end_matches('/'))
    }

    /// Moves `user`'s login in progress to a login page when `bridge.public_url` is set and
    /// its current step asks for a secret; returns the link, or `None` to go on in chat.
    /// The step's `instructions` show on the page; `room` hears the outcome. An earlier link
    /// of the user stops working.
    pub async fn offer_login_page(
        &self,
        user: &str,
        room: &str,
        instructions: Option<String>,
    ) -> Option<LoginLink> {
        let base = self.login_page_base()?;
        let session = self.logins.take_session_asking_secret(user).await?;
        let network = session.network.clone();
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut pending = self.logins.pages.pending.lock().await;
        let now = Instant::now();
        pending.retain(|_, p| p.expires > now && p.user != user);
        pending.insert(
            token.clone(),
            PendingPage {
                user: user.to_owned(),
                room_id: room.to_owned(),
                session,
                instructions: instructions.unwrap_or_default(),
                expires: now + LINK_LIFETIME,
                failures: 0,
            },
        );
        info!(user, network = %network, "login handed to a login page");
        Some(LoginLink {
            url: format!("{base}{LOGIN_PATH}{token}"),
            network,
        })
    }

    /// Forgets `user`'s login links; returns whether there was one.
    pub async fn cancel_login_pages(&self, user: &str) -> bool {
        let mut pending = self.logins.pages.pending.lock().await;
        let before = pending.len();
        pending.retain(|_, p| p.user != user);
        pending.len() != before
    }

    /// The page behind `token`, as a `GET` shows it (looking changes nothing).
    pub async fn login_page(&self, token: &str) -> PageView {
        let mut pending = self.logins.pages.pending.lock().await;
        let Some(p) = pending.get(token) else {
            return PageView::Closed(GONE.into());
        };
        if p.expires <= Instant::now() {
            pending.remove(token);
            return PageView::Closed(GONE.into());
        }
        self.form_view(p, None)
    }

    /// Submits the values posted to the page behind `token` to the login process, and tells
    /// the user's room the outcome.
    pub async fn submit_login_page(
        &self,
        token: &str,
        posted: BTreeMap<String, String>,
    ) -> PageView {
        // Taken out while the network checks the values: a second post of the same link
        // meanwhile finds nothing, so one link never logs in twice.
        let Some(mut p) = self.logins.pages.pending.lock().await.remove(token) else {
            return PageView::Closed(GONE.into());
        };
        if p.expires <= Instant::now() {
            return PageView::Closed(GONE.into());
        }
        let values: BTreeMap<String, String> = p
            .session
            .fields
            .iter()
            .map(|f| {
                let v = posted.get(&f.id).map(|v| v.trim()).unwrap_or_default();
                (f.id.clone(), v.to_owned())
            })
            .collect();
        let network = p.session.network.clone();
        let user = p.user.clone();
        let room = p.room_id.clone();
        match p.session.process.submit(values).await {
            Ok(LoginStep::Input {
                instructions,
                fields,
            }) => {
                p.session.fields = fields;
                p.instructions = instructions;
                let view = self.form_view(&p, None);
                self.logins
                    .pages
                    .pending
                    .lock()
                    .await
                    .insert(token.to_owned(), p);
                view
            }
            Ok(LoginStep::Complete { login, client }) => {
                match self.complete_login(&user, &network, login, client) {
                    Ok(super::LoginProgress::Done(name)) => {
                        self.login_outcome(&room, &format!("Logged in as {name}."))
                            .await;
                        PageView::Done(name)
                    }
                    Ok(super::LoginProgress::Ask(..)) => PageView::Closed(GONE.into()),
                    Err(e) => {
                        let text = format!("Login to {network} failed: {e}.");
                        self.login_outcome(&room, &text).await;
                        PageView::Closed(text)
                    }
                }
            }
            Err(e) => {
                p.failures += 1;
                info!(user, network = %network, failures = p.failures, error = %crate::error::chain(&e), "login on a login page refused");
                if p.failures >= MAX_FAILURES {
                    let text = format!(
                        "Login to {network} failed: {e}. After {MAX_FAILURES} failed tries the link no longer works; send `login {network}` for a new one."
                    );
                    self.login_outcome(&room, &text).await;
                    return PageView::Closed(text);
                }
                self.login_outcome(
                    &room,
                    &format!(
                        "Login to {network} failed: {e}. Try again on the login page while its link works, or send `login {network}` for a new link."
                    ),
                )
                .await;
                let view = self.form_view(&p, Some(format!("Login failed: {e}.")));
                self.logins
                    .pages
                    .pending
                    .lock()
                    .await
                    .insert(token.to_owned(), p);
                view
            }
        }
    }

    fn form_view(&self, p: &PendingPage, error: Option<String>) -> PageView {
        let network = self
            .networks
            .get(&p.session.network)
            .map(|c| c.info().display_name.clone())
            .unwrap_or_else(|| p.session.network.to_string());
        PageView::Form {
            network,
            instructions: p.instructions.clone(),
            fields: p.session.fields.clone(),
            error,
        }
    }

    async fn login_outcome(&self, room: &str, text: &str) {
        let txn = format!(
            "isthmus.login-page.{}.{:x}",
            super::now_ms(),
            rand::random::<u64>()
        );
        if let Err(e) = self.send_notice(None, room, &txn, text).await {
            warn!(room_id = room, error = %crate::error::chain(&e), "could not tell the user how a login went");
        }
    }
}
