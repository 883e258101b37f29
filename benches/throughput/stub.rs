//! The fast stub: the credential service (and the proxy hop's upstream) without argon2.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use harness::bench::head_end;

use crate::http::{content_length, header, wants_close};

const STUB_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"result\":\"valid\"}";
/// The one-time-use authority's rulings, for (i) and (k): a reported wrong code is counted, a
/// valid one consumed.
const COUNTED_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"result\":\"counted\"}";
const CONSUMED_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"result\":\"consumed\"}";

/// The answer for a request head: by its path, the authority's two endpoints or a verdict.
fn answer_for(head: &[u8]) -> &'static [u8] {
    let line_end = head.iter().position(|b| *b == b'\r').unwrap_or(head.len());
    let line = &head[..line_end];
    if line.windows(16).any(|w| w == b"/v1/otp/failure ") {
        COUNTED_ANSWER
    } else if line.windows(16).any(|w| w == b"/v1/otp/consume ") {
        CONSUMED_ANSWER
    } else {
        STUB_ANSWER
    }
}

#[derive(Default)]
struct StubCounters {
    connections: AtomicU64,
    requests: AtomicU64,
    /// Requests that asked for `connection: close`.
    close_requested: AtomicU64,
    /// Requests the stub could not frame (no content-length); the connection is dropped.
    unframed: AtomicU64,
}

#[derive(Clone, Copy, Default)]
pub struct StubSnapshot {
    pub connections: u64,
    pub requests: u64,
    pub close_requested: u64,
    pub unframed: u64,
}

/// Answers every request in one write: `{"result":"valid"}`, or the authority's ruling on its
/// two paths. Thread per connection; the threads end with their connection or with the process.
pub struct FastStub {
    pub port: u16,
    counters: Arc<StubCounters>,
}

impl FastStub {
    pub fn start() -> FastStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stub");
        let port = listener.local_addr().expect("addr").port();
        let counters = Arc::new(StubCounters::default());
        let shared = Arc::clone(&counters);
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                shared.connections.fetch_add(1, Ordering::Relaxed);
                let counters = Arc::clone(&shared);
                thread::spawn(move || stub_connection(conn, &counters));
            }
        });
        FastStub { port, counters }
    }

    pub fn snapshot(&self) -> StubSnapshot {
        let c = &self.counters;
        StubSnapshot {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            close_requested: c.close_requested.load(Ordering::Relaxed),
            unframed: c.unframed.load(Ordering::Relaxed),
        }
    }
}

fn stub_connection(mut conn: TcpStream, counters: &StubCounters) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        // Answer every complete request in the buffer.
        while let Some(end) = head_end(&buf[..filled]) {
            let head = &buf[..end];
            let Some(length) = content_length(head).or_else(|| {
                // A body-less request may omit content-length; a chunked one is not expected.
                header(head, "transfer-encoding").is_none().then_some(0)
            }) else {
                counters.unframed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if filled < end + length {
                break;
            }
            let close = wants_close(head);
            if conn.write_all(answer_for(head)).is_err() {
                return;
            }
            counters.requests.fetch_add(1, Ordering::Relaxed);
            if close {
                counters.close_requested.fetch_add(1, Ordering::Relaxed);
                return;
            }
            buf.copy_within(end + length..filled, 0);
            filled -= end + length;
        }
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match conn.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
    }
}
