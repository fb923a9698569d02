//! Fuzz target `frame`: arbitrary bytes as the stream a peer writes on the broker's local
//! socket (RFC 1 §6), through `FrameReader::next_frame` and `decode_frame`, and the same
//! bytes as a bare msgpack header through `decode_header`.
//!
//! Beyond "never panics, never hangs, never allocates without bound" it checks:
//! - the stream parses the same whether it arrives whole or one byte at a time, through the
//!   `frames` iterator (a WASM module's batch), and with a smaller frame limit up to the first
//!   oversized frame;
//! - `has_frame` says yes exactly when `next_frame` returns a frame;
//! - every message that decodes re-encodes to a frame that decodes to the same message, whose
//!   encoding is stable, and whose header is no longer than the one it came from (the encoder
//!   emits the shortest forms, RFC 1 §3.4).
//!
//! Run it with `cargo fuzz run -s none frame` from `fuzz/` (see docs/fuzzing.md).

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard_protocol::{
    decode_frame, decode_header, encode_frame, encode_header, frames, FrameError, FrameReader, Message,
    DEFAULT_MAX_FRAME,
};

/// A frame limit small enough that inputs of a few hundred bytes reach it.
const SMALL_MAX: usize = 64;

/// What one `next_frame` loop makes of a stream: the decoded bodies, in order, and the error
/// that stopped it, if any (a stream cannot be resynchronised after one).
#[derive(Debug, PartialEq)]
struct Parsed {
    frames: Vec<Result<Message, FrameError>>,
    /// The body lengths, to compare with `frames`, which does not report them.
    lens: Vec<usize>,
    stopped: Option<FrameError>,
    /// Bytes left in the buffer when the loop ended without an error.
    left: usize,
}

/// The whole stream in one buffer.
fn parse_whole(data: &[u8], max: usize) -> Parsed {
    let reader = FrameReader::new(max);
    let mut buf = BytesMut::from(data);
    let mut out = Parsed { frames: Vec::new(), lens: Vec::new(), stopped: None, left: 0 };
    loop {
        let had = reader.has_frame(&buf);
        match reader.next_frame(&mut buf) {
            Ok(Some(body)) => {
                assert!(had, "next_frame returned a frame that has_frame did not see");
                out.lens.push(body.len());
                out.frames.push(decode_frame(body));
            }
            Ok(None) => {
                assert!(!had, "has_frame saw a frame that next_frame did not return");
                out.left = buf.len();
                return out;
            }
            Err(e) => {
                assert!(!had, "has_frame saw a frame where next_frame failed");
                out.stopped = Some(e);
                return out;
            }
        }
    }
}

/// The stream as a socket might deliver it at worst: one byte per read, draining every
/// whole frame after each.
fn parse_bytewise(data: &[u8], max: usize) -> Parsed {
    let reader = FrameReader::new(max);
    let mut buf = BytesMut::new();
    let mut out = Parsed { frames: Vec::new(), lens: Vec::new(), stopped: None, left: 0 };
    for &b in data {
        buf.extend_from_slice(&[b]);
        loop {
            match reader.next_frame(&mut buf) {
                Ok(Some(body)) => {
                    out.lens.push(body.len());
                    out.frames.push(decode_frame(body));
                }
                Ok(None) => break,
                Err(e) => {
                    out.stopped = Some(e);
                    return out;
                }
            }
        }
    }
    out.left = buf.len();
    out
}

/// A decoded message must survive a round trip through the encoder unchanged.
fn check_round_trip(msg: &Message, header_len: usize) {
    let wire = encode_frame(msg);
    assert!(wire.len() >= 8, "a frame has a length and a header length");
    let len = u32::from_be_bytes(wire[0..4].try_into().unwrap()) as usize;
    let hlen = u32::from_be_bytes(wire[4..8].try_into().unwrap()) as usize;
    assert_eq!(len + 4, wire.len(), "length prefix of a re-encoded frame");
    assert_eq!(hlen + msg.payload.len() + 8, wire.len(), "header length of a re-encoded frame");
    assert!(hlen <= header_len, "re-encoded header ({hlen} bytes) longer than the decoded one ({header_len} bytes)");

    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::from(&wire[..]);
    assert!(reader.has_frame(&buf));
    let body = reader.next_frame(&mut buf).expect("a re-encoded frame parses").expect("it is whole");
    assert!(buf.is_empty(), "one re-encoded frame leaves {} bytes behind", buf.len());
    let again = decode_frame(body).expect("a re-encoded frame decodes");
    assert_eq!(&again, msg, "a message changed through encode and decode");
    assert_eq!(encode_frame(&again), wire, "the encoding of a message is not stable");

    let mut header = Vec::new();
    encode_header(msg, &mut header);
    assert_eq!(header, wire[8..8 + hlen], "encode_header and encode_frame disagree");
    assert_eq!(decode_header(&header, msg.payload.clone()).as_ref(), Ok(msg));

    // The accessors a router calls on every message.
    let (service, method) = (msg.service(), msg.method());
    assert!(service.len() + method.len() <= msg.topic.len());
    let _ = msg.wants_response();
}

fuzz_target!(|data: &[u8]| {
    // The stream, whole.
    let whole = parse_whole(data, DEFAULT_MAX_FRAME);
    for (msg, &body_len) in whole.frames.iter().zip(&whole.lens) {
        if let Ok(msg) = msg {
            // The body is the header length, the header and the payload.
            check_round_trip(msg, body_len - 4 - msg.payload.len());
        }
    }

    // Byte by byte: the same frames, the same error, the same leftover.
    let bytewise = parse_bytewise(data, DEFAULT_MAX_FRAME);
    assert_eq!(bytewise, whole, "the stream parses differently one byte at a time");

    // The `frames` iterator over the same buffer: the same messages up to and including the
    // first that does not decode, where it stops (a batch is not resynchronised); if all of
    // them decode, bytes after the last whole frame are one `Incomplete` error (it has no
    // frame limit, and no input is anywhere near DEFAULT_MAX_FRAME).
    let batch: Vec<Result<Message, FrameError>> = frames(Bytes::copy_from_slice(data)).collect();
    let n = whole.frames.len();
    match whole.frames.iter().position(Result::is_err) {
        Some(bad) => assert_eq!(batch, whole.frames[..=bad], "frames() and FrameReader disagree"),
        None => {
            assert_eq!(batch[..n.min(batch.len())], whole.frames[..], "frames() and FrameReader disagree");
            let tail = whole.left > 0 || whole.stopped.is_some();
            assert_eq!(batch.len(), n + usize::from(tail), "frames() and FrameReader see a different number of frames");
            if let Some(last) = batch.get(n) {
                assert!(matches!(last, Err(FrameError::Incomplete { .. })), "frames() ends with {last:?}");
            }
        }
    }

    // A smaller limit: the same frames up to the first one above it, which is an error.
    let small = parse_whole(data, SMALL_MAX);
    let m = small.frames.len();
    assert!(m <= n, "a smaller frame limit let more frames through");
    assert_eq!(small.frames[..m.min(n)], whole.frames[..m.min(n)], "a smaller frame limit changed a frame");
    if m < n {
        assert!(
            matches!(small.stopped, Some(FrameError::Oversized { len, max: SMALL_MAX }) if len == whole.lens[m]),
            "a smaller frame limit stopped with {:?}",
            small.stopped
        );
    }

    // The same bytes as a bare header (what `decode_frame` hands `decode_header`).
    if let Ok(msg) = decode_header(data, Bytes::new()) {
        check_round_trip(&msg, data.len());
    }
});
