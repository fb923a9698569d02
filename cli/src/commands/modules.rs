//! `load`, `remove`, `reload`, `stats`, `list`, `info`: the `module` service, on the broker
//! modctl is connected to or (the `_on` forms) on the ranks of `--rank`, one section, line or
//! table row per rank.

use std::path::{Path, PathBuf};

use switchboard_client::{Client, ClientError};
use switchboard_protocol::mgmt::{
    Declarations, DirArgs, InfoArgs, LoadArgs, ModuleDescription, ModuleList, ModuleStats, ModuleStatus, NameArgs,
    RemoveArgs,
};
use switchboard_protocol::{Errno, Message};

use super::metrics;
use super::ranks::{self, Failures, RankJson};
use crate::args::Format;
use crate::prometheus::Exposition;
use crate::{table, CliError, Context};

const LIST_HEADER: [&str; 11] =
    ["NAME", "KIND", "SERVICES", "DIGEST", "SIZE", "IDLE", "IN", "OUT", "PID", "RESTARTS", "STATE"];

/// The broker runs elsewhere: hand it an absolute path.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A module reference for the broker: a bare name (a valid module name: no `/`, no `.`) as
/// it is, for its search path (RFC 4 §4); a path made absolute.
fn reference(path: &Path) -> String {
    let bare = path.to_str().is_some_and(switchboard_protocol::mgmt::is_module_name);
    if bare {
        path.display().to_string()
    } else {
        absolute(path).display().to_string()
    }
}

pub fn decode<T: serde::de::DeserializeOwned>(msg: &Message, what: &str) -> Result<T, CliError> {
    msg.decode().map_err(|e| CliError::Usage(format!("{what}: the broker sent an unexpected reply: {e}")))
}

/// `request` with its path made absolute (the broker runs elsewhere) or a bare name.
pub fn load(client: &mut Client, path: &Path, mut request: LoadArgs) -> Result<(), CliError> {
    request.path = reference(path);
    let what = format!("load {}", path.display());
    let reply = client.rpc("module.load", &request).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    println!("{}", loaded(&d));
    Ok(())
}

/// `load` on each of `ranks`: `rank N: loaded ...` per rank. The path is made absolute here,
/// so it must name the file where each of those brokers runs; a bare name is looked up on
/// each broker's own search path.
pub fn load_on(
    client: &mut Client,
    ranks: &[u32],
    path: &Path,
    mut request: LoadArgs,
    rollback: bool,
) -> Result<(), CliError> {
    request.path = reference(path);
    let what = format!("load {}", path.display());
    let answers =
        ranks::each::<ModuleDescription>(client, ranks, &what, "module.load", ranks::payload(&request)?, None)?;
    let mut failures = Failures::new(&what, ranks.len());
    let mut done = Vec::new();
    for (rank, d) in answers.into_iter().filter_map(|a| failures.take(a)) {
        println!("rank {rank}: {}", loaded(&d));
        done.push((rank, d.name));
    }
    if rollback && failures.any() && !done.is_empty() {
        // All or nothing: take it off the ranks where it did load, each by its own name.
        for (rank, name) in done {
            let payload = ranks::payload(&RemoveArgs { name: name.clone(), grace_ms: None, force: false })?;
            let undo = ranks::each_raw(client, &[rank], &format!("remove {name}"), "module.remove", payload, None)?;
            match undo.into_iter().next().map(|a| a.result) {
                Some(Ok(_)) => println!("rank {rank}: removed {name} (rolled back)"),
                Some(Err(e)) => eprintln!("modctl: rank {rank}: roll back {name}: {e}"),
                None => {}
            }
        }
    }
    failures.finish()
}

fn loaded(d: &ModuleDescription) -> String {
    format!("loaded {} ({}, services: {})", d.name, kind_text(&d.kind, d.isolated), d.services.join(","))
}

