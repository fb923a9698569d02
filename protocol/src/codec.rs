//! The header codec (RFC 1 §3): a message header as one msgpack array of twelve fields.
//!
//! Hand-written over a small msgpack subset so that it is fast, exact about what it accepts,
//! and provably never panics: every read is bounds-checked and every failure is a
//! `DecodeError`. It must not decode payloads; those stay opaque bytes.

use bytes::Bytes;
use thiserror::Error;

use crate::message::{Cred, Flags, Message, MsgType, Route, PROTOCOL_VERSION};

/// Number of fields in a version-1 header.
const HEADER_FIELDS: u32 = 12;
/// Longest route stack accepted; deeper ones are a routing loop or an attack.
pub const MAX_ROUTE: usize = 64;

/// Why a header could not be decoded. Every variant maps to `EPROTO` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("header ends early (needed {needed} more bytes)")]
    Truncated { needed: usize },
    #[error("header field {field}: expected {expected}, found msgpack marker 0x{marker:02x}")]
    Type { field: &'static str, expected: &'static str, marker: u8 },
    #[error("header field {field}: value {value} out of range")]
    Range { field: &'static str, value: u64 },
    #[error("header is an array of {0} fields, version 1 has exactly 12")]
    FieldCount(u32),
    #[error("unsupported protocol version {0} (this side speaks version 1)")]
    Version(u64),
    #[error("unknown message type {0}")]
    MsgType(u64),
    #[error("unknown flag bits 0x{0:02x}")]
    Flags(u64),
    #[error("header field {0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("route stack of {0} entries exceeds the limit of 64")]
    RouteTooDeep(usize),
    #[error("{0} trailing bytes after the header array")]
    Trailing(usize),
}

// ---------------------------------------------------------------- encoding

/// Most header integers are below 128, one byte: that case inline, the others out of line.
/// (This matters most in a WASM module, where calls are dearer.)
#[inline(always)]
fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        put_wide_uint(out, v);
    }
}

fn put_wide_uint(out: &mut Vec<u8>, v: u64) {
    if v <= u8::MAX as u64 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u16::MAX as u64 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u32::MAX as u64 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn put_array_len(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Append the msgpack header of `msg` to `out`.
pub fn encode_header(msg: &Message, out: &mut Vec<u8>) {
    // At most: array marker, 11 integers of 9 bytes, two strings with 5-byte markers, the
    // route's marker and hops. One reservation, so no field reallocates.
    let strings = msg.topic.len() + msg.errstr.as_ref().map_or(0, String::len);
    out.reserve(1 + 11 * 9 + 2 * 5 + strings + 5 + 9 * msg.route.len());
    put_array_len(out, HEADER_FIELDS as usize);
    put_uint(out, PROTOCOL_VERSION as u64);
    put_uint(out, msg.kind as u64);
    put_uint(out, msg.flags.0 as u64);
    put_str(out, &msg.topic);
    put_uint(out, msg.matchtag as u64);
    put_uint(out, msg.nodeid as u64);
    put_uint(out, msg.cred.userid as u64);
    put_uint(out, msg.cred.rolemask as u64);
    put_uint(out, msg.errnum as u64);
    match &msg.errstr {
        Some(s) => put_str(out, s),
        None => out.push(0xc0),
    }
    put_uint(out, msg.seq as u64);
    put_array_len(out, msg.route.len());
    for hop in &msg.route {
        put_uint(out, *hop);
    }
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(DecodeError::Truncated { needed: n - (self.buf.len() - self.pos) }),
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
    }

    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Any non-negative msgpack integer. A positive fixint (the common case) inline.
    #[inline(always)]
    fn uint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        match self.peek() {
            Some(m) if m < 0x80 => {
                self.pos += 1;
                Ok(m as u64)
            }
            _ => self.wide_uint(field),
        }
    }

    fn wide_uint(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let m = self.byte()?;
        let signed = |v: i64| -> Result<u64, DecodeError> {
            u64::try_from(v).map_err(|_| DecodeError::Range { field, value: v as u64 })
        };
        match m {
            0x00..=0x7f => Ok(m as u64),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            0xd0 => signed(self.be(1)? as u8 as i8 as i64),
            0xd1 => signed(self.be(2)? as u16 as i16 as i64),
            0xd2 => signed(self.be(4)? as u32 as i32 as i64),
            0xd3 => signed(self.be(8)? as i64),
            _ => Err(DecodeError::Type { field, expected: "unsigned integer", marker: m }),
        }
    }

    #[inline(always)]
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let v = self.uint(field)?;
        u32::try_from(v).map_err(|_| DecodeError::Range { field, value: v })
    }

    fn array_len(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let m = self.byte()?;
        match m {
            0x90..=0x9f => Ok((m & 0x0f) as u32),
            0xdc => Ok(self.be(2)? as u32),
            0xdd => Ok(self.be(4)? as u32),
            _ => Err(DecodeError::Type { field, expected: "array", marker: m }),
        }
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            _ => return Err(DecodeError::Type { field, expected: "string", marker: m }),
        };
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8(field))
    }
}

/// Decode a header from exactly `header` bytes and pair it with `payload`.
pub fn decode_header(header: &[u8], payload: Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: header, pos: 0 };
    let n = r.array_len("header")?;
    if n != HEADER_FIELDS {
        // Read the version first if we can: "wrong version" is the more useful error.
        if n > 0 {
            if let Ok(v) = r.uint("version") {
                if v != PROTOCOL_VERSION as u64 {
                    return Err(DecodeError::Version(v));
                }
            }
        }
        return Err(DecodeError::FieldCount(n));
    }
    let version = r.uint("version")?;
    if version != PROTOCOL_VERSION as u64 {
        return Err(DecodeError::Version(version));
    }
    let t = r.uint("type")?;
    let kind = u8::try_from(t).ok().and_then(MsgType::from_u8).ok_or(DecodeError::MsgType(t))?;
    let f = r.uint("flags")?;
    if f & !(Flags::ALL.0 as u64) != 0 {
        return Err(DecodeError::Flags(f & !(Flags::ALL.0 as u64)));
    }
    let topic = r.str("topic")?.to_owned();
    let matchtag = r.u32("matchtag")?;
    let nodeid = r.u32("nodeid")?;
    let userid = r.u32("userid")?;
    let rolemask = r.u32("rolemask")?;
    let errnum = r.u32("errnum")?;
    let errstr = if r.peek() == Some(0xc0) {
        r.pos += 1;
        None
    } else {
        Some(r.str("errstr")?.to_owned())
    };
    let seq = r.u32("seq")?;
    let depth = r.array_len("route")? as usize;
    if depth > MAX_ROUTE {
        return Err(DecodeError::RouteTooDeep(depth));
    }
    let mut route = Route::new();
    for _ in 0..depth {
        route.push(r.uint("route")?);
    }
    if r.pos != header.len() {
        return Err(DecodeError::Trailing(header.len() - r.pos));
    }
    Ok(Message {
        kind,
        flags: Flags(f as u8),
        topic,
        matchtag,
        nodeid,
        cred: Cred { userid, rolemask },
        errnum,
        errstr,
        seq,
        route,
        payload,
    })
}
