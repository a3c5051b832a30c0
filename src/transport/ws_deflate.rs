//! WebSocket permessage-deflate (RFC 7692) without context takeover, so that a
//! record's frame is compressed once and shared by every connection.
//!
//! Both directions are negotiated without context takeover: each message is
//! compressed on its own. Outbound, [`compressed_frame`] turns a record's
//! payload into a whole compressed frame once (the record keeps it). Inbound,
//! [`Inflate`] sits in front of tungstenite, which knows no extension: it turns
//! each compressed message into a plain one, and passes every other frame
//! through untouched, so tungstenite still judges the protocol (a misplaced
//! RSV1 bit still gets its protocol error).

use std::cell::RefCell;

use axum::http::{header, HeaderMap, HeaderValue};
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension as the server accepts it: both sides compress each message
/// on its own (RFC 7692 7.1.1).
const ACCEPTED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The empty stored block that ends each compressed message, removed by the
/// sender and appended again by the receiver (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The `Sec-WebSocket-Extensions` answer if the client offered
/// permessage-deflate with parameters this server can honour; `None` leaves
/// the connection uncompressed. An offer that asks the server for a window
/// below 32 KiB (`server_max_window_bits` < 15) is declined: the compressor
/// always uses the full window.
pub fn negotiate(headers: &HeaderMap) -> Option<HeaderValue> {
    let acceptable = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(offer_acceptable);
    acceptable.then(|| HeaderValue::from_static(ACCEPTED))
}

/// Whether one offer (`permessage-deflate; param; param=value`) can be accepted.
fn offer_acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return false; // RFC 7692 7: a repeated parameter makes the offer invalid
        }
        seen.push(name);
        let bits = |v: &str| v.parse::<u8>().ok().filter(|b| (8..=15).contains(b));
        let ok = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
            // The client may compress with a smaller window; we inflate any.
            "client_max_window_bits" => value.is_none_or(|v| bits(v).is_some()),
            "server_max_window_bits" => value.and_then(bits) == Some(15),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

thread_local! {
    /// One compressor per worker thread, reset for every message: without
    /// context takeover nothing carries over, and a fresh one per record would
    /// allocate its tables each time.
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
    static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// A whole final text frame with RSV1 set carrying `payload` compressed, or
/// `None` when compressing would not make it smaller (the uncompressed frame
/// is then sent: RFC 7692 lets each message choose).
pub fn compressed_frame(payload: &[u8]) -> Option<Bytes> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    COMPRESS.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut chunk = [0u8; 4096];
        let mut consumed = 0;
        loop {
            let (before_in, before_out) = (c.total_in(), c.total_out());
            // A sync flush ends the data with the empty stored block, cut below.
            c.compress(&payload[consumed..], &mut chunk, FlushCompress::Sync)
                .expect("deflate of an in-memory buffer cannot fail");
            consumed += (c.total_in() - before_in) as usize;
            let wrote = (c.total_out() - before_out) as usize;
            out.extend_from_slice(&chunk[..wrote]);
            if consumed == payload.len() && wrote < chunk.len() {
                break;
            }
        }
    });
    let body = out.strip_suffix(&TAIL)?;
    let (head, used) = crate::record::ws_text_head(body.len());
    if body.len() >= payload.len() {
        return None;
    }
    let mut frame = Vec::with_capacity(used as usize + body.len());
    frame.extend_from_slice(&head[..used as usize]);
    frame[0] |= 0x40; // RSV1: a compressed message
    frame.extend_from_slice(body);
    Some(Bytes::from(frame))
}

