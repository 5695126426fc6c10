//! Start-up and shutdown: the command line, config, tracing, and wiring the parts together.
//!
//! This is the only module that reads the environment or installs the tracing subscriber.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use serde_json::json;
use tracing::{error, info, warn};

use crate::appservice::{self, AppState};
use crate::backoff::Policy;
use crate::bridge::{Bridge, CoreSink};
use crate::config::{Config, LogFormat, ResolvedSecrets};
use crate::matrix::{HomeserverClient, HsConfig};
use crate::metrics::Metrics;
use crate::network::{Connector, EventSink};
use crate::store::Store;
use crate::tasks::Tasks;

/// isthmus: a Matrix bridge to other IM networks.
#[derive(Parser, Debug)]
#[command(name = "isthmus", version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, default_value = "config.yaml")]
    pub config: PathBuf,
    /// What to do; `run` when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the bridge.
    Run,
    /// Write the appservice registration file for the homeserver.
    GenerateRegistration {
        /// Where to write it.
        #[arg(short, long, default_value = "registration.yaml")]
        output: PathBuf,
    },
    /// Check the configuration and exit.
    CheckConfig,
    /// Dump the whole store as JSON (for backups). The bridge must be stopped.
    Export {
        /// Output file; standard output when left out.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replace the whole store with a JSON dump made by `export`. The bridge must be stopped.
    Import {
        /// The dump.
        #[arg(short, long)]
        input: PathBuf,
    },
}

/// Runs the command line; the error is printed by `main`.
pub fn main(cli: Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    let env = |name: &str| std::env::var(name).ok();
    let secrets = config
        .validate(&env)
        .with_context(|| format!("configuration {} is not valid", cli.config.display()))?;
    let networks = crate::connectors::configure(&config, &env)
        .with_context(|| format!("configuration {} is not valid", cli.config.display()))?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            for warning in permission_warnings(&config, &networks, &cli.config) {
                eprintln!("warning: {warning}");
            }
            println!("{}: the configuration is valid", cli.config.display());
            Ok(())
        }
        Command::GenerateRegistration { output } => {
            let yaml = registration_yaml(&config, &secrets, &networks.connectors)?;
            write_private(&output, yaml.as_bytes())?;
            println!(
                "wrote {}; add it to the homeserver's app_service_config_files and restart the homeserver",
                output.display()
            );
            Ok(())
        }
        Command::Export { output } => {
            let store = open_store(&config, &secrets)?;
            let dump = serde_json::to_vec_pretty(&store.export()?)?;
            match output {
                Some(path) => write_private(&path, &dump)?,
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&dump)?;
                }
            }
            Ok(())
        }
        Command::Import { input } => {
            let text = std::fs::read(&input)
                .with_context(|| format!("cannot read {}", input.display()))?;
            let dump: serde_json::Value = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not JSON", input.display()))?;
            let store = open_store(&config, &secrets)?;
            tokio::runtime::Runtime::new()?.block_on(store.import(&dump))?;
            println!(
                "imported {} into {}",
                input.display(),
                config.database.path.display()
            );
            Ok(())
        }
        Command::Run => {
            init_tracing(&config);
            crate::alloc::tune();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(run(config, secrets, networks.connectors))
        }
    }
}

