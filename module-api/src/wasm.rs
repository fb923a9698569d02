//! The module side of a WASM module (RFC 6): the WIT bindings, a `Link` over the `host`
//! imports, and the exports `export_module!` wires an `Actor` to. Compiled only for wasm
//! targets. A component is driven by the broker one call at a time, so the actor's state
//! lives between calls here, not in a loop.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::actor::{dispatch, Actor, Methods};
use crate::handle::Handle;
use crate::link::{Link, LinkError};
use switchboard_protocol::{
    encode_frame_into, frames, Cred, Errno, Error, Flags, Level, Message, MsgType, Route, NODEID_ANY,
};

/// The generated bindings of `wit/world.wit`.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../protocol/wit",
        world: "module",
        pub_export_macro: true,
        export_macro_name: "__export_switchboard_world",
        default_bindings_module: "::switchboard_module_api::wasm::bindings",
        runtime_path: "::switchboard_module_api::wasm::rt",
        // Imports borrow what they send: no copy of a message on its way out.
        ownership: Borrowing { duplicate_if_necessary: true },
    });
}

#[doc(hidden)]
pub use wit_bindgen::rt;

use bindings::switchboard::module::host;
use bindings::switchboard::module::types::{
    Declarations, Description, EventDecl, Failure, MessageParam, MessageResult as WitMessage, MethodDecl,
};

/// A view of `m` for the host: borrowed, nothing copied.
fn to_wit(m: &Message) -> MessageParam<'_> {
    MessageParam {
        kind: m.kind as u8,
        flags: m.flags.0,
        topic: &m.topic,
        matchtag: m.matchtag,
        nodeid: m.nodeid,
        userid: m.cred.userid,
        rolemask: m.cred.rolemask,
        errnum: m.errnum,
        errstr: m.errstr.as_deref(),
        seq: m.seq,
        route: &m.route,
        payload: &m.payload,
    }
}

fn from_wit(m: WitMessage) -> Option<Message> {
    Some(Message {
        kind: MsgType::from_u8(m.kind)?,
        flags: Flags(m.flags),
        topic: m.topic,
        matchtag: m.matchtag,
        nodeid: m.nodeid,
        cred: Cred { userid: m.userid, rolemask: m.rolemask },
        errnum: m.errnum,
        errstr: m.errstr,
        seq: m.seq,
        route: Route::from_vec(m.route),
        payload: m.payload.into(),
    })
}

fn failure(f: Failure) -> Error {
    Error::new(Errno(f.errnum), f.text)
}

/// The module's link to the host. Sends made while a batch of messages is being handled
/// are held, encoded as frames, and go to the host in one `send-all` at the end of the batch
/// (or before a `request`, so that they keep their order).
#[derive(Default)]
struct WasmLink {
    batching: Cell<bool>,
    held: RefCell<Vec<u8>>,
}

/// Capacity of the held buffer kept between batches: one large batch does not pin its size
/// in the module's (capped) memory.
const KEEP_HELD: usize = 64 << 10;

impl WasmLink {
    fn flush(&self) -> Result<(), LinkError> {
        let Ok(mut held) = self.held.try_borrow_mut() else { return Ok(()) };
        if held.is_empty() {
            return Ok(());
        }
        let sent = host::send_all(&held);
        held.clear();
        held.shrink_to(KEEP_HELD);
        sent.map_err(|f| LinkError::Refused(f.text))
    }
}

impl Link for Rc<WasmLink> {
    /// The broker pushes messages to a component; there is nothing to pull.
    fn recv(&mut self, _timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        Err(LinkError::Refused("a WASM module receives messages through handle-message".into()))
    }

    fn send(&self, msg: &Message) -> Result<(), LinkError> {
        if self.batching.get() {
            encode_frame_into(msg, &mut self.held.borrow_mut());
            return Ok(());
        }
        host::send(to_wit(msg)).map_err(|f| LinkError::Refused(f.text))
    }

    fn log(&self, level: Level, text: &str) {
        host::log(level as u8, text)
    }

