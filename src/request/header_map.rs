//! Envoy's serialized header map, as `proxy_get_header_map_pairs` returns it: every request header
//! in one host call, instead of one call (and one allocation inside the VM) per header. The SDK's
//! own parser indexes without bounds checks and unwraps the names as UTF-8; this one is
//! bounds-checked, so a malformed buffer yields `None`, never a panic.
//!
//! Layout (little-endian): `u32` count, then `count` pairs of `u32` name and value sizes, then
//! each name and value followed by a NUL byte.

/// The name and value bytes of every header, in Envoy's order.
pub fn parse(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let sizes_end = count.checked_mul(8)?.checked_add(4)?;
    let sizes = bytes.get(4..sizes_end)?;
    let mut at = sizes_end;
    let mut take = |len: usize| -> Option<&[u8]> {
        let end = at.checked_add(len)?;
        let field = bytes.get(at..end)?;
        at = end.checked_add(1)?; // the NUL after each field
        Some(field)
    };
    let mut pairs = Vec::with_capacity(count.min(64));
    for entry in sizes.chunks_exact(8) {
        let name = take(read_u32(entry, 0)?)?;
        let value = take(read_u32(entry, 4)?)?;
        pairs.push((name, value));
    }
    Some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let field: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(field)).ok()
}

/// `pairs` in the same layout, for headers the filter sends (its local replies).
pub fn serialize<N: AsRef<str>, V: AsRef<str>>(pairs: &[(N, V)]) -> Vec<u8> {
    let fields = || {
        pairs
            .iter()
            .map(|(n, v)| (n.as_ref().as_bytes(), v.as_ref().as_bytes()))
    };
    let size = fields().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>() + 4;
    let mut out = Vec::with_capacity(size);
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(pairs.len()));
    for (name, value) in fields() {
        out.extend_from_slice(&len(name.len()));
        out.extend_from_slice(&len(value.len()));
    }
    for (name, value) in fields() {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

/// The first value of `name` (Envoy's names are lowercase), which is what Envoy's single-header
/// getter returns when a header repeats.
pub fn first<'a>(pairs: &[(&[u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(n, _)| *n == name.as_bytes())
        .map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialize_bytes(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (n, v) in pairs {
            out.extend_from_slice(&(n.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (n, v) in pairs {
            out.extend_from_slice(n);
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_what_envoy_writes() {
        let pairs: [(&[u8], &[u8]); 4] = [
            (b":path", b"/user/2021-2/user/otp"),
            (b"authorization", b"Bearer a"),
            (b"x-odd", b"\xff\xfe"),
            (b"authorization", b"Bearer b"),
        ];
        let bytes = serialize_bytes(&pairs);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed, pairs.to_vec());
        assert_eq!(first(&parsed, "authorization"), Some(&b"Bearer a"[..]));
        assert_eq!(first(&parsed, "x-odd"), Some(&b"\xff\xfe"[..]));
        assert_eq!(first(&parsed, "accept"), None);
        assert_eq!(parse(&[]), Some(Vec::new()));
        assert_eq!(parse(&serialize_bytes(&[])), Some(Vec::new()));
    }

    #[test]
    fn what_the_filter_writes_reads_back() {
        let headers = [("content-type", "application/json"), ("request-id", "x")];
        let bytes = serialize(&headers);
        assert_eq!(
            bytes,
            serialize_bytes(&[
                (b"content-type", b"application/json"),
                (b"request-id", b"x")
            ])
        );
        let parsed = parse(&bytes).unwrap();
        assert_eq!(first(&parsed, "request-id"), Some(&b"x"[..]));
        assert_eq!(parse(&serialize::<&str, &str>(&[])), Some(Vec::new()));
    }

    #[test]
    fn malformed_buffers_are_refused_not_panicked_on() {
        let good = serialize_bytes(&[(b"accept", b"application/json")]);
        for cut in 0..good.len() - 1 {
            assert_eq!(parse(&good[..cut.max(1)]), None, "cut at {cut}");
        }
        // A count or sizes far beyond the buffer.
        assert_eq!(parse(&u32::MAX.to_le_bytes()), None);
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), None);
    }
}
