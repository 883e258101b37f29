//! A minimal HTTP/2 client over cleartext TCP (h2c, prior knowledge) for what curl cannot send:
//! request trailers, a body split over chosen DATA frames, header fields HTTP/2 forbids. It sends
//! exactly the frames a `Request` describes on stream 1 of a fresh connection and reads that
//! stream's answer, noticing resets and GOAWAY.
//!
//! HPACK: requests are encoded as literals without indexing and without Huffman coding (any bytes,
//! no state). Answers are decoded in full (static and dynamic table, Huffman), since Envoy
//! compresses what it sends.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::Response;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const STREAM: u32 = 1;

/// What to send on stream 1: one HEADERS frame, one DATA frame per `data` chunk, then (if any)
/// the trailers as a second HEADERS frame. The last frame carries END_STREAM.
pub struct Request {
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub data: Vec<Vec<u8>>,
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// How long to watch for an answer after the DATA frames, before sending the trailers.
    pub pause_before_trailers: Duration,
}

impl Request {
    /// `POST path` with `:scheme http`, `:authority localhost` and `headers`, no body yet.
    pub fn post(path: &str, headers: &[(&str, &str)]) -> Request {
        let mut fields = fields(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "localhost"),
            (":path", path),
        ]);
        fields.extend(self::fields(headers));
        Request {
            headers: fields,
            data: Vec::new(),
            trailers: Vec::new(),
            pause_before_trailers: Duration::from_millis(200),
        }
    }

    /// The body, one DATA frame per chunk.
    pub fn body(mut self, chunks: &[&[u8]]) -> Request {
        self.data = chunks.iter().map(|c| c.to_vec()).collect();
        self
    }

    pub fn trailers(mut self, trailers: &[(&str, &str)]) -> Request {
        self.trailers = fields(trailers);
        self
    }
}

fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// What came back on stream 1.
#[derive(Debug, Default)]
pub struct Answer {
    /// The response, once its headers arrived (its body may be incomplete unless `ended`).
    pub response: Option<Response>,
    /// The response ended with END_STREAM.
    pub ended: bool,
    /// The response headers arrived while the client still held back its trailers.
    pub before_trailers: bool,
    /// RST_STREAM on stream 1 (also one that follows a complete response within a short grace).
    pub reset: Option<u32>,
    /// GOAWAY on the connection: its error code.
    pub goaway: Option<u32>,
    /// The server closed the connection (read EOF or error) while the client was reading.
    pub closed: bool,
}

pub fn error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        _ => "OTHER_ERROR",
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the representation's leading bits.
fn encode_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Literal header fields without indexing, new names, no Huffman coding.
fn encode_block(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        encode_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        encode_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
    /// A header block being received over HEADERS + CONTINUATION: its flags and bytes so far.
    block: Option<(u8, Vec<u8>)>,
    answer: Answer,
    trailers_sent: bool,
    unwritable: bool,
}

enum Read1 {
    Frame(u8, u8, u32, Vec<u8>),
    Timeout,
    Closed,
}

impl Conn {
    fn write(&mut self, bytes: &[u8]) {
        // A peer that already reset or closed may refuse the rest; what it said is read next.
        if self.stream.write_all(bytes).is_err() {
            self.unwritable = true;
        }
    }

    fn next_frame(&mut self, deadline: Instant) -> Read1 {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let kind = self.buf[3];
                    let flags = self.buf[4];
                    let stream =
                        u32::from_be_bytes(self.buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                    let payload = self.buf[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Read1::Frame(kind, flags, stream, payload);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Read1::Timeout;
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("read timeout");
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Read1::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Read1::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Read1::Closed,
            }
        }
    }

