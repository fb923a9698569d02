//! The broker side of the native C ABI: the `SbHost` table a module's `main` is given, and
//! the thread body that runs `main` and reports how it ended. Every function here is called
//! from C and must not unwind: each body runs under `catch_unwind`.

// Unsafe code here: the broker side of the C ABI: the host table a module calls.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::inbox::{Inbox, RecvError};
use parking_lot::Mutex;
use switchboard_module_api::Hold;
use switchboard_protocol::abi::{message_from_abi, message_to_abi};
use switchboard_protocol::abi::{
    SbBytes, SbHost, SbMsg, ABI_VERSION, SB_ECONNRESET, SB_EINVAL, SB_ETIMEDOUT, SB_LOG_ERR, SB_OK,
};
use switchboard_protocol::{Flags, Level, Message, MsgType, SHUTDOWN};

use super::MainFn;
use crate::module::{BrokerPort, ExitStatus, ModuleLink, ModuleState};

struct HostCtx {
    port: Arc<dyn BrokerPort>,
    recv: Mutex<RecvState>,
    /// The last error-level log line: the failure reason if `main` returns non-zero.
    last_error: Mutex<Option<String>>,
}

struct RecvState {
    inbox: Arc<Inbox>,
    /// The message whose views the last `recv` handed out.
    current: Option<Message>,
    running: bool,
    hold: Hold,
}

/// The module thread's body: call `main`, then report the exit.
pub(super) fn run(main: MainFn, link: ModuleLink) {
    let ModuleLink { name, args, config, inbox, port } = link;
    let ctx = HostCtx {
        port: port.clone(),
        recv: Mutex::new(RecvState { inbox, current: None, running: false, hold: Hold::coarse() }),
        last_error: Mutex::new(None),
    };
    let arg_views: Vec<SbBytes> = args.iter().map(|a| SbBytes::of(a.as_bytes())).collect();
    let host = SbHost {
        abi_version: ABI_VERSION,
        size: std::mem::size_of::<SbHost>() as u32,
        ctx: &ctx as *const HostCtx as *mut c_void,
        name: SbBytes::of(name.as_bytes()),
        args: arg_views.as_ptr(),
        nargs: arg_views.len(),
        config: SbBytes::of(&config),
        recv: host_recv,
        send: host_send,
        log: host_log,
    };
    // SAFETY: `main` comes from a library that passed the ABI check; `host` outlives the call.
    let code = unsafe { main(&host) };
    port.flush();
    let status = if code == 0 {
        ExitStatus::Exited
    } else {
        let reason = ctx.last_error.lock().take().unwrap_or_else(|| format!("main returned {code}"));
        ExitStatus::Failed(reason)
    };
    port.exited(status);
}

fn ctx<'a>(p: *mut c_void) -> &'a HostCtx {
    // SAFETY: `p` is the `&HostCtx` put in the table by `run`, alive while `main` runs.
    unsafe { &*(p as *const HostCtx) }
}

unsafe extern "C" fn host_recv(p: *mut c_void, out: *mut SbMsg, timeout_ms: i32) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        let ctx = ctx(p);
        let mut st = ctx.recv.lock();
        if !st.running {
            st.running = true;
            ctx.port.set_state(ModuleState::Running);
        }
        st.current = None;
        let msg = match st.inbox.try_recv() {
            Ok(Some(m)) => m,
            Err(_) => return SB_ECONNRESET,
            Ok(None) => {
                ctx.port.flush();
                st.hold.flushed();
                let timeout = (timeout_ms >= 0).then(|| Duration::from_millis(timeout_ms as u64));
                match st.inbox.recv(timeout) {
                    Ok(m) => m,
                    Err(RecvError::Timeout) => return SB_ETIMEDOUT,
                    Err(RecvError::Closed) => return SB_ECONNRESET,
                }
            }
        };
        // More already queued: batch this thread's output until the inbox runs dry, or for
        // at most MAX_HOLD_MS.
        let more = !st.inbox.is_empty();
        if st.hold.flush_now(more) {
            ctx.port.flush();
        }
        if more {
            ctx.port.hold();
        }
        if msg.kind == MsgType::Control && msg.topic == SHUTDOWN {
            ctx.port.set_state(ModuleState::Finalizing);
        }
        let m = st.current.insert(msg);
        // SAFETY: `out` is the module's `sb_msg`; the views point into `st.current`, which
        // lives until the next recv (RFC 2 §3.2).
        unsafe { *out = message_to_abi(m) };
        SB_OK
    }))
    .unwrap_or(SB_ECONNRESET)
}

unsafe extern "C" fn host_send(p: *mut c_void, msg: *const SbMsg) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        if msg.is_null() {
            return SB_EINVAL;
        }
        // SAFETY: the module promises valid views for the duration of the call.
        let Some(m) = (unsafe { message_from_abi(&*msg) }) else {
            return SB_EINVAL;
        };
        if m.flags.0 & !Flags::ALL.0 != 0 {
            return SB_EINVAL;
        }
        ctx(p).port.send(m);
        SB_OK
    }))
    .unwrap_or(SB_EINVAL)
}

unsafe extern "C" fn host_log(p: *mut c_void, level: i32, text: *const u8, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the module promises `len` valid bytes at `text`.
        let bytes = unsafe { SbBytes { ptr: text, len }.as_slice() };
        let text = String::from_utf8_lossy(bytes);
        let ctx = ctx(p);
        let level = match level {
            l if l <= SB_LOG_ERR => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            _ => Level::Debug,
        };
        if level == Level::Error {
            *ctx.last_error.lock() = Some(text.to_string());
        }
        ctx.port.log(level, &text);
    }));
}
