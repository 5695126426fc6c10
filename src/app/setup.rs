//! What start-up prepares before the bridge runs: files written for the owner only, the
//! store and its login key, tracing, and the homeserver registration.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde_json::json;
use tracing::{info, warn};

use crate::config::{Config, LogFormat, ResolvedSecrets};
use crate::network::Connector;
use crate::store::Store;

/// Writes a file that holds secrets (the registration, a dump of the store): created, or
/// truncated and made, readable by the owner only, whatever the umask.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a file this call created.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} owner-only", path.display()))?;
    std::io::Write::write_all(&mut f, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// What `check-config` warns about: the files with secrets (the config itself, the
/// registration next to the config or in the working folder, the store folder and everything in it, `login.key`, the
/// secret files the config names) that others than the owner may read or write.
pub(super) fn permission_warnings(
    config: &Config,
    networks: &crate::connectors::Networks,
    config_path: &Path,
) -> Vec<String> {
    let mut paths: Vec<(String, PathBuf)> = vec![
        ("the config".into(), config_path.to_owned()),
        ("database.path".into(), config.database.path.clone()),
    ];
    let beside = config_path
        .parent()
        .map(|p| p.join("registration.yaml"))
        .unwrap_or_else(|| PathBuf::from("registration.yaml"));
    paths.push(("the registration".into(), beside));
    paths.push((
        "the registration".into(),
        PathBuf::from("registration.yaml"),
    ));
    for (key, file) in config.secret_files() {
        paths.push((key.into(), file));
    }
    paths.extend(networks.secret_files.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (what, path) in paths {
        for (loose, mode) in crate::store::loose_permissions(&path) {
            let id = std::fs::canonicalize(&loose).unwrap_or_else(|_| loose.clone());
            if seen.insert(id) {
                let fix = if loose.is_dir() { "700" } else { "600" };
                out.push(format!(
                    "{} ({what}) has mode {mode:o}: others may read secrets in it; run `chmod {fix} {}`",
                    loose.display(),
                    loose.display()
                ));
            }
        }
    }
    out
}

/// The key that seals inbox items and login credentials: from the config, else from
/// `login.key` in the database folder (generated, readable by the owner only, on first start).
pub(super) fn login_key(folder: &Path, configured: Option<&str>) -> Result<crate::store::LoginKey> {
    if let Some(secret) = configured {
        return crate::store::LoginKey::from_secret(secret)
            .map_err(|e| anyhow::anyhow!("bridge.login_key {e}"));
    }
    let file = folder.join("login.key");
    let secret = match std::fs::read_to_string(&file) {
        Ok(s) => {
            if !crate::store::loose_permissions(&file).is_empty() {
                warn!(file = %file.display(), "the key file was readable by others; made it owner-only");
                #[cfg(unix)]
                std::fs::set_permissions(
                    &file,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .with_context(|| format!("cannot make {} owner-only", file.display()))?;
            }
            s.trim().to_owned()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret =
                crate::store::LoginKey::generate_secret().map_err(|e| anyhow::anyhow!(e))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options
                .open(&file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            std::io::Write::write_all(&mut f, secret.as_bytes())?;
            f.sync_all()?;
            info!(file = %file.display(), "generated the key that seals login credentials; back it up with the store");
            secret
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    crate::store::LoginKey::from_secret(&secret)
        .map_err(|e| anyhow::anyhow!("{} {e}", file.display()))
}

/// Opens the store with its key (creating the folder, owner-only, and the key file when
/// they are missing) and the configured cache.
pub(super) fn open_store(config: &Config, secrets: &ResolvedSecrets) -> Result<Store> {
    let path = &config.database.path;
    crate::store::prepare_dir(path).with_context(|| format!("cannot create {}", path.display()))?;
    let key = login_key(path, secrets.login_key.as_deref())?;
    Store::open(path, key, config.database.cache_bytes()).with_context(|| {
        format!(
            "cannot open the store at {} (is another isthmus running on it?)",
            path.display()
        )
    })
}

pub(super) fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.logging.level))
        // The SIP stack logs whole messages (with their text) at info: never let it.
        .add_directive("rsipstack=warn".parse().expect("a valid directive"))
        // tokio-xmpp traces every frame, SASL exchanges of own-account logins included.
        .add_directive("tokio_xmpp=info".parse().expect("a valid directive"))
        .add_directive("xso=info".parse().expect("a valid directive"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.logging.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.init(),
    }
}

pub(super) fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The registration file for the homeserver, as YAML.
pub fn registration_yaml(
    config: &Config,
    secrets: &ResolvedSecrets,
    networks: &[Arc<dyn Connector>],
) -> Result<String> {
    let domain = regex_escape(&config.homeserver.domain);
    if networks.is_empty() {
        bail!(
            "no network is enabled in `networks`; enable at least one before generating the registration"
        );
    }
    let mut users = vec![json!({
        "exclusive": true,
        "regex": format!("@{}:{domain}", regex_escape(&config.appservice.bot_localpart)),
    })];
    let mut aliases = Vec::new();
    let template_regex = |template: &str, network: &str| {
        let t = template.replace("{network}", network);
        let (before, after) = t.split_once("{id}").expect("validated template");
        format!("{}.+{}", regex_escape(before), regex_escape(after))
    };
    for n in networks {
        let id = n.info().id.as_str();
        users.push(json!({
            "exclusive": true,
            "regex": format!("@{}:{domain}", template_regex(&config.bridge.ghost_localpart_template, id)),
        }));
        aliases.push(json!({
            "exclusive": true,
            "regex": format!("#{}:{domain}", template_regex(&config.bridge.alias_localpart_template, id)),
        }));
    }
    let reg = json!({
        "id": config.appservice.id,
        "url": config.appservice.url,
        "as_token": secrets.as_token,
        "hs_token": secrets.hs_token,
        "sender_localpart": config.appservice.bot_localpart,
        "rate_limited": false,
        "receive_ephemeral": config.appservice.receive_ephemeral,
        "de.sorunome.msc2409.push_ephemeral": config.appservice.receive_ephemeral,
        "protocols": networks.iter().map(|n| n.info().protocol.clone()).collect::<Vec<_>>(),
        "namespaces": {"users": users, "aliases": aliases, "rooms": []},
    });
    let body = serde_saphyr::to_string(&reg).context("cannot serialise the registration")?;
    Ok(format!(
        "# Appservice registration for isthmus, generated by `isthmus generate-registration`.\n# It holds secrets: keep it readable by the homeserver only.\n{body}"
    ))
}
