//! `apply`: bring the running modules to a wanted set of specs (a site file). The plan
//! compares each wanted spec with the running instance of its name, removes what is not
//! wanted (last loaded first), then loads, reloads, reconfigures or updates the rest level
//! by level in dependency order, the modules of a level in parallel (a task each). Starting
//! the broker on a site file is the same thing from nothing.

use std::collections::HashSet;

use switchboard_loaders::digest::DigestCache;
use switchboard_loaders::{ModuleState, SearchPath};
use switchboard_protocol::mgmt::{ApplyReport, ApplyStep};
use switchboard_protocol::Error;

use super::order::{levels, Cycle, Node};
use super::owner::Owner;
use super::spec::{Change, ModuleSpec};
use super::{blocking, in_parallel, Supervisor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Load,
    Reload,
    /// Only its config table changed: a `config-update`, else a reload.
    Configure,
    /// Only broker-side settings changed.
    Update,
    Remove,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Load => "load",
            Action::Reload => "reload",
            Action::Configure => "configure",
            Action::Update => "update",
            Action::Remove => "remove",
        }
    }
}

/// What became of a step that did not fail.
enum Outcome {
    /// Carried out: "ok", or "ok: ..." saying how.
    Done(String),
    /// Not attempted: a requirement failed.
    Skipped(String),
}

#[derive(Clone)]
struct Step {
    action: Action,
    name: String,
    why: String,
    /// Index into the wanted specs (not for removals).
    want: Option<usize>,
}

/// A listed module as the plan sees it.
struct Current {
    name: String,
    state: ModuleState,
    digest: String,
    spec: ModuleSpec,
}

impl Supervisor {
    /// Bring the broker to `want` (names resolved, validated: unique, requirements present,
    /// no cycle). With `dry_run`, only say what would be done. Every step is attempted; a
    /// step whose requirement failed is skipped. The report says what happened to each.
    /// One apply at a time (SIGHUP and `modctl apply` may come together): a second waits.
    pub async fn apply(
        &self,
        want: &[ModuleSpec],
        search: Option<SearchPath>,
        dry_run: bool,
    ) -> Result<ApplyReport, ApplyError> {
        let _one_at_a_time = self.claim("", true).await?;
        if let (Some(search), false) = (search, dry_run) {
            self.set_search_path(search);
        }
        let names: Vec<String> = want.iter().map(spec_name).collect();
        let nodes: Vec<Node<'_>> =
            want.iter().zip(&names).map(|(s, n)| Node { name: n, deps: s.starts_after().collect() }).collect();
        let levels = levels(&nodes)?;
        let (removals, by_level, unchanged) = self.plan(want, &names, &levels).await?;
        let mut report = ApplyReport { dry_run, unchanged, ..Default::default() };
        let mut steps: Vec<&Step> = removals.iter().collect();
        steps.extend(by_level.iter().flatten());
        if dry_run {
            report.steps = steps.into_iter().map(|s| to_wire(s, None)).collect();
            return Ok(report);
        }
        let gone: Vec<String> = removals.iter().map(|s| s.name.clone()).collect();
        for (step, outcome) in removals.iter().zip(self.remove_many(&gone).await) {
            report.steps.push(to_wire(step, Some(outcome.map(|()| Outcome::Done("ok".into())))));
        }
        let mut failed: HashSet<String> = HashSet::new();
        for level in &by_level {
            let group = self.with(Owner::new_start_group).await?;
            let steps = level.iter().map(|step| {
                let spec = want[step.want.unwrap_or_default()].clone();
                let skip = spec.requires.iter().find(|q| failed.contains(*q)).cloned();
                let (sup, step) = (self.clone(), step.clone());
                async move {
                    match skip {
                        Some(q) => Ok(Outcome::Skipped(format!("skipped: it requires '{q}', which failed"))),
                        None => sup.carry_out(&step, &spec, group).await.map(Outcome::Done),
                    }
                }
            });
            for (step, outcome) in level.iter().zip(in_parallel("step", steps).await) {
                let bad = match &outcome {
                    Ok(o) => matches!(o, Outcome::Skipped(_)),
                    // A refused config-update leaves the module running as it was: its
                    // dependents go on.
                    Err(_) if step.action == Action::Configure => {
                        let name = step.name.clone();
                        !self
                            .with(move |o| o.find(&name).is_some_and(|e| e.rec.state() == ModuleState::Running))
                            .await?
                    }
                    Err(_) => true,
                };
                if bad {
                    failed.insert(step.name.clone());
                }
                report.steps.push(to_wire(step, Some(outcome)));
            }
        }
        // List them by start level, then file order: parallel starts register in any order,
        // and removing all in reverse must take dependents first.
        let order: Vec<String> = levels.iter().flatten().map(|&i| names[i].clone()).collect();
        self.with(move |o| o.modules.sort_by_key(|e| order.iter().position(|n| n == e.rec.name()))).await?;
        Ok(report)
    }

