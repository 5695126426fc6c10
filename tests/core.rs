//! The bridge core end to end: the real `isthmus` binary between a real Synapse and the
//! loopback network, driven as a Matrix user and through the loopback control socket.
//!
//! Needs Synapse with the test registration: run with `scripts/test.sh`. Each test starts its
//! own bridge with a fresh store; the tests take turns because they share fixed ports.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{
    AS_TOKEN, BOT, BridgeProcess, Control, HS_TOKEN, LOOPBACK_PASSWORD, MatrixUser, appservice,
    command, direct_message, enc, ghost, ghost_presence, ghost_presence_within, is_message_op,
    is_text_from, management_room, metric_value, remote_event, serial, unique, wait_metric,
    wait_metric_where, with_permission,
};

/// How long any single expected thing may take.
const WAIT: Duration = Duration::from_secs(20);

/// The user creates a direct chat with the ghost of `contact` and waits until it joined
/// (Synapse delivers room messages to the bridge only from then on).
async fn dm_portal(user: &MatrixUser, contact: &str) -> String {
    let room = user.create_dm(&ghost(contact)).await;
    user.wait_joined(&room, &ghost(contact), WAIT).await;
    room
}

/// Injects a direct message from `from` to `user` and, when the bridge creates the room for
/// it, joins the invite; returns the room and the Matrix event of the message.
async fn receive_first_message(
    control: &mut Control,
    user: &MatrixUser,
    from: &str,
    id: &str,
    body: &str,
) -> (String, Value) {
    control
        .inject(direct_message(from, &user.user_id, id, body))
        .await;
    let room = user.wait_for_invite(WAIT).await;
    user.join(&room).await;
    let event = user
        .wait_for_event(&room, &format!("{body:?} from the ghost"), WAIT, |e| {
            is_text_from(e, &ghost(from), body)
        })
        .await;
    (room, event)
}

/// Logs the user in to loopback as `username` from the management room; returns the event
/// ID of the message that held the password.
async fn loopback_login(user: &MatrixUser, room: &str, username: &str) -> String {
    let reply = command(user, room, "login loopback").await;
    assert!(reply.contains("Send your username"), "{reply}");
    let reply = command(user, room, username).await;
    assert!(reply.contains("Send your password"), "{reply}");
    let password = user.send_text(room, LOOPBACK_PASSWORD).await;
    let reply = user.wait_reply(room, &password, BOT, WAIT).await;
    assert!(
        reply.contains(&format!("Logged in as {username}")),
        "{reply}"
    );
    password
}

/// Whether an event was redacted (its content stripped, the redaction noted).
fn is_redacted(e: &Value) -> bool {
    e["unsigned"]["redacted_because"].is_object()
        && e["content"]
            .as_object()
            .is_some_and(|c| !c.contains_key("body"))
}

/// How many `message` operations with this body the network has seen (the `sent` log of the
/// current bridge process).
async fn count_messages(control: &mut Control, body: &str) -> usize {
    control
        .sent_log()
        .await
        .iter()
        .filter(|op| is_message_op(op, body))
        .count()
}

/// Milliseconds since the Unix epoch, for hand-made events.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Waits until the durable inbox holds at least one item.
async fn wait_inbox_not_empty(bridge: &BridgeProcess) {
    wait_metric_where(bridge, "bridge_inbox_depth", &[], "at least 1", WAIT, |d| {
        d >= 1.0
    })
    .await;
}

/// Sends a sentinel message as `user` into `room` (a portal) and waits until the network has
/// it: the portal's queue keeps order, so everything that reached the bridge for this portal
/// before it has been handled by then, and what did not happen by then will not.
async fn sentinel(control: &mut Control, user: &MatrixUser, room: &str) -> String {
    let body = format!("sentinel {}", unique());
    user.send_text(room, &body).await;
    control
        .wait_sent("the sentinel message", WAIT, |op| is_message_op(op, &body))
        .await;
    body
}

/// The values of `bridge_txn_seconds_count` by result: how many transactions were answered
/// `ok`, as a `duplicate`, or refused as `bad_json`.
fn txn_results(text: &str, result: &str) -> f64 {
    metric_value(text, "bridge_txn_seconds_count", &[("result", result)])
}

#[tokio::test(flavor = "multi_thread")]
async fn dm_from_matrix_reaches_network() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;

    let body = format!("hello bob {}", unique());
    let event_id = alice.send_text(&room, &body).await;
    let op = control
        .wait_sent("alice's message", WAIT, |op| is_message_op(op, &body))
        .await;

    assert_eq!(
        op["portal"],
        json!({"chat": "bob", "kind": "direct", "receiver": alice.user_id})
    );
    assert_eq!(op["message"]["sender"]["user_id"], alice.user_id.as_str());
    assert_eq!(
        op["message"]["sender"]["displayname"],
        alice.localpart.as_str()
    );
    assert_eq!(op["message"]["event_id"], event_id.as_str());
    assert_eq!(op["message"]["content"]["kind"], "text");
    assert_eq!(op["message"]["relayed"], false);
    assert_eq!(op["message"]["reply_to"], Value::Null);
    assert_eq!(op["via"], "bridge");
    assert!(
        op["remote_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("lb-")),
        "{op}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn network_message_reaches_matrix_in_one_room() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let run = unique();

    let first = format!("hi alice {run}");
    let (room, _) =
        receive_first_message(&mut control, &alice, "bob", &format!("m1-{run}"), &first).await;
    let members = alice.joined_members(&room).await;
    assert_eq!(
        members.len(),
        2,
        "a direct chat has two members: {members:?}"
    );
    assert!(members.contains(&ghost("bob")), "{members:?}");
    assert_eq!(
        alice.displayname_of(&ghost("bob")).await.as_deref(),
        Some("Bob (Loopback)")
    );

    let second = format!("are you there? {run}");
    control
        .inject(direct_message(
            "bob",
            &alice.user_id,
            &format!("m2-{run}"),
            &second,
        ))
        .await;
    let event = alice
        .wait_for_event(&room, "the second message in the same room", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &second)
        })
        .await;
    assert_eq!(event["content"]["msgtype"], "m.text");
}

