//! The sockets this gateway holds: node id → connection.
//!
//! One entry per node: a newer socket replaces the older one (which the caller then closes as
//! superseded), and a socket removes its entry only while it is still the one registered.

use crate::outbox::Outbox;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// A registered socket.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// Connection id, unique across the fleet.
    pub id: Uuid,
    /// When it opened, epoch ms.
    pub since_ms: i64,
    /// WebSocket or SSE.
    pub transport: flotilla_shared::presence::Transport,
    /// Its outbound queue.
    pub outbox: Arc<Outbox>,
}

/// node id → its socket on this gateway.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    conns: Mutex<HashMap<Uuid, Conn>>,
}

impl Registry {
    /// Registers `conn` for `node`, returning the socket it replaces.
    pub(crate) fn insert(&self, node: Uuid, conn: Conn) -> Option<Conn> {
        self.conns.lock().unwrap().insert(node, conn)
    }

    /// Removes the node's entry if `conn_id` is still the registered socket.
    pub(crate) fn remove(&self, node: Uuid, conn_id: Uuid) -> bool {
        let mut conns = self.conns.lock().unwrap();
        match conns.get(&node) {
            Some(c) if c.id == conn_id => {
                conns.remove(&node);
                true
            }
            _ => false,
        }
    }

    /// Runs `f` on the node's socket, if this gateway holds one.
    pub(crate) fn with<T>(&self, node: Uuid, f: impl FnOnce(&Conn) -> T) -> Option<T> {
        self.conns.lock().unwrap().get(&node).map(f)
    }

    /// Whether this gateway holds a socket of `node`.
    pub(crate) fn contains(&self, node: Uuid) -> bool {
        self.conns.lock().unwrap().contains_key(&node)
    }

    /// Number of sockets held.
    pub(crate) fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// A copy of every entry (for draining, resubscribing and restoring presence).
    pub(crate) fn snapshot(&self) -> Vec<(Uuid, Conn)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|(n, c)| (*n, c.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn {
            id: Uuid::new_v4(),
            since_ms: 0,
            transport: flotilla_shared::presence::Transport::Websocket,
            outbox: Arc::new(Outbox::new(1)),
        }
    }

    #[test]
    fn newer_socket_replaces_and_late_removal_of_older_is_ignored() {
        let registry = Registry::default();
        let node = Uuid::new_v4();
        let (old, new) = (conn(), conn());
        assert!(registry.insert(node, old.clone()).is_none());
        assert_eq!(
            registry.insert(node, new.clone()).map(|c| c.id),
            Some(old.id)
        );
        assert!(!registry.remove(node, old.id));
        assert_eq!(registry.with(node, |c| c.id), Some(new.id));
        assert!(registry.remove(node, new.id));
        assert!(!registry.contains(node));
        assert_eq!(registry.len(), 0);
    }
}