/// Inflates one message (its tail removed by the sender) into at most `limit` bytes.
fn inflate(mut compressed: Vec<u8>, limit: usize) -> Result<Vec<u8>, Broken> {
    compressed.extend_from_slice(&TAIL);
    DECOMPRESS.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((compressed.len() * 4).min(limit));
        let mut chunk = [0u8; 8192];
        let mut consumed = 0;
        loop {
            let (before_in, before_out) = (d.total_in(), d.total_out());
            let status = d
                .decompress(&compressed[consumed..], &mut chunk, FlushDecompress::Sync)
                .map_err(|_| Broken::Invalid)?;
            let read = (d.total_in() - before_in) as usize;
            let wrote = (d.total_out() - before_out) as usize;
            consumed += read;
            if out.len() + wrote > limit {
                return Err(Broken::TooBig);
            }
            out.extend_from_slice(&chunk[..wrote]);
            if status == Status::StreamEnd || (consumed == compressed.len() && wrote < chunk.len())
            {
                return Ok(out);
            }
            if read == 0 && wrote == 0 {
                return Err(Broken::Invalid);
            }
        }
    })
}

/// Why a frame cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// Not ours to judge: handed to tungstenite as it came, which refuses it.
    Raw,
    /// Over the message limit, compressed or inflated.
    TooBig,
    /// Not valid deflate data.
    Invalid,
}

/// What is being read: frames pass through, or a compressed message is being
/// gathered, or the stream is beyond repair and passes through for
/// tungstenite to refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Frames,
    /// The uncompressed fragmented message in progress: its continuations pass.
    Fragmented,
    /// Gathering a compressed message of this opcode.
    Gathering(u8),
    Passthrough,
}

/// The inbound side of a connection that negotiated permessage-deflate.
#[derive(Debug)]
pub struct Inflate {
    limit: usize,
    mode: Mode,
    /// Bytes read from the socket and not yet parsed into whole frames.
    raw: Vec<u8>,
    /// Bytes ready for tungstenite, from `sent` on.
    ready: Vec<u8>,
    sent: usize,
    /// The compressed payload gathered so far (unmasked).
    message: Vec<u8>,
}

