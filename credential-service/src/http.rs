//! A small HTTP/1.1 server on `std::net`: one thread per connection, keep-alive,
//! `Content-Length` and chunked request bodies, bounded everything.
//!
//! Why not a library: `tiny_http` queued new connections behind long-lived keep-alive ones
//! (its task pool could leave a connection waiting until another one closed, and Envoy
//! keeps its upstream connections open for an hour). Here every accepted connection gets
//! its own thread at once, up to [`Limits::max_connections`]; beyond that new connections
//! get a `503` and are closed, never queued.
//!
//! Bounds, so that slow or hostile clients cannot pin threads or memory:
//! - an idle keep-alive connection is closed after [`Limits::idle_timeout`];
//! - a request whose head has started arriving must be complete within
//!   [`Limits::request_timeout`] (else `408`); a body gets the same time from when the
//!   handler asks for it;
//! - the request head is at most [`Limits::max_header_bytes`] (else `431`);
//! - a body is at most [`Limits::max_body_bytes`]: the handler's `read_body` gets
//!   [`BodyError::TooLarge`] and the connection is closed after the answer.
//!
//! Answers carry `content-type` and `content-length` and go out in one `write_all` of one
//! buffer; sockets have `TCP_NODELAY`.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::MAX_BODY_BYTES;
use crate::service::BodyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// How long a connection may sit between requests.
    pub idle_timeout: Duration,
    /// How long a started request head (or a body, once asked for) may take to arrive.
    pub request_timeout: Duration,
    /// How long one blocked write of an answer may take.
    pub write_timeout: Duration,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_body_bytes: MAX_BODY_BYTES,
        }
    }
}

/// One answer. `content-length` (and `connection` when needed) are added.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    pub status: u16,
    pub content_type: &'a str,
    /// Further headers, e.g. `("allow", "POST")`. Names and values must not contain CR/LF
    /// (such headers are dropped).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Accepts connections forever, serving each on its own thread with `handler`, which is
/// called once per request and must call [`Exchange::respond`] (a request it leaves
/// unanswered gets a `500` and its connection is closed).
pub fn serve<H>(listener: TcpListener, limits: Limits, handler: H) -> !
where
    H: Fn(&mut Exchange<'_>) + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: wait for connections to close instead of spinning.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) {
                    log(&format!("accept failed: {e}"));
                    thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            refuse(stream);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name("http-conn".to_owned())
            .spawn(move || {
                let _slot = slot;
                Connection::new(stream, limits).run(&*handler);
            });
        // On failure the closure, its stream and its slot are dropped: the client sees a close.
        if let Err(e) = spawned {
            log(&format!("cannot start a connection thread: {e}"));
        }
    }
}

/// Frees a connection's place in the count when its thread ends (or fails to start).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Over the connection limit: a best-effort `503`, without ever blocking the accept loop.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let body = b"too many connections\n";
    let mut out = head_bytes(
        503,
        "text/plain; charset=utf-8",
        &[],
        body.len(),
        Some("close"),
    );
    out.extend_from_slice(body);
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(Shutdown::Write);
}

fn log(msg: &str) {
    let _ = io::stderr().write_all(format!("credential-service: http: {msg}\n").as_bytes());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and later 1.x).
    minor: u8,
    headers: Vec<(String, String)>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

/// Why a request could not be parsed: the status to answer before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reject(u16);

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a request head (request line to the blank line, inclusive).
fn parse_head(bytes: &[u8]) -> Result<Head, Reject> {
    let bad = Reject(400);
    let text = std::str::from_utf8(bytes).map_err(|_| bad)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));

    let request_line = lines.next().ok_or(bad)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if !is_token(method) || target.is_empty() || target.chars().any(char::is_control) {
        return Err(bad);
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        v => {
            let (major, minor) = v
                .strip_prefix("HTTP/")
                .and_then(|v| v.split_once('.'))
                .ok_or(bad)?;
            let digit = |s: &str| s.len() == 1 && s.bytes().all(|b| b.is_ascii_digit());
            if !digit(major) || !digit(minor) {
                return Err(bad);
            }
            if major != "1" {
                return Err(Reject(505));
            }
            1
        }
    };

    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        // No obsolete line folding, no whitespace before the colon (RFC 9112 §5).
        let (name, value) = line.split_once(':').ok_or(bad)?;
        if !is_token(name) {
            return Err(bad);
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad);
        }
        headers.push((name.to_owned(), value.to_owned()));
    }

    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };

    let codings: Vec<&str> = values("transfer-encoding").collect();
    let lengths: Vec<&str> = values("content-length").collect();
    let has_te = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    let has_cl = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    let framing = if has_te {
        // Both framings at once is how requests are smuggled: refuse.
        if has_cl || minor == 0 {
            return Err(bad);
        }
        match codings.as_slice() {
            [c] if c.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => return Err(Reject(501)),
        }
    } else if has_cl {
        let first = *lengths.first().ok_or(bad)?;
        if lengths.iter().any(|l| *l != first) || !first.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad);
        }
        Framing::Length(first.parse().map_err(|_| bad)?)
    } else {
        Framing::None
    };

    let connection: Vec<String> = values("connection").map(str::to_ascii_lowercase).collect();
    let keep_alive = if connection.iter().any(|t| t == "close") {
        false
    } else {
        minor == 1 || connection.iter().any(|t| t == "keep-alive")
    };
    let expect_continue = minor == 1
        && headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue")
        });

    Ok(Head {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        headers,
        framing,
        keep_alive,
        expect_continue,
    })
}

