//! Which identity a watch subscribes as, what its NOTIFYs tell through, and the end of an
//! account's watches: against the real endpoint, with a stand-in proxy that reads the
//! SUBSCRIBEs and answers them by hand.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rsipstack::transaction::TransactionReceiver;
use tokio::net::UdpSocket;
use tokio::sync::watch as switch;

use super::*;
use crate::network::contacts::Subscription;
use crate::network::kit::registry::{Entry, Registry};
use crate::network::kit::state::StateCell;
use crate::network::kit::testing::MemStore;
use crate::network::{
    BridgeState, EventSink, NetworkId, RemoteChatId, RemoteEvent, RemoteEventHandler, SinkError,
};
use crate::sip::SipTransport;
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::Endpoint;
use crate::sip::ids::Addressing;
use crate::sip::presence::load;
use crate::sip::presence::subscriber::refresh_due;

const ALICE: &str = "@alice:localhost";
const KEY: &str = "~a.key";

/// The core as watches see it: the user's direct chats.
struct Core {
    chats: Vec<RemoteChatId>,
}

#[async_trait]
impl RemoteEventHandler for Core {
    async fn push(&self, _network: &NetworkId, _event: RemoteEvent) -> Result<(), SinkError> {
        Ok(())
    }

    async fn direct_chats(&self, _network: &NetworkId, _user_id: &str) -> Vec<RemoteChatId> {
        self.chats.clone()
    }

    async fn report_state(
        &self,
        _network: &NetworkId,
        _user_id: Option<&str>,
        _state: BridgeState,
        _message: Option<String>,
    ) {
    }
}

/// The connector's shared state on a running endpoint whose proxy is `proxy`.
struct Rig {
    shared: Arc<Shared>,
    proxy: UdpSocket,
    _incoming: TransactionReceiver,
}

async fn rig(chats: &[&str]) -> Rig {
    let proxy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    let tasks = crate::tasks::Tasks::new();
    let (endpoint, incoming) = Endpoint::start_for_test(proxy_addr, &tasks).await;
    let core = Arc::new(Core {
        chats: chats.iter().map(|c| RemoteChatId::new(*c)).collect(),
    });
    let sink = EventSink::new(
        NetworkId::new("sip"),
        core,
        Arc::new(MemStore::default()),
        tasks,
    );
    let shared = Arc::new(Shared {
        addressing: Addressing::new("gw.test", "localhost"),
        sink: OnceLock::from(sink),
        endpoint: OnceLock::from(endpoint),
        policy: Default::default(),
        trusted: Vec::new(),
        proxy: proxy_addr,
        transport: SipTransport::Udp,
        subscription_seconds: 600,
        register_seconds: 600,
        accounts: Registry::default(),
        state: StateCell::new(BridgeState::Connected),
        presence: Mutex::default(),
        subscriptions: tokio::sync::Mutex::new(()),
        refused: Mutex::default(),
    });
    Rig {
        shared,
        proxy,
        _incoming: incoming,
    }
}

/// Dave's account, used by `user` (tracked under [`KEY`]); keep the switch to stay tracked.
fn track(shared: &Shared, user: &str) -> (Arc<OwnAccount>, switch::Sender<bool>) {
    let own = Arc::new(OwnAccount {
        key: KEY.into(),
        aor: "sip:dave@corp.test".into(),
        credential: Credential {
            username: "dave".into(),
            password: "davepass".into(),
            realm: None,
            auth_username: None,
        },
        proxy: None,
    });
    let stop = switch::channel(false).0;
    shared.accounts.track(
        KEY,
        Entry {
            user: user.into(),
            stop: stop.clone(),
            account: own.clone(),
        },
    );
    (own, stop)
}

/// A request the proxy received, with where it came from.
struct Request {
    text: String,
    from: SocketAddr,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    fn cseq(&self) -> u32 {
        let c = self.header("CSeq").expect("a CSeq");
        c.split_whitespace().next().unwrap().parse().unwrap()
    }
}

