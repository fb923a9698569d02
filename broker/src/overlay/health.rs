//! What a broker knows of its subtree's health (RFC 7 §6.1): the state of each rank below it,
//! from its own links and from what its children report, folded into one map it reports to
//! its parent and draws for `overlay.status`. Pure bookkeeping, owned by the overlay thread.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use switchboard_protocol::mgmt::OverlayStatus;

use super::Topology;

/// A rank's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Up, and every rank of its subtree is up.
    Full,
    /// Up, and some rank of its subtree is not.
    Partial,
    /// Its link was up once and is lost now.
    Lost,
    /// Never seen up since this broker started.
    Offline,
}

impl State {
    pub fn is_up(self) -> bool {
        matches!(self, State::Full | State::Partial)
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Full => "full",
            State::Partial => "partial",
            State::Lost => "lost",
            State::Offline => "offline",
        }
    }
}

/// The states of a subtree's ranks, by rank.
pub type States = BTreeMap<u32, State>;

#[derive(Default)]
struct Child {
    up: bool,
    /// When its link was lost (None: up, or never seen).
    lost_at: Option<Instant>,
    /// What it last reported of its own subtree (itself included).
    report: States,
    /// Why its last hello was refused (cleared when it joins), and how many times in a row.
    refused: Option<String>,
    refusals: u64,
}

pub struct Health {
    topology: Topology,
    children: BTreeMap<u32, Child>,
    /// Something changed since `take_changed` last said so.
    changed: bool,
}

impl Health {
    pub fn new(topology: Topology) -> Health {
        Health { topology, children: topology.children().map(|c| (c, Child::default())).collect(), changed: true }
    }

    /// Whether anything changed since the last call (so that `states` is worth computing).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Have the next `take_changed` say yes (the parent link came up: report again).
    pub fn touch(&mut self) {
        self.changed = true;
    }

    pub fn child_up(&mut self, c: u32) {
        if let Some(child) = self.children.get_mut(&c) {
            child.up = true;
            child.lost_at = None;
            child.refused = None;
            child.refusals = 0;
            self.changed = true;
            // Until it reports, it is up and its subtree unknown: what was seen before its
            // link was lost stays lost (not offline, which would say never seen), the rest
            // offline.
            for s in child.report.values_mut().filter(|s| **s != State::Offline) {
                *s = State::Lost;
            }
            child.report.insert(c, State::Full);
        }
    }

    pub fn child_lost(&mut self, c: u32) {
        if let Some(child) = self.children.get_mut(&c) {
            child.up = false;
            child.lost_at = Some(Instant::now());
            self.changed = true;
        }
    }

    /// Child `c`'s hello was refused, for `why`: how many times in a row now. A child whose
    /// link is up keeps its state (the refused hello came from someone else with its rank).
    pub fn child_refused(&mut self, c: u32, why: &str) -> u64 {
        match self.children.get_mut(&c) {
            Some(child) if !child.up => {
                child.refused = Some(why.to_string());
                child.refusals += 1;
                child.refusals
            }
            _ => 1,
        }
    }

    /// Child `c`'s report of its subtree; entries outside that subtree are ignored. A rank it
    /// says `offline` that this broker has seen (a restarted child has not, yet) stays `lost`.
    pub fn child_report(&mut self, c: u32, report: States) {
        let topology = self.topology;
        if let Some(child) = self.children.get_mut(&c).filter(|ch| ch.up) {
            let seen = |r: &u32| child.report.get(r).is_some_and(|s| *s != State::Offline);
            let report: States = report
                .into_iter()
                .filter(|(r, _)| topology.in_subtree(*r, c))
                .map(|(r, s)| (r, if s == State::Offline && seen(&r) { State::Lost } else { s }))
                .collect();
            child.report = report;
            self.changed = true;
        }
    }

