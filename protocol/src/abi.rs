//! The native-module C ABI (RFC 2), as `#[repr(C)]` Rust types. `include/switchboard.h` is
//! the same contract for C authors; the two must change together.
//!
//! Only bytes and C scalars cross: a message is an `SbMsg` of scalars and (pointer, length)
//! byte views, never a Rust type. Nothing here may panic or unwind. `message_from_abi` and
//! `message_to_abi` convert between a [`Message`] and an `SbMsg`, for the broker's host side
//! and the modules' side alike.

// Unsafe code here: the C ABI itself: raw views handed across `extern "C"`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};

use bytes::Bytes;

use crate::declare::{DeclarationError, Declarations, EventDecl, MethodDecl, MAX_DECLARED};
use crate::{Cred, Flags, Message, MsgType, Route};

/// The ABI version this crate implements. A module whose table names another is refused.
pub const ABI_VERSION: u32 = 1;
/// The one symbol a native module exports: `const SbModule *switchboard_module_entry(void)`.
pub const ENTRY_SYMBOL: &str = "switchboard_module_entry";

/// `recv` result: a message was stored in `*msg`.
pub const SB_OK: i32 = 0;
/// `recv` result: the timeout passed with no message (ETIMEDOUT).
pub const SB_ETIMEDOUT: i32 = 110;
/// `recv` result: the broker closed the link; the module should return from `main`.
pub const SB_ECONNRESET: i32 = 104;
/// `send` result: the message was malformed (bad UTF-8, unknown type, bad flags).
pub const SB_EINVAL: i32 = 22;
/// `main` return value used by the Rust export macro when the module panicked.
pub const SB_EXIT_PANIC: i32 = 101;

/// syslog severities for `log`.
pub const SB_LOG_ERR: i32 = 3;
pub const SB_LOG_WARNING: i32 = 4;
pub const SB_LOG_INFO: i32 = 6;
pub const SB_LOG_DEBUG: i32 = 7;

/// A borrowed byte string. `ptr` may be null only when `len` is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SbBytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl SbBytes {
    pub const EMPTY: SbBytes = SbBytes { ptr: std::ptr::null(), len: 0 };

    pub fn of(s: &[u8]) -> Self {
        SbBytes { ptr: s.as_ptr(), len: s.len() }
    }

    /// # Safety
    /// `ptr` must be valid for `len` bytes (or null with `len == 0`) for the returned lifetime.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: not null, and the caller vouches for `len` bytes for `'a`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A message as it crosses the C ABI: the header fields of RFC 1 and byte views.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SbMsg {
    pub msg_type: u8,
    pub flags: u8,
    pub reserved: u16,
    pub matchtag: u32,
    pub nodeid: u32,
    pub userid: u32,
    pub rolemask: u32,
    pub errnum: u32,
    pub seq: u32,
    pub topic: SbBytes,
    /// Null `ptr` = no error text.
    pub errstr: SbBytes,
    pub route: *const u64,
    pub route_len: usize,
    pub payload: SbBytes,
}

impl SbMsg {
    pub const ZERO: SbMsg = SbMsg {
        msg_type: 0,
        flags: 0,
        reserved: 0,
        matchtag: 0,
        nodeid: 0,
        userid: 0,
        rolemask: 0,
        errnum: 0,
        seq: 0,
        topic: SbBytes::EMPTY,
        errstr: SbBytes::EMPTY,
        route: std::ptr::null(),
        route_len: 0,
        payload: SbBytes::EMPTY,
    };
}

/// Receive the next message. Blocks up to `timeout_ms` (negative = forever). The views in
/// `*msg` stay valid until the next `recv` on the same host.
pub type SbRecvFn = unsafe extern "C" fn(ctx: *mut c_void, msg: *mut SbMsg, timeout_ms: i32) -> i32;
/// Send a message; the host copies what it needs before returning. Thread-safe.
pub type SbSendFn = unsafe extern "C" fn(ctx: *mut c_void, msg: *const SbMsg) -> i32;
/// Write a log record at a syslog severity.
pub type SbLogFn = unsafe extern "C" fn(ctx: *mut c_void, level: i32, text: *const u8, len: usize);

