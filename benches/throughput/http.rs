//! HTTP/1.1 framing shared by the stubs, the load generator and the native peer (no allocation
//! per message). Where a head ends is `harness::bench::head_end`.

pub fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

pub fn content_length(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(header(head, "content-length")?)
        .ok()?
        .parse()
        .ok()
}

pub fn wants_close(head: &[u8]) -> bool {
    header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"))
}
