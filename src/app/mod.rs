//! Start-up and shutdown: the command line, config, tracing, and wiring the parts together.
//!
//! This is the only module that reads the environment or installs the tracing subscriber.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use crate::appservice::{self, AppState};
use crate::bridge::{Bridge, CoreSink};
use crate::config::{Config, ResolvedSecrets};
use crate::matrix::{HomeserverClient, HsConfig};
use crate::metrics::Metrics;
use crate::network::{Connector, EventSink};
use crate::tasks::Tasks;

mod limits;
mod setup;
mod watch;

pub use limits::{OpenFiles, connection_cap, raise_open_files};
pub use setup::registration_yaml;
use setup::{init_tracing, open_store, permission_warnings, write_private};
use watch::{check_homeserver, store_watchdog};

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
    // Every background task of the core and the networks runs here, so that a shutdown can
    // wait for them; the homeserver client stops waiting to retry once it begins.
    let tasks = Tasks::new();
    let hs = HomeserverClient::with_stop(
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
        tasks.stop_signal(),
    )?;
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
