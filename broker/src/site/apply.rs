//! Applying a site file to a running broker (`modctl apply`, `modctl config reload`,
//! SIGHUP): read and check it, take its search path, and let the supervisor bring the
//! modules to what it says. Broker settings that only a restart changes are reported.

use std::path::{Path, PathBuf};

use switchboard_protocol::{mgmt::ApplyReport, Errno, Error};

use super::Site;
use crate::supervisor::{ApplyError, Supervisor};

/// The settings the broker was started with, to tell which file changes need a restart.
#[derive(Debug, Clone, Default)]
pub struct Running {
    /// The file it was started with, as it was then, if any: the default for `apply` without
    /// a path, and what tells which of its settings changed since.
    pub site: Option<Site>,
    pub listen: PathBuf,
    pub allow_guests: bool,
    pub max_frame: usize,
    pub max_output: usize,
    /// This broker's rank: which of the file's modules are its own.
    pub rank: u32,
}

pub async fn apply_file(
    sup: &Supervisor,
    running: &Running,
    path: Option<&Path>,
    dry_run: bool,
) -> Result<ApplyReport, Error> {
    let path = path.or(running.site.as_ref().map(|s| s.path.as_path())).ok_or_else(|| {
        Error::new(Errno::EINVAL, "the broker was started without --config: name the site file to apply")
    })?;
    let site = Site::load(path).map_err(|e| Error::new(Errno::EINVAL, e.to_string()))?;
    let wanted = site.wanted(running.rank).map_err(|e| Error::new(Errno::EINVAL, e.to_string()))?;
    let mut report = sup.apply(&wanted, Some(site.search_path.clone()), dry_run).await.map_err(|e| match e {
        ApplyError::Cycle(c) => Error::new(Errno::EINVAL, c.to_string()),
        ApplyError::Broker(e) => e,
    })?;
    report.path = site.path.display().to_string();
    for step in report.steps.iter_mut().filter(|s| s.action == "remove") {
        if let Some(line) =
            site.modules.iter().find(|m| m.spec.request.name.as_deref() == Some(&step.name)).map(|m| m.line)
        {
            step.why = format!("disabled in the file (line {line})");
        }
    }
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if site.listen.as_deref().is_some_and(|l| canonical(l) != canonical(&running.listen)) {
        report.needs_restart.push("listen".into());
    }
    if site.allow_guests != running.allow_guests {
        report.needs_restart.push("allow_guests".into());
    }
    if site.max_frame.is_some_and(|m| m != running.max_frame) {
        report.needs_restart.push("max_frame".into());
    }
    if site.max_output.is_some_and(|m| m != running.max_output) {
        report.needs_restart.push("max_output_mb".into());
    }
    // Settings only the start reads: compared with the file the broker started with.
    if let Some(was) = &running.site {
        for (key, changed) in [
            ("grace_ms", site.grace != was.grace),
            ("log", site.log != was.log),
            (
                "rc",
                (&site.rc_start, &site.rc_stop, site.on_start_failure)
                    != (&was.rc_start, &was.rc_stop, was.on_start_failure),
            ),
        ] {
            if changed {
                report.needs_restart.push(key.into());
            }
        }
    }
    Ok(report)
}