impl Rig {
    /// The next request the proxy reads (retransmissions left out).
    async fn next(&self, seen: &mut Vec<String>) -> Request {
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), self.proxy.recv_from(&mut buf))
                    .await
                    .expect("a request reaches the proxy")
                    .unwrap();
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let req = Request { text, from };
            let id = format!(
                "{} {}",
                req.header("Call-ID").unwrap_or(""),
                req.header("CSeq").unwrap_or("")
            );
            if !seen.contains(&id) {
                seen.push(id);
                return req;
            }
        }
    }

    /// Answers `req` with `status`, the To tagged, and `extra` headers.
    async fn answer(&self, req: &Request, status: &str, extra: &[&str]) {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            out.push_str(&format!("{name}: {}\r\n", req.header(name).unwrap()));
        }
        let to = req.header("To").unwrap();
        let tag = if to.contains(";tag=") {
            ""
        } else {
            ";tag=notifier"
        };
        out.push_str(&format!("To: {to}{tag}\r\n"));
        for e in extra {
            out.push_str(&format!("{e}\r\n"));
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        self.proxy.send_to(out.as_bytes(), req.from).await.unwrap();
    }
}

/// A dialog with `contact`, not confirmed yet.
fn dialog(call_id: &str, local_uri: &str, contact: &str) -> Dialog {
    Dialog {
        call_id: call_id.into(),
        local_uri: local_uri.into(),
        local_tag: "l".into(),
        remote_uri: format!("sip:{contact}"),
        remote_tag: String::new(),
        remote_target: format!("sip:{contact}"),
        routes: Vec::new(),
        cseq: 0,
        expires_at_ms: 0,
        granted_s: 0,
    }
}

/// Stores a confirmed watch of `contact` for [`ALICE`], as `account` (`None`: the gateway).
fn stored(shared: &Shared, contact: &str, account: Option<&str>) -> String {
    let call_id = format!("{contact}-{}", account.unwrap_or("gw"));
    let local_uri = match account {
        Some(_) => "sip:dave@corp.test",
        None => "sip:alice@gw.test",
    };
    let w = Watch {
        user: ALICE.into(),
        contact: contact.into(),
        account: account.map(str::to_owned),
        ending: false,
        dialog: Dialog {
            remote_tag: "r".into(),
            cseq: 5,
            expires_at_ms: now_ms() + 600_000,
            granted_s: 600,
            ..dialog(&call_id, local_uri, contact)
        },
    };
    save(shared, &format!("{WATCH}{call_id}"), &w).unwrap();
    let _ = contacts::update(shared.store().unwrap(), ALICE, contact, |s| s.to = true);
    call_id
}

fn watches(shared: &Shared) -> Vec<Watch> {
    all::<Watch>(shared, WATCH)
        .into_iter()
        .map(|(_, w)| w)
        .collect()
}

