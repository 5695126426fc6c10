//! The SIP test harness against the real Kamailio alone, without the bridge: SIPp plays the
//! SIP users and, on the gateway port, stands in for the bridge. These tests show that what
//! the SIP tests of the bridge rely on holds: digest authentication at the registrar and the
//! proxy, delivery of MESSAGEs to registered users, the route of the gateway domain to the
//! gateway port and whom the proxy trusts for it, and presence subscriptions through the
//! proxy. `scripts/test.sh` starts Kamailio (`scripts/kamailio.sh up 15060 15070`).

mod common;

use std::future::Future;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::serial;
use common::sipp::{
    self, GATEWAY_PORT, IS_COMPOSING, MessageSink, Notifier, PROXY, Watcher, gateway_uri,
    is_composing, uri,
};

/// Where the SIP users' own user agents listen in these tests.
const BOB_PORT: u16 = 15081;
const NOTIFIER_PORT: u16 = 15082;

const WAIT: Duration = Duration::from_secs(10);

/// Runs `f` and prints how long it took, so that the test output shows the harness's costs.
async fn timed<T>(what: &str, f: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    eprintln!("{what}: {:.3} s", start.elapsed().as_secs_f64());
    out
}

#[tokio::test]
async fn registering_needs_the_users_own_credentials() {
    let _serial = serial();
    sipp::require_kamailio();
    sipp::unregister_all("bob").await;

    let contact = sipp::contact("bob", BOB_PORT);
    let wrong = timed(
        "register with a wrong password",
        sipp::register_as("bob", ("bob", "not-bobs-password"), &contact, 60),
    )
    .await;
    assert_eq!(wrong, 401, "a wrong password is challenged again");
    let other = sipp::register_as("bob", ("carol", "carolpass"), &contact, 60).await;
    assert_eq!(other, 403, "carol's credentials do not register bob");

    let status = timed("register", sipp::register("bob", BOB_PORT, 60)).await;
    assert_eq!(status, 200);
    // A short registration, as a refresh test would use, is accepted.
    assert_eq!(sipp::register("bob", BOB_PORT, 10).await, 200);
    timed("unregister all", sipp::unregister_all("bob")).await;
}

#[tokio::test]
async fn message_reaches_the_registered_user_with_its_body_and_type() {
    let _serial = serial();
    sipp::require_kamailio();
    sipp::unregister_all("bob").await;
    let sink = timed("start a MESSAGE sink", MessageSink::start(BOB_PORT)).await;
    assert_eq!(sipp::register("bob", BOB_PORT, 60).await, 200);

    let body = "Hello Bob,\r\nthree lines, one blank:\n\nsee you at 10 ✓ <ok> & done";
    let status = timed(
        "send a MESSAGE",
        sipp::send_message("carol", &uri("bob"), "text/plain;charset=UTF-8", body),
    )
    .await;
    assert_eq!(status, 200);
    let status =
        sipp::send_message("carol", &uri("bob"), IS_COMPOSING, &is_composing("active")).await;
    assert_eq!(status, 200);

    let got = timed("wait for 2 MESSAGEs", sink.wait(2, WAIT)).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].from, uri("carol"));
    assert_eq!(got[0].to, uri("bob"));
    assert_eq!(got[0].request_uri, format!("sip:bob@127.0.0.1:{BOB_PORT}"));
    assert_eq!(got[0].content_type, "text/plain;charset=UTF-8");
    assert_eq!(got[0].body, body);
    assert_eq!(got[1].content_type, IS_COMPOSING);
    assert_eq!(
        sipp::xml_text(&got[1].body, "state").as_deref(),
        Some("active")
    );
    // The proxy took the credentials out before relaying.
    assert!(got[0].message.header("Proxy-Authorization").is_none());

    sipp::unregister_all("bob").await;
}

