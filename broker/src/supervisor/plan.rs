//! `apply`: bring the running modules to a wanted set of specs (a site file). The plan
//! compares each wanted spec with the running instance of its name, removes what is not
//! wanted (last loaded first), then loads, reloads, reconfigures or updates the rest level
//! by level in dependency order, the modules of a level in parallel. Starting the broker on
//! a site file is the same thing from nothing.

use std::collections::HashSet;

use switchboard_loaders::{ModuleState, SearchPath};
use switchboard_module_api::mgmt::{ApplyReport, ApplyStep};
use switchboard_module_api::Error;

use super::order::{levels, Cycle, Node};
use super::spec::{Change, ModuleSpec};
use super::Supervisor;

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

struct Step {
    action: Action,
    name: String,
    why: String,
    /// Index into the wanted specs (not for removals).
    want: Option<usize>,
}

impl Supervisor {
    /// Bring the broker to `want` (names resolved, validated: unique, requirements present,
    /// no cycle). With `dry_run`, only say what would be done. Every step is attempted; a
    /// step whose requirement failed is skipped. The report says what happened to each.
    pub fn apply(&self, want: &[ModuleSpec], search: Option<SearchPath>, dry_run: bool) -> Result<ApplyReport, Cycle> {
        let _one_at_a_time = self.applying.lock();
        if let (Some(search), false) = (search, dry_run) {
            self.set_search_path(search);
        }
        let names: Vec<String> = want.iter().map(spec_name).collect();
        let nodes: Vec<Node<'_>> =
            want.iter().zip(&names).map(|(s, n)| Node { name: n, deps: s.starts_after().collect() }).collect();
        let levels = levels(&nodes)?;
        let (removals, by_level, unchanged) = self.plan(want, &names, &levels);
        let mut report = ApplyReport { dry_run, unchanged, ..Default::default() };
        let mut steps: Vec<&Step> = removals.iter().collect();
        steps.extend(by_level.iter().flatten());
        if dry_run {
            report.steps = steps.into_iter().map(|s| to_wire(s, None)).collect();
            return Ok(report);
        }
        let gone: Vec<String> = removals.iter().map(|s| s.name.clone()).collect();
        for (step, outcome) in removals.iter().zip(self.remove_many(&gone)) {
            report.steps.push(to_wire(step, Some(outcome.map(|()| Outcome::Done("ok".into())))));
        }
        let mut failed: HashSet<String> = HashSet::new();
        for level in &by_level {
            let group = self.new_start_group();
            let outcomes = in_parallel(level, |step| {
                let spec = &want[step.want.unwrap_or_default()];
                match spec.requires.iter().find(|q| failed.contains(*q)) {
                    Some(q) => Ok(Outcome::Skipped(format!("skipped: it requires '{q}', which failed"))),
                    None => self.carry_out(step, spec, group).map(Outcome::Done),
                }
            });
            for (step, outcome) in level.iter().zip(outcomes) {
                // A refused config-update leaves the module running as it was: its
                // dependents go on.
                let running = self.find(&step.name).is_some_and(|r| r.state() == ModuleState::Running);
                let bad = match &outcome {
                    Ok(o) => matches!(o, Outcome::Skipped(_)),
                    Err(_) => !(step.action == Action::Configure && running),
                };
                if bad {
                    failed.insert(step.name.clone());
                }
                report.steps.push(to_wire(step, Some(outcome)));
            }
        }
        // List them by start level, then file order: parallel starts register in any order,
        // and removing all in reverse must take dependents first.
        let order: Vec<&str> = levels.iter().flatten().map(|&i| names[i].as_str()).collect();
        self.modules.lock().sort_by_key(|r| order.iter().position(|n| *n == r.name()));
        Ok(report)
    }

