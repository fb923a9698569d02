//! Log severities a module writes to its broker's log, one definition for every module kind
//! (the C ABI's `SB_LOG_*`, RFC 5's log messages, the WIT `log` import).

/// Log severities, numbered as syslog (and as the C ABI's `SB_LOG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 3,
    Warn = 4,
    Info = 6,
    Debug = 7,
}
