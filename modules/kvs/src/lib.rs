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

/// Requests arrive decoded (typed handlers): a payload that is not a `Key` or a `Put` is
/// answered EPROTO by the library, naming the field. `list` takes any payload (raw).
impl Kvs {
    fn get(&mut self, _: &Handle, Key { key }: Key) -> Result<Value, Error> {
        self.map.get(&key).cloned().ok_or_else(|| no_key(&key))
    }

    fn put(&mut self, h: &Handle, Put { key, value }: Put) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid("the key is empty"));
        }
        self.map.insert(key.clone(), value);
        h.publish("kvs.changed", &Changed { key: &key, op: "put" })
    }

    fn delete(&mut self, h: &Handle, Key { key }: Key) -> Result<(), Error> {
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
        Methods::new()
            .on("get", Self::get)
            .doc("the value of `key`; ENOENT if there is none")
            .on("put", Self::put)
            .doc("set `key` to `value` (any msgpack value) and publish kvs.changed")
            .on("delete", Self::delete)
            .doc("remove `key` and publish kvs.changed; ENOENT if there is none")
            .on("list", Self::list)
            .doc("every key, as `keys`")
            .event("kvs.changed", "a key was put or deleted: `{key, op}`, op `put` or `delete`")
    }
}

export_module!(Kvs, name = "kvs");
