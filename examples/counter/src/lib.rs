use serde::Deserialize;
use switchboard_module_api::{export_module, Actor, Error, Handle, Methods};

pub struct Counter {
    n: u64,
}

#[derive(Deserialize)]
struct Incr {
    by: u64,
}

impl Actor for Counter {
    fn init(_: &Handle) -> Result<Self, Error> {
        Ok(Counter { n: 0 })
    }
    fn methods() -> Methods<Self> {
        Methods::new().on("incr", |c: &mut Counter, _: &Handle, req: Incr| -> Result<u64, Error> {
            c.n += req.by;
            Ok(c.n)
        })
    }
}
export_module!(Counter, name = "counter");
