//! `heartbeat`: publishes a `heartbeat.pulse` event every period (argument `period=SECONDS`,
//! fractions allowed, default 2). Answers `heartbeat.stats` with how many it sent.

use std::time::Duration;

use serde::Serialize;
use switchboard_module_api::{export_module, Actor, Error, Handle, Level, Message, Methods};

pub struct Heartbeat {
    period: Duration,
    count: u64,
}

#[derive(Serialize)]
struct Pulse {
    count: u64,
}

impl Actor for Heartbeat {
    fn init(handle: &Handle) -> Result<Self, Error> {
        let period = match handle.arg("period") {
            None => Duration::from_secs(2),
            Some(s) => s
                .parse::<f64>()
                .ok()
                .filter(|p| p.is_finite() && *p > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| Error::invalid(format!("period={s}: expected a positive number of seconds")))?,
        };
        Ok(Heartbeat { period, count: 0 })
    }

    fn methods() -> Methods<Self> {
        Methods::new().on("stats", |hb: &mut Heartbeat, _: &Handle, _: &Message| -> Result<Pulse, Error> {
            Ok(Pulse { count: hb.count })
        })
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
