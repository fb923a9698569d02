//! One function per `modctl` command, each a request to a built-in service and its output;
//! with `--rank`, the commands that take it send theirs to each named rank (`ranks`).

mod apply;
mod event;
mod metrics;
mod modules;
mod overlay;
mod ranks;
mod rpc;
mod trace;

use switchboard_client::Client;
use switchboard_protocol::{mgmt::LoadArgs, ranks::RankSet};

use crate::args::{Command, ConfigCommand, EventCommand, OverlayCommand};
use crate::CliError;

/// The commands that need no broker (`Command::needs_broker`): `completions` and `man`.
pub fn local(command: Command, rank: Option<&RankSet>) -> Result<(), CliError> {
    let name = match command {
        Command::Completions { .. } => "completions",
        _ => "man",
    };
    if rank.is_some() {
        return Err(ranks::refuse(name, "it prints what modctl knows itself and asks no broker"));
    }
    match command {
        Command::Completions { shell } => crate::print_out(&crate::generate::completions(shell)),
        Command::Man { dir: None } => crate::print_out(&crate::generate::man_page()?),
        Command::Man { dir: Some(dir) } => {
            let pages = crate::generate::man_pages(&dir)?;
            crate::print_out(format!("{}\n", pages.join("\n")).as_bytes())
        }
        other => Err(CliError::Usage(format!("{other:?} needs a broker"))),
    }
}

pub fn run(client: &mut Client, command: Command, rank: Option<&RankSet>) -> Result<(), CliError> {
    if !command.needs_broker() {
        return local(command, rank);
    }
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
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, isolated, args, .. } => {
            let mut request = load_args(name, config, hello_timeout, memory_mb, cpu_ms, dirs, args)?;
            request.isolated = isolated;
            modules::load(client, &path, request)
        }
        Command::Remove { name, grace, force, missing_ok } => modules::remove(client, &name, grace, force, missing_ok),
        Command::Reload { name } => modules::reload(client, &name),
        Command::Apply { file, dry_run, json } => apply::apply(client, Some(&file), dry_run, json),
        Command::Config { command: ConfigCommand::Reload { dry_run, json } } => {
            apply::apply(client, None, dry_run, json)
        }
        Command::Stats { name, output } => modules::stats(client, &name, output.format()),
        Command::Trace { names, topic, types, count, json } => trace::trace(client, names, topic, types, count, json),
        Command::List { output } => modules::list(client, output.format()),
        Command::Info { path, json } => modules::info(client, &path, json),
        Command::Methods { service, json } => modules::methods(client, &service, json),
        Command::Ping { service, count } => rpc::ping(client, &service, count),
        Command::Rpc { topic, json, timeout, stream: false } => rpc::rpc(client, &topic, json.as_deref(), timeout),
        Command::Rpc { topic, json, timeout, stream: true } => rpc::stream(client, &topic, json.as_deref(), timeout),
        Command::Event { command: EventCommand::Pub { topic, json } } => {
            event::publish(client, &topic, json.as_deref())
        }
        Command::Event { command: EventCommand::Sub { topics, count } } => event::subscribe(client, &topics, count),
        Command::Overlay { command: OverlayCommand::Status { json } } => overlay::status(client, None, json),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("run by local above"),
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
        Command::Methods { .. } => {
            return Err(ranks::refuse("methods", "ask one rank's module with `modctl --rank N rpc SERVICE.methods`"))
        }
        _ => {}
    }
    let ranks = ranks::resolve(client, set)?;
    match command {
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, isolated, args, rollback } => {
            let mut request = load_args(name, config, hello_timeout, memory_mb, cpu_ms, dirs, args)?;
            request.isolated = isolated;
            modules::load_on(client, &ranks, &path, request, rollback)
        }
        Command::Remove { name, grace, force, missing_ok } => {
            modules::remove_on(client, &ranks, &name, grace, force, missing_ok)
        }
        Command::Reload { name } => modules::reload_on(client, &ranks, &name),
        Command::Stats { name, output } => modules::stats_on(client, &ranks, &name, output.format()),
        Command::List { output } => modules::list_on(client, &ranks, output.format()),
        Command::Info { path, json } => modules::info_on(client, &ranks, &path, json),
        Command::Ping { service, count } => rpc::ping_on(client, &ranks, &service, count),
        Command::Rpc { topic, json, timeout, stream: false } => {
            rpc::rpc_on(client, &ranks, &topic, json.as_deref(), timeout)
        }
        Command::Rpc { topic, json, timeout, stream: true } => {
            rpc::stream_on(client, &ranks, &topic, json.as_deref(), timeout)
        }
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
        Command::Trace { .. } | Command::Event { .. } | Command::Methods { .. } => unreachable!("refused above"),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("run by local in run"),
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
    Ok(LoadArgs {
        path: String::new(),
        name,
        args,
        config,
        hello_timeout_ms: hello_timeout,
        memory_mb,
        cpu_ms,
        dirs,
        isolated: false,
    })
}
