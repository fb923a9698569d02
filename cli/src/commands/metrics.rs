//! `list --format prometheus` and `stats --format prometheus`: which metrics the answers of
//! `module.list` and `module.stats` become (RFC 3 §6), their names, types, help and labels.
//! Every sample has the labels `module` and `kind`, and `rank` first with `--rank`. The
//! format itself is `crate::prometheus`.

use switchboard_protocol::mgmt::{ModuleStats, ModuleStatus};

use crate::prometheus::{Exposition, Kind, Metric, Value};

/// The states of RFC 2 §4 that `switchboard_module_state` always has a sample for.
const STATES: [&str; 5] = ["init", "running", "finalizing", "exited", "failed"];

static INFO: Metric = Metric {
    name: "switchboard_module_info",
    kind: Kind::Gauge,
    help: "A listed module instance, with its file (path), the file's SHA-256 (digest) and whether a native module runs in a host process of its own (isolated); always 1.",
};
static STATE: Metric = Metric {
    name: "switchboard_module_state",
    kind: Kind::Gauge,
    help: "1 for the module's state (init, running, finalizing, exited, failed), 0 for the others.",
};
static STUCK: Metric = Metric {
    name: "switchboard_module_stuck",
    kind: Kind::Gauge,
    help: "1 if the module outlived its grace period on remove and was detached.",
};
static SIZE: Metric =
    Metric { name: "switchboard_module_size_bytes", kind: Kind::Gauge, help: "Size of the module's file in bytes." };
static IDLE: Metric = Metric {
    name: "switchboard_module_idle_seconds",
    kind: Kind::Gauge,
    help: "Seconds since the last message into or out of the module, or since its load.",
};
static UPTIME: Metric = Metric {
    name: "switchboard_module_uptime_seconds",
    kind: Kind::Gauge,
    help: "Seconds since this instance was loaded (0 again after a reload or restart).",
};
static IN: Metric = Metric {
    name: "switchboard_module_messages_in_total",
    kind: Kind::Counter,
    help: "Messages delivered to the module's inbox (reset by a reload or restart).",
};
static OUT: Metric = Metric {
    name: "switchboard_module_messages_out_total",
    kind: Kind::Counter,
    help: "Messages the module sent (reset by a reload or restart).",
};
static ERRORS: Metric = Metric {
    name: "switchboard_module_errors_total",
    kind: Kind::Counter,
    help: "Error responses the module sent, not counting ENODATA (reset by a reload or restart).",
};
static QUEUE: Metric = Metric {
    name: "switchboard_module_queued_messages",
    kind: Kind::Gauge,
    help: "Messages waiting in the module's inbox.",
};
static PENDING: Metric = Metric {
    name: "switchboard_module_pending_requests",
    kind: Kind::Gauge,
    help: "Requests delivered to the module that it has not finally answered.",
};
static RESTARTS: Metric = Metric {
    name: "switchboard_module_restarts_total",
    kind: Kind::Counter,
    help: "Times the module's restart policy started it again (0 after a new load).",
};
static MEMORY: Metric = Metric {
    name: "switchboard_module_memory_bytes",
    kind: Kind::Gauge,
    help: "WASM modules: the instance's linear memory in bytes.",
};
static CPU: Metric = Metric {
    name: "switchboard_module_cpu_seconds_total",
    kind: Kind::Counter,
    help: "Process modules: CPU time of the child process (user + system) in seconds.",
};
static RSS: Metric = Metric {
    name: "switchboard_module_resident_memory_bytes",
    kind: Kind::Gauge,
    help: "Process modules: resident set size of the child process in bytes.",
};
static RANK_UP: Metric = Metric {
    name: "switchboard_rank_up",
    kind: Kind::Gauge,
    help: "With --rank: 1 if the rank answered, 0 if it failed (its error is on standard error).",
};

/// Every family modctl may print, in the order it prints them (RFC 3 §6).
static ALL: [&Metric; 16] = [
    &INFO, &STATE, &STUCK, &SIZE, &IDLE, &UPTIME, &IN, &OUT, &ERRORS, &QUEUE, &PENDING, &RESTARTS, &MEMORY, &CPU, &RSS,
    &RANK_UP,
];

/// An exposition that writes the families in the order of `ALL`, whatever order the ranks'
/// answers bring them in.
pub fn exposition() -> Exposition {
    Exposition::with_families(&ALL)
}

/// The labels every sample of a module has: `rank` (with `--rank`), `module`, `kind`, then
/// `extra`.
fn labels<'a>(
    rank: Option<&'a str>,
    module: &'a str,
    kind: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut l: Vec<(&str, &str)> = rank.map(|r| ("rank", r)).into_iter().collect();
    l.extend([("module", module), ("kind", kind)]);
    l.extend_from_slice(extra);
    l
}

