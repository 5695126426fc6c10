//! Watching what the running bridge depends on: the store, probed until it takes writes
//! again, and the homeserver, which must reach the bridge and be reached by it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

use crate::backoff::Policy;
use crate::bridge::Bridge;
use crate::config::Config;
use crate::matrix::HomeserverClient;
use crate::store::Store;

/// How often the store watchdog probes a store that works.
pub(super) const STORE_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How often it probes a store that fails.
pub(super) const STORE_RETRY: Policy = Policy::constant(Duration::from_secs(2));

/// Probes the store, every 10 s while it works and every 2 s while it fails, so that a store
/// that failed is marked healthy again as soon as it takes writes. Returns (with the reason)
/// only when the store keeps failing although its folder takes writes again: sled does not
/// recover from some I/O errors within the process.
pub(super) async fn store_watchdog(store: Store) -> String {
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
pub(super) const REACH_HOMESERVER: Policy =
    Policy::constant(Duration::from_secs(2)).with_max_retries(15);
/// Start-up: how often to ask the homeserver again to ping the bridge.
pub(super) const REACHED_BY_HOMESERVER: Policy =
    Policy::constant(Duration::from_secs(2)).with_max_retries(5);

/// Checks the homeserver both ways: reachable, accepts our token, and reaches us.
pub(super) async fn check_homeserver(
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
