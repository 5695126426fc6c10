//! IQ requests the bridge sends and waits on (disco, vCards, rosters, archives, avatars):
//! each gets an unguessable ID, and only its addressee's answer reaches the waiting caller.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::DefinedCondition;

use super::Shared;
use super::component::Outgoing;
use crate::network::NetworkError;

/// How long a request waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The answer to an IQ request: the result's payload, or the error the other side gave.
pub(crate) type IqAnswer = Result<Option<Element>, IqRefused>;

/// An IQ answered with an error: its condition, which callers match on.
#[derive(Debug, thiserror::Error)]
#[error("{condition:?}")]
pub(crate) struct IqRefused {
    /// The condition the other side gave (`item-not-found`, `forbidden`, ...).
    pub condition: DefinedCondition,
}

/// An IQ request the bridge waits on: who must answer, and whoever waits.
struct Waiting {
    /// The address asked; the answer must come from it.
    to: Jid,
    /// Asked on an own account's connection about the account itself: the server may
    /// answer without `from` (RFC 6120 §8.1.2.1).
    own: bool,
    tx: oneshot::Sender<IqAnswer>,
}

/// The IQ requests waiting for an answer, by ID.
#[derive(Default)]
pub(super) struct PendingIqs {
    waiting: Mutex<HashMap<String, Waiting>>,
}

impl PendingIqs {
    /// Starts waiting for the answer to request `id`, asked of `to`.
    fn wait_for(&self, id: &str, to: Jid, own: bool) -> oneshot::Receiver<IqAnswer> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .expect("iq lock")
            .insert(id.to_owned(), Waiting { to, own, tx });
        rx
    }

    /// Stops waiting for request `id`.
    fn give_up(&self, id: &str) {
        self.waiting.lock().expect("iq lock").remove(id);
    }

    /// Hands an IQ result or error from `from` to whoever waits on it; false when nobody
    /// does, or when `from` is not who was asked (the answer is then ignored).
    pub fn answer(&self, id: &str, from: Option<&Jid>, answer: IqAnswer) -> bool {
        let mut waiting = self.waiting.lock().expect("iq lock");
        let Some(w) = waiting.get(id) else {
            return false;
        };
        let genuine = match from {
            Some(f) => f == &w.to || (w.to.resource().is_none() && f.to_bare() == w.to.to_bare()),
            None => w.own,
        };
        if !genuine {
            tracing::warn!(id, from = ?from, asked = %w.to, "IQ answer from someone not asked; ignored");
            return false;
        }
        if let Some(w) = waiting.remove(id) {
            let _ = w.tx.send(answer);
        }
        true
    }
}

impl Shared {
    /// Sends an IQ get from the component and waits (up to 10 s) for the answer.
    pub(super) async fn query(&self, to: Jid, payload: Element) -> Result<IqAnswer, NetworkError> {
        let from = Jid::from_str(self.addressing.component())
            .map_err(|e| NetworkError::Internal(crate::error::Reason::from_error(e)))?;
        self.request(from, to, false, payload).await
    }

    /// Sends an IQ get (or set) from `from` on the component link and waits (up to 10 s)
    /// for the answer.
    pub(super) async fn request(
        &self,
        from: Jid,
        to: Jid,
        set: bool,
        payload: Element,
    ) -> Result<IqAnswer, NetworkError> {
        self.request_via(&self.out, Some(from), to, set, payload)
            .await
    }

    /// Sends an IQ on `out` (the component link or an account's connection) and waits (up
    /// to 10 s) for the answer.
    pub(super) async fn request_via(
        &self,
        out: &mpsc::Sender<Outgoing>,
        from: Option<Jid>,
        to: Jid,
        set: bool,
        payload: Element,
    ) -> Result<IqAnswer, NetworkError> {
        // Unguessable, so that nobody else can answer in the server's place.
        let id = format!("isthmus-q-{:032x}", rand::random::<u128>());
        let rx = self.iqs.wait_for(&id, to.clone(), from.is_none());
        let iq = if set {
            Iq::Set {
                from,
                to: Some(to),
                id: id.clone(),
                payload,
            }
        } else {
            Iq::Get {
                from,
                to: Some(to),
                id: id.clone(),
                payload,
            }
        };
        let sent = out.send((iq.into(), None)).await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(ANSWER_WITHIN, rx).await,
            Err(_) => {
                self.iqs.give_up(&id);
                return Err(NetworkError::Transient("the XMPP link is stopping".into()));
            }
        };
        self.iqs.give_up(&id);
        match answer {
            Ok(Ok(a)) => Ok(a),
            _ => Err(NetworkError::Transient(
                "no answer from the XMPP server within 10 s".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::from_str(s).unwrap()
    }

    #[test]
    fn only_the_addressee_answers() {
        let iqs = PendingIqs::default();
        let mut rx = iqs.wait_for("q1", jid("room@muc.example.net"), false);
        // Someone else, or no sender on the component link: ignored, still waiting.
        assert!(!iqs.answer("q1", Some(&jid("eve@example.net")), Ok(None)));
        assert!(!iqs.answer("q1", None, Ok(None)));
        assert!(rx.try_recv().is_err());
        // Any resource of a bare addressee is the addressee.
        assert!(iqs.answer("q1", Some(&jid("room@muc.example.net/x")), Ok(None)));
        assert!(matches!(rx.try_recv(), Ok(Ok(None))));
        // Answered once only.
        assert!(!iqs.answer("q1", Some(&jid("room@muc.example.net")), Ok(None)));
    }

    #[test]
    fn an_accounts_server_may_answer_without_from() {
        let iqs = PendingIqs::default();
        let mut rx = iqs.wait_for("q2", jid("me@example.net"), true);
        assert!(iqs.answer("q2", None, Ok(None)));
        assert!(matches!(rx.try_recv(), Ok(Ok(None))));
        // A full addressee wants that very resource.
        let _rx = iqs.wait_for("q3", jid("bob@example.net/pc"), false);
        assert!(!iqs.answer("q3", Some(&jid("bob@example.net/phone")), Ok(None)));
        iqs.give_up("q3");
        assert!(!iqs.answer("q3", Some(&jid("bob@example.net/pc")), Ok(None)));
    }
}
