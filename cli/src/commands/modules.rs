//! `load`, `remove`, `list`, `info`: the `module` service.

use std::path::{Path, PathBuf};

use switchboard_module_api::mgmt::{DirArgs, InfoArgs, LoadArgs, ModuleDescription, ModuleList, RemoveArgs};
use switchboard_module_api::{Client, Message};

use crate::{table, CliError, Context};

/// The broker runs elsewhere: hand it an absolute path.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn decode<T: serde::de::DeserializeOwned>(msg: &Message, what: &str) -> Result<T, CliError> {
    msg.decode().map_err(|e| CliError::Usage(format!("{what}: the broker sent an unexpected reply: {e}")))
}

/// `request` with its path made absolute (the broker runs elsewhere).
pub fn load(client: &mut Client, path: &Path, mut request: LoadArgs) -> Result<(), CliError> {
    request.path = absolute(path).display().to_string();
    let what = format!("load {}", path.display());
    let reply = client.rpc("module.load", &request).doing(&what)?;
    let d: ModuleDescription = decode(&reply, &what)?;
    println!("loaded {} ({}, services: {})", d.name, d.kind, d.services.join(","));
    Ok(())
}

pub fn remove(client: &mut Client, name: &str, grace_ms: Option<u64>) -> Result<(), CliError> {
    client.rpc("module.remove", &RemoveArgs { name: name.to_string(), grace_ms }).doing(format!("remove {name}"))?;
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
                state,
            ]
        })
        .collect();
    table::print(&["NAME", "KIND", "SERVICES", "DIGEST", "SIZE", "IDLE", "IN", "OUT", "PID", "STATE"], &rows);
    Ok(())
}

pub fn info(client: &mut Client, path: &Path, as_json: bool) -> Result<(), CliError> {
    let what = format!("info {}", path.display());
    let reply = client.rpc("module.info", &InfoArgs { path: absolute(path).display().to_string() }).doing(&what)?;
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
pub fn dir_grant(spec: &str) -> DirArgs {
    let (rest, writable) = match spec.strip_suffix(":rw") {
        Some(r) => (r, true),
        None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
    };
    let (host, guest) = match rest.split_once(':') {
        Some((h, g)) => (h, Some(g.to_string())),
        None => (rest, None),
    };
    let host = absolute(Path::new(host)).display().to_string();
    DirArgs { guest: guest.or_else(|| Some(host.clone())), host, writable }
}
