//! The printed report: a header saying what ran where, the table, the ratios and the targets.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::fixture::BrokerFixture;
use crate::measure::Sample;
use crate::{
    Bench, Mode, Opts, TARGET_PIPELINED_RATE, TARGET_PROCESS_RATIO, TARGET_SEQ_RATIO, TARGET_WARM_LOAD_MS,
    TARGET_WASM_RATIO,
};

pub fn header(opts: &Opts, modules: &Path, broker: &BrokerFixture, payload: &Bytes, window: usize, flush_every: usize) {
    println!("sbbench: Switchboard message path");
    println!("  date     {}", utc_now());
    println!("  machine  {} cpus, {}", std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model());
    if cfg!(debug_assertions) {
        println!("  build    DEBUG: these numbers mean little; use a release build");
    } else {
        println!("  build    release");
    }
    println!(
        "  rounds   {} x {:.2} s per benchmark, interleaved, after {:.2} s of warm-up{}",
        opts.rounds(),
        opts.round_time().as_secs_f64(),
        opts.warmup_time().as_secs_f64(),
        if opts.quick { " (--quick)" } else { "" },
    );
    println!(
        "  load     {} B msgpack payload; pipelined: {window} in flight, socket clients write every {flush_every} responses",
        payload.len()
    );
    println!(
        "  modules  {} (from {})",
        [&broker.echo_so, &broker.driver_so]
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(", "),
        modules.display()
    );
    println!();
}

fn median(samples: &[Sample]) -> Option<Sample> {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    v.get(v.len() / 2).copied()
}

fn best(samples: &[Sample]) -> Option<f64> {
    samples.iter().map(Sample::rate).reduce(f64::max)
}

fn rate_of(benches: &[Bench], id: &str) -> Option<f64> {
    benches.iter().find(|b| b.id == id).and_then(|b| median(&b.samples)).map(|s| s.rate())
}

