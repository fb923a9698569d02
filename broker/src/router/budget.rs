//! The broker-wide budget for output written to clients but not yet sent (RFC 1 §6.4).
//! Each connection charges what it queues and releases what its socket takes; when the
//! total passes the limit, the connection with the most unsent output is disconnected and
//! logged, then the next largest, until the total is back under. The per-connection limit
//! stays in `ConnOut`; this bounds the sum, so many slow readers cannot together eat the
//! broker's memory.
//!
//! Locks: the registry's lock is never held while a connection's own lock is taken
//! (`shed` picks under it, then closes after dropping it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::conn_out::ConnOut;

/// The default broker-wide limit on unsent client output.
pub const DEFAULT_MAX_OUTPUT: usize = 256 << 20;

pub struct OutputBudget {
    limit: usize,
    used: AtomicUsize,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Weak<ConnOut>>>,
}

impl OutputBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(OutputBudget { limit, used: AtomicUsize::new(0), next_id: AtomicU64::new(1), conns: Mutex::default() })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued for clients and not yet taken by their sockets.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(super) fn register(&self, conn: &Arc<ConnOut>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().insert(id, Arc::downgrade(conn));
        id
    }

    pub(super) fn forget(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// Charge `n` queued bytes; true if the budget is now exceeded.
    pub(super) fn charge(&self, n: usize) -> bool {
        self.used.fetch_add(n, Ordering::Relaxed) + n > self.limit
    }

    pub(super) fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }

    /// Disconnect the largest holders of unsent output until the total is within the limit.
    pub(super) fn shed(&self) {
        while self.used() > self.limit {
            let largest = {
                let conns = self.conns.lock();
                conns.values().filter_map(Weak::upgrade).max_by_key(|c| c.unsent())
            };
            let Some(conn) = largest.filter(|c| c.unsent() > 0) else { return };
            tracing::warn!(
                client = %conn.label(),
                unsent = conn.unsent(),
                total = self.used(),
                limit = self.limit,
                "the broker's output budget is exceeded; disconnecting the client with the most unsent output"
            );
            conn.close();
        }
    }
}