/// What the broker hands a module's `main`: its identity, its arguments and the calls back.
#[repr(C)]
#[derive(Debug)]
pub struct SbHost {
    pub abi_version: u32,
    /// `size_of::<SbHost>()` as the broker built it; fields past a module's idea of the size
    /// are later additions it does not know.
    pub size: u32,
    pub ctx: *mut c_void,
    /// This instance's name (also its service).
    pub name: SbBytes,
    pub args: *const SbBytes,
    pub nargs: usize,
    /// The module's configuration table, a msgpack map (an empty map when none was given).
    pub config: SbBytes,
    pub recv: SbRecvFn,
    pub send: SbSendFn,
    pub log: SbLogFn,
}

/// The table a module's entry symbol returns. The fields after `main` were appended to
/// version 1 (RFC 2 §3.1): a table whose `size` stops before them declares nothing.
#[repr(C)]
#[derive(Debug)]
pub struct SbModule {
    pub abi_version: u32,
    /// `size_of` the table as the module built it.
    pub size: u32,
    /// Default module name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// The module's thread of control; returns 0 on a clean exit, anything else is a failure.
    /// Never NULL in a valid table (an `Option` so that a NULL one is caught, not called).
    pub main: Option<unsafe extern "C" fn(host: *const SbHost) -> i32>,
    /// `nmethods` declared methods (NULL when `nmethods` is 0).
    pub methods: *const SbMethod,
    pub nmethods: usize,
    /// `nevents` declared events (NULL when `nevents` is 0).
    pub events: *const SbEvent,
    pub nevents: usize,
    /// `SB_MODULE_OTHERWISE`; other bits are ignored.
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
}

// SAFETY: the table is immutable data that lives as long as the library: strings, function
// pointers and arrays of declarations nobody writes.
unsafe impl Sync for SbModule {}

/// The size of version 1's first table (`abi_version`, `size`, `name`, `main`): the smallest
/// `size` a module may give. Older modules give it and declare nothing.
pub const SB_MODULE_SIZE_V1_0: u32 = 24;
/// `SbMethod::flags`: guests (other local users) may call the method.
pub const SB_METHOD_GUEST: u32 = 1;
/// `SbModule::flags`: a catch-all handler answers methods the table does not list.
pub const SB_MODULE_OTHERWISE: u32 = 1;

/// A declared method (RFC 2 §3.1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SbMethod {
    /// The part of the topic after the service (`get` for `kvs.get`), NUL-terminated UTF-8.
    pub name: *const c_char,
    /// One line saying what it does, NUL-terminated UTF-8; NULL: none.
    pub doc: *const c_char,
    /// `SB_METHOD_GUEST`; other bits are ignored.
    pub flags: u32,
    /// Zero.
    pub reserved: u32,
}

/// A declared event: a topic the module publishes (RFC 2 §3.1).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SbEvent {
    /// The whole topic (`kvs.changed`), NUL-terminated UTF-8.
    pub name: *const c_char,
    /// One line saying when it is published and what it carries; NULL: none.
    pub doc: *const c_char,
}

