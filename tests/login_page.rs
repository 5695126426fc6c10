//! Passwords never enter Matrix: `login` answers with a one-time link to the bridge's login
//! page (when `bridge.public_url` is set), tried here over plain HTTP and in a real browser;
//! without a public URL the secret is asked in chat only in a room where the bot can redact.
//!
//! Needs Synapse with the test registration, chromium and Playwright: run with
//! `scripts/test.sh`, which installs them.

mod common;

use std::time::Duration;

use serde_json::{Value, json};

use common::{
    AS_URL, BOT, BridgeProcess, COMMAND_WAIT, LOOPBACK_PASSWORD, MatrixUser, command, enc, http,
    management_room, serial, unique,
};

/// How long any single expected thing may take.
const WAIT: Duration = Duration::from_secs(20);

/// The fixture with `bridge.public_url` set to the bridge's own listener.
fn with_public_url(cfg: String) -> String {
    assert!(
        cfg.contains("\nbridge:\n"),
        "the fixture has no bridge section"
    );
    cfg.replacen(
        "\nbridge:\n",
        &format!("\nbridge:\n  public_url: {AS_URL}\n"),
        1,
    )
}

/// The login link in the bot's answer to `login`.
fn login_link(reply: &str) -> String {
    let start = format!("{AS_URL}/_isthmus/login/");
    let at = reply
        .find(&start)
        .unwrap_or_else(|| panic!("no login link in the answer to `login`: {reply}"));
    reply[at..]
        .split_whitespace()
        .next()
        .expect("a link")
        .to_owned()
}

/// Waits for a notice from the bot in `room` whose body contains `needle`; returns the body.
async fn wait_notice(user: &MatrixUser, room: &str, needle: &str) -> String {
    let e = user
        .wait_for_event(room, &format!("a notice with {needle:?}"), WAIT, |e| {
            e["sender"] == BOT
                && e["content"]["msgtype"] == "m.notice"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(needle))
        })
        .await;
    e["content"]["body"].as_str().unwrap_or("").to_owned()
}

/// Asserts that no event of `room` holds any of `secrets`, anywhere in its JSON.
async fn assert_room_never_saw(user: &MatrixUser, room: &str, secrets: &[&str]) {
    let events = user.messages(room).await;
    assert!(!events.is_empty(), "read no events of {room}");
    for e in &events {
        let text = e.to_string();
        for s in secrets {
            assert!(
                !text.contains(s),
                "an event of the room holds {s:?}: {text}"
            );
        }
    }
}

