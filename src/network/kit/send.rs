//! Sending what takes more than one send: a message in parts, a room message to each member.

use std::future::Future;

use tracing::{debug, warn};

use crate::error::Reason;
use crate::network::{ConnectorStore, NetworkError, RemoteUserId};

/// Sends `parts` in order with `send`, stopping at the first failure, and returns what the
/// first part's send returned (its message ID; `None` without parts). A failure of one part
/// among several says which ("part 2 of 3: ...") and keeps its verdict (the variant); a
/// single part's failure is returned as it is.
pub async fn send_parts<P, T, F, Fut>(parts: Vec<P>, mut send: F) -> Result<Option<T>, NetworkError>
where
    F: FnMut(P) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let total = parts.len();
    let mut first = None;
    for (n, part) in parts.into_iter().enumerate() {
        match send(part).await {
            Ok(id) => {
                first.get_or_insert(id);
            }
            Err(e) if total == 1 => return Err(e),
            Err(e) => return Err(in_part(e, n + 1, total)),
        }
    }
    Ok(first)
}

/// `e`, its words prefixed with the part that failed.
fn in_part(e: NetworkError, part: usize, total: usize) -> NetworkError {
    let at = |r: Reason| Reason::because(format!("part {part} of {total}"), r);
    match e {
        NetworkError::BadCredentials(r) => NetworkError::BadCredentials(at(r)),
        NetworkError::InvalidInput(r) => NetworkError::InvalidInput(at(r)),
        NetworkError::Undeliverable(r) => NetworkError::Undeliverable(at(r)),
        NetworkError::Transient(r) => NetworkError::Transient(at(r)),
        NetworkError::Down(r) => NetworkError::Down(at(r)),
        NetworkError::Internal(r) => NetworkError::Internal(at(r)),
        e @ (NetworkError::Unsupported(_) | NetworkError::NotLoggedIn) => e,
    }
}

/// The store key remembering that `member` got the room message `event_id`.
fn delivered_key(event_id: &str, member: &str) -> String {
    format!("fo:{event_id}\u{1f}{member}")
}

