//! The load generator's connection: one keep-alive HTTP/1.1 connection (TCP_NODELAY) that sends
//! a request and reads its content-length framed answer into a reused buffer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::bench::head_end;

use crate::http::{content_length, wants_close};

pub struct Client {
    port: u16,
    stream: TcpStream,
    pub buf: Vec<u8>,
}

pub struct Answer {
    pub status: u16,
    pub close: bool,
    /// Start and end of the body in `buf`.
    pub body: (usize, usize),
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

impl Client {
    pub fn open(port: u16) -> Client {
        Client {
            port,
            stream: connect(port).expect("connect to Envoy"),
            buf: vec![0u8; 16 * 1024],
        }
    }

    pub fn reconnect(&mut self) -> std::io::Result<()> {
        self.stream = connect(self.port)?;
        Ok(())
    }

    /// Sends one request and reads one response (content-length framed: every answer here is).
    pub fn exchange(&mut self, raw: &[u8]) -> Result<Answer, String> {
        self.stream
            .write_all(raw)
            .map_err(|e| format!("write: {e}"))?;
        let mut filled = 0;
        loop {
            if let Some(end) = head_end(&self.buf[..filled]) {
                let head = &self.buf[..end];
                let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        format!("bad status line: {:?}", String::from_utf8_lossy(head))
                    })?;
                let length = content_length(head).ok_or_else(|| {
                    format!(
                        "response without content-length: {:?}",
                        String::from_utf8_lossy(head)
                    )
                })?;
                let close = wants_close(head);
                let total = end + length;
                if self.buf.len() < total {
                    self.buf.resize(total, 0);
                }
                while filled < total {
                    filled += self.read_into(filled)?;
                }
                if filled > total {
                    return Err("bytes after the response (nothing was pipelined)".to_string());
                }
                return Ok(Answer {
                    status,
                    close,
                    body: (end, total),
                });
            }
            if filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            filled += self.read_into(filled)?;
        }
    }

    fn read_into(&mut self, at: usize) -> Result<usize, String> {
        match self.stream.read(&mut self.buf[at..]) {
            Ok(0) => Err("connection closed by Envoy".to_string()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}
