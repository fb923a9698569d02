//! The management protocol (RFC 3): the thread that answers `module.*` and `broker.info`
//! for the router, over the supervisor's methods. Decoding and answering only; the work is
//! the supervisor's. A remove may wait seconds, so it runs on a thread of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use switchboard_loaders::{DirGrant, LoadRequest, ModuleInfo, Sandbox};
use switchboard_module_api::mgmt::{BrokerInfo, InfoArgs, LoadArgs, ModuleDescription, ModuleList, RemoveArgs};
use switchboard_module_api::{Errno, Error, Message};

use super::Supervisor;
use crate::router::{Router, RANK};
use crate::services::{decode, empty, reply};

pub fn spawn_management(
    sup: Arc<Supervisor>,
    router: Arc<Router>,
    rx: Receiver<Message>,
    uri: String,
) -> std::io::Result<()> {
    let started = Instant::now();
    std::thread::Builder::new().name("management".into()).spawn(move || {
        for msg in rx {
            handle(&sup, &router, msg, started, &uri);
        }
    })?;
    Ok(())
}

fn answer<T: serde::Serialize>(router: &Router, msg: &Message, result: Result<T, Error>) {
    match result {
        Ok(v) => reply(router, msg, &v),
        Err(e) => router.respond_error(msg, e.errnum, e.text),
    }
}

pub fn describe(info: &ModuleInfo) -> ModuleDescription {
    ModuleDescription {
        name: info.name.clone(),
        kind: info.kind.to_string(),
        services: info.services.clone(),
        path: info.path.display().to_string(),
        digest: info.digest.clone(),
        size: info.size,
    }
}

/// The msgpack bytes of a configuration table (an empty map when there is none).
pub fn config_bytes(config: Option<&rmpv::Value>) -> Bytes {
    let mut out = Vec::new();
    match config {
        Some(v) => {
            let _ = rmpv::encode::write_value(&mut out, v);
        }
        None => out.push(0x80),
    }
    Bytes::from(out)
}

fn handle(sup: &Arc<Supervisor>, router: &Arc<Router>, msg: Message, started: Instant, uri: &str) {
    match msg.topic.as_str() {
        "module.load" => {
            let Some(a) = decode::<LoadArgs>(router, &msg) else {
                return;
            };
            if let Some(c) = &a.config {
                if !c.is_map() {
                    return router.respond_error(&msg, Errno::EINVAL, "config must be a map");
                }
            }
            let request = LoadRequest {
                path: PathBuf::from(&a.path),
                name: a.name,
                args: a.args,
                config: config_bytes(a.config.as_ref()),
                inspect_only: false,
                hello_timeout: a.hello_timeout_ms.map(Duration::from_millis),
                sandbox: Sandbox {
                    memory: a.memory_mb.map(|mb| mb << 20),
                    cpu: a.cpu_ms.map(Duration::from_millis),
                    dirs: a
                        .dirs
                        .into_iter()
                        .map(|d| DirGrant {
                            guest: d.guest.unwrap_or_else(|| d.host.clone()),
                            host: d.host.into(),
                            writable: d.writable,
                        })
                        .collect(),
                },
            };
            answer(router, &msg, sup.load(request).map(|i| describe(&i)));
        }
        "module.info" => {
            let Some(a) = decode::<InfoArgs>(router, &msg) else {
                return;
            };
            let request = LoadRequest { path: PathBuf::from(&a.path), inspect_only: true, ..Default::default() };
            answer(router, &msg, sup.info(&request).map(|i| describe(&i)));
        }
        "module.remove" => {
            let Some(a) = decode::<RemoveArgs>(router, &msg) else {
                return;
            };
            let reply_to = msg.clone();
            let (sup, r) = (sup.clone(), router.clone());
            let spawned = std::thread::Builder::new().name("remove".into()).spawn(move || {
                match sup.remove(&a.name, a.grace_ms.map(Duration::from_millis)) {
                    Ok(()) => r.respond(&msg, empty()),
                    Err(e) => r.respond_error(&msg, e.errnum, e.text),
                }
            });
            if let Err(e) = spawned {
                router.respond_error(&reply_to, Errno::EAGAIN, format!("could not start the remove: {e}"));
            }
        }
        "module.list" => reply(router, &msg, &ModuleList { modules: sup.list() }),
        "broker.info" => reply(
            router,
            &msg,
            &BrokerInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                rank: RANK,
                pid: std::process::id(),
                // SAFETY: getuid cannot fail.
                uid: unsafe { libc::getuid() },
                uptime_ms: started.elapsed().as_millis() as u64,
                modules: sup.count() as u32,
                uri: uri.to_string(),
            },
        ),
        t => router.respond_error(&msg, Errno::ENOSYS, format!("no method '{t}'")),
    }
}