impl Inflate {
    /// `limit` is the largest message accepted, inflated.
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            mode: Mode::Frames,
            raw: Vec::new(),
            ready: Vec::new(),
            sent: 0,
            message: Vec::new(),
        }
    }

    /// Bytes tungstenite may read now.
    pub fn pending(&self) -> &[u8] {
        &self.ready[self.sent..]
    }

    /// Marks `n` pending bytes read by tungstenite.
    pub fn consume(&mut self, n: usize) {
        self.sent += n;
        if self.sent == self.ready.len() {
            // An idle connection keeps no buffer.
            self.ready = Vec::new();
            self.sent = 0;
            if self.raw.is_empty() {
                self.raw = Vec::new();
            }
        }
    }

    /// Takes bytes read from the socket; whole frames become pending bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        // Taken out while frames are handed on from it, put back below.
        let buffered = std::mem::take(&mut self.raw);
        let mut at = 0;
        while at < buffered.len() {
            if self.mode == Mode::Passthrough {
                self.ready.extend_from_slice(&buffered[at..]);
                at = buffered.len();
                break;
            }
            match parse(&buffered[at..], self.limit) {
                Parsed::Incomplete => break,
                Parsed::TooBig => {
                    // tungstenite refuses the header itself (message too big).
                    self.mode = Mode::Passthrough;
                }
                Parsed::Frame(frame) => {
                    let raw = &buffered[at..at + frame.len];
                    at += frame.len;
                    match self.frame(&frame, raw) {
                        Ok(()) => {}
                        Err(Broken::Raw) => {
                            // Handed over as it came: tungstenite refuses it.
                            self.ready.extend_from_slice(raw);
                            self.mode = Mode::Passthrough;
                        }
                        Err(Broken::TooBig) => {
                            // A header claiming more than the limit: tungstenite
                            // answers it as a message too big (close 1009).
                            let (mut head, used) = crate::record::ws_text_head(self.limit + 1);
                            head[1] |= 0x80;
                            self.ready.extend_from_slice(&head[..used as usize]);
                            self.ready.extend_from_slice(&[0; 4]);
                            self.mode = Mode::Passthrough;
                        }
                        Err(Broken::Invalid) => {
                            // An empty frame with RSV1 still set: tungstenite
                            // closes with a protocol error (1002).
                            self.ready.extend_from_slice(&[0xc1, 0x80, 0, 0, 0, 0]);
                            self.mode = Mode::Passthrough;
                        }
                    }
                }
            }
        }
        self.raw = buffered;
        self.raw.drain(..at);
    }

    /// One whole frame: passed through, gathered, or (a whole compressed
    /// message) replaced by its plain equivalent.
    fn frame(&mut self, frame: &Header, raw: &[u8]) -> Result<(), Broken> {
        let control = frame.opcode >= 8;
        if control || frame.rsv & 0b011 != 0 {
            // Control frames may come between fragments; RSV2/RSV3 are
            // tungstenite's to refuse.
            if control {
                self.ready.extend_from_slice(raw);
                return Ok(());
            }
            return Err(Broken::Raw);
        }
        let rsv1 = frame.rsv & 0b100 != 0;
        match (self.mode, frame.opcode, rsv1) {
            (Mode::Frames, 1 | 2, false) => {
                if !frame.fin {
                    self.mode = Mode::Fragmented;
                }
                self.ready.extend_from_slice(raw);
                Ok(())
            }
            (Mode::Fragmented, 0, false) => {
                if frame.fin {
                    self.mode = Mode::Frames;
                }
                self.ready.extend_from_slice(raw);
                Ok(())
            }
            (Mode::Frames, opcode @ (1 | 2), true) => {
                self.mode = Mode::Gathering(opcode);
                self.gather(frame, raw)
            }
            (Mode::Gathering(_), 0, false) => self.gather(frame, raw),
            _ => Err(Broken::Raw),
        }
    }

    fn gather(&mut self, frame: &Header, raw: &[u8]) -> Result<(), Broken> {
        let Some(mask) = frame.mask else {
            return Err(Broken::Raw); // a client's frame must be masked: tungstenite says so
        };
        let payload = &raw[frame.payload_at..];
        if self.message.len() + payload.len() > self.limit {
            return Err(Broken::TooBig);
        }
        let start = self.message.len();
        self.message.extend_from_slice(payload);
        for (i, b) in self.message[start..].iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if !frame.fin {
            return Ok(());
        }
        let Mode::Gathering(opcode) = self.mode else {
            unreachable!("gathering")
        };
        let compressed = std::mem::take(&mut self.message);
        self.mode = Mode::Frames;
        let plain = inflate(compressed, self.limit)?;
        // The plain message, masked with a zero key as a client's must be.
        let (mut head, used) = crate::record::ws_text_head(plain.len());
        head[0] = 0x80 | opcode;
        head[1] |= 0x80;
        self.ready.extend_from_slice(&head[..used as usize]);
        self.ready.extend_from_slice(&[0; 4]);
        self.ready.extend_from_slice(&plain);
        Ok(())
    }
}

/// A frame header, parsed.
#[derive(Debug)]
struct Header {
    fin: bool,
    /// RSV1, RSV2, RSV3 as the three low bits (RSV1 highest).
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    /// Where the payload starts, and the whole frame's length.
    payload_at: usize,
    len: usize,
}

enum Parsed {
    Incomplete,
    /// A length no message may have: left for tungstenite to refuse.
    TooBig,
    Frame(Header),
}

