//! The in-memory form of a message (RFC 1 §2). Inside one process a `Message` travels as is,
//! with no encoding; `codec` and `frame` turn it into bytes only at a process boundary.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use smallvec::SmallVec;

use crate::Errno;

/// The protocol version this crate speaks, the first field of every header.
pub const PROTOCOL_VERSION: u32 = 1;
/// `nodeid` meaning "whichever broker can serve it" (the default).
pub const NODEID_ANY: u32 = u32::MAX;
/// `nodeid` meaning "the next broker upstream".
pub const NODEID_UPSTREAM: u32 = u32::MAX - 1;
/// `userid` of a message whose sender is not yet known.
pub const USERID_UNKNOWN: u32 = u32::MAX;
/// Role bits of `rolemask`.
pub const ROLE_NONE: u32 = 0;
pub const ROLE_OWNER: u32 = 1;
pub const ROLE_USER: u32 = 2;

/// The route stack: endpoint identifiers pushed by each broker a request passes through,
/// popped by responses on the way back. Opaque to clients and modules, which copy it from a
/// request into its response.
pub type Route = SmallVec<[u64; 2]>;

/// What a message is (RFC 1 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    Request = 1,
    Response = 2,
    Event = 4,
    Control = 8,
}

impl MsgType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Request,
            2 => Self::Response,
            4 => Self::Event,
            8 => Self::Control,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Response => "response",
            Self::Event => "event",
            Self::Control => "control",
        }
    }
}

/// Header flag bits (RFC 1 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// The request wants no response, not even an error.
    pub const NO_RESPONSE: Flags = Flags(0x01);
    /// A streaming request (many responses, ended by ENODATA) or one of its responses.
    pub const STREAMING: Flags = Flags(0x02);
    /// Route to the next broker upstream even if a local module owns the service.
    pub const UPSTREAM: Flags = Flags(0x04);
    /// An event seen only by the instance owner and the publisher's own user.
    pub const PRIVATE: Flags = Flags(0x08);
    /// All bits defined by protocol version 1.
    pub const ALL: Flags = Flags(0x0f);

    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn with(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub fn without(self, other: Flags) -> Flags {
        Flags(self.0 & !other.0)
    }
}

/// Credentials stamped by the broker at ingress; never trusted from the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cred {
    pub userid: u32,
    pub rolemask: u32,
}

impl Cred {
    pub const UNKNOWN: Cred = Cred { userid: USERID_UNKNOWN, rolemask: ROLE_NONE };
    pub fn is_owner(self) -> bool {
        self.rolemask & ROLE_OWNER != 0
    }
}

/// One message: header fields and an opaque payload (by convention a msgpack map).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MsgType,
    pub flags: Flags,
    /// `service.method` for requests and their responses, the event name for events.
    pub topic: String,
    /// Pairs a response with its request; chosen by the requester.
    pub matchtag: u32,
    /// Target broker rank, `NODEID_ANY` by default.
    pub nodeid: u32,
    pub cred: Cred,
    /// POSIX errno value (Linux numbering), 0 = success. Only responses carry one.
    pub errnum: u32,
    /// Optional human-readable text explaining `errnum`.
    pub errstr: Option<String>,
    /// Event sequence number, assigned by the broker.
    pub seq: u32,
    pub route: Route,
    pub payload: Bytes,
}

impl Message {
    fn new(kind: MsgType, topic: impl Into<String>, payload: Bytes) -> Self {
        Message {
            kind,
            flags: Flags::default(),
            topic: topic.into(),
            matchtag: 0,
            nodeid: NODEID_ANY,
            cred: Cred::UNKNOWN,
            errnum: 0,
            errstr: None,
            seq: 0,
            route: Route::new(),
            payload,
        }
    }

    /// A request to `topic` with a raw payload.
    pub fn request(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(MsgType::Request, topic, payload.into())
    }

    /// An event named `topic` with a raw payload.
    pub fn event(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(MsgType::Event, topic, payload.into())
    }

    /// A control message (RFC 1 §5) such as `shutdown`.
    pub fn control(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self::new(MsgType::Control, topic, payload.into())
    }

    /// A successful response to this request, carrying `payload`.
    pub fn response(&self, payload: impl Into<Bytes>) -> Self {
        let mut m = Self::new(MsgType::Response, self.topic.clone(), payload.into());
        m.matchtag = self.matchtag;
        m.route = self.route.clone();
        m.flags = Flags(self.flags.0 & Flags::STREAMING.0);
        m
    }

    /// An error response to this request.
    pub fn error_response(&self, errnum: Errno, text: impl Into<String>) -> Self {
        let mut m = self.response(Bytes::new());
        m.errnum = errnum.0;
        let text = text.into();
        m.errstr = (!text.is_empty()).then_some(text);
        m
    }

    /// The service part of the topic: everything before the first `.`.
    pub fn service(&self) -> &str {
        self.topic.split_once('.').map_or(&self.topic, |(s, _)| s)
    }

    /// The method part of the topic: everything after the first `.` (empty if none).
    pub fn method(&self) -> &str {
        self.topic.split_once('.').map_or("", |(_, m)| m)
    }

    pub fn is_error(&self) -> bool {
        self.errnum != 0
    }

    pub fn wants_response(&self) -> bool {
        self.kind == MsgType::Request && !self.flags.contains(Flags::NO_RESPONSE)
    }

    /// Serialize `value` as a msgpack map, the payload convention.
    pub fn encode_payload<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(value).map(Bytes::from)
    }

    /// Decode the msgpack payload into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, rmp_serde::decode::Error> {
        rmp_serde::from_slice(&self.payload)
    }
}

/// The control topic the broker sends to ask a module to stop (RFC 1 §5).
pub const SHUTDOWN: &str = "shutdown";
