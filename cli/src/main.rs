//! `modctl`: a thin client over the broker's management protocol (RFC 3). Arguments are
//! parsed in `args`, each command lives in `commands`, and every failure ends here as one
//! line on stderr and a non-zero exit status.

mod args;
mod commands;
mod json;
mod table;

use std::process::ExitCode;

use clap::Parser;
use switchboard_module_api::{uri, Client, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Broker { what: String, source: ClientError },
}

/// Attach what modctl was doing to a client error.
pub trait Context<T> {
    fn doing(self, what: impl Into<String>) -> Result<T, CliError>;
}

impl<T> Context<T> for Result<T, ClientError> {
    fn doing(self, what: impl Into<String>) -> Result<T, CliError> {
        self.map_err(|source| CliError::Broker { what: what.into(), source })
    }
}

fn connect(cli_uri: Option<&str>) -> Result<Client, CliError> {
    let path = cli_uri.map_or_else(uri::resolve, uri::parse);
    Client::connect(&path).doing("connect")
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = connect(cli.uri.as_deref()).and_then(|mut client| commands::run(&mut client, cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modctl: {e}");
            ExitCode::FAILURE
        }
    }
}
