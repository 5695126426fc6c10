//! Stand-ins for the core in the kit's tests: a sink that records, a store in memory, a
//! login client that sends nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::network::{
    BridgeState, ConnectorStore, EventSink, NetworkId, RemoteEvent, RemoteEventHandler, SinkError,
};

/// A reported state: (user, state, message).
pub type Reported = (Option<String>, BridgeState, Option<String>);

/// Records the states reported to it.
#[derive(Default)]
pub struct Recorder {
    states: Mutex<Vec<Reported>>,
}

impl Recorder {
    /// What was reported, in order.
    pub fn states(&self) -> Vec<Reported> {
        self.states.lock().unwrap().clone()
    }
}

#[async_trait]
impl RemoteEventHandler for Recorder {
    async fn push(&self, _network: &NetworkId, _event: RemoteEvent) -> Result<(), SinkError> {
        Ok(())
    }

    async fn report_state(
        &self,
        _network: &NetworkId,
        user_id: Option<&str>,
        state: BridgeState,
        message: Option<String>,
    ) {
        self.states
            .lock()
            .unwrap()
            .push((user_id.map(str::to_owned), state, message));
    }
}

/// A connector store in memory; `failing` makes every write fail. It counts the calls made
/// to it: `reads` (`get` and `scan`), `puts` (each a flush in the real store) and `deletes`.
#[derive(Default)]
pub struct MemStore {
    pub map: Mutex<BTreeMap<String, serde_json::Value>>,
    pub failing: AtomicBool,
    pub reads: AtomicUsize,
    pub puts: AtomicUsize,
    pub deletes: AtomicUsize,
}

impl MemStore {
    fn check(&self) -> Result<(), SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(SinkError("disk full".into()))
        } else {
            Ok(())
        }
    }
}

impl ConnectorStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<serde_json::Value>, SinkError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.map.lock().unwrap().get(key).cloned())
    }

    fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), SinkError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.map
            .lock()
            .unwrap()
            .insert(key.to_owned(), value.clone());
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.deletes.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        self.map.lock().unwrap().remove(key);
        Ok(())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, SinkError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self
            .map
            .lock()
            .unwrap()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// A sink reporting to `recorder`, with a store in memory.
pub fn sink(recorder: Arc<Recorder>) -> EventSink {
    EventSink::new(
        NetworkId::new("test"),
        recorder,
        Arc::new(MemStore::default()),
        crate::tasks::Tasks::new(),
    )
}

/// A login's client that is connected and sends nothing, for tests of login bookkeeping.
pub struct IdleClient;

#[async_trait]
impl crate::network::NetworkClient for IdleClient {
    fn state(&self) -> BridgeState {
        BridgeState::Connected
    }

    async fn send_message(
        &self,
        _portal: &crate::network::PortalRef,
        _message: &crate::network::OutgoingMessage,
    ) -> Result<crate::network::RemoteMessageId, crate::network::NetworkError> {
        Err(crate::network::NetworkError::Unsupported("sending"))
    }
}
