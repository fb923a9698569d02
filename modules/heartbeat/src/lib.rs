//! `heartbeat`: publishes a `heartbeat.pulse` event every period (config key `period` or
//! argument `period=SECONDS`, fractions allowed, default 2). Answers `heartbeat.stats` with
//! how many it sent and its period. Takes a `config-update`: a new period applies at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_module_api::{export_module, Actor, Error, Handle, Level, Message, Methods};

pub struct Heartbeat {
    period: Duration,
    count: u64,
}

#[derive(Serialize)]
struct Pulse {
    count: u64,
}

#[derive(Serialize)]
struct Stats {
    count: u64,
    period_ms: u64,
}

/// The config table's keys.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    period: Option<f64>,
}

/// The period: the config table's, else the argument's, else 2 s.
fn period(handle: &Handle) -> Result<Duration, Error> {
    let from_config = handle.config::<Settings>()?.period;
    let seconds = match (from_config, handle.arg("period")) {
        (Some(p), _) => p,
        (None, Some(s)) => s.parse::<f64>().map_err(|_| Error::invalid(format!("period={s}: not a number")))?,
        (None, None) => 2.0,
    };
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(Error::invalid(format!("period {seconds}: expected a positive number of seconds")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl Actor for Heartbeat {
    fn init(handle: &Handle) -> Result<Self, Error> {
        Ok(Heartbeat { period: period(handle)?, count: 0 })
    }

    fn methods() -> Methods<Self> {
        Methods::new()
            .on("stats", |hb: &mut Heartbeat, _: &Handle, _: &Message| -> Result<Stats, Error> {
                Ok(Stats { count: hb.count, period_ms: hb.period.as_millis() as u64 })
            })
            .doc("how many heartbeats it has published, and its period")
            .event("heartbeat.pulse", "once a period: `{count}`, how many it has published, this one included")
    }

    fn reconfigure(&mut self, handle: &Handle) -> Result<(), Error> {
        self.period = period(handle)?;
        Ok(())
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(self.period)
    }

    fn tick(&mut self, handle: &Handle) {
        self.count += 1;
        if let Err(e) = handle.publish("heartbeat.pulse", &Pulse { count: self.count }) {
            handle.log(Level::Warn, &format!("could not publish: {e}"));
        }
    }
}

export_module!(Heartbeat, name = "heartbeat");