    fn request(&mut self, req: &Message, timeout: Option<Duration>) -> Option<Result<Message, Error>> {
        if let Err(e) = self.flush() {
            return Some(Err(Error::new(Errno::ECONNRESET, e.to_string())));
        }
        // The world's request imports carry no flags: an UPSTREAM request would lose its flag
        // and be served here instead.
        if req.flags.contains(Flags::UPSTREAM) {
            return Some(Err(Error::new(
                Errno::ENOSYS,
                format!(
                    "{}: rpc_upstream is not available to a WASM module (the WIT world's request has no flags); \
                     rpc_on(NODEID_UPSTREAM, ...) asks the parent broker",
                    req.topic
                ),
            )));
        }
        let ms = timeout.map(|t| t.as_millis().min(u32::MAX as u128) as u32);
        // Plain `request` for ANY, which every host of this world has.
        let answer = match req.nodeid {
            NODEID_ANY => host::request(&req.topic, &req.payload, ms),
            nodeid => host::request_on(nodeid, &req.topic, &req.payload, ms),
        };
        Some(match answer {
            Ok(m) => from_wit(m).ok_or_else(|| Error::proto("the broker sent a malformed response")),
            Err(f) => Err(failure(f)),
        })
    }
}

struct State<A: Actor> {
    actor: A,
    methods: Methods<A>,
    handle: Handle,
    link: Rc<WasmLink>,
}

thread_local! {
    /// The running module's link, for the panic hook: answers given before a panic still go out.
    static LINK: RefCell<Option<Rc<WasmLink>>> = const { RefCell::new(None) };
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_state<A: Actor>(f: impl FnOnce(&mut State<A>)) {
    STATE.with(|s| {
        if let Some(st) = s.borrow_mut().as_mut().and_then(|b| b.downcast_mut::<State<A>>()) {
            f(st);
        }
    });
}

#[doc(hidden)]
pub fn describe(name: &str) -> Description {
    Description { name: name.to_string() }
}

/// What `A`'s method table declares, as the `declare` export returns it.
#[doc(hidden)]
pub fn declare<A: Actor>() -> Declarations {
    let d = A::methods().describe();
    Declarations {
        methods: d.methods.into_iter().map(|m| MethodDecl { name: m.name, guest: m.guest, doc: m.doc }).collect(),
        otherwise: d.otherwise,
        events: d.events.into_iter().map(|e| EventDecl { name: e.name, doc: e.doc }).collect(),
    }
}

#[doc(hidden)]
pub fn init<A: Actor>(name: String, args: Vec<String>, config: Vec<u8>) -> Result<(), String> {
    // A panic aborts the component; say why first, so the broker can report it.
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        LINK.with(|l| {
            if let Some(link) = l.try_borrow().ok().as_ref().and_then(|l| l.as_ref()) {
                let _ = link.flush();
            }
        });
        host::log(Level::Error as u8, &format!("panicked: {what}"));
    }));
    let link = Rc::new(WasmLink::default());
    LINK.with(|l| *l.borrow_mut() = Some(link.clone()));
    let handle = Handle::new(Box::new(link.clone()), name, args, config.into());
    let actor = A::init(&handle).map_err(|e| e.to_string())?;
    let state = State { actor, methods: A::methods(), handle, link };
    STATE.with(|s| *s.borrow_mut() = Some(Box::new(state)));
    Ok(())
}

fn handle<A: Actor>(st: &mut State<A>, msg: Message) {
    match msg.kind {
        MsgType::Request => dispatch(&mut st.actor, &st.methods, &st.handle, &msg),
        MsgType::Event => st.actor.event(&st.handle, &msg),
        MsgType::Response | MsgType::Control => {}
    }
}

#[doc(hidden)]
pub fn handle_message<A: Actor>(msg: WitMessage) {
    with_state::<A>(|st| {
        if let Some(msg) = from_wit(msg) {
            handle(st, msg)
        }
    });
}

#[doc(hidden)]
pub fn handle_messages<A: Actor>(batch: Vec<u8>) {
    with_state::<A>(|st| {
        st.link.batching.set(true);
        for msg in frames(batch.into()) {
            match msg {
                Ok(msg) => handle(st, msg),
                Err(e) => {
                    st.handle.log(Level::Error, &format!("the broker sent a malformed frame: {e}"));
                    break;
                }
            }
        }
        st.link.batching.set(false);
        if let Err(e) = st.link.flush() {
            st.handle.log(Level::Warn, &format!("could not send: {e}"));
        }
    });
}

#[doc(hidden)]
pub fn shutdown<A: Actor>() {
    with_state::<A>(|st| st.actor.shutdown(&st.handle));
}
