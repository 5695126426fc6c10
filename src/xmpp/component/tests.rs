//! Tests of the component link: batched writes, write failures, answers to skipped
//! stanzas, reconnect delays.

use super::*;

fn message(n: usize) -> Stanza {
    let mut m =
        xmpp_parsers::message::Message::new(Some("alice@localhost".parse::<Jid>().unwrap()));
    m.bodies
        .insert(xmpp_parsers::message::Lang::default(), format!("m{n}"));
    m.into()
}

type Ack = oneshot::Receiver<Result<(), LinkError>>;

fn batch(n: usize) -> (Vec<Outgoing>, Vec<Ack>) {
    (0..n)
        .map(|i| {
            let (tx, rx) = oneshot::channel();
            // Every other stanza has nobody waiting on it.
            ((message(i), (i % 2 == 0).then_some(tx)), rx)
        })
        .unzip()
}

#[tokio::test]
async fn a_batch_is_written_in_order_and_every_sender_hears() {
    let (mut sink, mut written) = futures::channel::mpsc::unbounded::<Stanza>();
    let (out, acks) = batch(5);
    assert_eq!(write_batch(&mut sink, out).await, None);
    drop(sink);
    let mut bodies = Vec::new();
    while let Some(Stanza::Message(m)) = written.next().await {
        bodies.extend(m.bodies.into_values());
    }
    assert_eq!(bodies, ["m0", "m1", "m2", "m3", "m4"]);
    for (i, ack) in acks.into_iter().enumerate() {
        match ack.await {
            Ok(r) => assert!(r.is_ok(), "stanza {i}: {r:?}"),
            Err(_) => assert!(i % 2 == 1, "stanza {i} had a sender who never heard"),
        }
    }
}

#[tokio::test]
async fn a_failed_write_is_told_to_every_sender_in_the_batch() {
    let (mut sink, written) = futures::channel::mpsc::unbounded::<Stanza>();
    drop(written);
    let (out, acks) = batch(4);
    let why = write_batch(&mut sink, out).await.expect("the write fails");
    assert!(why.starts_with("write failed"), "{why}");
    for (i, ack) in acks.into_iter().enumerate() {
        if i % 2 == 0 {
            assert!(ack.await.unwrap().is_err(), "stanza {i}");
        }
    }
}

#[tokio::test]
async fn a_write_failure_is_the_links_outage_and_its_cause_is_kept() {
    let (mut sink, written) = futures::channel::mpsc::unbounded::<Stanza>();
    drop(written);
    let (out, acks) = batch(1);
    write_batch(&mut sink, out).await.expect("the write fails");
    let e = acks.into_iter().next().unwrap().await.unwrap().unwrap_err();
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
    let e = NetworkError::from(e);
    assert_eq!(e.retry(), crate::error::Retry::Outage, "{e}");
    // A stanza that cannot be written at all is that item's failure, not the link's.
    let unwritable = xml_safe::Unwritable::from(Reason::new("bad"));
    let e = NetworkError::from(LinkError::Unwritable(unwritable));
    assert_eq!(e.retry(), crate::error::Retry::Never, "{e}");
}

fn skipped(name: &str, kind: Option<&str>) -> Skipped {
    Skipped {
        name: name.into(),
        from: Some("alice@localhost/phone".into()),
        to: Some("bob@matrix.localhost".into()),
        id: Some("m1".into()),
        kind: kind.map(str::to_owned),
        broken: super::super::limits::Broken::Size,
    }
}

#[test]
fn a_skipped_stanza_is_answered_with_a_policy_violation_to_its_sender() {
    for (name, kind) in [
        ("message", Some("chat")),
        ("message", None),
        ("presence", None),
        ("presence", Some("subscribe")),
        ("iq", Some("get")),
        ("iq", Some("set")),
    ] {
        let answer = limit_error(&skipped(name, kind)).expect(name);
        let el = xmpp_parsers::minidom::Element::from(answer);
        assert_eq!(el.name(), name);
        assert_eq!(el.attr("type"), Some("error"));
        assert_eq!(el.attr("to"), Some("alice@localhost/phone"));
        assert_eq!(el.attr("from"), Some("bob@matrix.localhost"));
        assert_eq!(el.attr("id"), Some("m1"));
        let error = el
            .children()
            .find(|c| c.name() == "error")
            .expect("an error child");
        assert_eq!(error.attr("type"), Some("modify"));
        assert!(error.children().any(|c| c.name() == "policy-violation"));
        assert!(error.children().any(|c| c.name() == "text"));
    }
}

#[test]
fn no_answer_to_errors_results_unknown_elements_or_unreadable_addresses() {
    assert!(limit_error(&skipped("message", Some("error"))).is_none());
    assert!(limit_error(&skipped("presence", Some("error"))).is_none());
    assert!(limit_error(&skipped("iq", Some("error"))).is_none());
    assert!(limit_error(&skipped("iq", Some("result"))).is_none());
    assert!(limit_error(&skipped("db:verify", None)).is_none());
    let mut s = skipped("message", None);
    s.from = None;
    assert!(limit_error(&s).is_none());
    let mut s = skipped("message", None);
    s.from = Some("not a jid@@".into());
    assert!(limit_error(&s).is_none());
    let mut s = skipped("message", None);
    s.to = None;
    assert!(limit_error(&s).is_none());
}

#[test]
fn reconnects_back_off_from_a_second_to_a_minute() {
    let mut reconnect = RECONNECT.start();
    for attempt in 0..20 {
        let d = reconnect.next_delay().expect("never gives up");
        let base = 2f64.powi(attempt.min(6)).min(60.0);
        assert!(
            d.as_secs_f64() >= base * 0.75 - 1e-9
                && d.as_secs_f64() <= (base * 1.25).min(60.0) + 1e-9,
            "{attempt}: {d:?}"
        );
    }
}