pub fn table(benches: &[Bench], window: usize) {
    println!(
        "{:<14} {:<40} {:>12} {:>12} {:>8} {:>9} {:>8} {:>7} {:>7}",
        "id", "path", "median/s", "best/s", "us/op", "cpu us/op", "csw/op", "vs raw", "vs chan"
    );
    println!("{}", "-".repeat(14 + 40 + 12 + 12 + 8 + 9 + 8 + 7 + 7 + 8));
    for (i, b) in benches.iter().enumerate() {
        if i > 0 && benches[i - 1].mode != b.mode {
            println!();
        }
        let what = match b.mode {
            Mode::Seq => b.what.to_string(),
            Mode::Pipe => b.what.replace("window", &window.to_string()),
        };
        if let Some(e) = &b.error {
            println!("{:<14} {:<40} FAILED: {e}", b.id, what);
            continue;
        }
        let Some(m) = median(&b.samples) else {
            continue;
        };
        let rate = m.rate();
        let ops = m.ops.max(1) as f64;
        let (raw, chan) = match b.mode {
            Mode::Seq => ("raw-seq", "chan-seq"),
            Mode::Pipe => ("raw-pipe", "chan-pipe"),
        };
        let ratio = |floor| rate_of(benches, floor).map_or_else(|| "-".to_string(), |f| format!("{:.2}", rate / f));
        println!(
            "{:<14} {:<40} {:>12} {:>12} {:>8.2} {:>9.2} {:>8.2} {:>7} {:>7}",
            b.id,
            what,
            thousands(rate),
            thousands(best(&b.samples).unwrap_or(rate)),
            1e6 / rate,
            micros(m.cpu) / ops,
            (m.vcsw + m.ivcsw) as f64 / ops,
            ratio(raw),
            ratio(chan),
        );
    }
    println!();
    println!("us/op = 1 / median rate (latency when sequential); cpu us/op and csw/op = CPU time and");
    println!("context switches of the whole process (client, broker, modules) per round trip.");
    println!();

    let pairs = [
        ("sequential", "echo-seq", "raw-seq", "broker echo / raw socket echo"),
        ("pipelined ", "echo-pipe", "raw-pipe", "broker echo / raw socket echo"),
        ("sequential", "echo-seq", "chan-seq", "broker echo / channel ping-pong"),
        ("pipelined ", "echo-pipe", "chan-pipe", "broker echo / channel pipelined"),
        ("sequential", "ping-seq", "raw-seq", "broker.ping / raw socket echo"),
        ("pipelined ", "ping-pipe", "raw-pipe", "broker.ping / raw socket echo"),
        ("sequential", "iecho-seq", "echo-seq", "isolated native echo / native echo"),
        ("pipelined ", "iecho-pipe", "echo-pipe", "isolated native echo / native echo"),
        ("sequential", "iecho-seq", "pecho-seq", "isolated native echo / Rust process echo"),
        ("pipelined ", "iecho-pipe", "pecho-pipe", "isolated native echo / Rust process echo"),
        ("sequential", "pecho-seq", "echo-seq", "Rust process echo / native echo"),
        ("pipelined ", "pecho-pipe", "echo-pipe", "Rust process echo / native echo"),
        ("sequential", "pyecho-seq", "echo-seq", "Python echo / native echo"),
        ("pipelined ", "pyecho-pipe", "echo-pipe", "Python echo / native echo"),
        ("sequential", "wecho-seq", "echo-seq", "WASM echo / native echo"),
        ("pipelined ", "wecho-pipe", "echo-pipe", "WASM echo / native echo"),
        ("sequential", "mod-echo-seq", "chan-seq", "module -> echo / channel ping-pong"),
        ("pipelined ", "mod-echo-pipe", "chan-pipe", "module -> echo / channel pipelined"),
    ];
    let mut any = false;
    for (mode, a, f, label) in pairs {
        if let (Some(x), Some(y)) = (rate_of(benches, a), rate_of(benches, f)) {
            if !any {
                println!("Ratios (median / median):");
                any = true;
            }
            println!("  {mode}  {label:<42} {:>6.2} x   ({} / {} per s)", x / y, thousands(x), thousands(y));
        }
    }
    if any {
        println!();
    }

    println!("Targets (from the issue; informational, the exit status does not depend on them):");
    match (rate_of(benches, "echo-seq"), rate_of(benches, "raw-seq")) {
        (Some(x), Some(y)) => println!(
            "  {}  sequential broker RPC (echo) >= {TARGET_SEQ_RATIO:.1} x raw socket echo: {:.2} x ({} vs {} RPC/s; round by round: {})",
            verdict(x / y >= TARGET_SEQ_RATIO),
            x / y,
            thousands(x),
            thousands(y),
            per_round(benches, "echo-seq", "raw-seq")
        ),
        _ => println!("  n/a   sequential target: needs echo-seq and raw-seq"),
    }
    match rate_of(benches, "echo-pipe") {
        Some(x) => println!(
            "  {}  pipelined broker RPC (echo, {window} in flight) >= {} RPC/s: {} RPC/s ({:.2} x the target)",
            verdict(x >= TARGET_PIPELINED_RATE),
            thousands(TARGET_PIPELINED_RATE),
            thousands(x),
            x / TARGET_PIPELINED_RATE
        ),
        None => println!("  n/a   pipelined target: needs echo-pipe"),
    }
    for (id, label, target) in [
        ("pecho-pipe", "Rust process echo, pipelined", TARGET_PROCESS_RATIO),
        ("wecho-pipe", "WASM echo, pipelined", TARGET_WASM_RATIO),
    ] {
        if let (Some(x), Some(y)) = (rate_of(benches, id), rate_of(benches, "echo-pipe")) {
            println!(
                "  {}  {label} >= {target:.1} x native echo pipelined: {:.2} x ({} vs {} RPC/s)",
                verdict(x / y >= target),
                x / y,
                thousands(x),
                thousands(y)
            );
        }
    }
}

