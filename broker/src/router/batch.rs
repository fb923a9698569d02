//! Output batching, per thread. A thread that knows more input is already queued calls
//! `hold`; frames it sends to sockets then pile up in their buffers and go out in one
//! `write` at `flush`. A thread that does not hold writes at once. Nothing else may buffer.

use std::cell::RefCell;
use std::sync::Arc;

use super::conn_out::ConnOut;

thread_local! {
    /// `Some` while this thread holds output: the connections it left unflushed.
    static HELD: RefCell<Option<Vec<Arc<ConnOut>>>> = const { RefCell::new(None) };
}

/// Start holding this thread's socket output (idempotent).
pub fn hold() {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_none() {
            *h = Some(Vec::new());
        }
    });
}

/// Write out everything this thread held, and stop holding.
pub fn flush() {
    let held = HELD.with(|h| h.borrow_mut().take());
    for conn in held.into_iter().flatten() {
        conn.flush();
    }
}

/// Called by `ConnOut::enqueue`: true if the caller should flush now, false if the
/// connection was noted for this thread's next `flush`.
pub(super) fn defer(conn: &Arc<ConnOut>) -> bool {
    HELD.with(|h| match h.borrow_mut().as_mut() {
        None => true,
        Some(list) => {
            if !list.iter().any(|c| Arc::ptr_eq(c, conn)) {
                list.push(conn.clone());
            }
            false
        }
    })
}
