//! The site file (RFC 4): which socket the broker listens on, where bare module names are
//! found, which modules run with what settings, in what order, and the rc scripts. This
//! module reads and checks a file and turns it into a `Site`; it never starts anything
//! (the supervisor's `apply` does) and never touches the running broker.
//!
//! Every error names the file, the line and column, and the key.

mod apply;
mod file;
mod overlay;
mod rc;
mod value;

pub use apply::{apply_file, Running};
pub use file::OnStartFailure;
pub use rc::{run_script, RcError};
pub use value::config_msgpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchboard_loaders::{check_name, search, DirGrant, LoadRequest, Sandbox, SearchPath};
use switchboard_protocol::mgmt::DirArgs;

use crate::supervisor::{levels, ModuleSpec, Node, RestartPolicy};
pub use overlay::{HostSite, OverlaySite};
use switchboard_protocol::ranks::RankSet;

/// A checked site file; paths in it are absolute.
#[derive(Debug, Clone, Default)]
pub struct Site {
    pub path: PathBuf,
    pub listen: Option<PathBuf>,
    pub allow_guests: bool,
    pub max_frame: Option<usize>,
    /// Unsent client output, all clients together, in bytes (`max_output_mb`).
    pub max_output: Option<usize>,
    pub grace: Option<Duration>,
    pub search_path: SearchPath,
    pub log: Option<String>,
    pub rc_start: Option<PathBuf>,
    pub rc_stop: Option<PathBuf>,
    pub on_start_failure: OnStartFailure,
    /// `[overlay]`: the instance this broker is one rank of (RFC 7), if any.
    pub overlay: Option<OverlaySite>,
    /// In file order, enabled or not.
    pub modules: Vec<SiteModule>,
}

#[derive(Debug, Clone)]
pub struct SiteModule {
    /// Its name is always set.
    pub spec: ModuleSpec,
    pub enabled: bool,
    /// The ranks it runs on (`ranks`; default all).
    pub ranks: RankSet,
    pub line: usize,
    /// In an instance, a bare `path` the search path does not find here: the error, given
    /// only where the module runs (RFC 4 §4.1). The spec's path is the bare name meanwhile.
    pub missing: Option<Missing>,
}

/// Where in the file a module's `path` was not found, and why.
#[derive(Debug, Clone)]
pub struct Missing {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// `FILE:LINE:COL: what`; `what` names the key.
    #[error("{}:{line}:{col}: {message}", path.display())]
    At { path: PathBuf, line: usize, col: usize, message: String },
    #[error("{}: {message}", path.display())]
    Whole { path: PathBuf, message: String },
}

