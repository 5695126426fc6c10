//! Ghost registration, profiles, rooms, aliases and spec versions.

use super::*;

#[tokio::test]
async fn register_ghost_treats_user_in_use_as_success() {
    let hs = MockHs::start(vec![
        reply(200, json!({"user_id": "@_x_alice:localhost"})),
        reply(400, json!({"errcode": "M_USER_IN_USE", "error": "taken"})),
        reply(400, json!({"errcode": "M_EXCLUSIVE", "error": "not yours"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    c.register_ghost("_x_alice").await.unwrap();
    c.register_ghost("_x_alice").await.unwrap();
    assert_eq!(
        c.register_ghost("alice").await.unwrap_err().errcode(),
        Some("M_EXCLUSIVE")
    );
    let seen = hs.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/_matrix/client/v3/register");
    let body = seen[0].json();
    assert_eq!(body["type"], "m.login.application_service");
    assert_eq!(body["username"], "_x_alice");
    assert_eq!(body["inhibit_login"], true);
}

#[tokio::test]
async fn profile_reads_and_writes() {
    let hs = MockHs::start(vec![
        reply(200, json!({"displayname": "Alice", "avatar_url": ""})),
        reply(
            404,
            json!({"errcode": "M_UNKNOWN", "error": "No row found (profiles)"}),
        ),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    assert_eq!(
        c.get_profile(&bob).await.unwrap(),
        (Some("Alice".into()), None)
    );
    assert_eq!(c.get_profile(&bob).await.unwrap(), (None, None));
    c.set_displayname(Some(&ghost()), "Alice (XMPP)")
        .await
        .unwrap();
    c.set_avatar_url(Some(&ghost()), Some("mxc://localhost/abc"))
        .await
        .unwrap();
    c.set_avatar_url(Some(&ghost()), None).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen[0].target, "/_matrix/client/v3/profile/@bob:localhost");
    // Profile lookups authenticate even though the spec does not require it.
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer as_secret_token")
    );
    assert_eq!(
        seen[2].target,
        "/_matrix/client/v3/profile/@_x_alice:localhost/displayname?user_id=%40_x_alice%3Alocalhost"
    );
    assert_eq!(seen[2].json(), json!({"displayname": "Alice (XMPP)"}));
    assert_eq!(seen[3].json(), json!({"avatar_url": "mxc://localhost/abc"}));
    assert_eq!(seen[4].json(), json!({"avatar_url": ""}));
}

#[tokio::test]
async fn create_room_sends_state_power_levels_and_invites() {
    let hs = MockHs::start(vec![
        reply(200, json!({"capabilities": {"m.room_versions": {"default": "10", "available": {"10": "stable"}}}})),
        reply(200, json!({"room_id": "!new:localhost"})),
        reply(200, json!({"room_id": "!new2:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    let creation = RoomCreation {
        name: Some("Chat".into()),
        topic: None,
        alias_localpart: Some("_x_chat".into()),
        invite: vec![bob.clone()],
        is_direct: true,
        preset_private: true,
        initial_state: vec![(
            "m.bridge".into(),
            "isthmus://x".into(),
            json!({"protocol": {"id": "x"}}),
        )],
        power_level_users: vec![(bob, 100), (ghost(), 50)],
    };
    let id = c.create_room(Some(&ghost()), &creation).await.unwrap();
    assert_eq!(id.as_str(), "!new:localhost");
    // The default room version is read once.
    c.create_room(Some(&ghost()), &creation).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].target, "/_matrix/client/v3/capabilities");
    assert_eq!(
        seen[1].target,
        "/_matrix/client/v3/createRoom?user_id=%40_x_alice%3Alocalhost"
    );
    let body = seen[1].json();
    assert_eq!(body["name"], "Chat");
    assert!(body.get("topic").is_none());
    assert_eq!(body["room_alias_name"], "_x_chat");
    assert_eq!(body["invite"], json!(["@bob:localhost"]));
    assert_eq!(body["is_direct"], true);
    assert_eq!(body["preset"], "private_chat");
    assert_eq!(
        body["initial_state"],
        json!([{"type": "m.bridge", "state_key": "isthmus://x", "content": {"protocol": {"id": "x"}}}])
    );
    // The creator keeps 100 even when listed lower.
    assert_eq!(
        body["power_level_content_override"],
        json!({"users": {"@bob:localhost": 100, "@_x_alice:localhost": 100}})
    );
}

#[tokio::test]
async fn create_room_leaves_privileged_creators_out_of_power_levels() {
    let hs = MockHs::start(vec![
        reply(200, json!({"capabilities": {"m.room_versions": {"default": "12", "available": {"12": "stable"}}}})),
        reply(200, json!({"room_id": "!new:localhost"})),
        reply(200, json!({"room_id": "!plain:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let bob = UserId::parse("@bob:localhost").unwrap();
    let creation = RoomCreation {
        power_level_users: vec![(bob, 100), (ghost(), 50)],
        ..RoomCreation::default()
    };
    c.create_room(Some(&ghost()), &creation).await.unwrap();
    // Without power levels no capabilities lookup is needed.
    c.create_room(None, &RoomCreation::default()).await.unwrap();
    let seen = hs.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen[1].json()["power_level_content_override"],
        json!({"users": {"@bob:localhost": 100}})
    );
    let plain = seen[2].json();
    assert!(plain.get("power_level_content_override").is_none());
    assert_eq!(plain["preset"], "public_chat");
}

#[tokio::test]
async fn room_calls_build_the_right_paths() {
    let hs = MockHs::start(vec![
        reply(200, json!({"room_id": "!room:localhost"})),
        reply(200, json!({"event_id": "$st"})),
        reply(200, json!({"event_id": "$red"})),
        reply(200, json!({"joined": {"@a:localhost": {}, "@_x_alice:localhost": {"display_name": "A"}}})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({})),
        reply(200, json!({"type": "m.room.message", "event_id": "$e", "sender": "@a:localhost", "room_id": "!room:localhost", "origin_server_ts": 1, "content": {"body": "x"}})),
        reply(200, json!({"membership": "invite"})),
        reply(404, json!({"errcode": "M_NOT_FOUND", "error": "no state"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    let g = ghost();
    let r = room();
    let ev = EventId::parse("$target").unwrap();
    let bob = UserId::parse("@bob:localhost").unwrap();
    assert_eq!(c.join(Some(&g), "#_x_chat:localhost").await.unwrap(), r);
    assert_eq!(
        c.send_state(None, &r, "m.room.topic", "", &json!({"topic": "t"}))
            .await
            .unwrap()
            .as_str(),
        "$st"
    );
    assert_eq!(
        c.redact(Some(&g), &r, &ev, "red1", Some("oops"))
            .await
            .unwrap()
            .as_str(),
        "$red"
    );
    let mut members = c.joined_members(None, &r).await.unwrap();
    members.sort();
    assert_eq!(
        members.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        ["@_x_alice:localhost", "@a:localhost"]
    );
    c.set_typing(Some(&g), &r, true, 30_000).await.unwrap();
    c.send_read_receipt(Some(&g), &r, &ev).await.unwrap();
    c.set_presence(Some(&g), "unavailable", Some("away"))
        .await
        .unwrap();
    c.kick(None, &r, &bob, Some("bye")).await.unwrap();
    assert_eq!(
        c.get_event(None, &r, &ev).await.unwrap()["content"]["body"],
        "x"
    );
    assert_eq!(
        c.membership(None, &r, &bob).await.unwrap(),
        Some(Membership::Invite)
    );
    assert_eq!(c.membership(None, &r, &bob).await.unwrap(), None);

    let seen = hs.seen();
    let lines: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    let a = "user_id=%40_x_alice%3Alocalhost";
    assert_eq!(
        lines,
        [
            format!("POST /_matrix/client/v3/join/%23_x_chat:localhost?{a}"),
            "PUT /_matrix/client/v3/rooms/!room:localhost/state/m.room.topic/".to_owned(),
            format!("PUT /_matrix/client/v3/rooms/!room:localhost/redact/$target/red1?{a}"),
            "GET /_matrix/client/v3/rooms/!room:localhost/joined_members".to_owned(),
            format!("PUT /_matrix/client/v3/rooms/!room:localhost/typing/@_x_alice:localhost?{a}"),
            format!("POST /_matrix/client/v3/rooms/!room:localhost/receipt/m.read/$target?{a}"),
            format!("PUT /_matrix/client/v3/presence/@_x_alice:localhost/status?{a}"),
            "POST /_matrix/client/v3/rooms/!room:localhost/kick".to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/event/$target".to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                .to_owned(),
            "GET /_matrix/client/v3/rooms/!room:localhost/state/m.room.member/@bob:localhost"
                .to_owned(),
        ]
    );
    assert_eq!(seen[1].json(), json!({"topic": "t"}));
    assert_eq!(seen[2].json(), json!({"reason": "oops"}));
    assert_eq!(seen[4].json(), json!({"typing": true, "timeout": 30000}));
    assert_eq!(
        seen[6].json(),
        json!({"presence": "unavailable", "status_msg": "away"})
    );
    assert_eq!(
        seen[7].json(),
        json!({"user_id": "@bob:localhost", "reason": "bye"})
    );
}

#[tokio::test]
async fn aliases_ping_and_versions() {
    let hs = MockHs::start(vec![
        reply(
            200,
            json!({"versions": ["r0.6.1", "v1.1", "v1.12"], "unstable_features": {}}),
        ),
        reply(200, json!({})),
        reply(
            200,
            json!({"room_id": "!room:localhost", "servers": ["localhost"]}),
        ),
        reply(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": "unknown alias"}),
        ),
        reply(200, json!({"duration_ms": 7})),
    ])
    .await;
    let c = client(&hs.url, 0);
    assert_eq!(c.versions().await.unwrap(), ["r0.6.1", "v1.1", "v1.12"]);
    c.create_alias("#_x_chat:localhost", &room()).await.unwrap();
    assert_eq!(
        c.resolve_alias("#_x_chat:localhost").await.unwrap(),
        Some(room())
    );
    assert_eq!(c.resolve_alias("#_x_gone:localhost").await.unwrap(), None);
    assert_eq!(
        c.ping_appservice("ping-1").await.unwrap(),
        Duration::from_millis(7)
    );
    assert!(matches!(
        c.resolve_alias("not an alias").await,
        Err(MatrixError::InvalidId(_))
    ));
    assert!(matches!(
        c.join(None, "bogus").await,
        Err(MatrixError::InvalidId(_))
    ));

    let seen = hs.seen();
    assert_eq!(seen[0].target, "/_matrix/client/versions");
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(
        seen[1].target,
        "/_matrix/client/v3/directory/room/%23_x_chat:localhost"
    );
    assert_eq!(seen[1].json(), json!({"room_id": "!room:localhost"}));
    assert_eq!(
        seen[2].header("authorization"),
        Some("Bearer as_secret_token")
    );
    assert_eq!(seen[4].target, "/_matrix/client/v1/appservice/isthmus/ping");
    assert_eq!(seen[4].json(), json!({"transaction_id": "ping-1"}));
    assert_eq!(seen.len(), 5, "invalid IDs never reach the homeserver");
}

#[tokio::test]
async fn unknown_spec_versions_keep_the_default_paths() {
    let hs = MockHs::start(vec![
        reply(200, json!({"versions": ["v9.99"]})),
        reply(200, json!({"user_id": "@_bridge_bot:localhost"})),
    ])
    .await;
    let c = client(&hs.url, 0);
    c.versions().await.unwrap();
    c.whoami(None).await.unwrap();
    assert_eq!(hs.seen()[1].target, "/_matrix/client/v3/account/whoami");
}
