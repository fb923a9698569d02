//! One function per `modctl` command, each a request to a built-in service and its output.

mod apply;
mod event;
mod modules;
mod rpc;
mod trace;

use switchboard_module_api::mgmt::LoadArgs;
use switchboard_module_api::Client;

use crate::args::{Command, ConfigCommand, EventCommand};
use crate::CliError;

pub fn run(client: &mut Client, command: Command) -> Result<(), CliError> {
    match command {
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, args } => {
            let config = config.as_deref().map(crate::json::value).transpose()?;
            let dirs = dirs.iter().map(|d| modules::dir_grant(d)).collect::<Result<_, _>>()?;
            let request = LoadArgs {
                path: String::new(),
                name,
                args,
                config,
                hello_timeout_ms: hello_timeout,
                memory_mb,
                cpu_ms,
                dirs,
            };
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
    }
}
