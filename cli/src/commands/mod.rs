//! One function per `modctl` command, each a request to a built-in service and its output.

mod event;
mod modules;
mod rpc;

use switchboard_module_api::mgmt::LoadArgs;
use switchboard_module_api::Client;

use crate::args::{Command, EventCommand};
use crate::CliError;

pub fn run(client: &mut Client, command: Command) -> Result<(), CliError> {
    match command {
        Command::Load { path, name, config, hello_timeout, memory_mb, cpu_ms, dirs, args } => {
            let config = config.as_deref().map(crate::json::value).transpose()?;
            let dirs = dirs.iter().map(|d| modules::dir_grant(d)).collect();
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
        Command::Remove { name, grace } => modules::remove(client, &name, grace),
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
