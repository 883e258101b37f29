//! The load generator's HTTP/1.1 connection: sends a request, reads one answer whole (by
//! content-length, or to the close), and names what answered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::bench::head_end;
use harness::is_xid;
use serde_json::Value;

pub struct Resp {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// What answered, as the kinds' expectations name it.
    pub fn label(&self) -> String {
        if let Some(up) = self.header("x-demo-upstream") {
            return format!("upstream:{up}");
        }
        let Some(request_id) = self.header("request-id") else {
            return if self.body == b"ok\n" {
                "catch-all".into()
            } else {
                "envoy".into()
            };
        };
        // The filter answered: the invariants of every answer first.
        if !is_xid(request_id) || self.header("cache-control") != Some("no-store") {
            return "filter answer without Request-Id or Cache-Control".into();
        }
        match (self.status, self.header("content-type")) {
            (201, Some("application/json")) => {
                let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
                let otp = v["otp"].as_str().unwrap_or("");
                let ok = otp.len() == 6
                    && otp.bytes().all(|b| b.is_ascii_digit())
                    && v["expiresAt"].as_str().is_some_and(|e| e.len() == 24);
                if ok { "issued" } else { "bad 201 body" }.into()
            }
            (204, _) if self.body.is_empty() => "verified".into(),
            (_, Some("application/vnd.api+json")) => {
                let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
                let error = &v["errors"][0];
                match error["code"].as_str() {
                    Some(code)
                        if error["id"] == request_id
                            && error["status"].as_str() == Some(&*self.status.to_string()) =>
                    {
                        code.to_string()
                    }
                    _ => "malformed error document".into(),
                }
            }
            (_, ct) => format!("unexpected content-type {ct:?}"),
        }
    }
}

pub struct Client {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections this client opened.
    pub opened: u64,
}

impl Client {
    pub fn new(port: u16) -> Client {
        Client {
            port,
            stream: None,
            buf: vec![0u8; 16 * 1024],
            opened: 0,
        }
    }

    pub fn stream(&mut self) -> Result<&mut TcpStream, String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(("127.0.0.1", self.port))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(15)))
                .map_err(|e| e.to_string())?;
            self.stream = Some(s);
            self.opened += 1;
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    fn close(&mut self) {
        self.stream = None;
    }

    /// Sends `raw` and reads one response. Any error drops the connection.
    pub fn exchange(&mut self, raw: &[u8]) -> Result<Resp, String> {
        let result = self.exchange_inner(raw);
        if !matches!(&result, Ok(r) if !r.close) {
            self.close();
        }
        result
    }

    fn exchange_inner(&mut self, raw: &[u8]) -> Result<Resp, String> {
        self.stream()?
            .write_all(raw)
            .map_err(|e| format!("write: {e}"))?;
        let mut filled = 0;
        let end = loop {
            if let Some(end) = head_end(&self.buf[..filled]) {
                break end;
            }
            if filled == self.buf.len() {
                return Err("response head over 16 KiB".into());
            }
            filled += self.read_into(filled)?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let close = find("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut body: Vec<u8> = self.buf[end..filled].to_vec();
        if status == 204 || status == 304 || (100..200).contains(&status) {
            // No body.
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| format!("bad content-length {len:?}"))?;
            while body.len() < len {
                let n = self.read_into(0)?;
                body.extend_from_slice(&self.buf[..n]);
            }
            if body.len() > len {
                return Err("bytes after the response (nothing was pipelined)".into());
            }
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            return Err("chunked response (no answer here should be)".into());
        } else if close {
            loop {
                match self.read_into(0) {
                    Ok(n) => body.extend_from_slice(&self.buf[..n]),
                    Err(e) if e.starts_with("connection closed") => break,
                    Err(e) => return Err(format!("read to close: {e}")),
                }
            }
        } else {
            return Err(format!("response without framing: {head:?}"));
        }
        Ok(Resp {
            status,
            headers,
            body,
            close,
        })
    }

    fn read_into(&mut self, at: usize) -> Result<usize, String> {
        let stream = self.stream.as_mut().ok_or("no connection")?;
        match stream.read(&mut self.buf[at..]) {
            Ok(0) => Err("connection closed by Envoy".into()),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}
