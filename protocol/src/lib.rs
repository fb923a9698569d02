//! # switchboard-protocol
//!
//! What crosses a boundary between Switchboard's parts, as data, with no I/O: the one
//! definition the broker, the loaders, the client, the module author API and every SDK share.
//! Nothing here opens a socket, starts a thread or reads a file.
//!
//! - [`Message`], its header codec and the local-socket framing (RFC 1): `message`, `codec`,
//!   `frame`, and the error numbers [`Errno`] with the [`Error`] a response carries.
//! - [`mgmt`]: payloads of the built-in services (RFC 3).
//! - [`declare`]: what a module declares about itself (methods, events), however it travels.
//! - [`handshake`]: the process-module control messages (RFC 5).
//! - [`abi`]: the native-module C ABI (RFC 2) as `#[repr(C)]` types; `include/switchboard.h`
//!   is its C twin. `wit/world.wit` is the WASM modules' WIT world (RFC 6).
//! - [`Level`]: log severities, one numbering for every module kind.
//! - [`ranks`]: sets of broker ranks (`all`, `1-7,9`) for addressing several brokers (RFC 7).
//! - [`uri`] (unix): where a broker's socket is, by the rules of RFC 1 §6.

pub mod abi;
mod codec;
pub mod declare;
mod errno;
mod error;
mod frame;
pub mod handshake;
mod level;
mod message;
pub mod mgmt;
pub mod ranks;
#[cfg(unix)]
pub mod uri;

pub use codec::{decode_header, encode_header, DecodeError, MAX_ROUTE};
pub use errno::Errno;
pub use error::Error;
pub use frame::{
    decode_frame, encode_body_into, encode_frame, encode_frame_into, frames, FrameError, FrameReader, Frames,
    DEFAULT_MAX_FRAME, FRAME_PREFIX,
};
pub use level::Level;
pub use message::{
    Cred, Flags, Message, MsgType, Route, NODEID_ANY, NODEID_UPSTREAM, PROTOCOL_VERSION, ROLE_NONE, ROLE_OWNER,
    ROLE_USER, SHUTDOWN, USERID_UNKNOWN,
};
