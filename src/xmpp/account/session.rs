//! An own account's session: what its connection receives (messages, carbons, presence,
//! roster pushes, IQs), the roster sync and the initial presence once it is online.

use super::*;

/// The account's presence for the Matrix user's: "offline" in Matrix keeps the connection
/// (else the server would stop delivering messages) and shows as extended away.
pub(super) fn own_presence(presence: Option<&Presence>) -> Stanza {
    let mut p = XmppPresence::new(PresenceType::None);
    if let Some(presence) = presence {
        p.show = match presence.state {
            PresenceState::Online => None,
            PresenceState::Unavailable => Some(Show::Away),
            PresenceState::Offline => Some(Show::Xa),
        };
        if let Some(status) = &presence.status {
            p.statuses.insert(Default::default(), status.clone());
        }
    }
    p.payloads.push(payloads::account_caps().into());
    p.into()
}

pub(super) struct RosterItem {
    jid: String,
    name: Option<String>,
    removed: bool,
}

/// The items of a roster result or push. Read by hand: the crate's `Roster` refuses the
/// whole roster for one item whose JID is not a bare JID, where this skips that item.
/// The result of an IQ asked of the account: to whoever asked (the account's server when
/// `to` is none), with `payload` if any.
fn iq_result(to: Option<Jid>, id: String, payload: Option<Element>) -> Stanza {
    Iq::Result {
        from: None,
        to,
        id,
        payload,
    }
    .into()
}

pub(super) fn roster_items(query: &Element) -> Vec<RosterItem> {
    query
        .children()
        .filter(|c| c.is("item", ROSTER))
        .filter_map(|c| {
            let jid = BareJid::from_str(c.attr("jid")?).ok()?.to_string();
            let name = c.attr("name").and_then(crate::text::display_name);
            Some(RosterItem {
                jid,
                name,
                removed: c.attr("subscription") == Some("remove"),
            })
        })
        .collect()
}

/// Kind of carbon copy.
pub(super) enum Carbon {
    Sent(Message),
    Received(Message),
}

/// Whether `msg` is a carbon copy (XEP-0280).
pub(super) fn is_carbon(msg: &Message) -> bool {
    msg.payloads
        .iter()
        .any(|p| p.has_ns(ns::CARBONS) && matches!(p.name(), "sent" | "received"))
}

/// The copied message of a carbon, when `msg` is one from the account itself.
pub(super) fn carbon(msg: &Message, own: &BareJid) -> Option<Carbon> {
    // Only the account's own server may send carbons (to the bare JID): anything else is
    // a forgery (CVE-2017-5589 style) and is dropped.
    if msg.from.as_ref() != Some(&Jid::from(own.clone())) {
        warn!(from = ?msg.from, "forged carbon copy dropped");
        return None;
    }
    let payloads = &msg.payloads;
    payloads::find::<carbons::Sent>(payloads, "sent", ns::CARBONS)
        .map(|c| Carbon::Sent(c.forwarded.message))
        .or_else(|| {
            payloads::find::<carbons::Received>(payloads, "received", ns::CARBONS)
                .map(|c| Carbon::Received(c.forwarded.message))
        })
}

