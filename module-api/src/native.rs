//! The module side of the native C ABI: a `Link` over the broker's `SbHost` table, and the
//! entry glue `export_module!` expands to (the module table, built from the actor's
//! `Methods` with its declarations, and `main`). Every call into Rust code from the broker
//! goes through `run_native` or `ModuleTable::new`, which catch panics so that none unwinds
//! across `extern "C"`.

// Unsafe code here: the module side of the C ABI: calls through the broker's host table.
#![allow(unsafe_code)]

use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use bytes::Bytes;

use crate::actor::{run_actor, Actor};
use crate::handle::Handle;
use crate::link::{Link, LinkError};
use switchboard_protocol::abi::{
    message_from_abi, message_to_abi, SbEvent, SbHost, SbMethod, SbModule, SbMsg, ABI_VERSION, SB_ECONNRESET,
    SB_ETIMEDOUT, SB_EXIT_PANIC, SB_METHOD_GUEST, SB_MODULE_OTHERWISE, SB_OK,
};
use switchboard_protocol::{Level, Message};

struct NativeLink {
    host: *const SbHost,
}

impl NativeLink {
    fn host(&self) -> &SbHost {
        // SAFETY: the broker keeps the host table alive for as long as `main` runs.
        unsafe { &*self.host }
    }
}

impl Link for NativeLink {
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        let h = self.host();
        // Rounded up: a deadline less than a millisecond away is waited for, not spun on.
        let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32);
        let mut m = SbMsg::ZERO;
        // SAFETY: host functions follow the ABI contract (RFC 2).
        match unsafe { (h.recv)(h.ctx, &mut m, ms) } {
            // SAFETY: on SB_OK the host filled `m` with views valid until the next call.
            SB_OK => unsafe { message_from_abi(&m) }
                .map(Some)
                .ok_or_else(|| LinkError::Refused("the broker sent a malformed message".into())),
            SB_ETIMEDOUT => Ok(None),
            SB_ECONNRESET => Err(LinkError::Closed),
            other => Err(LinkError::Refused(format!("recv returned {other}"))),
        }
    }

    fn send(&self, msg: &Message) -> Result<(), LinkError> {
        let h = self.host();
        let m = message_to_abi(msg);
        // SAFETY: `m` borrows `msg`, alive across the call; the host copies what it keeps.
        match unsafe { (h.send)(h.ctx, &m) } {
            SB_OK => Ok(()),
            SB_ECONNRESET => Err(LinkError::Closed),
            other => Err(LinkError::Refused(format!("send returned errno {other}"))),
        }
    }

    fn log(&self, level: Level, text: &str) {
        let h = self.host();
        // SAFETY: `text` is valid for `text.len()` bytes across the call (RFC 2 §3.4).
        unsafe { (h.log)(h.ctx, level as i32, text.as_ptr(), text.len()) }
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>().copied().or_else(|| p.downcast_ref::<String>().map(String::as_str)).unwrap_or("panic")
}

/// The body of a native module's `main`: check the host table, build the handle, run the
/// actor. Never unwinds.
///
/// # Safety
/// `host` must point to a valid `SbHost` for the duration of the call.
pub unsafe fn run_native<A: Actor>(host: *const SbHost) -> i32 {
    if host.is_null() {
        return 1;
    }
    let link = NativeLink { host };
    let h = link.host();
    if h.abi_version != ABI_VERSION || (h.size as usize) < std::mem::size_of::<SbHost>() {
        let text = format!(
            "host speaks ABI {} (table of {} bytes), this module needs ABI {ABI_VERSION}",
            h.abi_version, h.size
        );
        link.log(Level::Error, &text);
        return 1;
    }
    // SAFETY: the host table's name, `nargs` argument views and config are valid while
    // `main` runs (RFC 2 §3.3); each is copied here.
    let name = unsafe { String::from_utf8_lossy(h.name.as_slice()).into_owned() };
    let args = (0..h.nargs)
        // SAFETY: as above; `i < nargs`.
        .map(|i| unsafe { String::from_utf8_lossy((*h.args.add(i)).as_slice()).into_owned() })
        .collect();
    // SAFETY: as above.
    let config = Bytes::copy_from_slice(unsafe { h.config.as_slice() });
    let result = catch_unwind(AssertUnwindSafe(|| {
        let handle = Handle::new(Box::new(NativeLink { host }), name, args, config);
        run_actor::<A>(&handle)
    }));
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            link.log(Level::Error, &e.to_string());
            1
        }
        Err(p) => {
            link.log(Level::Error, &format!("panicked: {}", panic_text(&*p)));
            SB_EXIT_PANIC
        }
    }
}

/// A Rust module's table (RFC 2 §3.1), made by the entry function the first time it is
/// called, from the actor's `Methods`: the strings and arrays the table points to live
/// beside it, in the static `export_module!` keeps it in, for the life of the process.
pub struct ModuleTable {
    table: SbModule,
    _strings: Vec<CString>,
    _methods: Vec<SbMethod>,
    _events: Vec<SbEvent>,
}