    /// Remove `names` (forced), given last started first: one group of modules started
    /// together after another, each group in parallel (see `History::start_group`), so a
    /// module goes before those started before it. Outcomes in the order of `names`.
    pub(super) fn remove_many(&self, names: &[String]) -> Vec<Result<(), Error>> {
        let info = |n: &String| {
            self.find(n).map(|r| {
                let deps: Vec<String> = r.spec.lock().starts_after().map(String::from).collect();
                (r.history.lock().start_group, deps)
            })
        };
        let known: Vec<Option<(u64, Vec<String>)>> = names.iter().map(info).collect();
        // Two modules go together only if neither requires nor comes after the other (their
        // settings may have changed since they started together).
        let related = |a: usize, b: usize| {
            let names_of = |i: usize| known[i].as_ref().map_or(&[][..], |(_, d)| &d[..]);
            names_of(a).contains(&names[b]) || names_of(b).contains(&names[a])
        };
        let mut outcomes = Vec::with_capacity(names.len());
        let mut i = 0;
        while i < names.len() {
            let g = known[i].as_ref().map(|(g, _)| *g);
            let mut n = 1;
            while i + n < names.len()
                && g.is_some()
                && known[i + n].as_ref().map(|(g, _)| *g) == g
                && (i..i + n).all(|j| !related(j, i + n))
            {
                n += 1;
            }
            outcomes.extend(in_parallel(&names[i..i + n], |m| self.remove(m, None, true)));
            i += n;
        }
        outcomes
    }

    fn carry_out(&self, step: &Step, spec: &ModuleSpec, group: u64) -> Result<String, Error> {
        match step.action {
            Action::Load => self.load_in_group(spec.clone(), group).map(|_| "ok".into()),
            Action::Reload => self.reload(&step.name, Some(spec.clone())).map(|_| "ok".into()),
            Action::Configure => {
                if self.configure(&step.name, spec.request.config.clone())? {
                    self.update_settings(&step.name, spec)?;
                    Ok("ok: config-update accepted".into())
                } else {
                    self.reload(&step.name, Some(spec.clone()))?;
                    Ok("ok: reloaded (the module has no config-update method)".into())
                }
            }
            Action::Update => self.update_settings(&step.name, spec).map(|()| "ok".into()),
            Action::Remove => self.remove(&step.name, None, true).map(|()| "ok".into()),
        }
    }

    /// Removals (last loaded first), then the other steps by start level, and the names
    /// already as wanted.
    fn plan(
        &self,
        want: &[ModuleSpec],
        names: &[String],
        levels: &[Vec<usize>],
    ) -> (Vec<Step>, Vec<Vec<Step>>, Vec<String>) {
        let running = self.modules.lock().clone();
        let removals: Vec<Step> = running
            .iter()
            .rev()
            .filter(|r| !names.iter().any(|n| n == r.name()))
            .map(|r| Step {
                action: Action::Remove,
                name: r.name().to_string(),
                why: "not in the file".into(),
                want: None,
            })
            .collect();
        let mut unchanged = Vec::new();
        let mut by_level = Vec::new();
        for level in levels {
            let mut steps = Vec::new();
            for &i in level {
                let (spec, name) = (&want[i], &names[i]);
                let current = running.iter().find(|r| r.name() == name);
                let (action, why) = match current {
                    None => (Action::Load, "not loaded".to_string()),
                    Some(r) if r.state().is_final() => (Action::Load, format!("it is {}", r.state().as_str())),
                    Some(r) => {
                        let digest = self.digests.digest(&spec.request.path).ok();
                        match r.spec.lock().change_to(&r.info.digest, spec, digest.as_deref()) {
                            Change::None => {
                                unchanged.push(name.clone());
                                continue;
                            }
                            Change::Settings => {
                                (Action::Update, "dependencies, restart policy or grace changed".into())
                            }
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
}

fn spec_name(s: &ModuleSpec) -> String {
    s.request.name.clone().unwrap_or_default()
}

/// `f` on every item at once, a thread each; the results in item order (a panic is an error).
fn in_parallel<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> Result<T, Error> + Sync) -> Vec<Result<T, Error>> {
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items.iter().map(|item| scope.spawn(move || f(item))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::new(switchboard_module_api::Errno::EIO, "the step panicked")))
            })
            .collect()
    })
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