#[async_trait]
impl c2s::Events for Account {
    async fn stanza(&self, stanza: Stanza) -> Vec<Stanza> {
        match stanza {
            Stanza::Message(msg) => {
                if is_carbon(&msg) {
                    match carbon(&msg, &self.jid) {
                        Some(Carbon::Sent(inner)) => {
                            self.parts
                                .handler
                                .sent_elsewhere(inner, &self.jid, &self.user)
                                .await;
                        }
                        Some(Carbon::Received(inner)) => {
                            // Another client of the user got it; it answers receipts.
                            let _ = self.parts.handler.stanza(inner.into()).await;
                        }
                        None => {}
                    }
                    return Vec::new();
                }
                if self.archived(&msg).await {
                    return Vec::new();
                }
                if let Some(items) = msg
                    .payloads
                    .iter()
                    .find(|p| p.is("event", PUBSUB_EVENT))
                    .and_then(|e| e.get_child("items", PUBSUB_EVENT))
                {
                    // A contact published a new avatar (XEP-0084 notification).
                    if items.attr("node") == Some(AVATAR_METADATA)
                        && let Some(contact) = msg.from.as_ref().map(|f| f.to_bare())
                        && self.avatar_source(&contact)
                        && let Some(me) = self.this.upgrade()
                        && let Ok(tasks) = self.parts.shared.tasks()
                    {
                        tasks.spawn_loop(me.pep_avatar(contact, Some(items.clone())));
                    }
                    return Vec::new();
                }
                if msg.from.as_ref().is_some_and(|f| f.to_bare() == self.jid) {
                    return Vec::new();
                }
                if msg.type_ == xmpp_parsers::message::MessageType::Groupchat {
                    return Vec::new();
                }
                let answers = self.parts.handler.stanza(msg.clone().into()).await;
                self.note_archived(&msg);
                answers
            }
            Stanza::Presence(p) => {
                // The account's other clients, and group chats joined from them.
                if p.from.as_ref().is_none_or(|f| f.to_bare() == self.jid) {
                    return Vec::new();
                }
                if p.payloads.iter().any(|e| e.has_ns(ns::MUC_USER)) {
                    return Vec::new();
                }
                // A contact seen online for the first time in this run: its published avatar
                // (XEP-0084) is asked for once; later changes come as notifications.
                if p.type_ == PresenceType::None
                    && let Some(contact) = p.from.as_ref().map(|f| f.to_bare())
                    && self.avatar_source(&contact)
                    && self.pep.first_ask(&contact.to_string())
                    && let Some(me) = self.this.upgrade()
                    && let Ok(tasks) = self.parts.shared.tasks()
                {
                    tasks.spawn_loop(me.pep_avatar(contact, None));
                }
                self.parts.handler.stanza(p.into()).await
            }
            Stanza::Iq(iq) => self.iq(iq).await,
        }
    }

    async fn stanzas(&self, batch: Vec<Stanza>) -> Result<Vec<Stanza>, Reason> {
        let Some(sink) = self.parts.shared.sink.get() else {
            return Err(Reason::new("the bridge is not ready to store events"));
        };
        let mut answers = Vec::new();
        self.batch_started();
        let stored = sink
            .push_batch(Box::pin(async {
                for stanza in batch {
                    answers.extend(self.stanza(stanza).await);
                }
            }))
            .await;
        self.batch_ended(stored.is_ok());
        stored.map_err(Reason::from_error)?;
        Ok(answers)
    }

    async fn online(&self, jid: &FullJid, resumed: bool) -> Vec<Stanza> {
        debug!(jid = %jid, resumed, "XMPP account session ready");
        let presence = self.presence.lock().expect("presence lock").clone();
        if resumed {
            // A presence change made while the connection was down.
            return vec![own_presence(presence.as_ref())];
        }
        // The archive position before anything of the new session arrives: offline messages
        // come live right after the initial presence and must not move it past the gap.
        self.catching_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let position = self
            .parts
            .shared
            .store()
            .ok()
            .and_then(|s| s.get(&self.archive_key()).ok().flatten())
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Some(me) = self.this.upgrade()
            && let Ok(tasks) = self.parts.shared.tasks()
        {
            // The initial presence waits for the catch-up: the server then delivers stored
            // offline messages after the archive's, so everything arrives in order (the
            // repeats are dropped by ID), and nothing addressed to the account in between
            // is lost (it goes to the user's other clients or to offline storage). A
            // shutdown may cut it: the archive position is stored only for what was stored.
            let task = tasks.spawn_loop(async move {
                me.clone().sync_roster().await;
                me.clone().catch_up(position).await;
                let presence = me.presence.lock().expect("presence lock").clone();
                let _ = me.out.send((own_presence(presence.as_ref()), None)).await;
            });
            if let Some(old) = self
                .session_task
                .lock()
                .expect("task lock")
                .replace(task.abort_handle())
            {
                old.abort();
            }
        }
        let carbons = Iq::Set {
            from: None,
            to: None,
            id: format!("carbons-{}", crate::network::now_ms()),
            payload: carbons::Enable.into(),
        };
        vec![carbons.into()]
    }

