//! The management protocol (RFC 3): the thread that answers `module.*` and `broker.info`
//! for the router, over the supervisor's methods. Decoding and answering only; the work is
//! the supervisor's. A remove may wait seconds, so it runs on a thread of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use switchboard_loaders::{DirGrant, LoadRequest, ModuleInfo, Sandbox};
use switchboard_module_api::mgmt::{
    ApplyArgs, BrokerInfo, InfoArgs, LoadArgs, ModuleDescription, ModuleList, NameArgs, RemoveArgs, TraceArgs,
};
use switchboard_module_api::{Errno, Error, Message};

use super::{ModuleSpec, Supervisor};
use crate::router::{Router, RANK};
use crate::services::{decode, reply};
use crate::site::{apply_file, Running};

struct Context {
    sup: Arc<Supervisor>,
    router: Arc<Router>,
    started: Instant,
    uri: String,
    running: Arc<Running>,
}

pub fn spawn_management(
    sup: Arc<Supervisor>,
    router: Arc<Router>,
    rx: Receiver<Message>,
    uri: String,
    running: Arc<Running>,
) -> std::io::Result<()> {
    let cx = Arc::new(Context { sup, router, started: Instant::now(), uri, running });
    std::thread::Builder::new().name("management".into()).spawn(move || {
        for msg in rx {
            handle(&cx, msg);
        }
    })?;
    Ok(())
}

/// Run `work` on a thread of its own (it may wait seconds: a module finalizing, starting)
/// and answer `msg` with its result.
fn in_background<T, F>(cx: &Arc<Context>, msg: Message, what: &str, work: F)
where
    T: serde::Serialize,
    F: FnOnce(&Context) -> Result<T, Error> + Send + 'static,
{
    let reply_to = msg.clone();
    let cx2 = cx.clone();
    let what2 = what.to_string();
    let spawned = std::thread::Builder::new().name(what.into()).spawn(move || {
        // A bug must not leave the requester waiting: a panic is answered too.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&cx2))).unwrap_or_else(|_| {
            Err(Error::new(Errno::EIO, format!("the broker failed while doing the {what2}; see its log")))
        });
        answer(&cx2.router, &msg, result)
    });
    if let Err(e) = spawned {
        cx.router.respond_error(&reply_to, Errno::EAGAIN, format!("could not start a thread for the {what}: {e}"));
    }
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

fn handle(cx: &Arc<Context>, msg: Message) {
    let (sup, router) = (&cx.sup, &cx.router);
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
            let memory = match a.memory_mb.map(Sandbox::memory_from_mb) {
                Some(None) => {
                    let text = format!("memory_mb: more than {} MiB", Sandbox::MAX_MEMORY_MB);
                    return router.respond_error(&msg, Errno::EINVAL, text);
                }
                Some(Some(bytes)) => Some(bytes),
                None => None,
            };
            let request = LoadRequest {
                path: PathBuf::from(&a.path),
                name: a.name,
                args: a.args,
                config: config_bytes(a.config.as_ref()),
                env: Vec::new(),
                inspect_only: false,
                hello_timeout: a.hello_timeout_ms.map(Duration::from_millis),
                sandbox: Sandbox {
                    memory,
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
            let spec = ModuleSpec { request, ..Default::default() };
            in_background(cx, msg, "load", move |cx| cx.sup.load(spec).map(|i| describe(&i)));
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
            in_background(cx, msg, "remove", move |cx| {
                cx.sup.remove(&a.name, a.grace_ms.map(Duration::from_millis), a.force).map(|()| empty_map())
            });
        }
        "module.reload" => {
            let Some(a) = decode::<NameArgs>(router, &msg) else {
                return;
            };
            in_background(cx, msg, "reload", move |cx| cx.sup.reload(&a.name, None).map(|i| describe(&i)));
        }
        "module.apply" => {
            let Some(a) = decode::<ApplyArgs>(router, &msg) else {
                return;
            };
            in_background(cx, msg, "apply", move |cx| {
                apply_file(&cx.sup, &cx.running, a.path.as_deref().map(std::path::Path::new), a.dry_run)
            });
        }
        "module.stats" => {
            let Some(a) = decode::<NameArgs>(router, &msg) else {
                return;
            };
            answer(router, &msg, sup.stats(&a.name));
        }
        "module.trace" => {
            let Some(a) = decode::<TraceArgs>(router, &msg) else {
                return;
            };
            router.start_trace(&msg, a);
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
                uptime_ms: cx.started.elapsed().as_millis() as u64,
                modules: sup.count() as u32,
                uri: cx.uri.clone(),
                connections: router.connections() as u32,
            },
        ),
        t => router.respond_error(&msg, Errno::ENOSYS, format!("no method '{t}'")),
    }
}

/// `{}`: the payload of a response that says only "done".
fn empty_map() -> std::collections::BTreeMap<String, ()> {
    std::collections::BTreeMap::new()
}
