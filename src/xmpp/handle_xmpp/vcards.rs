//! XMPP → bridge: contacts' vCards (XEP-0054) become ghost names and avatars, announced
//! pictures (XEP-0153) are fetched when new, and vCard requests to gateway addresses are
//! answered with the Matrix user's profile.

use super::*;

impl Handler {
    /// Asks a contact's server for the contact's vCard (XEP-0054) once per run (or again
    /// when `again`: the contact announced a new picture), in the background; a full name
    /// becomes the ghost's display name and a picture its avatar.
    pub(super) fn fetch_vcard(&self, contact: &BareJid, receiver: &str, again: bool) {
        let first = self.shared.avatars.first_vcard_ask(&contact.to_string());
        if !first && !again {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let contact = contact.clone();
        let receiver = receiver.to_owned();
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            let query = xmpp_parsers::vcard::VCardQuery.into();
            let Ok(Ok(Some(card))) = shared.query(Jid::from(contact.clone()), query).await else {
                return;
            };
            let name = card
                .children()
                .find(|c| c.name() == "FN")
                .map(|f| f.text())
                .or_else(|| {
                    card.children()
                        .find(|c| c.name() == "NICKNAME")
                        .map(|n| n.text())
                })
                .and_then(|n| crate::text::display_name(&n));
            let Some(sink) = shared.sink.get() else {
                return;
            };
            let chat = contact.to_string();
            if let Some(name) = &name {
                let _ = sink
                    .push(
                        RemoteEvent::direct(&chat, &receiver, RemoteEventKind::Profile)
                            .named(Some(name.clone())),
                    )
                    .await;
            }
            // A published avatar (XEP-0084) takes precedence over the vCard's.
            if let Some(picture) = avatar::photo(&card) {
                let hash = avatar::sha1_hex(&picture);
                if shared.avatars.vcard_picture(&chat, &hash) {
                    let _ = sink
                        .push(
                            RemoteEvent::direct(
                                &chat,
                                &receiver,
                                RemoteEventKind::Avatar {
                                    hash,
                                    data: Some(picture),
                                },
                            )
                            .named(name),
                        )
                        .await;
                }
            }
        });
    }

    /// A contact's presence announced its picture (XEP-0153): fetch it when it changed.
    pub(super) async fn picture_announced(&self, contact: &BareJid, user: &str, hash: String) {
        let chat = contact.to_string();
        // A published avatar (XEP-0084) takes precedence over the vCard's.
        match self.shared.avatars.announced(&chat, &hash) {
            avatar::Announced::Known => {}
            avatar::Announced::Removed => {
                self.push(RemoteEvent::direct(
                    &chat,
                    user,
                    RemoteEventKind::Avatar { hash, data: None },
                ))
                .await;
            }
            avatar::Announced::New => self.fetch_vcard(contact, user, true),
        }
    }

    /// Answers a vCard request to a Matrix user's gateway address with the user's name and
    /// avatar, in the background (the profile comes from the homeserver).
    pub(super) fn answer_vcard(
        &self,
        from: Option<Jid>,
        to: Option<Jid>,
        id: String,
        user: String,
    ) {
        let shared = Arc::clone(&self.shared);
        let Ok(tasks) = self.shared.tasks() else {
            return;
        };
        tasks.spawn_loop(async move {
            let Some(sink) = shared.sink.get() else {
                return;
            };
            let answer: Stanza = match sink.matrix_profile(&user).await {
                Some(profile) => Iq::Result {
                    from: to,
                    to: from,
                    id,
                    payload: Some(avatar::vcard(
                        profile.displayname.as_deref(),
                        profile
                            .avatar
                            .as_ref()
                            .map(|(m, b)| (m.as_str(), b.as_slice())),
                    )),
                }
                .into(),
                None => error_reply(from, to, id, DefinedCondition::ItemNotFound),
            };
            let _ = shared.out.send((answer, None)).await;
        });
    }
}
