//! The command line: check-config, generate-registration, export and import, run by the real
//! binary. No homeserver needed.

use std::path::Path;
use std::process::Command;

fn isthmus(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run isthmus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn fixture_config(dir: &Path) -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bridge.yaml"
    ))
    .expect("fixture");
    let store = dir.join("store");
    let text = text.replace(
        "path: target/stack/test-store",
        &format!("path: {}", store.display()),
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn check_config_accepts_the_test_config_and_refuses_the_example() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    let (ok, out) = isthmus(&["check-config", "-c", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("valid"), "{out}");

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml");
    let (ok, out) = isthmus(&["check-config", "-c", example]);
    assert!(!ok, "the example config must be refused");
    assert!(
        out.contains("homeserver.domain") && out.contains("placeholder"),
        "{out}"
    );

    let (ok, out) = isthmus(&["check-config", "-c", "/nonexistent/config.yaml"]);
    assert!(!ok);
    assert!(out.contains("cannot read config file"), "{out}");

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "homeserver: [not, a, map]\n").unwrap();
    let (ok, out) = isthmus(&["check-config", "-c", broken.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("is not valid"), "{out}");
}

#[test]
fn secrets_from_environment_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "hs_token: hs_token_isthmus_test_0123456789",
        "hs_token: {env: ISTHMUS_TEST_SECRET_HS}",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["check-config", "-c", &cfg])
        .env_remove("ISTHMUS_TEST_SECRET_HS")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("appservice.hs_token") && err.contains("ISTHMUS_TEST_SECRET_HS"),
        "{err}"
    );
    assert!(
        !err.contains("as_token_isthmus_test"),
        "a secret was printed: {err}"
    );

    let reg = dir.path().join("reg.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args([
            "generate-registration",
            "-c",
            &cfg,
            "-o",
            reg.to_str().unwrap(),
        ])
        .env("ISTHMUS_TEST_SECRET_HS", "hs_from_the_environment")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&reg).unwrap();
    assert!(yaml.contains("hs_token: hs_from_the_environment"), "{yaml}");
}

#[test]
fn generated_registration_is_what_a_homeserver_expects() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    let reg = dir.path().join("registration.yaml");
    let (ok, out) = isthmus(&[
        "generate-registration",
        "-c",
        &cfg,
        "-o",
        reg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let yaml = std::fs::read_to_string(&reg).unwrap();
    let parsed: ruma::api::appservice::Registration =
        serde_saphyr::from_str(&yaml).expect("a valid registration");
    assert_eq!(parsed.id, "isthmus-test");
    assert_eq!(parsed.url.as_deref(), Some("http://127.0.0.1:29331"));
    assert_eq!(parsed.sender_localpart, "_isthmus_bot");
    assert!(parsed.receive_ephemeral);
    assert_eq!(parsed.rate_limited, Some(false));
    let users: Vec<_> = parsed
        .namespaces
        .users
        .iter()
        .map(|n| (n.exclusive, n.regex.clone()))
        .collect();
    assert!(
        users.contains(&(true, "@_isthmus_bot:localhost".to_owned())),
        "{users:?}"
    );
    assert!(
        users.contains(&(true, "@_loopback_.+:localhost".to_owned())),
        "{users:?}"
    );
    assert!(
        parsed
            .namespaces
            .aliases
            .iter()
            .any(|n| n.exclusive && n.regex == "#_loopback_.+:localhost")
    );
    assert!(
        yaml.contains("de.sorunome.msc2409.push_ephemeral: true"),
        "{yaml}"
    );
}

#[test]
fn export_import_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    let dump = dir.path().join("dump.json");
    let (ok, out) = isthmus(&["export", "-c", &cfg, "-o", dump.to_str().unwrap()]);
    assert!(ok, "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&dump).unwrap()).unwrap();
    assert_eq!(json["format"], "isthmus-dump");
    assert!(json["schema_version"].as_u64().unwrap() >= 1);

    // Add a portal to the dump and import it into a fresh store.
    let mut json = json;
    json["trees"]["users"] = serde_json::json!([[
        "@alice:localhost",
        "{\"user_id\":\"@alice:localhost\",\"management_room\":\"!m:localhost\"}"
    ]]);
    std::fs::write(&dump, serde_json::to_vec(&json).unwrap()).unwrap();
    let (ok, out) = isthmus(&["import", "-c", &cfg, "-i", dump.to_str().unwrap()]);
    assert!(ok, "{out}");
    let again = dir.path().join("again.json");
    let (ok, out) = isthmus(&["export", "-c", &cfg, "-o", again.to_str().unwrap()]);
    assert!(ok, "{out}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again["trees"]["users"], json["trees"]["users"]);

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\":\"something else\"}").unwrap();
    let (ok, out) = isthmus(&["import", "-c", &cfg, "-i", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("not an isthmus dump"), "{out}");
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
#[test]
fn files_with_secrets_are_owner_only_and_check_config_warns_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = fixture_config(dir.path());
    // An existing, world-readable registration is rewritten owner-only.
    let reg = dir.path().join("registration.yaml");
    std::fs::write(&reg, "old").unwrap();
    chmod(&reg, 0o644);
    let (ok, out) = isthmus(&[
        "generate-registration",
        "-c",
        &cfg,
        "-o",
        reg.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert_eq!(mode(&reg), 0o600, "the registration holds the tokens");
    let fresh = dir.path().join("fresh.yaml");
    let (ok, out) = isthmus(&[
        "generate-registration",
        "-c",
        &cfg,
        "-o",
        fresh.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert_eq!(mode(&fresh), 0o600);

    // The store folder, its files, the key file and a dump are owner-only.
    let dump = dir.path().join("dump.json");
    let (ok, out) = isthmus(&["export", "-c", &cfg, "-o", dump.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(mode(&dump), 0o600);
    let store = dir.path().join("store");
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("login.key")), 0o600);
    chmod(Path::new(&cfg), 0o600);
    let (ok, out) = isthmus(&["check-config", "-c", &cfg]);
    let ours = dir.path().to_str().unwrap();
    assert!(
        ok && !out
            .lines()
            .any(|l| l.starts_with("warning") && l.contains(ours)),
        "{out}"
    );

    // Loosened by hand: check-config still passes, and names each file with the fix.
    chmod(&reg, 0o644);
    chmod(&store, 0o755);
    chmod(&store.join("login.key"), 0o640);
    let (ok, out) = isthmus(&["check-config", "-c", &cfg]);
    assert!(ok, "{out}");
    for (path, fix) in [
        (&reg, "chmod 600"),
        (&store, "chmod 700"),
        (&store.join("login.key"), "chmod 600"),
    ] {
        assert!(
            out.lines().any(|l| l.starts_with("warning")
                && l.contains(path.to_str().unwrap())
                && l.contains(fix)),
            "no warning for {}: {out}",
            path.display()
        );
    }
    assert!(
        !out.contains("as_token_isthmus_test"),
        "a secret was printed: {out}"
    );
}