/// A module's kind as `list` and `load` print it: `native (isolated)` for a native module
/// run in a host process of its own (RFC 3 §6).
fn kind_text(kind: &str, isolated: bool) -> String {
    if isolated {
        format!("{kind} (isolated)")
    } else {
        kind.to_string()
    }
}

pub fn remove(
    client: &mut Client,
    name: &str,
    grace_ms: Option<u64>,
    force: bool,
    missing_ok: bool,
) -> Result<(), CliError> {
    match client.rpc("module.remove", &RemoveArgs { name: name.to_string(), grace_ms, force }) {
        Err(ClientError::Remote(e)) if missing_ok && e.errnum == Errno::ENOENT => Ok(()),
        r => r.doing(format!("remove {name}")).map(|_| ()),
    }
}

/// `remove` on each of `ranks`: `rank N: removed NAME` per rank.
pub fn remove_on(
    client: &mut Client,
    ranks: &[u32],
    name: &str,
    grace_ms: Option<u64>,
    force: bool,
    missing_ok: bool,
) -> Result<(), CliError> {
    let what = format!("remove {name}");
    let payload = ranks::payload(&RemoveArgs { name: name.to_string(), grace_ms, force })?;
    let answers = ranks::each_raw(client, ranks, &what, "module.remove", payload, None)?;
    let mut failures = Failures::new(&what, ranks.len());
    for a in answers {
        if missing_ok && a.errno == Some(Errno::ENOENT) {
            println!("rank {}: {name} was not loaded", a.rank);
        } else if let Some((rank, _)) = failures.take(a) {
            println!("rank {rank}: removed {name}");
        }
    }
    failures.finish()
}

pub fn reload(client: &mut Client, name: &str) -> Result<(), CliError> {
    let what = format!("reload {name}");
    let reply = client.rpc("module.reload", &NameArgs { name: name.to_string() }).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    println!("{}", reloaded(&d));
    Ok(())
}

/// `reload` on each of `ranks`: `rank N: reloaded ...` per rank.
pub fn reload_on(client: &mut Client, ranks: &[u32], name: &str) -> Result<(), CliError> {
    let what = format!("reload {name}");
    let payload = ranks::payload(&NameArgs { name: name.to_string() })?;
    let answers = ranks::each::<ModuleDescription>(client, ranks, &what, "module.reload", payload, None)?;
    let mut failures = Failures::new(&what, ranks.len());
    for (rank, d) in answers.into_iter().filter_map(|a| failures.take(a)) {
        println!("rank {rank}: {}", reloaded(&d));
    }
    failures.finish()
}

fn reloaded(d: &ModuleDescription) -> String {
    format!(
        "reloaded {} ({}, digest {})",
        d.name,
        kind_text(&d.kind, d.isolated),
        d.digest.chars().take(12).collect::<String>()
    )
}

pub fn stats(client: &mut Client, name: &str, format: Format) -> Result<(), CliError> {
    let what = format!("stats {name}");
    let reply = client.rpc("module.stats", &NameArgs { name: name.to_string() }).doing(&what)?;
    let s: ModuleStats = decode(&reply, &what)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
        Format::Text => {
            for line in stats_lines(&s) {
                println!("{line}");
            }
        }
        Format::Prometheus => {
            let mut e = metrics::exposition();
            metrics::stats(&mut e, None, &s);
            crate::print_out(e.render().as_bytes())?;
        }
    }
    Ok(())
}

/// `stats` on each of `ranks`: a `rank N:` section per rank, its lines indented; with
/// `--format json` an array of `{rank, stats}` (or `{rank, error}`); with `--format
/// prometheus` every rank's samples with a `rank` label, and `switchboard_rank_up`.
pub fn stats_on(client: &mut Client, ranks: &[u32], name: &str, format: Format) -> Result<(), CliError> {
    let what = format!("stats {name}");
    let payload = ranks::payload(&NameArgs { name: name.to_string() })?;
    let answers = ranks::each::<ModuleStats>(client, ranks, &what, "module.stats", payload, None)?;
    if format == Format::Prometheus {
        return exposition(answers, &what, ranks.len(), |e, rank, s| metrics::stats(e, Some(rank), s));
    }
    sections(answers, &what, ranks.len(), format == Format::Json, "stats", stats_lines)
}

