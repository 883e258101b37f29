//! Comparing shared secrets presented in headers.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Whether the presented `authorization` header equals the expected value exactly.
/// Compares SHA-256 digests in constant time, so neither the content nor the length of the
/// expected value leaks through timing.
pub fn auth_matches(expected: &str, presented: Option<&str>) -> bool {
    let Some(presented) = presented else {
        return false;
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    a[..].ct_eq(&b[..]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_compare() {
        assert!(auth_matches("Bearer s3cret", Some("Bearer s3cret")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3creT")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3cret ")));
        assert!(!auth_matches("Bearer s3cret", Some("Bearer s3cre")));
        assert!(!auth_matches("Bearer s3cret", Some("")));
        assert!(!auth_matches("Bearer s3cret", None));
    }
}