/// Writes a file that holds secrets (the registration, a dump of the store): created, or
/// truncated and made, readable by the owner only, whatever the umask.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
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
fn permission_warnings(
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
fn login_key(folder: &Path, configured: Option<&str>) -> Result<crate::store::LoginKey> {
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
fn open_store(config: &Config, secrets: &ResolvedSecrets) -> Result<Store> {
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

fn init_tracing(config: &Config) {
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

fn regex_escape(s: &str) -> String {
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

/// Runs the bridge until SIGINT or SIGTERM.
async fn run(
    config: Config,
    secrets: ResolvedSecrets,
    networks: Vec<Arc<dyn Connector>>,
) -> Result<()> {
    let config = Arc::new(config);
    info!(version = env!("CARGO_PKG_VERSION"), "isthmus starting");
    let store = open_store(&config, &secrets)?;
    let week_ago = crate::bridge::now_ms().saturating_sub(7 * 24 * 3600 * 1000);
    let pruned = store.prune_transactions(week_ago)?;
    let metrics = Metrics::new();
    let hs = HomeserverClient::new(
        HsConfig {
            url: config.homeserver.url.clone(),
            server_name: config.homeserver.domain.clone(),
            as_token: secrets.as_token.clone(),
            appservice_id: config.appservice.id.clone(),
            bot_localpart: config.appservice.bot_localpart.clone(),
            max_concurrency: config.homeserver.max_concurrency,
            max_retries: config.homeserver.max_retries,
        },
        Some(metrics.matrix_request_seconds.clone()),
    )?;
    // Every background task of the core and the networks runs here, so that a shutdown can
    // wait for them.
    let tasks = Tasks::new();
    let bridge = Bridge::new(
        Arc::clone(&config),
        hs.clone(),
        store.clone(),
        metrics,
        networks,
        tasks.clone(),
    )?;
    if let Some(public) = config.bridge.media_public_url() {
        // Links are signed with a key derived from the homeserver token, a secret the
        // homeserver and the bridge already share.
        bridge.serve_file_links(crate::media::Links::new(
            public,
            &secrets.hs_token,
            config.bridge.media.link_lifetime_seconds,
        ));
    }
    // Not the number of portals: counting a sled tree walks it, which at start-up would read
    // every portal of a large store into memory (`/metrics` counts them when asked).
    info!(pruned, inbox = store.inbox_len(), "store opened");

    let files = raise_open_files();
    match files {
        Ok(f) => info!(
            before = f.before,
            soft = f.soft,
            hard = f.hard,
            "open-files limit (RLIMIT_NOFILE)"
        ),
        Err(ref e) => {
            warn!(error = %crate::error::chain(e), "could not raise the open-files limit")
        }
    }
    let files = files.ok();
    if let Some(f) = files {
        bridge.record_open_files(f.soft, f.hard);
    }
    let listen: SocketAddr = config.appservice.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (appservice.listen)"))?;

    // What an earlier run left in the inbox goes to the portal queues first, so events the
    // networks deliver from now on queue up behind it.
    let replayed = bridge.replay_inbox()?;
    let sink = CoreSink::new(&bridge);
    for (id, connector) in bridge.connectors() {
        connector
            .start(EventSink::new(
                id.clone(),
                sink.clone(),
                Arc::new(store.connector_kv(id.as_str())),
                tasks.clone(),
            ))
            .await
            .with_context(|| format!("network {id} failed to start"))?;
        bridge.set_state(id, None, crate::network::BridgeState::Connecting, None);
    }
    let logins = bridge.load_logins().await?;
    info!(
        logins,
        replayed, "networks started; pending inbox handed to portals"
    );

    let state = Arc::new(AppState {
        bridge: Arc::clone(&bridge),
        hs_token: secrets.hs_token.clone(),
        allow_query_token: config.appservice.allow_query_token,
        provisioning_secret: secrets.provisioning_secret.clone(),
    });
    let limits = appservice::ListenerLimits {
        header_timeout: Duration::from_secs(config.appservice.request_header_timeout_secs),
        body_timeout: Duration::from_secs(config.appservice.request_body_timeout_secs),
        max_connections: connection_cap(config.appservice.max_connections, files),
    };
    tasks.spawn(appservice::serve(
        listener,
        appservice::router(state),
        limits,
        tasks.clone(),
        tasks.cancelled(),
    ));
    info!(
        %listen,
        max_connections = limits.max_connections,
        header_timeout_secs = limits.header_timeout.as_secs(),
        body_timeout_secs = limits.body_timeout.as_secs(),
        "appservice listening"
    );

    if let Err(e) = check_homeserver(&hs, &bridge, &config).await {
        error!(error = format!("{e:#}"), "start-up checks failed");
        tasks.cancel();
        return Err(e);
    }
    for (id, connector) in bridge.connectors() {
        for (_, s) in connector.status() {
            bridge.set_state(id, None, s, None);
        }
    }
    info!("isthmus is ready");
    if config.bridge.presence_refresh_seconds > 0 {
        let every = Duration::from_secs(config.bridge.presence_refresh_seconds);
        tasks.spawn_loop(Arc::clone(&bridge).keep_presence(every));
    }

    let broken = tokio::select! {
        () = shutdown_signal() => None,
        why = store_watchdog(store.clone()) => Some(why),
    };
    if let Some(why) = &broken {
        error!(reason = %why, "the store cannot recover in this process; stopping so that the service manager starts isthmus again (what was stored replays then)");
    }
    info!("shutting down");
    // Cancel, drain, join: the networks say their goodbyes first; then every task is asked
    // to stop (the listener takes no new connection, queues no new item) and given a bounded
    // time to finish what it holds. Whatever is left then is in the inbox, replayed at the
    // next start.
    for (_, connector) in bridge.connectors() {
        connector.stop().await;
    }
    match tasks.shutdown(SHUTDOWN_BOUND).await {
        Ok(()) => info!("background tasks finished"),
        Err(e) => warn!(
            error = %e,
            bound_secs = SHUTDOWN_BOUND.as_secs(),
            "stopping without them; what they held stays in the inbox for the next start"
        ),
    }
    if let Some(why) = broken {
        bail!("{why}");
    }
    store.flush().await?;
    store.restrict_files()?;
    info!("stopped");
    Ok(())
}

/// How long a shutdown waits for the background tasks to finish what they hold.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(10);

/// How often the store watchdog probes a store that works.
const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How often it probes a store that fails.
const STORE_RETRY: Policy = Policy::constant(Duration::from_secs(2));

/// Probes the store, every 10 s while it works and every 2 s while it fails, so that a store
/// that failed is marked healthy again as soon as it takes writes. Returns (with the reason)
/// only when the store keeps failing although its folder takes writes again: sled does not
/// recover from some I/O errors within the process.
async fn store_watchdog(store: Store) -> String {
    let mut stuck = 0;
    let mut retry = STORE_RETRY.start();
    loop {
        let failing = !store.is_healthy();
        if failing {
            retry.wait().await;
        } else {
            retry.reset();
            tokio::time::sleep(STORE_PROBE_INTERVAL).await;
        }
        match store.probe(crate::bridge::now_ms()).await {
            Ok(()) => {
                if failing {
                    info!("the store takes writes again");
                }
                stuck = 0;
            }
            Err(e) => {
                let folder_writable = store.folder_writable();
                warn!(error = %crate::error::chain(&e), folder_writable, "the store cannot write; the bridge refuses new traffic until it can");
                stuck = if folder_writable { stuck + 1 } else { 0 };
                if stuck >= 3 {
                    return format!(
                        "the store keeps failing ({e}) although its folder is writable again"
                    );
                }
            }
        }
    }
}

/// Start-up: how often to ask again whether the homeserver is reachable, on top of the
/// client's own retries of each request (a homeserver started together with the bridge may
/// take a while).
const REACH_HOMESERVER: Policy = Policy::constant(Duration::from_secs(2)).with_max_retries(15);
/// Start-up: how often to ask the homeserver again to ping the bridge.
const REACHED_BY_HOMESERVER: Policy = Policy::constant(Duration::from_secs(2)).with_max_retries(5);

/// Checks the homeserver both ways: reachable, accepts our token, and reaches us.
async fn check_homeserver(
    hs: &HomeserverClient,
    bridge: &Arc<Bridge>,
    config: &Config,
) -> Result<()> {
    let mut retry = REACH_HOMESERVER.start();
    let versions = loop {
        match hs.versions().await {
            Ok(v) => break v,
            Err(e) => {
                let Some(delay) = retry.next_delay() else {
                    bail!(
                        "the homeserver at {} (homeserver.url) is unreachable: {e}",
                        config.homeserver.url
                    );
                };
                warn!(error = %crate::error::chain(&e), url = %config.homeserver.url, "homeserver not reachable yet, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    };
    info!(versions = ?versions, "homeserver reachable");
    let me = hs.whoami(None).await.with_context(|| {
        "the homeserver refused the as_token: is the registration file installed and the homeserver restarted?"
    })?;
    if me.as_str() != bridge.bot().as_str() {
        bail!(
            "the homeserver says the as_token belongs to {me}, expected {}",
            bridge.bot()
        );
    }
    hs.register_ghost(&config.appservice.bot_localpart).await?;
    let bot = bridge.bot().to_owned();
    let current = hs.get_profile(&bot).await.ok().and_then(|(d, _)| d);
    if current.as_deref() != Some(config.appservice.bot_displayname.as_str()) {
        hs.set_displayname(Some(&bot), &config.appservice.bot_displayname)
            .await?;
    }
    let mut retry = REACHED_BY_HOMESERVER.start();
    loop {
        match hs
            .ping_appservice(&format!("isthmus-startup-{}", crate::bridge::now_ms()))
            .await
        {
            Ok(d) => {
                info!(
                    duration_ms = d.as_millis() as u64,
                    "homeserver reached the bridge (ping)"
                );
                return Ok(());
            }
            Err(e) => {
                let Some(delay) = retry.next_delay() else {
                    bail!(
                        "the homeserver cannot reach the bridge at {} (appservice.url): {e}",
                        config.appservice.url
                    );
                };
                warn!(error = %crate::error::chain(&e), "homeserver could not ping the bridge yet, retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The open-files limit (RLIMIT_NOFILE): the soft limit found at start, and the soft and
/// hard limits after raising the soft one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard limit: each connection (appservice,
/// XMPP, SIP) and each sled file takes a descriptor, and the usual soft default of 1024 is
/// far below what the system allows. `u64::MAX` stands for "unlimited".
pub fn raise_open_files() -> std::io::Result<OpenFiles> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let before = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if before >= hard {
        return Ok(OpenFiles {
            before,
            soft: before,
            hard,
        });
    }
    let mut raised = current;
    raised.current = current.maximum;
    setrlimit(Resource::Nofile, raised).map_err(std::io::Error::from)?;
    let now = getrlimit(Resource::Nofile);
    Ok(OpenFiles {
        before,
        soft: now.current.unwrap_or(u64::MAX),
        hard,
    })
}

/// The connection cap of the appservice listener: the configured one, lowered to leave a
/// quarter of the open-files limit (at least 64 descriptors) to the rest of the bridge.
pub fn connection_cap(configured: usize, files: Option<OpenFiles>) -> usize {
    let Some(files) = files else {
        return configured;
    };
    let reserve = (files.soft / 4).max(64);
    let fit = usize::try_from(files.soft.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(fit.max(16))
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_room_below_the_open_files_limit() {
        let files = |soft| {
            Some(OpenFiles {
                before: 1024,
                soft,
                hard: soft,
            })
        };
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, files(1024)), 768);
        assert_eq!(connection_cap(4096, files(1 << 20)), 4096);
        assert_eq!(connection_cap(4096, files(u64::MAX)), 4096);
        assert_eq!(connection_cap(4096, files(40)), 16);
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let f = raise_open_files().unwrap();
        assert_eq!(f.soft, f.hard);
        assert!(f.soft >= f.before);
    }
}
