//! TLS for own-account connections: the roots trusted (the system's, or a CA file) and the
//! client settings every connection shares.

use super::*;

/// Why the TLS trust for own-account connections could not be set up.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// The CA file is not PEM.
    #[error("{} is not a PEM certificate file: {source}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// The CA file holds no certificate.
    #[error("{} holds no certificate", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of the CA file was refused as a trust root.
    #[error("{}: {source}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Reason,
    },
    /// Neither the system nor the config gave a trusted certificate.
    #[error(
        "no trusted certificates: install the system's CA certificates or set networks.xmpp.accounts.ca_file"
    )]
    NoRoots,
    /// The TLS library refused the configuration.
    #[error("{0}")]
    Config(#[source] Reason),
}

/// Reads a PEM file of CA certificates.
pub fn load_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.to_owned(),
            source: Reason::from_error(e),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::NotPem {
            path: path.to_owned(),
            source: Reason::from_error(e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// What own-account connections share: TLS trust and limits.
pub(crate) struct ClientSettings {
    ca_file: Option<std::path::PathBuf>,
    pub(super) allow_hosts: Vec<String>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>>,
    pub(super) max_stanza_bytes: usize,
    pub(super) max_depth: usize,
}

impl ClientSettings {
    pub fn new(cfg: &XmppConfig) -> Self {
        Self {
            ca_file: cfg.accounts.ca_file.clone(),
            allow_hosts: cfg.accounts.allow_hosts.clone(),
            tls: OnceLock::new(),
            max_stanza_bytes: cfg.max_stanza_bytes,
            max_depth: cfg.max_depth,
        }
    }

    /// The TLS client configuration: the system's trust roots and the configured CA file.
    pub(super) fn tls(&self) -> Result<Arc<rustls::ClientConfig>, NetworkError> {
        self.tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if let Some(path) = &self.ca_file {
                    for cert in load_ca_file(path)? {
                        roots.add(cert).map_err(|e| TlsError::BadCertificate {
                            path: path.to_owned(),
                            source: Reason::from_error(e),
                        })?;
                    }
                }
                if roots.is_empty() {
                    return Err(TlsError::NoRoots);
                }
                debug!(system_roots = added, "TLS roots for XMPP accounts loaded");
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(Reason::from_error(e)))?
                .with_root_certificates(roots)
                .with_no_client_auth();
                Ok(Arc::new(config))
            })
            .clone()
            .map_err(|e| NetworkError::Internal(Reason::from_error(e)))
    }
}