#[tokio::test(flavor = "multi_thread")]
async fn ghost_ids_are_escaped() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;

    // Uppercase → `_` + lowercase, `_` → `__`, other bytes → `=xx`; a-z0-9.- stay.
    let contact = "Dave_O'Neil.x-1";
    let expected = "@_loopback__dave___o=27_neil.x-1:localhost";
    assert_eq!(ghost(contact), expected, "the test's own escaping");
    let body = format!("escaped {}", unique());
    let (room, _) =
        receive_first_message(&mut control, &alice, contact, &format!("m1-{body}"), &body).await;
    let members = alice.joined_members(&room).await;
    assert!(members.iter().any(|m| m == expected), "{members:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_and_redaction_reach_network_with_original_id() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;
    let run = unique();

    // Matrix → network.
    let original = format!("original {run}");
    let event_id = alice.send_text(&room, &original).await;
    let sent = control
        .wait_sent("the original message", WAIT, |op| {
            is_message_op(op, &original)
        })
        .await;
    let remote_id = sent["remote_id"].clone();

    let edited = format!("edited {run}");
    alice.edit(&room, &event_id, &edited).await;
    let edit = control
        .wait_sent("the edit", WAIT, |op| op["op"] == "edit")
        .await;
    assert_eq!(edit["target"], remote_id, "{edit}");
    assert_eq!(edit["content"]["body"], edited.as_str(), "{edit}");
    assert_eq!(edit["sender"]["user_id"], alice.user_id.as_str());

    alice.redact(&room, &event_id).await;
    let redaction = control
        .wait_sent("the redaction", WAIT, |op| op["op"] == "redaction")
        .await;
    assert_eq!(redaction["target"], remote_id, "{redaction}");

    // Network → Matrix.
    let id = format!("m1-{run}");
    let body = format!("typo here {run}");
    control
        .inject(direct_message("bob", &alice.user_id, &id, &body))
        .await;
    let bridged = alice
        .wait_for_event(&room, "bob's message", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &body)
        })
        .await;
    let bridged_id = bridged["event_id"].as_str().expect("event_id").to_owned();

    let fixed = format!("no typo {run}");
    let edit = remote_event(
        "bob",
        "direct",
        &alice.user_id,
        "bob",
        json!({"type": "edit", "target": id, "content": {"kind": "text", "body": fixed}}),
    );
    control.inject(edit).await;
    alice
        .wait_for_event(&room, "an m.replace of bob's message", WAIT, |e| {
            e["sender"] == ghost("bob").as_str()
                && e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.relates_to"]["event_id"] == bridged_id.as_str()
                && e["content"]["m.new_content"]["body"] == fixed.as_str()
        })
        .await;

    let redaction = remote_event(
        "bob",
        "direct",
        &alice.user_id,
        "bob",
        json!({"type": "redaction", "target": id}),
    );
    control.inject(redaction).await;
    alice
        .wait_for_event(&room, "bob's message redacted", WAIT, |e| {
            e["event_id"] == bridged_id.as_str() && is_redacted(e)
        })
        .await;
    let redaction_event = alice
        .wait_for_event(&room, "the redaction event", WAIT, |e| {
            e["type"] == "m.room.redaction"
                && e["sender"] == ghost("bob").as_str()
                && (e["redacts"] == bridged_id.as_str()
                    || e["content"]["redacts"] == bridged_id.as_str())
        })
        .await;
    assert_eq!(redaction_event["room_id"], room.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn reactions_both_ways() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;
    let run = unique();

    let body = format!("react to this {run}");
    let event_id = alice.send_text(&room, &body).await;
    let sent = control
        .wait_sent("alice's message", WAIT, |op| is_message_op(op, &body))
        .await;
    alice.react(&room, &event_id, "👍").await;
    let reaction = control
        .wait_sent("alice's reaction", WAIT, |op| op["op"] == "reaction")
        .await;
    assert_eq!(reaction["target"], sent["remote_id"], "{reaction}");
    assert_eq!(reaction["key"], "👍");
    assert_eq!(reaction["remove"], false);

    let id = format!("m1-{run}");
    let theirs = format!("bob says {run}");
    control
        .inject(direct_message("bob", &alice.user_id, &id, &theirs))
        .await;
    let bridged = alice
        .wait_for_event(&room, "bob's message", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &theirs)
        })
        .await;
    let reaction = remote_event(
        "bob",
        "direct",
        &alice.user_id,
        "bob",
        json!({"type": "reaction", "target": id, "key": "🎉", "remove": false}),
    );
    control.inject(reaction).await;
    alice
        .wait_for_event(&room, "bob's 🎉 reaction", WAIT, |e| {
            let rel = &e["content"]["m.relates_to"];
            e["type"] == "m.reaction"
                && e["sender"] == ghost("bob").as_str()
                && rel["rel_type"] == "m.annotation"
                && rel["event_id"] == bridged["event_id"]
                && rel["key"] == "🎉"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_between_ack_and_handling_delivers_once() {
    let _serial = serial();
    let mut bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;

    control.pause().await;
    let body = format!("survives a crash {}", unique());
    alice.send_text(&room, &body).await;
    // Synapse got its 200 once the transaction is in the inbox.
    wait_inbox_not_empty(&bridge).await;
    assert_eq!(
        count_messages(&mut control, &body).await,
        0,
        "the message reached the network although it was paused"
    );
    bridge.kill();
    drop(control);

    bridge.restart().await;
    let mut control = Control::connect().await;
    control
        .wait_sent("the message after the restart", WAIT, |op| {
            is_message_op(op, &body)
        })
        .await;
    sentinel(&mut control, &alice, &room).await;
    assert_eq!(
        count_messages(&mut control, &body).await,
        1,
        "the message must reach the network exactly once"
    );
}

/// A SIGTERM while a message is on its way to the network: the bridge finishes sending it
/// (a shutdown waits for the portal's queue), removes it from the inbox, flushes the store
/// and exits cleanly within the shutdown bound; so the next start does not send it again.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_finishes_a_message_in_flight() {
    let _serial = serial();
    let mut bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;

    // Each send takes 3 s from now on: the message is on its way when the SIGTERM comes.
    control.slow(3000).await;
    let body = format!("in flight at shutdown {}", unique());
    alice.send_text(&room, &body).await;
    control
        .wait_sending("the message", WAIT, |op| is_message_op(op, &body))
        .await;
    // Exits with success (asserted by `stop`), having waited for the send.
    bridge.stop().await;
    let log = bridge.log();
    assert!(
        log.contains("background tasks finished"),
        "the shutdown did not see its tasks finish; last log lines:\n{}",
        bridge.log_tail(30)
    );
    drop(control);

    bridge.restart().await;
    let mut control = Control::connect().await;
    sentinel(&mut control, &alice, &room).await;
    assert_eq!(
        count_messages(&mut control, &body).await,
        0,
        "the message in flight at shutdown was sent again after the restart: it was cut, \
         not finished"
    );
}

/// A SIGTERM while a message waits to be retried against a failing homeserver (every send
/// answered 502): the shutdown does not wait out the retries (up to six, 16 s with the
/// default policy, or minutes when the homeserver asks for them); the message stays in the
/// inbox and reaches the room after the restart, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_does_not_wait_out_the_homeserver_retries() {
    let _serial = serial();
    let synapse = common::homeserver().await;
    let proxy = common::hs_proxy::HomeserverProxy::start(&synapse).await;
    let through = proxy.url.clone();
    let mut bridge = BridgeProcess::start_with(move |cfg| {
        let line = format!("url: {synapse}");
        assert!(cfg.contains(&line), "the fixture's homeserver URL moved");
        cfg.replace(&line, &format!("url: {through}"))
    })
    .await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let run = unique();
    let (room, _) = receive_first_message(
        &mut control,
        &alice,
        "bob",
        &format!("r1-{run}"),
        &format!("before the outage {run}"),
    )
    .await;

    proxy.fail_sends(true);
    let body = format!("while the homeserver fails {run}");
    control
        .inject(direct_message(
            "bob",
            &alice.user_id,
            &format!("r2-{run}"),
            &body,
        ))
        .await;
    // A first send and a retry refused: the bridge now waits to retry again.
    proxy.wait_refused(2, WAIT).await;
    let stopping = std::time::Instant::now();
    bridge.stop().await;
    let took = stopping.elapsed();
    assert!(
        !bridge.lingered() && took < Duration::from_secs(3),
        "the bridge took {took:?} to stop while a send waited to be retried{}; last log lines:\n{}",
        if bridge.lingered() {
            " and left tasks behind"
        } else {
            ""
        },
        bridge.log_tail(30)
    );

    proxy.fail_sends(false);
    drop(control);
    bridge.restart().await;
    let mut control = Control::connect().await;
    alice
        .wait_for_event(&room, "the message after the restart", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &body)
        })
        .await;
    let last = format!("after the outage {run}");
    control
        .inject(direct_message(
            "bob",
            &alice.user_id,
            &format!("r3-{run}"),
            &last,
        ))
        .await;
    alice
        .wait_for_event(&room, "a message after it", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &last)
        })
        .await;
    let copies = alice
        .messages(&room)
        .await
        .iter()
        .filter(|e| is_text_from(e, &ghost("bob"), &body))
        .count();
    assert_eq!(
        copies, 1,
        "the message retried across the restart reached the room once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_transaction_bridges_once() {
    let _serial = serial();
    let mut bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;

    // A message, which the message map would also keep from going out twice, and a command,
    // whose answer nothing else holds back: answering it again would be a new event, since
    // its transaction ID comes from the inbox sequence of the handling.
    let run = unique();
    let body = format!("sent once {run}");
    let event = |id: String, body: &str| {
        json!({
            "type": "m.room.message",
            "event_id": id,
            "room_id": room,
            "sender": alice.user_id,
            "origin_server_ts": now_ms(),
            "content": {"msgtype": "m.text", "body": body},
            "unsigned": {"age": 1},
        })
    };
    let txn = json!({"events": [
        event(format!("$fake{run}"), &body),
        event(format!("$fakecmd{run}"), "!isthmus version"),
    ]})
    .to_string();
    let answers = async || {
        alice
            .messages(&room)
            .await
            .iter()
            .filter(|e| {
                e["content"]["msgtype"] == "m.notice"
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.starts_with("isthmus "))
            })
            .count()
    };
    let path = format!("/_matrix/app/v1/transactions/replay-{run}");
    for attempt in 1..=2 {
        let answer = appservice("PUT", &path, Some(HS_TOKEN), Some(&txn)).await;
        assert_eq!(answer.status, 200, "attempt {attempt}: {answer:?}");
        assert_eq!(answer.json, json!({}), "attempt {attempt}: {answer:?}");
    }
    control
        .wait_sent("the replayed message", WAIT, |op| is_message_op(op, &body))
        .await;
    sentinel(&mut control, &alice, &room).await;
    assert_eq!(count_messages(&mut control, &body).await, 1);
    assert_eq!(answers().await, 1, "the command is answered once");

    drop(control);
    bridge.restart().await;
    let mut control = Control::connect().await;
    let answer = appservice("PUT", &path, Some(HS_TOKEN), Some(&txn)).await;
    assert_eq!(answer.status, 200, "after restart: {answer:?}");
    sentinel(&mut control, &alice, &room).await;
    assert_eq!(
        count_messages(&mut control, &body).await,
        0,
        "a transaction replayed after a restart must not be bridged again"
    );
    assert_eq!(
        answers().await,
        1,
        "a command replayed after a restart must not be answered again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn appservice_api_rejects_bad_requests() {
    let _serial = serial();
    let bridge = BridgeProcess::start().await;
    let before = bridge.metrics().await;
    let txn = "/_matrix/app/v1/transactions/bad-requests";
    let empty = Some(r#"{"events":[]}"#);

    let wrong = appservice("PUT", txn, Some("not_the_hs_token"), empty).await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    assert_eq!(wrong.json["errcode"], "M_FORBIDDEN", "{wrong:?}");

    let as_token = appservice("PUT", txn, Some(AS_TOKEN), empty).await;
    assert_eq!(
        as_token.status, 403,
        "the as_token is not the hs_token: {as_token:?}"
    );

    let missing = appservice("PUT", txn, None, empty).await;
    assert_eq!(missing.status, 403, "{missing:?}");
    assert_eq!(missing.json["errcode"], "M_FORBIDDEN", "{missing:?}");

    let user = format!("/_matrix/app/v1/users/{}", enc(&ghost("nobody")));
    let query = appservice("GET", &user, None, None).await;
    assert_eq!(query.status, 403, "{query:?}");
    assert_eq!(query.json["errcode"], "M_FORBIDDEN", "{query:?}");

    let unknown = appservice("GET", "/_matrix/app/v1/no-such-thing", Some(HS_TOKEN), None).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    assert_eq!(unknown.json["errcode"], "M_UNRECOGNIZED", "{unknown:?}");

    let method = appservice("GET", txn, Some(HS_TOKEN), None).await;
    assert_eq!(method.status, 405, "{method:?}");
    assert_eq!(method.json["errcode"], "M_UNRECOGNIZED", "{method:?}");

    let broken = appservice("PUT", txn, Some(HS_TOKEN), Some("{\"events\": [")).await;
    assert_eq!(broken.status, 400, "{broken:?}");
    assert_eq!(broken.json["errcode"], "M_NOT_JSON", "{broken:?}");

    let fine = appservice("PUT", txn, Some(HS_TOKEN), empty).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    assert_eq!(fine.json, json!({}));
    let again = appservice("PUT", txn, Some(HS_TOKEN), empty).await;
    assert_eq!((again.status, again.json), (200, json!({})), "a retry");

    let health = appservice("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "{health:?}");

    // `/metrics` needs no token. Counted: the broken body, the transaction and its retry; the
    // refused requests never reached the handler (one that had would have made the first
    // `fine` a duplicate), and the refused user query registered no ghost.
    let metrics = appservice("GET", "/metrics", None, None).await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    let after = &metrics.text;
    let delta = |result: &str| txn_results(after, result) - txn_results(&before, result);
    assert_eq!(delta("bad_json"), 1.0, "{after}");
    assert_eq!(delta("duplicate"), 1.0, "{after}");
    // At least: the homeserver may push transactions of its own meanwhile.
    assert!(delta("ok") >= 1.0, "{after}");
    assert_eq!(
        metric_value(after, "ghosts_total", &[]),
        metric_value(&before, "ghosts_total", &[]),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn user_query_registers_ghost() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let observer = MatrixUser::register("observer").await;
    let dave = ghost(&format!("dave{}", unique()));
    let profile = format!("/profile/{}", enc(&dave));

    let (before, _) = observer.call("GET", &profile, None).await;
    assert_eq!(before, 404, "{dave} must not exist before the query");

    let query = format!("/_matrix/app/v1/users/{}", enc(&dave));
    let answer = appservice("GET", &query, Some(HS_TOKEN), None).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let (after, body) = observer.call("GET", &profile, None).await;
    assert_eq!(after, 200, "{dave} has no profile after the query: {body}");

    let foreign = format!("/_matrix/app/v1/users/{}", enc("@someone:localhost"));
    let answer = appservice("GET", &foreign, Some(HS_TOKEN), None).await;
    assert_eq!(answer.status, 404, "not a ghost: {answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_is_not_bridged_back() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let run = unique();

    let body = format!("only one way {run}");
    let (room, _) =
        receive_first_message(&mut control, &alice, "bob", &format!("m1-{run}"), &body).await;
    // The homeserver sends the ghost's event to the bridge before alice's later one, and an
    // echo that got through would be on the portal's queue before it.
    let sentinel = sentinel(&mut control, &alice, &room).await;
    let echoes: Vec<Value> = control
        .sent_log()
        .await
        .into_iter()
        .filter(|op| op["op"] == "message" && !is_message_op(op, &sentinel))
        .collect();
    assert!(echoes.is_empty(), "echoes reached the network: {echoes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn management_room_commands() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = management_room(&alice).await;

    let help = command(&alice, &room, "help").await;
    assert!(help.contains("start-chat"), "{help}");
    assert!(
        help.contains("`login"),
        "no prefix in the management room: {help}"
    );
    let whoami = command(&alice, &room, "whoami").await;
    assert!(whoami.contains(&alice.user_id), "{whoami}");
    assert!(whoami.contains("User"), "{whoami}");
    assert!(
        whoami.contains(&room),
        "the management room is named: {whoami}"
    );
    let version = command(&alice, &room, "version").await;
    assert!(version.contains("isthmus"), "{version}");
    let status = command(&alice, &room, "status").await;
    assert!(status.contains("Loopback"), "{status}");

    // A wrong password: refused, and the message that held it is redacted anyway.
    let username = format!("alicelb{}", unique());
    let reply = command(&alice, &room, "login loopback").await;
    assert!(reply.contains("Send your username"), "{reply}");
    let reply = command(&alice, &room, &username).await;
    assert!(reply.contains("Send your password"), "{reply}");
    let wrong = alice.send_text(&room, "not-the-password").await;
    let reply = alice.wait_reply(&room, &wrong, BOT, WAIT).await;
    assert!(reply.contains("Login failed"), "{reply}");

    let password = loopback_login(&alice, &room, &username).await;
    for event_id in [&wrong, &password] {
        let event = alice.event(&room, event_id).await;
        assert!(
            is_redacted(&event),
            "the password is still readable: {event}"
        );
    }

    let logins = command(&alice, &room, "logins").await;
    assert!(logins.contains(&username), "{logins}");
    let logout = command(&alice, &room, "logout loopback").await;
    assert!(logout.contains("Logged out"), "{logout}");
    let op = control
        .wait_sent("the logout", WAIT, |op| op["op"] == "logout")
        .await;
    assert_eq!(op["via"], username.as_str());
    let logins = command(&alice, &room, "logins").await;
    assert!(!logins.contains(&username), "{logins}");

    let carol = format!("carol{}", unique());
    let reply = command(&alice, &room, &format!("start-chat loopback {carol}")).await;
    assert!(reply.contains("Started a chat"), "{reply}");
    let dm = alice.wait_for_invite(WAIT).await;
    alice.join(&dm).await;
    let members = alice.joined_members(&dm).await;
    assert!(members.contains(&ghost(&carol)), "{members:?}");

    let unknown = command(&alice, &room, "frobnicate").await;
    assert!(unknown.contains("Unknown command"), "{unknown}");
}

#[tokio::test(flavor = "multi_thread")]
async fn undeliverable_message_is_reported() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;

    control.fail_next_undeliverable("bob does not exist").await;
    let sent = alice.send_text(&room, "are you there?").await;
    let notice = alice.wait_reply(&room, &sent, &ghost("bob"), WAIT).await;
    assert!(notice.contains("could not be delivered"), "{notice}");
    assert!(notice.contains("bob does not exist"), "{notice}");
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_mode() {
    let _serial = serial();
    let relay_local = format!("relay{}", unique());
    let relay_id = format!("@{relay_local}:localhost");
    let _bridge = BridgeProcess::start_with(with_permission(&relay_id, "relay")).await;
    let mut control = Control::connect().await;
    let owner = MatrixUser::register("owner").await;
    let relay = MatrixUser::register_as(&relay_local).await;
    let run = unique();

    let management = management_room(&owner).await;
    let username = format!("ownerlb{run}");
    loopback_login(&owner, &management, &username).await;

    // A group chat on the network: the bot creates its room and invites the owner.
    let chat = format!("#grp{run}");
    let first = format!("hello group {run}");
    let message = remote_event(
        &chat,
        "group",
        &owner.user_id,
        "bob",
        json!({"type": "message", "id": format!("g1-{run}"), "content": {"kind": "text", "body": first}}),
    );
    control.inject(message).await;
    let room = owner.wait_for_invite(WAIT).await;
    owner.join(&room).await;
    owner
        .wait_for_event(&room, "bob's group message", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &first)
        })
        .await;
    relay.join(&room).await;

    let before = relay.send_text(&room, "before relay").await;
    let notice = relay.wait_reply(&room, &before, BOT, WAIT).await;
    assert!(notice.contains("not logged in"), "{notice}");

    let help = command(&owner, &room, "!isthmus help").await;
    assert!(help.contains("!isthmus set-relay"), "{help}");
    let reply = command(&owner, &room, "!isthmus set-relay").await;
    assert!(reply.contains(&username), "{reply}");

    relay.send_text(&room, "hi via relay").await;
    let name = relay
        .displayname_of(&relay_id)
        .await
        .unwrap_or(relay_local.clone());
    let expected = format!("{name}: hi via relay");
    let op = control
        .wait_sent("the relayed message", WAIT, |op| {
            is_message_op(op, &expected)
        })
        .await;
    assert_eq!(op["message"]["relayed"], true, "{op}");
    assert_eq!(op["via"], username.as_str(), "{op}");
    // The relay speaks as its owner; the author is named in the text only.
    assert_eq!(
        op["message"]["sender"]["user_id"],
        owner.user_id.as_str(),
        "{op}"
    );
    assert_eq!(op["portal"]["chat"], chat.as_str(), "{op}");
    assert_eq!(op["portal"]["kind"], "group", "{op}");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_state_changes_reach_the_management_room_debounced() {
    let _serial = serial();
    let _bridge = BridgeProcess::start_with(|cfg| {
        cfg.replace("bridge:\n", "bridge:\n  state_notice_delay_seconds: 2\n")
    })
    .await;
    let mut control = Control::connect().await;
    let user = MatrixUser::register("state").await;
    let room = management_room(&user).await;
    let other = MatrixUser::register("state").await;
    let other_room = management_room(&other).await;
    let state_of = |u: &MatrixUser, s: &str| json!({"op": "state", "user": u.user_id, "state": s});
    let state = |s: &str| state_of(&user, s);
    let notices = |events: &[Value], needle: &str| {
        events
            .iter()
            .filter(|e| {
                e["sender"] == BOT
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains(needle))
            })
            .count()
    };

    // A blip shorter than the delay: no notice at all. The proof that none is coming: another
    // user's disconnection, reported after the blip ended and left to last, is announced by
    // a timer of the same length started later, so its notice comes after the blip's would.
    control.ok(state("TRANSIENT_DISCONNECT")).await;
    control.ok(state("CONNECTED")).await;
    control.ok(state_of(&other, "TRANSIENT_DISCONNECT")).await;
    other
        .wait_for_event(&other_room, "the other user's notice", WAIT, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("connection lost"))
        })
        .await;
    let events = user.messages(&room).await;
    assert_eq!(
        notices(&events, "connection lost"),
        0,
        "a short blip is not announced"
    );
    assert_eq!(notices(&events, "connected again"), 0);

    // A lasting disconnection is announced, and so is the recovery.
    control.ok(state("TRANSIENT_DISCONNECT")).await;
    user.wait_for_event(&room, "the disconnection notice", WAIT, |e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("connection lost"))
    })
    .await;
    control.ok(state("CONNECTED")).await;
    user.wait_for_event(&room, "the recovery notice", WAIT, |e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("connected again"))
    })
    .await;

    // A blip, then at once a disconnection that lasts: one notice, not one per timer. The
    // proof that no second one is coming: the other user's disconnection, reported after
    // both of this user's timers started, is announced after both fired.
    let lost_before = notices(&user.messages(&room).await, "connection lost");
    control.ok(state("TRANSIENT_DISCONNECT")).await;
    control.ok(state("CONNECTED")).await;
    control.ok(state("TRANSIENT_DISCONNECT")).await;
    let other_lost = notices(&other.messages(&other_room).await, "connection lost");
    control.ok(state_of(&other, "CONNECTED")).await;
    control.ok(state_of(&other, "TRANSIENT_DISCONNECT")).await;
    let deadline = std::time::Instant::now() + WAIT;
    while notices(&other.messages(&other_room).await, "connection lost") <= other_lost {
        assert!(
            std::time::Instant::now() < deadline,
            "the other user's second disconnection was not announced within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        notices(&user.messages(&room).await, "connection lost") - lost_before,
        1,
        "a blip and the disconnection right after it are announced once"
    );
    control.ok(state("CONNECTED")).await;
    user.wait_for_event(&room, "the second recovery notice", WAIT, |e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("connected again"))
    })
    .await;

    // Refused credentials: told at once, with what to do.
    control.ok(state("BAD_CREDENTIALS")).await;
    let ev = user
        .wait_for_event(&room, "the bad credentials notice", WAIT, |e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("refused"))
        })
        .await;
    assert!(
        ev["content"]["body"]
            .as_str()
            .unwrap()
            .contains("login loopback")
    );
}