/// Where the request head in `buf` ends (just past its blank line), if it is all there.
/// `buf` must not start with blank lines.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line_start > 0 && (line.is_empty() || line == b"\r") {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn clean_header(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// Status line and headers, up to and including the blank line.
fn head_bytes(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    content_length: usize,
    connection: Option<&str>,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {content_length}\r\n",
        reason(status)
    );
    for (name, value) in extra {
        if is_token(name) && clean_header(value) {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
    }
    if let Some(connection) = connection {
        out.push_str("connection: ");
        out.push_str(connection);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reading a body failed: too large, or broken (timeout, early close, bad chunking).
enum BodyFailure {
    TooLarge,
    Broken,
}

impl From<io::Error> for BodyFailure {
    fn from(_: io::Error) -> Self {
        BodyFailure::Broken
    }
}

struct Connection {
    stream: TcpStream,
    /// Received and not yet consumed.
    buf: Vec<u8>,
    limits: Limits,
}

impl Connection {
    fn new(stream: TcpStream, limits: Limits) -> Self {
        // Answers go out in one write anyway; this rules out Nagle stalls altogether.
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(limits.write_timeout));
        Connection {
            stream,
            buf: Vec::with_capacity(4096),
            limits,
        }
    }

    fn run(mut self, handler: &dyn Fn(&mut Exchange<'_>)) {
        loop {
            let head = match self.read_head() {
                Ok(Some(head)) => head,
                Ok(None) => return self.close(false),
                Err(Reject(status)) => {
                    log(&format!("rejected a request: {status} {}", reason(status)));
                    let body = format!("{}\n", reason(status).to_ascii_lowercase());
                    let mut out = head_bytes(
                        status,
                        "text/plain; charset=utf-8",
                        &[],
                        body.len(),
                        Some("close"),
                    );
                    out.extend_from_slice(body.as_bytes());
                    let _ = self.stream.write_all(&out);
                    return self.close(true);
                }
            };
            let mut exchange = Exchange {
                conn: &mut self,
                head: &head,
                body: BodyState::Unread,
                continue_sent: false,
                keep_alive: None,
                must_close: false,
            };
            handler(&mut exchange);
            let keep = match exchange.keep_alive {
                Some(keep) => keep,
                None => {
                    exchange.must_close = true;
                    let _ = exchange.respond(&Reply {
                        status: 500,
                        content_type: "text/plain; charset=utf-8",
                        headers: &[],
                        body: b"internal server error\n",
                    });
                    false
                }
            };
            // Discard a body the handler did not want (its size is known to be within
            // bounds, or `keep` would be false).
            let drained = match (keep, exchange.body, head.framing) {
                (true, BodyState::Unread, Framing::Length(n)) if n > 0 => {
                    let deadline = Instant::now() + self.limits.request_timeout;
                    self.take_exact(n as usize, deadline).is_ok()
                }
                _ => true,
            };
            if !keep || !drained {
                return self.close(true);
            }
        }
    }

    /// Ends the connection. `linger`: first read (and drop) what the client still sends, for
    /// a moment, so that unread request bytes do not turn the close into a reset that could
    /// destroy the answer before the client reads it.
    fn close(mut self, linger: bool) {
        let _ = self.stream.flush();
        let _ = self.stream.shutdown(Shutdown::Write);
        if !linger {
            return;
        }
        let until = Instant::now() + Duration::from_secs(2);
        let mut scratch = [0u8; 4096];
        let mut budget: usize = 1 << 20;
        while budget > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    }

    /// Reads more into `buf`, waiting at most until `deadline`. `Ok(0)`: the peer closed.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next request head; `None` when the connection ended (or idled out) between
    /// requests, or broke while one was arriving (nobody to answer then).
    fn read_head(&mut self) -> Result<Option<Head>, Reject> {
        let mut started: Option<Instant> = None;
        loop {
            // RFC 9112 §2.2: ignore blank lines before a request line.
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.buf.drain(..blank);
            if !self.buf.is_empty() {
                started.get_or_insert_with(Instant::now);
            }
            if let Some(end) = head_end(&self.buf) {
                if end > self.limits.max_header_bytes {
                    return Err(Reject(431));
                }
                let head = parse_head(&self.buf[..end]);
                self.buf.drain(..end);
                return head.map(Some);
            }
            if self.buf.len() > self.limits.max_header_bytes {
                return Err(Reject(431));
            }
            let deadline = match started {
                None => Instant::now() + self.limits.idle_timeout,
                Some(t) => t + self.limits.request_timeout,
            };
            match self.fill(deadline) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    started.get_or_insert_with(Instant::now);
                }
                Err(e) if is_timeout(&e) && started.is_some() => return Err(Reject(408)),
                Err(_) => return Ok(None),
            }
        }
    }

    fn take_exact(&mut self, n: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill(deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One line without its CRLF (or LF), at most `max` bytes long.
    fn take_line(&mut self, max: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i > max {
                    break;
                }
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                break;
            }
            if self.fill(deadline)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
    }

    /// A `Transfer-Encoding: chunked` body, decoded, at most `max` bytes.
    fn take_chunked(&mut self, max: usize, deadline: Instant) -> Result<Vec<u8>, BodyFailure> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line(1024, deadline)?;
            let line = std::str::from_utf8(&line).map_err(|_| BodyFailure::Broken)?;
            let size = line
                .split(';')
                .next()
                .unwrap_or("")
                .trim_matches([' ', '\t']);
            if size.is_empty() || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BodyFailure::Broken);
            }
            let size = usize::from_str_radix(size, 16).map_err(|_| BodyFailure::TooLarge)?;
            if size == 0 {
                // Trailers, ignored, up to the blank line.
                let mut trailer_bytes = 0;
                loop {
                    let line = self.take_line(self.limits.max_header_bytes, deadline)?;
                    if line.is_empty() {
                        return Ok(body);
                    }
                    trailer_bytes += line.len();
                    if trailer_bytes > self.limits.max_header_bytes {
                        return Err(BodyFailure::Broken);
                    }
                }
            }
            if size > max.saturating_sub(body.len()) {
                return Err(BodyFailure::TooLarge);
            }
            body.extend_from_slice(&self.take_exact(size, deadline)?);
            if !self.take_line(1, deadline)?.is_empty() {
                return Err(BodyFailure::Broken);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Unread,
    Read,
    /// Too large or broken: the connection cannot carry another request.
    Failed,
}

