//! Messages a network sends in parts: a retry goes on after the parts already delivered.
//!
//! A connector that splits a message (SIP's size rule) stops at the first part that fails
//! and says, in its [`NetworkError::Partly`], which parts went out. The failure model
//! retries the whole item; so the core keeps what the failure said beside the message map
//! ([`Store::put_parts_progress`], under the portal and the Matrix event ID) and hands it
//! back on the next try ([`OutgoingMessage::sent`]), which then sends only the parts after
//! them. The record goes once the message went out whole or failed for good.

use crate::network::{NetworkClient, NetworkError, OutgoingMessage, PortalRef, RemoteMessageId};
use crate::store::{PortalKey, Store, StoreError};

/// Sends `out` to `portal` (`pref` as the connector sees it) through `client`, after the
/// parts an earlier try of the same Matrix event delivered, and records how far a try that
/// stopped part-way got. The outer error is the store's; the inner result is the network's.
pub(super) async fn send_resuming(
    store: &Store,
    client: &dyn NetworkClient,
    pref: &PortalRef,
    portal: &PortalKey,
    mut out: OutgoingMessage,
) -> Result<Result<RemoteMessageId, NetworkError>, StoreError> {
    let id = out.event_id.clone();
    out.sent = store.parts_progress(portal, &id)?.unwrap_or_default();
    let resumed = !out.sent.is_empty();
    let sent = client.send_message(pref, &out).await;
    match &sent {
        // The first part failed: there is nothing to resume after.
        Err(NetworkError::Partly { sent, error }) if error.is_transient() && !sent.is_empty() => {
            store.put_parts_progress(portal, &id, sent)?;
        }
        // A passing failure before any further part: the record (if any) still holds.
        Err(e) if e.is_transient() => {}
        // Sent whole, or failed for good: nothing is left to resume.
        _ if resumed => store.delete_parts_progress(portal, &id)?,
        _ => {}
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use proptest::prelude::*;

    use super::*;
    use crate::error::Retry;
    use crate::network::kit::send::send_parts;
    use crate::network::{
        BridgeState, ChatKind, MatrixSender, MessageContent, PartsSent, RemoteChatId,
    };

    /// A network that sends each message in `parts` parts and fails the sends the plan
    /// names, once each: (part, how) in the order they come up.
    struct Splitting {
        parts: usize,
        plan: Mutex<Vec<(usize, Retry)>>,
        delivered: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl NetworkClient for Splitting {
        fn state(&self) -> BridgeState {
            BridgeState::Connected
        }

        async fn send_message(
            &self,
            _portal: &PortalRef,
            message: &OutgoingMessage,
        ) -> Result<RemoteMessageId, NetworkError> {
            let first = send_parts((0..self.parts).collect(), &message.sent, |part| {
                let fail = {
                    let mut plan = self.plan.lock().unwrap();
                    match plan.first() {
                        Some(&(p, how)) if p == part => {
                            plan.remove(0);
                            Some(how)
                        }
                        _ => None,
                    }
                };
                if fail.is_none() {
                    self.delivered.lock().unwrap().push(part);
                }
                async move {
                    match fail {
                        None => Ok(RemoteMessageId::new(format!("part-{part}"))),
                        Some(Retry::Transient) => Err(NetworkError::Transient("busy".into())),
                        Some(Retry::Outage) => Err(NetworkError::Down("link down".into())),
                        Some(Retry::Never) => Err(NetworkError::Undeliverable("no".into())),
                    }
                }
            })
            .await?;
            Ok(first.unwrap_or_else(|| RemoteMessageId::new("")))
        }
    }

    fn message() -> OutgoingMessage {
        OutgoingMessage {
            sender: MatrixSender {
                user_id: "@alice:hs".into(),
                displayname: "Alice".into(),
            },
            event_id: "$long".into(),
            content: MessageContent::text("a long message"),
            reply_to: None,
            relayed: false,
            sent: PartsSent::default(),
        }
    }

    fn verdict() -> impl Strategy<Value = Retry> {
        prop_oneof![
            4 => Just(Retry::Transient),
            2 => Just(Retry::Outage),
            1 => Just(Retry::Never),
        ]
    }

    proptest! {
        /// A message in parts whose sends fail at any parts, try after try, retried as the
        /// failure model retries an item (the whole message, while the verdict says so):
        /// each part reaches the network at most once, all of them unless a part was
        /// refused for good, in order; the message's ID is the first part's, and no record
        /// is left behind.
        #[test]
        fn each_part_is_delivered_once_whatever_fails(
            parts in 1usize..7,
            plan in proptest::collection::vec((0usize..7, verdict()), 0..6),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store = Store::temporary().unwrap();
            let (portal, pref) = direct_chat();
            let refused = plan
                .iter()
                .filter(|(p, _)| *p < parts)
                .find(|(_, how)| *how == Retry::Never)
                .map(|(p, _)| *p);
            let client = Splitting {
                parts,
                plan: Mutex::new(plan.into_iter().filter(|(p, _)| *p < parts).collect()),
                delivered: Mutex::default(),
            };
            let mut tries = 0;
            let outcome = loop {
                tries += 1;
                prop_assert!(tries <= 8, "no end to the retries");
                let r = rt
                    .block_on(send_resuming(&store, &client, &pref, &portal, message()))
                    .unwrap();
                match r {
                    Err(e) if e.is_transient() => continue,
                    other => break other,
                }
            };
            let delivered = client.delivered.lock().unwrap().clone();
            match outcome {
                Ok(id) => {
                    prop_assert_eq!(&delivered, &(0..parts).collect::<Vec<_>>());
                    prop_assert_eq!(id.as_str(), "part-0");
                }
                Err(e) => {
                    prop_assert_eq!(e.retry(), Retry::Never);
                    // Everything before the refused part went out, once, and nothing after.
                    // The plan is taken in order: the refusal is its first one.
                    let before = refused.expect("a refusal");
                    prop_assert_eq!(&delivered, &(0..before).collect::<Vec<_>>());
                }
            }
            let left: Option<PartsSent> = store.parts_progress(&portal, "$long").unwrap();
            prop_assert_eq!(left, None, "the progress record is removed");
        }
    }

    /// The direct chat of `@alice:hs` with `bob`: its key and what the connector gets.
    fn direct_chat() -> (PortalKey, PortalRef) {
        let portal = PortalKey::new("net", "bob", Some("@alice:hs"));
        let pref = PortalRef {
            chat: RemoteChatId::new("bob"),
            kind: ChatKind::Direct,
            receiver: Some("@alice:hs".into()),
            members: Vec::new(),
        };
        (portal, pref)
    }

    #[tokio::test]
    async fn a_retry_after_part_three_failed_sends_from_part_three() {
        let store = Store::temporary().unwrap();
        let (portal, pref) = direct_chat();
        let client = Splitting {
            parts: 4,
            plan: Mutex::new(vec![(2, Retry::Transient)]),
            delivered: Mutex::default(),
        };
        let first = send_resuming(&store, &client, &pref, &portal, message())
            .await
            .unwrap();
        assert!(
            matches!(first, Err(NetworkError::Partly { .. })),
            "{first:?}"
        );
        let kept: Option<PartsSent> = store.parts_progress(&portal, "$long").unwrap();
        assert_eq!(
            kept,
            Some(PartsSent {
                parts: 2,
                total: 4,
                first: Some(RemoteMessageId::new("part-0")),
            })
        );
        let second = send_resuming(&store, &client, &pref, &portal, message())
            .await
            .unwrap();
        assert_eq!(second.unwrap().as_str(), "part-0");
        assert_eq!(*client.delivered.lock().unwrap(), [0, 1, 2, 3]);
    }
}
