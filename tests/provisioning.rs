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

/// Sends a raw request to the provisioning API (`path` with its whole query) and returns the
/// status and the body, which must be Matrix-style error JSON when the status is not 200.
async fn raw(method: &str, path: &str, body: Option<(&str, &str)>) -> (u16, serde_json::Value) {
    let url = format!("{AS_URL}/_matrix/provision/v3{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut req = common::http().request(method, url).bearer_auth(SECRET);
    if let Some((content_type, text)) = body {
        req = req
            .header("content-type", content_type)
            .body(text.to_owned());
    }
    let r = req.send().await.expect("provisioning request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("a body");
    let json: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("status {status} answered with plain text: {text:?}"));
    if status != 200 {
        assert!(
            json["errcode"].is_string() && json["error"].is_string(),
            "status {status} without {{errcode, error}}: {json}"
        );
    }
    (status, json)
}

/// What a body case is: its name, (content type, text) or no body, and the expected answer.
type BodyCase<'a> = (&'a str, Option<(&'a str, &'a str)>, (u16, &'a str));

fn errcode(answer: &(u16, serde_json::Value)) -> (u16, &str) {
    (answer.0, answer.1["errcode"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_refuses_bad_user_ids_and_the_bridges_own_users() {
    let _s = serial();
    let _bridge = common::BridgeProcess::start().await;
    let alice = MatrixUser::register("provid").await;
    let q = |user: &str| format!("?user_id={}", enc(user));

    let long_local = format!("@{}:localhost", "a".repeat(5000));
    let just_over = format!("@{}:localhost", "a".repeat(256 - "@:localhost".len()));
    assert_eq!(just_over.len(), 256);
    let cases: Vec<(&str, String, (u16, &str))> = vec![
        ("5,000 characters", long_local, (400, "M_INVALID_PARAM")),
        ("256 bytes", just_over, (400, "M_INVALID_PARAM")),
        ("no domain", "@alice".into(), (400, "M_INVALID_PARAM")),
        (
            "no sigil",
            "alice:localhost".into(),
            (400, "M_INVALID_PARAM"),
        ),
        ("empty", String::new(), (400, "M_INVALID_PARAM")),
        (
            "a room ID",
            "!room:localhost".into(),
            (400, "M_INVALID_PARAM"),
        ),
        ("the bot", common::BOT.into(), (403, "M_FORBIDDEN")),
        ("a ghost", common::ghost("bob"), (403, "M_FORBIDDEN")),
        (
            "a ghost of another network",
            "@_xmpp_bob=40example.org:localhost".into(),
            (403, "M_FORBIDDEN"),
        ),
        (
            "a user of another homeserver",
            "@alice:elsewhere.example".into(),
            (403, "M_FORBIDDEN"),
        ),
    ];
    for (what, user, expected) in &cases {
        for (method, path) in [
            ("GET", "/whoami"),
            ("POST", "/login/start/password"),
            ("GET", "/logins"),
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            let answer = raw(
                method,
                &format!("{path}{}", q(user).replacen('?', &sep.to_string(), 1)),
                None,
            )
            .await;
            assert_eq!(
                errcode(&answer),
                *expected,
                "{what} on {path}: {}",
                answer.1
            );
        }
    }
    let twice = format!(
        "/whoami?user_id={}&user_id={}",
        enc(&alice.user_id),
        enc(common::BOT)
    );
    assert_eq!(
        errcode(&raw("GET", &twice, None).await),
        (400, "M_INVALID_PARAM")
    );
    let missing = raw("GET", "/whoami", None).await;
    assert_eq!(errcode(&missing), (400, "M_MISSING_PARAM"));

    // A ghost's login was never started: the real user has no login in progress either.
    let (status, who) = raw("GET", &format!("/whoami{}", q(&alice.user_id)), None).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["logins"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn provisioning_answers_bad_requests_with_matrix_errors() {
    let _s = serial();
    let _bridge = common::BridgeProcess::start().await;
    let alice = MatrixUser::register("provbad").await;
    let me = format!("user_id={}", enc(&alice.user_id));

    // A login in progress, so that a well-formed body would be taken.
    let (status, step) = call(
        "POST",
        "/login/start/password?network=loopback",
        &alice.user_id,
        None,
        SECRET,
    )
    .await;
    assert_eq!(status, 200, "{step}");
    let process = step["login_id"].as_str().unwrap().to_owned();
    let step_path = format!(
        "/login/step/{}/fields/user_input?network=loopback&{me}",
        enc(&process)
    );
    let json_type = "application/json";
    let bodies: Vec<BodyCase> = vec![
        ("no body", None, (400, "M_NOT_JSON")),
        ("an empty body", Some((json_type, "")), (400, "M_NOT_JSON")),
        ("blanks", Some((json_type, "  \n")), (400, "M_NOT_JSON")),
        (
            "not JSON",
            Some((json_type, "username=bob")),
            (400, "M_NOT_JSON"),
        ),
        (
            "cut-off JSON",
            Some((json_type, "{\"username\": \"bo")),
            (400, "M_NOT_JSON"),
        ),
        (
            "text/plain JSON with a wrong type",
            Some(("text/plain", "{\"username\": 5}")),
            (400, "M_BAD_JSON"),
        ),
        (
            "a number field",
            Some((json_type, "{\"username\": 5, \"password\": \"x\"}")),
            (400, "M_BAD_JSON"),
        ),
        (
            "a null field",
            Some((json_type, "{\"username\": null}")),
            (400, "M_BAD_JSON"),
        ),
        (
            "an array",
            Some((json_type, "[\"bob\", \"pw\"]")),
            (400, "M_BAD_JSON"),
        ),
        (
            "a string",
            Some((json_type, "\"bob\"")),
            (400, "M_BAD_JSON"),
        ),
        (
            "a missing field",
            Some((json_type, "{\"password\": \"x\"}")),
            (400, "M_MISSING_PARAM"),
        ),
    ];
    for (what, body, expected) in bodies {
        let answer = raw("POST", &step_path, body).await;
        assert_eq!(errcode(&answer), expected, "{what}: {}", answer.1);
    }
    let huge = json!({"username": "bob", "password": "p".repeat(10_000)}).to_string();
    let answer = raw("POST", &step_path, Some((json_type, &huge))).await;
    assert_eq!(errcode(&answer), (400, "M_INVALID_PARAM"), "{}", answer.1);

    // Bad paths and query strings.
    let long = "x".repeat(2000);
    let paths: Vec<(&str, String, &str, (u16, &str))> = vec![
        (
            "a 2,000-byte identifier",
            format!("/resolve_identifier/{long}?network=loopback&{me}"),
            "GET",
            (400, "M_INVALID_PARAM"),
        ),
        (
            "an identifier that is not UTF-8",
            format!("/resolve_identifier/%FF%FE?network=loopback&{me}"),
            "GET",
            (400, "M_INVALID_PARAM"),
        ),
        (
            "a 2,000-byte network",
            format!("/login/flows?network={long}&{me}"),
            "GET",
            (400, "M_INVALID_PARAM"),
        ),
        (
            "a 2,000-byte flow",
            format!("/login/start/{long}?network=loopback&{me}"),
            "POST",
            (400, "M_INVALID_PARAM"),
        ),
        (
            "a 2,000-byte login",
            format!("/logout/{long}?network=loopback&{me}"),
            "POST",
            (400, "M_INVALID_PARAM"),
        ),
        (
            "an unknown network",
            format!("/login/flows?network=nope&{me}"),
            "GET",
            (404, "M_NOT_FOUND"),
        ),
        (
            "an unknown endpoint",
            format!("/frobnicate?{me}"),
            "GET",
            (404, "M_UNRECOGNIZED"),
        ),
        (
            "a wrong method",
            format!("/whoami?{me}"),
            "DELETE",
            (405, "M_UNRECOGNIZED"),
        ),
    ];
    for (what, path, method, expected) in paths {
        let answer = raw(method, &path, None).await;
        assert_eq!(errcode(&answer), expected, "{what}: {}", answer.1);
    }

    // The login in progress is untouched by all of the above.
    let username = format!("provbad{}", common::unique());
    let (status, done) = call(
        "POST",
        &format!(
            "/login/step/{}/fields/user_input?network=loopback",
            enc(&process)
        ),
        &alice.user_id,
        Some(json!({"username": username, "password": common::LOOPBACK_PASSWORD})),
        SECRET,
    )
    .await;
    assert_eq!(
        (status, done["type"].as_str()),
        (200, Some("complete")),
        "{done}"
    );
}
