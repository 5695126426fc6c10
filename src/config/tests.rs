//! Tests of the core's sections: parsing, defaults, secrets and validation.

use super::limits::default_invites_per_user;
use super::*;

/// A valid configuration of the core's sections, with no network (the tests of the
/// networks' sections add theirs).
pub(crate) const GOOD: &str = r#"
homeserver:
  url: http://127.0.0.1:8008
  domain: localhost
appservice:
  listen: 127.0.0.1:29331
  url: http://127.0.0.1:29331
  as_token: as_secret_value_1
  hs_token: {env: HS_TOKEN}
database:
  path: /tmp/x
bridge:
  permissions:
    "*": relay
    localhost: user
    "@admin:localhost": admin
"#;

fn env(name: &str) -> Option<String> {
    (name == "HS_TOKEN").then(|| "hs_secret_value_2".to_owned())
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn err_key(cfg: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    match Config::parse(cfg).unwrap().validate(env) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn good_config_resolves_secrets_from_env() {
    let cfg = Config::parse(GOOD).unwrap();
    let s = cfg.validate(&env).unwrap();
    assert_eq!(s.as_token, "as_secret_value_1");
    assert_eq!(s.hs_token, "hs_secret_value_2");
    assert_eq!(cfg.appservice.max_body_bytes, 32 << 20);
}

#[test]
fn store_cache_is_bounded_and_named() {
    let cfg = Config::parse(GOOD).unwrap();
    assert_eq!(cfg.database.cache_mb, 16, "small by default");
    assert_eq!(cfg.database.cache_bytes(), 16 << 20);
    let with = |mb: &str| {
        GOOD.replace(
            "  path: /tmp/x\n",
            &format!("  path: /tmp/x\n  cache_mb: {mb}\n"),
        )
    };
    assert_eq!(Config::parse(&with("64")).unwrap().database.cache_mb, 64);
    assert_eq!(err_key(&with("0"), &env), "database.cache_mb");
    assert_eq!(err_key(&with("100000"), &env), "database.cache_mb");
}

#[test]
fn missing_env_secret_names_the_key() {
    assert_eq!(err_key(GOOD, &no_env), "appservice.hs_token");
}

#[test]
fn secret_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("hs");
    std::fs::write(&f, "from_file_secret\n").unwrap();
    let s = Secret::File { file: f.clone() };
    assert_eq!(s.resolve("k", &no_env).unwrap(), "from_file_secret");
    let missing = Secret::File {
        file: dir.path().join("nope"),
    };
    assert!(missing.resolve("k", &no_env).is_err());
}

#[test]
fn placeholders_are_refused() {
    let cfg = GOOD.replace("as_secret_value_1", "CHANGE_ME");
    assert_eq!(err_key(&cfg, &env), "appservice.as_token");
    let cfg = GOOD.replace("domain: localhost", "domain: CHANGE_ME.example");
    assert_eq!(err_key(&cfg, &env), "homeserver.domain");
}

#[test]
fn bad_values_name_their_key() {
    assert_eq!(
        err_key(
            &GOOD.replace("http://127.0.0.1:8008", "127.0.0.1:8008"),
            &env
        ),
        "homeserver.url"
    );
    let no_perms = GOOD.replace(
        "  permissions:\n    \"*\": relay\n    localhost: user\n    \"@admin:localhost\": admin\n",
        "  permissions: {}\n",
    );
    assert_eq!(err_key(&no_perms, &env), "bridge.permissions");
    let bad_tpl = format!("{GOOD}  ghost_localpart_template: \"_x_{{id}}\"\n");
    assert_eq!(err_key(&bad_tpl, &env), "bridge.ghost_localpart_template");
    let same = GOOD.replace("as_secret_value_1", "hs_secret_value_2");
    assert_eq!(err_key(&same, &env), "appservice.hs_token");
}

#[test]
fn unknown_keys_are_refused_with_position() {
    let err = Config::parse(&format!("{GOOD}bogus: 1\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn example_config_parses_and_its_placeholders_are_refused() {
    let example = include_str!("../../config.example.yaml");
    let cfg = Config::parse(example).expect("the example config parses");
    let env = |_: &str| Some("a_real_secret_from_env".to_owned());
    match cfg.validate(&env) {
        Err(ConfigError::Invalid { key, message }) => {
            assert_eq!(key, "homeserver.domain");
            assert!(message.contains("placeholder"), "{message}");
        }
        other => panic!("the example must be refused, got {other:?}"),
    }
}

#[test]
fn secret_debug_is_redacted() {
    let s = Secret::Inline("topsecret".into());
    assert!(!format!("{s:?}").contains("topsecret"));
    let cfg = Config::parse(GOOD).unwrap();
    assert!(!format!("{cfg:?}").contains("as_secret_value_1"));
}

#[test]
fn limits_default_and_a_zero_is_refused_with_its_key() {
    let cfg = Config::parse(GOOD).unwrap();
    assert_eq!(
        cfg.bridge.limits.portals_per_sender,
        RateLimit::new(5, 60, 10)
    );
    let low = GOOD.replace(
        "bridge:\n",
        "bridge:\n  limits:\n    portals_per_domain: {rate: 1, per_seconds: 60, burst: 2}\n",
    );
    let cfg = Config::parse(&low).unwrap();
    cfg.validate(&env).unwrap();
    assert_eq!(
        cfg.bridge.limits.portals_per_domain,
        RateLimit::new(1, 60, 2)
    );
    assert_eq!(
        cfg.bridge.limits.invites_per_user,
        default_invites_per_user()
    );
    let zero = GOOD.replace(
        "bridge:\n",
        "bridge:\n  limits:\n    invites_per_user: {rate: 0, per_seconds: 60, burst: 2}\n",
    );
    assert_eq!(err_key(&zero, &env), "bridge.limits.invites_per_user");
}
