//! Tests of sending in parts and of the fan-out of a room message to its members.

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

fn id(n: impl std::fmt::Display) -> RemoteMessageId {
    RemoteMessageId::new(format!("id-{n}"))
}

fn fresh() -> PartsSent {
    PartsSent::default()
}

#[tokio::test]
async fn parts_go_in_order_until_one_fails() {
    let sent = Mutex::new(Vec::new());
    let ok = send_parts(vec!["a", "b", "c"], &fresh(), |p| {
        sent.lock().unwrap().push(p);
        async move { Ok::<_, NetworkError>(id(p)) }
    })
    .await;
    assert_eq!(ok.unwrap(), Some(id("a")));
    assert_eq!(*sent.lock().unwrap(), ["a", "b", "c"]);
    let none = send_parts(Vec::<&str>::new(), &fresh(), |_| async { Ok(id(1)) }).await;
    assert_eq!(none.unwrap(), None);
    // One part alone: its error as it is.
    let one = send_parts(vec!["a"], &fresh(), |_| async {
        Err(NetworkError::Down("gone".into()))
    })
    .await;
    assert_eq!(one.unwrap_err().to_string(), "link down: gone");
}

#[tokio::test]
async fn a_resume_for_another_split_sends_everything() {
    let sent = Mutex::new(Vec::new());
    let resume = PartsSent {
        parts: 2,
        total: 5,
        first: Some(id("old")),
    };
    let ok = send_parts(vec!["a", "b", "c"], &resume, |p| {
        sent.lock().unwrap().push(p);
        async move { Ok::<_, NetworkError>(id(p)) }
    })
    .await;
    assert_eq!(ok.unwrap(), Some(id("a")));
    assert_eq!(*sent.lock().unwrap(), ["a", "b", "c"]);
}