/// Delivers room message `event_id` to each of `members` with `send`, remembering in `store`
/// who got it, so that a retry goes only to those still missing it.
///
/// While any member failed passingly ([`NetworkError::is_transient`]) the outcome is
/// [`NetworkError::Transient`] naming them ("not yet delivered to ..."), and the deliveries
/// made stay remembered for the retry. Once none is pending, the record is removed, and the
/// outcome is [`NetworkError::Undeliverable`] naming the members who refused it for good
/// ("not delivered to ..."), else what the first send of this call returned (`None` when
/// everyone had it already). A member whose delivery cannot be remembered fails the call
/// (an internal error), as the store is then broken.
pub async fn fan_out<T, F, Fut>(
    store: &dyn ConnectorStore,
    event_id: &str,
    members: &[RemoteUserId],
    mut send: F,
) -> Result<Option<T>, NetworkError>
where
    F: FnMut(&RemoteUserId) -> Fut,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let mut first = None;
    let mut failed = Vec::new();
    let mut passing = Vec::new();
    for member in members {
        let key = delivered_key(event_id, member.as_str());
        if store.get(&key).ok().flatten().is_some() {
            continue;
        }
        match send(member).await {
            Ok(id) => {
                first.get_or_insert(id);
                store.put(&key, &serde_json::Value::Bool(true))?;
            }
            Err(e) if e.is_transient() => {
                debug!(%member, error = %crate::error::chain(&e), "room message delayed for a member");
                passing.push(format!("{member} ({e})"));
            }
            Err(e) => {
                warn!(%member, error = %crate::error::chain(&e), "room message not delivered to a member");
                failed.push(format!("{member} ({e})"));
            }
        }
    }
    if !passing.is_empty() {
        return Err(NetworkError::Transient(
            format!("not yet delivered to {}", passing.join(", ")).into(),
        ));
    }
    for member in members {
        let _ = store.delete(&delivered_key(event_id, member.as_str()));
    }
    if !failed.is_empty() {
        return Err(NetworkError::Undeliverable(
            format!("not delivered to {}", failed.join(", ")).into(),
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use std::sync::atomic::Ordering;

    use proptest::prelude::*;

    use super::*;
    use crate::error::Retry;
    use crate::network::kit::testing::MemStore;

    /// What a send does: succeed, fail passingly, fail for good.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        Ok,
        Passing,
        Refused,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            3 => Just(Outcome::Ok),
            1 => Just(Outcome::Passing),
            1 => Just(Outcome::Refused),
        ]
    }

    fn result(o: Outcome, n: usize) -> Result<usize, NetworkError> {
        match o {
            Outcome::Ok => Ok(n),
            Outcome::Passing => Err(NetworkError::Transient(format!("busy {n}").into())),
            Outcome::Refused => Err(NetworkError::Undeliverable(format!("no {n}").into())),
        }
    }

    #[tokio::test]
    async fn parts_go_in_order_until_one_fails() {
        let sent = Mutex::new(Vec::new());
        let ok = send_parts(vec!["a", "b", "c"], |p| {
            sent.lock().unwrap().push(p);
            async move { Ok::<_, NetworkError>(format!("id-{p}")) }
        })
        .await;
        assert_eq!(ok.unwrap().as_deref(), Some("id-a"));
        assert_eq!(*sent.lock().unwrap(), ["a", "b", "c"]);
        let none = send_parts(Vec::<&str>::new(), |_| async { Ok::<u8, _>(1) }).await;
        assert_eq!(none.unwrap(), None);
        // One part alone: its error as it is.
        let one = send_parts(vec!["a"], |_| async {
            Err::<u8, _>(NetworkError::Down("gone".into()))
        })
        .await;
        assert_eq!(one.unwrap_err().to_string(), "link down: gone");
    }

    proptest! {
        /// Whatever fails where: the parts before the failure are sent in order, none after
        /// it, and the error names the failed part and keeps its verdict.
        #[test]
        fn the_first_failure_stops_and_is_named(outcomes in proptest::collection::vec(outcome(), 1..8)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let sent = Mutex::new(Vec::new());
            let total = outcomes.len();
            let got = rt.block_on(send_parts((0..total).collect(), |n| {
                sent.lock().unwrap().push(n);
                let r = result(outcomes[n], n);
                async move { r }
            }));
            let failure = outcomes.iter().position(|o| *o != Outcome::Ok);
            let tried: Vec<usize> = (0..failure.map_or(total, |f| f + 1)).collect();
            prop_assert_eq!(&*sent.lock().unwrap(), &tried);
            match failure {
                None => prop_assert_eq!(got.unwrap(), Some(0)),
                Some(f) => {
                    let e = got.unwrap_err();
                    let verdict = if outcomes[f] == Outcome::Passing { Retry::Transient } else { Retry::Never };
                    prop_assert_eq!(e.retry(), verdict);
                    let text = e.to_string();
                    if total > 1 {
                        let at = format!("part {} of {total}: ", f + 1);
                        prop_assert!(text.contains(&at), "{}", text);
                    }
                    prop_assert!(text.contains(&f.to_string()), "{}", text);
                }
            }
        }

        /// Whatever each member's sends do over several tries: nobody gets the message twice,
        /// a try is retried only while someone failed passingly, and the record is gone once
        /// the message reached everyone it could.
        #[test]
        fn each_member_gets_a_room_message_once(
            plan in proptest::collection::vec(proptest::collection::vec(outcome(), 4), 1..5),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let store = MemStore::default();
            let members: Vec<RemoteUserId> = (0..plan.len()).map(|m| RemoteUserId::new(format!("m{m}@x"))).collect();
            let received: Mutex<BTreeMap<usize, usize>> = Mutex::default();
            let mut tries = 0;
            let outcome = loop {
                let attempt = tries;
                let r = rt.block_on(fan_out(&store, "$e", &members, |m| {
                    let n: usize = m.as_str()[1..m.as_str().find('@').unwrap()].parse().unwrap();
                    // The last try always gets through (or is refused), so retries end.
                    let o = match plan[n][attempt.min(3)] {
                        Outcome::Passing if attempt >= 3 => Outcome::Ok,
                        o => o,
                    };
                    if o == Outcome::Ok {
                        *received.lock().unwrap().entry(n).or_default() += 1;
                    }
                    let r = result(o, n);
                    async move { r }
                }));
                tries += 1;
                match r {
                    Err(e) if e.retry() == Retry::Transient => {
                        prop_assert!(e.to_string().contains("not yet delivered to"));
                        prop_assert!(tries <= 4);
                    }
                    other => break other,
                }
            };
            prop_assert!(received.lock().unwrap().values().all(|&n| n == 1), "{:?}", received);
            let refused: Vec<String> = received_none(&received, plan.len());
            match outcome {
                Ok(_) => prop_assert!(refused.is_empty()),
                Err(e) => {
                    prop_assert_eq!(e.retry(), Retry::Never);
                    for m in &refused {
                        prop_assert!(e.to_string().contains(m.as_str()), "{}", e);
                    }
                }
            }
            prop_assert!(store.map.lock().unwrap().is_empty(), "the record is removed");
        }
    }

    /// The members that never received.
    fn received_none(received: &Mutex<BTreeMap<usize, usize>>, members: usize) -> Vec<String> {
        let got = received.lock().unwrap();
        (0..members)
            .filter(|m| !got.contains_key(m))
            .map(|m| format!("m{m}@x"))
            .collect()
    }

    #[tokio::test]
    async fn a_delivery_that_cannot_be_remembered_fails_the_call() {
        let store = MemStore::default();
        store.failing.store(true, Ordering::SeqCst);
        let members = [RemoteUserId::new("a@x")];
        let e = fan_out(&store, "$e", &members, |_| async {
            Ok::<_, NetworkError>(1)
        })
        .await
        .unwrap_err();
        assert!(matches!(e, NetworkError::Internal(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_message_everyone_had_returns_no_id() {
        let store = MemStore::default();
        let members = [RemoteUserId::new("a@x")];
        store
            .put(&delivered_key("$e", "a@x"), &serde_json::Value::Bool(true))
            .unwrap();
        let got = fan_out(&store, "$e", &members, |_| async {
            Err::<u8, _>(NetworkError::Undeliverable("must not be asked".into()))
        })
        .await;
        assert_eq!(got.unwrap(), None);
        assert!(store.map.lock().unwrap().is_empty());
    }
}
