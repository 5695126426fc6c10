//! Connectors' own small state (presence subscriptions and the like), one namespace per
//! network. Connectors see it only through [`crate::network::ConnectorStore`].

use super::{Store, codec};
use crate::network::{ConnectorStore, SinkError};

/// The storage of one network.
pub struct ConnectorKv {
    tree: sled::Tree,
    prefix: Vec<u8>,
}

impl Store {
    /// The storage of `network`.
    pub fn connector_kv(&self, network: &str) -> ConnectorKv {
        ConnectorKv {
            tree: self.connector_kv.clone(),
            prefix: codec::prefix(&[network]),
        }
    }
}

fn err(e: impl std::error::Error + Send + Sync + 'static) -> SinkError {
    SinkError(crate::error::Reason::from_error(e))
}

impl ConnectorKv {
    fn key(&self, key: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(key.as_bytes());
        k
    }
}

impl ConnectorStore for ConnectorKv {
    fn get(&self, key: &str) -> Result<Option<serde_json::Value>, SinkError> {
        match self.tree.get(self.key(key)).map_err(err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(err),
        }
    }

    fn put(&self, key: &str, value: &serde_json::Value) -> Result<(), SinkError> {
        let bytes = serde_json::to_vec(value).map_err(err)?;
        self.tree.insert(self.key(key), bytes).map_err(err)?;
        self.tree.flush().map_err(err)?;
        Ok(())
    }

    fn delete(&self, key: &str) -> Result<(), SinkError> {
        self.tree.remove(self.key(key)).map_err(err)?;
        Ok(())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, serde_json::Value)>, SinkError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(self.key(prefix)) {
            let (k, v) = kv.map_err(err)?;
            let key = String::from_utf8_lossy(&k[self.prefix.len()..]).into_owned();
            out.push((key, serde_json::from_slice(&v).map_err(err)?));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespaced_per_network() {
        let s = Store::temporary().unwrap();
        let x = s.connector_kv("xmpp");
        let y = s.connector_kv("sip");
        x.put("sub:a", &json!(1)).unwrap();
        x.put("sub:b", &json!(2)).unwrap();
        x.put("other", &json!(3)).unwrap();
        y.put("sub:a", &json!(9)).unwrap();
        assert_eq!(x.get("sub:a").unwrap(), Some(json!(1)));
        assert_eq!(
            x.scan("sub:").unwrap(),
            vec![("sub:a".into(), json!(1)), ("sub:b".into(), json!(2))]
        );
        x.delete("sub:a").unwrap();
        assert_eq!(x.get("sub:a").unwrap(), None);
        assert_eq!(y.get("sub:a").unwrap(), Some(json!(9)));
    }
}
