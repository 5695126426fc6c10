//! The networks this build bridges to, built from the config's `networks` section.
//!
//! This is the composition root for connectors: the only place that names every one. It
//! hands each raw section to the connector that owns its key ([`NetworkConfig`]), refuses keys
//! no connector owns, and refuses two networks claiming one domain.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, invalid};
use crate::network::Connector;
use crate::network::config::{ConfigContext, NetworkConfig, parse};

/// The keys of `networks` this build knows, for the error about an unknown one.
const KNOWN: &[&str] = &["loopback", "sip", "xmpp"];

/// The configured networks, checked and built (not started).
pub struct Networks {
    /// One connector per configured section, in the order of their keys.
    pub connectors: Vec<Arc<dyn Connector>>,
    /// The files the sections read secrets from, with the key naming each.
    pub secret_files: Vec<(String, PathBuf)>,
}

/// Checks every section of `networks` and builds its connector. The first problem found is
/// returned, naming the key and saying how to fix it.
pub fn configure(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Networks, ConfigError> {
    let ctx = ConfigContext {
        homeserver_domain: &config.homeserver.domain,
        env,
    };
    let mut out = Networks {
        connectors: Vec::new(),
        secret_files: Vec::new(),
    };
    // Which section claimed each domain.
    let mut domains: BTreeMap<String, &'static str> = BTreeMap::new();
    for (key, raw) in &config.networks {
        match key.as_str() {
            "loopback" => {
                add::<crate::loopback::LoopbackConfig>(raw, &ctx, &mut out, &mut domains)?
            }
            "sip" => add::<crate::sip::SipConfig>(raw, &ctx, &mut out, &mut domains)?,
            "xmpp" => add::<crate::xmpp::XmppConfig>(raw, &ctx, &mut out, &mut domains)?,
            other => {
                return Err(invalid(
                    &format!("networks.{other}"),
                    format!(
                        "is not a network isthmus knows; the networks are {}",
                        KNOWN.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Reads, checks and builds one section.
fn add<C: NetworkConfig>(
    raw: &serde_json::Value,
    ctx: &ConfigContext<'_>,
    out: &mut Networks,
    domains: &mut BTreeMap<String, &'static str>,
) -> Result<(), ConfigError> {
    let section: C = parse(raw)?;
    section.validate(ctx)?;
    for domain in section.domains() {
        if let Some(other) = domains.insert(domain.clone(), C::KEY) {
            return Err(invalid(
                &format!("networks.{}", C::KEY),
                format!(
                    "claims the domain {domain}, as networks.{other} does: each network needs a domain of its own"
                ),
            ));
        }
    }
    out.secret_files.extend(section.secret_files());
    out.connectors.push(section.connector(ctx)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::tests::GOOD as CORE;

    fn configured(networks: &str) -> Result<Networks, ConfigError> {
        let config = Config::parse(&format!("{CORE}networks:\n{networks}")).expect("parses");
        configure(&config, &|_| None)
    }

    fn err_key(networks: &str) -> (String, String) {
        match configured(networks) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            Err(other) => panic!("expected an invalid key, got {other}"),
            Ok(_) => panic!("expected an invalid key, got a valid config"),
        }
    }

    #[test]
    fn every_section_is_handed_to_its_connector() {
        let networks = configured(
            "  loopback:\n    control: 127.0.0.1:29340\n  xmpp:\n    component:\n      domain: matrix.example.org\n      secret: {file: /etc/isthmus/component}\n  sip:\n    domain: sip.example.org\n    proxy: 127.0.0.1:5060\n",
        );
        // The component secret's file does not exist: its own section says so.
        let Err(ConfigError::Invalid { key, .. }) = networks else {
            panic!("a missing secret file must be refused");
        };
        assert_eq!(key, "networks.xmpp.component.secret");
        let networks = configured(
            "  loopback:\n    control: 127.0.0.1:29340\n  xmpp:\n    component:\n      domain: matrix.example.org\n      secret: s3cret\n  sip:\n    domain: sip.example.org\n    proxy: 127.0.0.1:5060\n",
        )
        .expect("valid");
        let ids: Vec<_> = networks
            .connectors
            .iter()
            .map(|c| c.info().id.as_str().to_owned())
            .collect();
        assert_eq!(ids, ["loopback", "sip", "xmpp"]);
    }

    #[test]
    fn an_unknown_network_or_setting_is_refused_with_its_key() {
        let (key, message) = err_key("  matrx:\n    domain: x\n");
        assert_eq!(key, "networks.matrx");
        assert!(message.contains("xmpp"), "{message}");
        let (key, message) = err_key("  loopback:\n    control: 127.0.0.1:29340\n    bogus: 1\n");
        assert_eq!(key, "networks.loopback");
        assert!(message.contains("bogus"), "{message}");
        let (key, _) = err_key("  loopback:\n    control: 192.0.2.1:29340\n");
        assert_eq!(key, "networks.loopback.control");
        // An empty section is an error too, not a network quietly left out.
        let (key, _) = err_key("  sip:\n");
        assert_eq!(key, "networks.sip");
    }

    #[test]
    fn two_networks_cannot_share_a_domain() {
        let (key, message) = err_key(
            "  xmpp:\n    component:\n      domain: matrix.example.org\n      secret: s3cret\n  sip:\n    domain: matrix.example.org\n    proxy: 127.0.0.1:5060\n",
        );
        assert!(key == "networks.sip" || key == "networks.xmpp", "{key}");
        assert!(message.contains("matrix.example.org"), "{message}");
    }

    #[test]
    fn the_fixture_and_the_example_configure() {
        let fixture = Config::parse(include_str!("../tests/fixtures/bridge.yaml")).unwrap();
        let networks = configure(&fixture, &|_| None).expect("the test fixture is valid");
        assert_eq!(networks.connectors.len(), 3);
        let example = Config::parse(include_str!("../config.example.yaml")).unwrap();
        // The example's networks hold placeholders: refused for them, not for their shape.
        match configure(&example, &|_| Some("a_real_secret".into())) {
            Err(ConfigError::Invalid { key, message }) => {
                assert!(key.starts_with("networks."), "{key}");
                assert!(message.contains("placeholder"), "{message}");
            }
            Err(other) => {
                panic!("the example's networks must be refused for a placeholder: {other}")
            }
            Ok(_) => panic!("the example's networks must be refused for their placeholders"),
        }
    }
}
