//! The SIP network against the real Kamailio (`scripts/kamailio.sh`), real SIP user agents
//! (SIPp, `tests/common/sipp.rs`) and the real Synapse: messages and typing both ways, room
//! messages to several SIP members, undeliverable messages, presence both ways, users' own
//! accounts, and a Kamailio restart.
//!
//! SIP users live on `corp.localhost`; Matrix users are reachable at
//! `sip:<localpart>@matrix.corp.localhost`, which Kamailio routes to the bridge.

mod common;

use std::time::{Duration, Instant};

use common::sipp::{self, MessageSink, Notifier, Watcher};
use common::{
    BOT, BridgeProcess, MatrixUser, command, enc, ghost_presence, ghost_presence_within,
    management_room, serial, unique,
};

const WAIT: Duration = Duration::from_secs(30);

/// The ghost of SIP user `user@corp.localhost`.
fn sip_ghost(user: &str) -> String {
    format!("@_sip_{user}=40{}:localhost", sipp::DOMAIN)
}

/// The size of a message on the wire (CRLF line ends).
fn wire_len(m: &sipp::SipMessage) -> usize {
    m.start_line.len()
        + 2
        + m.headers
            .iter()
            .map(|(n, v)| n.len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2
        + m.body.len()
}

/// Starts a bridge and waits until its SIP link to Kamailio is up.
async fn sip_bridge() -> BridgeProcess {
    sipp::require_kamailio();
    let bridge = BridgeProcess::start().await;
    common::wait_logins(&bridge, "sip", "CONNECTED", 1).await;
    bridge
}

/// A SIP user registered with a MESSAGE sink as its contact.
async fn sip_user(user: &str, port: u16) -> MessageSink {
    sipp::unregister_all(user).await;
    let sink = MessageSink::start(port).await;
    assert_eq!(
        sipp::register(user, port, 300).await,
        200,
        "{user} registers"
    );
    sink
}

/// Registers a Matrix user who opens a direct chat with SIP user `user`.
async fn dm_with(prefix: &str, user: &str) -> (MatrixUser, String, String) {
    let matrix = MatrixUser::register(prefix).await;
    let ghost = sip_ghost(user);
    let room = matrix.create_dm(&ghost).await;
    matrix.wait_joined(&room, &ghost, WAIT).await;
    (matrix, room, ghost)
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_messages_cross_both_ways() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let bob = sip_user("bob", 15081).await;
    let (alice, room, ghost) = dm_with("salice", "bob").await;

    // Matrix → SIP, from the Matrix user's gateway address.
    let text = format!("hello bob {}", unique());
    alice.send_text(&room, &text).await;
    let got = bob
        .wait_for("alice's message", WAIT, |m| m.body == text)
        .await;
    assert_eq!(got.from, sipp::gateway_uri(&alice.localpart));
    assert!(got.content_type.starts_with("text/plain"), "{got:?}");

    // SIP → Matrix, into the same room, as bob's ghost.
    let answer = format!("hi alice {}", unique());
    let status = sipp::send_message(
        "bob",
        &sipp::gateway_uri(&alice.localpart),
        "text/plain",
        &answer,
    )
    .await;
    assert_eq!(status, 200);
    let ev = alice
        .wait_for_event(&room, "bob's answer", WAIT, |e| {
            e["content"]["body"] == answer.as_str()
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());

    // HTML is reduced to its text; unknown content types are refused with 415.
    let html = format!("<p>bold <b>move</b> {}</p><script>x()</script>", unique());
    let status = sipp::send_message(
        "bob",
        &sipp::gateway_uri(&alice.localpart),
        "text/html",
        &html,
    )
    .await;
    assert_eq!(status, 200);
    alice
        .wait_for_event(&room, "bob's HTML message as text", WAIT, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("bold move ") && !b.contains('<'))
        })
        .await;
    let status = sipp::send_message(
        "bob",
        &sipp::gateway_uri(&alice.localpart),
        "application/octet-stream",
        "x",
    )
    .await;
    assert_eq!(status, 415);

    // The room's bridge info says what crosses to SIP: messages, typing and presence, no
    // edits, reactions or deletions.
    let info = alice.state_event(&room, "m.bridge").await;
    let caps = &info["content"]["net.isthmus.capabilities"];
    assert_eq!(caps["typing"], true, "{info}");
    assert_eq!(caps["presence"], true, "{info}");
    assert_eq!(caps["edits"], false, "{info}");
    assert_eq!(caps["reactions"], false, "{info}");
    assert_eq!(caps["redactions"], false, "{info}");

    // A long message over UDP is split into MESSAGEs under the RFC 3428 limit.
    let words: Vec<String> = (0..400).map(|i| format!("w{i}")).collect();
    let long = words.join(" ");
    alice.send_text(&room, &long).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let parts: Vec<String> = bob
            .received()
            .into_iter()
            .map(|m| m.body)
            .filter(|b| b.starts_with('w') && b.contains(' '))
            .collect();
        if parts.join(" ") == long {
            assert!(parts.len() >= 2, "{parts:?}");
            for p in &bob.received() {
                let len = wire_len(&p.message);
                assert!(
                    len <= 1300,
                    "a MESSAGE over UDP stays under 1300 bytes: {len}"
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the long message never arrived whole: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A SIP user writing to a Matrix user without a room gets one.
    let dave = MatrixUser::register("sdave").await;
    let first = format!("hello dave {}", unique());
    let status = sipp::send_message(
        "carol",
        &sipp::gateway_uri(&dave.localpart),
        "text/plain;charset=UTF-8",
        &first,
    )
    .await;
    assert_eq!(status, 200);
    let dm = dave.wait_for_invite(WAIT).await;
    dave.join(&dm).await;
    let ev = dave
        .wait_for_event(&dm, "carol's first message", WAIT, |e| {
            e["content"]["body"] == first.as_str()
        })
        .await;
    assert_eq!(ev["sender"], sip_ghost("carol").as_str());
    // Nobody at an address that is no Matrix user: 404.
    let status = sipp::send_message(
        "carol",
        &sipp::gateway_uri("No%20Such%20User"),
        "text/plain",
        "x",
    )
    .await;
    assert_eq!(status, 404);
    sipp::unregister_all("bob").await;
}

/// A Matrix room with two SIP members: each gets every room message exactly once, in order,
/// from the room's address with the sender's name.
#[tokio::test(flavor = "multi_thread")]
async fn room_messages_reach_each_sip_member_once() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let bob = sip_user("bob", 15092).await;
    let carol = sip_user("carol", 15093).await;
    let alice = MatrixUser::register("falice").await;
    let (gbob, gcarol) = (sip_ghost("bob"), sip_ghost("carol"));
    let room = alice.create_room(&[&gbob, &gcarol]).await;
    alice.wait_joined(&room, &gbob, WAIT).await;
    alice.wait_joined(&room, &gcarol, WAIT).await;

    let texts: Vec<String> = (0..3).map(|i| format!("to all {i} {}", unique())).collect();
    for text in &texts {
        alice.send_text(&room, text).await;
    }
    for (name, sink) in [("bob", &bob), ("carol", &carol)] {
        let last = texts.last().expect("three texts");
        sink.wait_for(&format!("the last room message at {name}"), WAIT, |m| {
            m.body.ends_with(last.as_str())
        })
        .await;
        let got: Vec<String> = sink
            .received()
            .into_iter()
            .filter(|m| m.body.contains("to all "))
            .map(|m| m.body)
            .collect();
        let want: Vec<String> = texts
            .iter()
            .map(|t| format!("{}: {t}", alice.localpart))
            .collect();
        assert_eq!(got, want, "{name} gets each message once, in order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn typing_crosses_both_ways() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let bob = sip_user("bob", 15082).await;
    let (alice, room, ghost) = dm_with("styping", "bob").await;

    // Matrix → SIP: an RFC 3994 notification.
    alice
        .ok(
            "PUT",
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&serde_json::json!({"typing": true, "timeout": 10000})),
        )
        .await;
    let got = bob
        .wait_for("a typing notification", WAIT, |m| {
            m.content_type.starts_with(sipp::IS_COMPOSING)
        })
        .await;
    assert!(got.body.contains("active"), "{}", got.body);

    // SIP → Matrix: the ghost types.
    let since = alice.sync_now().await;
    let status = sipp::send_message(
        "bob",
        &sipp::gateway_uri(&alice.localpart),
        sipp::IS_COMPOSING,
        &sipp::is_composing("active"),
    )
    .await;
    assert_eq!(status, 200);
    alice.wait_typing(&room, &ghost, since, WAIT).await;
    sipp::unregister_all("bob").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn undeliverable_message_is_reported_to_the_sender() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    // frank is not registered: Kamailio answers 404.
    sipp::unregister_all("frank").await;
    let (alice, room, ghost) = dm_with("sundeliv", "frank").await;
    let text = format!("are you there {}", unique());
    let event = alice.send_text(&room, &text).await;
    let notice = alice.wait_reply(&room, &event, &ghost, WAIT).await;
    assert!(
        notice.contains("could not be delivered") && notice.contains("404"),
        "{notice}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sip_user_watches_a_matrix_user_once_accepted() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let alice = MatrixUser::register("swatch").await;
    let mgmt = management_room(&alice).await;
    let target = sipp::gateway_uri(&alice.localpart);
    let watcher = Watcher::subscribe("carol", &target, 600);
    assert!(
        matches!(watcher.status(WAIT).await, 200 | 202),
        "the SUBSCRIBE is accepted (pending)"
    );
    let first = watcher.wait(1, WAIT).await;
    assert!(
        first[0].state.starts_with("pending"),
        "{:?}",
        first[0].state
    );
    let request = alice
        .wait_for_event(&mgmt, "the contact request notice", WAIT, |e| {
            e["sender"] == BOT
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("carol@corp.localhost"))
        })
        .await;
    let body = request["content"]["body"].as_str().unwrap();
    assert!(body.contains("accept sip carol@corp.localhost"), "{body}");

    let reply = command(&alice, &mgmt, "accept sip carol@corp.localhost").await;
    assert!(reply.contains("may now see your presence"), "{reply}");
    watcher
        .wait_for("an active NOTIFY", WAIT, |n| n.state.starts_with("active"))
        .await;

    alice
        .ok(
            "PUT",
            &format!("/presence/{}/status", enc(&alice.user_id)),
            Some(&serde_json::json!({"presence": "unavailable", "status_msg": "at lunch"})),
        )
        .await;
    let n = watcher
        .wait_for("the Matrix user's presence", WAIT, |n| {
            n.note().as_deref() == Some("at lunch")
        })
        .await;
    assert_eq!(n.basic().as_deref(), Some("open"));
    assert!(
        n.body.contains("away"),
        "away is an RPID activity: {}",
        n.body
    );
    let listed = command(&alice, &mgmt, "contacts sip").await;
    assert!(
        listed.contains("carol@corp.localhost: sees your presence"),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_watchers_first_notify_has_the_homeservers_presence() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let alice = MatrixUser::register("sfirst").await;
    // Set before alice shares any room with the bridge: no presence push tells the bridge.
    set_status(&alice, "here all along").await;
    let mgmt = management_room(&alice).await;
    let watcher = Watcher::subscribe("carol", &sipp::gateway_uri(&alice.localpart), 600);
    assert!(matches!(watcher.status(WAIT).await, 200 | 202));
    alice
        .wait_for_event(&mgmt, "the contact request notice", WAIT, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("carol@corp.localhost"))
        })
        .await;
    let reply = command(&alice, &mgmt, "accept sip carol@corp.localhost").await;
    assert!(reply.contains("may now see"), "{reply}");
    let first = watcher
        .wait_for("the first active NOTIFY", WAIT, |n| {
            n.state.starts_with("active")
        })
        .await;
    assert_eq!(first.basic().as_deref(), Some("open"), "{}", first.body);
    assert_eq!(first.note().as_deref(), Some("here all along"));
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_watcher_is_told_the_subscription_ended() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let alice = MatrixUser::register("sdeny").await;
    let mgmt = management_room(&alice).await;
    let watcher = Watcher::subscribe("dave", &sipp::gateway_uri(&alice.localpart), 600);
    assert!(matches!(watcher.status(WAIT).await, 200 | 202));
    alice
        .wait_for_event(&mgmt, "the contact request notice", WAIT, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("dave@corp.localhost"))
        })
        .await;
    let reply = command(&alice, &mgmt, "deny sip dave@corp.localhost").await;
    assert!(reply.contains("may not see"), "{reply}");
    let all = watcher.finish(WAIT).await;
    let last = all.last().expect("NOTIFYs");
    assert!(last.state.contains("terminated"), "{:?}", last.state);
    assert!(
        all.iter().all(|n| n.basic().is_none()),
        "no presence leaked"
    );
    // The answer is remembered: a new subscription is refused without asking again.
    let again = Watcher::subscribe("dave", &sipp::gateway_uri(&alice.localpart), 600);
    assert_eq!(again.status(WAIT).await, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn matrix_user_sees_a_sip_contacts_presence() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    // dave has two bindings, as a desk phone and a softphone would: a presence agent and
    // an IM client. The proxy forks each request to both; the one that knows it answers.
    let _im = sip_user("dave", 15087).await;
    let notifier = Notifier::start(15083, true, "at my desk").await;
    assert_eq!(sipp::register("dave", 15083, 300).await, 200);
    let (alice, room, ghost) = dm_with("spres", "dave").await;
    // After the first message the bridge subscribes for alice.
    alice
        .send_text(&room, &format!("hello dave {}", unique()))
        .await;
    let sub = notifier.wait(WAIT).await;
    assert_eq!(sub.from, sipp::gateway_uri(&alice.localpart));
    assert_eq!(sub.event, "presence");
    assert_eq!(sub.notify_status, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = alice
            .call("GET", &format!("/presence/{}/status", enc(&ghost)), None)
            .await;
        if status == 200 && body["presence"] == "online" && body["status_msg"] == "at my desk" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ghost presence never became online / at my desk: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sipp::unregister_all("dave").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_logs_in_refreshes_and_messages_as_the_account() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    sipp::unregister_all("erin").await;
    let carol = sip_user("carol", 15084).await;
    let alice = MatrixUser::register("sown").await;
    let mgmt = management_room(&alice).await;

    // A wrong password is refused with BAD_CREDENTIALS.
    command(&alice, &mgmt, "login sip").await;
    command(&alice, &mgmt, "sip:erin@corp.localhost").await;
    command(&alice, &mgmt, "-").await;
    command(&alice, &mgmt, "not-the-password").await;
    let refused = command(&alice, &mgmt, "-").await;
    assert!(
        refused.to_lowercase().contains("refused") || refused.contains("BAD_CREDENTIALS"),
        "{refused}"
    );

    command(&alice, &mgmt, "login sip").await;
    command(&alice, &mgmt, "sip:erin@corp.localhost").await;
    command(&alice, &mgmt, "-").await;
    let pw = command(&alice, &mgmt, &sipp::password("erin")).await;
    assert!(!pw.contains(&sipp::password("erin")), "{pw}");
    let done = command(&alice, &mgmt, "-").await;
    assert!(done.contains("erin@corp.localhost"), "{done}");

    // The registration (20 s in the test config) is refreshed before it runs out: the
    // registrar shows the same registration again, with a higher CSeq, before the first
    // one's time is up.
    let looked = Instant::now();
    let first = match sipp::bindings("erin").as_slice() {
        [one] => one.clone(),
        other => panic!("erin has one binding, the bridge's: {other:?}"),
    };
    let runs_out = looked + Duration::from_secs(first.expires);
    let deadline = runs_out + Duration::from_secs(5);
    let refreshed = loop {
        let now = sipp::bindings("erin");
        if let Some(b) = now
            .iter()
            .find(|b| b.address == first.address && b.cseq > first.cseq)
        {
            break b.clone();
        }
        assert!(
            Instant::now() < deadline,
            "not refreshed {:?} after the first registration {first:?}: {now:?}",
            deadline - looked
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        Instant::now() < runs_out,
        "refreshed only as the first registration ran out: {first:?} then {refreshed:?}"
    );
    assert_eq!(refreshed.call_id, first.call_id, "the same registration");
    assert!(refreshed.expires > 0, "{refreshed:?}");
    let text = format!("for erin {}", unique());
    let status = sipp::send_message("carol", &sipp::uri("erin"), "text/plain", &text).await;
    assert_eq!(status, 200, "erin's registration is alive");
    let room = alice.wait_for_invite(WAIT).await;
    alice.join(&room).await;
    let ev = alice
        .wait_for_event(&room, "carol's message to erin", WAIT, |e| {
            e["content"]["body"] == text.as_str()
        })
        .await;
    assert_eq!(ev["sender"], sip_ghost("carol").as_str());

    // The answer goes out as erin's own account (authenticated at the proxy).
    let answer = format!("erin here {}", unique());
    alice.send_text(&room, &answer).await;
    let got = carol
        .wait_for("erin's answer", WAIT, |m| m.body == answer)
        .await;
    assert_eq!(got.from, sipp::uri("erin"));

    // Logout unregisters: erin is unreachable again.
    let out = command(&alice, &mgmt, "logout sip").await;
    assert!(out.contains("erin"), "{out}");
    let status = sipp::send_message("carol", &sipp::uri("erin"), "text/plain", "x").await;
    assert_eq!(status, 404);
    sipp::unregister_all("carol").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_flow_again_after_a_kamailio_restart() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let bob = sip_user("bob", 15085).await;
    let (alice, room, ghost) = dm_with("srestart", "bob").await;
    sipp::restart_kamailio();
    // Registrations live in Kamailio's memory: bob registers again, as phones do.
    assert_eq!(sipp::register("bob", 15085, 300).await, 200);
    let text = format!("after the restart {}", unique());
    alice.send_text(&room, &text).await;
    bob.wait_for("a message after the restart", WAIT, |m| m.body == text)
        .await;
    let answer = format!("back {}", unique());
    let status = sipp::send_message(
        "bob",
        &sipp::gateway_uri(&alice.localpart),
        "text/plain",
        &answer,
    )
    .await;
    assert_eq!(status, 200);
    let ev = alice
        .wait_for_event(&room, "bob's answer after the restart", WAIT, |e| {
            e["content"]["body"] == answer.as_str()
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());
    sipp::unregister_all("bob").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_chat_with_a_sip_uri_opens_a_direct_chat() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let bob = sip_user("bob", 15088).await;
    let alice = MatrixUser::register("sstart").await;
    let mgmt = management_room(&alice).await;
    // The URI's scheme names the network.
    let reply = command(&alice, &mgmt, "start-chat sip:bob@corp.localhost").await;
    assert!(reply.contains("bob@corp.localhost"), "{reply}");
    let room = alice.wait_for_invite(WAIT).await;
    alice.join(&room).await;
    let text = format!("started from a command {}", unique());
    alice.send_text(&room, &text).await;
    bob.wait_for("the message in the new chat", WAIT, |m| m.body == text)
        .await;
    let bad = command(&alice, &mgmt, "start-chat sip:not-an-address").await;
    assert!(bad.contains("sip:bob@example.org"), "{bad}");
    sipp::unregister_all("bob").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_not_from_the_proxy_are_refused() {
    let _s = serial();
    let bridge = sip_bridge().await;
    let alice = MatrixUser::register("strust").await;
    // Straight to the bridge from another address, forging the marks of the proxy: a Via
    // `received` naming it, and the header the bridge records the real source in.
    let sock = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let local = sock.local_addr().unwrap();
    let to = sipp::gateway_uri(&alice.localpart);
    let forged = |n: u32, received: &str| {
        let body = format!("forged {n}");
        format!(
            "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKforged{n}{received}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@corp.localhost>;tag=f{n}\r\nTo: <{to}>\r\n\
             Call-ID: forged-{n}-{}\r\nCSeq: 1 MESSAGE\r\nX-Isthmus-Source: 127.0.0.1\r\n\
             Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            unique(),
            body.len()
        )
    };
    // With `received` forged the answer goes to the forged address; the request is refused.
    sock.send_to(
        forged(1, ";received=127.0.0.1").as_bytes(),
        ("127.0.0.1", sipp::GATEWAY_PORT),
    )
    .await
    .unwrap();
    sock.send_to(forged(2, "").as_bytes(), ("127.0.0.1", sipp::GATEWAY_PORT))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("an answer from the bridge")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 403"), "{answer}");
    // Both forged requests are refused.
    bridge.wait_log("untrusted address", 2, WAIT).await;
    assert!(
        !bridge.log().contains("forged 1"),
        "message text never logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_go_out_over_tcp_when_configured() {
    let _s = serial();
    sipp::require_kamailio();
    let bridge = BridgeProcess::start_with(|cfg| {
        cfg.replace(
            "    proxy: 127.0.0.1:15060\n",
            "    proxy: 127.0.0.1:15060\n    transport: tcp\n",
        )
    })
    .await;
    common::wait_logins(&bridge, "sip", "CONNECTED", 1).await;
    let bob = sip_user("bob", 15089).await;
    let (alice, room, _) = dm_with("stcp", "bob").await;
    let text = format!("over tcp {}", unique());
    alice.send_text(&room, &text).await;
    let got = bob
        .wait_for("alice's message over TCP", WAIT, |m| m.body == text)
        .await;
    // The proxy received it from the bridge over TCP: the bridge's Via says so.
    let vias: Vec<&String> = got
        .message
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("via") || n == "v")
        .map(|(_, v)| v)
        .collect();
    assert!(
        vias.iter().any(|v| v.starts_with("SIP/2.0/TCP 127.0.0.1:")),
        "{vias:?}"
    );
    sipp::unregister_all("bob").await;
}

/// `name` (a SIPp watcher) subscribes to the presence of `target`; `alice` is asked in her
/// management room `mgmt` and accepts. Returns the watcher and its first active NOTIFY.
async fn accepted_watcher(
    alice: &MatrixUser,
    mgmt: &str,
    name: &str,
    target: &str,
) -> (Watcher, sipp::Notify) {
    let watcher = Watcher::subscribe(name, target, 600);
    assert!(
        matches!(watcher.status(WAIT).await, 200 | 202),
        "the SUBSCRIBE is accepted (pending)"
    );
    let address = format!("{name}@corp.localhost");
    alice
        .wait_for_event(mgmt, "the contact request notice", WAIT, |e| {
            e["sender"] == BOT
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&address))
        })
        .await;
    let reply = command(alice, mgmt, &format!("accept sip {address}")).await;
    assert!(reply.contains("may now see your presence"), "{reply}");
    let active = watcher
        .wait_for("an active NOTIFY", WAIT, |n| n.state.starts_with("active"))
        .await;
    (watcher, active)
}

/// Sets `alice`'s presence online with the status message `note`.
async fn set_status(alice: &MatrixUser, note: &str) {
    alice
        .ok(
            "PUT",
            &format!("/presence/{}/status", enc(&alice.user_id)),
            Some(&serde_json::json!({"presence": "online", "status_msg": note})),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watchers_subscription_survives_a_bridge_restart() {
    let _s = serial();
    let mut bridge = sip_bridge().await;
    let alice = MatrixUser::register("ssurvive").await;
    let mgmt = management_room(&alice).await;
    let (watcher, _) =
        accepted_watcher(&alice, &mgmt, "erin", &sipp::gateway_uri(&alice.localpart)).await;
    bridge.restart().await;
    common::wait_logins(&bridge, "sip", "CONNECTED", 1).await;
    // The dialog was kept: a presence change after the restart reaches the same watcher.
    set_status(&alice, "after the restart").await;
    watcher
        .wait_for("presence after the restart", WAIT, |n| {
            n.note().as_deref() == Some("after the restart")
        })
        .await;
}

/// A SIGTERM while a NOTIFY waits for a watcher that does not answer: the bridge still exits
/// within its shutdown bound, no task left behind, and the watcher gets the presence it was
/// owed once the bridge is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_notify_waiting_at_shutdown_neither_holds_the_bridge_nor_is_lost() {
    let _s = serial();
    let mut bridge = sip_bridge().await;
    let alice = MatrixUser::register("sowed").await;
    let mgmt = management_room(&alice).await;
    let (watcher, _) =
        accepted_watcher(&alice, &mgmt, "erin", &sipp::gateway_uri(&alice.localpart)).await;

    // The watcher stops reading: the NOTIFY for the next change waits for its answer.
    let told = watcher
        .notifies()
        .iter()
        .filter_map(sipp::Notify::cseq)
        .max()
        .expect("the accepted watcher was told the first state");
    watcher.pause();
    const SENDING: &str = "sending a NOTIFY to a watcher";
    let before = bridge.log().matches(SENDING).count();
    let note = format!("while the bridge stops {}", unique());
    set_status(&alice, &note).await;
    bridge.wait_log(SENDING, before + 1, WAIT).await;
    let stopping = Instant::now();
    bridge.stop().await;
    let took = stopping.elapsed();
    assert!(
        !bridge.lingered() && took < Duration::from_secs(10),
        "the bridge took {took:?} to stop, or left tasks behind; last log lines:\n{}",
        bridge.log_tail(30)
    );
    // One NOTIFY was cut: it took the CSeq after the last one the watcher answered.
    assert_eq!(
        bridge.log().matches(SENDING).count(),
        before + 1,
        "one NOTIFY between the pause and the stop"
    );
    let cut = Some(told + 1);

    // The watcher answers again and may read the cut NOTIFY left in its socket, but the
    // bridge, stopped before that answer, cannot know: the restarted bridge sends what the
    // watcher is owed again, in a NOTIFY of its own (a later CSeq).
    watcher.resume();
    bridge.restart().await;
    watcher
        .wait_for(
            "the presence owed, sent again after the restart",
            WAIT,
            |n| n.note().as_deref() == Some(note.as_str()) && n.cseq() > cut,
        )
        .await;
}

/// The TLS gateway domain of the test Kamailio (routed over TLS to 127.0.0.1:15071).
const TLS_GATEWAY_DOMAIN: &str = "tls.matrix.corp.localhost";

#[tokio::test(flavor = "multi_thread")]
async fn tls_transport_carries_messages_both_ways() {
    let _s = serial();
    sipp::require_kamailio();
    let certs = format!("{}/kamailio/certs", common::stack_dir());
    assert!(
        std::path::Path::new(&format!("{certs}/bridge.crt")).exists(),
        "{certs}/bridge.crt is missing: start Kamailio with scripts/kamailio.sh (scripts/test.sh does)"
    );
    // The bridge speaks TLS only, to Kamailio's TLS port, for the TLS gateway domain.
    let _bridge = BridgeProcess::start_with(|cfg| {
        let sip = "    domain: matrix.corp.localhost\n    listen: 127.0.0.1:15070\n    proxy: 127.0.0.1:15060\n";
        assert!(cfg.contains(sip), "the fixture's sip section changed");
        cfg.replace(
            sip,
            &format!(
                "    domain: {TLS_GATEWAY_DOMAIN}\n    listen: 127.0.0.1:15071\n    proxy: 127.0.0.1:15061\n    transport: tls\n    tls:\n      cert_file: {certs}/bridge.crt\n      key_file: {certs}/bridge.key\n      ca_file: {certs}/ca.crt\n"
            ),
        )
    })
    .await;
    common::wait_logins(&_bridge, "sip", "CONNECTED", 1).await;
    let bob = sip_user("bob", 15087).await;
    let (alice, room, ghost) = dm_with("stls", "bob").await;

    // Matrix → SIP: over TLS to Kamailio, then on to bob.
    let text = format!("over tls {}", unique());
    alice.send_text(&room, &text).await;
    let got = bob
        .wait_for("alice's message over TLS", WAIT, |m| m.body == text)
        .await;
    let from = format!("sip:{}@{TLS_GATEWAY_DOMAIN}", alice.localpart);
    assert_eq!(got.from, from);

    // SIP → Matrix: Kamailio reaches the bridge over TLS only.
    let answer = format!("back over tls {}", unique());
    let status = sipp::send_message("bob", &from, "text/plain", &answer).await;
    assert_eq!(status, 200);
    let ev = alice
        .wait_for_event(&room, "bob's answer over TLS", WAIT, |e| {
            e["content"]["body"] == answer.as_str()
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());

    // Kamailio saw the bridge's request arrive over TLS (it refuses that domain otherwise).
    let log = std::fs::read_to_string(format!("{}/kamailio/kamailio.log", common::stack_dir()))
        .expect("read the Kamailio log");
    assert!(
        log.lines()
            .any(|l| l.contains("MESSAGE sip:bob@corp.localhost")
                && l.contains(&from)
                && l.contains("(tls 127.0.0.1:")),
        "no MESSAGE from the bridge over TLS in the Kamailio log"
    );
    sipp::unregister_all("bob").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn watchers_of_an_own_account_see_the_matrix_users_presence() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    sipp::unregister_all("dave").await;
    let alice = MatrixUser::register("sownpres").await;
    let mgmt = management_room(&alice).await;
    command(&alice, &mgmt, "login sip").await;
    command(&alice, &mgmt, "sip:dave@corp.localhost").await;
    command(&alice, &mgmt, "-").await;
    command(&alice, &mgmt, &sipp::password("dave")).await;
    let done = command(&alice, &mgmt, "-").await;
    assert!(done.contains("dave@corp.localhost"), "{done}");

    // The registrar routes a SUBSCRIBE for dave to the contact the bridge registered: the
    // bridge answers for the account, asking alice first.
    let (watcher, active) = accepted_watcher(&alice, &mgmt, "carol", &sipp::uri("dave")).await;
    let from = active.message.header_uri("From");
    assert_eq!(from, sipp::uri("dave"), "the NOTIFY comes from the account");
    set_status(&alice, "reading").await;
    let n = watcher
        .wait_for("the Matrix user's presence", WAIT, |n| {
            n.note().as_deref() == Some("reading")
        })
        .await;
    assert_eq!(n.basic().as_deref(), Some("open"));
    // After logout the account's watchers are told it is gone.
    command(&alice, &mgmt, "logout sip").await;
    let end = watcher
        .wait_for("the end of the subscription", WAIT, |n| {
            n.state.starts_with("terminated")
        })
        .await;
    assert!(end.state.contains("noresource"), "{}", end.state);
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_and_subscriptions_to_matrix_users_who_do_not_exist_get_404() {
    let _s = serial();
    let _bridge = sip_bridge().await;
    let run = unique();
    let alice = MatrixUser::register("snx").await;
    // The sender's ghost is in no new room afterwards: nothing was created.
    let sender = "erin".to_owned();
    let ghost = sip_ghost(&sender);
    let rooms_before = common::ghost_rooms(&ghost).await;
    let missing = [
        // An unknown localpart.
        format!("nobody{run}"),
        // Valid-looking, one letter off a registered user.
        format!("{}x", alice.localpart),
        // The bridge's own users: the bot (registered on the homeserver) and a ghost.
        BOT.trim_start_matches('@')
            .split(':')
            .next()
            .unwrap()
            .to_owned(),
        format!("_sip_dave=40{}", sipp::DOMAIN),
        // A user of another homeserver that cannot be asked here is not "not found"; left
        // out on purpose (it gets a temporary error).
    ];
    for local in &missing {
        let target = sipp::gateway_uri(local);
        let status = sipp::send_message(&sender, &target, "text/plain", "anyone there?").await;
        assert_eq!(status, 404, "MESSAGE to {target}");
        let watcher = Watcher::subscribe(&sender, &target, 600);
        assert_eq!(watcher.status(WAIT).await, 404, "SUBSCRIBE to {target}");
    }
    assert_eq!(
        common::ghost_rooms(&ghost).await,
        rooms_before,
        "a room was created"
    );

    // An existing user still gets both.
    let target = sipp::gateway_uri(&alice.localpart);
    let hello = format!("hello real user {run}");
    assert_eq!(
        sipp::send_message(&sender, &target, "text/plain", &hello).await,
        200
    );
    let room = alice.wait_for_invite(WAIT).await;
    alice.join(&room).await;
    alice
        .wait_for_event(&room, "the message to the real user", WAIT, |e| {
            e["sender"] == ghost.as_str() && e["content"]["body"] == hello.as_str()
        })
        .await;
    let watcher = Watcher::subscribe(&sender, &target, 600);
    assert!(matches!(watcher.status(WAIT).await, 200 | 202));
}

/// What a user's own account watches is that login's: once the account is connected it
/// subscribes, as the account, to the contacts of the user's direct chats; a contact's ghost
/// comes online through it; at logout the subscription ends and that ghost is left to the
/// homeserver's timeout, while a contact watched through the gateway stays online.
#[tokio::test(flavor = "multi_thread")]
async fn own_account_watches_its_contacts_and_their_presence_ends_with_the_login() {
    let _s = serial();
    sipp::require_kamailio();
    let bridge = BridgeProcess::start_with(|cfg| {
        cfg.replacen(
            "  permissions:\n",
            "  presence_refresh_seconds: 4\n  permissions:\n",
            1,
        )
    })
    .await;
    common::wait_logins(&bridge, "sip", "CONNECTED", 1).await;
    sipp::unregister_all("erin").await;
    sipp::unregister_all("carol").await;
    // bob has an IM client (for alice's message) and a presence agent; carol only the latter.
    let _bob_im = sip_user("bob", 15096).await;
    let bob = Notifier::start(15095, true, "through the gateway").await;
    assert_eq!(sipp::register("bob", 15095, 300).await, 200);
    let carol = Notifier::start(15094, true, "through the account").await;
    assert_eq!(sipp::register("carol", 15094, 300).await, 200);

    // bob is watched through the gateway, after alice's first message.
    let (alice, bob_room, bob_ghost) = dm_with("sownwatch", "bob").await;
    alice
        .send_text(&bob_room, &format!("hello bob {}", unique()))
        .await;
    let sub = bob.wait(WAIT).await;
    assert_eq!(sub.from, sipp::gateway_uri(&alice.localpart));
    ghost_presence_within(&bob_ghost, "online", WAIT).await;

    // alice has a direct chat with carol, not written in yet: nobody watches carol.
    let carol_ghost = sip_ghost("carol");
    let carol_room = alice.create_dm(&carol_ghost).await;
    alice.wait_joined(&carol_room, &carol_ghost, WAIT).await;

    // alice logs in with erin's account: it watches carol, as the account.
    let mgmt = management_room(&alice).await;
    command(&alice, &mgmt, "login sip").await;
    command(&alice, &mgmt, "sip:erin@corp.localhost").await;
    command(&alice, &mgmt, "-").await;
    command(&alice, &mgmt, &sipp::password("erin")).await;
    let done = command(&alice, &mgmt, "-").await;
    assert!(done.contains("erin@corp.localhost"), "{done}");
    let sub = carol.wait(WAIT).await;
    assert_eq!(
        sub.from,
        sipp::uri("erin"),
        "carol is watched as the account"
    );
    assert_eq!(sub.event, "presence");
    ghost_presence_within(&carol_ghost, "online", WAIT).await;
    assert_eq!(
        ghost_presence(&carol_ghost).await.1.as_deref(),
        Some("through the account")
    );

    // The login goes: the account's subscription ends, carol's ghost is left to the
    // homeserver's timeout (30 s after the last update), bob's is kept online.
    let out = command(&alice, &mgmt, "logout sip").await;
    assert!(out.contains("erin"), "{out}");
    let end = carol.wait_unsubscribed(WAIT).await;
    assert_eq!(end.from, sipp::uri("erin"), "the account unsubscribes");
    ghost_presence_within(&carol_ghost, "offline", Duration::from_secs(75)).await;
    assert_eq!(
        ghost_presence(&bob_ghost).await,
        ("online".to_owned(), Some("through the gateway".to_owned())),
        "the contact watched through the gateway"
    );
    assert!(
        carol
            .requests()
            .iter()
            .filter(|m| m.method() == Some("SUBSCRIBE"))
            .all(|m| m.header_uri("From") == sipp::uri("erin")),
        "carol was only ever watched as the account"
    );
    for user in ["bob", "carol"] {
        sipp::unregister_all(user).await;
    }
}