/// Why a module table's declarations were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("its {what}s array is NULL but it declares {count} of them")]
    NullArray { what: &'static str, count: usize },
    #[error("{what} {index} of its table has a NULL name")]
    NullName { what: &'static str, index: usize },
    #[error("the {field} of {what} {index} of its table is not UTF-8")]
    NotUtf8 { what: &'static str, index: usize, field: &'static str },
    #[error("{0}")]
    Declaration(#[from] DeclarationError),
}

/// The declarations of a module table whose first `size` bytes are valid: only fields that
/// lie within `size` are read, so a table of version 1's first layout (24 bytes) declares
/// nothing.
///
/// # Safety
/// `table` must point to at least `size` readable bytes laid out as `SbModule`'s first
/// `size` bytes, and every pointer in those fields must follow RFC 2 §3.1 (arrays of the
/// given lengths, NUL-terminated strings), all valid for the duration of the call.
pub unsafe fn declarations_from_abi(table: *const SbModule, size: u32) -> Result<Declarations, TableError> {
    let within = |end: usize| end <= size as usize;
    let end_of = |offset: usize, len: usize| offset + len;
    // SAFETY (for the reads below): each field is read only when it lies within `size`, and
    // raw reads make no claim about the bytes beyond.
    let read_pair = |what: &'static str, ptr_off: usize, len_off: usize| -> Result<(usize, usize), TableError> {
        if !within(end_of(len_off, size_of::<usize>())) {
            return Ok((0, 0));
        }
        let base = table as *const u8;
        // SAFETY: both fields lie within the table's first `size` bytes (checked above).
        let (ptr, count) =
            unsafe { (base.add(ptr_off).cast::<usize>().read(), base.add(len_off).cast::<usize>().read()) };
        if count > MAX_DECLARED {
            return Err(DeclarationError::TooMany { what, count }.into());
        }
        if count > 0 && ptr == 0 {
            return Err(TableError::NullArray { what, count });
        }
        Ok((ptr, count))
    };
    let text =
        |p: *const c_char, what: &'static str, index: usize, field: &'static str| -> Result<String, TableError> {
            if p.is_null() {
                return Ok(String::new());
            }
            // SAFETY: a non-NULL string of a declaration is NUL-terminated (the caller's promise).
            let s = unsafe { std::ffi::CStr::from_ptr(p) };
            s.to_str().map(str::to_owned).map_err(|_| TableError::NotUtf8 { what, index, field })
        };
    let mut declared = Declarations::default();
    let (methods, nmethods) =
        read_pair("method", std::mem::offset_of!(SbModule, methods), std::mem::offset_of!(SbModule, nmethods))?;
    for index in 0..nmethods {
        // SAFETY: `methods` points to `nmethods` entries (the caller's promise), and is non-NULL.
        let m = unsafe { (methods as *const SbMethod).add(index).read() };
        if m.name.is_null() {
            return Err(TableError::NullName { what: "method", index });
        }
        declared.methods.push(MethodDecl {
            name: text(m.name, "method", index, "name")?,
            guest: m.flags & SB_METHOD_GUEST != 0,
            doc: text(m.doc, "method", index, "doc")?,
        });
    }
    let (events, nevents) =
        read_pair("event", std::mem::offset_of!(SbModule, events), std::mem::offset_of!(SbModule, nevents))?;
    for index in 0..nevents {
        // SAFETY: `events` points to `nevents` entries (the caller's promise), and is non-NULL.
        let e = unsafe { (events as *const SbEvent).add(index).read() };
        if e.name.is_null() {
            return Err(TableError::NullName { what: "event", index });
        }
        declared
            .events
            .push(EventDecl { name: text(e.name, "event", index, "name")?, doc: text(e.doc, "event", index, "doc")? });
    }
    let flags_off = std::mem::offset_of!(SbModule, flags);
    if within(end_of(flags_off, size_of::<u32>())) {
        // SAFETY: the field lies within the table's first `size` bytes.
        let flags = unsafe { (table as *const u8).add(flags_off).cast::<u32>().read() };
        declared.otherwise = flags & SB_MODULE_OTHERWISE != 0;
    }
    Ok(declared.checked()?)
}

/// Copy a message out of the host's views.
///
/// # Safety
/// The views in `m` must be valid.
pub unsafe fn message_from_abi(m: &SbMsg) -> Option<Message> {
    // SAFETY: every view in `m` is valid, the caller says, and the text is copied at once.
    let text = |b: SbBytes| unsafe { std::str::from_utf8(b.as_slice()).ok().map(str::to_owned) };
    let route: &[u64] = if m.route.is_null() || m.route_len == 0 {
        &[]
    } else {
        // SAFETY: not null, and valid for `route_len` entries as the caller says.
        unsafe { std::slice::from_raw_parts(m.route, m.route_len) }
    };
    Some(Message {
        kind: MsgType::from_u8(m.msg_type)?,
        flags: Flags(m.flags),
        topic: text(m.topic)?,
        matchtag: m.matchtag,
        nodeid: m.nodeid,
        cred: Cred { userid: m.userid, rolemask: m.rolemask },
        errnum: m.errnum,
        errstr: if m.errstr.ptr.is_null() { None } else { Some(text(m.errstr)?) },
        seq: m.seq,
        route: Route::from_slice(route),
        // SAFETY: the payload view is valid, as the caller says; it is copied at once.
        payload: Bytes::copy_from_slice(unsafe { m.payload.as_slice() }),
    })
}

/// Borrowed views of `msg`, valid while `msg` lives.
pub fn message_to_abi(msg: &Message) -> SbMsg {
    SbMsg {
        msg_type: msg.kind as u8,
        flags: msg.flags.0,
        reserved: 0,
        matchtag: msg.matchtag,
        nodeid: msg.nodeid,
        userid: msg.cred.userid,
        rolemask: msg.cred.rolemask,
        errnum: msg.errnum,
        seq: msg.seq,
        topic: SbBytes::of(msg.topic.as_bytes()),
        errstr: msg.errstr.as_deref().map_or(SbBytes::EMPTY, |s| SbBytes::of(s.as_bytes())),
        route: msg.route.as_ptr(),
        route_len: msg.route.len(),
        payload: SbBytes::of(&msg.payload),
    }
}
