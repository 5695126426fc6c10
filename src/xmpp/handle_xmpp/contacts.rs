//! XMPP → bridge: contacts' presence and subscriptions (RFC 6121) to Matrix users' addresses.

use super::*;

/// The error answer to a presence stanza, from the address it was sent to.
fn presence_error(
    p: &Presence,
    type_: ErrorType,
    condition: DefinedCondition,
    text: &str,
) -> Stanza {
    let mut err = Presence::new(PresenceType::Error);
    err.from = p.to.clone();
    err.to = p.from.clone();
    err.id = p.id.clone();
    err.payloads
        .push(StanzaError::new(type_, condition, "en", text).into());
    err.into()
}

impl Handler {
    pub(super) async fn presence(&self, p: Presence) -> Vec<Stanza> {
        if let Some(to) = &p.to
            && to.node().is_some_and(|n| n.as_str().starts_with('#'))
        {
            return self.hosted_presence(p).await;
        }
        if let Some(from) = &p.from
            && self.shared.rooms.is_room(&from.to_bare().to_string())
        {
            self.muc_presence(p).await;
            return Vec::new();
        }
        let Some((contact, user)) = self.parties(&p.from, &p.to) else {
            return Vec::new();
        };
        let Some(puppet) = p.to.clone().map(|j| Jid::from(j.to_bare())) else {
            return Vec::new();
        };
        // An own account's server keeps its roster and answers probes: only requests reach
        // the user, who answers them (never a policy: the account is the user's own).
        let own = self.shared.is_account(&puppet.to_bare());
        if own && p.type_ == PresenceType::Subscribe {
            info!(contact = %contact, user, "presence subscription request to an own account");
            self.push(RemoteEvent::direct(
                &contact.to_string(),
                &user,
                RemoteEventKind::ContactRequest,
            ))
            .await;
            return Vec::new();
        }
        if own && !matches!(p.type_, PresenceType::None | PresenceType::Unavailable) {
            return Vec::new();
        }
        if !own {
            // RFC 6121 §8.5.1: presence to a user who does not exist is ignored, and a
            // subscription request is answered `unsubscribed`; nothing is stored for it.
            match self.user_status(&p.to, &user).await {
                MatrixUserStatus::Reachable => {}
                MatrixUserStatus::NotFound => {
                    info!(contact = %contact, user, type_ = ?p.type_, "presence to a Matrix user who does not exist");
                    return match p.type_ {
                        PresenceType::Subscribe => vec![subscription_stanza(
                            puppet.clone(),
                            Jid::from(contact.clone()),
                            PresenceType::Unsubscribed,
                        )],
                        _ => Vec::new(),
                    };
                }
                MatrixUserStatus::Unknown => {
                    return match p.type_ {
                        PresenceType::Subscribe => vec![presence_error(
                            &p,
                            ErrorType::Wait,
                            DefinedCondition::RemoteServerTimeout,
                            TRY_LATER,
                        )],
                        _ => Vec::new(),
                    };
                }
            }
        }
        let contact_jid = Jid::from(contact.clone());
        let contact_str = contact.to_string();
        let handshake = |t| subscription_stanza(puppet.clone(), contact_jid.clone(), t);
        let Ok(store) = self.shared.store() else {
            return Vec::new();
        };
        let update = |f: &dyn Fn(&mut roster::Subscription)| {
            roster::update(store, &user, &contact_str, f).map_err(
                |e| warn!(error = %crate::error::chain(&e), "could not store a subscription"),
            )
        };
        let state = match p.type_ {
            PresenceType::None => {
                if let Some(hash) = avatar::announced(&p) {
                    self.picture_announced(&contact, &user, hash).await;
                }
                let state = match p.show {
                    None | Some(Show::Chat) => PresenceState::Online,
                    Some(_) => PresenceState::Unavailable,
                };
                Some(state)
            }
            PresenceType::Unavailable => Some(PresenceState::Offline),
            PresenceType::Subscribe => {
                let current = roster::get(store, &user, &contact_str).unwrap_or_default();
                let policy = if current.from {
                    Policy::Accept
                } else {
                    self.shared.policy.for_contact(&contact_str)
                };
                info!(contact = %contact, user, ?policy, "presence subscription request");
                return match policy {
                    Policy::Accept => {
                        let _ = update(&|s| {
                            s.from = true;
                            s.pending_in = false;
                        });
                        let now = self.shared.fresh_presence(&user).await;
                        vec![
                            handshake(PresenceType::Subscribed),
                            presence_stanza(puppet.clone(), contact_jid.clone(), now.as_ref()),
                        ]
                    }
                    Policy::Deny => vec![handshake(PresenceType::Unsubscribed)],
                    Policy::Ask => {
                        let _ = update(&|s| s.pending_in = true);
                        self.push(RemoteEvent::direct(
                            &contact_str,
                            &user,
                            RemoteEventKind::ContactRequest,
                        ))
                        .await;
                        Vec::new()
                    }
                };
            }
            PresenceType::Unsubscribe => {
                let _ = update(&|s| {
                    s.from = false;
                    s.pending_in = false;
                });
                return vec![handshake(PresenceType::Unsubscribed)];
            }
            PresenceType::Subscribed => {
                let _ = update(&|s| s.to = true);
                return Vec::new();
            }
            PresenceType::Unsubscribed => {
                let _ = update(&|s| s.to = false);
                return Vec::new();
            }
            PresenceType::Probe => {
                let sub = roster::get(store, &user, &contact_str).unwrap_or_default();
                return if sub.from {
                    let now = self.shared.presences.last(&user);
                    vec![presence_stanza(
                        puppet.clone(),
                        contact_jid.clone(),
                        now.as_ref(),
                    )]
                } else {
                    Vec::new()
                };
            }
            _ => None,
        };
        if let Some(state) = state {
            let status = p
                .statuses
                .values()
                .next()
                .cloned()
                .filter(|s| !s.is_empty());
            // Through an own account, the presence is that login's to tell: it is forgotten
            // when the login goes down.
            self.push(
                RemoteEvent::direct(
                    &contact.to_string(),
                    &user,
                    RemoteEventKind::Presence(NetPresence { state, status }),
                )
                .via(own.then_some(user.as_str())),
            )
            .await;
        }
        Vec::new()
    }
}