/// Posts a form to the login page; returns the status and the page.
async fn post_form(link: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let body: String = fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let r = http()
        .post(link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST the login form");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn login_link_takes_the_password_outside_matrix_once() {
    let _serial = serial();
    let _bridge = BridgeProcess::start_with(with_public_url).await;
    let alice = MatrixUser::register("weblogin").await;
    let room = management_room(&alice).await;
    let username = format!("alice{}", unique());
    let wrong = format!("wrong-password-{}", unique());

    let reply = command(&alice, &room, "login loopback").await;
    assert!(
        !reply.contains("Send your"),
        "the bot asked in chat: {reply}"
    );
    let link = login_link(&reply);

    // The page: server-rendered, locked down, never cached.
    let r = http().get(&link).send().await.expect("GET the login page");
    assert_eq!(r.status().as_u16(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let csp = header("content-security-policy");
    for part in [
        "default-src 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "CSP without {part}: {csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert!(header("content-type").starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(
        html.contains("name=\"password\" type=\"password\" autocomplete=\"current-password\""),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");

    // A wrong password: the page says so and keeps the form; Matrix hears only the error.
    let (status, page) = post_form(&link, &[("username", &username), ("password", &wrong)]).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Login failed"), "{page}");
    assert!(
        page.contains("type=\"password\""),
        "no form to try again: {page}"
    );
    let notice = wait_notice(&alice, &room, "Login to loopback failed").await;
    assert!(notice.contains("wrong username or password"), "{notice}");

    // The right one on the same link.
    let (status, page) = post_form(
        &link,
        &[("username", &username), ("password", LOOPBACK_PASSWORD)],
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(&format!("Logged in as {username}")), "{page}");
    wait_notice(&alice, &room, &format!("Logged in as {username}.")).await;
    let logins = command(&alice, &room, "logins").await;
    assert!(logins.contains(&username), "{logins}");

    // Used up: neither a second post nor a look works.
    let (status, page) = post_form(
        &link,
        &[("username", "mallory"), ("password", LOOPBACK_PASSWORD)],
    )
    .await;
    assert_eq!(status, 410, "{page}");
    let again = http().get(&link).send().await.expect("GET again");
    assert_eq!(again.status().as_u16(), 410);
    let logins = command(&alice, &room, "logins").await;
    assert!(!logins.contains("mallory"), "{logins}");

    // A new `login` voids the previous link, and `cancel` the current one.
    let first = login_link(&command(&alice, &room, "login loopback").await);
    let second = login_link(&command(&alice, &room, "login loopback").await);
    assert_ne!(first, second);
    let status = |link: String| async move {
        http()
            .get(&link)
            .send()
            .await
            .expect("GET a login link")
            .status()
            .as_u16()
    };
    assert_eq!(status(first).await, 410);
    assert_eq!(status(second.clone()).await, 200);
    let cancelled = command(&alice, &room, "cancel").await;
    assert!(cancelled.contains("Login cancelled"), "{cancelled}");
    assert_eq!(status(second).await, 410);

    assert_room_never_saw(&alice, &room, &[LOOPBACK_PASSWORD, &wrong]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn login_page_works_in_a_real_browser() {
    let _serial = serial();
    let _bridge = BridgeProcess::start_with(with_public_url).await;
    let alice = MatrixUser::register("browser").await;
    let room = management_room(&alice).await;
    let username = format!("alice{}", unique());
    let wrong = format!("wrong-password-{}", unique());
    let link = login_link(&command(&alice, &room, "login loopback").await);

    let python = std::env::var("ISTHMUS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = tokio::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/login_browser.py"
        ))
        .args([link.as_str(), &username, &wrong, LOOPBACK_PASSWORD])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("the browser finished within 120 s")
        .unwrap_or_else(|e| panic!("could not run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser script failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(steps.len(), 2, "{stdout}");
    assert_eq!(steps[0]["step"], "wrong");
    assert_eq!(steps[0]["autocomplete"], "current-password");
    assert!(
        steps[0]["alert"]
            .as_str()
            .is_some_and(|a| a.contains("wrong username or password")),
        "{}",
        steps[0]
    );
    assert_eq!(steps[1]["step"], "right");
    assert!(
        steps[1]["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("Logged in as {username}"))),
        "{}",
        steps[1]
    );

    wait_notice(&alice, &room, "Login to loopback failed").await;
    wait_notice(&alice, &room, &format!("Logged in as {username}.")).await;
    assert_room_never_saw(&alice, &room, &[LOOPBACK_PASSWORD, &wrong]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_is_asked_where_the_bot_cannot_redact() {
    let _serial = serial();
    // No public URL: logins go on in chat.
    let _bridge = BridgeProcess::start().await;
    let alice = MatrixUser::register("powerless").await;
    // A direct chat with the `private_chat` preset: the bot joins with power 0.
    let created = alice
        .ok(
            "POST",
            "/createRoom",
            Some(&json!({"invite": [BOT], "is_direct": true, "preset": "private_chat"})),
        )
        .await;
    let old = created["room_id"].as_str().expect("room_id").to_owned();
    alice.wait_joined(&old, BOT, COMMAND_WAIT).await;
    wait_notice(&alice, &old, "management room").await;
    let levels = alice
        .ok(
            "GET",
            &format!("/rooms/{}/state/m.room.power_levels/", enc(&old)),
            None,
        )
        .await;
    assert!(
        levels["users"][BOT].as_i64().unwrap_or(0) < 50,
        "the bot can redact after all: {levels}"
    );

    let reply = command(&alice, &old, "login loopback").await;
    assert!(!reply.contains("Send your"), "asked here: {reply}");
    assert!(reply.contains("new room"), "{reply}");

    let room = alice.wait_for_invite(WAIT).await;
    assert_ne!(room, old);
    alice.join(&room).await;
    wait_notice(&alice, &room, "Send your username").await;
    let username = format!("alice{}", unique());
    let reply = command(&alice, &room, &username).await;
    assert!(reply.contains("Send your password"), "{reply}");
    let password = alice.send_text(&room, LOOPBACK_PASSWORD).await;
    let reply = alice.wait_reply(&room, &password, BOT, WAIT).await;
    assert!(
        reply.contains(&format!("Logged in as {username}")),
        "{reply}"
    );
    assert!(!reply.contains("could not delete"), "{reply}");
    // The bot could redact the answer there.
    alice
        .wait_for_event(&room, "the password redacted", WAIT, |e| {
            e["event_id"] == password.as_str()
                && e["unsigned"]["redacted_because"].is_object()
                && e["content"].get("body").is_none()
        })
        .await;
    // The old room never asked for (nor saw) the password.
    for e in alice.messages(&old).await {
        let body = e["content"]["body"].as_str().unwrap_or("");
        assert!(!body.contains("Send your"), "asked in the old room: {body}");
    }
    assert_room_never_saw(&alice, &old, &[LOOPBACK_PASSWORD]).await;
}