/// Per rank, in rank order: its samples (`add`) and `switchboard_rank_up` 1, or its failure
/// on stderr and `switchboard_rank_up` 0; then the exposition on stdout.
fn exposition<T>(
    answers: Vec<ranks::Answer<T>>,
    what: &str,
    asked: usize,
    add: impl Fn(&mut Exposition, u32, &T),
) -> Result<(), CliError> {
    let mut failures = Failures::new(what, asked);
    let mut e = metrics::exposition();
    for a in answers {
        match &a.result {
            Ok(v) => add(&mut e, a.rank, v),
            Err(err) => failures.fail(a.rank, err),
        }
        metrics::rank_up(&mut e, a.rank, a.result.is_ok());
    }
    crate::print_out(e.render().as_bytes())?;
    failures.finish()
}

/// One `KEY: VALUE` line per field, the key padded to 13 columns (RFC 3 §6).
fn stats_lines(s: &ModuleStats) -> Vec<String> {
    let mut rows: Vec<(&str, String)> = vec![
        ("name", s.name.clone()),
        ("kind", kind_text(&s.kind, s.isolated)),
        ("state", s.state.clone()),
        ("uptime", table::duration_ms(s.uptime_ms)),
        ("messages in", s.msgs_in.to_string()),
        ("messages out", s.msgs_out.to_string()),
        ("errors", s.errors.to_string()),
        ("queue", s.queue.to_string()),
        ("pending", s.pending.to_string()),
        ("restarts", s.restarts.to_string()),
    ];
    let optional = [
        ("last error", s.last_error.clone()),
        ("last failure", s.last_failure.clone()),
        ("memory", s.memory_bytes.map(table::size)),
        ("cpu", s.cpu_ms.map(|ms| format!("{ms} ms"))),
        ("rss", s.rss_bytes.map(table::size)),
        ("pid", s.pid.map(|p| p.to_string())),
    ];
    rows.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    rows.into_iter().map(|(k, v)| format!("{:<13} {v}", format!("{k}:"))).collect()
}

/// Per rank, in rank order: `rank N:` and the lines of its answer indented by two spaces, or
/// its failure on stderr; with `as_json`, one JSON array of `{rank, KEY: answer}` and
/// `{rank, error}` instead (failures still on stderr too).
fn sections<T: serde::Serialize>(
    answers: Vec<ranks::Answer<T>>,
    what: &str,
    asked: usize,
    as_json: bool,
    key: &str,
    lines: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    let mut failures = Failures::new(what, asked);
    let mut out = Vec::new();
    for a in answers {
        match &a.result {
            Ok(v) if as_json => out.push(RankJson::new(a.rank, key, Ok(v))),
            Ok(v) => {
                println!("rank {}:", a.rank);
                for line in lines(v) {
                    println!("  {line}");
                }
            }
            Err(e) => {
                if as_json {
                    out.push(RankJson::new::<()>(a.rank, key, Err(e)));
                }
                failures.fail(a.rank, e);
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    failures.finish()
}

/// This broker's `module.list`.
fn module_list(client: &mut Client) -> Result<ModuleList, CliError> {
    let reply = client.rpc("module.list", &()).doing("list")?;
    decode(&reply, "list")
}

pub fn list(client: &mut Client, format: Format) -> Result<(), CliError> {
    let list = module_list(client)?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&list.modules).unwrap_or_default()),
        Format::Text => {
            let rows: Vec<Vec<String>> = list.modules.iter().map(list_row).collect();
            table::print(&LIST_HEADER, &rows);
        }
        Format::Prometheus => {
            let mut e = metrics::exposition();
            metrics::list(&mut e, None, &list.modules);
            crate::print_out(e.render().as_bytes())?;
        }
    }
    Ok(())
}

