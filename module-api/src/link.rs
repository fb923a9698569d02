//! `Link`: how a `Handle` reaches its broker. One implementation per module kind (native: the
//! C ABI host table; process and wasm kinds add theirs), so `Handle` and `Actor` are written once.

use std::time::Duration;

use crate::proto::Message;

/// Log severities, numbered as syslog (and as the C ABI's `SB_LOG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}

/// Why a link stopped working: the broker is gone or refused what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the broker closed the link")]
    Closed,
    #[error("the broker refused the message: {0}")]
    Refused(String),
}

/// The module side of a module's connection to its broker.
pub trait Link {
    /// Next message, waiting up to `timeout` (None = forever); `Ok(None)` when it passed.
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError>;
    fn send(&self, msg: &Message) -> Result<(), LinkError>;
    fn log(&self, level: Level, text: &str);
    /// A link that can make a whole request itself (the WASM host's `request`) does it
    /// here; the default is None, and `Handle::rpc` sends and receives. `timeout` is the
    /// rpc's deadline (None: wait for ever); when it passes the answer is ETIMEDOUT
    /// `no response from TOPIC within N ms`, and the link drops the response if it comes
    /// later. `Handle::rpc` has already refused a call to the module's own services.
    fn request(&mut self, _req: &Message, _timeout: Option<Duration>) -> Option<Result<Message, crate::Error>> {
        None
    }
}
