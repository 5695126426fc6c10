//! The provisioning API against the real bridge and Synapse: authentication, whoami, login
//! flows step by step, logins, identifiers, direct chats, logout.

mod common;

use std::time::Duration;

use common::{AS_URL, MatrixUser, enc, serial, with_permission};
use serde_json::json;

const SECRET: &str = "provisioning_secret_test";

use common::provision as call;

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_api_end_to_end() {
    let _s = serial();
    let outsider = "@stranger:elsewhere.example".to_owned();
    let _bridge = common::BridgeProcess::start_with(with_permission(&outsider, "relay")).await;
    let alice = MatrixUser::register("prov").await;
    let me = alice.user_id.clone();

    // Authentication and permission.
    let (status, body) = call("GET", "/whoami", &me, None, "wrong").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    let (status, _) = call("GET", "/whoami", &outsider, None, SECRET).await;
    assert_eq!(status, 403, "relay-level users may not provision");
    let r = common::http()
        .get(format!("{AS_URL}/_matrix/provision/v3/whoami"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "user_id is required");

    // whoami and flows.
    let (status, who) = call("GET", "/whoami", &me, None, SECRET).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user_id"], me.as_str());
    assert_eq!(who["permission_level"], "user");
    let networks: Vec<&str> = who["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert!(
        networks.contains(&"loopback") && networks.contains(&"xmpp"),
        "{who}"
    );
    let (_, flows) = call("GET", "/login/flows?network=loopback", &me, None, SECRET).await;
    assert_eq!(flows["flows"][0]["id"], "password");

    // A login: wrong password, then the right one.
    let username = format!("prov{}", common::unique());
    let (status, step) = call(
        "POST",
        "/login/start/password?network=loopback",
        &me,
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{step}");
    assert_eq!(step["type"], "user_input");
    let fields: Vec<&str> = step["user_input"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["id"].as_str())
        .collect();
    assert_eq!(fields, ["username", "password"]);
    let process = step["login_id"].as_str().unwrap().to_owned();
    let (status, err) = call(
        "POST",
        &format!(
            "/login/step/{}/fields/user_input?network=loopback",
            enc(&process)
        ),
        &me,
        Some(json!({"username": username, "password": "nope"})),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, err["errcode"].as_str()),
        (403, Some("FI.MAU.BAD_CREDENTIALS")),
        "{err}"
    );
    call(
        "POST",
        "/login/start/password?network=loopback",
        &me,
        None,
        SECRET,
    )
    .await;
    let (status, done) = call(
        "POST",
        &format!(
            "/login/step/{}/fields/user_input?network=loopback",
            enc(&process)
        ),
        &me,
        Some(json!({"username": username, "password": common::LOOPBACK_PASSWORD})),
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["type"], "complete");
    let (_, logins) = call("GET", "/logins", &me, None, SECRET).await;
    assert!(
        logins["logins"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["id"] == username.as_str() && l["state"] == "CONNECTED"),
        "{logins}"
    );

    // Identifiers and direct chats.
    let (status, resolved) = call(
        "GET",
        "/resolve_identifier/Bob?network=loopback",
        &me,
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(resolved["mxid"], "@_loopback_bob:localhost");
    assert!(resolved["dm_room_mxid"].is_null());
    let (status, bad) = call(
        "GET",
        &format!("/resolve_identifier/{}?network=xmpp", enc("not a jid")),
        &me,
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 404, "{bad}");
    let (status, dm) = call("POST", "/create_dm/bob?network=loopback", &me, None, SECRET).await;
    assert_eq!(status, 200, "{dm}");
    let room = dm["dm_room_mxid"].as_str().expect("a room").to_owned();
    let invited = alice.wait_for_invite(Duration::from_secs(20)).await;
    assert_eq!(invited, room);
    let (_, again) = call(
        "GET",
        "/resolve_identifier/bob?network=loopback",
        &me,
        None,
        SECRET,
    )
    .await;
    assert_eq!(
        again["dm_room_mxid"],
        room.as_str(),
        "the direct chat is found afterwards"
    );
    let (status, contacts) = call("GET", "/contacts?network=xmpp", &me, None, SECRET).await;
    assert_eq!((status, contacts["contacts"].clone()), (200, json!([])));

    // Logout.
    let (status, out) = call("POST", "/logout/all?network=loopback", &me, None, SECRET).await;
    assert_eq!(status, 200, "{out}");
    let (_, logins) = call("GET", "/logins", &me, None, SECRET).await;
    assert_eq!(logins["logins"], json!([]));
}
