//! One function per `modctl` command, each a request to a built-in service and its output;
//! with `--rank`, the commands that take it send theirs to each named rank (`ranks`).

mod apply;
mod event;
mod modules;
mod overlay;
mod ranks;
mod rpc;
mod trace;

use switchboard_module_api::mgmt::LoadArgs;
use switchboard_module_api::ranks::RankSet;
use switchboard_module_api::Client;

use crate::args::{Command, ConfigCommand, EventCommand, OverlayCommand};
use crate::CliError;

pub fn run(client: &mut Client, command: Command, rank: Option<&RankSet>) -> Result<(), CliError> {
    if let Some(set) = rank {
        return run_on(client, command, set);
    }
    // A site file describes the whole instance: in one of several brokers, apply it on every
    // rank (RFC 7 §7), each rank its own part.
    if matches!(command, Command::Apply { .. } | Command::Config { .. }) && ranks::size(client)? > 1 {
        return run_on(client, command, &RankSet::All);
    }
    match command {
        Command::Load { rollback: true, .. } => Err(CliError::Usage(
            "load --rollback needs --rank: it undoes a load on the ranks where it loaded when others fail".into(),
        )),
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, args, .. } => {
            let request = load_args(name, config, hello_timeout, memory_mb, cpu_ms, dirs, args)?;
            modules::load(client, &path, request)
        }
        Command::Remove { name, grace, force } => modules::remove(client, &name, grace, force),
        Command::Reload { name } => modules::reload(client, &name),
        Command::Apply { file, dry_run, json } => apply::apply(client, Some(&file), dry_run, json),
        Command::Config { command: ConfigCommand::Reload { dry_run, json } } => {
            apply::apply(client, None, dry_run, json)
        }
        Command::Stats { name, json } => modules::stats(client, &name, json),
        Command::Trace { names, topic, types, count, json } => trace::trace(client, names, topic, types, count, json),
        Command::List { json } => modules::list(client, json),
        Command::Info { path, json } => modules::info(client, &path, json),
        Command::Ping { service, count } => rpc::ping(client, &service, count),
        Command::Rpc { topic, json, timeout } => rpc::rpc(client, &topic, json.as_deref(), timeout),
        Command::Event { command: EventCommand::Pub { topic, json } } => {
            event::publish(client, &topic, json.as_deref())
        }
        Command::Event { command: EventCommand::Sub { topics, count } } => event::subscribe(client, &topics, count),
        Command::Overlay { command: OverlayCommand::Status { json } } => overlay::status(client, None, json),
    }
}

/// `command` on the ranks of `set` (RFC 7 §7). A command that cannot take `--rank` is refused
/// before anything is sent.
fn run_on(client: &mut Client, command: Command, set: &RankSet) -> Result<(), CliError> {
    // Refusals first: no request for a command that will not run.
    match &command {
        Command::Trace { .. } => {
            return Err(ranks::refuse("trace", "it watches the broker modctl connects to (choose it with --uri)"))
        }
        Command::Event { .. } => {
            return Err(ranks::refuse(
                "event",
                "events reach subscribers on every rank wherever they are published (RFC 7 §4.5)",
            ))
        }
        _ => {}
    }
    let ranks = ranks::resolve(client, set)?;
    match command {
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, args, rollback } => {
            let request = load_args(name, config, hello_timeout, memory_mb, cpu_ms, dirs, args)?;
            modules::load_on(client, &ranks, &path, request, rollback)
        }
        Command::Remove { name, grace, force } => modules::remove_on(client, &ranks, &name, grace, force),
        Command::Reload { name } => modules::reload_on(client, &ranks, &name),
        Command::Stats { name, json } => modules::stats_on(client, &ranks, &name, json),
        Command::List { json } => modules::list_on(client, &ranks, json),
        Command::Info { path, json } => modules::info_on(client, &ranks, &path, json),
        Command::Ping { service, count } => rpc::ping_on(client, &ranks, &service, count),
        Command::Rpc { topic, json, timeout } => rpc::rpc_on(client, &ranks, &topic, json.as_deref(), timeout),
        Command::Apply { file, dry_run, json } => apply::apply_on(client, &ranks, Some(&file), dry_run, json),
        Command::Config { command: ConfigCommand::Reload { dry_run, json } } => {
            apply::apply_on(client, &ranks, None, dry_run, json)
        }
        Command::Overlay { command: OverlayCommand::Status { json } } => match ranks[..] {
            [rank] => overlay::status(client, Some(rank), json),
            _ => Err(CliError::Usage(format!(
                "overlay status takes one rank, not {set}: it draws that rank's subtree (rank 0's is the whole tree)"
            ))),
        },
        Command::Trace { .. } | Command::Event { .. } => unreachable!("refused above"),
    }
}

/// `module.load`'s request from `load`'s options; the path is filled in by the caller.
fn load_args(
    name: Option<String>,
    config: Option<String>,
    hello_timeout: Option<u64>,
    memory_mb: Option<u64>,
    cpu_ms: Option<u64>,
    dirs: Vec<String>,
    args: Vec<String>,
) -> Result<LoadArgs, CliError> {
    let config = config.as_deref().map(crate::json::value).transpose()?;
    let dirs = dirs.iter().map(|d| modules::dir_grant(d)).collect::<Result<_, _>>()?;
    Ok(LoadArgs { path: String::new(), name, args, config, hello_timeout_ms: hello_timeout, memory_mb, cpu_ms, dirs })
}
