//! The `networks.sip` section: owned, documented and checked here.
//!
//! The doc comments on the fields are the configuration reference (`docs/configuration.md`
//! follows them).

use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::network::Connector;
use crate::network::config::{
    ConfigContext, ConfigError, NetworkConfig, check_placeholder, invalid, key,
};

/// `networks.sip` section.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SipConfig {
    /// The gateway domain the SIP proxy routes to the bridge: Matrix user `@alice:example.org`
    /// is `sip:alice@<domain>`.
    pub domain: String,
    /// Address the bridge listens on for SIP: TCP (and UDP with `transport: udp`), or TLS
    /// only with `transport: tls`.
    #[serde(default = "default_sip_listen")]
    pub listen: SocketAddr,
    /// The SIP proxy every outgoing request goes through (the enterprise proxy or registrar).
    pub proxy: SocketAddr,
    /// Transport towards the proxy.
    #[serde(default)]
    pub transport: SipTransport,
    /// Source addresses whose requests are accepted (the proxy's address is always
    /// accepted); requests from anywhere else get 403, so only the proxy, which
    /// authenticates its users, can speak for them.
    #[serde(default)]
    pub trusted: Vec<std::net::IpAddr>,
    /// What to do when a SIP user asks to see a Matrix user's presence.
    #[serde(default)]
    pub subscriptions: crate::network::contacts::SubscriptionPolicy,
    /// Lifetime asked for presence subscriptions, in seconds; they are refreshed before
    /// they expire.
    #[serde(default = "default_sip_expires")]
    pub subscription_seconds: u32,
    /// Lifetime asked for registrations of users' own accounts, in seconds; refreshed
    /// before they expire.
    #[serde(default = "default_sip_expires")]
    pub register_seconds: u32,
    /// Certificates for `transport: tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SipTlsConfig>,
}

/// `networks.sip.tls` section: what `transport: tls` needs.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SipTlsConfig {
    /// The bridge's certificate chain (PEM), presented to the proxy on the listener.
    pub cert_file: std::path::PathBuf,
    /// Its private key (PEM, PKCS #8 or RSA).
    pub key_file: std::path::PathBuf,
    /// CA certificates (PEM) that the proxy's certificate must chain to.
    pub ca_file: std::path::PathBuf,
}

/// Transport of SIP requests towards the proxy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    /// UDP: messages above about 1300 bytes are split (RFC 3428).
    #[default]
    Udp,
    /// TCP: messages up to 64 KiB go in one request.
    Tcp,
    /// TLS over TCP (RFC 3261 §26.2): certificates in `networks.sip.tls`; the proxy's
    /// certificate must chain to `networks.sip.tls.ca_file` and name the proxy's IP address
    /// (the address in `networks.sip.proxy`).
    Tls,
}

/// `path` holds at least one PEM certificate.
fn check_pem_certs(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(())
}