/// The WASM load section: cold and warm load times, memory per instance, the target.
fn ms(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of `v` in milliseconds.
fn med(v: &[Duration]) -> f64 {
    let mut v: Vec<f64> = v.iter().map(ms).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Site files at scale: one row per file.
pub fn site(rows: &[crate::site::SiteTimes]) {
    println!();
    println!("Site files (switchboard --config as its own process; medians of the rounds, in ms):");
    println!(
        "  {:<36} {:>7} {:>9} {:>11} {:>9} {:>10} {:>8}",
        "file", "modules", "start", "one by one", "apply 1", "apply none", "stop"
    );
    for r in rows {
        println!(
            "  {:<36} {:>7} {:>9.1} {:>11.1} {:>9.2} {:>10.2} {:>8.1}",
            r.what,
            r.modules,
            med(&r.start),
            ms(&r.one_by_one),
            med(&r.apply_one),
            med(&r.apply_none),
            med(&r.stop)
        );
    }
    println!("  start: exec to the address line, every module running (levels load in parallel);");
    println!("  one by one: the same modules, one module.load request after another;");
    println!("  apply 1: module.apply of the file with one module's args changed (one reload);");
    println!("  apply none: module.apply of an unchanged file; stop: SIGTERM to exit, all removed.");
}

/// Module churn: one row per broker environment, then each row's samples.
pub fn churn(rows: &[crate::churn::ChurnRow], kinds: &[std::path::PathBuf], missing: &[String]) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let names: Vec<String> =
        kinds.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    println!();
    println!("Module churn (switchboard as its own process; each cycle loads one of {}, calls it", names.join(", "));
    println!("once and removes it; resident memory in MiB from /proc/PID/status):");
    println!(
        "  {:<28} {:>7} {:>7} {:>7} {:>7} {:>14} {:>12} {:>9}",
        "broker environment", "cycles", "idle", "start", "end", "MiB/1000 cyc", "threads s/e", "cycles/s"
    );
    for r in rows {
        let (Some(s), Some(e)) = (r.start(), r.end()) else { continue };
        println!(
            "  {:<28} {:>7} {:>7.1} {:>7.1} {:>7.1} {:>14.2} {:>12} {:>9.0}",
            r.label,
            e.cycles,
            mib(r.idle.rss),
            mib(s.rss),
            mib(e.rss),
            r.growth_per_1000().map_or(f64::NAN, mib_f),
            format!("{}/{}", s.threads, e.threads),
            r.cycles_per_sec()
        );
    }
    for r in rows {
        let pts: Vec<String> = r.points.iter().map(|p| format!("{}:{:.1}", p.cycles, mib(p.rss))).collect();
        println!("  {:<28} by cycle: {}", r.label, pts.join(" "));
    }
    if let Some(w) = rows.first().map(|r| r.warmup) {
        println!("  idle: after start; start: after {w} unmeasured cycles (one-time costs such as the WASM");
        println!("  compile); end: after the measured cycles. Growth = (end - start) per 1,000 cycles.");
    }
    for m in missing {
        println!("  skipped  {m}");
    }
}

fn mib_f(b: f64) -> f64 {
    b / (1u64 << 20) as f64
}

pub fn wasm_loads(w: &crate::fixture::WasmLoads) {
    let list = |v: &[Duration]| v.iter().map(|d| format!("{:.2}", ms(d))).collect::<Vec<_>>().join(" ");
    println!();
    println!("WASM module loading (module.load of echo.wasm, wall time in the broker):");
    println!("  cold (compile, empty cache)   median {:>8.2} ms   ({})", med(&w.cold), list(&w.cold));
    println!("  warm (compiled code cached)   median {:>8.2} ms   ({})", med(&w.warm), list(&w.warm));
    println!(
        "  memory per loaded instance    {:.2} MiB resident ({} instances)",
        w.per_instance as f64 / (1u64 << 20) as f64,
        w.warm.len()
    );
    println!(
        "  {}  warm load < {} ms: {:.2} ms",
        verdict(med(&w.warm) < TARGET_WARM_LOAD_MS),
        TARGET_WARM_LOAD_MS,
        med(&w.warm)
    );
}

/// The ratio of `a` to `b` in each round (they ran one after the other), as `0.61 0.70 ...`.
fn per_round(benches: &[Bench], a: &str, b: &str) -> String {
    let samples = |id| benches.iter().find(|x| x.id == id).map(|x| &x.samples);
    match (samples(a), samples(b)) {
        (Some(xs), Some(ys)) => {
            xs.iter().zip(ys).map(|(x, y)| format!("{:.2}", x.rate() / y.rate())).collect::<Vec<_>>().join(" ")
        }
        _ => String::new(),
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// Now as `YYYY-MM-DD HH:MM UTC`, without a date library.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }
}
