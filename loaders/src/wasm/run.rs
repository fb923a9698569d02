//! A running WASM module: the thread that owns its store, feeds it messages one call at a
//! time, and turns a trap, an overrun deadline or exhausted memory into a failure reason.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_protocol::{encode_frame_into, MsgType, SHUTDOWN};
use wasmtime::{Store, Trap, UpdateDeadline};

use super::host::{to_wit, HostState, WasmWorld};
use super::runtime::TICK;
use crate::module::{ExitStatus, ModuleLink, ModuleState, RunningModule, Usage};

pub struct WasmRunning {
    kill: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    memory: Arc<AtomicU64>,
}

impl RunningModule for WasmRunning {
    /// Interrupt it at its next epoch check, even inside a call.
    fn terminate(&self, _grace: Duration) -> bool {
        self.kill.store(true, Ordering::SeqCst);
        true
    }

    fn usage(&self) -> Usage {
        Usage { memory_bytes: Some(self.memory.load(Ordering::Relaxed)), ..Usage::default() }
    }

    fn wait(self: Box<Self>) {
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

/// The deadline callback: time spent blocked in `request` is given back; a terminated
/// module is stopped; otherwise the deadline has passed and the call is interrupted.
pub fn install_deadline(store: &mut Store<HostState>, kill: Arc<AtomicBool>) {
    store.epoch_deadline_callback(move |mut cx| {
        if kill.load(Ordering::SeqCst) {
            return Err(wasmtime::format_err!("it was terminated"));
        }
        let extra = std::mem::take(&mut cx.data_mut().blocked_ticks);
        Ok(if extra > 0 { UpdateDeadline::Continue(extra) } else { UpdateDeadline::Interrupt })
    });
}

/// Give the next call `cpu` of computation.
pub fn arm_deadline(store: &mut Store<HostState>, cpu: Duration) {
    store.data_mut().blocked_ticks = 0;
    store.data_mut().cpu = cpu;
    store.set_epoch_deadline((cpu.as_nanos() / TICK.as_nanos()).max(1) as u64);
}

/// Why a call into the module failed, in words.
pub fn describe_error(store: &Store<HostState>, e: &wasmtime::Error) -> String {
    let st = store.data();
    if let Some(hit) = &st.limits.hit {
        return hit.clone();
    }
    if let Some(fault) = &st.fault {
        return fault.to_string();
    }
    let base = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => return format!("it exceeded its CPU deadline of {} ms", st.cpu.as_millis()),
        Some(t) => format!("trapped: {t}"),
        None => e.to_string(),
    };
    match &st.last_error {
        Some(last) => format!("{last} ({base})"),
        None => base,
    }
}

pub fn start(
    mut store: Store<HostState>,
    world: WasmWorld,
    link: ModuleLink,
    kill: Arc<AtomicBool>,
) -> std::io::Result<WasmRunning> {
    let ModuleLink { name, args, config, inbox, port } = link;
    store.data_mut().port = Some(port.clone());
    store.data_mut().inbox = Some(inbox.clone());
    let memory = store.data().limits.used.clone();
    let thread = std::thread::Builder::new().name(format!("mod:{name}")).spawn(move || {
        let cpu = store.data().cpu;
        let status = serve(&mut store, &world, cpu, &name, &args, &config, &inbox, &*port);
        port.flush();
        port.exited(status);
    })?;
    Ok(WasmRunning { kill, thread: Mutex::new(Some(thread)), memory })
}

#[allow(clippy::too_many_arguments)]
fn serve(
    store: &mut Store<HostState>,
    world: &WasmWorld,
    cpu: Duration,
    name: &str,
    args: &[String],
    config: &[u8],
    inbox: &crate::inbox::Inbox,
    port: &dyn crate::module::BrokerPort,
) -> ExitStatus {
    arm_deadline(store, cpu);
    match world.call_init(&mut *store, name, args, config) {
        Ok(Ok(())) => {}
        Ok(Err(text)) => return ExitStatus::Failed(format!("init failed: {text}")),
        Err(e) => return ExitStatus::Failed(describe_error(store, &e)),
    }
    port.set_state(ModuleState::Running);
    let mut batch = Vec::new();
    let mut frames = Vec::new();
    let hold = switchboard_module_api::Hold::coarse();
    loop {
        let msg = match next(store, inbox, port, &hold) {
            Some(m) => m,
            None => return ExitStatus::Exited,
        };
        if is_shutdown(&msg) {
            return stop(store, world, cpu, port);
        }
        // Whatever else is already queued goes in the same call, up to a shutdown.
        batch.push(msg);
        let mut stopping = false;
        while batch.len() < BATCH {
            let more = match store.data_mut().deferred.pop_front() {
                Some(m) => Some(m),
                None => inbox.try_recv().ok().flatten(),
            };
            match more {
                Some(m) if is_shutdown(&m) => {
                    stopping = true;
                    break;
                }
                Some(m) => batch.push(m),
                None => break,
            }
        }
        // More already queued: batch this thread's output until the inbox runs dry, or for
        // at most MAX_HOLD_MS (checked between calls: a batch's answers go out after it).
        let more = !(inbox.is_empty() && store.data().deferred.is_empty());
        if hold.flush_now(more) {
            port.flush();
        }
        if more {
            port.hold();
        }
        // The deadline is per message: a batch of n gets n times the budget.
        arm_deadline(store, cpu * batch.len() as u32);
        store.data_mut().cpu = cpu;
        let result = if batch.len() == 1 {
            let one = batch.pop();
            one.map_or(Ok(()), |m| world.call_handle_message(&mut *store, &to_wit(m)))
        } else {
            frames.clear();
            frames.shrink_to(KEEP_FRAMES);
            for m in batch.drain(..) {
                encode_frame_into(&m, &mut frames);
            }
            world.call_handle_messages(&mut *store, &frames)
        };
        if let Err(e) = result {
            return ExitStatus::Failed(describe_error(store, &e));
        }
        if stopping {
            return stop(store, world, cpu, port);
        }
    }
}

/// Messages given to one call at most.
const BATCH: usize = 64;
/// Capacity of the frame buffer kept between calls (one large batch does not pin its size).
const KEEP_FRAMES: usize = 1 << 20;

fn is_shutdown(m: &switchboard_protocol::Message) -> bool {
    m.kind == MsgType::Control && m.topic == SHUTDOWN
}

/// The next message: deferred ones first, then the inbox (waiting, after pushing out held
/// output). None when the broker closed the inbox.
fn next(
    store: &mut Store<HostState>,
    inbox: &crate::inbox::Inbox,
    port: &dyn crate::module::BrokerPort,
    hold: &switchboard_module_api::Hold,
) -> Option<switchboard_protocol::Message> {
    if let Some(m) = store.data_mut().deferred.pop_front() {
        return Some(m);
    }
    match inbox.try_recv() {
        Ok(Some(m)) => Some(m),
        Err(_) => None,
        Ok(None) => {
            port.flush();
            hold.flushed();
            inbox.recv(None).ok()
        }
    }
}

fn stop(
    store: &mut Store<HostState>,
    world: &WasmWorld,
    cpu: Duration,
    port: &dyn crate::module::BrokerPort,
) -> ExitStatus {
    port.set_state(ModuleState::Finalizing);
    arm_deadline(store, cpu);
    match world.call_shutdown(&mut *store) {
        Ok(()) => ExitStatus::Exited,
        Err(e) => ExitStatus::Failed(describe_error(store, &e)),
    }
}
