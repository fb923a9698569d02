//! `ModuleSpec`: what the broker was asked to run under a name: the load request and the
//! broker-side settings around it (dependencies, restart policy, grace period). A site
//! file's `[[module]]` table and a `module.load` request both become one; a restart or a
//! reload runs it again. How two specs differ decides what `apply` does.

use std::time::Duration;

use switchboard_loaders::LoadRequest;

#[derive(Debug, Clone, Default)]
pub struct ModuleSpec {
    pub request: LoadRequest,
    /// Modules that must be running before this one starts, and that may not be removed
    /// while it runs.
    pub requires: Vec<String>,
    /// Modules that start before this one when both are being started (ordering only).
    pub after: Vec<String>,
    pub restart: RestartPolicy,
    /// How long it has to finalize on remove (the broker's default when None).
    pub grace: Option<Duration>,
}

/// What happens when a module fails (panics, traps, crashes, exits with an error).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    Never,
    /// Start it again after `delay`, doubling for each further restart up to `max_delay`,
    /// at most `max` times.
    OnFailure { max: u32, delay: Duration, max_delay: Duration },
}

impl RestartPolicy {
    pub const DEFAULT_MAX: u32 = 5;
    pub const DEFAULT_DELAY: Duration = Duration::from_millis(100);
    pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(30);

    /// The wait before restart number `done + 1`, or None when the policy gives up.
    pub fn delay(&self, done: u32) -> Option<Duration> {
        match *self {
            RestartPolicy::Never => None,
            RestartPolicy::OnFailure { max, delay, max_delay } if done < max => {
                Some(delay.saturating_mul(1u32 << done.min(31)).min(max_delay))
            }
            RestartPolicy::OnFailure { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RestartPolicy::Never => "never".into(),
            RestartPolicy::OnFailure { max, .. } => format!("on-failure (max {max})"),
        }
    }
}

/// How a wanted spec differs from the one a module runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// Only broker-side settings (dependencies, restart policy, grace): updated in place.
    Settings,
    /// Only the configuration table: a `config-update` message, or a reload if unhandled.
    Config,
    /// The file, its arguments or its load options: a reload. Says what changed.
    Module(String),
}

impl ModuleSpec {
    /// The modules it starts after: `requires` and `after` together (RFC 4 §7).
    pub fn starts_after(&self) -> impl Iterator<Item = &str> {
        self.requires.iter().chain(&self.after).map(String::as_str)
    }

    /// Compare `self` (running, from a file with `digest`) with `want` (whose file now has
    /// `want_digest`; None when it cannot be read).
    pub fn change_to(&self, digest: &str, want: &ModuleSpec, want_digest: Option<&str>) -> Change {
        let (a, b) = (&self.request, &want.request);
        let module = if a.path != b.path {
            Some(format!("path {} -> {}", a.path.display(), b.path.display()))
        } else if want_digest != Some(digest) {
            Some("the file changed".to_string())
        } else if a.args != b.args {
            Some("args changed".to_string())
        } else if a.isolated != b.isolated {
            Some(if b.isolated { "to run isolated" } else { "to run in the broker" }.to_string())
        } else if a.env != b.env || a.hello_timeout != b.hello_timeout || a.sandbox != b.sandbox {
            Some("load options changed".to_string())
        } else {
            None
        };
        if let Some(why) = module {
            Change::Module(why)
        } else if a.config != b.config {
            Change::Config
        } else if self.requires != want.requires
            || self.after != want.after
            || self.restart != want.restart
            || self.grace != want.grace
        {
            Change::Settings
        } else {
            Change::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_gives_up_after_max() {
        let p = RestartPolicy::OnFailure {
            max: 4,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
        let waits: Vec<Option<u64>> = (0..5).map(|n| p.delay(n).map(|d| d.as_millis() as u64)).collect();
        assert_eq!(waits, vec![Some(100), Some(200), Some(400), Some(500), None]);
        assert_eq!(RestartPolicy::Never.delay(0), None);
    }

    #[test]
    fn changes_are_classified() {
        let base = ModuleSpec {
            request: LoadRequest {
                path: "/m/a.so".into(),
                config: bytes::Bytes::from_static(&[0x80]),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(base.change_to("d", &base, Some("d")), Change::None);
        assert!(matches!(base.change_to("d", &base, Some("e")), Change::Module(_)));
        assert!(matches!(base.change_to("d", &base, None), Change::Module(_)));
        let mut c = base.clone();
        c.request.config = bytes::Bytes::from_static(&[0x81, 0xa1, b'a', 0x01]);
        assert_eq!(base.change_to("d", &c, Some("d")), Change::Config);
        let mut s = base.clone();
        s.requires = vec!["x".into()];
        assert_eq!(base.change_to("d", &s, Some("d")), Change::Settings);
        let mut m = c.clone();
        m.request.args = vec!["-v".into()];
        assert!(matches!(base.change_to("d", &m, Some("d")), Change::Module(_)));
    }
}