#[tokio::test]
async fn a_watch_subscribes_as_the_identity_its_client_picked() {
    let rig = rig(&[]).await;
    let shared = rig.shared.clone();
    let (own, _stop) = track(&shared, ALICE);
    let mut seen = Vec::new();

    // The account's client: From the account's address, NOTIFYs back to its contact, the
    // proxy's challenge answered with its credentials on the next CSeq.
    let sub = tokio::spawn({
        let (shared, own) = (shared.clone(), own.clone());
        async move { watch(&shared, ALICE, "carol@corp.test", Some(&own)).await }
    });
    let first = rig.next(&mut seen).await;
    assert!(
        first.text.starts_with("SUBSCRIBE sip:carol@corp.test "),
        "{}",
        first.text
    );
    assert!(
        first
            .header("From")
            .unwrap()
            .contains("<sip:dave@corp.test>")
    );
    assert!(
        first
            .header("Contact")
            .unwrap()
            .contains(&format!("sip:{KEY}@"))
    );
    assert!(first.header("Proxy-Authorization").is_none());
    rig.answer(
        &first,
        "407 Proxy Authentication Required",
        &[r#"Proxy-Authenticate: Digest realm="corp.test", nonce="n1""#],
    )
    .await;
    let again = rig.next(&mut seen).await;
    let auth = again
        .header("Proxy-Authorization")
        .expect("the challenge answered");
    assert!(auth.contains(r#"username="dave""#), "{auth}");
    assert_eq!(again.cseq(), first.cseq() + 1);
    rig.answer(&again, "200 OK", &["Expires: 600"]).await;
    sub.await.unwrap().unwrap();

    // The gateway's client: From the user's gateway address, no credentials.
    let sub = tokio::spawn({
        let shared = shared.clone();
        async move { watch(&shared, ALICE, "carol@corp.test", None).await }
    });
    let gw = rig.next(&mut seen).await;
    assert!(gw.header("From").unwrap().contains("<sip:alice@gw.test>"));
    assert!(gw.header("Contact").unwrap().contains("sip:alice@"));
    rig.answer(&gw, "200 OK", &["Expires: 600"]).await;
    sub.await.unwrap().unwrap();
    // Each identity watches once.
    watch(&shared, ALICE, "carol@corp.test", Some(&own))
        .await
        .unwrap();
    watch(&shared, ALICE, "carol@corp.test", None)
        .await
        .unwrap();
    let mut kinds: Vec<Option<String>> = watches(&shared).into_iter().map(|w| w.account).collect();
    kinds.sort();
    assert_eq!(kinds, [None, Some(KEY.to_owned())]);

    // A refresh of the account's watch comes after the number the challenge took.
    let later = now_ms() + 590_000;
    let refresh = tokio::spawn({
        let shared = shared.clone();
        async move { refresh_due(&shared, later).await }
    });
    for _ in 0..2 {
        let r = rig.next(&mut seen).await;
        if r.header("From").unwrap().contains("dave") {
            assert!(
                r.cseq() > again.cseq(),
                "{} after {}",
                r.cseq(),
                again.cseq()
            );
            assert!(r.header("To").unwrap().contains("tag=notifier"));
        }
        rig.answer(&r, "200 OK", &["Expires: 600"]).await;
    }
    refresh.await.unwrap();

    // Another user's login takes the account over: alice's watch as the account is no
    // longer refreshed, and is forgotten once its time is up; the gateway's goes on.
    let (_, _other) = track(&shared, "@bob:localhost");
    let much_later = now_ms() + 10 * 600_000;
    let refresh = tokio::spawn({
        let shared = shared.clone();
        async move { refresh_due(&shared, much_later).await }
    });
    let r = rig.next(&mut seen).await;
    assert!(
        r.header("From").unwrap().contains("<sip:alice@gw.test>"),
        "{}",
        r.text
    );
    rig.answer(&r, "200 OK", &["Expires: 600"]).await;
    refresh.await.unwrap();
    // Nor does alice's client start one as the account any more.
    watch(&shared, ALICE, "erin@corp.test", Some(&own))
        .await
        .unwrap();
    let left: Vec<Option<String>> = watches(&shared).into_iter().map(|w| w.account).collect();
    assert_eq!(left, [None]);
}

#[tokio::test]
async fn a_notify_tells_through_the_login_that_holds_the_account_and_through_nothing_after() {
    let rig = rig(&[]).await;
    let shared = &rig.shared;
    // Every combination: who holds the account (nobody, the watch's user, someone else),
    // which identity the watch has, and whether it is ending.
    for holder in [None, Some(ALICE), Some("@bob:localhost")] {
        // In this order, each holder takes the account over from the one before.
        let _held = holder.map(|u| track(shared, u));
        for account in [None, Some(KEY.to_owned())] {
            for ending in [false, true] {
                let w = Watch {
                    user: ALICE.into(),
                    contact: "carol@corp.test".into(),
                    account: account.clone(),
                    ending,
                    dialog: dialog("c", "sip:x@y", "carol@corp.test"),
                };
                let held_by_user = holder == Some(ALICE);
                let case = format!("held by {holder:?}, account {account:?}, ending {ending}");
                let want = match (&account, ending) {
                    (_, true) => None,
                    (None, false) => Some(None),
                    (Some(_), false) if held_by_user => Some(Some(ALICE)),
                    (Some(_), false) => None,
                };
                assert_eq!(told_via(shared, &w), want, "{case}");
                // The gateway's contact without credentials; the account's with its own.
                let want = match &account {
                    None => Some(("alice".to_owned(), None)),
                    Some(_) if held_by_user => Some((KEY.to_owned(), Some("dave".to_owned()))),
                    Some(_) => None,
                };
                let got = subscriber(shared, &w)
                    .map(|s| (s.contact_user, s.credential.map(|c| c.username)));
                assert_eq!(got, want, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn a_logout_unsubscribes_the_accounts_watches_and_the_gateway_tells_again() {
    let rig = rig(&[]).await;
    let shared = rig.shared.clone();
    let (own, _stop) = track(&shared, ALICE);
    stored(&shared, "carol@corp.test", Some(KEY));
    stored(&shared, "dan@corp.test", Some(KEY));
    let gateway = stored(&shared, "carol@corp.test", None);
    let mut seen = Vec::new();

    let logout = tokio::spawn({
        let (shared, own) = (shared.clone(), own.clone());
        async move { unwatch_account(&shared, ALICE, &own).await }
    });
    let mut ended = Vec::new();
    for _ in 0..2 {
        let r = rig.next(&mut seen).await;
        assert_eq!(r.header("Expires"), Some("0"), "{}", r.text);
        assert!(r.header("From").unwrap().contains("<sip:dave@corp.test>"));
        assert!(r.header("To").unwrap().contains("tag=r"), "in the dialog");
        assert!(r.cseq() > 5);
        ended.push(r.text.split_whitespace().nth(1).unwrap().to_owned());
        rig.answer(&r, "200 OK", &["Expires: 0"]).await;
    }
    ended.sort();
    assert_eq!(ended, ["sip:carol@corp.test", "sip:dan@corp.test"]);
    // Then the gateway's watch of the same contact is refreshed.
    let r = rig.next(&mut seen).await;
    assert_eq!(r.header("Call-ID"), Some(gateway.as_str()));
    assert_eq!(r.header("Expires"), Some("600"));
    rig.answer(&r, "200 OK", &["Expires: 600"]).await;
    logout.await.unwrap();

    // The account's watches show nothing more; carol is still watched through the
    // gateway, dan no longer.
    for w in watches(&shared).into_iter().filter(|w| w.account.is_some()) {
        assert!(w.ending, "{}", w.contact);
        assert_eq!(told_via(&shared, &w), None);
    }
    let store = shared.store().unwrap();
    assert!(contacts::get(store, ALICE, "carol@corp.test").unwrap().to);
    assert_eq!(
        contacts::get(store, ALICE, "dan@corp.test").unwrap(),
        Subscription::default()
    );
    // Without their final NOTIFY, they are forgotten after the grace; nothing is sent.
    refresh_due(&shared, now_ms() + ENDING_GRACE_MS + 1).await;
    let left: Vec<Option<String>> = watches(&shared).into_iter().map(|w| w.account).collect();
    assert_eq!(left, [None]);
    assert!(load::<Watch>(&shared, &format!("{WATCH}{gateway}")).is_some());
}

#[tokio::test]
async fn a_connected_account_watches_the_contacts_of_the_users_direct_chats() {
    let rig = rig(&["carol@corp.test", "dan@corp.test"]).await;
    let shared = rig.shared.clone();
    let (own, _stop) = track(&shared, ALICE);
    let carol = stored(&shared, "carol@corp.test", Some(KEY));
    stored(&shared, "dan@corp.test", None);
    let mut seen = Vec::new();
    let connected = tokio::spawn({
        let (shared, own) = (shared.clone(), own.clone());
        async move { watch_contacts(&shared, ALICE, &own).await }
    });
    // carol's watch is refreshed (what it told was forgotten), dan gets one as the account
    // beside the gateway's.
    let refresh = rig.next(&mut seen).await;
    assert_eq!(refresh.header("Call-ID"), Some(carol.as_str()));
    rig.answer(&refresh, "200 OK", &["Expires: 600"]).await;
    let new = rig.next(&mut seen).await;
    assert!(
        new.text.starts_with("SUBSCRIBE sip:dan@corp.test "),
        "{}",
        new.text
    );
    assert!(new.header("From").unwrap().contains("<sip:dave@corp.test>"));
    assert!(!new.header("To").unwrap().contains("tag="));
    rig.answer(&new, "200 OK", &["Expires: 600"]).await;
    connected.await.unwrap();
    let mut all: Vec<(String, Option<String>)> = watches(&shared)
        .into_iter()
        .map(|w| (w.contact, w.account))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("carol@corp.test".to_owned(), Some(KEY.to_owned())),
            ("dan@corp.test".to_owned(), None),
            ("dan@corp.test".to_owned(), Some(KEY.to_owned())),
        ]
    );
}
