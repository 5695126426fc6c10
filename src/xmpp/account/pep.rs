//! Contacts' published avatars (XEP-0084) on an own account: the metadata, then the picture
//! when it is new.

use super::*;

/// What an account learnt of its contacts' published avatars in this run, behind one lock.
#[derive(Default)]
pub(super) struct PepSeen {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Contacts whose published avatar was asked for (roster contacts only).
    asked: std::collections::HashSet<String>,
    /// Per contact, the published avatar last tried.
    tried: BTreeMap<String, String>,
}

impl PepSeen {
    /// Whether the contact's published avatar is to be asked for: the first time only.
    pub fn first_ask(&self, contact: &str) -> bool {
        self.seen
            .lock()
            .expect("pep lock")
            .asked
            .insert(contact.to_owned())
    }

    /// Whether picture `id` of the contact is to be fetched: not when it was the last one
    /// tried (a failure is not retried at every notification).
    pub fn first_try(&self, contact: &str, id: &str) -> bool {
        self.seen
            .lock()
            .expect("pep lock")
            .tried
            .insert(contact.to_owned(), id.to_owned())
            .as_deref()
            != Some(id)
    }
}

/// The `items` of a pubsub result in the event namespace, as notifications carry them.
pub(super) fn rename_items(items: &Element) -> Element {
    c2s::rename_ns(items.clone(), PUBSUB, PUBSUB_EVENT)
}

impl Account {
    /// Whether avatars published by `jid` are followed: the account's roster contacts only
    /// (never the account itself, the bridge's own addresses or strangers).
    pub(super) fn avatar_source(&self, jid: &BareJid) -> bool {
        *jid != self.jid
            && self
                .parts
                .shared
                .addressing
                .contact(&jid.to_string())
                .is_ok()
            && self
                .roster
                .lock()
                .expect("roster lock")
                .contains_key(&jid.to_string())
    }

    /// Bridges a contact's published avatar (XEP-0084): the metadata (from a notification,
    /// else asked for), then the picture when its ID (its SHA-1) is new. An empty metadata
    /// means the avatar was removed.
    pub(super) async fn pep_avatar(self: Arc<Self>, contact: BareJid, notified: Option<Element>) {
        let items = match notified {
            Some(items) => items,
            None => {
                let query = PubSub::Items(Items {
                    max_items: Some(1),
                    ..Items::new(AVATAR_METADATA)
                })
                .into();
                match self
                    .parts
                    .shared
                    .request_via(&self.out, None, Jid::from(contact.clone()), false, query)
                    .await
                {
                    Ok(Ok(Some(pubsub))) => match pubsub.get_child("items", PUBSUB) {
                        Some(items) => rename_items(items),
                        None => return,
                    },
                    // No avatar published, or not visible to the account.
                    _ => return,
                }
            }
        };
        let Some(item) = items.children().find(|c| c.name() == "item") else {
            return;
        };
        let Some(metadata) = item.children().find(|c| c.is("metadata", AVATAR_METADATA)) else {
            return;
        };
        // An avatar may be described by several infos; the one without a URL is in the data
        // node (XEP-0084 §4.2.1). Read by hand: the crate's `Metadata` refuses all infos for
        // one it cannot read (an ID that is not a SHA-1, a missing size), and its `Data`
        // decodes a picture before its size is checked.
        let info = metadata
            .children()
            .filter(|c| c.is("info", AVATAR_METADATA))
            .find(|i| i.attr("url").is_none());
        let chat = contact.to_string();
        let Some(sink) = self.parts.shared.sink.get() else {
            return;
        };
        let Some(info) = info else {
            // Metadata without info: the contact removed the avatar.
            let removed = self.parts.shared.avatars.set_published(&chat, "");
            if removed && !*self.stop.borrow() {
                let _ = sink
                    .push(RemoteEvent::direct(
                        &chat,
                        &self.user,
                        RemoteEventKind::Avatar {
                            hash: String::new(),
                            data: None,
                        },
                    ))
                    .await;
            }
            return;
        };
        let Some(id) = info.attr("id").map(str::to_owned) else {
            return;
        };
        // Each picture is tried once per run: a failure (too large, unreachable, not the
        // picture its ID names) is not retried at every notification.
        if !self.pep.first_try(&chat, &id) {
            return;
        }
        // The picture must fit in one stanza of the connection (base64 grows it by a third),
        // or its answer would close the connection.
        let limit = MAX_AVATAR_BYTES
            .min((self.parts.shared.client.max_stanza_bytes / 4 * 3).saturating_sub(4096));
        match info.attr("bytes").and_then(|b| b.parse::<usize>().ok()) {
            Some(bytes) if bytes <= limit => {}
            bytes => {
                info!(contact = %contact, ?bytes, limit, "published avatar too large (or of unknown size); not fetched");
                return;
            }
        }
        let query = PubSub::Items(Items {
            items: vec![pubsub::pubsub::Item {
                id: Some(pubsub::ItemId(id.clone())),
                publisher: None,
                payload: None,
            }],
            ..Items::new(AVATAR_DATA)
        })
        .into();
        let answer = self
            .parts
            .shared
            .request_via(&self.out, None, Jid::from(contact.clone()), false, query)
            .await;
        let Ok(Ok(Some(pubsub))) = answer else {
            debug!(contact = %contact, "the published avatar could not be fetched");
            return;
        };
        let data = pubsub
            .get_child("items", PUBSUB)
            .and_then(|i| i.children().find(|c| c.name() == "item"))
            .and_then(|i| i.children().find(|c| c.is("data", AVATAR_DATA)))
            .map(|d| d.text());
        let Some(picture) = data.and_then(|d| crate::xmpp::avatar::decode(&d)) else {
            return;
        };
        // The ID is the picture's SHA-1 (XEP-0084 §4.2): anything else is not that picture.
        let hash = crate::xmpp::avatar::sha1_hex(&picture);
        if !hash.eq_ignore_ascii_case(&id) {
            warn!(contact = %contact, "published avatar does not match its ID; ignored");
            return;
        }
        self.parts.shared.avatars.set_published(&chat, &hash);
        if *self.stop.borrow() {
            return;
        }
        let _ = sink
            .push(RemoteEvent::direct(
                &chat,
                &self.user,
                RemoteEventKind::Avatar {
                    hash,
                    data: Some(picture),
                },
            ))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avatars_are_asked_once_and_each_picture_tried_once() {
        let pep = PepSeen::default();
        assert!(pep.first_ask("bob@x"));
        assert!(!pep.first_ask("bob@x"));
        assert!(pep.first_ask("carol@x"));
        assert!(pep.first_try("bob@x", "a1"));
        assert!(!pep.first_try("bob@x", "a1"));
        // A new picture is tried, and then the old one again counts as new.
        assert!(pep.first_try("bob@x", "b2"));
        assert!(pep.first_try("bob@x", "a1"));
        assert!(pep.first_try("carol@x", "a1"));
    }
}