/// `list` on each of `ranks`: one table with a RANK column first, rows in rank order; with
/// `--format json` an array of `{rank, modules}` (or `{rank, error}`); with `--format
/// prometheus` every rank's samples with a `rank` label, and `switchboard_rank_up`.
pub fn list_on(client: &mut Client, ranks: &[u32], format: Format) -> Result<(), CliError> {
    let answers = ranks::each::<ModuleList>(client, ranks, "list", "module.list", ranks::payload(&())?, None)?;
    if format == Format::Prometheus {
        return exposition(answers, "list", ranks.len(), |e, rank, l| metrics::list(e, Some(rank), &l.modules));
    }
    let mut failures = Failures::new("list", ranks.len());
    if format == Format::Json {
        let mut out = Vec::new();
        for a in answers {
            match a.result {
                Ok(list) => out.push(RankJson::new(a.rank, "modules", Ok(&list.modules))),
                Err(e) => {
                    out.push(RankJson::new::<()>(a.rank, "modules", Err(&e)));
                    failures.fail(a.rank, &e);
                }
            }
        }
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return failures.finish();
    }
    let mut rows = Vec::new();
    for (rank, list) in answers.into_iter().filter_map(|a| failures.take(a)) {
        rows.extend(list.modules.iter().map(|m| {
            let mut row = vec![rank.to_string()];
            row.extend(list_row(m));
            row
        }));
    }
    // No table at all when no rank answered: the failures say why.
    if !failures.all() {
        let mut header = vec!["RANK"];
        header.extend(LIST_HEADER);
        table::print(&header, &rows);
    }
    failures.finish()
}

/// A module's row under `LIST_HEADER` (RFC 3 §6).
fn list_row(m: &ModuleStatus) -> Vec<String> {
    let state = match (&m.reason, m.stuck) {
        (_, true) => format!("{} (stuck)", m.state),
        (Some(r), _) => format!("{}: {r}", m.state),
        (None, _) => m.state.clone(),
    };
    let state = match (&m.last_failure, m.state.as_str()) {
        // A restarted module runs: say why it last failed.
        (Some(f), "running") => format!("running (last failure: {f})"),
        _ => state,
    };
    vec![
        m.name.clone(),
        kind_text(&m.kind, m.isolated),
        m.services.join(","),
        m.digest.chars().take(12).collect(),
        table::size(m.size),
        table::duration_ms(m.idle_ms),
        m.msgs_in.to_string(),
        m.msgs_out.to_string(),
        m.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
        m.restarts.to_string(),
        state,
    ]
}

pub fn info(client: &mut Client, path: &Path, as_json: bool) -> Result<(), CliError> {
    let what = format!("info {}", path.display());
    let reply = client.rpc("module.info", &InfoArgs { path: reference(path) }).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
    } else {
        println!("{}", info_lines(&d).join("\n"));
    }
    Ok(())
}

/// `methods SERVICE`: what the service's module declares, one row per method.
pub fn methods(client: &mut Client, service: &str, as_json: bool) -> Result<(), CliError> {
    let list = match declared(client, service)? {
        Some(list) => list,
        None => {
            let topic = format!("{service}.methods");
            let reply = client.rpc(&topic, &()).doing(&topic)?;
            reply.decode().map_err(|e| {
                CliError::Usage(format!(
                    "{topic}: the module's answer is not a list of methods (RFC 3 §5.1), and it declares none in \
                     its file: {e}"
                ))
            })?
        }
    };
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .methods
        .iter()
        .map(|m| vec![format!("{service}.{}", m.name), callers(m.guest).to_string(), m.doc.clone()])
        .collect();
    table::print(&["METHOD", "CALLERS", "DESCRIPTION"], &rows);
    if list.otherwise {
        println!("(and any other method: {service} has a catch-all handler)");
    }
    if !list.events.is_empty() {
        let rows: Vec<Vec<String>> = list.events.iter().map(|e| vec![e.name.clone(), e.doc.clone()]).collect();
        println!();
        table::print(&["EVENT", "DESCRIPTION"], &rows);
    }
    Ok(())
}

