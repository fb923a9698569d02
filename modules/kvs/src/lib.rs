//! `kvs`: an in-memory key-value store. `get`, `put`, `delete` and `list`; every write
//! publishes a `kvs.changed` event naming the key and the operation. Values are any msgpack
//! value and come back exactly as they were put.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_module_api::{export_module, Actor, Errno, Error, Handle, Message, Methods, Value};

pub struct Kvs {
    map: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct Key {
    key: String,
}

#[derive(Deserialize)]
struct Put {
    key: String,
    value: Value,
}

#[derive(Serialize)]
struct Changed<'a> {
    key: &'a str,
    op: &'a str,
}

#[derive(Serialize)]
struct Listing {
    keys: Vec<String>,
}

fn no_key(key: &str) -> Error {
    Error::new(Errno::ENOENT, format!("no key '{key}'"))
}

impl Kvs {
    fn get(&mut self, _: &Handle, msg: &Message) -> Result<Value, Error> {
        let Key { key } = msg.decode()?;
        self.map.get(&key).cloned().ok_or_else(|| no_key(&key))
    }

    fn put(&mut self, h: &Handle, msg: &Message) -> Result<(), Error> {
        let Put { key, value } = msg.decode()?;
        if key.is_empty() {
            return Err(Error::invalid("the key is empty"));
        }
        self.map.insert(key.clone(), value);
        h.publish("kvs.changed", &Changed { key: &key, op: "put" })
    }

    fn delete(&mut self, h: &Handle, msg: &Message) -> Result<(), Error> {
        let Key { key } = msg.decode()?;
        self.map.remove(&key).ok_or_else(|| no_key(&key))?;
        h.publish("kvs.changed", &Changed { key: &key, op: "delete" })
    }

    fn list(&mut self, _: &Handle, _: &Message) -> Result<Listing, Error> {
        Ok(Listing { keys: self.map.keys().cloned().collect() })
    }
}

impl Actor for Kvs {
    fn init(_handle: &Handle) -> Result<Self, Error> {
        Ok(Kvs { map: BTreeMap::new() })
    }

    fn methods() -> Methods<Self> {
        Methods::new().on("get", Self::get).on("put", Self::put).on("delete", Self::delete).on("list", Self::list)
    }
}

export_module!(Kvs, name = "kvs");