/// Every file under `dir`, folders included, depth first.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the store folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_login_password_never_reaches_the_store_files() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = serial();
    let mut bridge = BridgeProcess::start().await;
    let alice = MatrixUser::register("alice").await;
    let room = management_room(&alice).await;

    let username = format!("alicelb{}", unique());
    loopback_login(&alice, &room, &username).await;
    let logout = command(&alice, &room, "logout loopback").await;
    assert!(logout.contains("Logged out"), "{logout}");
    // A later command was handled, so the password's inbox item was handled and removed.
    let logins = command(&alice, &room, "logins").await;
    assert!(!logins.contains(&username), "{logins}");
    bridge.stop().await;

    let store = bridge.store_dir();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&store), 0o700, "the store folder is owner-only");
    let files = walk(&store);
    assert!(files.iter().any(|p| p.is_file()), "the store has files");
    for path in files {
        if path.is_dir() {
            assert_eq!(mode(&path), 0o700, "{}", path.display());
            continue;
        }
        assert_eq!(mode(&path), 0o600, "{} is not owner-only", path.display());
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes
                .windows(LOOPBACK_PASSWORD.len())
                .any(|w| w == LOOPBACK_PASSWORD.as_bytes()),
            "{} holds the password in clear",
            path.display()
        );
    }
}