    /// Every rank of this subtree, this broker included.
    pub fn states(&self) -> States {
        let mut all = States::new();
        for (&c, child) in &self.children {
            for r in self.subtree_of(c) {
                let reported = child.report.get(&r).copied();
                let state = match (child.up, reported) {
                    (true, Some(s)) => s,
                    (true, None) => State::Offline,
                    // Below a lost link nothing is known now: what was seen up is lost.
                    (false, Some(s)) if s != State::Offline => State::Lost,
                    (false, _) if r == c && child.lost_at.is_some() => State::Lost,
                    (false, _) => State::Offline,
                };
                all.insert(r, state);
            }
        }
        let me = if all.values().all(|s| s.is_up()) { State::Full } else { State::Partial };
        all.insert(self.topology.rank, me);
        all
    }

    /// The `overlay.status` tree of this subtree, with `hosts` by rank.
    pub fn status(&self, hosts: &[String]) -> OverlayStatus {
        let states = self.states();
        self.draw(self.topology.rank, &states, hosts)
    }

    fn draw(&self, r: u32, states: &States, hosts: &[String]) -> OverlayStatus {
        let reason = self.children.get(&r).and_then(|c| match (&c.refused, c.lost_at) {
            (Some(why), _) => Some(format!("refused: {why}")),
            (None, Some(at)) => Some(format!("link lost {} s ago", at.elapsed().as_secs())),
            (None, None) => None,
        });
        OverlayStatus {
            rank: r,
            state: states.get(&r).copied().unwrap_or(State::Offline).name().to_string(),
            host: hosts.get(r as usize).cloned().unwrap_or_default(),
            reason,
            children: self.topology.children_of(r).map(|c| self.draw(c, states, hosts)).collect(),
        }
    }

    fn subtree_of(&self, r: u32) -> Vec<u32> {
        let mut out = vec![r];
        let mut i = 0;
        while i < out.len() {
            out.extend(self.topology.children_of(out[i]));
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_is_full_only_when_its_whole_subtree_is_up() {
        // Rank 0 of 7, fanout 2: children 1 and 2; 1 has 3 and 4.
        let mut h = Health::new(Topology::new(0, 7, 2).unwrap());
        assert_eq!(h.states()[&1], State::Offline);
        assert_eq!(h.states()[&0], State::Partial);
        h.child_up(1);
        h.child_up(2);
        h.child_report(1, States::from([(1, State::Full), (3, State::Full), (4, State::Full)]));
        h.child_report(2, States::from([(2, State::Full), (5, State::Full), (6, State::Full), (0, State::Lost)]));
        let s = h.states();
        assert_eq!(s[&0], State::Full, "{s:?}");
        // 1 loses 4: 1 reports partial, and so is 0.
        h.child_report(1, States::from([(1, State::Partial), (3, State::Full), (4, State::Lost)]));
        assert_eq!(h.states()[&0], State::Partial);
        // 1 itself is lost: what was up below it is lost too.
        h.child_lost(1);
        let s = h.states();
        assert_eq!((s[&1], s[&3], s[&4]), (State::Lost, State::Lost, State::Lost));
        let tree = h.status(&["n0", "n1", "n2", "n3", "n4", "n5", "n6"].map(String::from));
        assert_eq!(tree.children[0].state, "lost");
        assert!(tree.children[0].reason.as_deref().unwrap_or("").starts_with("link lost"));
        assert_eq!(tree.children[0].children[1].host, "n4");
        // 1 joins again: until it reports, what was seen below it stays lost (never offline,
        // which would be news rank 0 publishes), then it is as reported.
        h.child_up(1);
        let s = h.states();
        assert_eq!((s[&1], s[&3], s[&4]), (State::Full, State::Lost, State::Lost));
        // A restarted 1 has not seen its children yet and says so: still lost here.
        h.child_report(1, States::from([(1, State::Partial), (3, State::Offline), (4, State::Full)]));
        let s = h.states();
        assert_eq!((s[&1], s[&3], s[&4]), (State::Partial, State::Lost, State::Full));
        h.child_report(1, States::from([(1, State::Full), (3, State::Full), (4, State::Full)]));
        let s = h.states();
        assert_eq!((s[&0], s[&1], s[&3], s[&4]), (State::Full, State::Full, State::Full, State::Full));
    }
}