#[tokio::test]
async fn message_to_an_unregistered_user_is_404() {
    let _serial = serial();
    sipp::require_kamailio();
    sipp::unregister_all("frank").await;
    let status = timed(
        "send a MESSAGE to nobody",
        sipp::send_message("carol", &uri("frank"), "text/plain", "anyone there?"),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn gateway_domain_goes_to_the_gateway_port_and_only_the_gateway_speaks_for_it() {
    let _serial = serial();
    sipp::require_kamailio();
    let gateway = MessageSink::start(GATEWAY_PORT).await;

    let alice = gateway_uri("alice");
    let status = sipp::send_message("carol", &alice, "text/plain", "hi alice").await;
    assert_eq!(status, 200);
    let got = gateway.wait(1, WAIT).await;
    assert_eq!(got[0].request_uri, alice, "the Request-URI is kept");
    assert_eq!(got[0].from, uri("carol"));
    assert_eq!(got[0].body, "hi alice");

    // Somebody else sending as a Matrix user is refused...
    let spoofed = timed(
        "send a MESSAGE with a spoofed gateway From",
        sipp::send_message_as(&alice, ("alice", "x"), &uri("carol"), "text/plain", "hi"),
    )
    .await;
    assert_eq!(spoofed, 403);
    // ... and so is a user sending as another one.
    let borrowed = sipp::send_message_as(
        &uri("bob"),
        ("carol", "carolpass"),
        &alice,
        "text/plain",
        "hi",
    )
    .await;
    assert_eq!(borrowed, 403);
    assert_eq!(
        gateway.received().len(),
        1,
        "nothing else reached the gateway"
    );
}

#[tokio::test]
async fn watcher_gets_the_notifiers_presence_through_the_proxy() {
    let _serial = serial();
    sipp::require_kamailio();
    sipp::unregister_all("bob").await;
    let notifier = timed(
        "start a presence notifier",
        Notifier::start(NOTIFIER_PORT, true, "In a meeting & <busy>"),
    )
    .await;
    assert_eq!(sipp::register("bob", NOTIFIER_PORT, 60).await, 200);

    let watcher = Watcher::subscribe_then_unsubscribe("carol", &uri("bob"), 300, 1);
    let status = timed("SUBSCRIBE answered", watcher.status(WAIT)).await;
    assert_eq!(status, 200);
    let notify = timed(
        "first NOTIFY",
        watcher.wait_for("with basic open", WAIT, |n| {
            n.basic().as_deref() == Some("open")
        }),
    )
    .await;
    assert!(notify.state.starts_with("active"), "{}", notify.state);
    assert_eq!(notify.content_type, "application/pidf+xml");
    assert_eq!(notify.note().as_deref(), Some("In a meeting & <busy>"));

    let subscriber = notifier.wait(WAIT).await;
    assert_eq!(subscriber.from, uri("carol"));
    assert_eq!(subscriber.to, uri("bob"));
    assert_eq!(
        subscriber.request_uri,
        format!("sip:bob@127.0.0.1:{NOTIFIER_PORT}")
    );
    assert_eq!(subscriber.event, "presence");
    assert_eq!(subscriber.expires, Some(300));
    assert_eq!(subscriber.notify_status, 200);

    // The watcher unsubscribes through the proxy (the route set of the dialog); the
    // notifier ends the subscription.
    let notifies = timed("unsubscribe", watcher.finish(WAIT)).await;
    assert_eq!(notifies.len(), 2, "{notifies:#?}");
    assert!(notifies[1].state.starts_with("terminated"));
    let unsubscribe = notifier.wait_unsubscribed(WAIT).await;
    assert!(
        unsubscribe.message.header("Route").is_none(),
        "the proxy consumed its own Route"
    );

    sipp::unregister_all("bob").await;
}

#[tokio::test]
async fn proxy_answers_pings_addressed_to_itself() {
    let _serial = serial();
    sipp::require_kamailio();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let port = socket.local_addr().unwrap().port();
    let options = format!(
        "OPTIONS sip:corp.localhost SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-ping-{port}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:ping@{gw}>;tag=ping\r\n\
         To: <sip:corp.localhost>\r\n\
         Call-ID: ping-{port}@127.0.0.1\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        gw = sipp::GATEWAY_DOMAIN
    );
    socket.send_to(options.as_bytes(), PROXY).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("an answer to OPTIONS");
    let answer = sipp::SipMessage::parse(&buf[..n]).expect("a SIP answer");
    assert_eq!(answer.status(), Some(200), "{answer:?}");
}

#[tokio::test]
async fn kamailio_restart_forgets_registrations() {
    let _serial = serial();
    sipp::require_kamailio();
    assert_eq!(sipp::register("dave", BOB_PORT, 60).await, 200);
    let sink = MessageSink::start(BOB_PORT).await;
    assert_eq!(
        sipp::send_message("carol", &uri("dave"), "text/plain", "before").await,
        200
    );
    timed("restart Kamailio", async { sipp::restart_kamailio() }).await;
    assert_eq!(
        sipp::send_message("carol", &uri("dave"), "text/plain", "after").await,
        404
    );
    assert_eq!(sink.received().len(), 1);
}
