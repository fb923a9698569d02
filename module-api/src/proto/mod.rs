//! The Switchboard message protocol (RFC 1): message types, the header codec and the
//! local-socket framing. Pure data and bytes: nothing here does I/O or allocates threads,
//! so the broker, the loaders, clients and modules all share one definition.

mod codec;
mod errno;
mod frame;
mod message;

pub use codec::{decode_header, encode_header, DecodeError, MAX_ROUTE};
pub use errno::Errno;
pub use frame::{
    decode_frame, encode_body_into, encode_frame, encode_frame_into, frames, FrameError, FrameReader, Frames,
    DEFAULT_MAX_FRAME, FRAME_PREFIX,
};
pub use message::{
    Cred, Flags, Message, MsgType, Route, NODEID_ANY, NODEID_UPSTREAM, PROTOCOL_VERSION, ROLE_NONE, ROLE_OWNER,
    ROLE_USER, USERID_UNKNOWN,
};