    /// Reads and handles frames until `deadline`, the connection's end, or (with `until_done`) the
    /// end of stream 1.
    fn pump(&mut self, deadline: Instant, until_done: bool) {
        while !self.answer.closed {
            if until_done && (self.answer.ended || self.answer.reset.is_some()) {
                return;
            }
            match self.next_frame(deadline) {
                Read1::Timeout => return,
                Read1::Closed => self.answer.closed = true,
                Read1::Frame(kind, flags, stream, payload) => {
                    self.handle(kind, flags, stream, payload)
                }
            }
        }
    }

    fn handle(&mut self, kind: u8, flags: u8, stream: u32, payload: Vec<u8>) {
        match kind {
            SETTINGS if flags & ACK == 0 => self.write(&frame(SETTINGS, ACK, 0, &[])),
            PING if flags & ACK == 0 => self.write(&frame(PING, ACK, 0, &payload)),
            GOAWAY if payload.len() >= 8 => {
                self.answer.goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
            }
            RST_STREAM if stream == STREAM && payload.len() >= 4 => {
                self.answer.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()))
            }
            HEADERS if stream == STREAM => {
                let mut body = unpad(flags, &payload);
                if flags & PRIORITY != 0 {
                    body = &body[5..];
                }
                self.block = Some((flags, body.to_vec()));
                if flags & END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            CONTINUATION if stream == STREAM => {
                if let Some((_, block)) = self.block.as_mut() {
                    block.extend_from_slice(&payload);
                }
                if flags & END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            DATA if stream == STREAM => {
                let body = unpad(flags, &payload).to_vec();
                if let Some(response) = self.answer.response.as_mut() {
                    response.body.extend_from_slice(&body);
                }
                if flags & END_STREAM != 0 {
                    self.answer.ended = true;
                }
            }
            _ => {}
        }
    }

    fn finish_block(&mut self) {
        let Some((flags, block)) = self.block.take() else {
            return;
        };
        let fields = self
            .decoder
            .decode(&block)
            .unwrap_or_else(|e| panic!("HPACK: {e}"));
        if self.answer.response.is_none() {
            let status = fields
                .iter()
                .find(|(n, _)| n == ":status")
                .and_then(|(_, v)| v.parse().ok())
                .expect(":status");
            self.answer.before_trailers = !self.trailers_sent;
            self.answer.response = Some(Response {
                status,
                headers: fields,
                body: Vec::new(),
            });
        }
        // A second block is the response's trailers; nothing here needs them.
        if flags & END_STREAM != 0 {
            self.answer.ended = true;
        }
    }
}

fn unpad(flags: u8, payload: &[u8]) -> &[u8] {
    if flags & PADDED == 0 {
        return payload;
    }
    let pad = usize::from(payload[0]);
    &payload[1..payload.len() - pad]
}

/// Sends `request` on a fresh connection and reads stream 1's answer (15 s at most).
pub fn send(port: u16, request: &Request) -> Answer {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        decoder: Decoder::new(),
        block: None,
        answer: Answer::default(),
        trailers_sent: request.trailers.is_empty(),
        unwritable: false,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    let ends_at_headers = request.data.is_empty() && request.trailers.is_empty();
    let flags = END_HEADERS | if ends_at_headers { END_STREAM } else { 0 };
    out.extend(frame(
        HEADERS,
        flags,
        STREAM,
        &encode_block(&request.headers),
    ));
    for (i, chunk) in request.data.iter().enumerate() {
        let last = i + 1 == request.data.len() && request.trailers.is_empty();
        out.extend(frame(
            DATA,
            if last { END_STREAM } else { 0 },
            STREAM,
            chunk,
        ));
    }
    conn.write(&out);
    if !request.trailers.is_empty() {
        // Does an answer come before the request has ended?
        conn.pump(Instant::now() + request.pause_before_trailers, true);
        conn.trailers_sent = true;
        if !conn.answer.closed && !conn.unwritable && conn.answer.reset.is_none() {
            let block = encode_block(&request.trailers);
            conn.write(&frame(HEADERS, END_HEADERS | END_STREAM, STREAM, &block));
        }
    }
    conn.pump(deadline, true);
    // What follows a complete answer (a reset of a request still open, a GOAWAY) is worth
    // knowing about too.
    conn.pump(Instant::now() + Duration::from_millis(50), false);
    conn.answer
}