/// One request on a connection: its head, its body on demand, and the way to answer it.
pub struct Exchange<'a> {
    conn: &'a mut Connection,
    head: &'a Head,
    body: BodyState,
    continue_sent: bool,
    /// `Some(whether the connection stays open)` once answered.
    keep_alive: Option<bool>,
    /// Close after the answer whatever the request asked for.
    must_close: bool,
}

impl Exchange<'_> {
    pub fn method(&self) -> &str {
        &self.head.method
    }

    /// The request target as sent (path, maybe with a query string).
    pub fn target(&self) -> &str {
        &self.head.target
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request body (empty without one); only the first call can succeed.
    pub fn read_body(&mut self) -> Result<Vec<u8>, BodyError> {
        if self.body != BodyState::Unread {
            return Err(BodyError::Unreadable);
        }
        self.body = BodyState::Failed;
        let max = self.conn.limits.max_body_bytes;
        let length = match self.head.framing {
            Framing::None | Framing::Length(0) => {
                self.body = BodyState::Read;
                return Ok(Vec::new());
            }
            Framing::Length(n) if n > max as u64 => return Err(BodyError::TooLarge),
            Framing::Length(n) => Some(n as usize),
            Framing::Chunked => None,
        };
        if self.head.expect_continue && !self.continue_sent {
            self.continue_sent = true;
            self.conn
                .stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| BodyError::Unreadable)?;
        }
        let deadline = Instant::now() + self.conn.limits.request_timeout;
        let body = match length {
            Some(n) => self
                .conn
                .take_exact(n, deadline)
                .map_err(|_| BodyError::Unreadable)?,
            None => self.conn.take_chunked(max, deadline).map_err(|e| match e {
                BodyFailure::TooLarge => BodyError::TooLarge,
                BodyFailure::Broken => BodyError::Unreadable,
            })?,
        };
        self.body = BodyState::Read;
        Ok(body)
    }

    /// Whether the connection can carry another request after this one.
    fn reusable(&self) -> bool {
        if !self.head.keep_alive || self.must_close {
            return false;
        }
        match (self.body, self.head.framing) {
            (BodyState::Read, _) => true,
            (BodyState::Failed, _) => false,
            // Unread: drained after the answer if small enough and surely coming.
            (BodyState::Unread, Framing::None | Framing::Length(0)) => true,
            (BodyState::Unread, Framing::Length(n)) => {
                n <= self.conn.limits.max_body_bytes as u64 && !self.head.expect_continue
            }
            (BodyState::Unread, Framing::Chunked) => false,
        }
    }

    /// Sends the answer, in one write. Only the first call sends anything.
    pub fn respond(&mut self, reply: &Reply<'_>) -> io::Result<()> {
        if self.keep_alive.is_some() {
            return Err(io::Error::other("already answered"));
        }
        let keep = self.reusable();
        self.keep_alive = Some(keep);
        let connection = match (keep, self.head.minor) {
            (false, _) => Some("close"),
            (true, 0) => Some("keep-alive"),
            (true, _) => None,
        };
        let mut out = head_bytes(
            reply.status,
            reply.content_type,
            reply.headers,
            reply.body.len(),
            connection,
        );
        if self.head.method != "HEAD" {
            out.extend_from_slice(reply.body);
        }
        let sent = self.conn.stream.write_all(&out);
        if sent.is_err() {
            self.keep_alive = Some(false);
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;

    /// Answers `METHOD TARGET BODY`; `/skip` leaves the body unread; a body error is 413
    /// (too large) or 400.
    fn echo(ex: &mut Exchange<'_>) {
        let mut text = format!("{} {}", ex.method(), ex.target());
        if let Some(v) = ex.header("x-echo") {
            text.push_str(&format!(" x-echo={v}"));
        }
        let status = if ex.target() == "/skip" {
            200
        } else {
            match ex.read_body() {
                Ok(body) => {
                    text.push(' ');
                    text.push_str(&String::from_utf8_lossy(&body));
                    200
                }
                Err(BodyError::TooLarge) => 413,
                Err(BodyError::Unreadable) => 400,
            }
        };
        if ex.target() == "/silent" {
            return;
        }
        ex.respond(&Reply {
            status,
            content_type: "text/plain",
            headers: &[("allow", "GET, HEAD")],
            body: text.as_bytes(),
        })
        .unwrap();
    }

    fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            serve(listener, limits, echo);
        });
        addr
    }

    fn small() -> Limits {
        Limits {
            max_body_bytes: 64,
            max_header_bytes: 512,
            ..Limits::default()
        }
    }

    struct Client {
        reader: BufReader<TcpStream>,
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = TcpStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Client {
                reader: BufReader::new(stream),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.reader.get_mut().write_all(bytes).unwrap();
        }

        fn read(&mut self, head_only: bool) -> Answer {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let status = line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {line:?}"));
            assert!(line.ends_with("\r\n"), "{line:?}");
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                assert!(line.ends_with("\r\n"), "{line:?}");
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (n, v) = line.split_once(": ").unwrap();
                headers.push((n.to_owned(), v.to_owned()));
            }
            let mut answer = Answer {
                status,
                headers,
                body: String::new(),
            };
            if !head_only {
                let len: usize = answer.header("content-length").unwrap().parse().unwrap();
                let mut body = vec![0; len];
                self.reader.read_exact(&mut body).unwrap();
                answer.body = String::from_utf8(body).unwrap();
            }
            answer
        }

        fn exchange(&mut self, bytes: &[u8]) -> Answer {
            self.send(bytes);
            self.read(false)
        }

        /// The server closed the connection (nothing more to read).
        fn assert_closed(&mut self) {
            let mut rest = Vec::new();
            self.reader.read_to_end(&mut rest).unwrap();
            assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        }
    }

    #[test]
    fn complete_request() {
        let mut c = Client::connect(start(small()));
        let a = c.exchange(
            b"POST /v1/x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Echo: a b \r\n\r\nhello",
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.body, "POST /v1/x?q=1 x-echo=a b hello");
        assert_eq!(
            a.headers,
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("content-length".to_owned(), "31".to_owned()),
                ("allow".to_owned(), "GET, HEAD".to_owned()),
            ]
        );
    }

    #[test]
    fn request_split_across_reads() {
        let mut c = Client::connect(start(small()));
        for part in [
            &b"\r\nPO"[..],
            b"ST /a HTTP/1.1\r",
            b"\nconte",
            b"nt-length: 5\r\n",
            b"\r",
            b"\nhe",
            b"llo",
        ] {
            c.send(part);
            thread::sleep(Duration::from_millis(30));
        }
        let a = c.read(false);
        assert_eq!((a.status, a.body.as_str()), (200, "POST /a hello"));
    }

    #[test]
    fn keep_alive_and_pipelining() {
        let mut c = Client::connect(start(small()));
        let a = c.exchange(b"GET /one HTTP/1.1\r\n\r\n");
        assert_eq!((a.status, a.body.as_str()), (200, "GET /one "));
        assert_eq!(a.header("connection"), None);
        let a = c.exchange(b"POST /two HTTP/1.1\r\ncontent-length: 1\r\n\r\nx");
        assert_eq!(a.body, "POST /two x");
        // Two at once, the second one's body unread by the handler and skipped.
        c.send(b"POST /skip HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcGET /three HTTP/1.1\r\n\r\n");
        assert_eq!(c.read(false).body, "POST /skip");
        assert_eq!(c.read(false).body, "GET /three ");
        // Bare LF line ends are accepted too.
        assert_eq!(c.exchange(b"GET /four HTTP/1.1\n\n").body, "GET /four ");
    }

    #[test]
    fn connection_close() {
        let mut c = Client::connect(start(small()));
        let a = c.exchange(b"GET /x HTTP/1.1\r\nConnection: Close\r\n\r\n");
        assert_eq!((a.status, a.header("connection")), (200, Some("close")));
        c.assert_closed();
    }

    #[test]
    fn http_1_0() {
        let addr = start(small());
        let mut c = Client::connect(addr);
        let a = c.exchange(b"GET /x HTTP/1.0\r\n\r\n");
        assert_eq!((a.status, a.header("connection")), (200, Some("close")));
        c.assert_closed();

        let mut c = Client::connect(addr);
        let a = c.exchange(b"GET /x HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
        assert_eq!(a.header("connection"), Some("keep-alive"));
        let a = c.exchange(b"GET /y HTTP/1.0\r\n\r\n");
        assert_eq!(
            (a.body.as_str(), a.header("connection")),
            ("GET /y ", Some("close"))
        );
        c.assert_closed();
    }

    #[test]
    fn oversize_headers() {
        let mut c = Client::connect(start(small()));
        let big = format!("GET /x HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(600));
        let a = c.exchange(big.as_bytes());
        assert_eq!((a.status, a.header("connection")), (431, Some("close")));
        c.assert_closed();

        // Also when the head never ends.
        let mut c = Client::connect(start(small()));
        c.send(b"GET /x HTTP/1.1\r\n");
        for _ in 0..20 {
            c.send(b"x-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(c.read(false).status, 431);
        c.assert_closed();
    }

    #[test]
    fn oversize_body() {
        let mut c = Client::connect(start(small()));
        let a = c.exchange(b"POST /x HTTP/1.1\r\ncontent-length: 65\r\n\r\n");
        assert_eq!((a.status, a.header("connection")), (413, Some("close")));
        c.assert_closed();

        // At the limit is fine, and the connection stays open.
        let mut c = Client::connect(start(small()));
        let body = "b".repeat(64);
        let a =
            c.exchange(format!("POST /x HTTP/1.1\r\ncontent-length: 64\r\n\r\n{body}").as_bytes());
        assert_eq!((a.status, a.body), (200, format!("POST /x {body}")));
        assert_eq!(c.exchange(b"GET /y HTTP/1.1\r\n\r\n").status, 200);

        // An unread body over the limit is not drained: the connection closes.
        let mut c = Client::connect(start(small()));
        let a = c.exchange(b"POST /skip HTTP/1.1\r\ncontent-length: 1000\r\n\r\n");
        assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    }

    #[test]
    fn chunked_body() {
        let addr = start(small());
        let mut c = Client::connect(addr);
        let a = c.exchange(
            b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nx-trailer: t\r\n\r\n",
        );
        assert_eq!((a.status, a.body.as_str()), (200, "POST /c hello!"));
        assert_eq!(c.exchange(b"GET /next HTTP/1.1\r\n\r\n").body, "GET /next ");

        let mut c = Client::connect(addr);
        let a = c.exchange(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n41\r\n");
        assert_eq!((a.status, a.header("connection")), (413, Some("close")));

        let mut c = Client::connect(addr);
        let a = c.exchange(b"POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!((a.status, a.header("connection")), (400, Some("close")));
    }

    #[test]
    fn bad_requests_are_answered_and_closed() {
        let addr = start(small());
        for (raw, status) in [
            (&b"GET /x\r\n\r\n"[..], 400),
            (b"GET  /x HTTP/1.1\r\n\r\n", 400),
            (b"GET /x HTTP/2.0\r\n\r\n", 505),
            (b"GET /x HTTP/1.1\r\nbad header\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\nbad : x\r\n\r\n", 400),
            (b"GET /x HTTP/1.1\r\na: b\r\n folded\r\n\r\n", 400),
            (
                b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                400,
            ),
            (b"POST /x HTTP/1.1\r\ncontent-length: -1\r\n\r\n", 400),
            (
                b"POST /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"POST /x HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (b"GET /\xff HTTP/1.1\r\n\r\n", 400),
        ] {
            let mut c = Client::connect(addr);
            let a = c.exchange(raw);
            assert_eq!(
                (a.status, a.header("connection")),
                (status, Some("close")),
                "{}",
                String::from_utf8_lossy(raw)
            );
            c.assert_closed();
        }
    }

    #[test]
    fn head_and_expect_continue() {
        let mut c = Client::connect(start(small()));
        c.send(b"HEAD /h HTTP/1.1\r\n\r\n");
        let a = c.read(true);
        assert_eq!(a.header("content-length"), Some("8"));
        // No body: the next answer follows at once.
        assert_eq!(c.exchange(b"GET /g HTTP/1.1\r\n\r\n").body, "GET /g ");

        c.send(b"POST /e HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n");
        let mut line = String::new();
        c.reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        c.reader.read_line(&mut line).unwrap();
        c.send(b"ok");
        assert_eq!(c.read(false).body, "POST /e ok");
    }

    #[test]
    fn unanswered_request_gets_500() {
        let mut c = Client::connect(start(small()));
        let a = c.exchange(b"GET /silent HTTP/1.1\r\n\r\n");
        assert_eq!((a.status, a.header("connection")), (500, Some("close")));
        c.assert_closed();
    }

    #[test]
    fn timeouts() {
        let addr = start(Limits {
            idle_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            ..small()
        });
        // Idle: closed without an answer.
        let mut c = Client::connect(addr);
        assert_eq!(c.exchange(b"GET /x HTTP/1.1\r\n\r\n").status, 200);
        c.assert_closed();
        // A request that never completes: 408.
        let mut c = Client::connect(addr);
        c.send(b"GET /x HTTP/1.1\r\n");
        let a = c.read(false);
        assert_eq!((a.status, a.header("connection")), (408, Some("close")));
        c.assert_closed();
        // A body that never completes: the handler's read fails.
        let mut c = Client::connect(addr);
        let a = c.exchange(b"POST /x HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc");
        assert_eq!((a.status, a.header("connection")), (400, Some("close")));
    }

    #[test]
    fn idle_connections_do_not_hold_up_new_ones() {
        let addr = start(Limits {
            max_connections: 8,
            ..small()
        });
        let idle: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let t = Instant::now();
        let clients: Vec<_> = (0..2)
            .map(|i| {
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    c.exchange(format!("GET /{i} HTTP/1.1\r\n\r\n").as_bytes())
                        .status
                })
            })
            .collect();
        for c in clients {
            assert_eq!(c.join().unwrap(), 200);
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Over the limit: refused with 503, not queued.
        thread::sleep(Duration::from_millis(100));
        let mut c = Client::connect(addr);
        let idle2 = TcpStream::connect(addr).unwrap();
        thread::sleep(Duration::from_millis(100));
        let mut over = Client::connect(addr);
        assert_eq!(over.read(false).status, 503);
        over.assert_closed();
        drop((idle, idle2));
        // Places free up again once connections close.
        thread::sleep(Duration::from_millis(200));
        assert_eq!(c.exchange(b"GET /z HTTP/1.1\r\n\r\n").status, 200);
        let mut c = Client::connect(addr);
        assert_eq!(c.exchange(b"GET /z HTTP/1.1\r\n\r\n").status, 200);
    }
}
