//! Tests of own-account logins: which chats an account carries, the wire shape of its
//! requests, carbons, archived times, server names.

use super::archive::*;
use super::session::*;
use super::*;

const RSM: &str = "http://jabber.org/protocol/rsm";

/// An own account's client carries direct chats only, and writes nothing of a group
/// chat on the account's connection; the gateway carries every kind of chat.
#[tokio::test]
async fn an_own_account_carries_direct_chats_only() {
    use crate::network::{ChatKind, MatrixSender, PortalRef, RemoteChatId, RemoteMessageId};
    let cfg: XmppConfig = serde_json::from_value(serde_json::json!({
        "component": {"domain": "matrix.example.org", "secret": "s"},
    }))
    .unwrap();
    let xmpp = super::super::Xmpp::new(&cfg, "s".into(), "example.org");
    for kind in [ChatKind::Direct, ChatKind::Group, ChatKind::Fanout] {
        assert!(xmpp.gateway.serves(kind));
    }
    let data = AccountData {
        jid: "alice@example.net".into(),
        password: "p".into(),
        server: None,
        direct_tls: false,
    };
    let account = Account::new(xmpp.parts(), "@alice:example.org", data).unwrap();
    let mut written = account.rx.lock().unwrap().take().unwrap();
    let client = account.client();
    assert!(client.serves(ChatKind::Direct));
    assert!(!client.serves(ChatKind::Group) && !client.serves(ChatKind::Fanout));
    let group = PortalRef {
        chat: RemoteChatId::new("room@conference.example.net"),
        kind: ChatKind::Group,
        receiver: None,
        members: Vec::new(),
    };
    let alice = MatrixSender {
        user_id: "@alice:example.org".into(),
        displayname: "Alice".into(),
    };
    let target = RemoteMessageId::new("m1");
    let content = crate::network::MessageContent::text("hello");
    let refused = [
        client.join_chat(&group, &alice).await,
        client.leave_chat(&group, &alice).await,
        client.send_moderation(&group, &alice, &target, None).await,
        client.send_edit(&group, &alice, &target, &content).await,
        client.send_redaction(&group, &alice, &target).await,
    ];
    for r in refused {
        assert!(matches!(r, Err(NetworkError::Internal(_))), "{r:?}");
    }
    assert!(
        written.try_recv().is_err(),
        "a group chat stanza on the account's connection"
    );
}

/// The archive query as the bridge built it by hand before the crate's types.
fn built_archive_query(queryid: &str, after: Option<&str>) -> Element {
    let set = match after {
        Some(a) => Element::builder("set", RSM)
            .append(
                Element::builder("max", RSM)
                    .append(MAM_PAGE.to_string())
                    .build(),
            )
            .append(Element::builder("after", RSM).append(a).build())
            .build(),
        None => Element::builder("set", RSM)
            .append(
                Element::builder("max", RSM)
                    .append(MAM_FIRST.to_string())
                    .build(),
            )
            .append(Element::builder("before", RSM).build())
            .build(),
    };
    Element::builder("query", ns::MAM)
        .attr(xml_name("queryid"), queryid)
        .append(set)
        .build()
}

use super::payloads::wire;

proptest::proptest! {
    /// The typed archive query is the one the bridge sent before.
    #[test]
    fn archive_query_keeps_the_wire_shape(
        queryid in "q[0-9a-f]{1,16}",
        after in proptest::option::of("[ -~é]{0,16}"),
    ) {
        let typed = archive_query(&queryid, after.as_deref());
        let built = built_archive_query(&queryid, after.as_deref());
        proptest::prop_assert_eq!(wire(&typed), wire(&built));
    }

    /// A carbon copy is read from the account's own server, and only from it, whatever
    /// else the copy carries.
    #[test]
    fn carbons_are_read(body in "[a-zA-Z0-9 ]{1,16}", extra in "[a-z]{1,8}", sent in proptest::bool::ANY) {
        let own = BareJid::from_str("me@example.org").unwrap();
        let kind = if sent { "sent" } else { "received" };
        let xml = format!(
            "<message xmlns='jabber:component:accept' from='me@example.org' to='me@example.org/isthmus'>\
             <{kind} xmlns='urn:xmpp:carbons:2' x-{extra}='1'><forwarded xmlns='urn:xmpp:forward:0'>\
             <message xmlns='jabber:component:accept' from='me@example.org/phone' to='friend@example.org' type='chat'>\
             <body>{body}</body><{extra} xmlns='urn:example'/></message></forwarded></{kind}></message>"
        );
        let msg = Message::try_from(Element::from_str(&xml).unwrap()).unwrap();
        proptest::prop_assert!(is_carbon(&msg));
        let inner = match carbon(&msg, &own) {
            Some(Carbon::Sent(m)) if sent => m,
            Some(Carbon::Received(m)) if !sent => m,
            _ => return Err(proptest::test_runner::TestCaseError::fail("not read")),
        };
        proptest::prop_assert_eq!(inner.bodies.values().next(), Some(&body));
        let forged = Message::try_from(
            Element::from_str(&xml.replacen("from='me@example.org'", "from='evil@example.org'", 1)).unwrap(),
        )
        .unwrap();
        proptest::prop_assert!(carbon(&forged, &own).is_none());
    }
}