// SAFETY: the table and what it points to are built once and never written again; the
// pointers point into the heap buffers this value owns, which do not move with it.
unsafe impl Send for ModuleTable {}
// SAFETY: as for `Send`: shared references only ever read.
unsafe impl Sync for ModuleTable {}

impl ModuleTable {
    /// The table of actor `A` named `name` (NUL-terminated) whose `main` is `main`. If
    /// `A::methods()` panics, the table declares nothing (the panic shows again in `main`).
    pub fn new<A: Actor>(name: &'static str, main: unsafe extern "C" fn(*const SbHost) -> i32) -> Self {
        let declared = catch_unwind(AssertUnwindSafe(|| A::methods().describe())).unwrap_or_default();
        let mut strings = Vec::new();
        let mut keep = |s: &str| -> *const c_char {
            // A NUL inside would cut the text short; the broker would read what precedes it.
            let c = CString::new(s.replace('\0', "")).unwrap_or_default();
            let p = c.as_ptr();
            strings.push(c);
            p
        };
        let methods: Vec<SbMethod> = declared
            .methods
            .iter()
            .map(|m| SbMethod {
                name: keep(&m.name),
                doc: keep(&m.doc),
                flags: if m.guest { SB_METHOD_GUEST } else { 0 },
                reserved: 0,
            })
            .collect();
        let events: Vec<SbEvent> =
            declared.events.iter().map(|e| SbEvent { name: keep(&e.name), doc: keep(&e.doc) }).collect();
        let table = SbModule {
            abi_version: ABI_VERSION,
            size: std::mem::size_of::<SbModule>() as u32,
            name: name.as_ptr() as *const c_char,
            main: Some(main),
            methods: if methods.is_empty() { std::ptr::null() } else { methods.as_ptr() },
            nmethods: methods.len(),
            events: if events.is_empty() { std::ptr::null() } else { events.as_ptr() },
            nevents: events.len(),
            flags: if declared.otherwise { SB_MODULE_OTHERWISE } else { 0 },
            reserved: 0,
        };
        ModuleTable { table, _strings: strings, _methods: methods, _events: events }
    }

    pub fn as_ptr(&self) -> *const SbModule {
        &self.table
    }
}

/// Export an `Actor` as a Switchboard module under a default name.
///
/// ```ignore
/// switchboard_module_api::export_module!(Kvs, name = "kvs");
/// ```
/// The one source builds as every kind:
/// - in a `cdylib` for a native target it defines the entry symbol of RFC 2;
/// - it defines `switchboard_process_main()`, which a binary target calls from its `main` to
///   run the actor as a process module (RFC 5);
/// - built with `--target wasm32-wasip2`, the `cdylib` is a component exporting the
///   `switchboard:module` world (RFC 6).
#[macro_export]
macro_rules! export_module {
    ($actor:ty, name = $name:literal) => {
        /// Run this module as a process module (call it from a binary's `main`).
        #[cfg(unix)]
        pub fn switchboard_process_main() -> ::std::process::ExitCode {
            $crate::process::run::<$actor>($name)
        }

        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            unsafe extern "C" fn __switchboard_main(host: *const $crate::abi::SbHost) -> i32 {
                unsafe { $crate::native::run_native::<$actor>(host) }
            }
            static __SWITCHBOARD_MODULE: ::std::sync::OnceLock<$crate::native::ModuleTable> =
                ::std::sync::OnceLock::new();
            #[no_mangle]
            pub extern "C" fn switchboard_module_entry() -> *const $crate::abi::SbModule {
                __SWITCHBOARD_MODULE
                    .get_or_init(|| $crate::native::ModuleTable::new::<$actor>(concat!($name, "\0"), __switchboard_main))
                    .as_ptr()
            }
        };

        #[cfg(target_family = "wasm")]
        const _: () = {
            use $crate::wasm::bindings::switchboard::module::types::{
                Declarations, Description, MessageResult as Message,
            };
            struct __SwitchboardComponent;
            impl $crate::wasm::bindings::Guest for __SwitchboardComponent {
                fn describe() -> Description {
                    $crate::wasm::describe($name)
                }
                fn declare() -> Declarations {
                    $crate::wasm::declare::<$actor>()
                }
                fn init(name: String, args: Vec<String>, config: Vec<u8>) -> Result<(), String> {
                    $crate::wasm::init::<$actor>(name, args, config)
                }
                fn handle_message(msg: Message) {
                    $crate::wasm::handle_message::<$actor>(msg)
                }
                fn handle_messages(frames: Vec<u8>) {
                    $crate::wasm::handle_messages::<$actor>(frames)
                }
                fn shutdown() {
                    $crate::wasm::shutdown::<$actor>()
                }
            }
            $crate::wasm::bindings::__export_switchboard_world!(__SwitchboardComponent with_types_in $crate::wasm::bindings);
        };
    };
}
