//! `apply FILE` and `config reload`: the `module.apply` request and its plan, on the broker
//! modctl is connected to or on each rank of `--rank`.

use std::path::Path;

use switchboard_client::Client;
use switchboard_protocol::mgmt::{ApplyArgs, ApplyReport};

use super::modules::{absolute, decode};
use super::ranks::{self, Failures, RankJson};
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
    match failed_steps(&report) {
        0 => Ok(()),
        n => Err(CliError::Usage(format!("{what}: {n} step{} did not succeed", plural(n)))),
    }
}

/// Steps carried out that did not succeed (failed or skipped).
fn failed_steps(r: &ApplyReport) -> usize {
    r.steps.iter().filter(|s| s.outcome.is_some() && !s.ok).count()
}

/// `apply` / `config reload` on each of `ranks`: every broker applies the part of the file
/// for its own rank (RFC 7 §7), FILE as it is on that broker's machine (`config reload`: the
/// file each was started with). A `rank N:` section per rank with its report indented; with
/// `--json` an array of `{rank, report}` (or `{rank, error}`). A rank fails if its request
/// did or a step it carried out did not succeed (`N steps did not succeed`).
pub fn apply_on(
    client: &mut Client,
    ranks: &[u32],
    file: Option<&Path>,
    dry_run: bool,
    as_json: bool,
) -> Result<(), CliError> {
    let args = ApplyArgs { path: file.map(|f| absolute(f).display().to_string()), dry_run };
    let what = match file {
        Some(f) => format!("apply {}", f.display()),
        None => "config reload".to_string(),
    };
    let answers = ranks::each::<ApplyReport>(client, ranks, &what, "module.apply", ranks::payload(&args)?, None)?;
    let mut failures = Failures::new(&what, ranks.len());
    let mut out = Vec::new();
    for a in answers {
        match a.result {
            Ok(report) => {
                if as_json {
                    out.push(RankJson::new(a.rank, "report", Ok(&report)));
                } else {
                    println!("rank {}:", a.rank);
                    for line in lines(&report) {
                        println!("  {line}");
                    }
                }
                // The report is shown, and the rank counts as failed.
                match failed_steps(&report) {
                    0 => {}
                    n => failures.fail(a.rank, &format!("{n} step{} did not succeed", plural(n))),
                }
            }
            Err(e) => {
                if as_json {
                    out.push(RankJson::new::<()>(a.rank, "report", Err(&e)));
                }
                failures.fail(a.rank, &e);
            }
        }
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    failures.finish()
}

fn print(r: &ApplyReport) {
    for line in lines(r) {
        println!("{line}");
    }
}

/// The report as RFC 3 §6 shows it, a line each.
fn lines(r: &ApplyReport) -> Vec<String> {
    let mut out = Vec::new();
    if r.steps.is_empty() {
        out.push(format!(
            "nothing to do: {} module{} as {} says",
            r.unchanged.len(),
            plural(r.unchanged.len()),
            r.path
        ));
    } else {
        if r.dry_run {
            out.push(format!("plan for {} (dry run, would change nothing):", r.path));
        } else {
            out.push(format!("applying {}:", r.path));
        }
        for s in &r.steps {
            let outcome = s.outcome.as_deref().map(|o| format!(": {o}")).unwrap_or_default();
            out.push(format!("  {:<9} {:<20} ({}){outcome}", s.action, s.name, s.why));
        }
        if !r.unchanged.is_empty() {
            out.push(format!("  unchanged: {}", r.unchanged.join(", ")));
        }
    }
    if !r.needs_restart.is_empty() {
        out.push(format!("note: {} changed; only a broker restart applies that", r.needs_restart.join(", ")));
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