/// `path` holds a private key the SIP stack reads: PKCS #8 or RSA, in PEM.
fn check_pem_key(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::pem_file_iter(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?
        .filter_map(Result::ok)
        .count();
    let rsa = rustls::pki_types::PrivatePkcs1KeyDer::pem_file_iter(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?
        .filter_map(Result::ok)
        .count();
    if pkcs8 + rsa == 0 {
        return Err(invalid(
            key,
            format!(
                "{} holds no PKCS #8 or RSA private key in PEM (an EC key converts with `openssl pkcs8 -topk8 -nocrypt`)",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn default_sip_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5070))
}
fn default_sip_expires() -> u32 {
    3600
}

impl NetworkConfig for SipConfig {
    const KEY: &'static str = "sip";

    fn validate(&self, _ctx: &ConfigContext<'_>) -> Result<(), ConfigError> {
        let d = &self.domain;
        // The placeholder first: it is not lowercase either, and this says why.
        check_placeholder(&key::<Self>("domain"), d)?;
        if d.is_empty() || d.contains(['@', '/', ' ', ':', ';']) || d != &d.to_lowercase() {
            return Err(invalid(
                &key::<Self>("domain"),
                "must be the gateway's SIP domain in lowercase, such as matrix.example.org",
            ));
        }
        if self.listen.ip().is_unspecified() {
            return Err(invalid(
                &key::<Self>("listen"),
                "must be the bridge's own address, such as 192.0.2.20:5070, not 0.0.0.0: it is also the contact address the bridge gives the proxy",
            ));
        }
        for (setting, v) in [
            ("subscription_seconds", self.subscription_seconds),
            ("register_seconds", self.register_seconds),
        ] {
            if !(10..=86_400).contains(&v) {
                return Err(invalid(
                    &key::<Self>(setting),
                    "must be between 10 and 86400",
                ));
            }
        }
        match (&self.transport, &self.tls) {
            (SipTransport::Tls, None) => Err(invalid(
                &key::<Self>("tls"),
                "is required with transport: tls (cert_file, key_file, ca_file)",
            )),
            (SipTransport::Tls, Some(tls)) => {
                check_pem_certs(&key::<Self>("tls.cert_file"), &tls.cert_file)?;
                check_pem_certs(&key::<Self>("tls.ca_file"), &tls.ca_file)?;
                check_pem_key(&key::<Self>("tls.key_file"), &tls.key_file)
            }
            (_, Some(_)) => Err(invalid(
                &key::<Self>("tls"),
                "is only used with transport: tls",
            )),
            _ => Ok(()),
        }
    }

    fn secret_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.tls
            .iter()
            .map(|tls| (key::<Self>("tls.key_file"), tls.key_file.clone()))
            .collect()
    }

    fn domains(&self) -> Vec<String> {
        vec![self.domain.clone()]
    }

    fn connector(&self, ctx: &ConfigContext<'_>) -> Result<Arc<dyn Connector>, ConfigError> {
        Ok(Arc::new(super::Sip::new(self, ctx.homeserver_domain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::{parse, test_context as ctx};

    fn section(extra: serde_json::Value) -> SipConfig {
        let mut v = serde_json::json!({
            "domain": "matrix.example.org",
            "listen": "127.0.0.1:5071",
            "proxy": "127.0.0.1:5061",
        });
        for (k, x) in extra.as_object().expect("an object") {
            v[k] = x.clone();
        }
        parse(&v).expect("the section parses")
    }

    fn err_key(cfg: &SipConfig) -> String {
        match cfg.validate(&ctx()) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn tls_needs_readable_pem_files() {
        assert_eq!(
            err_key(&section(serde_json::json!({"transport": "tls"}))),
            "networks.sip.tls"
        );
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("c.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = |transport: &str, cert: &std::path::Path, k: &std::path::Path| {
            section(serde_json::json!({
                "transport": transport,
                "tls": {"cert_file": cert, "key_file": k, "ca_file": &pem},
            }))
        };
        // A certificate where the key should be is refused.
        assert_eq!(
            err_key(&tls("tls", &pem, &pem)),
            "networks.sip.tls.key_file"
        );
        assert_eq!(
            err_key(&tls("tls", &missing, &key)),
            "networks.sip.tls.cert_file"
        );
        let good = tls("tls", &pem, &key);
        good.validate(&ctx()).unwrap();
        assert_eq!(
            good.secret_files(),
            [("networks.sip.tls.key_file".to_owned(), key.clone())]
        );
        // TLS files without TLS are a mistake worth naming.
        assert_eq!(err_key(&tls("tcp", &pem, &key)), "networks.sip.tls");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(
            err_key(&section(serde_json::json!({"domain": "Corp.Example"}))),
            "networks.sip.domain"
        );
        assert_eq!(
            err_key(&section(serde_json::json!({"listen": "0.0.0.0:5070"}))),
            "networks.sip.listen"
        );
        assert_eq!(
            err_key(&section(serde_json::json!({"register_seconds": 5}))),
            "networks.sip.register_seconds"
        );
        let good = section(serde_json::json!({}));
        good.validate(&ctx()).unwrap();
        assert_eq!(good.domains(), ["matrix.example.org"]);
        assert_eq!(good.connector(&ctx()).unwrap().info().id.as_str(), "sip");
    }
}
