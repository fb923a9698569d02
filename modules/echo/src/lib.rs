//! `echo`: answers every request with its own payload, whatever the method. The module the
//! tests and benchmarks use to measure the broker's message path.

use switchboard_module_api::{export_module, Actor, Error, Handle, Message, Methods, Reply};

pub struct Echo;

impl Actor for Echo {
    fn init(_handle: &Handle) -> Result<Self, Error> {
        Ok(Echo)
    }

    fn methods() -> Methods<Self> {
        Methods::new().otherwise(|_: &mut Echo, _: &Handle, msg: &Message| Reply::Payload(msg.payload.clone()))
    }
}

export_module!(Echo, name = "echo");