fn states(e: &mut Exposition, rank: Option<&str>, module: &str, kind: &str, state: &str) {
    for s in STATES {
        e.sample(&STATE, &labels(rank, module, kind, &[("state", s)]), Value::Int(u64::from(s == state)));
    }
    if !STATES.contains(&state) {
        // A state this version of modctl does not know (`loading`): still said.
        e.sample(&STATE, &labels(rank, module, kind, &[("state", state)]), Value::Int(1));
    }
}

/// The samples of `module.list`'s modules, of one broker (`rank` None) or of `rank`.
pub fn list(e: &mut Exposition, rank: Option<u32>, modules: &[ModuleStatus]) {
    let rank_text = rank.map(|r| r.to_string());
    let rank = rank_text.as_deref();
    for m in modules {
        let (name, kind) = (m.name.as_str(), m.kind.as_str());
        let l = labels(rank, name, kind, &[]);
        let isolated = if m.isolated { "true" } else { "false" };
        let info = [("path", m.path.as_str()), ("digest", m.digest.as_str()), ("isolated", isolated)];
        e.sample(&INFO, &labels(rank, name, kind, &info), Value::Int(1));
        states(e, rank, name, kind, &m.state);
        e.sample(&STUCK, &l, Value::Int(u64::from(m.stuck)));
        e.sample(&SIZE, &l, Value::Int(m.size));
        e.sample(&IDLE, &l, Value::Millis(m.idle_ms));
        e.sample(&IN, &l, Value::Int(m.msgs_in));
        e.sample(&OUT, &l, Value::Int(m.msgs_out));
        e.sample(&QUEUE, &l, Value::Int(m.queue));
        e.sample(&RESTARTS, &l, Value::Int(u64::from(m.restarts)));
    }
}

/// The samples of one `module.stats` answer; the process and WASM figures only when given.
pub fn stats(e: &mut Exposition, rank: Option<u32>, s: &ModuleStats) {
    let rank_text = rank.map(|r| r.to_string());
    let rank = rank_text.as_deref();
    let l = labels(rank, &s.name, &s.kind, &[]);
    states(e, rank, &s.name, &s.kind, &s.state);
    e.sample(&UPTIME, &l, Value::Millis(s.uptime_ms));
    e.sample(&IN, &l, Value::Int(s.msgs_in));
    e.sample(&OUT, &l, Value::Int(s.msgs_out));
    e.sample(&ERRORS, &l, Value::Int(s.errors));
    e.sample(&QUEUE, &l, Value::Int(s.queue));
    e.sample(&PENDING, &l, Value::Int(s.pending));
    e.sample(&RESTARTS, &l, Value::Int(u64::from(s.restarts)));
    if let Some(b) = s.memory_bytes {
        e.sample(&MEMORY, &l, Value::Int(b));
    }
    if let Some(ms) = s.cpu_ms {
        e.sample(&CPU, &l, Value::Millis(ms));
    }
    if let Some(b) = s.rss_bytes {
        e.sample(&RSS, &l, Value::Int(b));
    }
}

