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

impl Level {
    /// Every level, most severe first.
    pub const ALL: [Level; 4] = [Level::Error, Level::Warn, Level::Info, Level::Debug];

    /// The word a process module's stderr line starts with to say its level, before `: `
    /// (RFC 5 §6).
    pub fn tag(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// A stderr line's level and the rest of it, if it starts with `TAG: ` (RFC 5 §6).
    pub fn strip_tag(line: &str) -> Option<(Level, &str)> {
        Level::ALL.into_iter().find_map(|l| line.strip_prefix(l.tag())?.strip_prefix(": ").map(|rest| (l, rest)))
    }
}