/// The content of a (fake) Megolm event: the bridge never reads it.
fn megolm() -> Value {
    json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnAc0ffee",
        "sender_key": "c2VuZGVya2V5",
        "device_id": "TESTDEVICE",
        "session_id": "c2Vzc2lvbg",
    })
}

/// Waits until `bridge_events_total` counts `n` Matrix → network events of `kind` with
/// `result`.
async fn wait_event_count(bridge: &BridgeProcess, kind: &str, result: &str, n: u64) {
    let labels = [
        ("direction", "to_remote"),
        ("type", kind),
        ("result", result),
    ];
    wait_metric(bridge, "bridge_events_total", &labels, n as f64, WAIT).await;
}

/// Turns encryption on in `room` as `user`; returns the state event's ID.
async fn turn_on_encryption(user: &MatrixUser, room: &str) -> String {
    let v = user
        .ok(
            "PUT",
            &format!("/rooms/{}/state/m.room.encryption/", enc(room)),
            Some(&json!({"algorithm": "m.megolm.v1.aes-sha2"})),
        )
        .await;
    v["event_id"].as_str().expect("event_id").to_owned()
}

/// Notices in `room` from `sender` whose body contains `needle`.
async fn notices_with(user: &MatrixUser, room: &str, sender: &str, needle: &str) -> usize {
    user.messages(room)
        .await
        .iter()
        .filter(|e| {
            e["sender"] == sender
                && e["content"]["msgtype"] == "m.notice"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(needle))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn encryption_turned_on_in_a_portal_stops_bridging_and_says_so() {
    let _serial = serial();
    let bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let contact = format!("enc{}", unique());
    let room = dm_portal(&alice, &contact).await;
    let speaker = ghost(&contact);

    // Before: messages cross.
    let before = format!("before encryption {}", unique());
    alice.send_text(&room, &before).await;
    control
        .wait_sent("the message before encryption", WAIT, |op| {
            is_message_op(op, &before)
        })
        .await;

    // Encryption on: the room is told once, and so is the remote chat.
    let state = turn_on_encryption(&alice, &room).await;
    let notice = alice.wait_reply(&room, &state, &speaker, WAIT).await;
    assert!(notice.contains("Encryption was turned on"), "{notice}");
    assert!(notice.contains("no longer cross"), "{notice}");
    let told = |op: &Value| {
        op["op"] == "message"
            && op["portal"]["chat"] == contact.as_str()
            && op["message"]["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("turned on encryption"))
    };
    let op = control
        .wait_sent("the remote side told of the encryption", WAIT, told)
        .await;
    assert_eq!(op["message"]["content"]["kind"], "notice", "{op}");

    // An encrypted message: a notice says it was not bridged; it never reaches the network.
    let encrypted = alice.send(&room, "m.room.encrypted", &megolm()).await;
    let notice = alice.wait_reply(&room, &encrypted, &speaker, WAIT).await;
    assert!(
        notice.contains("encrypted message was not bridged"),
        "{notice}"
    );
    // A second one within minutes gets no second notice; a plain message sent after it
    // is not bridged either, and its handling (same queue) comes after the second's.
    let second = alice.send(&room, "m.room.encrypted", &megolm()).await;
    let marker = format!("plain after encryption {}", unique());
    alice.send_text(&room, &marker).await;
    // Wait until the bridge has handled all three (they share the room's queue).
    wait_event_count(&bridge, "message", "room_encrypted", 1).await;
    wait_event_count(&bridge, "encrypted", "not_bridged", 2).await;
    let sent = control.sent_log().await;
    for id in [&encrypted, &second] {
        assert!(
            !sent
                .iter()
                .any(|op| op["message"]["event_id"] == id.as_str()),
            "an encrypted event reached the network: {sent:?}"
        );
    }
    assert!(
        !sent.iter().any(|op| is_message_op(op, &marker)),
        "{sent:?}"
    );
    assert_eq!(sent.iter().filter(|op| told(op)).count(), 1, "{sent:?}");
    assert_eq!(
        notices_with(&alice, &room, &speaker, "Encryption was turned on").await,
        1
    );
    assert_eq!(
        notices_with(&alice, &room, &speaker, "encrypted message was not bridged").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_room_is_not_bridged() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let alice = MatrixUser::register("alice").await;
    let run = unique();

    // `bridge` in an encrypted room is refused with the reason.
    let room = alice.create_room(&[BOT]).await;
    alice.wait_joined(&room, BOT, WAIT).await;
    turn_on_encryption(&alice, &room).await;
    let reply = command(
        &alice,
        &room,
        &format!("!isthmus bridge loopback #enc{run}"),
    )
    .await;
    assert!(reply.contains("encrypted"), "{reply}");
    assert!(!reply.contains("now bridged"), "{reply}");

    // A ghost invited into an encrypted direct chat says why it cannot chat there, and leaves.
    let contact = format!("encdm{run}");
    let body = json!({
        "invite": [ghost(&contact)],
        "is_direct": true,
        "preset": "trusted_private_chat",
        "initial_state": [{
            "type": "m.room.encryption",
            "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"},
        }],
    });
    let v = alice.ok("POST", "/createRoom", Some(&body)).await;
    let dm = v["room_id"].as_str().expect("room_id").to_owned();
    let said = alice
        .wait_for_event(&dm, "the ghost's refusal", WAIT, |e| {
            e["sender"] == ghost(&contact).as_str()
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("encrypted"))
        })
        .await;
    assert_eq!(said["content"]["msgtype"], "m.notice");
    alice
        .wait_for_event(&dm, "the ghost leaving", WAIT, |e| {
            e["type"] == "m.room.member"
                && e["state_key"] == ghost(&contact).as_str()
                && e["content"]["membership"] == "leave"
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn new_portals_are_unencrypted_and_say_so() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let from = format!("plain{}", unique());
    let (room, _) = receive_first_message(&mut control, &alice, &from, "p1", "hello").await;
    let (status, _) = alice
        .call(
            "GET",
            &format!("/rooms/{}/state/m.room.encryption/", enc(&room)),
            None,
        )
        .await;
    assert_eq!(status, 404, "the bridge created an encrypted room");
    let info = alice.state_event(&room, "m.bridge").await;
    assert!(
        info["content"]["net.isthmus.encryption"]
            .as_str()
            .is_some_and(|s| s.contains("unencrypted")),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_level_sends_only_through_the_identity_it_may_use() {
    let _serial = serial();
    let run = unique();
    let relay_local = format!("lvrelay{run}");
    let admin_local = format!("lvadmin{run}");
    let relay_id = format!("@{relay_local}:localhost");
    let admin_id = format!("@{admin_local}:localhost");
    let _bridge = BridgeProcess::start_with(|cfg| {
        with_permission(&admin_id, "admin")(with_permission(&relay_id, "relay")(cfg))
    })
    .await;
    let mut control = Control::connect().await;
    let owner = MatrixUser::register("lvowner").await;
    let plain = MatrixUser::register("lvuser").await;
    let relay = MatrixUser::register_as(&relay_local).await;
    let admin = MatrixUser::register_as(&admin_local).await;

    let owner_login = format!("lvowner{run}");
    let mgmt = management_room(&owner).await;
    loopback_login(&owner, &mgmt, &owner_login).await;
    let admin_login = format!("lvadmin{run}");
    let mgmt = management_room(&admin).await;
    loopback_login(&admin, &mgmt, &admin_login).await;

    let chat = format!("#lv{run}");
    let first = format!("hello levels {run}");
    control
        .inject(remote_event(
            &chat,
            "group",
            &owner.user_id,
            "bob",
            json!({"type": "message", "id": format!("lv1-{run}"), "content": {"kind": "text", "body": first}}),
        ))
        .await;
    let room = owner.wait_for_invite(WAIT).await;
    owner.join(&room).await;
    let bob_message = owner
        .wait_for_event(&room, "bob's group message", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &first)
        })
        .await;
    let bob_event = bob_message["event_id"].as_str().unwrap().to_owned();
    for u in [&plain, &relay, &admin] {
        owner.invite(&room, &u.user_id).await;
        u.join(&room).await;
    }

    // Relay level, no relay yet: refused with a notice, nothing sent.
    let refused = format!("relay level before set-relay {run}");
    let sent = relay.send_text(&room, &refused).await;
    let notice = relay.wait_reply(&room, &sent, BOT, WAIT).await;
    assert!(notice.contains("not logged in"), "{notice}");

    // User level without a login: the bridge-wide identity, as herself.
    let text = format!("user level {run}");
    plain.send_text(&room, &text).await;
    let op = control
        .wait_sent("the user-level message", WAIT, |op| {
            is_message_op(op, &text)
        })
        .await;
    assert_eq!(op["via"], "bridge", "{op}");
    assert_eq!(op["message"]["relayed"], false, "{op}");
    assert_eq!(op["message"]["sender"]["user_id"], plain.user_id.as_str());

    // Admin with a login: her own login.
    let text = format!("admin level {run}");
    admin.send_text(&room, &text).await;
    let op = control
        .wait_sent("the admin's message", WAIT, |op| is_message_op(op, &text))
        .await;
    assert_eq!(op["via"], admin_login.as_str(), "{op}");
    assert_eq!(op["message"]["sender"]["user_id"], admin_id.as_str());

    // Relay level with set-relay: through the relay login, in the relay format, speaking as
    // the relay's owner; a reaction (no text to carry her name) is not sent at all.
    let reply = command(&owner, &room, "!isthmus set-relay").await;
    assert!(reply.contains(&owner_login), "{reply}");
    relay.react(&room, &bob_event, "👍").await;
    relay.send_text(&room, "via the relay").await;
    let name = relay
        .displayname_of(&relay_id)
        .await
        .unwrap_or(relay_local.clone());
    let expected = format!("{name}: via the relay");
    let op = control
        .wait_sent("the relayed message", WAIT, |op| {
            is_message_op(op, &expected)
        })
        .await;
    assert_eq!(op["via"], owner_login.as_str(), "{op}");
    assert_eq!(op["message"]["relayed"], true, "{op}");
    assert_eq!(op["message"]["sender"]["user_id"], owner.user_id.as_str());
    let log = control.sent_log().await;
    assert!(
        !log.iter()
            .any(|op| op["sender"]["user_id"] == relay_id.as_str()
                || op["message"]["sender"]["user_id"] == relay_id.as_str()),
        "something went out as the relay-level user: {log:?}"
    );
}

/// Synapse on SQLite numbers its appservice transactions from 1 again after a restart: what
/// the users send after the restart is bridged anyway, each message exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn everything_after_a_homeserver_restart_is_bridged_exactly_once() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let room = dm_portal(&alice, "bob").await;
    let run = unique();
    let mut bodies = Vec::new();
    for n in 0..3 {
        let body = format!("before the restart {n} {run}");
        alice.send_text(&room, &body).await;
        control
            .wait_sent("a message before the restart", WAIT, |op| {
                is_message_op(op, &body)
            })
            .await;
        bodies.push(body);
    }
    let status = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/synapse.sh"))
        .arg("restart")
        .status()
        .expect("run scripts/synapse.sh restart");
    assert!(status.success(), "scripts/synapse.sh restart failed");
    for n in 0..5 {
        let body = format!("after the restart {n} {run}");
        alice.send_text(&room, &body).await;
        control
            .wait_sent(
                &format!("message {n} after the homeserver restarted"),
                Duration::from_secs(60),
                |op| is_message_op(op, &body),
            )
            .await;
        bodies.push(body);
    }
    for body in &bodies {
        assert_eq!(
            count_messages(&mut control, body).await,
            1,
            "{body:?} reached the network exactly once"
        );
    }
}

/// A message that keeps failing while the network works is set aside after
/// `bridge.quarantine_after_attempts` tries: its sender is told, the portal goes on with the
/// next message, and an admin sends it again with `quarantine retry`. An outage (the link
/// down) does not count: the portal waits and nothing is set aside.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_is_set_aside_without_holding_its_portal() {
    let _serial = serial();
    let alice = MatrixUser::register("qalice").await;
    let admin = with_permission(&alice.user_id, "admin");
    let _bridge = BridgeProcess::start_with(move |cfg| {
        admin(cfg).replacen("bridge:\n", "bridge:\n  quarantine_after_attempts: 3\n", 1)
    })
    .await;
    let mut control = Control::connect().await;
    let room = dm_portal(&alice, "bob").await;
    let run = unique();

    // An outage longer than the bound: waited out, not set aside.
    control.fail_next("down", 4).await;
    let waited = format!("through an outage {run}");
    alice.send_text(&room, &waited).await;
    control
        .wait_sent(
            "the message held by the outage",
            Duration::from_secs(40),
            |op| is_message_op(op, &waited),
        )
        .await;

    // Three passing failures of one message: set aside.
    control.fail_next("transient", 3).await;
    let stuck = format!("keeps failing {run}");
    let stuck_id = alice.send_text(&room, &stuck).await;
    let notice = alice
        .wait_reply(&room, &stuck_id, &ghost("bob"), Duration::from_secs(30))
        .await;
    assert!(
        notice.contains("set aside") && notice.contains("quarantine"),
        "the sender is told: {notice}"
    );
    // The portal goes on.
    let next = format!("the next one {run}");
    alice.send_text(&room, &next).await;
    control
        .wait_sent("the next message", WAIT, |op| is_message_op(op, &next))
        .await;
    assert_eq!(count_messages(&mut control, &stuck).await, 0);

    let mgmt = management_room(&alice).await;
    let listed = command(&alice, &mgmt, "quarantine").await;
    assert!(
        listed.contains("1 item(s)") && listed.contains("injected transient failure"),
        "{listed}"
    );
    let seq = listed
        .lines()
        .find_map(|l| l.strip_prefix("- ")?.split(':').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no item number in {listed}"));
    let sent = command(&alice, &mgmt, &format!("quarantine retry {seq}")).await;
    assert!(sent.contains("Sent 1 item"), "{sent}");
    control
        .wait_sent("the set-aside message, sent again", WAIT, |op| {
            is_message_op(op, &stuck)
        })
        .await;
    assert_eq!(count_messages(&mut control, &stuck).await, 1);
    let empty = command(&alice, &mgmt, "quarantine").await;
    assert!(empty.contains("empty"), "{empty}");
}

/// The `undelivered` operations the network has seen: what each remote sender was told.
async fn told(control: &mut Control) -> Vec<(String, String)> {
    control
        .sent_log()
        .await
        .iter()
        .filter(|op| op["op"] == "undelivered")
        .map(|op| {
            (
                op["event"]["sender"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                op["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_chats_over_the_domain_limit_are_refused_and_their_senders_told() {
    const N: usize = 3;
    let _serial = serial();
    let bridge = BridgeProcess::start_with(|cfg| {
        cfg.replace(
            "bridge:\n",
            "bridge:\n  limits:\n    portals_per_domain: {rate: 1, per_seconds: 3600, burst: 3}\n",
        )
    })
    .await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("flooded").await;

    // A chat that exists before the flood.
    let (old_room, _) =
        receive_first_message(&mut control, &alice, "bob", &unique(), "before the flood").await;

    // N + 5 senders of one group (`name@group` on loopback) write once each.
    let group = format!("flood{}", unique());
    let senders: Vec<String> = (0..N + 5).map(|i| format!("s{i}@{group}")).collect();
    for (i, s) in senders.iter().enumerate() {
        let id = format!("flood-{i}-{}", unique());
        control
            .inject(direct_message(
                s,
                &alice.user_id,
                &id,
                &format!("hello {i}"),
            ))
            .await;
    }

    // Each message either opens a chat or its sender is told: N chats, 5 told.
    let deadline = std::time::Instant::now() + WAIT;
    let refused = loop {
        let t = told(&mut control).await;
        let portals = bridge.metric("portals_total", &[]).await;
        if t.len() >= 5 && portals >= (N + 1) as f64 {
            break t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {WAIT:?} for 5 senders to be told and {N} chats; told: {t:?}, portals: {portals:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The invites pending for the user: one per chat the flood opened.
    let sync = alice.ok("GET", "/sync?timeout=0", None).await;
    let rooms: Vec<String> = sync["rooms"]["invite"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(rooms.len(), N, "{}", sync["rooms"]["invite"]);
    for room in &rooms {
        alice.join(room).await;
    }
    assert_eq!(refused.len(), 5, "{refused:?}");
    for (sender, reason) in &refused {
        assert!(senders.contains(sender), "{sender} was told");
        assert_eq!(
            reason,
            "too many new chats from your server; try again later"
        );
    }
    // Every message is accounted for: no more chats than the limit.
    let text = bridge.metrics().await;
    assert_eq!(
        metric_value(&text, "portals_total", &[]),
        (N + 1) as f64,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            "bridge_rate_limited_total",
            &[("what", "portals_per_domain")]
        ),
        5.0,
        "{text}"
    );

    // What was already bridged is not affected: the chat from before the flood, and a chat
    // the flood opened, carry the next messages.
    let later = format!("after the flood {}", unique());
    control
        .inject(direct_message("bob", &alice.user_id, &unique(), &later))
        .await;
    alice
        .wait_for_event(&old_room, "bob's later message", WAIT, |e| {
            is_text_from(e, &ghost("bob"), &later)
        })
        .await;
    let admitted = senders
        .iter()
        .find(|s| !refused.iter().any(|(r, _)| r == *s))
        .expect("some senders got a chat");
    let mut room_of_admitted = None;
    for room in &rooms {
        if alice.joined_members(room).await.contains(&ghost(admitted)) {
            room_of_admitted = Some(room.clone());
        }
    }
    let room = room_of_admitted.expect("the admitted sender's chat");
    let again = format!("admitted again {}", unique());
    control
        .inject(direct_message(admitted, &alice.user_id, &unique(), &again))
        .await;
    alice
        .wait_for_event(&room, "the admitted sender's second message", WAIT, |e| {
            is_text_from(e, &ghost(admitted), &again)
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mistyped_command_gets_a_suggestion() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let alice = MatrixUser::register("typo").await;
    let room = management_room(&alice).await;
    let reply = command(&alice, &room, "hepl").await;
    assert!(reply.contains("Did you mean `help`?"), "{reply}");
    let reply = command(&alice, &room, "frobnicate").await;
    assert!(
        reply.contains("Unknown command") && !reply.contains("Did you mean"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bot_without_power_says_once_which_level_it_needs() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let alice = MatrixUser::register("weakbot").await;
    // A private room: the invited bot holds power 0, room state takes 50.
    let room = alice.create_room(&[BOT]).await;
    alice.wait_joined(&room, BOT, WAIT).await;
    let is_power_notice = |e: &Value| {
        e["sender"] == BOT
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("power level"))
    };
    let is_bridged = |e: &Value| {
        e["sender"] == BOT
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains("now bridged"))
    };
    let chat = format!("#weak{}", unique());
    alice
        .send_text(&room, &format!("!isthmus bridge loopback {chat}"))
        .await;
    let notice = alice
        .wait_for_event(&room, "the missing-power notice", WAIT, is_power_notice)
        .await;
    let body = notice["content"]["body"].as_str().unwrap();
    assert!(body.contains("needs power level 50"), "{body}");
    assert!(body.contains("have 0"), "{body}");
    alice
        .wait_for_event(&room, "the bridged reply", WAIT, is_bridged)
        .await;

    // Bridged again after an unbridge: the bot still lacks power, and does not say it twice.
    let reply = command(&alice, &room, "!isthmus unbridge").await;
    assert!(
        reply.contains("no longer bridged") || reply.contains("unbridged"),
        "{reply}"
    );
    let again = format!("#weak{}", unique());
    alice
        .send_text(&room, &format!("!isthmus bridge loopback {again}"))
        .await;
    alice
        .wait_for_event(&room, "the second bridged reply", WAIT, |e| {
            is_bridged(e)
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(again.as_str()))
        })
        .await;
    let told = alice
        .messages(&room)
        .await
        .iter()
        .filter(|e| is_power_notice(e))
        .count();
    assert_eq!(told, 1, "the room is told once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_message_in_an_encrypted_portal_is_not_lost_in_silence() {
    let _serial = serial();
    let bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("alice").await;
    let contact = format!("encplain{}", unique());
    let room = dm_portal(&alice, &contact).await;
    let speaker = ghost(&contact);
    let state = turn_on_encryption(&alice, &room).await;
    alice.wait_reply(&room, &state, &speaker, WAIT).await;

    // A client that still sends in clear: not bridged, and the room is told so.
    let plain = format!("plain in an encrypted room {}", unique());
    let sent = alice.send_text(&room, &plain).await;
    let notice = alice.wait_reply(&room, &sent, &speaker, WAIT).await;
    assert!(notice.contains("A message was not bridged"), "{notice}");
    // A second one right after: handled (counted) but no second notice.
    alice.send_text(&room, &format!("{plain} again")).await;
    wait_event_count(&bridge, "message", "room_encrypted", 2).await;
    assert!(
        !control
            .sent_log()
            .await
            .iter()
            .any(|op| is_message_op(op, &plain)),
        "a message in an encrypted room reached the network"
    );
    assert_eq!(
        notices_with(&alice, &room, &speaker, "message was not bridged").await,
        1
    );
}

/// The events of `room` as `ghost` sees them (through the appservice, which speaks for it).
async fn messages_as_ghost(ghost: &str, room: &str) -> Vec<Value> {
    let hs = common::homeserver().await;
    let r = common::http()
        .get(format!(
            "{hs}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100&user_id={}",
            enc(room),
            enc(ghost)
        ))
        .bearer_auth(AS_TOKEN)
        .send()
        .await
        .expect("GET /messages as a ghost");
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["chunk"].as_array().cloned().unwrap_or_default()
}

/// Races, for each of `contacts` in turn, a first remote message from the contact against
/// `open` (the Matrix side opening the direct chat, returning its room), launched together and
/// in alternating order; then checks that each contact has exactly one room, the one `open`
/// answered, holding the message.
async fn one_room_per_contact(
    control: &mut Control,
    receiver: &str,
    contacts: &[String],
    open: impl AsyncFn(&str) -> String,
) {
    let mut opened = Vec::new();
    for (i, contact) in contacts.iter().enumerate() {
        let first = direct_message(contact, receiver, &format!("{contact}-1"), "first");
        let room = if i % 2 == 0 {
            let (room, ()) = tokio::join!(open(contact), control.inject(first));
            room
        } else {
            let ((), room) = tokio::join!(control.inject(first), open(contact));
            room
        };
        opened.push(room);
    }
    // A later message from each contact: a portal keeps order, so once it is in a room, the
    // first message has been handled (and whatever room it made exists).
    for contact in contacts {
        control
            .inject(direct_message(
                contact,
                receiver,
                &format!("{contact}-2"),
                "later",
            ))
            .await;
    }
    let mut doubled = Vec::new();
    for (contact, opened) in contacts.iter().zip(&opened) {
        let g = ghost(contact);
        let deadline = std::time::Instant::now() + WAIT;
        let rooms = loop {
            let rooms = common::ghost_rooms(&g).await;
            let mut later_seen = false;
            for room in &rooms {
                later_seen |= messages_as_ghost(&g, room)
                    .await
                    .iter()
                    .any(|e| is_text_from(e, &g, "later"));
            }
            if later_seen {
                break rooms;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{contact}'s later message reached none of its rooms {rooms:?} in {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if rooms != [opened.clone()] {
            doubled.push(format!("{contact}: opened {opened}, ghost in {rooms:?}"));
            continue;
        }
        let events = messages_as_ghost(&g, opened).await;
        assert!(
            events.iter().any(|e| is_text_from(e, &g, "first")),
            "{contact}'s first message is not in its room {opened}:\n{}",
            common::summarize(&events)
        );
    }
    assert!(
        doubled.is_empty(),
        "{} of {} contacts got more than one room:\n{}",
        doubled.len(),
        contacts.len(),
        doubled.join("\n")
    );
}

/// The room ID in a command's answer.
fn room_in(reply: &str) -> String {
    reply
        .split_whitespace()
        .find(|w| w.starts_with('!'))
        .unwrap_or_else(|| panic!("no room in {reply:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_chat_racing_a_first_message_makes_one_room() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("racer").await;
    let management = management_room(&alice).await;
    let run = unique();
    let contacts: Vec<String> = (0..10).map(|i| format!("race{i}x{run}")).collect();

    one_room_per_contact(&mut control, &alice.user_id, &contacts, async |contact| {
        let reply = command(
            &alice,
            &management,
            &format!("start-chat loopback {contact}"),
        )
        .await;
        assert!(
            reply.contains("Started a chat") || reply.contains("already have a chat"),
            "{reply}"
        );
        room_in(&reply)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioned_dm_racing_a_first_message_makes_one_room() {
    let _serial = serial();
    let _bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let alice = MatrixUser::register("provracer").await;
    let run = unique();
    let contacts: Vec<String> = (0..10).map(|i| format!("prace{i}x{run}")).collect();

    one_room_per_contact(&mut control, &alice.user_id, &contacts, async |contact| {
        let (status, body) = common::provision(
            "POST",
            &format!("/create_dm/{contact}?network=loopback"),
            &alice.user_id,
            None,
            "provisioning_secret_test",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["dm_room_mxid"]
            .as_str()
            .unwrap_or_else(|| panic!("no room in {body}"))
            .to_owned()
    })
    .await;
}

/// A ghost is shared by the portals of every Matrix user its remote user writes to, and each
/// portal has a queue of its own: a picture that several of them learn of at once is uploaded
/// once and set once, and the ones that come after find it set.
#[tokio::test(flavor = "multi_thread")]
async fn a_picture_learnt_by_several_portals_at_once_is_uploaded_once() {
    use base64::Engine;
    let _serial = serial();
    let bridge = BridgeProcess::start().await;
    let mut control = Control::connect().await;
    let run = unique();
    let sender = format!("pic{run}");
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(MatrixUser::register("avpeer").await);
    }
    let mut picture = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x03\0\0\0\x02\x08\x06\0\0\0".to_vec();
    picture.extend_from_slice(run.as_bytes());
    let data = base64::engine::general_purpose::STANDARD.encode(&picture);
    let result = |r| {
        [
            ("direction", "to_matrix"),
            ("type", "avatar"),
            ("result", r),
        ]
    };
    let avatars = [("direction", "to_matrix"), ("type", "avatar")];
    let all = bridge.metric("bridge_events_total", &avatars).await;
    let ok = bridge.metric("bridge_events_total", &result("ok")).await;
    let unchanged = bridge
        .metric("bridge_events_total", &result("unchanged"))
        .await;

    for u in &users {
        control
            .inject(remote_event(
                &sender,
                "direct",
                &u.user_id,
                &sender,
                json!({"type": "avatar", "hash": format!("h{run}"), "data": data}),
            ))
            .await;
    }
    wait_metric_where(
        &bridge,
        "bridge_events_total",
        &avatars,
        "the four avatar events handled",
        WAIT,
        |v| v >= all + 4.0,
    )
    .await;
    let ok_after = bridge.metric("bridge_events_total", &result("ok")).await;
    let unchanged_after = bridge
        .metric("bridge_events_total", &result("unchanged"))
        .await;
    assert_eq!(
        (ok_after - ok, unchanged_after - unchanged),
        (1.0, 3.0),
        "(set, found set) of four events carrying one picture"
    );
    let (status, profile) = users[0]
        .call("GET", &format!("/profile/{}", enc(&ghost(&sender))), None)
        .await;
    assert_eq!(status, 200, "{profile}");
    let mxc = profile["avatar_url"]
        .as_str()
        .expect("the ghost has an avatar");
    assert_eq!(users[0].download(mxc).await, picture);
}

/// Homeservers time out the presence of users who do not sync (Synapse: 30 s after the last
/// update), and ghosts never sync: a contact the network shows online stays online in Matrix
/// for as long as the network says so, and one the network saw leave is not brought back.
#[tokio::test(flavor = "multi_thread")]
async fn a_ghost_stays_online_past_the_homeservers_presence_timeout() {
    let _serial = serial();
    let bridge = presence_refreshing_bridge().await;
    let mut control = Control::connect().await;
    let run = unique();
    let viewer = MatrixUser::register("presview").await;
    let (stays, leaves) = (format!("stay{run}"), format!("leave{run}"));
    let presence = |state: &str| json!({"type": "presence", "state": state, "status": "here"});
    for who in [&stays, &leaves] {
        control
            .inject(remote_event(
                who,
                "direct",
                &viewer.user_id,
                who,
                presence("online"),
            ))
            .await;
    }
    let shown = |who: &str| ghost_presence_until(ghost(who), "online");
    shown(&stays).await;
    shown(&leaves).await;
    control
        .inject(remote_event(
            &leaves,
            "direct",
            &viewer.user_id,
            &leaves,
            presence("offline"),
        ))
        .await;
    ghost_presence_until(ghost(&leaves), "offline").await;

    // Past the homeserver's timeout (30 s), counted in refreshes of the one ghost left online.
    let refreshed = [("type", "presence_refresh"), ("result", "ok")];
    let before = bridge.metric("bridge_events_total", &refreshed).await;
    wait_metric_where(
        &bridge,
        "bridge_events_total",
        &refreshed,
        "ten refreshes later",
        Duration::from_secs(90),
        |v| v >= before + 10.0,
    )
    .await;
    assert_eq!(
        ghost_presence(&ghost(&stays)).await,
        ("online".to_owned(), Some("here".to_owned())),
        "the contact still online on its network"
    );
    assert_eq!(
        ghost_presence(&ghost(&leaves)).await.0,
        "offline",
        "the contact that left"
    );
}

/// A bridge that sets the presence of online ghosts again every 4 s.
async fn presence_refreshing_bridge() -> BridgeProcess {
    BridgeProcess::start_with(|cfg| {
        cfg.replacen(
            "  permissions:\n",
            "  presence_refresh_seconds: 4\n  permissions:\n",
            1,
        )
    })
    .await
}

/// Waits until the homeserver shows `ghost` with presence `state`.
async fn ghost_presence_until(ghost: String, state: &str) {
    ghost_presence_within(&ghost, state, WAIT).await;
}

/// When a network's link goes down, what it said of its users' presence is no longer known:
/// the bridge stops keeping their ghosts online, and the homeserver's timeout shows them
/// offline (kept alive, they would stay online for as long as the link stayed down).
#[tokio::test(flavor = "multi_thread")]
async fn ghosts_of_a_network_whose_link_went_down_are_no_longer_kept_online() {
    let _serial = serial();
    let _bridge = presence_refreshing_bridge().await;
    let mut control = Control::connect().await;
    let run = unique();
    let viewer = MatrixUser::register("presdown").await;
    let contact = format!("down{run}");
    control
        .inject(remote_event(
            &contact,
            "direct",
            &viewer.user_id,
            &contact,
            json!({"type": "presence", "state": "online"}),
        ))
        .await;
    ghost_presence_until(ghost(&contact), "online").await;
    control
        .ok(json!({"op": "state", "state": "TRANSIENT_DISCONNECT", "message": "link lost"}))
        .await;
    // Synapse's timeout is 30 s after the last update.
    ghost_presence_within(&ghost(&contact), "offline", Duration::from_secs(75)).await;
}

/// What a user's own login told of its contacts' presence is that login's: when the login
/// goes down, the ghosts it showed online are no longer kept online, while what the network's
/// bridge-wide link told is kept as before.
#[tokio::test(flavor = "multi_thread")]
async fn ghosts_a_login_showed_online_are_no_longer_kept_online_once_it_is_down() {
    let _serial = serial();
    let _bridge = presence_refreshing_bridge().await;
    let mut control = Control::connect().await;
    let run = unique();
    let viewer = MatrixUser::register("presvia").await;
    let through_login = format!("vialogin{run}");
    let through_link = format!("vialink{run}");
    let mut by_login = remote_event(
        &through_login,
        "direct",
        &viewer.user_id,
        &through_login,
        json!({"type": "presence", "state": "online"}),
    );
    by_login["via"] = json!(viewer.user_id);
    control.inject(by_login).await;
    control
        .inject(remote_event(
            &through_link,
            "direct",
            &viewer.user_id,
            &through_link,
            json!({"type": "presence", "state": "online"}),
        ))
        .await;
    ghost_presence_until(ghost(&through_login), "online").await;
    ghost_presence_until(ghost(&through_link), "online").await;
    control
        .ok(json!({"op": "state", "user": viewer.user_id, "state": "TRANSIENT_DISCONNECT", "message": "login lost"}))
        .await;
    // Synapse's timeout is 30 s after the last update.
    ghost_presence_within(&ghost(&through_login), "offline", Duration::from_secs(75)).await;
    // By then a ghost left alone would have timed out too: the link's is still refreshed.
    let (link_state, _) = ghost_presence(&ghost(&through_link)).await;
    assert_eq!(
        link_state, "online",
        "the bridge-wide link is up: what it told is still shown"
    );
}