/// What the module that provides `service` declares in its file (`module.list`'s
/// `declares`), if it declares anything; None for a service no module provides, or whose
/// module declares nothing, which is then asked `SERVICE.methods` (RFC 3 §5.1).
fn declared(client: &mut Client, service: &str) -> Result<Option<Declarations>, CliError> {
    Ok(module_list(client)?
        .modules
        .into_iter()
        .find(|m| m.services.iter().any(|s| s == service))
        .map(|m| m.declares)
        .filter(|d| !d.methods.is_empty() || !d.events.is_empty() || d.otherwise))
}

/// `info` on each of `ranks`: a `rank N:` section per rank; with `--json` an array of
/// `{rank, module}` (or `{rank, error}`).
pub fn info_on(client: &mut Client, ranks: &[u32], path: &Path, as_json: bool) -> Result<(), CliError> {
    let what = format!("info {}", path.display());
    let payload = ranks::payload(&InfoArgs { path: reference(path) })?;
    let answers = ranks::each::<ModuleDescription>(client, ranks, &what, "module.info", payload, None)?;
    sections(answers, &what, ranks.len(), as_json, "module", info_lines)
}

fn info_lines(d: &ModuleDescription) -> Vec<String> {
    vec![
        format!("name:     {}", d.name),
        format!("kind:     {}", d.kind),
        format!("services: {}", d.services.join(",")),
        format!("path:     {}", d.path),
        format!("digest:   {}", d.digest),
        format!("size:     {} ({} bytes)", table::size(d.size), d.size),
    ]
    .into_iter()
    .chain(declared_lines(&d.name, &d.declares))
    .collect()
}

/// What `info` prints of a module's declarations: its methods (as `SERVICE.NAME`, who may
/// call them, what they do) and the events it publishes, aligned, under `methods:` and
/// `events:`.
fn declared_lines(service: &str, d: &Declarations) -> Vec<String> {
    const INDENT: &str = "          ";
    let mut rows: Vec<Vec<String>> = d
        .methods
        .iter()
        .map(|m| vec![format!("{service}.{}", m.name), callers(m.guest).to_string(), m.doc.clone()])
        .collect();
    if d.otherwise {
        let which = if rows.is_empty() { "every" } else { "any other" };
        rows.push(vec![format!("{service}.*"), "anyone".into(), format!("a catch-all handler answers {which} method")]);
    }
    let mut lines = labelled("methods:  ", INDENT, table::align(&rows));
    let rows: Vec<Vec<String>> = d.events.iter().map(|e| vec![e.name.clone(), e.doc.clone()]).collect();
    lines.extend(labelled("events:   ", INDENT, table::align(&rows)));
    lines
}

/// `rows` after `label` (the first) and `indent` (the rest), or `label` and "none declared".
fn labelled(label: &str, indent: &str, rows: Vec<String>) -> Vec<String> {
    if rows.is_empty() {
        return vec![format!("{label}none declared")];
    }
    rows.iter().enumerate().map(|(i, r)| format!("{}{}", if i == 0 { label } else { indent }, r.trim_end())).collect()
}

/// Who may call a method, as `info` and `methods` print it.
fn callers(guest: bool) -> &'static str {
    if guest {
        "anyone"
    } else {
        "owner"
    }
}

/// `HOST[:GUEST][:rw]` as a directory grant; the host path is made absolute.
pub fn dir_grant(spec: &str) -> Result<DirArgs, CliError> {
    let mut d = DirArgs::parse(spec)
        .ok_or_else(|| CliError::Usage(format!("--dir {spec}: no host directory (write HOST[:GUEST][:rw])")))?;
    d.host = absolute(Path::new(&d.host)).display().to_string();
    d.guest = d.guest.or_else(|| Some(d.host.clone()));
    Ok(d)
}