#[test]
fn requests_keep_the_wire_shape() {
    let roster: Element = Roster {
        ver: None,
        items: Vec::new(),
    }
    .into();
    assert_eq!(roster, Element::builder("query", ROSTER).build());
    let enable: Element = carbons::Enable.into();
    assert_eq!(enable, Element::builder("enable", ns::CARBONS).build());
    let metadata: Element = PubSub::Items(Items {
        max_items: Some(1),
        ..Items::new(AVATAR_METADATA)
    })
    .into();
    assert_eq!(
        metadata,
        Element::builder("pubsub", PUBSUB)
            .append(
                Element::builder("items", PUBSUB)
                    .attr(xml_name("node"), AVATAR_METADATA)
                    .attr(xml_name("max_items"), "1")
                    .build(),
            )
            .build()
    );
    let data: Element = PubSub::Items(Items {
        items: vec![pubsub::pubsub::Item {
            id: Some(pubsub::ItemId("abc".into())),
            publisher: None,
            payload: None,
        }],
        ..Items::new(AVATAR_DATA)
    })
    .into();
    assert_eq!(
        data,
        Element::builder("pubsub", PUBSUB)
            .append(
                Element::builder("items", PUBSUB)
                    .attr(xml_name("node"), AVATAR_DATA)
                    .append(
                        Element::builder("item", PUBSUB)
                            .attr(xml_name("id"), "abc")
                            .build(),
                    )
                    .build(),
            )
            .build()
    );
}

#[test]
fn archived_times_keep_their_milliseconds() {
    let d = archive_delay("example.org", 1_795_728_662_123);
    assert_eq!(d.attr("stamp"), Some("2026-11-26T21:31:02.123Z"));
    assert_eq!(d.attr("from"), Some("example.org"));
    assert!(d.is("delay", ns::DELAY));
}

#[test]
fn servers_parse() {
    assert_eq!(
        host_port("xmpp.example.org").unwrap(),
        ("xmpp.example.org".into(), 5222)
    );
    assert_eq!(
        host_port("127.0.0.1:15222").unwrap(),
        ("127.0.0.1".into(), 15222)
    );
    assert_eq!(host_port("[::1]:5223").unwrap(), ("::1".into(), 5223));
    assert!(host_port("a:b").is_err());
    assert!(host_port("::1").is_err());
    assert!(host_port(":5222").is_err());
    assert!(host_port("x@y:1").is_err());
    assert!(host_port("h:0").is_err());
}

/// A core that keeps every push, or (`fail`) a store that cannot write: every push and
/// every batch fails. It counts the pushes.
#[derive(Default)]
struct BatchCore {
    fail: std::sync::atomic::AtomicBool,
    pushes: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl crate::network::RemoteEventHandler for BatchCore {
    async fn push(
        &self,
        _network: &crate::network::NetworkId,
        _event: RemoteEvent,
    ) -> Result<(), crate::network::SinkError> {
        self.pushes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::network::SinkError("disk full".into()));
        }
        Ok(())
    }

    async fn push_batch(
        &self,
        work: futures::future::BoxFuture<'_, ()>,
    ) -> Result<(), crate::network::SinkError> {
        work.await;
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::network::SinkError("disk full".into()));
        }
        Ok(())
    }

    async fn report_state(
        &self,
        _network: &crate::network::NetworkId,
        _user_id: Option<&str>,
        _state: BridgeState,
        _message: Option<String>,
    ) {
    }
}