// ---------------------------------------------------------------------------------------------
// HPACK decoding (RFC 7541)

const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code lengths of symbols 0..=255 (RFC 7541 Appendix B), then EOS (30 bits). The code
/// is canonical: codes are assigned in order of length, then symbol.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];

/// The canonical Huffman code: each symbol's (code, length).
pub fn huffman_codes() -> Vec<(u32, u8)> {
    let mut order: Vec<usize> = (0..HUFFMAN_LENGTHS.len()).collect();
    order.sort_by_key(|&s| (HUFFMAN_LENGTHS[s], s));
    let mut codes = vec![(0u32, 0u8); HUFFMAN_LENGTHS.len()];
    let (mut code, mut len) = (0u32, HUFFMAN_LENGTHS[order[0]]);
    for s in order {
        code <<= HUFFMAN_LENGTHS[s] - len;
        len = HUFFMAN_LENGTHS[s];
        codes[s] = (code, len);
        code += 1;
    }
    codes
}

pub fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let codes = huffman_codes();
    let lookup: std::collections::HashMap<(u32, u8), usize> =
        codes.iter().enumerate().map(|(s, &c)| (c, s)).collect();
    let mut out = Vec::new();
    let (mut code, mut len) = (0u32, 0u8);
    for byte in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from(byte >> bit & 1);
            len += 1;
            match lookup.get(&(code, len)) {
                Some(256) => return Err("EOS in a Huffman string".into()),
                Some(&s) => {
                    out.push(s as u8);
                    (code, len) = (0, 0);
                }
                None if len >= 30 => return Err("bad Huffman code".into()),
                None => {}
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len >= 8 || code != (1 << len) - 1 {
        return Err("bad Huffman padding".into());
    }
    Ok(out)
}

pub struct Decoder {
    table: VecDeque<(String, String)>,
    size: usize,
    max: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max: 4096,
        }
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let (n, v) = self.table.pop_back().expect("entry");
            self.size -= n.len() + v.len() + 32;
        }
    }

    fn entry(&self, index: usize) -> Result<(String, String), String> {
        match index {
            0 => Err("index 0".into()),
            1..=61 => {
                let (n, v) = STATIC[index - 1];
                Ok((n.to_string(), v.to_string()))
            }
            _ => self
                .table
                .get(index - 62)
                .cloned()
                .ok_or_else(|| format!("index {index} beyond the table")),
        }
    }

    /// Decodes one header block into (name, value) pairs.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < block.len() {
            let first = block[pos];
            if first & 0x80 != 0 {
                let index = int(block, &mut pos, 7)?;
                out.push(self.entry(index)?);
            } else if first & 0xe0 == 0x20 {
                self.max = int(block, &mut pos, 5)?;
                self.evict();
            } else {
                let (prefix, indexing) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let index = int(block, &mut pos, prefix)?;
                let name = if index == 0 {
                    string(block, &mut pos)?
                } else {
                    self.entry(index)?.0
                };
                let value = string(block, &mut pos)?;
                if indexing {
                    self.size += name.len() + value.len() + 32;
                    self.table.push_front((name.clone(), value.clone()));
                    self.evict();
                }
                out.push((name, value));
            }
        }
        Ok(out)
    }
}

fn int(block: &[u8], pos: &mut usize, prefix: u32) -> Result<usize, String> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*pos).ok_or("truncated")?) & max;
    *pos += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*pos).ok_or("truncated integer")?;
        *pos += 1;
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

fn string(block: &[u8], pos: &mut usize) -> Result<String, String> {
    let huffman = block.get(*pos).ok_or("truncated string")? & 0x80 != 0;
    let len = int(block, pos, 7)?;
    let raw = block.get(*pos..*pos + len).ok_or("truncated string")?;
    *pos += len;
    let bytes = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