proptest! {
    /// Whatever fails where: the parts before the failure are sent in order, none after
    /// it, and the error names the failed part, says which went out, and keeps its
    /// verdict.
    #[test]
    fn the_first_failure_stops_and_is_named(outcomes in proptest::collection::vec(outcome(), 1..8)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let sent = Mutex::new(Vec::new());
        let total = outcomes.len();
        let got = rt.block_on(send_parts((0..total).collect(), &fresh(), |n| {
            sent.lock().unwrap().push(n);
            let r = result(outcomes[n], n).map(id);
            async move { r }
        }));
        let failure = outcomes.iter().position(|o| *o != Outcome::Ok);
        let tried: Vec<usize> = (0..failure.map_or(total, |f| f + 1)).collect();
        prop_assert_eq!(&*sent.lock().unwrap(), &tried);
        match failure {
            None => prop_assert_eq!(got.unwrap(), Some(id(0))),
            Some(f) => {
                let e = got.unwrap_err();
                let verdict = if outcomes[f] == Outcome::Passing { Retry::Transient } else { Retry::Never };
                prop_assert_eq!(e.retry(), verdict);
                let text = e.to_string();
                if total > 1 {
                    let at = format!("part {} of {total}: ", f + 1);
                    prop_assert!(text.contains(&at), "{}", text);
                    let NetworkError::Partly { sent, .. } = &e else {
                        panic!("not a partial failure: {e:?}");
                    };
                    prop_assert_eq!(sent.parts, f);
                    prop_assert_eq!(sent.total, total);
                    prop_assert_eq!(sent.first.clone(), (f > 0).then(|| id(0)));
                }
                prop_assert!(text.contains(&f.to_string()), "{}", text);
            }
        }
    }

    /// A message that fails at some parts, try after try, retried as the core retries
    /// it (with what the failure said went out): every part reaches the network exactly
    /// once, in order, and the message's ID is the first part's.
    #[test]
    fn each_part_is_delivered_once_across_retries(
        total in 1usize..8,
        // The parts whose sends fail, one failed send each, in the order they happen.
        failures in proptest::collection::vec(0usize..8, 0..6),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let delivered = Mutex::new(Vec::new());
        let failing = Mutex::new(failures.into_iter().filter(|&k| k < total).collect::<Vec<_>>());
        let mut resume = PartsSent::default();
        let mut tries = 0;
        let first = loop {
            tries += 1;
            prop_assert!(tries <= 8, "no end to the retries");
            let r = rt.block_on(send_parts((0..total).collect(), &resume, |n| {
                let fail = {
                    let mut f = failing.lock().unwrap();
                    // A part fails when it is next in the plan.
                    let next = f.first() == Some(&n);
                    if next {
                        f.remove(0);
                    }
                    next
                };
                if !fail {
                    delivered.lock().unwrap().push(n);
                }
                async move {
                    if fail {
                        Err(NetworkError::Transient("busy".into()))
                    } else {
                        Ok(id(n))
                    }
                }
            }));
            match r {
                Ok(first) => break first,
                Err(NetworkError::Partly { sent, error }) => {
                    prop_assert_eq!(error.retry(), Retry::Transient);
                    resume = sent;
                }
                Err(e) => prop_assert_eq!(e.retry(), Retry::Transient),
            }
        };
        prop_assert_eq!(&*delivered.lock().unwrap(), &(0..total).collect::<Vec<_>>());
        prop_assert_eq!(first, Some(id(0)));
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
            let r = rt.block_on(fan_out(&store, "$e", &members, |m, _| {
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

    /// A room message each member gets in parts, some parts failing passingly on some
    /// tries: each part reaches each member exactly once, and the record is gone at the
    /// end.
    #[test]
    fn each_part_reaches_each_member_once(
        members in 1usize..4,
        total in 1usize..5,
        // (member, part) pairs whose sends fail once each, in the order they come up.
        failures in proptest::collection::vec((0usize..4, 0usize..5), 0..8),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = MemStore::default();
        let ids: Vec<RemoteUserId> = (0..members).map(|m| RemoteUserId::new(format!("m{m}@x"))).collect();
        let delivered: Mutex<Vec<(usize, usize)>> = Mutex::default();
        let failing = Mutex::new(failures);
        let mut tries = 0;
        loop {
            tries += 1;
            prop_assert!(tries <= 12, "no end to the retries");
            let r = rt.block_on(fan_out(&store, "$e", &ids, |m, resume| {
                let member: usize = m.as_str()[1..m.as_str().find('@').unwrap()].parse().unwrap();
                let delivered = &delivered;
                let failing = &failing;
                async move {
                    send_parts((0..total).collect(), &resume, |part| {
                        let fail = {
                            let mut f = failing.lock().unwrap();
                            match f.iter().position(|&p| p == (member, part)) {
                                Some(i) => {
                                    f.remove(i);
                                    true
                                }
                                None => false,
                            }
                        };
                        if !fail {
                            delivered.lock().unwrap().push((member, part));
                        }
                        async move {
                            if fail {
                                Err(NetworkError::Transient("busy".into()))
                            } else {
                                Ok(id(part))
                            }
                        }
                    })
                    .await
                }
            }));
            match r {
                Ok(_) => break,
                Err(e) => prop_assert_eq!(e.retry(), Retry::Transient, "{}", e),
            }
        }
        let mut got = delivered.lock().unwrap().clone();
        got.sort_unstable();
        let want: Vec<(usize, usize)> =
            (0..members).flat_map(|m| (0..total).map(move |p| (m, p))).collect();
        prop_assert_eq!(got, want);
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

/// The store calls a test store saw: (reads, puts, deletes).
fn calls(store: &MemStore) -> (usize, usize, usize) {
    (
        store.reads.load(Ordering::SeqCst),
        store.puts.load(Ordering::SeqCst),
        store.deletes.load(Ordering::SeqCst),
    )
}

proptest! {
    /// Whatever the room's size and each member's sends do over several tries: each try
    /// reads the store once, writes (and so flushes) once only if it ends with members
    /// still to do, and deletes only a record an earlier try wrote, once.
    #[test]
    fn a_room_message_costs_the_store_once_per_try(
        plan in proptest::collection::vec(proptest::collection::vec(outcome(), 4), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = MemStore::default();
        let members: Vec<RemoteUserId> = (0..plan.len()).map(|m| RemoteUserId::new(format!("m{m}@x"))).collect();
        let mut written = false;
        for attempt in [0, 1, 2, 3] {
            let before = calls(&store);
            let passing = Mutex::new(false);
            let r = rt.block_on(fan_out(&store, "$e", &members, |m, _| {
                let n: usize = m.as_str()[1..m.as_str().find('@').unwrap()].parse().unwrap();
                let o = match plan[n][attempt] {
                    Outcome::Passing if attempt == 3 => Outcome::Ok,
                    o => o,
                };
                if o == Outcome::Passing {
                    *passing.lock().unwrap() = true;
                }
                let r = result(o, n);
                async move { r }
            }));
            let after = calls(&store);
            let retried = *passing.lock().unwrap();
            prop_assert_eq!(after.0 - before.0, 1, "one read per try");
            prop_assert_eq!(after.1 - before.1, usize::from(retried), "a write only for a retry");
            prop_assert_eq!(after.2 - before.2, usize::from(written && !retried), "a delete only of a record");
            written = retried;
            if r.as_ref().err().is_none_or(|e| e.retry() != Retry::Transient) {
                break;
            }
        }
        prop_assert!(store.map.lock().unwrap().is_empty(), "the record is removed");
    }
}

#[tokio::test]
async fn deliveries_that_cannot_be_remembered_for_a_retry_fail_the_call() {
    let store = MemStore::default();
    store.failing.store(true, Ordering::SeqCst);
    let members = [RemoteUserId::new("a@x"), RemoteUserId::new("b@x")];
    let e = fan_out(&store, "$e", &members, |m, _| {
        let r = if m.as_str() == "a@x" {
            Ok(1)
        } else {
            Err(NetworkError::Transient("busy".into()))
        };
        async move { r }
    })
    .await
    .unwrap_err();
    assert!(matches!(e, NetworkError::Internal(_)), "{e:?}");
    // Nothing to remember when everyone has it: the broken store is not asked to write.
    let ok = fan_out(&store, "$f", &members, |_, _| async {
        Ok::<_, NetworkError>(1)
    })
    .await;
    assert_eq!(ok.unwrap(), Some(1));
}

#[tokio::test]
async fn a_message_everyone_had_returns_no_id() {
    let store = MemStore::default();
    let members = [RemoteUserId::new("a@x")];
    let done = Progress {
        delivered: ["a@x".to_owned()].into(),
        ..Progress::default()
    };
    store
        .put(&record_key("$e"), &serde_json::to_value(&done).unwrap())
        .unwrap();
    let got = fan_out(&store, "$e", &members, |_, _| async {
        Err::<u8, _>(NetworkError::Undeliverable("must not be asked".into()))
    })
    .await;
    assert_eq!(got.unwrap(), None);
    assert!(store.map.lock().unwrap().is_empty());
}

/// On a multi-threaded runtime (the bridge's), the write that waits for the disk lets the
/// worker's other tasks run elsewhere; the outcome is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_runs_on_a_multi_threaded_runtime() {
    let store = MemStore::default();
    let members = [RemoteUserId::new("a@x"), RemoteUserId::new("b@x")];
    let r = fan_out(&store, "$e", &members, |m, _| {
        let r = if m.as_str() == "a@x" {
            Ok(1)
        } else {
            Err(NetworkError::Transient("busy".into()))
        };
        async move { r }
    })
    .await;
    assert_eq!(r.unwrap_err().retry(), Retry::Transient);
    assert_eq!(calls(&store), (1, 1, 0));
}
