//! The state of a link or a login, and what a connector gets at start.

use std::sync::OnceLock;

use tokio::sync::watch;

use crate::network::{BridgeState, ConnectorStore, EventSink, NetworkError};

/// The current state of one link (a gateway's) or one login, readable at any time and
/// watchable; the core hears of a change once, not of every repeat.
#[derive(Debug)]
pub struct StateCell {
    tx: watch::Sender<BridgeState>,
}

impl StateCell {
    /// A cell holding `initial`.
    pub fn new(initial: BridgeState) -> Self {
        Self {
            tx: watch::channel(initial).0,
        }
    }

    /// The current state.
    pub fn get(&self) -> BridgeState {
        *self.tx.borrow()
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<BridgeState> {
        self.tx.subscribe()
    }

    /// Records `state`; true when it differs from the state before.
    pub fn set(&self, state: BridgeState) -> bool {
        self.tx.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        })
    }

    /// Records `state` and, when it changed, reports it to the core through `sink` (for the
    /// login of Matrix user `user`, or the bridge-wide link when `None`). Without a sink (not
    /// started) the state is only recorded. Returns whether it changed.
    pub async fn report(
        &self,
        sink: Option<&EventSink>,
        user: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) -> bool {
        let changed = self.set(state);
        if changed && let Some(sink) = sink {
            sink.report_state(user, state, message).await;
        }
        changed
    }
}

/// What a connector got at start (its sink, a listener), or, asked for before the start,
/// an outage of the connector named `network`: the core waits for it without counting it
/// against the item that asked.
pub fn started<'a, T>(cell: &'a OnceLock<T>, network: &str) -> Result<&'a T, NetworkError> {
    cell.get()
        .ok_or_else(|| NetworkError::Down(format!("the {network} connector is not started").into()))
}

/// The bridge's background tasks from the connector's sink, once started (see [`started`]):
/// where the connector runs everything it starts after its start.
pub fn tasks<'a>(
    sink: &'a OnceLock<EventSink>,
    network: &str,
) -> Result<&'a crate::tasks::Tasks, NetworkError> {
    started(sink, network).map(EventSink::tasks)
}

/// The connector's own storage from its sink, once started (see [`started`]).
pub fn store<'a>(
    sink: &'a OnceLock<EventSink>,
    network: &str,
) -> Result<&'a dyn ConnectorStore, NetworkError> {
    started(sink, network).map(EventSink::store)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::Retry;
    use crate::network::kit::testing::{Recorder, sink};

    #[tokio::test]
    async fn only_changes_are_reported() {
        let recorder = Arc::new(Recorder::default());
        let sink = sink(recorder.clone());
        let cell = StateCell::new(BridgeState::Starting);
        let mut seen = cell.subscribe();
        let steps = [
            BridgeState::Connecting,
            BridgeState::Connecting,
            BridgeState::Connected,
            BridgeState::Connected,
            BridgeState::TransientDisconnect,
            BridgeState::Connected,
        ];
        let mut expected = Vec::new();
        let mut last = cell.get();
        for state in steps {
            let changed = cell
                .report(
                    Some(&sink),
                    Some("@a:hs"),
                    state,
                    Some(format!("{state:?}")),
                )
                .await;
            assert_eq!(changed, state != last);
            if changed {
                expected.push((Some("@a:hs".to_owned()), state, Some(format!("{state:?}"))));
            }
            last = state;
            assert_eq!(cell.get(), state);
        }
        assert_eq!(recorder.states(), expected);
        assert!(seen.has_changed().unwrap());
        assert_eq!(*seen.borrow_and_update(), BridgeState::Connected);
    }

    #[tokio::test]
    async fn without_a_sink_the_state_is_only_recorded() {
        let cell = StateCell::new(BridgeState::Starting);
        assert!(cell.report(None, None, BridgeState::Connected, None).await);
        assert!(!cell.report(None, None, BridgeState::Connected, None).await);
        assert_eq!(cell.get(), BridgeState::Connected);
    }

    #[test]
    fn before_the_start_the_connector_is_down() {
        let cell: OnceLock<u8> = OnceLock::new();
        let e = started(&cell, "Foo").unwrap_err();
        assert_eq!(e.retry(), Retry::Outage);
        assert_eq!(e.to_string(), "link down: the Foo connector is not started");
        cell.set(7).unwrap();
        assert_eq!(started(&cell, "Foo").unwrap(), &7);
        let sinks: OnceLock<EventSink> = OnceLock::new();
        assert!(matches!(store(&sinks, "Foo"), Err(NetworkError::Down(_))));
    }
}