/// The frame at the start of `bytes`, if it is all there.
fn parse(bytes: &[u8], limit: usize) -> Parsed {
    let [first, second, ..] = *bytes else {
        return Parsed::Incomplete;
    };
    let (mut at, len) = match second & 0x7f {
        126 => {
            let Some(b) = bytes.get(2..4) else {
                return Parsed::Incomplete;
            };
            (4, u16::from_be_bytes([b[0], b[1]]) as u64)
        }
        127 => {
            let Some(b) = bytes.get(2..10) else {
                return Parsed::Incomplete;
            };
            (10, u64::from_be_bytes(b.try_into().expect("8 bytes")))
        }
        n => (2, n as u64),
    };
    // Whole frames are buffered here, so a frame must fit the largest message
    // (tungstenite, reading the same header, refuses it for the same reason).
    let Ok(len) = usize::try_from(len) else {
        return Parsed::TooBig;
    };
    if len > limit {
        return Parsed::TooBig;
    }
    let mask = if second & 0x80 != 0 {
        let Some(m) = bytes.get(at..at + 4) else {
            return Parsed::Incomplete;
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    if bytes.len() < at + len {
        return Parsed::Incomplete;
    }
    Parsed::Frame(Header {
        fin: first & 0x80 != 0,
        rsv: (first >> 4) & 0b111,
        opcode: first & 0x0f,
        mask,
        payload_at: at,
        len: at + len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(value: &str) -> Option<HeaderValue> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(value).unwrap(),
        );
        negotiate(&headers)
    }

    #[test]
    fn offers_are_accepted_or_declined_per_rfc_7692() {
        assert!(offer("permessage-deflate").is_some());
        assert!(offer("permessage-deflate; client_max_window_bits").is_some());
        assert!(
            offer("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10")
                .is_some()
        );
        assert!(offer("permessage-deflate; server_max_window_bits=15").is_some());
        // A smaller server window, bad values, repeats and unknown parameters are declined.
        assert!(offer("permessage-deflate; server_max_window_bits=10").is_none());
        assert!(offer("permessage-deflate; client_max_window_bits=16").is_none());
        assert!(offer(
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover"
        )
        .is_none());
        assert!(offer("permessage-deflate; foo").is_none());
        assert!(offer("x-webkit-deflate-frame").is_none());
        assert!(negotiate(&HeaderMap::new()).is_none());
    }

    /// A masked client frame.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let (head, used) = crate::record::ws_text_head(payload.len());
        let mut frame = head[..used as usize].to_vec();
        frame[0] = first;
        frame[1] |= 0x80;
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn a_compressed_fragmented_message_becomes_one_plain_frame() {
        let text = "abc ".repeat(500);
        let frame = compressed_frame(text.as_bytes()).expect("it shrinks");
        assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
        let body = &frame[if frame[1] == 126 { 4 } else { 2 }..];
        let (a, b) = body.split_at(body.len() / 2);
        let mut inflate = Inflate::new(1 << 20);
        let mut wire = client_frame(0x41, a); // RSV1, text, not final
        wire.extend(client_frame(0x89, b"")); // a ping in between
        wire.extend(client_frame(0x80, b)); // the final continuation
        for byte in &wire {
            inflate.feed(std::slice::from_ref(byte)); // one byte at a time
        }
        let out = inflate.pending().to_vec();
        assert_eq!(&out[..6], &client_frame(0x89, b"")[..]);
        let plain = &out[6..];
        assert_eq!(plain[0], 0x81);
        assert!(plain.ends_with(text.as_bytes()));
    }

    #[test]
    fn small_frames_stay_plain_and_bad_streams_are_refused() {
        assert!(compressed_frame(b"{}").is_none());
        let mut inflate = Inflate::new(1000);
        inflate.feed(&client_frame(0xc1, b"\xff\xff\xff\xff"));
        assert_eq!(
            inflate.pending()[0],
            0xc1,
            "left with RSV1 for a protocol error"
        );
        let bomb = compressed_frame(&[b'a'; 100_000]).unwrap();
        let body = &bomb[if bomb[1] == 126 { 4 } else { 2 }..];
        let mut inflate = Inflate::new(1000);
        inflate.feed(&client_frame(0xc1, body));
        let out = inflate.pending();
        assert_eq!(
            out[1] & 0x7f,
            126,
            "a header over the limit, for close 1009"
        );
    }
}