/// The own account alice@example.net of a connector whose core is `core` and whose store
/// is `store`, tracked as the user's live login (the connector comes along, to outlive it).
async fn tracked_account(
    core: Arc<BatchCore>,
    store: Arc<crate::network::kit::testing::MemStore>,
) -> (super::super::Xmpp, Arc<Account>) {
    let cfg: XmppConfig = serde_json::from_value(serde_json::json!({
        "component": {"domain": "matrix.example.org", "secret": "s"},
    }))
    .unwrap();
    let xmpp = super::super::Xmpp::new(&cfg, "s".into(), "example.org");
    let _ = xmpp.handler.shared.sink.set(crate::network::EventSink::new(
        crate::network::NetworkId::new("xmpp"),
        core,
        store,
        crate::tasks::Tasks::new(),
    ));
    let data = AccountData {
        jid: "alice@example.net".into(),
        password: "p".into(),
        server: None,
        direct_tls: false,
    };
    let account = Account::new(xmpp.parts(), "@alice:example.org", data).unwrap();
    account.track().await;
    (xmpp, account)
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(32))]
    /// What an own account's connection reads is reported stored only when the core stored
    /// it: a message a contact wrote, or a copy of one the user wrote from another client
    /// (whose loss no sender would ever hear of), fails its batch when the store cannot
    /// write, so the connection does not acknowledge it to the server.
    #[test]
    fn a_batch_the_store_could_not_keep_is_not_reported_stored(
        body in "[a-zA-Z0-9 ]{1,24}",
        sent in proptest::bool::ANY,
        receipt in proptest::bool::ANY,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let core = Arc::new(BatchCore::default());
            core.fail.store(true, std::sync::atomic::Ordering::SeqCst);
            let (_xmpp, account) = tracked_account(core.clone(), Arc::default()).await;
            let request = if receipt { "<request xmlns='urn:xmpp:receipts'/>" } else { "" };
            let inner = format!(
                "<message xmlns='jabber:client' from='{}' to='{}' type='chat' id='m1'><body>{body}</body>{request}</message>",
                if sent { "alice@example.net/phone" } else { "bob@example.com/phone" },
                if sent { "bob@example.com" } else { "alice@example.net" },
            );
            let carbon = format!(
                "<message xmlns='jabber:client' from='alice@example.net' to='alice@example.net/isthmus'>\
                 <{kind} xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'>{inner}</forwarded></{kind}></message>",
                kind = if sent { "sent" } else { "received" },
            );
            let stanza = c2s::from_client(carbon.parse::<Element>().unwrap()).unwrap();
            let result = c2s::Events::stanzas(account.as_ref(), vec![stanza]).await;
            assert!(
                core.pushes.load(std::sync::atomic::Ordering::SeqCst) > 0,
                "the copy reached the core"
            );
            assert!(result.is_err(), "reported stored: {result:?}");
        });
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(24))]
    /// The archive position (XEP-0313) of the messages an own account's connection reads
    /// together is written once for the batch, after the batch is stored, and is the last
    /// archived message's; a batch the store did not keep leaves the position where it was,
    /// so the next catch-up asks for those messages again.
    #[test]
    fn a_batch_moves_the_archive_position_once_and_only_when_stored(
        archived in proptest::collection::vec(proptest::bool::ANY, 1..12),
        stored in proptest::bool::ANY,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let core = Arc::new(BatchCore::default());
            core.fail.store(!stored, std::sync::atomic::Ordering::SeqCst);
            let store = Arc::new(crate::network::kit::testing::MemStore::default());
            let (_xmpp, account) = tracked_account(core, store.clone()).await;
            // Live messages, after any catch-up.
            account.catching_up.store(false, std::sync::atomic::Ordering::SeqCst);
            let key = account.archive_key();
            store.map.lock().unwrap().insert(key.clone(), "before".into());
            let puts = store.puts.load(std::sync::atomic::Ordering::SeqCst);
            let batch: Vec<Stanza> = archived
                .iter()
                .enumerate()
                .map(|(i, has_id)| {
                    let sid = if *has_id {
                        format!("<stanza-id xmlns='urn:xmpp:sid:0' by='alice@example.net' id='sid{i}'/>")
                    } else {
                        String::new()
                    };
                    let el: Element = format!(
                        "<message xmlns='jabber:client' from='bob@example.com/phone' to='alice@example.net/isthmus' type='chat' id='m{i}'><body>hi {i}</body>{sid}</message>"
                    )
                    .parse()
                    .unwrap();
                    c2s::from_client(el).unwrap()
                })
                .collect();
            let result = c2s::Events::stanzas(account.as_ref(), batch).await;
            proptest::prop_assert_eq!(result.is_ok(), stored);
            let last = archived.iter().rposition(|a| *a).map(|i| format!("sid{i}"));
            let want = match (&last, stored) {
                (Some(id), true) => id.clone(),
                _ => "before".into(),
            };
            proptest::prop_assert_eq!(
                store.map.lock().unwrap().get(&key).cloned(),
                Some(serde_json::Value::from(want))
            );
            let position_writes = store.puts.load(std::sync::atomic::Ordering::SeqCst) - puts;
            proptest::prop_assert!(
                position_writes <= usize::from(stored && last.is_some()),
                "{position_writes} writes for one batch"
            );
            Ok(())
        })?;
    }
}