    async fn state(&self, state: BridgeState, detail: Option<String>) {
        if *self.stop.borrow() {
            // Logged out or replaced: nothing more to report.
            return;
        }
        if state == BridgeState::Connected {
            self.track().await;
        }
        if let Some(d) = &detail {
            *self.last_problem.lock().expect("problem lock") = Some(d.clone());
        }
        let changed = self.state.set(state);
        if state == BridgeState::Connected
            && let Some(first) = self.first.lock().expect("first lock").take()
        {
            let _ = first.send(Ok(()));
        }
        if state == BridgeState::BadCredentials
            && let Some(first) = self.first.lock().expect("first lock").take()
        {
            let _ = first.send(Err(NetworkError::BadCredentials(
                detail
                    .clone()
                    .unwrap_or_else(|| "the server refused the login".into())
                    .into(),
            )));
            return;
        }
        if changed && let Some(sink) = self.parts.shared.sink.get() {
            sink.report_state(Some(&self.user), state, detail).await;
        }
    }
}

impl Account {
    /// Fetches the roster and makes sure each contact has a portal.
    pub(super) async fn sync_roster(self: Arc<Self>) {
        let query = Roster {
            ver: None,
            items: Vec::new(),
        }
        .into();
        let answer = self
            .parts
            .shared
            .request_via(&self.out, None, Jid::from(self.jid.clone()), false, query)
            .await;
        let items = match answer {
            Ok(Ok(Some(q))) => roster_items(&q),
            Ok(Ok(None)) => Vec::new(),
            Ok(Err(e)) => {
                warn!(jid = %self.jid, error = %crate::error::chain(&e), "the server refused the roster");
                return;
            }
            Err(e) => {
                warn!(jid = %self.jid, error = %crate::error::chain(&e), "no roster");
                return;
            }
        };
        info!(jid = %self.jid, contacts = items.len(), "roster received");
        self.apply_roster(items, true).await;
    }

    /// Records roster items; new contacts (up to a limit at login) get a portal.
    pub(super) async fn apply_roster(&self, items: Vec<RosterItem>, full: bool) {
        let mut fresh = Vec::new();
        {
            let mut roster = self.roster.lock().expect("roster lock");
            if full {
                let keep: BTreeSet<&str> = items.iter().map(|i| i.jid.as_str()).collect();
                roster.retain(|k, _| keep.contains(k.as_str()));
            }
            for item in items {
                if item.removed {
                    roster.remove(&item.jid);
                    continue;
                }
                if roster.insert(item.jid.clone(), item.name.clone()).is_none() {
                    fresh.push(item);
                }
            }
        }
        let Some(sink) = self.parts.shared.sink.get() else {
            return;
        };
        if fresh.len() > ROSTER_PORTALS {
            info!(jid = %self.jid, contacts = fresh.len(), limit = ROSTER_PORTALS, "large roster: the other contacts get a portal when they write");
        }
        for item in fresh.into_iter().take(ROSTER_PORTALS) {
            if self.parts.shared.addressing.contact(&item.jid).is_err() {
                continue;
            }
            let ev = RemoteEvent::direct(&item.jid, &self.user, RemoteEventKind::ChatExists)
                .named(item.name);
            if let Err(e) = sink.push(ev).await {
                warn!(error = %crate::error::chain(&e), "could not store a roster contact");
            }
        }
    }

    /// Answers IQs addressed to the account's connection.
    pub(super) async fn iq(&self, iq: Iq) -> Vec<Stanza> {
        let own = Jid::from(self.jid.clone());
        match iq {
            Iq::Set {
                from, id, payload, ..
            } if payload.is("query", ROSTER) => {
                // Roster pushes come from the account itself (RFC 6121 §2.1.6); others
                // are forgeries.
                if from.as_ref().is_some_and(|f| f != &own) {
                    return vec![error_reply(from, None, id, DefinedCondition::Forbidden)];
                }
                self.apply_roster(roster_items(&payload), false).await;
                vec![iq_result(from, id, None)]
            }
            Iq::Get {
                from, id, payload, ..
            } if payload.is("ping", ns::PING) => vec![iq_result(from, id, None)],
            Iq::Get {
                from, id, payload, ..
            } if payload.is("query", ns::DISCO_INFO)
                && payload
                    .attr("node")
                    .is_none_or(|n| n == payloads::account_caps_node()) =>
            {
                let node = payload.attr("node").map(str::to_owned);
                vec![iq_result(
                    from,
                    id,
                    Some(payloads::account_disco(node).into()),
                )]
            }
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => {
                vec![error_reply(
                    from,
                    None,
                    id,
                    DefinedCondition::ServiceUnavailable,
                )]
            }
            answer @ (Iq::Result { .. } | Iq::Error { .. }) => {
                self.parts.handler.stanza(answer.into()).await
            }
        }
    }
}
