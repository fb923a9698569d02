//! Local-socket framing (RFC 1 §6): `u32` big-endian length, then `u32` big-endian header
//! length, the msgpack header, and the payload. The same bytes a process module reads on its
//! inherited socket. Parsing is incremental and zero-copy: a payload is a slice of the read
//! buffer.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use crate::codec::{decode_header, encode_header, DecodeError};
use crate::message::Message;

/// Default cap on one frame (length prefix excluded): 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;
/// Bytes before a frame's body: the `u32` length.
pub const FRAME_PREFIX: usize = 4;
/// The most a reader sets aside at once for a frame still arriving.
const MAX_RESERVE_STEP: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("frame of {len} bytes is too short to hold a header length")]
    TooShort { len: usize },
    #[error("header length {hlen} runs past the end of a {len}-byte frame")]
    HeaderOverrun { hlen: usize, len: usize },
    #[error("malformed header: {0}")]
    Header(#[from] DecodeError),
    #[error("frame runs past the end of its buffer ({needed} bytes needed, {left} left)")]
    Incomplete { needed: usize, left: usize },
}

/// Append one whole frame for `msg` to `out`.
pub fn encode_frame_into(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX]);
    encode_body_into(msg, out);
    let len = out.len() - start - FRAME_PREFIX;
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
}

/// Append a frame's body for `msg` (the frame without its length: what `decode_frame` reads
/// and what a message between brokers carries, RFC 7 §3.2) to `out`.
pub fn encode_body_into(msg: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 4]);
    encode_header(msg, out);
    let hlen = out.len() - start - 4;
    out.extend_from_slice(&msg.payload);
    out[start..start + 4].copy_from_slice(&(hlen as u32).to_be_bytes());
}

/// One whole frame for `msg`.
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + msg.topic.len() + msg.payload.len());
    encode_frame_into(msg, &mut out);
    out
}

/// Decode a frame body (what follows the length prefix).
pub fn decode_frame(mut body: Bytes) -> Result<Message, FrameError> {
    let len = body.len();
    if len < 4 {
        return Err(FrameError::TooShort { len });
    }
    let hlen = body.get_u32() as usize;
    if hlen > body.len() {
        return Err(FrameError::HeaderOverrun { hlen, len });
    }
    let payload = body.split_off(hlen);
    Ok(decode_header(&body, payload)?)
}

/// The messages in `buf`, whole frames back to back (a WASM module's batches, RFC 6 §2),
/// decoded in order; payloads are slices of `buf`. Ends after the first error: a buffer
/// cannot be resynchronised.
pub fn frames(buf: Bytes) -> Frames {
    Frames { rest: buf }
}

/// The iterator [`frames`] returns.
#[derive(Debug, Clone)]
pub struct Frames {
    rest: Bytes,
}

impl Frames {
    fn next_body(&mut self) -> Result<Bytes, FrameError> {
        let left = self.rest.len();
        let prefix = self.rest.get(..FRAME_PREFIX).and_then(|p| <[u8; FRAME_PREFIX]>::try_from(p).ok());
        let Some(prefix) = prefix else {
            return Err(FrameError::Incomplete { needed: FRAME_PREFIX, left });
        };
        let needed = FRAME_PREFIX.saturating_add(u32::from_be_bytes(prefix) as usize);
        if needed > left {
            return Err(FrameError::Incomplete { needed, left });
        }
        let mut body = self.rest.split_to(needed);
        body.advance(FRAME_PREFIX);
        Ok(body)
    }
}

impl Iterator for Frames {
    type Item = Result<Message, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let msg = self.next_body().and_then(decode_frame);
        if msg.is_err() {
            self.rest = Bytes::new();
        }
        Some(msg)
    }
}

/// Splits a byte stream into frame bodies.
#[derive(Debug, Clone)]
pub struct FrameReader {
    max: usize,
}

impl FrameReader {
    pub fn new(max_frame: usize) -> Self {
        FrameReader { max: max_frame }
    }

    /// Whether `buf` starts with a whole frame (that `next_frame` would return).
    pub fn has_frame(&self, buf: &[u8]) -> bool {
        buf.len() >= FRAME_PREFIX && {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            len <= self.max && buf.len() >= FRAME_PREFIX + len
        }
    }

