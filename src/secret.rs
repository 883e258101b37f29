//! Secrets (PIN, password, keys, minted codes) live in this wrapper so that a stray `{:?}` prints a
//! length instead of the value, and the memory is wiped when the request ends.

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value.into_bytes())
    }

    pub fn from_bytes(value: Vec<u8>) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for building JSON. Secrets made by `new` are always UTF-8.
    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time equality (the length is not hidden, which is public for every secret here).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.as_slice().ct_eq(other).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("8299".to_string());
        assert_eq!(format!("{s:?}"), "Secret(<4 bytes redacted>)");
        assert!(s.ct_eq(b"8299"));
        assert!(!s.ct_eq(b"8298"));
        assert!(!s.ct_eq(b"829"));
    }
}
