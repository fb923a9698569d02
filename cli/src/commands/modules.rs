//! `load`, `remove`, `list`, `info`: the `module` service.

use std::path::{Path, PathBuf};

use switchboard_module_api::mgmt::{
    DirArgs, InfoArgs, LoadArgs, ModuleDescription, ModuleList, ModuleStats, NameArgs, RemoveArgs,
};
use switchboard_module_api::{Client, Message};

use crate::{table, CliError, Context};

/// The broker runs elsewhere: hand it an absolute path.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A module reference for the broker: a bare name (a valid module name: no `/`, no `.`) as
/// it is, for its search path (RFC 4 §4); a path made absolute.
fn reference(path: &Path) -> String {
    let bare = path.to_str().is_some_and(switchboard_module_api::mgmt::is_module_name);
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
    println!("loaded {} ({}, services: {})", d.name, d.kind, d.services.join(","));
    Ok(())
}

pub fn remove(client: &mut Client, name: &str, grace_ms: Option<u64>, force: bool) -> Result<(), CliError> {
    client
        .rpc("module.remove", &RemoveArgs { name: name.to_string(), grace_ms, force })
        .doing(format!("remove {name}"))?;
    Ok(())
}

pub fn reload(client: &mut Client, name: &str) -> Result<(), CliError> {
    let what = format!("reload {name}");
    let reply = client.rpc("module.reload", &NameArgs { name: name.to_string() }).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    println!("reloaded {} ({}, digest {})", d.name, d.kind, d.digest.chars().take(12).collect::<String>());
    Ok(())
}

pub fn stats(client: &mut Client, name: &str, as_json: bool) -> Result<(), CliError> {
    let what = format!("stats {name}");
    let reply = client.rpc("module.stats", &NameArgs { name: name.to_string() }).doing(&what)?;
    let s: ModuleStats = decode(&reply, &what)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    let mut rows: Vec<(&str, String)> = vec![
        ("name", s.name.clone()),
        ("kind", s.kind.clone()),
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
    for (k, v) in rows {
        println!("{:<13} {v}", format!("{k}:"));
    }
    Ok(())
}

pub fn list(client: &mut Client, as_json: bool) -> Result<(), CliError> {
    let reply = client.rpc("module.list", &()).doing("list")?;
    let list: ModuleList = decode(&reply, "list")?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&list.modules).unwrap_or_default());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .modules
        .iter()
        .map(|m| {
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
                m.kind.clone(),
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
        })
        .collect();
    table::print(
        &["NAME", "KIND", "SERVICES", "DIGEST", "SIZE", "IDLE", "IN", "OUT", "PID", "RESTARTS", "STATE"],
        &rows,
    );
    Ok(())
}

pub fn info(client: &mut Client, path: &Path, as_json: bool) -> Result<(), CliError> {
    let what = format!("info {}", path.display());
    let reply = client.rpc("module.info", &InfoArgs { path: reference(path) }).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
    } else {
        println!(
            "name:     {}\nkind:     {}\nservices: {}\npath:     {}\ndigest:   {}\nsize:     {} ({} bytes)",
            d.name,
            d.kind,
            d.services.join(","),
            d.path,
            d.digest,
            table::size(d.size),
            d.size
        );
    }
    Ok(())
}

/// `HOST[:GUEST][:rw]` as a directory grant; the host path is made absolute.
pub fn dir_grant(spec: &str) -> Result<DirArgs, CliError> {
    let mut d = DirArgs::parse(spec)
        .ok_or_else(|| CliError::Usage(format!("--dir {spec}: no host directory (write HOST[:GUEST][:rw])")))?;
    d.host = absolute(Path::new(&d.host)).display().to_string();
    d.guest = d.guest.or_else(|| Some(d.host.clone()));
    Ok(d)
}
