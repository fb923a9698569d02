//! `apply FILE` and `config reload`: the `module.apply` request and its plan.

use std::path::Path;

use switchboard_module_api::mgmt::{ApplyArgs, ApplyReport};
use switchboard_module_api::Client;

use super::modules::{absolute, decode};
use crate::{CliError, Context};

pub fn apply(client: &mut Client, file: Option<&Path>, dry_run: bool, as_json: bool) -> Result<(), CliError> {
    let args = ApplyArgs { path: file.map(|f| absolute(f).display().to_string()), dry_run };
    let what = match file {
        Some(f) => format!("apply {}", f.display()),
        None => "config reload".to_string(),
    };
    // Loads and removes can take a while each; no timeout.
    let reply = client.rpc("module.apply", &args).doing(&what)?;
    let report: ApplyReport = decode(&reply, &what)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print(&report);
    }
    match report.steps.iter().filter(|s| s.outcome.is_some() && !s.ok).count() {
        0 => Ok(()),
        n => Err(CliError::Usage(format!("{what}: {n} step{} did not succeed", if n == 1 { "" } else { "s" }))),
    }
}

fn print(r: &ApplyReport) {
    if r.steps.is_empty() {
        println!("nothing to do: {} module{} as {} says", r.unchanged.len(), plural(r.unchanged.len()), r.path);
    } else {
        if r.dry_run {
            println!("plan for {} (dry run, would change nothing):", r.path);
        } else {
            println!("applying {}:", r.path);
        }
        for s in &r.steps {
            let outcome = s.outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default();
            println!("  {:<9} {:<20} ({}){outcome}", s.action, s.name, s.why);
        }
        if !r.unchanged.is_empty() {
            println!("  unchanged: {}", r.unchanged.join(", "));
        }
    }
    if !r.needs_restart.is_empty() {
        println!("note: {} changed; only a broker restart applies that", r.needs_restart.join(", "));
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
