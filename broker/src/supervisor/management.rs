//! The management protocol (RFC 3): the task that answers `module.*` and `broker.info` for
//! the router, over the supervisor's operations. Decoding and answering only; the work is
//! the supervisor's. Each request is a task of its own, so a remove waiting seconds for a
//! module to finalize holds up nothing else.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_loaders::{DirGrant, LoadRequest, ModuleInfo, Sandbox};
use switchboard_protocol::mgmt::{
    ApplyArgs, BrokerInfo, InfoArgs, LoadArgs, ModuleDescription, ModuleList, NameArgs, RemoveArgs, TraceArgs,
};
use switchboard_protocol::{Errno, Error, Message};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{ModuleSpec, Supervisor};
use crate::router::Router;
use crate::services::{decode, reply};
use crate::site::{apply_file, Running};

struct Context {
    sup: Supervisor,
    router: Arc<Router>,
    started: Instant,
    uri: String,
    running: Arc<Running>,
}

/// Answer management requests on the current runtime until the router lets go of `rx`.
pub fn spawn_management(
    sup: Supervisor,
    router: Arc<Router>,
    mut rx: UnboundedReceiver<Message>,
    uri: String,
    running: Arc<Running>,
) {
    let cx = Arc::new(Context { sup, router, started: Instant::now(), uri, running });
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let cx = cx.clone();
            tokio::spawn(async move { handle(&cx, msg).await });
        }
    });
}

/// Answer `msg` with the outcome of `work`, a task of its own; a panic in it is answered
/// too (EIO), so no requester is left waiting.
async fn answer_with<T, F>(cx: &Arc<Context>, msg: Message, what: &str, work: F)
where
    T: serde::Serialize,
    F: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let result = tokio::spawn(work).await.unwrap_or_else(|_| {
        Err(Error::new(Errno::EIO, format!("the broker failed while doing the {what}; see its log")))
    });
    // The requester is told why; the broker's log says so too, for whoever reads it later.
    if let Err(e) = &result {
        tracing::warn!("{} refused: {e}", msg.topic);
    }
    answer(&cx.router, &msg, result)
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
        isolated: info.isolated,
        services: info.services.clone(),
        path: info.path.display().to_string(),
        digest: info.digest.clone(),
        size: info.size,
        declares: info.declares.clone(),
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

async fn handle(cx: &Arc<Context>, msg: Message) {
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
                isolated: a.isolated,
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
            let sup = sup.clone();
            answer_with(cx, msg, "load", async move { sup.load(spec).await.map(|i| describe(&i)) }).await;
        }
        "module.info" => {
            let Some(a) = decode::<InfoArgs>(router, &msg) else {
                return;
            };
            let request = LoadRequest { path: PathBuf::from(&a.path), inspect_only: true, ..Default::default() };
            let sup = sup.clone();
            answer_with(cx, msg, "inspection", async move { sup.info(&request).await.map(|i| describe(&i)) }).await;
        }
        "module.remove" => {
            let Some(a) = decode::<RemoveArgs>(router, &msg) else {
                return;
            };
            let sup = sup.clone();
            let work = async move {
                sup.remove(&a.name, a.grace_ms.map(Duration::from_millis), a.force).await.map(|()| empty_map())
            };
            answer_with(cx, msg, "remove", work).await;
        }
        "module.reload" => {
            let Some(a) = decode::<NameArgs>(router, &msg) else {
                return;
            };
            let sup = sup.clone();
            answer_with(cx, msg, "reload", async move { sup.reload(&a.name, None).await.map(|i| describe(&i)) }).await;
        }
        "module.apply" => {
            let Some(a) = decode::<ApplyArgs>(router, &msg) else {
                return;
            };
            let (sup, running) = (sup.clone(), cx.running.clone());
            let work =
                async move { apply_file(&sup, &running, a.path.as_deref().map(std::path::Path::new), a.dry_run).await };
            answer_with(cx, msg, "apply", work).await;
        }
        "module.stats" => {
            let Some(a) = decode::<NameArgs>(router, &msg) else {
                return;
            };
            answer(router, &msg, sup.stats(&a.name).await);
        }
        "module.trace" => {
            let Some(a) = decode::<TraceArgs>(router, &msg) else {
                return;
            };
            router.start_trace(&msg, a);
        }
        "module.list" => reply(router, &msg, &ModuleList { modules: sup.list().await }),
        "broker.info" => reply(
            router,
            &msg,
            &BrokerInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                rank: router.place().rank(),
                pid: std::process::id(),
                uid: rustix::process::getuid().as_raw(),
                uptime_ms: cx.started.elapsed().as_millis() as u64,
                modules: sup.count().await as u32,
                uri: cx.uri.clone(),
                connections: router.connections() as u32,
                size: router.place().topology.size,
                fanout: router.place().topology.fanout,
                parent: router.place().topology.parent(),
                parent_link: router.place().topology.parent().map(|p| router.link_state(p).to_string()),
                children: router.place().topology.children().collect(),
                events_lost: router.events_lost(),
                link_waits: router.full_links().waited.load(std::sync::atomic::Ordering::Relaxed),
                link_drops: router.full_links().dropped.load(std::sync::atomic::Ordering::Relaxed),
            },
        ),
        t => router.respond_error(&msg, Errno::ENOSYS, format!("no method '{t}'")),
    }
}

/// `{}`: the payload of a response that says only "done".
fn empty_map() -> std::collections::BTreeMap<String, ()> {
    std::collections::BTreeMap::new()
}