/// With `--rank`: whether `rank` answered.
pub fn rank_up(e: &mut Exposition, rank: u32, up: bool) {
    e.sample(&RANK_UP, &[("rank", &rank.to_string())], Value::Int(u64::from(up)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus::valid_metric;

    fn status(name: &str, state: &str) -> ModuleStatus {
        ModuleStatus {
            name: name.into(),
            kind: "native".into(),
            isolated: false,
            state: state.into(),
            reason: None,
            stuck: false,
            services: vec![name.into()],
            path: "/srv/\"odd\"\\dir/libkvs.so".into(),
            digest: "ab12".into(),
            size: 5_800_000,
            idle_ms: 3_250,
            msgs_in: 7,
            msgs_out: 6,
            queue: 1,
            pid: None,
            restarts: 2,
            last_failure: None,
            requires: Vec::new(),
            declares: Default::default(),
        }
    }

    #[test]
    fn every_family_is_named_as_the_format_wants_and_only_once() {
        for m in ALL {
            valid_metric(m).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut names: Vec<&str> = ALL.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn list_has_a_sample_per_module_per_family_a_state_per_known_state_and_escaped_paths() {
        let mut e = Exposition::default();
        list(&mut e, None, &[status("kvs", "running"), status("odd", "loading")]);
        let text = e.render();
        assert_eq!(text.matches("# TYPE ").count(), 9, "{text}");
        assert!(
            text.contains(
                "switchboard_module_info{module=\"kvs\",kind=\"native\",path=\"/srv/\\\"odd\\\"\\\\dir/libkvs.so\",digest=\"ab12\",isolated=\"false\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("switchboard_module_state{module=\"kvs\",kind=\"native\",state=\"running\"} 1\n"));
        assert!(text.contains("switchboard_module_state{module=\"kvs\",kind=\"native\",state=\"failed\"} 0\n"));
        assert!(text.contains("switchboard_module_state{module=\"odd\",kind=\"native\",state=\"loading\"} 1\n"));
        assert_eq!(text.matches("switchboard_module_state{module=\"odd\"").count(), 6);
        assert!(text.contains("switchboard_module_idle_seconds{module=\"kvs\",kind=\"native\"} 3.250\n"));
        assert!(text.contains("# TYPE switchboard_module_messages_in_total counter\n"));
        assert!(text.contains("switchboard_module_restarts_total{module=\"kvs\",kind=\"native\"} 2\n"));
        assert!(!text.contains("rank"), "no rank label without --rank");
    }

    #[test]
    fn with_rank_each_sample_has_the_rank_first_and_families_stay_whole_across_ranks() {
        // A failed rank first: its family still comes last.
        let mut e = exposition();
        rank_up(&mut e, 3, false);
        list(&mut e, Some(0), &[status("kvs", "running")]);
        rank_up(&mut e, 0, true);
        list(&mut e, Some(1), &[status("kvs", "running")]);
        rank_up(&mut e, 1, true);
        let text = e.render();
        let sizes: Vec<&str> = text.lines().filter(|l| l.starts_with("switchboard_module_size_bytes")).collect();
        assert_eq!(
            sizes,
            [
                "switchboard_module_size_bytes{rank=\"0\",module=\"kvs\",kind=\"native\"} 5800000",
                "switchboard_module_size_bytes{rank=\"1\",module=\"kvs\",kind=\"native\"} 5800000"
            ]
        );
        assert!(text.ends_with(
            "# TYPE switchboard_rank_up gauge\nswitchboard_rank_up{rank=\"3\"} 0\nswitchboard_rank_up{rank=\"0\"} 1\nswitchboard_rank_up{rank=\"1\"} 1\n"
        ));
        // One group per family: a family's name never reappears after another's.
        let mut seen: Vec<&str> = Vec::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            if seen.last() != Some(&name) {
                assert!(!seen.contains(&name), "{name} split: {text}");
                seen.push(name);
            }
        }
    }

    #[test]
    fn stats_gives_cpu_in_seconds_and_leaves_out_what_the_kind_does_not_have() {
        let s = ModuleStats {
            name: "py".into(),
            kind: "process".into(),
            isolated: false,
            state: "running".into(),
            uptime_ms: 4_000,
            msgs_in: 2,
            msgs_out: 1,
            errors: 1,
            last_error: Some("py.get: ENOENT: no key".into()),
            queue: 0,
            pending: 0,
            restarts: 0,
            last_failure: None,
            memory_bytes: None,
            cpu_ms: Some(1_500),
            rss_bytes: Some(8 << 20),
            pid: Some(42),
        };
        let mut e = Exposition::default();
        stats(&mut e, None, &s);
        let text = e.render();
        assert!(
            text.contains("switchboard_module_cpu_seconds_total{module=\"py\",kind=\"process\"} 1.500\n"),
            "{text}"
        );
        assert!(text.contains("switchboard_module_errors_total{module=\"py\",kind=\"process\"} 1\n"));
        assert!(text.contains("switchboard_module_uptime_seconds{module=\"py\",kind=\"process\"} 4.000\n"));
        assert!(text.contains("switchboard_module_resident_memory_bytes{module=\"py\",kind=\"process\"} 8388608\n"));
        assert!(!text.contains("switchboard_module_memory_bytes"), "{text}");
        // A WASM instance of the same name on a later rank: its family still comes before
        // the process figures, in the order of ALL.
        let mut e = exposition();
        stats(&mut e, Some(0), &s);
        stats(
            &mut e,
            Some(1),
            &ModuleStats { kind: "wasm".into(), memory_bytes: Some(1 << 16), cpu_ms: None, rss_bytes: None, ..s },
        );
        let text = e.render();
        let at = |name: &str| text.find(&format!("# TYPE {name} ")).unwrap_or(usize::MAX);
        assert!(at("switchboard_module_memory_bytes") < at("switchboard_module_cpu_seconds_total"), "{text}");
    }
}