    /// Take the next complete frame body out of `buf`, if one is there. An oversized length
    /// is an error at once, before its bytes arrive: the stream cannot be resynchronised.
    pub fn next_frame(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if buf.len() < FRAME_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max {
            return Err(FrameError::Oversized { len, max: self.max });
        }
        if buf.len() < FRAME_PREFIX + len {
            // Room for what is announced, a bounded step at a time: a peer that names a large
            // frame and stalls must not make the broker set the whole of it aside.
            buf.reserve((FRAME_PREFIX + len - buf.len()).min(MAX_RESERVE_STEP));
            return Ok(None);
        }
        buf.advance(FRAME_PREFIX);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cred, Flags, MsgType, Route};
    use proptest::prelude::*;

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            prop_oneof![Just(MsgType::Request), Just(MsgType::Response), Just(MsgType::Event), Just(MsgType::Control)],
            0u8..16,
            ".{0,300}",
            any::<[u32; 7]>(),
            proptest::option::of(".{0,80}"),
            proptest::collection::vec(any::<u64>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..2000),
        )
            .prop_map(|(kind, flags, topic, n, errstr, route, payload)| Message {
                kind,
                flags: Flags(flags),
                topic,
                matchtag: n[0],
                nodeid: n[1],
                cred: Cred { userid: n[2], rolemask: n[3] },
                errnum: n[4],
                errstr,
                seq: n[5],
                route: Route::from_vec(route),
                payload: Bytes::from(payload),
            })
    }

    fn parse_all(bytes: &[u8], max: usize) -> Vec<Result<Message, FrameError>> {
        let mut buf = BytesMut::from(bytes);
        let reader = FrameReader::new(max);
        let mut out = Vec::new();
        loop {
            match reader.next_frame(&mut buf) {
                Ok(Some(body)) => out.push(decode_frame(body)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    break;
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn every_message_round_trips(msgs in proptest::collection::vec(arb_message(), 1..5)) {
            let mut wire = Vec::new();
            for m in &msgs { encode_frame_into(m, &mut wire); }
            let back: Vec<Message> = parse_all(&wire, DEFAULT_MAX_FRAME)
                .into_iter().map(|r| r.expect("decodes")).collect();
            prop_assert_eq!(back, msgs);
        }

        #[test]
        fn a_buffer_of_frames_round_trips(msgs in proptest::collection::vec(arb_message(), 0..5)) {
            let mut wire = Vec::new();
            for m in &msgs { encode_frame_into(m, &mut wire); }
            let back: Vec<Message> = frames(Bytes::from(wire)).map(|r| r.expect("decodes")).collect();
            prop_assert_eq!(back, msgs);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_all(&bytes, 256);
            let _ = frames(Bytes::from(bytes.clone())).count();
            let _ = decode_header(&bytes, Bytes::new());
            let _ = decode_frame(Bytes::from(bytes));
        }

        #[test]
        fn corrupting_a_valid_frame_never_panics(m in arb_message(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut wire = encode_frame(&m);
            let i = pos % wire.len();
            wire[i] = byte;
            let _ = parse_all(&wire, DEFAULT_MAX_FRAME);
            let _ = frames(Bytes::from(wire.clone())).count();
            wire.truncate(i);
            let _ = parse_all(&wire, DEFAULT_MAX_FRAME);
            let _ = frames(Bytes::from(wire)).count();
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_its_bytes_arrive() {
        let reader = FrameReader::new(1024);
        let mut buf = BytesMut::from(&(4096u32.to_be_bytes())[..]);
        assert_eq!(reader.next_frame(&mut buf), Err(FrameError::Oversized { len: 4096, max: 1024 }));
    }

    #[test]
    fn a_large_frame_announced_is_not_set_aside_all_at_once() {
        let reader = FrameReader::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(&((DEFAULT_MAX_FRAME as u32).to_be_bytes())[..]);
        assert_eq!(reader.next_frame(&mut buf), Ok(None));
        assert!(buf.capacity() <= 2 * MAX_RESERVE_STEP, "reserved {} bytes for a stalled frame", buf.capacity());
    }

    #[test]
    fn a_cut_buffer_yields_the_whole_frames_then_one_error() {
        let m = Message::request("a.b", Bytes::from_static(b"xyz"));
        let mut wire = encode_frame(&m);
        let one = wire.len();
        encode_frame_into(&m, &mut wire);
        wire.truncate(2 * one - 1);
        let got: Vec<_> = frames(Bytes::from(wire.clone())).collect();
        assert_eq!(got, vec![Ok(m.clone()), Err(FrameError::Incomplete { needed: one, left: one - 1 })]);
        wire.truncate(one + 3);
        let got: Vec<_> = frames(Bytes::from(wire)).collect();
        assert_eq!(got, vec![Ok(m), Err(FrameError::Incomplete { needed: 4, left: 3 })]);
    }

    #[test]
    fn wrong_version_is_named() {
        let mut m = Message::request("a.b", Bytes::new());
        m.matchtag = 7;
        let mut wire = encode_frame(&m);
        // byte 8 is the array marker, byte 9 the version (positive fixint 1)
        wire[9] = 2;
        let err = decode_frame(Bytes::from(wire).slice(4..)).unwrap_err();
        assert_eq!(err, FrameError::Header(DecodeError::Version(2)));
    }

    #[test]
    fn unknown_flags_and_types_are_rejected() {
        let m = Message::request("a.b", Bytes::new());
        let mut wire = encode_frame(&m);
        wire[10] = 3; // type 3 is not defined
        assert_eq!(
            decode_frame(Bytes::from(wire.clone()).slice(4..)).unwrap_err(),
            FrameError::Header(DecodeError::MsgType(3))
        );
        wire[10] = 1;
        wire[11] = 0x40;
        assert_eq!(
            decode_frame(Bytes::from(wire).slice(4..)).unwrap_err(),
            FrameError::Header(DecodeError::Flags(0x40))
        );
    }
}