impl Site {
    /// Read and check `path`. Relative paths in it are relative to its folder.
    pub fn load(path: &Path) -> Result<Site, SiteError> {
        let text = std::fs::read_to_string(path).map_err(|source| SiteError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// The modules the broker of `rank` runs: the enabled ones whose `ranks` include it, in
    /// file order. A standalone broker is rank 0. A module of this rank, enabled or not, whose
    /// bare `path` is not on the search path here is an error.
    pub fn wanted(&self, rank: u32) -> Result<Vec<ModuleSpec>, SiteError> {
        let mine = || self.modules.iter().filter(|m| m.ranks.contains(rank));
        if let Some(Missing { line, col, message }) = mine().find_map(|m| m.missing.as_ref()) {
            return Err(SiteError::At { path: self.path.clone(), line: *line, col: *col, message: message.clone() });
        }
        Ok(mine().filter(|m| m.enabled).map(|m| m.spec.clone()).collect())
    }

    pub fn parse(path: &Path, text: &str) -> Result<Site, SiteError> {
        let at = |span: std::ops::Range<usize>, message: String| {
            let (line, col) = line_col(text, span.start);
            SiteError::At { path: path.to_owned(), line, col, message }
        };
        let raw: file::File = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => at(span, e.message().to_string()),
            None => SiteError::Whole { path: path.to_owned(), message: e.message().to_string() },
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let b = raw.broker;
        let search_path = SearchPath::new(b.search_path.iter().map(|p| absolute(base, p)).collect());
        let mut site = Site {
            path: absolute(Path::new("."), &path.to_string_lossy()),
            listen: b.listen.as_deref().map(|l| absolute(base, l)),
            allow_guests: b.allow_guests,
            max_frame: b.max_frame,
            max_output: b.max_output_mb.map(|mb| mb.get().saturating_mul(1 << 20)),
            grace: b.grace_ms.map(Duration::from_millis),
            log: b.log,
            rc_start: b.rc.start.as_deref().map(|p| absolute(base, p)),
            rc_stop: b.rc.stop.as_deref().map(|p| absolute(base, p)),
            on_start_failure: b.rc.on_start_failure,
            search_path,
            overlay: None,
            modules: Vec::new(),
        };
        if let Some(o) = &raw.overlay {
            site.overlay = Some(OverlaySite::check(o, base).map_err(|(span, message)| at(span, message))?);
        }
        let size = site.overlay.as_ref().map_or(1, OverlaySite::size);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &raw.modules {
            let line = line_col(text, m.span().start).0;
            let table = m.span();
            let m = m.get_ref();
            let reference = Path::new(m.path.get_ref());
            let mut missing = None;
            let file = if SearchPath::is_bare(reference) {
                match site.search_path.resolve(reference) {
                    Ok(file) => file,
                    // Every broker of an instance reads the whole file; a module need only be
                    // installed where it runs (`wanted`).
                    Err(e) if site.overlay.is_some() => {
                        let (line, col) = line_col(text, m.path.span().start);
                        missing = Some(Missing { line, col, message: format!("key `path`: {e}") });
                        reference.to_owned()
                    }
                    Err(e) => return Err(at(m.path.span(), format!("key `path`: {e}"))),
                }
            } else {
                absolute(base, m.path.get_ref())
            };
            let name = match &m.name {
                Some(n) => {
                    check_name(n.get_ref()).map_err(|e| at(n.span(), format!("key `name`: {e}")))?;
                    n.get_ref().clone()
                }
                None => {
                    let n = search::name_from_path(&file);
                    check_name(&n).map_err(|e| {
                        at(
                            m.path.span(),
                            format!("key `path`: the file name does not make a module name ({e}); add `name`"),
                        )
                    })?;
                    n
                }
            };
            if let Some(first) = seen.insert(name.clone(), line) {
                let span = m.name.as_ref().map_or(m.path.span(), |n| n.span());
                return Err(at(span, format!("key `name`: a module named '{name}' is already on line {first}")));
            }
            let memory = m
                .memory_mb
                .map(|mb| {
                    Sandbox::memory_from_mb(mb).ok_or_else(|| {
                        at(table.clone(), format!("key `memory_mb`: more than {} MiB", Sandbox::MAX_MEMORY_MB))
                    })
                })
                .transpose()?;
            let mut dirs = Vec::new();
            for d in &m.dirs {
                dirs.push(dir_grant(base, d.get_ref()).map_err(|e| at(d.span(), format!("key `dirs`: {e}")))?);
            }
            let restart = match m.restart {
                file::Restart::Never => RestartPolicy::Never,
                file::Restart::OnFailure => RestartPolicy::OnFailure {
                    max: m.max_restarts.unwrap_or(RestartPolicy::DEFAULT_MAX),
                    delay: m.restart_delay_ms.map_or(RestartPolicy::DEFAULT_DELAY, Duration::from_millis),
                    max_delay: m.restart_max_delay_ms.map_or(RestartPolicy::DEFAULT_MAX_DELAY, Duration::from_millis),
                },
            };
            let spec = ModuleSpec {
                request: LoadRequest {
                    path: file,
                    name: Some(name),
                    args: m.args.clone(),
                    config: config_msgpack(m.config.as_ref()).into(),
                    env: m.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    hello_timeout: m.hello_timeout_ms.map(Duration::from_millis),
                    sandbox: Sandbox { memory, cpu: m.cpu_ms.map(Duration::from_millis), dirs },
                    inspect_only: false,
                    isolated: m.isolated,
                },
                requires: m.requires.iter().map(|r| r.get_ref().clone()).collect(),
                after: m.after.iter().map(|r| r.get_ref().clone()).collect(),
                restart,
                grace: m.grace_ms.map(Duration::from_millis),
            };
            let ranks = match &m.ranks {
                None => RankSet::All,
                Some(r) => {
                    let set: RankSet = r.get_ref().parse().map_err(|e| at(r.span(), format!("key `ranks`: {e}")))?;
                    set.resolve(size).map_err(|e| at(r.span(), format!("key `ranks`: {e}")))?;
                    set
                }
            };
            site.modules.push(SiteModule { spec, enabled: m.enabled, ranks, line, missing });
        }
        // Requirements must be enabled modules of this file.
        for (m, raw) in site.modules.iter().zip(&raw.modules) {
            if !m.enabled {
                continue;
            }
            for r in &raw.get_ref().requires {
                let q = r.get_ref();
                match site.modules.iter().find(|o| o.spec.request.name.as_deref() == Some(q.as_str())) {
                    None => {
                        return Err(at(
                            r.span(),
                            format!(
                                "key `requires`: module '{}' requires '{q}', which is not in this file",
                                name_of(m)
                            ),
                        ))
                    }
                    Some(o) if !o.enabled => {
                        return Err(at(
                            r.span(),
                            format!(
                                "key `requires`: module '{}' requires '{q}', which is disabled (line {})",
                                name_of(m),
                                o.line
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        let enabled: Vec<&SiteModule> = site.modules.iter().filter(|m| m.enabled).collect();
        let nodes: Vec<Node<'_>> =
            enabled.iter().map(|m| Node { name: name_of(m), deps: m.spec.starts_after().collect() }).collect();
        if let Err(cycle) = levels(&nodes) {
            let lines: Vec<String> = cycle.0[..cycle.0.len() - 1]
                .iter()
                .filter_map(|n| enabled.iter().find(|m| name_of(m) == n).map(|m| format!("'{n}' on line {}", m.line)))
                .collect();
            return Err(SiteError::Whole {
                path: path.to_owned(),
                message: format!("{cycle} (keys `requires` and `after` of {})", lines.join(", ")),
            });
        }
        Ok(site)
    }
}

fn name_of(m: &SiteModule) -> &str {
    m.spec.request.name.as_deref().unwrap_or_default()
}

/// 1-based line and column of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.chars().rev().take_while(|&c| c != '\n').count() + 1;
    (line, col)
}

/// `p` relative to `base`, made absolute: canonical if it exists, else lexically.
fn absolute(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_relative() { base.join(p) } else { p.to_owned() };
    std::fs::canonicalize(&joined).or_else(|_| std::path::absolute(&joined)).unwrap_or(joined)
}

/// `HOST[:GUEST][:rw|:ro]`, the host path relative to the file's folder.
pub fn dir_grant(base: &Path, spec: &str) -> Result<DirGrant, String> {
    let d = DirArgs::parse(spec).ok_or_else(|| format!("'{spec}' has no host directory (write HOST[:GUEST][:rw])"))?;
    let host = absolute(base, &d.host);
    Ok(DirGrant { guest: d.guest.unwrap_or_else(|| host.display().to_string()), host, writable: d.writable })
}

#[cfg(test)]
mod tests;
