//! Catching up from an own account's archive (XEP-0313) after the bridge was away, and the
//! archive position kept per account.

use super::*;

/// The archive query (XEP-0313) for one page: the page after `after`, else the latest few.
pub(super) fn archive_query(queryid: &str, after: Option<&str>) -> Element {
    let set = match after {
        Some(a) => SetQuery {
            max: Some(MAM_PAGE),
            after: Some(a.to_owned()),
            before: None,
            index: None,
        },
        None => SetQuery {
            max: Some(MAM_FIRST),
            after: None,
            before: Some(String::new()),
            index: None,
        },
    };
    mam::Query {
        queryid: Some(mam::QueryId(queryid.to_owned())),
        node: None,
        form: None,
        set: Some(set),
        flip_page: false,
    }
    .into()
}

/// The delay (XEP-0203) an archived message gets: the archive's time, stamped by `server`.
/// Built by hand: the crate writes UTC times without their milliseconds.
pub(super) fn archive_delay(server: &str, at_ms: u64) -> Element {
    Element::builder("delay", ns::DELAY)
        .attr(xml_name("from"), server)
        .attr(xml_name("stamp"), crate::xmpp::time::rfc3339(at_ms))
        .build()
}

pub(super) fn xml_name(n: &str) -> xmpp_parsers::minidom::rxml::NcName {
    xmpp_parsers::minidom::rxml::NcName::try_from(n).expect("valid name")
}

impl Account {
    /// The store key of the last archived message (XEP-0313) the bridge has seen.
    pub(super) fn archive_key(&self) -> String {
        format!("mam:{}\u{1f}{}", self.user, self.jid)
    }

    /// Remembers the archive ID of a message handled live, so that the next catch-up
    /// starts after it. Within a batch of the connection the ID is kept until the batch is
    /// stored ([`Account::batch_ended`]): one write per batch, and never a position past
    /// messages the store did not keep.
    pub(super) fn note_archived(&self, msg: &Message) {
        if self.catching_up.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let Some(id) = payloads::stanza_id(&msg.payloads, &self.jid) else {
            return;
        };
        if let Some(pending) = self.batch_position.lock().expect("batch lock").as_mut() {
            *pending = Some(id);
            return;
        }
        self.write_archive_position(&id);
    }

    /// A batch of the connection begins: archive positions wait for its end.
    pub(super) fn batch_started(&self) {
        *self.batch_position.lock().expect("batch lock") = Some(None);
    }

    /// The batch ended, stored (`true`) or not: the position it reached is written only if
    /// it was stored.
    pub(super) fn batch_ended(&self, stored: bool) {
        let reached = self
            .batch_position
            .lock()
            .expect("batch lock")
            .take()
            .flatten();
        if stored && let Some(id) = reached {
            self.write_archive_position(&id);
        }
    }

    fn write_archive_position(&self, id: &str) {
        if let Ok(store) = self.parts.shared.store()
            && let Err(e) = store.put(&self.archive_key(), &serde_json::Value::from(id))
        {
            warn!(error = %crate::error::chain(&e), "could not store the archive position");
        }
    }

    /// Catches up from the account's archive (XEP-0313): every message after the last one
    /// the bridge saw, page by page; at the first login, the latest few. Results arrive as
    /// messages before the answer and are bridged as they come; the core drops what it
    /// already has, by message ID.
    pub(super) async fn catch_up(self: Arc<Self>, position: Option<String>) {
        let Ok(store) = self.parts.shared.store() else {
            return;
        };
        let key = self.archive_key();
        let mut after = position;
        let mut fetched_latest = false;
        for _ in 0..MAM_PAGES {
            fetched_latest |= after.is_none();
            let query = archive_query(&format!("q{:x}", rand::random::<u64>()), after.as_deref());
            let answer = self
                .parts
                .shared
                .request_via(&self.out, None, Jid::from(self.jid.clone()), true, query)
                .await;
            let fin = match answer {
                Ok(Ok(Some(fin))) => fin,
                Ok(Ok(None)) => return,
                Ok(Err(e))
                    if after.is_some()
                        && !fetched_latest
                        && e.condition == DefinedCondition::ItemNotFound =>
                {
                    // The last message seen left the archive: start again from the latest.
                    warn!(jid = %self.jid, "the archive no longer has the last message seen; fetching the latest");
                    after = None;
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(jid = %self.jid, error = %crate::error::chain(&e), "the server refused the archive query");
                    return;
                }
                Err(e) => {
                    warn!(jid = %self.jid, error = %crate::error::chain(&e), "no answer to the archive query");
                    return;
                }
            };
            // A `fin` the crate cannot read ends the catch-up, as one without a page would.
            let (complete, last) = match Fin::try_from(fin) {
                Ok(fin) => (fin.complete, fin.set.last),
                Err(_) => (false, None),
            };
            if let Some(last) = &last
                && let Err(e) = store.put(&key, &serde_json::Value::from(last.as_str()))
            {
                warn!(error = %crate::error::chain(&e), "could not store the archive position");
            }
            debug!(jid = %self.jid, complete, last = ?last, "archive page bridged");
            if complete || fetched_latest || last.is_none() {
                // Caught up: live messages move the position from now on.
                self.catching_up
                    .store(false, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            after = last;
        }
        info!(jid = %self.jid, pages = MAM_PAGES, "archive catch-up stopped at its page limit");
    }

    /// A message from the account's archive: the copied message, at its archived time.
    pub(super) async fn archived(&self, msg: &Message) -> bool {
        if !msg.payloads.iter().any(|p| p.is("result", ns::MAM)) {
            return false;
        }
        // Only the account's own archive answers to the account.
        if msg
            .from
            .as_ref()
            .is_some_and(|f| f != &Jid::from(self.jid.clone()))
        {
            warn!(from = ?msg.from, "archive result from someone else dropped");
            return true;
        }
        // The account's own server wrote the result (the sender is checked above).
        let Some(mam::Result_ { forwarded, .. }) =
            payloads::find::<mam::Result_>(&msg.payloads, "result", ns::MAM)
        else {
            return true;
        };
        let mut inner = forwarded.message;
        // The archive's time, vouched for by the account's server, replaces any the sender
        // claimed.
        inner.payloads.retain(|p| !p.is("delay", ns::DELAY));
        if let Some(at) = forwarded
            .delay
            .and_then(|d| u64::try_from(d.stamp.0.timestamp_millis()).ok())
        {
            inner
                .payloads
                .push(archive_delay(self.jid.domain().as_str(), at));
        }
        if !matches!(
            inner.type_,
            xmpp_parsers::message::MessageType::Chat | xmpp_parsers::message::MessageType::Normal
        ) {
            return true;
        }
        if inner.from.as_ref().is_some_and(|f| f.to_bare() == self.jid) {
            self.parts
                .handler
                .sent_elsewhere(inner, &self.jid, &self.user)
                .await;
        } else {
            // Receipts and the like were answered when the message was new.
            let _ = self.parts.handler.stanza(inner.into()).await;
        }
        true
    }
}
