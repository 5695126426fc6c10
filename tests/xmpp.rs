//! The XMPP gateway against a real Prosody (component on 127.0.0.1:15347, clients on
//! 127.0.0.1:15222) and the real Synapse, with tokio-xmpp playing the XMPP user.
//! `scripts/test.sh` starts both servers.

mod common;

use std::str::FromStr;
use std::time::{Duration, Instant};

use common::{
    BOT, BridgeProcess, MatrixUser, command, enc, ghost_presence, ghost_presence_within,
    management_room, serial, unique,
};
use tokio_xmpp::Stanza;
use tokio_xmpp::parsers::jid::{BareJid, Jid};
use tokio_xmpp::parsers::message::{Lang, Message, MessageType};
use tokio_xmpp::parsers::minidom::Element;
use tokio_xmpp::parsers::presence::{Presence, Show, Type as PresenceType};

const C2S: &str = "127.0.0.1:15222";
const COMPONENT_DOMAIN: &str = "matrix.localhost";

/// An XMPP user logged in to Prosody: slixmpp, driven through `tests/xmpp_client.py`.
struct XmppUser {
    jid: BareJid,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Drop for XmppUser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl XmppUser {
    /// Logs in `name@localhost` (registered by scripts/prosody.sh with password `<name>pass`).
    async fn login(name: &str) -> XmppUser {
        use tokio::io::AsyncBufReadExt;
        let python = std::env::var("ISTHMUS_TEST_PYTHON").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python").to_owned()
        });
        let jid = BareJid::from_str(&format!("{name}@localhost")).unwrap();
        let (host, port) = C2S.split_once(':').unwrap();
        let mut child = tokio::process::Command::new(&python)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/xmpp_client.py"))
            .args([&format!("{jid}/test"), &format!("{name}pass"), host, port])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the XMPP test client with {python}: {e} (scripts/test.sh installs slixmpp)"));
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut user = XmppUser {
            jid,
            child,
            stdin,
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match user.next_event(left).await {
                Some(v) if v["event"] == "online" => return user,
                Some(v) if v["event"] == "stanza" => continue,
                other => panic!(
                    "{} could not log in to Prosody at {C2S} (is it running? scripts/test.sh starts it): {other:?}",
                    user.jid
                ),
            }
        }
    }

    async fn next_event(&mut self, timeout: Duration) -> Option<serde_json::Value> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    async fn send_xml(&mut self, xml: &str) {
        use tokio::io::AsyncWriteExt;
        let line = serde_json::json!({"op": "send", "xml": xml}).to_string() + "\n";
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("write to the XMPP client");
    }

    async fn say(&mut self, to: &str, body: &str) {
        let mut m = Message::new(Some(Jid::from_str(to).unwrap()));
        m.type_ = MessageType::Chat;
        m.id = Some(tokio_xmpp::parsers::message::Id(unique()));
        m.bodies.insert(Lang::default(), body.to_owned());
        self.send(m.into()).await;
    }

    async fn send(&mut self, stanza: Stanza) {
        let xml = String::from(&Element::from(stanza))
            .replace("jabber:component:accept", "jabber:client");
        self.send_xml(&xml).await;
    }

    /// Waits for a received stanza whose XML matches `pred`; returns it parsed.
    async fn wait(&mut self, what: &str, pred: impl Fn(&Element) -> bool) -> Element {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = self.next_event(left).await else {
                panic!(
                    "{} waited 20 s for {what}; received instead:\n{}",
                    self.jid,
                    seen.join("\n")
                );
            };
            let Some(xml) = ev["xml"].as_str() else {
                continue;
            };
            let el = parse_stanza(xml);
            if pred(&el) {
                return el;
            }
            seen.push(xml.to_owned());
        }
    }

    /// Like [`XmppUser::wait`], also returning every stanza received before the match.
    async fn wait_with_earlier(
        &mut self,
        what: &str,
        pred: impl Fn(&Element) -> bool,
    ) -> (Vec<Element>, Element) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = self.next_event(left).await else {
                panic!(
                    "{} waited 20 s for {what}; received instead:\n{}",
                    self.jid,
                    seen.iter().map(String::from).collect::<Vec<_>>().join("\n")
                );
            };
            let Some(xml) = ev["xml"].as_str() else {
                continue;
            };
            let el = parse_stanza(xml);
            if pred(&el) {
                return (seen, el);
            }
            seen.push(el);
        }
    }

    /// Waits for a chat message with this body; returns its sender.
    /// Joins (creating it) group chat `room_jid` as `nick`; returns once the room confirms.
    async fn open_room(&mut self, room_jid: &str, nick: &str) {
        self.send_xml(&format!(
            "<presence to='{room_jid}/{nick}' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
        let me = format!("{room_jid}/{nick}");
        self.wait("our own presence in the room", |e| {
            e.name() == "presence" && e.attr("from") == Some(me.as_str())
        })
        .await;
    }

    async fn wait_message(&mut self, body: &str) -> Jid {
        let el = self
            .wait(&format!("a message {body:?}"), |e| {
                e.name() == "message"
                    && e.children().any(|c| c.name() == "body" && c.text() == body)
            })
            .await;
        Jid::from_str(el.attr("from").expect("message has a sender")).unwrap()
    }

    /// Sends an XEP-0199 ping to `to`; returns the answer, a result or an error. The server
    /// handles what one stream sends in order: once the answer is back, what this user sent
    /// before the ping has been routed (and stored, for an offline recipient).
    async fn ping(&mut self, to: &str) -> Element {
        let timeout = Duration::from_secs(20);
        self.ping_within(to, timeout).await.unwrap_or_else(|| {
            panic!(
                "{} got no answer to a ping of {to} in {timeout:?}",
                self.jid
            )
        })
    }

    /// Like [`XmppUser::ping`], `None` when no answer came within `timeout` (the test client
    /// does not answer pings).
    async fn ping_within(&mut self, to: &str, timeout: Duration) -> Option<Element> {
        let id = format!("ping-{}", unique());
        self.send_xml(&format!(
            "<iq type='get' to='{to}' id='{id}' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self
                .next_event(deadline.saturating_duration_since(Instant::now()))
                .await?;
            let Some(xml) = ev["xml"].as_str() else {
                continue;
            };
            let el = parse_stanza(xml);
            if el.name() == "iq"
                && el.attr("id") == Some(id.as_str())
                && matches!(el.attr("type"), Some("result" | "error"))
            {
                return Some(el);
            }
        }
    }

    /// Waits until the server has no session at the full address `jid` any more: it then
    /// answers a ping to it itself, with `service-unavailable` (the test client, while
    /// online, does not answer).
    async fn wait_gone(&mut self, jid: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.ping_within(jid, Duration::from_millis(500)).await;
            let gone = answer.as_ref().is_some_and(|a| {
                a.children().any(|e| {
                    e.name() == "error" && e.children().any(|c| c.name() == "service-unavailable")
                })
            });
            if gone {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{jid} is still online after 20 s; last answer: {:?}",
                answer.map(|a| String::from(&a))
            );
        }
    }
}

/// XMPP user bob opens group chat `<prefix><unique>@conference.localhost`, and a new Matrix
/// user joins it through its alias; returns bob, the Matrix user, the room JID and the
/// Matrix room once bob has seen the user's puppet arrive.
async fn shared_group_chat(
    prefix: &str,
    user_prefix: &str,
) -> (XmppUser, MatrixUser, String, String) {
    let room_jid = format!("{prefix}{}@conference.localhost", unique());
    let mut bob = XmppUser::login("bob").await;
    bob.open_room(&room_jid, "bob").await;
    let alice = MatrixUser::register(user_prefix).await;
    let alias = format!("#_xmpp_{}:localhost", room_jid.replace('@', "=40"));
    let joined = alice
        .ok(
            "POST",
            &format!("/join/{}", enc(&alias)),
            Some(&serde_json::json!({})),
        )
        .await;
    let room = joined["room_id"]
        .as_str()
        .expect("joined through the alias")
        .to_owned();
    let nick = alice.localpart.clone();
    bob.wait("the Matrix user's puppet joining", |e| {
        e.name() == "presence" && e.attr("from") == Some(format!("{room_jid}/{nick}").as_str())
    })
    .await;
    (bob, alice, room_jid, room)
}

/// Parses a stanza as slixmpp prints it: without the default namespace on the top element.
fn parse_stanza(xml: &str) -> Element {
    let with_ns = match Element::from_str(xml) {
        Ok(el) => return el,
        Err(_) => {
            let end = xml[1..]
                .find([' ', '>', '/'])
                .map(|i| i + 1)
                .unwrap_or(xml.len());
            format!("{} xmlns=\"jabber:client\"{}", &xml[..end], &xml[end..])
        }
    };
    Element::from_str(&with_ns).unwrap_or_else(|e| panic!("unparsable stanza {xml}: {e}"))
}

/// The ghost of an XMPP user.
fn xmpp_ghost(jid: &str) -> String {
    format!("@_xmpp_{}:localhost", jid.replace('@', "=40"))
}

/// Waits until `n` XMPP links are up: the component link, and own accounts' connections.
async fn wait_xmpp_connected(bridge: &BridgeProcess, n: u32) {
    common::wait_logins(bridge, "xmpp", "CONNECTED", n).await;
}

/// Starts a bridge and waits until its XMPP link is up.
async fn xmpp_bridge() -> BridgeProcess {
    let bridge = BridgeProcess::start().await;
    wait_xmpp_connected(&bridge, 1).await;
    bridge
}

/// Registers a Matrix user who opens a direct chat with the ghost of XMPP user `contact`;
/// returns the user, the room and the ghost once the ghost has joined.
async fn dm_with(prefix: &str, contact: &str) -> (MatrixUser, String, String) {
    let user = MatrixUser::register(prefix).await;
    let ghost = xmpp_ghost(contact);
    let room = user.create_dm(&ghost).await;
    user.wait_joined(&room, &ghost, Duration::from_secs(20))
        .await;
    (user, room, ghost)
}

/// `contact` (whose address is `jid`) asks to see `user`'s presence at the gateway
/// `address`; the user sees the request in the management room `room` and accepts it.
async fn ask_and_accept(
    user: &MatrixUser,
    room: &str,
    address: &str,
    contact: &mut XmppUser,
    jid: &str,
) {
    contact
        .send_xml(&format!(
            "<presence type='subscribe' to='{address}' xmlns='jabber:client'/>"
        ))
        .await;
    user.wait_for_event(
        room,
        "the contact request notice",
        Duration::from_secs(20),
        |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(jid))
        },
    )
    .await;
    let reply = command(user, room, &format!("accept xmpp {jid}")).await;
    assert!(reply.contains("may now see your presence"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_chat_started_on_matrix_crosses_both_ways() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xalice", "bob@localhost").await;

    let text = format!("hello bob over xmpp {}", unique());
    alice.send_text(&room, &text).await;
    let from = bob.wait_message(&text).await;
    let local = alice.localpart.clone();
    assert_eq!(
        from.to_bare().to_string(),
        format!("{local}@{COMPONENT_DOMAIN}"),
        "sent from alice's gateway address"
    );

    let reply = format!("hi alice from xmpp {}", unique());
    bob.say(&from.to_bare().to_string(), &reply).await;
    let ev = alice
        .wait_for_event(&room, "bob's reply", Duration::from_secs(20), |e| {
            e["content"]["body"] == reply.as_str()
        })
        .await;
    assert_eq!(
        ev["sender"],
        ghost.as_str(),
        "the reply comes from bob's ghost in the same room"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn xmpp_user_reaches_a_matrix_user_at_the_gateway_address() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let dave = MatrixUser::register("xdave").await;
    let mut carol = XmppUser::login("carol").await;
    let local = dave.localpart.clone();
    let address = format!("{local}@{COMPONENT_DOMAIN}");

    let first = format!("hello dave from carol {}", unique());
    carol.say(&address, &first).await;
    let room = dave.wait_for_invite(Duration::from_secs(20)).await;
    dave.join(&room).await;
    let ghost = xmpp_ghost("carol@localhost");
    let ev = dave
        .wait_for_event(
            &room,
            "carol's first message",
            Duration::from_secs(20),
            |e| e["content"]["body"] == first.as_str(),
        )
        .await;
    assert_eq!(ev["sender"], ghost.as_str());

    let second = format!("and a second one {}", unique());
    carol.say(&address, &second).await;
    dave.wait_for_event(
        &room,
        "carol's second message in the same room",
        Duration::from_secs(20),
        |e| e["content"]["body"] == second.as_str(),
    )
    .await;

    // And back: dave answers in the portal.
    let answer = format!("hi carol {}", unique());
    dave.send_text(&room, &answer).await;
    let from = carol.wait_message(&answer).await;
    assert_eq!(from.to_bare().to_string(), address);
}

#[tokio::test(flavor = "multi_thread")]
async fn xmpp_presence_becomes_ghost_presence() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let erin_matrix = MatrixUser::register("xerin").await;
    let mut dave = XmppUser::login("dave").await;
    let ghost = xmpp_ghost("dave@localhost");
    // Presence is visible to users who share a room.
    let room = erin_matrix.create_dm(&ghost).await;
    erin_matrix
        .wait_joined(&room, &ghost, Duration::from_secs(20))
        .await;
    let local = erin_matrix.localpart.clone();
    let mut p = Presence::new(PresenceType::None);
    p.to = Some(Jid::from_str(&format!("{local}@{COMPONENT_DOMAIN}")).unwrap());
    p.show = Some(Show::Away);
    p.statuses.insert(Lang::default(), "in a meeting".into());
    dave.send(p.into()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = erin_matrix
            .call("GET", &format!("/presence/{}/status", enc(&ghost)), None)
            .await;
        if status == 200
            && body["presence"] == "unavailable"
            && body["status_msg"] == "in a meeting"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ghost presence never became unavailable/in a meeting: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_answers_discovery_version_and_ping() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut erin = XmppUser::login("erin").await;
    let get = |id: &str, child: &str| {
        format!(
            "<iq type='get' id='{id}' to='{COMPONENT_DOMAIN}' xmlns='jabber:client'>{child}</iq>"
        )
    };
    erin.send_xml(&get(
        "d1",
        "<query xmlns='http://jabber.org/protocol/disco#info'/>",
    ))
    .await;
    let xml = String::from(
        &erin
            .wait("disco#info result", |e| e.attr("id") == Some("d1"))
            .await,
    );
    assert!(xml.contains("category='gateway'"), "{xml}");
    for feature in [
        "http://jabber.org/protocol/disco#info",
        "jabber:iq:version",
        "urn:xmpp:ping",
        "http://jabber.org/protocol/chatstates",
    ] {
        assert!(xml.contains(feature), "feature {feature} missing: {xml}");
    }
    erin.send_xml(&get("v1", "<query xmlns='jabber:iq:version'/>"))
        .await;
    let xml = String::from(
        &erin
            .wait("version result", |e| e.attr("id") == Some("v1"))
            .await,
    );
    assert!(xml.contains("<name>isthmus</name>"), "{xml}");
    erin.send_xml(&get("p1", "<ping xmlns='urn:xmpp:ping'/>"))
        .await;
    let e = erin
        .wait("ping result", |e| e.attr("id") == Some("p1"))
        .await;
    assert_eq!(e.attr("type"), Some("result"), "{}", String::from(&e));
    erin.send_xml(&get("u1", "<query xmlns='urn:example:unknown'/>"))
        .await;
    let e = erin
        .wait("error for an unknown query", |e| e.attr("id") == Some("u1"))
        .await;
    assert_eq!(e.attr("type"), Some("error"), "{}", String::from(&e));
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_component_secret_is_reported_clearly() {
    let _s = serial();
    let bridge = BridgeProcess::start_with(|cfg| {
        cfg.replace("secret: component_secret_test", "secret: not_the_secret")
    })
    .await;
    common::wait_logins(&bridge, "xmpp", "BAD_CREDENTIALS", 1).await;
    let log = bridge.log();
    assert!(
        log.contains("networks.xmpp.component.secret"),
        "the log names the setting:\n{}",
        bridge.log_tail(20)
    );
    assert!(
        !log.contains("not_the_secret"),
        "the secret must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_flow_again_after_a_prosody_restart() {
    let _s = serial();
    let bridge = xmpp_bridge().await;
    let status = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/prosody.sh"))
        .arg("restart")
        .status()
        .expect("run scripts/prosody.sh restart");
    assert!(status.success(), "prosody restart failed");
    wait_xmpp_connected(&bridge, 1).await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, _) = dm_with("xrestart", "bob@localhost").await;
    let text = format!("after the restart {}", unique());
    alice.send_text(&room, &text).await;
    bob.wait_message(&text).await;
    let log = bridge.log();
    assert!(
        log.matches("XMPP component link up").count() >= 2,
        "the link reconnected without a bridge restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_request_reaches_the_matrix_user_who_accepts_then_presence_flows() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let user = MatrixUser::register("xsub").await;
    let room = management_room(&user).await;
    let address = format!("{}@{COMPONENT_DOMAIN}", user.localpart);
    let mut carol = XmppUser::login("carol").await;
    carol
        .send_xml(&format!(
            "<presence type='subscribe' to='{address}' xmlns='jabber:client'/>"
        ))
        .await;
    let request = user
        .wait_for_event(
            &room,
            "the contact request notice",
            Duration::from_secs(20),
            |e| {
                e["sender"] == BOT
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("carol@localhost") && b.contains("presence"))
            },
        )
        .await;
    let body = request["content"]["body"].as_str().unwrap();
    assert!(body.contains("accept xmpp carol@localhost"), "{body}");
    let pending = command(&user, &room, "contacts").await;
    assert!(
        pending.contains("carol@localhost") && pending.contains("asks"),
        "{pending}"
    );

    let reply = command(&user, &room, "accept xmpp carol@localhost").await;
    assert!(reply.contains("may now see your presence"), "{reply}");
    // Prosody applies the approval to carol's roster (it does not pass the `subscribed`
    // stanza on); what carol sees is the user's presence, sent right after.
    carol
        .wait("presence from the gateway address", |e| {
            e.name() == "presence" && e.attr("from") == Some(address.as_str())
        })
        .await;
    let listed = command(&user, &room, "contacts").await;
    assert!(
        listed.contains("carol@localhost: sees your presence"),
        "{listed}"
    );

    // The Matrix user's presence now reaches carol.
    user.ok(
        "PUT",
        &format!("/presence/{}/status", enc(&user.user_id)),
        Some(&serde_json::json!({"presence": "unavailable", "status_msg": "at lunch"})),
    )
    .await;
    let p = carol
        .wait("the Matrix user's presence", |e| {
            e.name() == "presence"
                && e.attr("from")
                    .is_some_and(|f| f.starts_with(address.as_str()))
                && e.children()
                    .any(|c| c.name() == "status" && c.text() == "at lunch")
        })
        .await;
    assert!(
        p.children()
            .any(|c| c.name() == "show" && c.text() == "away"),
        "{}",
        String::from(&p)
    );

    // Rapid changes are coalesced: carol gets the last one, in fewer stanzas than changes.
    for n in 1..=5 {
        user.ok(
            "PUT",
            &format!("/presence/{}/status", enc(&user.user_id)),
            Some(&serde_json::json!({"presence": "online", "status_msg": format!("burst {n}")})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while let Some(ev) = carol
        .next_event(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if let Some(xml) = ev["xml"].as_str()
            && xml.contains("burst ")
        {
            seen.push(xml.to_owned());
            if xml.contains("burst 5") {
                break;
            }
        }
    }
    assert!(
        seen.last().is_some_and(|x| x.contains("burst 5")),
        "the last status arrives: {seen:#?}"
    );
    assert!(
        seen.len() < 5,
        "five quick changes are not five stanzas: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_accepted_contacts_first_presence_is_the_homeservers() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let user = MatrixUser::register("xfirst").await;
    // Set before the user shares any room with the bridge: no presence push tells the bridge.
    // Before, the first presence was plain available, without the status.
    user.ok(
        "PUT",
        &format!("/presence/{}/status", enc(&user.user_id)),
        Some(&serde_json::json!({"presence": "unavailable", "status_msg": "in a meeting"})),
    )
    .await;
    let room = management_room(&user).await;
    let address = format!("{}@{COMPONENT_DOMAIN}", user.localpart);
    let mut carol = XmppUser::login("carol").await;
    ask_and_accept(&user, &room, &address, &mut carol, "carol@localhost").await;
    let first = carol
        .wait("the first presence from the gateway address", |e| {
            e.name() == "presence"
                && e.attr("from")
                    .is_some_and(|f| f.starts_with(address.as_str()))
                && e.attr("type").is_none()
        })
        .await;
    let xml = String::from(&first);
    assert!(
        first
            .children()
            .any(|c| c.name() == "status" && c.text() == "in a meeting"),
        "{xml}"
    );
    // The state is whatever the homeserver has by then: sending the `accept` command makes
    // Synapse turn an `unavailable` user back to `online`, keeping the status.
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_to_a_user_without_a_management_room_opens_one() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let user = MatrixUser::register("xnoroom").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", user.localpart);
    let mut carol = XmppUser::login("carol").await;
    carol
        .send_xml(&format!(
            "<presence type='subscribe' to='{address}' xmlns='jabber:client'/>"
        ))
        .await;
    // The bot opens a room to ask.
    let room = user.wait_for_invite(Duration::from_secs(20)).await;
    user.join(&room).await;
    user.wait_joined(&room, BOT, Duration::from_secs(5)).await;
    let is_request = |e: &serde_json::Value| {
        e["sender"] == BOT
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("carol@localhost") && b.contains("accept xmpp"))
    };
    user.wait_for_event(
        &room,
        "the contact request",
        Duration::from_secs(20),
        is_request,
    )
    .await;
    // Answered like any command in a management room; the join did not repeat the request.
    let reply = command(&user, &room, "accept xmpp carol@localhost").await;
    assert!(reply.contains("may now see your presence"), "{reply}");
    let shown = user
        .messages(&room)
        .await
        .iter()
        .filter(|e| is_request(e))
        .count();
    assert_eq!(shown, 1, "the request is shown once");
    carol
        .wait("the approval or presence from the gateway address", |e| {
            e.name() == "presence"
                && e.attr("from")
                    .is_some_and(|f| f.starts_with(address.as_str()))
                && matches!(e.attr("type"), None | Some("subscribed"))
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_subscription_is_refused_over_xmpp() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let user = MatrixUser::register("xdeny").await;
    let room = management_room(&user).await;
    let address = format!("{}@{COMPONENT_DOMAIN}", user.localpart);
    let mut dave = XmppUser::login("dave").await;
    dave.send_xml(&format!(
        "<presence type='subscribe' to='{address}' xmlns='jabber:client'/>"
    ))
    .await;
    user.wait_for_event(
        &room,
        "the contact request notice",
        Duration::from_secs(20),
        |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("dave@localhost"))
        },
    )
    .await;
    let reply = command(&user, &room, "deny xmpp dave@localhost").await;
    assert!(reply.contains("may not see"), "{reply}");
    let listed = command(&user, &room, "contacts").await;
    assert!(
        !listed.contains("sees your presence") && !listed.contains("asks"),
        "{listed}"
    );

    // carol, whom the user accepts, is the witness: the presence change that must not reach
    // dave reaches her.
    let mut carol = XmppUser::login("carol").await;
    ask_and_accept(&user, &room, &address, &mut carol, "carol@localhost").await;
    // The first presence carol gets is the homeserver's (offline, so unavailable).
    carol
        .wait("the first presence from the gateway address", |e| {
            e.name() == "presence"
                && e.attr("from")
                    .is_some_and(|f| f.starts_with(address.as_str()))
                && matches!(e.attr("type"), None | Some("unavailable"))
        })
        .await;

    // The user's presence does not reach dave.
    user.ok(
        "PUT",
        &format!("/presence/{}/status", enc(&user.user_id)),
        Some(&serde_json::json!({"presence": "online", "status_msg": "not for dave"})),
    )
    .await;
    let has_status = |e: &Element| {
        e.name() == "presence"
            && e.children()
                .any(|c| c.name() == "status" && c.text() == "not for dave")
    };
    carol.wait("the presence change", has_status).await;
    // The bridge sent its presence stanzas for the change before it reads dave's ping, and
    // answers the ping over the same link: whatever it sent dave is in before the answer.
    dave.send_xml(&format!(
        "<iq type='get' to='{address}' id='after-presence' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let (earlier, _) = dave
        .wait_with_earlier("the answer to dave's ping", |e| {
            e.name() == "iq" && e.attr("id") == Some("after-presence")
        })
        .await;
    let leaked: Vec<String> = earlier
        .iter()
        .filter(|e| has_status(e))
        .map(String::from)
        .collect();
    assert!(
        leaked.is_empty(),
        "a denied contact got the presence: {leaked:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn matrix_typing_becomes_a_chat_state() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut erin = XmppUser::login("erin").await;
    let (alice, room, _) = dm_with("xtype", "erin@localhost").await;
    alice
        .ok(
            "PUT",
            &format!("/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id)),
            Some(&serde_json::json!({"typing": true, "timeout": 30000})),
        )
        .await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    erin.wait("composing from the gateway address", |e| {
        e.name() == "message"
            && e.attr("from") == Some(address.as_str())
            && e.children().any(|c| c.name() == "composing")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn matrix_user_joins_an_xmpp_group_chat_through_its_alias() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    // The bridge joins the group chat for alice through the alias: bob sees her arrive
    // under her nick.
    let (mut bob, alice, room_jid, room) = shared_group_chat("lobby", "xmuc").await;
    let nick = alice.localpart.clone();

    // A group chat that does not exist has no room: the alias is not found.
    let missing = format!("#_xmpp_nosuch{}=40conference.localhost:localhost", unique());
    let (status, body) = alice
        .call(
            "POST",
            &format!("/join/{}", enc(&missing)),
            Some(&serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // XMPP → Matrix, from bob's occupant ghost.
    let hello = format!("hello room from bob {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{hello}</body></message>"
    ))
    .await;
    let ghost = format!("@_xmpp_{}=2fbob:localhost", room_jid.replace('@', "=40"));
    let ev = alice
        .wait_for_event(&room, "bob's group message", Duration::from_secs(20), |e| {
            e["content"]["body"] == hello.as_str()
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());

    // Matrix → XMPP, from alice's nick, and not echoed back into Matrix.
    let reply = format!("hello bob from matrix {}", unique());
    alice.send_text(&room, &reply).await;
    let got = bob
        .wait("alice's group message", |e| {
            e.name() == "message"
                && e.children()
                    .any(|c| c.name() == "body" && c.text() == reply)
        })
        .await;
    assert_eq!(
        got.attr("from"),
        Some(format!("{room_jid}/{nick}").as_str())
    );
    assert_eq!(got.attr("type"), Some("groupchat"));

    // XMPP clients react to group messages by the room's stanza-id: it reaches alice's event.
    let stanza_id = got
        .children()
        .find(|c| c.name() == "stanza-id" && c.attr("by") == Some(room_jid.as_str()))
        .and_then(|c| c.attr("id"))
        .expect("the room (with MAM) gives messages a stanza-id")
        .to_owned();
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><reactions xmlns='urn:xmpp:reactions:0' id='{stanza_id}'><reaction>👀</reaction></reactions></message>"
    ))
    .await;
    let mine = alice
        .wait_for_event(&room, "alice's own message", Duration::from_secs(20), |e| {
            e["content"]["body"] == reply.as_str()
        })
        .await;
    let reaction = alice
        .wait_for_event(
            &room,
            "bob's reaction by stanza-id",
            Duration::from_secs(20),
            |e| e["type"] == "m.reaction" && e["sender"] == ghost.as_str(),
        )
        .await;
    assert_eq!(
        reaction["content"]["m.relates_to"]["event_id"],
        mine["event_id"]
    );
    // The room reflected alice's message to the bridge before bob could react to it, and the
    // portal keeps order: a copy bridged back would be in the room before the reaction.
    let copies = alice
        .messages(&room)
        .await
        .into_iter()
        .filter(|e| e["content"]["body"] == reply.as_str())
        .count();
    assert_eq!(
        copies, 1,
        "the room's reflection of alice's message is not bridged back"
    );

    // bob leaves: his ghost leaves the Matrix room.
    bob.send_xml(&format!(
        "<presence to='{room_jid}/bob' type='unavailable' xmlns='jabber:client'/>"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.joined_members(&room).await.contains(&ghost) {
        assert!(
            Instant::now() < deadline,
            "bob's ghost is still in the room after he left"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A public Matrix room with an alias, to be hosted by the bridge as a group chat.
struct HostedRoom {
    room: String,
    alias: String,
    /// The group chat's address on the component.
    muc: String,
}

impl HostedRoom {
    /// Creates the room as `owner`, with an alias starting with `prefix` and an optional name.
    async fn create(owner: &MatrixUser, prefix: &str, name: Option<&str>) -> Self {
        let local = format!("{prefix}{}", unique());
        let mut body = serde_json::json!({"preset": "public_chat", "room_alias_name": local});
        if let Some(name) = name {
            body["name"] = name.into();
        }
        let created = owner.ok("POST", "/createRoom", Some(&body)).await;
        Self {
            room: created["room_id"].as_str().unwrap().to_owned(),
            alias: format!("#{local}:localhost"),
            muc: format!("#{local}@{COMPONENT_DOMAIN}"),
        }
    }

    /// Starts a bridge that hosts the room (`edit` changes the rest of its configuration)
    /// and waits until its component link is up.
    async fn bridge(&self, edit: fn(String) -> String) -> BridgeProcess {
        let alias = self.alias.clone();
        let bridge = BridgeProcess::start_with(move |cfg| {
            edit(cfg).replace(
                "      secret: component_secret_test",
                &format!("      secret: component_secret_test\n    hosted_rooms: [\"{alias}\"]"),
            )
        })
        .await;
        wait_xmpp_connected(&bridge, 1).await;
        bridge
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_first_joiner_of_a_hosted_room_sees_its_matrix_members() {
    let _s = serial();
    let alice = MatrixUser::register("xfirsthost").await;
    let dan = MatrixUser::register("xfirsthost").await;
    let hosted = HostedRoom::create(&alice, "hostedfirst", None).await;
    dan.join(&hosted.room).await;
    let _bridge = hosted.bridge(|cfg| cfg).await;
    let muc = hosted.muc.clone();
    let mut carol = XmppUser::login("carol").await;
    let (before, _) = join_muc(&mut carol, &muc, "carol", "").await;
    let occupants: Vec<&str> = before
        .iter()
        .filter(|e| e.name() == "presence")
        .filter_map(|e| e.attr("from"))
        .collect();
    for member in [&alice, &dan] {
        let occupant = format!("{muc}/{}", member.localpart);
        assert!(
            occupants.contains(&occupant.as_str()),
            "{occupant} is in the first occupant list: {occupants:?}"
        );
    }
}

/// Joins hosted room `muc` as `nick`, with `history` inside the MUC element; returns what the
/// user got before its own presence (the occupant list) and that presence, which must carry
/// status 110.
async fn join_muc(
    user: &mut XmppUser,
    muc: &str,
    nick: &str,
    history: &str,
) -> (Vec<Element>, Element) {
    user.send_xml(&format!(
        "<presence to='{muc}/{nick}' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'>{history}</x></presence>"
    ))
    .await;
    let (before, own) = user
        .wait_with_earlier("its own presence (status 110)", |e| {
            e.name() == "presence" && e.attr("from") == Some(format!("{muc}/{nick}").as_str())
        })
        .await;
    assert!(
        String::from(&own).contains("code='110'"),
        "{}",
        String::from(&own)
    );
    (before, own)
}

/// Like [`join_muc`]; returns, in order, what the user got after its own presence up to the
/// subject that ends the join, and the subject.
async fn join_hosted(
    user: &mut XmppUser,
    muc: &str,
    nick: &str,
    history: &str,
) -> (Vec<Element>, String) {
    join_muc(user, muc, nick, history).await;
    let (between, subject) = user
        .wait_with_earlier("the subject that ends the join", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "subject")
        })
        .await;
    let text = subject
        .children()
        .find(|c| c.name() == "subject")
        .map(|c| c.text())
        .unwrap_or_default();
    (between, text)
}

/// The bodies of the history messages among `stanzas`, in order; each must say when it was
/// sent (XEP-0203, stamped by the room) and come from a nick in the room.
fn history_bodies(stanzas: &[Element], muc: &str) -> Vec<String> {
    stanzas
        .iter()
        .filter(|e| e.name() == "message" && e.attr("type") == Some("groupchat"))
        .map(|e| {
            let xml = String::from(e);
            let delay = e
                .children()
                .find(|c| c.name() == "delay" && c.ns() == "urn:xmpp:delay");
            assert!(
                delay.is_some_and(|d| d.attr("stamp").is_some() && d.attr("from") == Some(muc)),
                "a history message without the room's delay stamp: {xml}"
            );
            assert!(
                e.attr("from")
                    .is_some_and(|f| f.starts_with(&format!("{muc}/"))),
                "a history message not from a nick of the room: {xml}"
            );
            e.children()
                .find(|c| c.name() == "body")
                .map(|b| b.text())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_of_a_hosted_room_gets_its_latest_messages_and_topic() {
    let _s = serial();
    let alice = MatrixUser::register("xhosthist").await;
    let hosted = HostedRoom::create(&alice, "hostedhist", Some("History")).await;
    let topic = format!("what this room is about {}", unique());
    alice
        .ok(
            "PUT",
            &format!("/rooms/{}/state/m.room.topic/", enc(&hosted.room)),
            Some(&serde_json::json!({ "topic": topic })),
        )
        .await;
    let run = unique();
    let bodies: Vec<String> = (1..=3).map(|n| format!("earlier {n} {run}")).collect();
    let mut ids = Vec::new();
    for body in &bodies {
        ids.push(alice.send_text(&hosted.room, body).await);
    }
    // An edit of the second: the history shows what was sent, not the edit as a message.
    alice
        .edit(&hosted.room, &ids[1], &format!("edited {run}"))
        .await;
    let _bridge = hosted.bridge(|cfg| cfg).await;
    let muc = hosted.muc.clone();

    // No history element: the latest messages, up to the default.
    let mut carol = XmppUser::login("carol").await;
    let (got, subject) = join_hosted(&mut carol, &muc, "carol", "").await;
    assert_eq!(history_bodies(&got, &muc), bodies, "the default history");
    assert_eq!(subject, topic, "the subject is the room's topic");
    let alice_nick = format!("{muc}/{}", alice.localpart);
    assert!(
        got.iter()
            .filter(|e| e.name() == "message")
            .all(|e| e.attr("from") == Some(alice_nick.as_str())),
        "history from alice's nick: {:?}",
        got.iter().map(String::from).collect::<Vec<_>>()
    );

    // At most two.
    let mut dave = XmppUser::login("dave").await;
    let (got, subject) = join_hosted(&mut dave, &muc, "dave", "<history maxstanzas='2'/>").await;
    assert_eq!(history_bodies(&got, &muc), bodies[1..], "maxstanzas='2'");
    assert_eq!(subject, topic);

    // None (maxchars='0'), and none from the future (since).
    let mut erin = XmppUser::login("erin").await;
    let (got, _) = join_hosted(&mut erin, &muc, "erin", "<history maxchars='0'/>").await;
    assert_eq!(
        history_bodies(&got, &muc),
        Vec::<String>::new(),
        "maxchars='0'"
    );
    let mut frank = XmppUser::login("frank").await;
    let (got, _) = join_hosted(
        &mut frank,
        &muc,
        "frank",
        "<history since='2999-01-01T00:00:00Z'/>",
    )
    .await;
    assert_eq!(
        history_bodies(&got, &muc),
        Vec::<String>::new(),
        "since a later date"
    );

    // A new topic reaches the occupants as a change of subject, from alice's nick.
    let changed = format!("a new topic {}", unique());
    alice
        .ok(
            "PUT",
            &format!("/rooms/{}/state/m.room.topic/", enc(&hosted.room)),
            Some(&serde_json::json!({ "topic": changed })),
        )
        .await;
    carol
        .wait("the change of subject", |e| {
            e.name() == "message"
                && e.attr("from") == Some(alice_nick.as_str())
                && e.children()
                    .any(|c| c.name() == "subject" && c.text() == changed)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xmpp_user_joins_a_matrix_room_hosted_as_a_group_chat() {
    let _s = serial();
    let alice = MatrixUser::register("xhost").await;
    let hosted = HostedRoom::create(&alice, "hosted", Some("Hosted")).await;
    let _bridge = hosted.bridge(|cfg| cfg).await;
    let (room, muc) = (hosted.room.clone(), hosted.muc.clone());
    let mut carol = XmppUser::login("carol").await;
    let (before, _) = join_muc(&mut carol, &muc, "carol", "").await;
    // The Matrix member is in the occupant list, before carol's own presence.
    let alice_nick = alice.localpart.clone();
    assert!(
        before.iter().any(|e| e.name() == "presence"
            && e.attr("from") == Some(format!("{muc}/{alice_nick}").as_str())),
        "{:?}",
        before.iter().map(String::from).collect::<Vec<_>>()
    );
    carol
        .wait("the subject that ends the join", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "subject")
        })
        .await;
    let ghost = xmpp_ghost("carol@localhost");
    alice
        .wait_joined(&room, &ghost, Duration::from_secs(20))
        .await;

    // XMPP → Matrix (and reflected to carol, as a MUC does).
    let hi = format!("hi matrix room {}", unique());
    carol
        .send_xml(&format!(
            "<message to='{muc}' type='groupchat' xmlns='jabber:client'><body>{hi}</body></message>"
        ))
        .await;
    carol
        .wait("the reflection of carol's message", |e| {
            e.name() == "message"
                && e.attr("from") == Some(format!("{muc}/carol").as_str())
                && e.children().any(|c| c.name() == "body" && c.text() == hi)
        })
        .await;
    let ev = alice
        .wait_for_event(&room, "carol's message", Duration::from_secs(20), |e| {
            e["content"]["body"] == hi.as_str()
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());

    // Matrix → XMPP, from alice's nick.
    let answer = format!("hello carol {}", unique());
    alice.send_text(&room, &answer).await;
    carol
        .wait("alice's message in the group chat", |e| {
            e.name() == "message"
                && e.attr("from") == Some(format!("{muc}/{alice_nick}").as_str())
                && e.children()
                    .any(|c| c.name() == "body" && c.text() == answer)
        })
        .await;

    // Discovery lists the hosted room and describes it as a group chat.
    carol
        .send_xml(&format!(
            "<iq type='get' id='items1' to='{COMPONENT_DOMAIN}' xmlns='jabber:client'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
        ))
        .await;
    let items = String::from(
        &carol
            .wait("disco#items", |e| e.attr("id") == Some("items1"))
            .await,
    );
    assert!(items.contains(&format!("jid='{muc}'")), "{items}");
    carol
        .send_xml(&format!(
            "<iq type='get' id='info1' to='{muc}' xmlns='jabber:client'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await;
    let info = String::from(
        &carol
            .wait("disco#info of the room", |e| e.attr("id") == Some("info1"))
            .await,
    );
    assert!(
        info.contains("category='conference'") && info.contains("http://jabber.org/protocol/muc"),
        "{info}"
    );

    // Self-ping (XEP-0410): an occupant gets a result, anyone else `not-acceptable`.
    carol
        .send_xml(&format!(
            "<iq type='get' id='sp1' to='{muc}/carol' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>"
        ))
        .await;
    let pong = carol
        .wait("the self-ping answer", |e| e.attr("id") == Some("sp1"))
        .await;
    assert_eq!(pong.attr("type"), Some("result"));
    let mut dave = XmppUser::login("dave").await;
    dave.send_xml(&format!(
        "<iq type='get' id='sp2' to='{muc}/dave' xmlns='jabber:client'><ping xmlns='urn:xmpp:ping'/></iq>"
    ))
    .await;
    let refused = dave
        .wait("the self-ping refusal", |e| e.attr("id") == Some("sp2"))
        .await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert!(
        String::from(&refused).contains("not-acceptable"),
        "{}",
        String::from(&refused)
    );

    // A room that is not allowed does not exist for XMPP users.
    carol
        .send_xml(&format!(
            "<presence to='#secret@{COMPONENT_DOMAIN}/carol' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        ))
        .await;
    carol
        .wait("an error for a room that is not hosted", |e| {
            e.name() == "presence" && e.attr("type") == Some("error")
        })
        .await;

    // A Matrix member who leaves the room leaves the group chat for the XMPP occupants.
    alice
        .ok(
            "POST",
            &format!("/rooms/{}/leave", enc(&room)),
            Some(&serde_json::json!({})),
        )
        .await;
    carol
        .wait("alice leaving the hosted room", |e| {
            e.name() == "presence"
                && e.attr("type") == Some("unavailable")
                && e.attr("from") == Some(format!("{muc}/{alice_nick}").as_str())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn formatting_crosses_both_ways_and_xhtml_is_sanitised() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xfmt", "bob@localhost").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);

    // Matrix HTML → XEP-0393 styling; a pill becomes the name.
    let tag = unique();
    alice
        .send(
            &room,
            "m.room.message",
            &serde_json::json!({
                "msgtype": "m.text",
                "body": format!("**bold** {tag} and _it_ for Bob"),
                "format": "org.matrix.custom.html",
                "formatted_body": format!("<strong>bold</strong> {tag} and <em>it</em> for <a href=\"https://matrix.to/#/{ghost}\">Bob</a>"),
            }),
        )
        .await;
    bob.wait_message(&format!("*bold* {tag} and _it_ for Bob"))
        .await;

    // XEP-0393 → Matrix HTML, with m.mentions set and empty.
    let styled = format!("*hi* there `code` @room {}", unique());
    bob.say(&address, &styled).await;
    let ev = alice
        .wait_for_event(
            &room,
            "bob's styled message",
            Duration::from_secs(20),
            |e| e["content"]["body"] == styled.as_str(),
        )
        .await;
    let html = ev["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.starts_with("<strong>hi</strong> there <code>code</code>"),
        "{html}"
    );
    assert_eq!(
        ev["content"]["m.mentions"],
        serde_json::json!({}),
        "@room in XMPP text pings nobody"
    );

    // XHTML-IM is sanitised to the Matrix allow-list.
    let plain = format!("xhtml {}", unique());
    bob.send_xml(&format!(
        "<message to='{address}' type='chat' xmlns='jabber:client'><body>{plain}</body>\
         <html xmlns='http://jabber.org/protocol/xhtml-im'><body xmlns='http://www.w3.org/1999/xhtml'>\
         <p onclick='evil()'><em>{plain}</em><script>alert(1)</script><a href='javascript:alert(2)'>x</a></p></body></html></message>"
    ))
    .await;
    let ev = alice
        .wait_for_event(
            &room,
            "bob's XHTML-IM message",
            Duration::from_secs(20),
            |e| e["content"]["body"] == plain.as_str(),
        )
        .await;
    let html = ev["content"]["formatted_body"].as_str().unwrap_or_default();
    assert_eq!(html, format!("<p><em>{plain}</em><a>x</a></p>"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nick_mentions_in_group_chats_become_real_mentions() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let (mut bob, alice, room_jid, room) = shared_group_chat("mention", "xment").await;
    let nick = alice.localpart.clone();
    let text = format!("{nick}: are you there? {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{text}</body></message>"
    ))
    .await;
    let ev = alice
        .wait_for_event(&room, "the mention", Duration::from_secs(20), |e| {
            e["content"]["body"] == text.as_str()
        })
        .await;
    assert_eq!(
        ev["content"]["m.mentions"]["user_ids"],
        serde_json::json!([alice.user_id])
    );
    let html = ev["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.starts_with(&format!(
            "<a href=\"https://matrix.to/#/{}\">{nick}</a>:",
            alice.user_id
        )),
        "{html}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn join_and_presence_commands() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let room_jid = format!("cmd{}@conference.localhost", unique());
    let mut bob = XmppUser::login("bob").await;
    bob.send_xml(&format!(
        "<presence to='{room_jid}/bob' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
    ))
    .await;
    let user = MatrixUser::register("xcmd").await;
    let management = management_room(&user).await;
    let reply = command(
        &user,
        &management,
        "join xmpp nosuchroom@conference.localhost",
    )
    .await;
    assert!(reply.contains("There is no group chat"), "{reply}");
    let reply = command(&user, &management, &format!("join xmpp {room_jid}")).await;
    assert!(reply.contains("You are invited"), "{reply}");
    let room = user.wait_for_invite(Duration::from_secs(20)).await;
    user.join(&room).await;
    let nick = user.localpart.clone();
    bob.wait("the user's puppet joining after `join`", |e| {
        e.name() == "presence" && e.attr("from") == Some(format!("{room_jid}/{nick}").as_str())
    })
    .await;
    let reply = command(&user, &management, "presence away at the dentist").await;
    assert!(
        reply.contains("Presence set on") && reply.contains("xmpp"),
        "{reply}"
    );
    let reply = command(&user, &management, "presence sideways").await;
    assert!(reply.contains("Usage"), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn xmpp_chat_states_become_matrix_typing() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut carol = XmppUser::login("carol").await;
    let (alice, room, ghost) = dm_with("xtypein", "carol@localhost").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    let since = alice.sync_now().await;
    carol
        .send_xml(&format!(
            "<message to='{address}' type='chat' xmlns='jabber:client'><composing xmlns='http://jabber.org/protocol/chatstates'/></message>"
        ))
        .await;
    alice
        .wait_typing(&room, &ghost, since, Duration::from_secs(20))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_retractions_reactions_and_replies_cross_both_ways() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xfid", "bob@localhost").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    let has = |e: &Element, name: &str, ns: &str| e.children().any(|c| c.is(name, ns));
    let child_id = |e: &Element, name: &str| {
        e.children()
            .find(|c| c.name() == name)
            .and_then(|c| c.attr("id"))
            .map(str::to_owned)
    };

    // Matrix → XMPP: an edit aims at the original's ID, also after a second edit.
    let text = format!("original {}", unique());
    let original = alice.send_text(&room, &text).await;
    let got = bob
        .wait("the original", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "body" && c.text() == text)
        })
        .await;
    let xmpp_id = got.attr("id").unwrap().to_owned();
    alice.edit(&room, &original, "edited once").await;
    let edit = bob
        .wait("the correction", |e| {
            has(e, "replace", "urn:xmpp:message-correct:0")
        })
        .await;
    assert_eq!(
        child_id(&edit, "replace").as_deref(),
        Some(xmpp_id.as_str())
    );
    alice.edit(&room, &original, "edited twice").await;
    let edit = bob
        .wait("the second correction", |e| {
            has(e, "replace", "urn:xmpp:message-correct:0")
                && e.children()
                    .any(|c| c.name() == "body" && c.text() == "edited twice")
        })
        .await;
    assert_eq!(
        child_id(&edit, "replace").as_deref(),
        Some(xmpp_id.as_str()),
        "always the original"
    );

    // Reactions: the full set each time.
    let r1 = alice.react(&room, &original, "👍").await;
    let set = bob
        .wait("a reaction set", |e| {
            has(e, "reactions", "urn:xmpp:reactions:0")
        })
        .await;
    assert!(String::from(&set).contains("👍"));
    alice.react(&room, &original, "🎉").await;
    bob.wait("the set with both", |e| {
        let x = String::from(e);
        has(e, "reactions", "urn:xmpp:reactions:0") && x.contains("👍") && x.contains("🎉")
    })
    .await;
    alice.redact(&room, &r1).await;
    bob.wait("the set without the removed one", |e| {
        let x = String::from(e);
        has(e, "reactions", "urn:xmpp:reactions:0") && !x.contains("👍") && x.contains("🎉")
    })
    .await;

    // A reply points at the original.
    let reply_body = format!("replying {}", unique());
    alice
        .send(
            &room,
            "m.room.message",
            &serde_json::json!({"msgtype": "m.text", "body": reply_body, "m.relates_to": {"m.in_reply_to": {"event_id": original}}}),
        )
        .await;
    let reply = bob
        .wait("the reply", |e| has(e, "reply", "urn:xmpp:reply:0"))
        .await;
    assert_eq!(child_id(&reply, "reply").as_deref(), Some(xmpp_id.as_str()));

    // Retraction.
    alice.redact(&room, &original).await;
    let retract = bob
        .wait("the retraction", |e| {
            has(e, "retract", "urn:xmpp:message-retract:1")
        })
        .await;
    assert_eq!(
        child_id(&retract, "retract").as_deref(),
        Some(xmpp_id.as_str())
    );

    // XMPP → Matrix.
    let mid = format!("bobmsg{}", unique());
    let body = format!("from bob {}", unique());
    bob.send_xml(&format!("<message to='{address}' id='{mid}' type='chat' xmlns='jabber:client'><body>{body}</body></message>")).await;
    let ev = alice
        .wait_for_event(&room, "bob's message", Duration::from_secs(20), |e| {
            e["content"]["body"] == body.as_str()
        })
        .await;
    let event_id = ev["event_id"].as_str().unwrap().to_owned();
    bob.send_xml(&format!(
        "<message to='{address}' id='c{mid}' type='chat' xmlns='jabber:client'><body>fixed</body><replace xmlns='urn:xmpp:message-correct:0' id='{mid}'/></message>"
    ))
    .await;
    let edit = alice
        .wait_for_event(
            &room,
            "the correction as an edit",
            Duration::from_secs(20),
            |e| e["content"]["m.new_content"]["body"] == "fixed",
        )
        .await;
    assert_eq!(edit["content"]["m.relates_to"]["rel_type"], "m.replace");
    assert_eq!(
        edit["content"]["m.relates_to"]["event_id"],
        event_id.as_str()
    );
    bob.send_xml(&format!(
        "<message to='{address}' id='r{mid}' type='chat' xmlns='jabber:client'><reactions xmlns='urn:xmpp:reactions:0' id='{mid}'><reaction>❤</reaction></reactions></message>"
    ))
    .await;
    let reaction = alice
        .wait_for_event(&room, "bob's reaction", Duration::from_secs(20), |e| {
            e["type"] == "m.reaction" && e["sender"] == ghost.as_str()
        })
        .await;
    assert_eq!(reaction["content"]["m.relates_to"]["key"], "❤");
    assert_eq!(
        reaction["content"]["m.relates_to"]["event_id"],
        event_id.as_str()
    );
    bob.send_xml(&format!(
        "<message to='{address}' id='r2{mid}' type='chat' xmlns='jabber:client'><reactions xmlns='urn:xmpp:reactions:0' id='{mid}'/></message>"
    ))
    .await;
    let reaction_id = reaction["event_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.event(&room, &reaction_id).await["content"]
        .as_object()
        .is_some_and(|c| !c.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "the removed reaction was not redacted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let answer = format!("the answer {}", unique());
    let quote = "> from bob\n";
    let fallback_end = quote.chars().count();
    bob.send_xml(&format!(
        "<message to='{address}' id='q{mid}' type='chat' xmlns='jabber:client'><body>{quote}{answer}</body>\
         <reply xmlns='urn:xmpp:reply:0' id='{mid}'/><fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='{fallback_end}'/></fallback></message>"
    ))
    .await;
    let reply = alice
        .wait_for_event(&room, "bob's reply", Duration::from_secs(20), |e| {
            e["content"]["body"] == answer.as_str()
        })
        .await;
    assert_eq!(
        reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        event_id.as_str()
    );
    bob.send_xml(&format!(
        "<message to='{address}' id='x{mid}' type='chat' xmlns='jabber:client'><retract xmlns='urn:xmpp:message-retract:1' id='{mid}'/></message>"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.event(&room, &event_id).await["content"]
        .as_object()
        .is_some_and(|c| !c.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "the retracted message was not redacted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_and_bounces() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut dave = XmppUser::login("dave").await;
    let (alice, room, ghost) = dm_with("xrcpt", "dave@localhost").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);

    // XMPP → Matrix message asking for a delivery receipt: it gets one, from the gateway.
    let mid = format!("d{}", unique());
    let body = format!("receipt please {}", unique());
    dave.send_xml(&format!(
        "<message to='{address}' id='{mid}' type='chat' xmlns='jabber:client'><body>{body}</body><request xmlns='urn:xmpp:receipts'/><markable xmlns='urn:xmpp:chat-markers:0'/></message>"
    ))
    .await;
    dave.wait("the delivery receipt", |e| {
        e.children()
            .any(|c| c.is("received", "urn:xmpp:receipts") && c.attr("id") == Some(mid.as_str()))
    })
    .await;
    let ev = alice
        .wait_for_event(&room, "dave's message", Duration::from_secs(20), |e| {
            e["content"]["body"] == body.as_str()
        })
        .await;
    // Matrix read receipt → XEP-0333 displayed marker.
    alice
        .ok(
            "POST",
            &format!(
                "/rooms/{}/receipt/m.read/{}",
                enc(&room),
                enc(ev["event_id"].as_str().unwrap())
            ),
            Some(&serde_json::json!({})),
        )
        .await;
    dave.wait("the displayed marker", |e| {
        e.children().any(|c| {
            c.is("displayed", "urn:xmpp:chat-markers:0") && c.attr("id") == Some(mid.as_str())
        })
    })
    .await;

    // XEP-0333 displayed → the ghost's read receipt on alice's message.
    let text = format!("read me {}", unique());
    let sent = alice.send_text(&room, &text).await;
    let got = dave
        .wait("alice's message", |e| {
            e.children().any(|c| c.name() == "body" && c.text() == text)
        })
        .await;
    assert!(
        got.children()
            .any(|c| c.is("markable", "urn:xmpp:chat-markers:0")),
        "outbound messages are markable"
    );
    let xmpp_id = got.attr("id").unwrap().to_owned();
    let mut since = alice.sync_now().await;
    dave.send_xml(&format!(
        "<message to='{address}' type='chat' xmlns='jabber:client'><displayed xmlns='urn:xmpp:chat-markers:0' id='{xmpp_id}'/></message>"
    ))
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sync = alice
            .ok(
                "GET",
                &format!("/sync?timeout=500&since={}", enc(&since)),
                None,
            )
            .await;
        since = sync["next_batch"].as_str().unwrap_or(&since).to_owned();
        let read = sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["type"] == "m.receipt" && !e["content"][&sent]["m.read"][&ghost].is_null());
        if read {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ghost's read receipt never appeared"
        );
    }

    // A message to an XMPP address that does not exist bounces: the sender is told.
    let (bob, room2, _) = dm_with("xbounce", "nosuchuser@localhost").await;
    let lost = format!("into the void {}", unique());
    let lost_id = bob.send_text(&room2, &lost).await;
    let notice = bob
        .wait_for_event(&room2, "the bounce notice", Duration::from_secs(20), |e| {
            e["content"]["msgtype"] == "m.notice"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("could not be delivered"))
        })
        .await;
    assert_eq!(
        notice["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
        lost_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ghost_display_name_comes_from_the_vcard() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut erin = XmppUser::login("erin").await;
    let full_name = format!("Erin Example {}", unique());
    erin.send_xml(&format!(
        "<iq type='set' id='vc1' xmlns='jabber:client'><vCard xmlns='vcard-temp'><FN>{full_name}</FN></vCard></iq>"
    ))
    .await;
    erin.wait("the vCard stored", |e| e.attr("id") == Some("vc1"))
        .await;
    let alice = MatrixUser::register("xvcard").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    erin.say(&address, &format!("hello {}", unique())).await;
    let ghost = xmpp_ghost("erin@localhost");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let name = alice.displayname_of(&ghost).await;
        if name.as_deref().is_some_and(|n| n.contains(&full_name)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ghost's name never came from the vCard: {name:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn group_chat_messages_sent_while_the_bridge_was_down_arrive_once_in_order() {
    let _s = serial();
    let mut bridge = xmpp_bridge().await;
    let (mut bob, alice, room_jid, room) = shared_group_chat("gap", "xgap").await;
    let tag = unique();
    let before = format!("before the gap {tag}");
    bob.send_xml(&format!("<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{before}</body></message>")).await;
    alice
        .wait_for_event(
            &room,
            "the message before the gap",
            Duration::from_secs(20),
            |e| e["content"]["body"] == before.as_str(),
        )
        .await;

    bridge.stop().await;
    let during: Vec<String> = (1..=5)
        .map(|n| format!("during the gap {tag} #{n}"))
        .collect();
    for body in &during {
        bob.send_xml(&format!("<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{body}</body></message>")).await;
    }
    bridge.restart().await;
    wait_xmpp_connected(&bridge, 1).await;
    let last = during.last().unwrap().clone();
    alice
        .wait_for_event(
            &room,
            "the last message of the gap",
            Duration::from_secs(30),
            |e| e["content"]["body"] == last.as_str(),
        )
        .await;
    // A live message after the gap: the room's history on the bridge's join came before it,
    // and the portal keeps order, so a message of the gap bridged twice would be in by then.
    let after = format!("after the gap {tag}");
    bob.send_xml(&format!("<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{after}</body></message>")).await;
    alice
        .wait_for_event(
            &room,
            "the message after the gap",
            Duration::from_secs(30),
            |e| e["content"]["body"] == after.as_str(),
        )
        .await;
    // Oldest first: each message exactly once, in the order sent.
    let mut bodies: Vec<String> = alice
        .messages(&room)
        .await
        .into_iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .filter(|b| b.contains(&tag))
        .collect();
    bodies.reverse();
    let mut expected = vec![before.clone()];
    expected.extend(during.iter().cloned());
    expected.push(after);
    assert_eq!(bodies, expected);
}

/// The mission's scenario: an enterprise SIP user, an XMPP consumer and a Matrix user in one
/// room. The room is bridged to an XMPP group chat; the SIP user is invited into it and gets
/// every message one by one from the room's SIP address, and writes back to that address.
#[tokio::test(flavor = "multi_thread")]
async fn sip_xmpp_and_matrix_users_share_one_room() {
    let _s = serial();
    let bridge = xmpp_bridge().await;
    common::sipp::require_kamailio();
    common::wait_logins(&bridge, "sip", "CONNECTED", 1).await;
    // bob opens an XMPP group chat; alice bridges a room of hers to it.
    let room_jid = format!("hub{}@conference.localhost", unique());
    let mut bob = XmppUser::login("bob").await;
    bob.open_room(&room_jid, "bob").await;
    let alice = MatrixUser::register("xhub").await;
    let room = alice.create_room(&[BOT]).await;
    alice.wait_joined(&room, BOT, Duration::from_secs(20)).await;
    let reply = command(&alice, &room, &format!("!isthmus bridge xmpp {room_jid}")).await;
    assert!(reply.contains("now bridged"), "{reply}");
    let nick = alice.localpart.clone();
    bob.wait("alice's puppet joining", |e| {
        e.name() == "presence" && e.attr("from") == Some(format!("{room_jid}/{nick}").as_str())
    })
    .await;
    common::sipp::unregister_all("frank").await;
    let frank = common::sipp::MessageSink::start(15086).await;
    assert_eq!(common::sipp::register("frank", 15086, 300).await, 200);
    let frank_ghost = "@_sip_frank=40corp.localhost:localhost";
    alice.invite(&room, frank_ghost).await;
    alice
        .wait_joined(&room, frank_ghost, Duration::from_secs(20))
        .await;
    let wait = Duration::from_secs(30);

    // Matrix → XMPP and SIP.
    let hello = format!("hello everyone {}", unique());
    alice.send_text(&room, &hello).await;
    bob.wait("alice's message in the group chat", |e| {
        e.name() == "message"
            && e.children()
                .any(|c| c.name() == "body" && c.text() == hello)
    })
    .await;
    let got = frank
        .wait_for("alice's message at the SIP member", wait, |m| {
            m.body.ends_with(&hello)
        })
        .await;
    assert!(
        got.body.starts_with(&alice.localpart),
        "the sender's name comes first: {}",
        got.body
    );
    assert!(
        got.from.starts_with("sip:~r.") && got.from.ends_with("@matrix.corp.localhost"),
        "room messages come from the room's address: {}",
        got.from
    );
    let room_address = got.from.clone();

    // XMPP → Matrix and SIP.
    let from_xmpp = format!("hi from xmpp {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{from_xmpp}</body></message>"
    ))
    .await;
    alice
        .wait_for_event(&room, "bob's message", wait, |e| {
            e["content"]["body"] == from_xmpp.as_str()
        })
        .await;
    let got = frank
        .wait_for("bob's message at the SIP member", wait, |m| {
            m.body.ends_with(&from_xmpp)
        })
        .await;
    assert!(got.body.starts_with("bob"), "{}", got.body);

    // SIP → Matrix and XMPP.
    let from_sip = format!("hi from sip {}", unique());
    let status = common::sipp::send_message("frank", &room_address, "text/plain", &from_sip).await;
    assert_eq!(status, 200);
    let ev = alice
        .wait_for_event(&room, "frank's message", wait, |e| {
            e["content"]["body"] == from_sip.as_str()
        })
        .await;
    assert_eq!(ev["sender"], frank_ghost);
    let got = bob
        .wait("frank's message in the group chat", |e| {
            e.name() == "message"
                && e.children()
                    .any(|c| c.name() == "body" && c.text() == from_sip)
        })
        .await;
    assert!(
        got.attr("from")
            .is_some_and(|f| f.starts_with(&format!("{room_jid}/frank"))),
        "{:?}",
        got.attr("from")
    );
    // frank's own message is not sent back to frank: alice's next message, which the room's
    // queue handles after frank's, reaches him, and his own did not before it.
    let next = format!("after frank's {}", unique());
    alice.send_text(&room, &next).await;
    frank
        .wait_for("alice's next message at the SIP member", wait, |m| {
            m.body.ends_with(&next)
        })
        .await;
    assert!(
        !frank.received().iter().any(|m| m.body.contains(&from_sip)),
        "no echo to the SIP sender"
    );

    // Someone who is not a member cannot write into the room by its address: the bridge
    // stores the message (hence the 200), then drops it on the chat's queue, before frank's
    // next message to the same address.
    let not_member = [
        ("direction", "to_matrix"),
        ("type", "message"),
        ("result", "not_member"),
    ];
    let dropped_before = bridge.metric("bridge_events_total", &not_member).await;
    let intruder = format!("intruder {}", unique());
    let status = common::sipp::send_message("carol", &room_address, "text/plain", &intruder).await;
    assert_eq!(status, 200, "accepted on the wire, then dropped");
    let member = format!("frank again {}", unique());
    let status = common::sipp::send_message("frank", &room_address, "text/plain", &member).await;
    assert_eq!(status, 200);
    alice
        .wait_for_event(&room, "frank's next message", wait, |e| {
            e["content"]["body"] == member.as_str()
        })
        .await;
    assert!(
        !alice
            .messages(&room)
            .await
            .iter()
            .any(|e| e["content"]["body"] == intruder.as_str()),
        "a non-member's message does not reach the room"
    );
    assert_eq!(
        bridge.metric("bridge_events_total", &not_member).await - dropped_before,
        1.0,
        "the intruder's message is counted as dropped"
    );
    common::sipp::unregister_all("frank").await;
}

/// A small PNG (3 × 2) as bytes: enough header for the type and the dimensions.
fn tiny_png() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend_from_slice(&3u32.to_be_bytes());
    png.extend_from_slice(&2u32.to_be_bytes());
    png.extend_from_slice(b"\x08\x06\0\0\0 rest of a tiny test image");
    png
}

/// Serves `dir` over HTTP on 127.0.0.1:`port` until dropped.
struct FileServer(std::process::Child);

impl FileServer {
    async fn start(dir: &std::path::Path, port: u16) -> FileServer {
        let python = std::env::var("ISTHMUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let child = std::process::Command::new(python)
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start python -m http.server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the file server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        FileServer(child)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn files_cross_both_ways_and_private_addresses_are_refused() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xfile", "bob@localhost").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    let png = tiny_png();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pixel.png"), &png).unwrap();
    let _server = FileServer::start(dir.path(), 15091).await;
    let wait = Duration::from_secs(30);

    // XMPP → Matrix: an XEP-0066 link (as XEP-0363 uploads send it) becomes an m.image.
    let url = "http://127.0.0.1:15091/pixel.png";
    bob.send_xml(&format!(
        "<message to='{address}' type='chat' xmlns='jabber:client'><body>{url}</body><x xmlns='jabber:x:oob'><url>{url}</url></x></message>"
    ))
    .await;
    let ev = alice
        .wait_for_event(&room, "bob's image", wait, |e| {
            e["content"]["msgtype"] == "m.image"
        })
        .await;
    assert_eq!(ev["sender"], ghost.as_str());
    let c = &ev["content"];
    assert_eq!(c["info"]["mimetype"], "image/png", "{c}");
    assert_eq!(c["info"]["w"], 3, "{c}");
    assert_eq!(c["info"]["h"], 2, "{c}");
    assert_eq!(c["info"]["size"], png.len(), "{c}");
    assert_eq!(c["filename"], "pixel.png", "{c}");
    let stored = alice.download(c["url"].as_str().unwrap()).await;
    assert_eq!(stored, png, "the file on Matrix is the one bob sent");

    // A link to a non-public address that the config does not allow is not fetched: the
    // message arrives as text with the link and the reason.
    let private = "http://127.0.0.2:15091/pixel.png";
    bob.send_xml(&format!(
        "<message to='{address}' type='chat' xmlns='jabber:client'><body>{private}</body><x xmlns='jabber:x:oob'><url>{private}</url></x></message>"
    ))
    .await;
    let ev = alice
        .wait_for_event(&room, "the refused file as text", wait, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(private))
        })
        .await;
    let body = ev["content"]["body"].as_str().unwrap();
    assert!(
        body.contains("not bridged") && body.contains("non-public"),
        "{body}"
    );

    // Matrix → XMPP: the file goes as a signed link to the bridge, with XEP-0066 data.
    let mxc = alice.upload(png.clone(), "image/png").await;
    alice
        .send(
            &room,
            "m.room.message",
            &serde_json::json!({"msgtype": "m.image", "body": "photo.png", "url": mxc,
                "info": {"mimetype": "image/png", "size": png.len()}}),
        )
        .await;
    let got = bob
        .wait("the image link", |e| {
            e.name() == "message"
                && e.children()
                    .any(|c| c.name() == "body" && c.text().contains("/_isthmus/media/"))
        })
        .await;
    let link = got
        .children()
        .find(|c| c.name() == "x")
        .and_then(|x| x.children().find(|u| u.name() == "url"))
        .map(|u| u.text())
        .expect("XEP-0066 data with the link");
    assert!(
        link.starts_with("http://127.0.0.1:29331/_isthmus/media/"),
        "{link}"
    );
    let resp = reqwest::get(&link).await.unwrap();
    assert_eq!(resp.status(), 200);
    let csp = resp
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(csp.contains("sandbox"), "{csp}");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png);
    // A forged signature is refused.
    let mut parts: Vec<String> = link.split('/').map(str::to_owned).collect();
    let sig = parts.len() - 2;
    parts[sig] = "0".repeat(parts[sig].len());
    let forged = reqwest::get(parts.join("/")).await.unwrap();
    assert_eq!(forged.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn moderation_crosses_both_ways() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let wait = Duration::from_secs(30);
    // bob owns an XMPP group chat (so he is its moderator); alice bridges her own room to it,
    // giving the bot the power to redact there.
    let room_jid = format!("mod{}@conference.localhost", unique());
    let mut bob = XmppUser::login("bob").await;
    bob.open_room(&room_jid, "bob").await;
    let alice = MatrixUser::register("xmod").await;
    let created = alice
        .ok(
            "POST",
            "/createRoom",
            Some(
                &serde_json::json!({"invite": [BOT], "preset": "private_chat",
                "power_level_content_override": {"users": {BOT: 100}}}),
            ),
        )
        .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    alice.wait_joined(&room, BOT, wait).await;
    let reply = command(&alice, &room, &format!("!isthmus bridge xmpp {room_jid}")).await;
    assert!(reply.contains("now bridged"), "{reply}");
    let nick = alice.localpart.clone();
    bob.wait("alice's puppet joining", |e| {
        e.name() == "presence" && e.attr("from") == Some(format!("{room_jid}/{nick}").as_str())
    })
    .await;

    // XMPP → Matrix: bob moderates a message away; it is redacted on Matrix.
    let spam = format!("buy now {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{spam}</body></message>"
    ))
    .await;
    let echoed = bob
        .wait("the room's copy of the spam", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "body" && c.text() == spam)
        })
        .await;
    let stanza_id = echoed
        .children()
        .find(|c| c.name() == "stanza-id")
        .and_then(|c| c.attr("id"))
        .expect("a stanza-id")
        .to_owned();
    let ev = alice
        .wait_for_event(&room, "the spam on Matrix", wait, |e| {
            e["content"]["body"] == spam.as_str()
        })
        .await;
    let spam_event = ev["event_id"].as_str().unwrap().to_owned();
    bob.send_xml(&format!(
        "<iq type='set' to='{room_jid}' id='mod1' xmlns='jabber:client'><apply-to xmlns='urn:xmpp:fasten:0' id='{stanza_id}'><moderate xmlns='urn:xmpp:message-moderate:0'><retract xmlns='urn:xmpp:message-retract:0'/><reason>spam</reason></moderate></apply-to></iq>"
    ))
    .await;
    let deadline = Instant::now() + wait;
    loop {
        let e = alice.event(&room, &spam_event).await;
        if e["content"].as_object().is_some_and(|c| c.is_empty()) {
            let because = &e["unsigned"]["redacted_because"];
            assert_eq!(because["sender"], BOT, "{e}");
            assert!(
                because["content"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("moderator") && r.contains("spam")),
                "{e}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spam was never redacted: {e}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Matrix → XMPP: bob makes alice's puppet a moderator; alice redacts bob's message.
    bob.send_xml(&format!(
        "<iq type='set' to='{room_jid}' id='role1' xmlns='jabber:client'><query xmlns='http://jabber.org/protocol/muc#admin'><item nick='{nick}' role='moderator'/></query></iq>"
    ))
    .await;
    bob.wait("the role change", |e| {
        e.name() == "iq" && e.attr("id") == Some("role1")
    })
    .await;
    let rude = format!("rude words {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{rude}</body></message>"
    ))
    .await;
    let ev = alice
        .wait_for_event(&room, "bob's rude message", wait, |e| {
            e["content"]["body"] == rude.as_str()
        })
        .await;
    alice.redact(&room, ev["event_id"].as_str().unwrap()).await;
    let announced = bob
        .wait("the moderation announcement", |e| {
            e.name() == "message"
                && e.attr("from") == Some(room_jid.as_str())
                && e.children().any(|c| c.name() == "apply-to")
        })
        .await;
    let target = announced
        .children()
        .find(|c| c.name() == "apply-to")
        .and_then(|c| c.attr("id"))
        .unwrap()
        .to_owned();
    assert_ne!(target, stanza_id, "the second message was moderated");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_group_chat_portal_gets_recent_history_in_order() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let room_jid = format!("old{}@conference.localhost", unique());
    let mut bob = XmppUser::login("bob").await;
    bob.open_room(&room_jid, "bob").await;
    let tag = unique();
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for n in 1..=3 {
        bob.send_xml(&format!(
            "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>before the bridge {tag} #{n}</body></message>"
        ))
        .await;
    }
    bob.wait("the room's copy of the last one", |e| {
        e.name() == "message"
            && e.children()
                .any(|c| c.name() == "body" && c.text().ends_with(&format!("{tag} #3")))
    })
    .await;
    // The room had all three by now; the bridge hears of them only after alice's join below.
    let stored_by = common::now_ms() as i64;
    let alice = MatrixUser::register("xhist").await;
    let alias = format!("#_xmpp_{}:localhost", room_jid.replace('@', "=40"));
    let joined = alice
        .ok(
            "POST",
            &format!("/join/{}", enc(&alias)),
            Some(&serde_json::json!({})),
        )
        .await;
    let room = joined["room_id"].as_str().unwrap().to_owned();
    alice
        .wait_for_event(
            &room,
            "the third old message",
            Duration::from_secs(30),
            |e| {
                e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.ends_with(&format!("{tag} #3")))
            },
        )
        .await;
    let events = alice.messages(&room).await;
    let old: Vec<&serde_json::Value> = events
        .iter()
        .rev()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(&tag))
        })
        .collect();
    let bodies: Vec<&str> = old
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        (1..=3)
            .map(|n| format!("before the bridge {tag} #{n}"))
            .collect::<Vec<_>>(),
        "each once, in order"
    );
    // The room's time stamps may have whole seconds only; a time of bridging would be after
    // `stored_by`.
    for e in old {
        let ts = e["origin_server_ts"].as_i64().unwrap();
        assert!(
            ts >= sent_at - 1000 && ts <= stored_by,
            "original time kept: {ts}, sent from {sent_at}, in the room by {stored_by}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn group_chat_retractions_name_the_rooms_stanza_id() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let (mut bob, alice, room_jid, room) = shared_group_chat("sid", "xsid").await;
    let text = format!("soon gone {}", unique());
    let event = alice.send_text(&room, &text).await;
    let got = bob
        .wait("alice's message", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "body" && c.text() == text)
        })
        .await;
    let stanza_id = got
        .children()
        .find(|c| c.name() == "stanza-id" && c.attr("by") == Some(room_jid.as_str()))
        .and_then(|c| c.attr("id"))
        .expect("the room's stanza-id")
        .to_owned();
    // The bridge learns the stanza-id from the room's reflection of the message, which the
    // room sent it before bob's next message; the portal keeps order, so once that message
    // is in Matrix, the stanza-id is known.
    let next = format!("bob after {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{next}</body></message>"
    ))
    .await;
    alice
        .wait_for_event(&room, "bob's next message", Duration::from_secs(20), |e| {
            e["content"]["body"] == next.as_str()
        })
        .await;
    alice.redact(&room, &event).await;
    let retraction = bob
        .wait("the retraction", |e| {
            e.name() == "message" && e.children().any(|c| c.name() == "retract")
        })
        .await;
    let target = retraction
        .children()
        .find(|c| c.name() == "retract")
        .and_then(|c| c.attr("id"))
        .unwrap()
        .to_owned();
    assert_eq!(
        target, stanza_id,
        "XEP-0424 in a group chat names the room's ID"
    );
}

/// The CA that signed Prosody's certificate (made by scripts/prosody.sh).
fn prosody_ca() -> String {
    let ca = format!("{}/prosody/certs/ca.crt", common::stack_dir());
    assert!(
        std::path::Path::new(&ca).exists(),
        "{ca} is missing: start Prosody with scripts/prosody.sh (scripts/test.sh does)"
    );
    ca
}

/// Starts a bridge that lets users log in with their own accounts on the test Prosody.
async fn own_account_bridge() -> BridgeProcess {
    own_account_bridge_with(|cfg| cfg).await
}

/// [`own_account_bridge`] with a further change to its config.
async fn own_account_bridge_with(edit: impl FnOnce(String) -> String) -> BridgeProcess {
    let ca = prosody_ca();
    let bridge = BridgeProcess::start_with(|cfg| {
        assert!(cfg.contains("  xmpp:\n"), "the fixture has no xmpp section");
        edit(cfg.replacen(
            "  xmpp:\n",
            &format!(
                "  xmpp:\n    accounts:\n      ca_file: {ca}\n      allow_hosts: [127.0.0.1]\n"
            ),
            1,
        ))
    })
    .await;
    wait_xmpp_connected(&bridge, 1).await;
    bridge
}

/// `login xmpp` in the management room with Prosody's client port as the server; returns
/// the bot's last answer.
async fn login_xmpp(user: &MatrixUser, mgmt: &str, jid: &str, password: &str) -> String {
    login_xmpp_via(user, mgmt, jid, password, C2S).await
}

/// `login xmpp` with `server` as the server to connect to.
async fn login_xmpp_via(
    user: &MatrixUser,
    mgmt: &str,
    jid: &str,
    password: &str,
    server: &str,
) -> String {
    command(user, mgmt, "login xmpp").await;
    command(user, mgmt, jid).await;
    let after_password = command(user, mgmt, password).await;
    assert!(
        !after_password.contains(password),
        "the bot repeated the password: {after_password}"
    );
    command(user, mgmt, server).await
}

/// A TCP relay to Prosody's client port whose connections the test can cut at once, as a
/// network failure would (no stream end is sent).
struct CutProxy {
    addr: String,
    cut: tokio::sync::watch::Sender<u32>,
}

impl CutProxy {
    async fn start() -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, rx) = tokio::sync::watch::channel(0u32);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let mut rx = rx.clone();
                rx.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(C2S).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut down, &mut up) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        CutProxy { addr, cut }
    }

    /// Drops every relayed connection.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_carries_direct_chats_roster_and_carbons() {
    let _s = serial();
    let bridge = own_account_bridge().await;
    // erin's own client puts bob in erin's roster.
    let mut erin_phone = XmppUser::login("erin").await;
    erin_phone
        .send_xml("<iq type='set' id='roster-1' xmlns='jabber:client'><query xmlns='jabber:iq:roster'><item jid='bob@localhost' name='Bob Roster'/></query></iq>")
        .await;
    erin_phone
        .wait("the roster change", |e| {
            e.name() == "iq" && e.attr("id") == Some("roster-1")
        })
        .await;
    let mut bob = XmppUser::login("bob").await;
    let alice = MatrixUser::register("xown").await;
    let mgmt = management_room(&alice).await;

    // A wrong password is refused, and says so.
    let refused = login_xmpp(&alice, &mgmt, "erin@localhost", "not-erins-password").await;
    assert!(
        refused.to_lowercase().contains("refused") || refused.contains("BAD_CREDENTIALS"),
        "{refused}"
    );
    let done = login_xmpp(&alice, &mgmt, "erin@localhost", "erinpass").await;
    assert!(done.contains("erin@localhost"), "{done}");
    wait_xmpp_connected(&bridge, 2).await;

    // The roster becomes a direct chat with bob's ghost, named from the roster.
    let room = alice.wait_for_invite(Duration::from_secs(20)).await;
    alice.join(&room).await;
    let bob_ghost = xmpp_ghost("bob@localhost");
    alice
        .wait_joined(&room, &bob_ghost, Duration::from_secs(20))
        .await;

    // Matrix → XMPP goes out as erin's own account.
    let text = format!("from alice as erin {}", unique());
    alice.send_text(&room, &text).await;
    let from = bob.wait_message(&text).await;
    assert_eq!(from.to_bare().to_string(), "erin@localhost");

    // XMPP → Matrix: bob answers erin's account.
    let answer = format!("bob to erin {}", unique());
    bob.say("erin@localhost", &answer).await;
    let ev = alice
        .wait_for_event(&room, "bob's answer", Duration::from_secs(20), |e| {
            e["content"]["body"] == answer.as_str()
        })
        .await;
    assert_eq!(ev["sender"], bob_ghost.as_str());

    // What erin writes from another client appears too, from erin's own ghost (carbons).
    let elsewhere = format!("erin from the phone {}", unique());
    erin_phone.say("bob@localhost", &elsewhere).await;
    bob.wait_message(&elsewhere).await;
    let ev = alice
        .wait_for_event(
            &room,
            "erin's message from the phone",
            Duration::from_secs(20),
            |e| e["content"]["body"] == elsewhere.as_str(),
        )
        .await;
    assert_eq!(ev["sender"], xmpp_ghost("erin@localhost").as_str());

    // A forged carbon (from bob, claiming erin sent something) is dropped: a message that
    // follows it arrives, the forgery never does.
    let forged = format!("forged carbon {}", unique());
    bob.send_xml(&format!(
        "<message xmlns='jabber:client' to='erin@localhost' type='chat'><sent xmlns='urn:xmpp:carbons:2'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='erin@localhost/x' to='bob@localhost' type='chat'><body>{forged}</body></message></forwarded></sent></message>"
    ))
    .await;
    let after = format!("after the forgery {}", unique());
    bob.say("erin@localhost", &after).await;
    alice
        .wait_for_event(
            &room,
            "bob's message after the forgery",
            Duration::from_secs(20),
            |e| e["content"]["body"] == after.as_str(),
        )
        .await;
    let timeline = alice.messages(&room).await;
    assert!(
        !timeline
            .iter()
            .any(|e| e["content"]["body"] == forged.as_str()),
        "the forged carbon reached Matrix"
    );

    // A second login with a wrong password is refused and leaves the working one alone.
    let refused = login_xmpp(&alice, &mgmt, "erin@localhost", "wrong-again").await;
    assert!(
        refused.to_lowercase().contains("refused") || refused.contains("BAD_CREDENTIALS"),
        "{refused}"
    );
    let still = format!("still through erin {}", unique());
    bob.say("erin@localhost", &still).await;
    alice
        .wait_for_event(
            &room,
            "a message after the refused login",
            Duration::from_secs(20),
            |e| e["content"]["body"] == still.as_str(),
        )
        .await;

    // Logout ends the account's connection.
    let out = command(&alice, &mgmt, "logout xmpp").await;
    assert!(out.contains("erin"), "{out}");
    wait_xmpp_connected(&bridge, 1).await;
    // The connection itself ends (the metric above is the core's own bookkeeping).
    bridge
        .wait_log("XMPP account session ended", 1, Duration::from_secs(10))
        .await;
    let log = bridge.log();
    assert!(!log.contains("erinpass"), "the password reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_resumes_its_stream_and_loses_nothing_after_a_network_cut() {
    let _s = serial();
    let bridge = own_account_bridge().await;
    let proxy = CutProxy::start().await;
    let mut bob = XmppUser::login("bob").await;
    let alice = MatrixUser::register("xresume").await;
    let mgmt = management_room(&alice).await;
    let done = login_xmpp_via(&alice, &mgmt, "dave@localhost", "davepass", &proxy.addr).await;
    assert!(done.contains("dave@localhost"), "{done}");

    // bob's first message opens the portal.
    let first = format!("bob to dave {}", unique());
    bob.say("dave@localhost", &first).await;
    let room = alice.wait_for_invite(Duration::from_secs(20)).await;
    alice.join(&room).await;
    alice
        .wait_for_event(&room, "bob's first message", Duration::from_secs(20), |e| {
            e["content"]["body"] == first.as_str()
        })
        .await;

    // The network drops the account's connection; bob writes on, and alice too.
    proxy.cut();
    bridge
        .wait_log("XMPP account connection lost", 1, Duration::from_secs(20))
        .await;
    let tag = unique();
    let during: Vec<String> = (1..=5)
        .map(|n| format!("during the cut {n} {tag}"))
        .collect();
    for text in &during {
        bob.say("dave@localhost", text).await;
    }
    let from_alice = format!("alice during the cut {tag}");
    alice.send_text(&room, &from_alice).await;

    // All of bob's arrive once, in order; alice's reaches bob.
    let last = during.last().unwrap().clone();
    alice
        .wait_for_event(&room, "bob's last message", Duration::from_secs(40), |e| {
            e["content"]["body"] == last.as_str()
        })
        .await;
    bob.wait_message(&from_alice).await;
    // Newest first from the homeserver.
    let bodies: Vec<String> = alice
        .messages(&room)
        .await
        .iter()
        .rev()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .filter(|b| b.ends_with(tag.as_str()) && b.starts_with("during"))
        .collect();
    assert_eq!(bodies, during, "each message once, in order");
    let log = bridge.log();
    assert!(
        log.contains("XMPP stream resumed"),
        "the account resumed its stream (XEP-0198) instead of starting a new session"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_catches_up_from_the_archive_after_the_bridge_was_down() {
    let _s = serial();
    let mut bridge = own_account_bridge().await;
    // carol's phone is online for part of the gap: what bob writes then goes there, and
    // into carol's archive.
    let mut carol_phone = XmppUser::login("carol").await;
    let mut bob = XmppUser::login("bob").await;
    let alice = MatrixUser::register("xmam").await;
    let mgmt = management_room(&alice).await;
    // This account connects with direct TLS (XEP-0368) to Prosody's client port + 1; the
    // restart below reconnects the same way from the stored login.
    let done = login_xmpp_via(
        &alice,
        &mgmt,
        "carol@localhost",
        "carolpass",
        "tls:127.0.0.1:15223",
    )
    .await;
    assert!(done.contains("carol@localhost"), "{done}");
    wait_xmpp_connected(&bridge, 2).await;

    let tag = unique();
    let first = format!("before the gap {tag}");
    bob.say("carol@localhost", &first).await;
    let room = alice.wait_for_invite(Duration::from_secs(20)).await;
    alice.join(&room).await;
    alice
        .wait_for_event(&room, "bob's first message", Duration::from_secs(20), |e| {
            e["content"]["body"] == first.as_str()
        })
        .await;
    // And one from alice, which the archive also holds: it must not come back.
    let mine = format!("alice before the gap {tag}");
    alice.send_text(&room, &mine).await;
    bob.wait_message(&mine).await;

    bridge.stop().await;
    let gap_started = common::now_ms();
    let during: Vec<String> = (1..=10)
        .map(|n| format!("during the gap {n} {tag}"))
        .collect();
    // The first half reaches carol's phone; then the phone goes offline too and the second
    // half waits in offline storage (and in the archive).
    for text in &during[..5] {
        bob.say("carol@localhost", text).await;
        carol_phone.wait_message(text).await;
    }
    drop(carol_phone);
    bob.wait_gone("carol@localhost/test").await;
    for text in &during[5..] {
        bob.say("carol@localhost", text).await;
    }
    // Stored before the bridge comes back: they are caught up, not received live.
    bob.ping("localhost").await;
    let restarted = common::now_ms();
    bridge.restart().await;

    let last = during.last().unwrap().clone();
    alice
        .wait_for_event(
            &room,
            "the gap's last message",
            Duration::from_secs(40),
            |e| e["content"]["body"] == last.as_str(),
        )
        .await;
    // A live message after the catch-up: the portal keeps order, so a message of the gap
    // bridged twice (from offline storage and from the archive) would be in the room by then.
    let after = format!("after the gap {tag}");
    bob.say("carol@localhost", &after).await;
    alice
        .wait_for_event(
            &room,
            "the message after the gap",
            Duration::from_secs(20),
            |e| e["content"]["body"] == after.as_str(),
        )
        .await;
    let events = alice.messages(&room).await;
    let ours: Vec<&serde_json::Value> = events
        .iter()
        .rev()
        .filter(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.ends_with(tag.as_str()))
        })
        .collect();
    let bodies: Vec<&str> = ours
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let mut expected = vec![first.as_str(), mine.as_str()];
    expected.extend(during.iter().map(String::as_str));
    expected.push(after.as_str());
    assert_eq!(bodies, expected, "each message once, in order, and no echo");
    assert!(
        bridge.log().contains("archive page bridged"),
        "the gap came from the archive (XEP-0313)"
    );
    for e in ours.iter().filter(|e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.starts_with("during"))
    }) {
        let ts = e["origin_server_ts"].as_u64().unwrap();
        assert!(
            ts >= gap_started.saturating_sub(1000) && ts < restarted,
            "a message from the gap keeps the time it was sent ({ts}, gap {gap_started}..{restarted})"
        );
    }
}

/// The avatar URL of `user`'s profile, as `viewer` sees it.
async fn avatar_of(viewer: &MatrixUser, user: &str) -> Option<String> {
    let (status, v) = viewer
        .call("GET", &format!("/profile/{}", enc(user)), None)
        .await;
    (status == 200)
        .then(|| v["avatar_url"].as_str().map(str::to_owned))
        .flatten()
        .filter(|u| !u.is_empty())
}

/// Waits until `user`'s avatar is set and differs from `before` (a ghost may keep the
/// avatar of an earlier run against the same homeserver); returns it.
async fn wait_new_avatar(viewer: &MatrixUser, user: &str, before: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(url) = avatar_of(viewer, user).await
            && Some(url.as_str()) != before
        {
            return url;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never got a new avatar (still {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn avatars_cross_both_ways_and_an_unchanged_one_is_not_uploaded_again() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let _s = serial();
    let mut bridge = xmpp_bridge().await;
    let mut frank = XmppUser::login("frank").await;
    let picture = tiny_png();
    frank
        .send_xml(&format!(
            "<iq type='set' id='vc-a' xmlns='jabber:client'><vCard xmlns='vcard-temp'><FN>Frank Avatar</FN><PHOTO><TYPE>image/png</TYPE><BINVAL>{}</BINVAL></PHOTO></vCard></iq>",
            b64.encode(&picture)
        ))
        .await;
    frank
        .wait("the vCard stored", |e| e.attr("id") == Some("vc-a"))
        .await;
    let hash = sha1_hex(&picture);
    let alice = MatrixUser::register("xavatar").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    let announce = format!(
        "<presence xmlns='jabber:client' to='{address}'><x xmlns='vcard-temp:x:update'><photo>{hash}</photo></x></presence>"
    );

    // XMPP → Matrix: the announced picture becomes the ghost's avatar.
    let ghost = xmpp_ghost("frank@localhost");
    let before = avatar_of(&alice, &ghost).await;
    frank.send_xml(&announce).await;
    let mxc = wait_new_avatar(&alice, &ghost, before.as_deref()).await;
    assert_eq!(alice.download(&mxc).await, picture);

    // After a restart the same picture is announced again: it is recognised by its hash and
    // not uploaded again.
    bridge.restart().await;
    wait_xmpp_connected(&bridge, 1).await;
    let unchanged = [
        ("direction", "to_matrix"),
        ("type", "avatar"),
        ("result", "unchanged"),
    ];
    let before = bridge.metric("bridge_events_total", &unchanged).await;
    frank.send_xml(&announce).await;
    common::wait_metric(
        &bridge,
        "bridge_events_total",
        &unchanged,
        before + 1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(avatar_of(&alice, &ghost).await, Some(mxc));

    // Matrix → XMPP: alice's avatar and name answer a vCard request to her address.
    let mut mine = tiny_png();
    mine.extend_from_slice(b" alice's own");
    let alice_mxc = alice.upload(mine.clone(), "image/png").await;
    let me = enc(&alice.user_id);
    alice
        .ok(
            "PUT",
            &format!("/profile/{me}/avatar_url"),
            Some(&serde_json::json!({"avatar_url": alice_mxc})),
        )
        .await;
    alice
        .ok(
            "PUT",
            &format!("/profile/{me}/displayname"),
            Some(&serde_json::json!({"displayname": "Alice Avatar"})),
        )
        .await;
    frank
        .send_xml(&format!(
            "<iq type='get' id='vc-b' to='{address}' xmlns='jabber:client'><vCard xmlns='vcard-temp'/></iq>"
        ))
        .await;
    let answer = frank
        .wait("alice's vCard", |e| e.attr("id") == Some("vc-b"))
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    let card = answer
        .children()
        .find(|c| c.name() == "vCard")
        .expect("a vCard");
    let fname = card.children().find(|c| c.name() == "FN").map(|f| f.text());
    assert_eq!(fname.as_deref(), Some("Alice Avatar"));
    let binval = card
        .children()
        .find(|c| c.name() == "PHOTO")
        .and_then(|p| p.children().find(|c| c.name() == "BINVAL"))
        .map(|b| b.text())
        .expect("a picture in the vCard");
    assert_eq!(b64.decode(binval.trim()).unwrap(), mine);
}

/// SHA-1 in hex, as XMPP names avatar pictures.
fn sha1_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `user` publishes `picture` as their avatar (XEP-0084: data, then metadata); `tag` keeps
/// the IQ IDs apart.
async fn publish_avatar(user: &mut XmppUser, picture: &[u8], tag: &str) {
    use base64::Engine;
    let id = sha1_hex(picture);
    let data = base64::engine::general_purpose::STANDARD.encode(picture);
    user.send_xml(&format!(
        "<iq xmlns='jabber:client' type='set' id='data-{tag}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:data'><item id='{id}'><data xmlns='urn:xmpp:avatar:data'>{data}</data></item></publish></pubsub></iq>"
    ))
    .await;
    let data_id = format!("data-{tag}");
    user.wait("the avatar data published", |e| {
        e.attr("id") == Some(data_id.as_str())
    })
    .await;
    user.send_xml(&format!(
        "<iq xmlns='jabber:client' type='set' id='meta-{tag}'><pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='urn:xmpp:avatar:metadata'><item id='{id}'><metadata xmlns='urn:xmpp:avatar:metadata'><info bytes='{}' id='{id}' type='image/png'/></metadata></item></publish></pubsub></iq>",
        picture.len()
    ))
    .await;
    let meta_id = format!("meta-{tag}");
    let published = user
        .wait("the avatar metadata published", |e| {
            e.attr("id") == Some(meta_id.as_str())
        })
        .await;
    assert_eq!(published.attr("type"), Some("result"), "{published:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_reads_contacts_published_avatars() {
    let _s = serial();
    let bridge = own_account_bridge().await;
    // frank (from his own client) sees grace's presence; grace publishes an avatar
    // (XEP-0084).
    let (_frank_phone, mut grace) = frank_sees_grace().await;
    let mut picture = tiny_png();
    picture.extend_from_slice(b" grace's avatar");
    publish_avatar(&mut grace, &picture, "1").await;

    let alice = MatrixUser::register("xpep").await;
    let mgmt = management_room(&alice).await;
    let ghost = xmpp_ghost("grace@localhost");
    let before = avatar_of(&alice, &ghost).await;
    let done = login_xmpp(&alice, &mgmt, "frank@localhost", "frankpass").await;
    assert!(done.contains("frank@localhost"), "{done}");
    let mxc = wait_new_avatar(&alice, &ghost, before.as_deref()).await;
    assert_eq!(alice.download(&mxc).await, picture);

    // A new picture reaches the ghost through the notification the server pushes (the
    // account's caps ask for them): nothing asks again.
    let mut second = tiny_png();
    second.extend_from_slice(b" grace's second avatar");
    publish_avatar(&mut grace, &second, "2").await;
    let mxc2 = wait_new_avatar(&alice, &ghost, Some(&mxc)).await;
    assert_eq!(alice.download(&mxc2).await, second);
    command(&alice, &mgmt, "logout xmpp").await;
    wait_xmpp_connected(&bridge, 1).await;
}

/// frank, from his own client, asks for grace's presence; the server approves it (slixmpp
/// approves by itself) and her presence reaches him. Returns both clients, still connected.
async fn frank_sees_grace() -> (XmppUser, XmppUser) {
    let mut frank_phone = XmppUser::login("frank").await;
    let grace = XmppUser::login("grace").await;
    frank_phone
        .send_xml("<presence xmlns='jabber:client' to='grace@localhost' type='subscribe'/>")
        .await;
    frank_phone
        .wait("grace's presence", |e| {
            e.name() == "presence"
                && e.attr("type").is_none()
                && e.attr("from")
                    .is_some_and(|f| f.starts_with("grace@localhost/"))
        })
        .await;
    (frank_phone, grace)
}

/// What an own account told of its contacts' presence is that login's: once the login is
/// gone, the contact it showed online is no longer kept online (the homeserver's timeout
/// shows it offline), while a contact online through the gateway stays online, its
/// presence kept alive as before.
#[tokio::test(flavor = "multi_thread")]
async fn own_account_presence_ends_with_its_login_and_the_gateways_stays() {
    let _s = serial();
    let bridge = own_account_bridge_with(|cfg| {
        cfg.replacen(
            "  permissions:\n",
            "  presence_refresh_seconds: 4\n  permissions:\n",
            1,
        )
    })
    .await;
    // frank (from his own client) sees grace's presence.
    let (_frank_phone, _grace) = frank_sees_grace().await;

    // dave is online to alice through the gateway.
    let alice = MatrixUser::register("xpvia").await;
    let mut dave = XmppUser::login("dave").await;
    let dave_ghost = xmpp_ghost("dave@localhost");
    let room = alice.create_dm(&dave_ghost).await;
    alice
        .wait_joined(&room, &dave_ghost, Duration::from_secs(20))
        .await;
    let mut p = Presence::new(PresenceType::None);
    p.to = Some(Jid::from_str(&format!("{}@{COMPONENT_DOMAIN}", alice.localpart)).unwrap());
    p.statuses
        .insert(Lang::default(), "through the gateway".into());
    dave.send(p.into()).await;
    ghost_presence_within(&dave_ghost, "online", Duration::from_secs(20)).await;

    // grace is online to alice through frank's account, once alice logs in with it.
    let mgmt = management_room(&alice).await;
    let done = login_xmpp(&alice, &mgmt, "frank@localhost", "frankpass").await;
    assert!(done.contains("frank@localhost"), "{done}");
    let grace_ghost = xmpp_ghost("grace@localhost");
    ghost_presence_within(&grace_ghost, "online", Duration::from_secs(30)).await;

    // The login goes: grace's ghost is left to the homeserver's timeout (30 s after the
    // last update), dave's is kept online through it.
    let out = command(&alice, &mgmt, "logout xmpp").await;
    assert!(out.contains("frank"), "{out}");
    wait_xmpp_connected(&bridge, 1).await;
    ghost_presence_within(&grace_ghost, "offline", Duration::from_secs(75)).await;
    assert_eq!(
        ghost_presence(&dave_ghost).await,
        ("online".to_owned(), Some("through the gateway".to_owned())),
        "the contact online through the gateway"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn own_account_login_through_the_provisioning_api() {
    let _s = serial();
    let bridge = own_account_bridge().await;
    let secret = "provisioning_secret_test";
    let alice = MatrixUser::register("xprov").await;
    let me = alice.user_id.clone();
    let (_, flows) = common::provision("GET", "/login/flows?network=xmpp", &me, None, secret).await;
    assert_eq!(flows["flows"][0]["id"], "password", "{flows}");
    let start = || {
        common::provision(
            "POST",
            "/login/start/password?network=xmpp",
            &me,
            None,
            secret,
        )
    };
    let (status, step) = start().await;
    assert_eq!(status, 200, "{step}");
    let fields: Vec<&str> = step["user_input"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(fields, ["jid", "password", "server"]);
    let submit = |process: String, password: &'static str| {
        let me = me.clone();
        async move {
            common::provision(
                "POST",
                &format!(
                    "/login/step/{}/fields/user_input?network=xmpp",
                    enc(&process)
                ),
                &me,
                Some(serde_json::json!({
                    "jid": "dave@localhost", "password": password, "server": C2S,
                })),
                secret,
            )
            .await
        }
    };
    let process = step["login_id"].as_str().unwrap().to_owned();
    let (status, err) = submit(process, "not-daves").await;
    assert_eq!(
        (status, err["errcode"].as_str()),
        (403, Some("FI.MAU.BAD_CREDENTIALS")),
        "{err}"
    );
    let (_, step) = start().await;
    let process = step["login_id"].as_str().unwrap().to_owned();
    let (status, done) = submit(process, "davepass").await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["type"], "complete", "{done}");
    wait_xmpp_connected(&bridge, 2).await;
    let (_, logins) = common::provision("GET", "/logins", &me, None, secret).await;
    assert!(
        logins["logins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == "dave@localhost" && l["state"] == "CONNECTED"),
        "{logins}"
    );
    let (status, out) =
        common::provision("POST", "/logout/all?network=xmpp", &me, None, secret).await;
    assert_eq!(status, 200, "{out}");
    wait_xmpp_connected(&bridge, 1).await;
}

/// Whether `el` is a `policy-violation` stanza error answering the stanza `id`.
fn is_limit_error(el: &Element, id: &str) -> bool {
    el.attr("type") == Some("error")
        && el.attr("id") == Some(id)
        && el.children().any(|e| {
            e.name() == "error"
                && e.attr("type") == Some("modify")
                && e.children().any(|c| c.name() == "policy-violation")
        })
}

/// One user's stanza over the inbound limits is refused alone: the user gets a stanza error
/// for each (message, IQ), the link stays up, and the same user's next message, sent at
/// once, reaches Matrix. Prosody's own c2s size limit (256 KiB by default) is above the
/// bridge's cap set here, and Prosody has no depth limit, so both stanzas reach the
/// component.
#[tokio::test(flavor = "multi_thread")]
async fn xmpp_stanza_over_the_limits_is_refused_alone() {
    let _s = serial();
    let bridge = BridgeProcess::start_with(|cfg| {
        cfg.replace(
            "      secret: component_secret_test\n",
            "      secret: component_secret_test\n    max_stanza_bytes: 16384\n    max_depth: 32\n",
        )
    })
    .await;
    wait_xmpp_connected(&bridge, 1).await;
    let links_up = bridge.log().matches("XMPP component link up").count();
    let dave = MatrixUser::register("xlimit").await;
    let mut erin = XmppUser::login("erin").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", dave.localpart);

    let nest = |n: usize| {
        format!(
            "{}{}",
            "<a xmlns='urn:example:nest'>".repeat(n),
            "</a>".repeat(n)
        )
    };
    erin.send_xml(&format!(
        "<message to='{address}' id='deep1' type='chat' xmlns='jabber:client'><body>too deep</body>{}</message>",
        nest(100)
    ))
    .await;
    erin.send_xml(&format!(
        "<message to='{address}' id='big1' type='chat' xmlns='jabber:client'><body>{}</body></message>",
        "x".repeat(20_000)
    ))
    .await;
    erin.send_xml(&format!(
        "<iq to='{address}' id='deepiq' type='get' xmlns='jabber:client'><query xmlns='urn:example:q'>{}</query></iq>",
        nest(100)
    ))
    .await;
    let text = format!("right after the bad ones {}", unique());
    erin.say(&address, &text).await;

    for id in ["deep1", "big1", "deepiq"] {
        let el = erin
            .wait(&format!("the stanza error for {id}"), |e| {
                is_limit_error(e, id)
            })
            .await;
        assert_eq!(
            el.attr("from"),
            Some(address.as_str()),
            "the error comes from the address written to"
        );
    }
    let room = dave.wait_for_invite(Duration::from_secs(20)).await;
    dave.join(&room).await;
    let ev = dave
        .wait_for_event(&room, "erin's good message", Duration::from_secs(20), |e| {
            e["content"]["body"] == text.as_str()
                || e["content"]["body"] == "too deep"
                || e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("xxxx"))
        })
        .await;
    assert_eq!(
        ev["content"]["body"],
        text.as_str(),
        "the first message to reach Matrix is the good one"
    );
    assert_eq!(
        bridge.log().matches("XMPP component link up").count(),
        links_up,
        "the component link never reconnected"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_and_subscriptions_to_matrix_users_who_do_not_exist_are_refused() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let run = unique();
    let real = MatrixUser::register("xnx").await;
    let mut grace = XmppUser::login("grace").await;
    let ghost = xmpp_ghost("grace@localhost");
    let rooms_before = common::ghost_rooms(&ghost).await;
    // Ask for the roster, so that Prosody passes roster changes and subscription answers on.
    grace
        .send_xml("<iq type='get' id='roster1' xmlns='jabber:client'><query xmlns='jabber:iq:roster'/></iq>")
        .await;
    grace
        .wait("the roster", |e| e.attr("id") == Some("roster1"))
        .await;
    let bot_local = BOT.trim_start_matches('@').split(':').next().unwrap();
    let missing = [
        format!("nobody{run}"),
        format!("{}x", real.localpart),
        bot_local.to_owned(),
        "_xmpp_dave=40localhost".to_owned(),
    ];
    for (i, local) in missing.iter().enumerate() {
        let address = format!("{local}@{COMPONENT_DOMAIN}");
        // RFC 6121 §8.5.1: a message is answered `service-unavailable`...
        let id = format!("nx{i}-{run}");
        grace
            .send_xml(&format!(
                "<message type='chat' id='{id}' to='{address}' xmlns='jabber:client'><body>anyone?</body></message>"
            ))
            .await;
        let err = grace
            .wait(&format!("the error for the message to {address}"), |e| {
                e.name() == "message" && e.attr("id") == Some(id.as_str())
            })
            .await;
        let xml = String::from(&err);
        assert_eq!(err.attr("type"), Some("error"), "{xml}");
        assert!(xml.contains("service-unavailable"), "{xml}");
        // ... and a subscription request `unsubscribed` (the roster shows no pending ask).
        grace
            .send_xml(&format!(
                "<presence type='subscribe' to='{address}' xmlns='jabber:client'/>"
            ))
            .await;
        let answer = grace
            .wait(
                &format!("the refusal of the subscription to {address}"),
                |e| {
                    let refused = e.name() == "presence"
                        && e.attr("type") == Some("unsubscribed")
                        && e.attr("from")
                            .is_some_and(|f| f.starts_with(address.as_str()));
                    let roster_cleared = e.name() == "iq"
                        && String::from(e).contains(&format!("jid=\"{address}\""))
                        && !String::from(e).contains("ask=")
                        && String::from(e).contains("subscription=\"none\"");
                    refused || roster_cleared
                },
            )
            .await;
        let xml = String::from(&answer);
        assert!(!xml.contains("subscription=\"to\""), "{xml}");
    }
    // Nothing was created for them: grace's ghost is in no new room.
    assert_eq!(common::ghost_rooms(&ghost).await, rooms_before);

    // A user who exists still gets the message.
    let address = format!("{}@{COMPONENT_DOMAIN}", real.localpart);
    let hello = format!("hello real user {run}");
    grace.say(&address, &hello).await;
    let room = real.wait_for_invite(Duration::from_secs(20)).await;
    real.join(&room).await;
    real.wait_for_event(&room, "grace's message", Duration::from_secs(20), |e| {
        e["sender"] == ghost.as_str() && e["content"]["body"] == hello.as_str()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_message_enters_the_group_chat_only_through_the_relay() {
    let _s = serial();
    let ca = prosody_ca();
    let run = unique();
    let relay_local = format!("xrelay{run}");
    let relay_id = format!("@{relay_local}:localhost");
    // The relay's owner manages the portal as a bridge admin (she joined through the alias,
    // without room power).
    let owner_local = format!("xowner{run}");
    let owner_id = format!("@{owner_local}:localhost");
    let bridge = BridgeProcess::start_with(|cfg| {
        common::with_permission(&owner_id, "admin")(common::with_permission(&relay_id, "relay")(
            cfg.replacen(
                "  xmpp:\n",
                &format!(
                    "  xmpp:\n    accounts:\n      ca_file: {ca}\n      allow_hosts: [127.0.0.1]\n"
                ),
                1,
            ),
        ))
    })
    .await;
    wait_xmpp_connected(&bridge, 1).await;
    let room_jid = format!("relay{run}@conference.localhost");
    let mut bob = XmppUser::login("bob").await;
    bob.open_room(&room_jid, "bob").await;
    let owner = MatrixUser::register_as(&owner_local).await;
    let alias = format!("#_xmpp_{}:localhost", room_jid.replace('@', "=40"));
    let joined = owner
        .ok(
            "POST",
            &format!("/join/{}", enc(&alias)),
            Some(&serde_json::json!({})),
        )
        .await;
    let room = joined["room_id"].as_str().expect("room_id").to_owned();
    let owner_occupant = format!("{room_jid}/{owner_local}");
    bob.wait("the owner's puppet joining", |e| {
        e.name() == "presence" && e.attr("from") == Some(owner_occupant.as_str())
    })
    .await;
    let mgmt = management_room(&owner).await;
    let done = login_xmpp(&owner, &mgmt, "frank@localhost", "frankpass").await;
    assert!(done.contains("frank@localhost"), "{done}");
    let relay = MatrixUser::register_as(&relay_local).await;
    relay
        .ok(
            "POST",
            &format!("/join/{}", enc(&alias)),
            Some(&serde_json::json!({})),
        )
        .await;

    // Relay level, no relay: refused with a notice.
    let sent = relay.send_text(&room, "before the relay").await;
    let notice = relay
        .wait_reply(&room, &sent, BOT, Duration::from_secs(20))
        .await;
    assert!(notice.contains("not logged in"), "{notice}");

    let reply = command(&owner, &room, "!isthmus set-relay").await;
    assert!(reply.contains("frank@localhost"), "{reply}");
    let text = format!("relayed {}", unique());
    relay.send_text(&room, &text).await;
    let name = relay
        .displayname_of(&relay_id)
        .await
        .unwrap_or(relay_local.clone());
    let expected = format!("{name}: {text}");
    let her_occupant = format!("{room_jid}/{relay_local}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = bob
            .next_event(left)
            .await
            .unwrap_or_else(|| panic!("bob never saw the relayed message {expected:?}"));
        let Some(xml) = ev["xml"].as_str() else {
            continue;
        };
        let el = parse_stanza(xml);
        assert_ne!(
            el.attr("from"),
            Some(her_occupant.as_str()),
            "the relay-level user entered the group chat under her own address: {xml}"
        );
        if el.name() == "message"
            && el
                .children()
                .any(|c| c.name() == "body" && c.text() == expected)
        {
            assert_eq!(el.attr("from"), Some(owner_occupant.as_str()), "{xml}");
            break;
        }
    }

    // The owner (admin level) still speaks as herself.
    let own = format!("owner speaks {}", unique());
    owner.send_text(&room, &own).await;
    let from = bob.wait_message(&own).await;
    assert_eq!(from.to_string(), owner_occupant);
}

/// Counts the times the bridge logged its component link coming up.
fn link_ups(bridge: &BridgeProcess) -> usize {
    bridge.log().matches("XMPP component link up").count()
}

/// Whatever characters a Matrix message or display name holds, what reaches XMPP is legal XML:
/// characters XML cannot carry arrive replaced, the chat goes on, and the component link that
/// every user shares never drops.
#[tokio::test(flavor = "multi_thread")]
async fn characters_xml_cannot_carry_never_hold_a_chat_or_drop_the_link() {
    let _s = serial();
    let bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let mut carol = XmppUser::login("carol").await;
    let (alice, room, _) = dm_with("xctl", "bob@localhost").await;
    let (dave, room2, _) = dm_with("xctl2", "carol@localhost").await;
    let ups = link_ups(&bridge);
    // A display name with control characters rides on every message as a nick.
    alice
        .ok(
            "PUT",
            &format!("/profile/{}/displayname", enc(&alice.user_id)),
            Some(&serde_json::json!({"displayname": "Al\u{7}ice\u{1b}[31m"})),
        )
        .await;
    let cases = [
        ("\u{1}", "\u{FFFD}"),
        ("\u{8}\u{B}\u{C}", "\u{FFFD}\u{FFFD}\u{FFFD}"),
        ("\u{1F}", "\u{FFFD}"),
        ("\u{FFFE}", "\u{FFFD}"),
        ("\u{FFFF}", "\u{FFFD}"),
        ("tab\tkept", "tab\tkept"),
    ];
    for (n, (bad, shown)) in cases.iter().enumerate() {
        let tag = unique();
        alice
            .send(
                &room,
                "m.room.message",
                &serde_json::json!({
                    "msgtype": "m.text",
                    "body": format!("{tag} a{bad}b"),
                    "format": "org.matrix.custom.html",
                    "formatted_body": format!("<b>{tag}</b> a{bad}b"),
                }),
            )
            .await;
        bob.wait(
            &format!("case {n}: the message with {bad:?} replaced"),
            |e| {
                e.name() == "message"
                    && e.children()
                        .any(|c| c.name() == "body" && c.text() == format!("*{tag}* a{shown}b"))
            },
        )
        .await;
        // Another user's chat over the same link is not disturbed.
        let other = format!("still here {}", unique());
        dave.send_text(&room2, &other).await;
        carol.wait_message(&other).await;
    }
    assert_eq!(
        link_ups(&bridge),
        ups,
        "the component link never dropped; log:\n{}",
        bridge.log_tail(30)
    );
}

/// A message from XMPP larger than the homeserver takes in one event arrives in parts, in
/// order, whole; the sender gets no error.
#[tokio::test(flavor = "multi_thread")]
async fn a_remote_message_too_large_for_one_event_arrives_in_parts() {
    let _s = serial();
    let _bridge = xmpp_bridge().await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xbig", "bob@localhost").await;
    let gateway = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    // Lines of text, about 150 KB: over Synapse's 64 KiB event limit, under Prosody's
    // 256 KiB stanza limit and the bridge's own cap.
    let tag = unique();
    let mut body = String::new();
    let mut line = 0;
    while body.len() < 150_000 {
        body.push_str(&format!("{tag} line {line:05} of a long message, é ü ✓\n"));
        line += 1;
    }
    bob.say(&gateway, &body).await;
    let after = format!("after the long one {}", unique());
    bob.say(&gateway, &after).await;
    let end = alice
        .wait_for_event(&room, "the message after", Duration::from_secs(60), |e| {
            e["content"]["body"] == after.as_str()
        })
        .await;
    let _ = end;
    let mut events = alice.messages(&room).await;
    events.reverse();
    let parts: Vec<String> = events
        .iter()
        .filter(|e| e["sender"] == ghost.as_str())
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.contains(&tag))
        .map(str::to_owned)
        .collect();
    assert!(parts.len() >= 3, "in several parts: {}", parts.len());
    assert_eq!(
        parts.concat(),
        body,
        "the parts join into the message, in order"
    );
    // No error went back to bob: one would have been sent while the portal handled his
    // message, before alice's answer, which comes after it on the same queue and link.
    let answer = format!("got it {}", unique());
    alice.send_text(&room, &answer).await;
    let (earlier, _) = bob
        .wait_with_earlier("alice's answer", |e| {
            e.name() == "message"
                && e.children()
                    .any(|c| c.name() == "body" && c.text() == answer)
        })
        .await;
    let errors: Vec<String> = earlier
        .iter()
        .filter(|e| e.attr("type") == Some("error"))
        .map(String::from)
        .collect();
    assert!(
        errors.is_empty(),
        "the sender was told something failed: {errors:?}"
    );
}

/// A small filesystem of its own for a bridge's store, so that a test can fill it up; unmounted
/// when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("isthmus-disk-")
            .tempdir()
            .expect("a folder to mount on");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={megabytes}m,mode=700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "could not mount a tmpfs for the store (the tests run as root: scripts/test.sh)"
        );
        SmallDisk { dir }
    }

    fn store(&self) -> std::path::PathBuf {
        self.dir.path().join("store")
    }

    /// Fills the filesystem until writes fail.
    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=100000"])
            .arg(format!("of={}", self.dir.path().join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.dir.path().join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The bridge's store cannot write for a while (its disk is full): nothing is acknowledged
/// that was not stored. XMPP senders get a temporary error or their message arrives, never
/// silence; the bridge says it is not ready; the homeserver's transactions are refused and
/// come again; once the disk has room, what Matrix sent meanwhile arrives exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_loses_nothing_and_tells_every_sender() {
    let _s = serial();
    let disk = SmallDisk::mount(48);
    let store = disk.store();
    let mut bridge = BridgeProcess::start_with(move |cfg: String| {
        cfg.lines()
            .map(|l| {
                if l.trim_start().starts_with("path: ") && l.contains("isthmus-test-") {
                    format!("  path: {}", store.display())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    })
    .await;
    wait_xmpp_connected(&bridge, 1).await;
    let mut bob = XmppUser::login("bob").await;
    let (alice, room, ghost) = dm_with("xdisk", "bob@localhost").await;
    let gateway = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);
    let hello = format!("before the disk fills {}", unique());
    bob.say(&gateway, &hello).await;
    alice
        .wait_for_event(&room, "bob's first message", Duration::from_secs(20), |e| {
            e["content"]["body"] == hello.as_str()
        })
        .await;

    disk.fill();
    // bob writes until the bridge refuses one; each is either refused or bridged.
    let mut refused = None;
    let mut sent = Vec::new();
    for n in 0..40 {
        let body = format!("while the disk is full {n} {}", unique());
        let mut m = Message::new(Some(Jid::from_str(&gateway).unwrap()));
        m.type_ = MessageType::Chat;
        let id = unique();
        m.id = Some(tokio_xmpp::parsers::message::Id(id.clone()));
        m.bodies.insert(Lang::default(), body.clone());
        bob.send(m.into()).await;
        sent.push((id.clone(), body));
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(ev) = bob.next_event(left).await else {
                break;
            };
            if let Some(xml) = ev["xml"].as_str() {
                let el = parse_stanza(xml);
                if el.name() == "message"
                    && el.attr("type") == Some("error")
                    && el.attr("id") == Some(id.as_str())
                {
                    assert!(
                        xml.contains("resource-constraint") && xml.contains("wait"),
                        "a temporary error: {xml}"
                    );
                    refused = Some(id.clone());
                }
            }
        }
        if refused.is_some() {
            break;
        }
    }
    let refused = refused.expect("the bridge refused nothing although its disk was full");
    let health = common::http()
        .get(format!("{}/_matrix/mau/ready", common::AS_URL))
        .send()
        .await
        .expect("GET ready");
    assert_eq!(
        health.status().as_u16(),
        503,
        "not ready while the store cannot write"
    );
    // Matrix writes meanwhile: the homeserver's transaction is refused and sent again later.
    let from_matrix = format!("from matrix while the disk is full {}", unique());
    alice.send_text(&room, &from_matrix).await;

    disk.free();
    // The bridge recovers by itself, or stops for its service manager to start it again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = bridge.exited() {
            assert!(!status.success(), "it stops with an error: {status}");
            assert!(
                bridge.log().contains("the store cannot recover"),
                "it says why:\n{}",
                bridge.log_tail(20)
            );
            bridge.restart().await;
            wait_xmpp_connected(&bridge, 1).await;
            break;
        }
        let ready = common::http()
            .get(format!("{}/_matrix/mau/ready", common::AS_URL))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "neither recovered nor stopped within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bob.wait_message(&from_matrix).await;
    let after = format!("after the disk has room {}", unique());
    bob.say(&gateway, &after).await;
    alice
        .wait_for_event(&room, "bob's message after", Duration::from_secs(30), |e| {
            e["content"]["body"] == after.as_str()
        })
        .await;
    // Every message bob sent is in Matrix exactly once, or was refused with an error.
    let events = alice.messages(&room).await;
    for (id, body) in &sent {
        let n = events
            .iter()
            .filter(|e| e["sender"] == ghost.as_str() && e["content"]["body"] == body.as_str())
            .count();
        if *id == refused {
            assert_eq!(n, 0, "the refused message is not in Matrix");
        } else {
            assert_eq!(n, 1, "{body:?} was taken, so it arrived, once");
        }
    }
    let copies = events
        .iter()
        .filter(|e| e["content"]["body"] == from_matrix.as_str())
        .count();
    assert_eq!(copies, 1, "alice's message is in her room once");
}

/// Starts a bridge whose `bridge.limits` has `limit` set to `value`; waits for the XMPP link.
async fn limited_bridge(limit: &str, value: &str) -> BridgeProcess {
    let (limit, value) = (limit.to_owned(), value.to_owned());
    let bridge = BridgeProcess::start_with(move |cfg| {
        cfg.replace(
            "bridge:\n",
            &format!("bridge:\n  limits:\n    {limit}: {value}\n"),
        )
    })
    .await;
    wait_xmpp_connected(&bridge, 1).await;
    bridge
}

/// How many creations the limit `bridge.limits.<what>` has refused so far.
async fn limit_refusals(bridge: &BridgeProcess, what: &str) -> f64 {
    bridge
        .metric("bridge_rate_limited_total", &[("what", what)])
        .await
}

/// Distinct XMPP senders of one server opening chats with a Matrix user: past the limit, each
/// gets an error stanza for its message and no room is made; the chats opened before still
/// carry messages.
#[tokio::test(flavor = "multi_thread")]
async fn xmpp_senders_over_the_new_chat_limit_get_an_error_stanza() {
    let _s = serial();
    let bridge = limited_bridge(
        "portals_per_domain",
        "{rate: 1, per_seconds: 3600, burst: 2}",
    )
    .await;
    let refused_before = limit_refusals(&bridge, "portals_per_domain").await;
    let alice = MatrixUser::register("xflood").await;
    let address = format!("{}@{COMPONENT_DOMAIN}", alice.localpart);

    // bob and carol (of localhost) open the two chats the limit allows.
    let mut bob = XmppUser::login("bob").await;
    let mut carol = XmppUser::login("carol").await;
    let mut rooms = Vec::new();
    for (name, user) in [("bob", &mut bob), ("carol", &mut carol)] {
        let text = format!("first from {name} {}", unique());
        user.say(&address, &text).await;
        let room = alice.wait_for_invite(Duration::from_secs(20)).await;
        alice.join(&room).await;
        alice
            .wait_for_event(
                &room,
                &format!("{name}'s first message"),
                Duration::from_secs(20),
                |e| e["content"]["body"] == text.as_str(),
            )
            .await;
        rooms.push(room);
    }

    // dave and erin, of the same server, are told.
    for name in ["dave", "erin"] {
        let mut user = XmppUser::login(name).await;
        let id = format!("flood{}", unique());
        user.send_xml(&format!(
            "<message to='{address}' id='{id}' type='chat' xmlns='jabber:client'><body>hello from {name}</body></message>"
        ))
        .await;
        let el = user
            .wait(&format!("the error for {name}'s message"), |e| {
                e.name() == "message"
                    && e.attr("type") == Some("error")
                    && e.attr("id") == Some(id.as_str())
            })
            .await;
        assert_eq!(el.attr("from"), Some(address.as_str()));
        let xml = String::from(&el);
        assert!(
            xml.contains("too many new chats from your server; try again later"),
            "{xml}"
        );
    }
    assert_eq!(
        limit_refusals(&bridge, "portals_per_domain").await - refused_before,
        2.0,
        "both refusals are counted"
    );

    // bob's chat, opened before, is not limited.
    let again = format!("bob again {}", unique());
    bob.say(&address, &again).await;
    alice
        .wait_for_event(
            &rooms[0],
            "bob's later message",
            Duration::from_secs(20),
            |e| e["content"]["body"] == again.as_str(),
        )
        .await;
    // And no room was made for dave or erin: the only invites were bob's and carol's.
    let v = alice.ok("GET", "/sync?timeout=0", None).await;
    let invited = v["rooms"]["invite"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(invited, 0, "{}", v["rooms"]["invite"]);
}

/// An occupant of a group chat cycling nicks makes joins the bridge bounds: no more ghosts
/// join the room than the limit allows, yet a message from the occupant under a nick whose
/// join was dropped still arrives, from its ghost.
#[tokio::test(flavor = "multi_thread")]
async fn group_chat_nick_churn_is_bounded_and_messages_still_arrive() {
    let _s = serial();
    let bridge = limited_bridge(
        "ghosts_per_domain",
        "{rate: 1, per_seconds: 3600, burst: 3}",
    )
    .await;
    let refused_before = limit_refusals(&bridge, "ghosts_per_domain").await;
    let (mut bob, alice, room_jid, room) = shared_group_chat("churn", "xchurn").await;

    for i in 0..10 {
        let nick = format!("n{i}");
        bob.open_room(&room_jid, &nick).await;
    }
    let hello = format!("hello after the churn {}", unique());
    bob.send_xml(&format!(
        "<message to='{room_jid}' type='groupchat' xmlns='jabber:client'><body>{hello}</body></message>"
    ))
    .await;
    let prefix = format!("@_xmpp_{}=2f", room_jid.replace('@', "=40"));
    let last = format!("{prefix}n9:localhost");
    let ev = alice
        .wait_for_event(
            &room,
            "the message from the last nick",
            Duration::from_secs(30),
            |e| e["content"]["body"] == hello.as_str(),
        )
        .await;
    assert_eq!(ev["sender"], last.as_str());

    // The room's queue is ordered: every join before the message was handled by now.
    let mut joined: Vec<String> = alice
        .messages(&room)
        .await
        .iter()
        .filter(|e| {
            e["type"] == "m.room.member"
                && e["content"]["membership"] == "join"
                && e["state_key"]
                    .as_str()
                    .is_some_and(|k| k.starts_with(&prefix))
        })
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect();
    joined.sort();
    joined.dedup();
    assert!(
        joined.len() <= 4 && joined.contains(&last),
        "at most the 3 ghosts the limit allows plus the one who wrote joined: {joined:?}"
    );
    // Ten joins against a burst of three.
    let refusals = limit_refusals(&bridge, "ghosts_per_domain").await - refused_before;
    assert!(
        refusals >= 7.0,
        "at least 7 of the 10 joins are refused: {refusals}"
    );
}

/// `bridge.limits` allowing one new ghost per remote domain from joins and one from
/// messages, so that a third new occupant's message is refused.
fn one_new_ghost_each(cfg: String) -> String {
    let one = "{rate: 1, per_seconds: 3600, burst: 1}";
    cfg.replace(
        "bridge:\n",
        &format!(
            "bridge:\n  limits:\n    ghosts_per_domain: {one}\n    message_ghosts_per_domain: {one}\n"
        ),
    )
}

/// A message in a Matrix room hosted as a group chat that the bridge refuses (here: its
/// sender would be one new user too many) is answered with an error message from the room,
/// carrying the message's ID, at the occupant's own address; the room goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_in_a_hosted_room_is_answered_with_an_error() {
    let _s = serial();
    let alice = MatrixUser::register("xhostrefuse").await;
    let hosted = HostedRoom::create(&alice, "hostedrefuse", None).await;
    let bridge = hosted.bridge(one_new_ghost_each).await;
    let refused_before = limit_refusals(&bridge, "message_ghosts_per_domain").await;
    let (room, muc) = (hosted.room.clone(), hosted.muc.clone());
    let join = |nick: &str| {
        format!(
            "<presence to='{muc}/{nick}' xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'/></presence>"
        )
    };
    let say = |id: &str, body: &str| {
        format!(
            "<message to='{muc}' id='{id}' type='groupchat' xmlns='jabber:client'><body>{body}</body></message>"
        )
    };
    let own_presence = |nick: &str| {
        let me = format!("{muc}/{nick}");
        move |e: &Element| e.name() == "presence" && e.attr("from") == Some(me.as_str())
    };

    // carol's join makes the one ghost joins may make; dave's message the one messages may.
    let mut carol = XmppUser::login("carol").await;
    carol.send_xml(&join("carol")).await;
    carol
        .wait("carol's own presence", own_presence("carol"))
        .await;
    alice
        .wait_joined(
            &room,
            &xmpp_ghost("carol@localhost"),
            Duration::from_secs(20),
        )
        .await;
    let mut dave = XmppUser::login("dave").await;
    dave.send_xml(&join("dave")).await;
    dave.wait("dave's own presence", own_presence("dave")).await;
    let from_dave = format!("dave's first {}", unique());
    dave.send_xml(&say(&unique(), &from_dave)).await;
    alice
        .wait_for_event(&room, "dave's message", Duration::from_secs(20), |e| {
            e["content"]["body"] == from_dave.as_str()
        })
        .await;

    // erin is one new user too many: her message is refused, and she is told.
    let mut erin = XmppUser::login("erin").await;
    erin.send_xml(&join("erin")).await;
    erin.wait("erin's own presence", own_presence("erin")).await;
    let id = format!("refused{}", unique());
    let from_erin = format!("erin's refused {}", unique());
    erin.send_xml(&say(&id, &from_erin)).await;
    let el = erin
        .wait("the error for erin's message", |e| {
            e.name() == "message"
                && e.attr("type") == Some("error")
                && e.attr("id") == Some(id.as_str())
        })
        .await;
    assert_eq!(el.attr("from"), Some(muc.as_str()));
    assert_eq!(el.attr("to"), Some("erin@localhost/test"));
    let xml = String::from(&el);
    assert!(
        xml.contains("too many new users from your server; try again later"),
        "{xml}"
    );
    assert_eq!(
        limit_refusals(&bridge, "message_ghosts_per_domain").await - refused_before,
        1.0,
        "the refusal is counted"
    );

    // The room goes on; erin's message is not in it.
    let later = format!("dave's later {}", unique());
    dave.send_xml(&say(&unique(), &later)).await;
    alice
        .wait_for_event(
            &room,
            "dave's later message",
            Duration::from_secs(20),
            |e| e["content"]["body"] == later.as_str(),
        )
        .await;
    assert!(
        !alice
            .messages(&room)
            .await
            .iter()
            .any(|e| e["content"]["body"] == from_erin.as_str()),
        "erin's refused message reached Matrix"
    );
}

/// A message in a group chat hosted elsewhere that the bridge refuses (its sender would be
/// one new user too many) is told to its sender in a private message from the Matrix user's
/// puppet in the room, quoting the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_message_in_an_external_group_chat_is_told_in_private() {
    let _s = serial();
    let bridge = BridgeProcess::start_with(one_new_ghost_each).await;
    wait_xmpp_connected(&bridge, 1).await;
    let refused_before = limit_refusals(&bridge, "message_ghosts_per_domain").await;
    // bob's occupant ghost is the one ghost joins may make.
    let (mut bob, alice, room_jid, room) = shared_group_chat("refuse", "xmucrefuse").await;
    let bob_ghost = format!("@_xmpp_{}=2fbob:localhost", room_jid.replace('@', "=40"));
    alice
        .wait_joined(&room, &bob_ghost, Duration::from_secs(20))
        .await;
    let say = |id: &str, body: &str| {
        format!(
            "<message to='{room_jid}' id='{id}' type='groupchat' xmlns='jabber:client'><body>{body}</body></message>"
        )
    };

    // As `n1`, bob is a new occupant whose message makes the one ghost messages may make.
    bob.open_room(&room_jid, "n1").await;
    let first = format!("first as n1 {}", unique());
    bob.send_xml(&say(&unique(), &first)).await;
    alice
        .wait_for_event(&room, "n1's message", Duration::from_secs(20), |e| {
            e["content"]["body"] == first.as_str()
        })
        .await;

    // As `n2`, one new occupant too many: refused, and told in private.
    bob.open_room(&room_jid, "n2").await;
    let refused = format!("refused as n2 {}", unique());
    bob.send_xml(&say(&unique(), &refused)).await;
    let puppet = format!("{room_jid}/{}", alice.localpart);
    let el = bob
        .wait("the private message about the refused one", |e| {
            e.name() == "message"
                && e.attr("type") == Some("chat")
                && e.attr("from") == Some(puppet.as_str())
        })
        .await;
    assert!(
        el.has_child("x", "http://jabber.org/protocol/muc#user"),
        "a MUC private message: {}",
        String::from(&el)
    );
    let body = el
        .children()
        .find(|c| c.name() == "body")
        .map(|b| b.text())
        .unwrap_or_default();
    assert_eq!(
        body,
        format!(
            "Your message was not bridged to Matrix: too many new users from your server; try again later\n> {refused}"
        )
    );
    assert_eq!(
        limit_refusals(&bridge, "message_ghosts_per_domain").await - refused_before,
        1.0,
        "the refusal is counted"
    );
}