    /// Remove `names` (forced), given last started first: one group of modules started
    /// together after another, each group in parallel (see `History::start_group`), so a
    /// module goes before those started before it. Outcomes in the order of `names`.
    pub(super) async fn remove_many(&self, names: &[String]) -> Vec<Result<(), Error>> {
        let asked = names.to_vec();
        let known: Vec<Option<(u64, Vec<String>)>> = self
            .with(move |o| {
                asked
                    .iter()
                    .map(|n| {
                        o.find(n).map(|e| (e.history.start_group, e.spec.starts_after().map(String::from).collect()))
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        // Two modules go together only if neither requires nor comes after the other (their
        // settings may have changed since they started together).
        let related = |a: usize, b: usize| {
            let names_of = |i: usize| known.get(i).and_then(Option::as_ref).map_or(&[][..], |(_, d)| &d[..]);
            names_of(a).contains(&names[b]) || names_of(b).contains(&names[a])
        };
        let group_of = |i: usize| known.get(i).and_then(Option::as_ref).map(|(g, _)| *g);
        let mut outcomes = Vec::with_capacity(names.len());
        let mut i = 0;
        while i < names.len() {
            let g = group_of(i);
            let mut n = 1;
            while i + n < names.len() && g.is_some() && group_of(i + n) == g && (i..i + n).all(|j| !related(j, i + n)) {
                n += 1;
            }
            let removals = names[i..i + n].iter().map(|m| {
                let (sup, m) = (self.clone(), m.clone());
                async move { sup.remove(&m, None, true).await }
            });
            outcomes.extend(in_parallel("removal", removals).await);
            i += n;
        }
        outcomes
    }

    async fn carry_out(&self, step: &Step, spec: &ModuleSpec, group: u64) -> Result<String, Error> {
        match step.action {
            Action::Load => self.load_in_group(spec.clone(), group).await.map(|_| "ok".into()),
            Action::Reload => self.reload(&step.name, Some(spec.clone())).await.map(|_| "ok".into()),
            Action::Configure => {
                if self.configure(&step.name, spec.request.config.clone()).await? {
                    self.update_settings(&step.name, spec).await?;
                    Ok("ok: config-update accepted".into())
                } else {
                    self.reload(&step.name, Some(spec.clone())).await?;
                    Ok("ok: reloaded (the module has no config-update method)".into())
                }
            }
            Action::Update => self.update_settings(&step.name, spec).await.map(|()| "ok".into()),
            Action::Remove => self.remove(&step.name, None, true).await.map(|()| "ok".into()),
        }
    }

    /// Removals (last loaded first), then the other steps by start level, and the names
    /// already as wanted. The wanted files are hashed on the blocking pool.
    async fn plan(
        &self,
        want: &[ModuleSpec],
        names: &[String],
        levels: &[Vec<usize>],
    ) -> Result<(Vec<Step>, Vec<Vec<Step>>, Vec<String>), Error> {
        let running: Vec<Current> = self
            .with(|o| {
                o.modules
                    .iter()
                    .map(|e| Current {
                        name: e.rec.name().to_string(),
                        state: e.rec.state(),
                        digest: e.rec.info.digest.clone(),
                        spec: e.spec.clone(),
                    })
                    .collect()
            })
            .await?;
        let (shared, want, names, levels) = (self.shared.clone(), want.to_vec(), names.to_vec(), levels.to_vec());
        blocking(move || Ok(plan_steps(&shared.digests, &running, &want, &names, &levels))).await
    }
}

fn plan_steps(
    digests: &DigestCache,
    running: &[Current],
    want: &[ModuleSpec],
    names: &[String],
    levels: &[Vec<usize>],
) -> (Vec<Step>, Vec<Vec<Step>>, Vec<String>) {
    let removals: Vec<Step> = running
        .iter()
        .rev()
        .filter(|r| !names.contains(&r.name))
        .map(|r| Step { action: Action::Remove, name: r.name.clone(), why: "not in the file".into(), want: None })
        .collect();
    let mut unchanged = Vec::new();
    let mut by_level = Vec::new();
    for level in levels {
        let mut steps = Vec::new();
        for &i in level {
            let (spec, name) = (&want[i], &names[i]);
            let current = running.iter().find(|r| r.name == *name);
            let (action, why) = match current {
                None => (Action::Load, "not loaded".to_string()),
                Some(r) if r.state.is_final() => (Action::Load, format!("it is {}", r.state.as_str())),
                Some(r) => {
                    let digest = digests.digest(&spec.request.path).ok();
                    match r.spec.change_to(&r.digest, spec, digest.as_deref()) {
                        Change::None => {
                            unchanged.push(name.clone());
                            continue;
                        }
                        Change::Settings => (Action::Update, "dependencies, restart policy or grace changed".into()),
                        Change::Config => (Action::Configure, "its config table changed".into()),
                        Change::Module(why) => (Action::Reload, why),
                    }
                }
            };
            steps.push(Step { action, name: name.clone(), why, want: Some(i) });
        }
        if !steps.is_empty() {
            by_level.push(steps);
        }
    }
    (removals, by_level, unchanged)
}

/// Why an apply did nothing: the wanted set has a dependency cycle, or the broker is
/// shutting down.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Cycle(#[from] Cycle),
    #[error("{}", .0.text)]
    Broker(#[from] Error),
}

fn spec_name(s: &ModuleSpec) -> String {
    s.request.name.clone().unwrap_or_default()
}

fn to_wire(step: &Step, outcome: Option<Result<Outcome, Error>>) -> ApplyStep {
    let (outcome, ok) = match outcome {
        None => (None, false),
        Some(Ok(Outcome::Done(o))) => (Some(o), true),
        Some(Ok(Outcome::Skipped(o))) => (Some(o), false),
        Some(Err(e)) => (Some(format!("{}: {}", e.errnum.name(), e.text)), false),
    };
    ApplyStep { action: step.action.as_str().to_string(), name: step.name.clone(), why: step.why.clone(), outcome, ok }
}
