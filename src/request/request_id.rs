//! `Request-Id` values in PACE's format: an xid, 12 bytes written as 20 characters of `[0-9a-v]`.
//! Bytes: 4-byte Unix time (big-endian), 3-byte machine id, 2-byte process id, 3-byte counter.
//! Inside a wasm VM there is no machine or process id, so both are drawn at random once per VM.

const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// Makes xids for one VM. The counter starts at a random value, as in the reference implementation.
pub struct XidGenerator {
    machine_and_pid: [u8; 5],
    counter: u32,
}

impl XidGenerator {
    /// `seed` comes from the host's randomness: 5 bytes of machine id and pid, 3 of counter start.
    pub fn new(seed: [u8; 8]) -> Self {
        let [m0, m1, m2, p0, p1, c0, c1, c2] = seed;
        XidGenerator {
            machine_and_pid: [m0, m1, m2, p0, p1],
            counter: u32::from_be_bytes([0, c0, c1, c2]),
        }
    }

    pub fn next(&mut self, unix_secs: u64) -> String {
        self.counter = self.counter.wrapping_add(1) & 0x00ff_ffff;
        let time = (unix_secs as u32).to_be_bytes();
        let count = self.counter.to_be_bytes();
        let [m0, m1, m2, p0, p1] = self.machine_and_pid;
        let [t0, t1, t2, t3] = time;
        let [_, c0, c1, c2] = count;
        encode([t0, t1, t2, t3, m0, m1, m2, p0, p1, c0, c1, c2])
    }
}

/// Base32hex without padding: 96 bits become 20 characters, the last one carrying 1 bit.
fn encode(id: [u8; 12]) -> String {
    let mut acc: u128 = 0;
    for byte in id {
        acc = (acc << 8) | u128::from(byte);
    }
    acc <<= 4; // pad 96 bits to 100 = 20 × 5
    let mut out = String::with_capacity(20);
    for i in (0..20).rev() {
        let index = ((acc >> (i * 5)) & 0x1f) as usize;
        out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'0')));
    }
    out
}

/// A client-supplied `Request-Id` is echoed only when it has the documented shape, so a caller cannot
/// inject arbitrary text into our error documents and logs.
pub fn is_valid(candidate: &str) -> bool {
    candidate.len() == 20
        && candidate
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_reference_implementation() {
        // From rs/xid's test table: bytes 4d88e15b60f486e428412dc9 encode as 9m4e2mr0ui3e8a215n4g.
        let id = [
            0x4d, 0x88, 0xe1, 0x5b, 0x60, 0xf4, 0x86, 0xe4, 0x28, 0x41, 0x2d, 0xc9,
        ];
        assert_eq!(encode(id), "9m4e2mr0ui3e8a215n4g");
    }

    #[test]
    fn generated_ids_are_valid_distinct_and_carry_the_time() {
        let mut ids = XidGenerator::new([1, 2, 3, 4, 5, 0xff, 0xff, 0xff]);
        let a = ids.next(1_700_000_000);
        let b = ids.next(1_700_000_000);
        assert!(is_valid(&a) && is_valid(&b), "{a} {b}");
        assert_ne!(a, b);
        // Same second: the first 7 characters (35 bits, covering the 32-bit time) agree.
        assert_eq!(a.get(..6), b.get(..6));
        // The counter wrapped from 0xffffff to 0 and then 1 without panicking.
        assert!(a.ends_with("00") || a.ends_with("0g"));
    }

    #[test]
    fn validates_shape() {
        assert!(is_valid("9m4e2mr0ui3e8a215n4g"));
        assert!(!is_valid("9m4e2mr0ui3e8a215n4"));
        assert!(!is_valid("9m4e2mr0ui3e8a215n4gg"));
        assert!(!is_valid("9M4E2MR0UI3E8A215N4G"));
        assert!(!is_valid("9m4e2mr0ui3e8a215n4w"));
        assert!(!is_valid("<script>alert(1)</sc"));
        assert!(!is_valid(""));
    }
}
