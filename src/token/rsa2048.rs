//! RS256, RS384 and RS512 (RSASSA-PKCS1-v1_5, RFC 8017 §8.2.2) for 2048-bit keys with e = 65537,
//! the keys real issuers publish, with the key prepared once.
//!
//! Why not ring for these: ring rebuilds the key's Montgomery form (R² mod n) on every verify
//! and has no prepared public key. With the form computed when the key loads, a verify is one
//! conversion, 16 Montgomery squarings and one multiply: measured in V8, 91 µs against ring's
//! 189 µs (docs/performance.md). Every other RSA key, and PS256, stays on ring, and so does every
//! native build (the bench's native peer): there ring's assembly is faster still.
//!
//! Verification follows RFC 8017's own method: compute the encoding the signature must decrypt
//! to (EMSA-PKCS1-v1_5: 00 01 FF…FF 00 ‖ DigestInfo ‖ H) and compare, in constant time. Nothing
//! from the signature is parsed. The unit test checks every answer against ring.

use crypto_bigint::modular::{MontyForm, MontyParams};
use crypto_bigint::{Odd, U2048};
use subtle::ConstantTimeEq;

/// The modulus length in bytes.
const K: usize = 256;

/// The hash of a PKCS#1 v1.5 signature and its DER `DigestInfo` prefix (RFC 8017 §9.2, note 1).
#[derive(Clone, Copy)]
pub struct Hash {
    digest: &'static ring::digest::Algorithm,
    digest_info: &'static [u8],
}

pub const SHA256: Hash = Hash {
    digest: &ring::digest::SHA256,
    digest_info: &[
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ],
};
pub const SHA384: Hash = Hash {
    digest: &ring::digest::SHA384,
    digest_info: &[
        0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02,
        0x05, 0x00, 0x04, 0x30,
    ],
};
pub const SHA512: Hash = Hash {
    digest: &ring::digest::SHA512,
    digest_info: &[
        0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03,
        0x05, 0x00, 0x04, 0x40,
    ],
};

/// A 2048-bit RSA public key with e = 65537, prepared for PKCS#1 v1.5 verification with `hash`.
pub struct Prepared {
    /// Holds n too (`params.modulus()`).
    params: MontyParams<{ U2048::LIMBS }>,
    hash: Hash,
}

impl Prepared {
    /// `n` and `e` big-endian without leading zeros. `None` unless n is exactly 2048 bits and odd
    /// and e is 65537: the caller verifies every other key with ring.
    pub fn new(n: &[u8], e: &[u8], hash: Hash) -> Option<Self> {
        if n.len() != K || n.first().is_none_or(|b| b & 0x80 == 0) || e != [0x01, 0x00, 0x01] {
            return None;
        }
        let odd: Option<Odd<U2048>> = Odd::new(U2048::from_be_slice(n)).into();
        Some(Prepared {
            params: MontyParams::new_vartime(odd?),
            hash,
        })
    }

    /// Whether `signature` is a valid signature of `message` with this key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        // RSAVP1, steps 1 and 2: exactly k bytes and, as an integer, below n.
        if signature.len() != K {
            return false;
        }
        let s = U2048::from_be_slice(signature);
        if &s >= self.params.modulus().as_ref() {
            return false;
        }
        // s^65537 = s^(2^16) · s
        let s = MontyForm::new(&s, self.params);
        let mut m = s;
        for _ in 0..16 {
            m = m.square();
        }
        let encoded = m.mul(&s).retrieve().to_be_bytes();
        encoded.ct_eq(&self.expected(message)).into()
    }

    /// EMSA-PKCS1-v1_5(H(message)): 00 01 FF…FF 00 ‖ DigestInfo ‖ H, k bytes.
    fn expected(&self, message: &[u8]) -> [u8; K] {
        let hash = ring::digest::digest(self.hash.digest, message);
        let mut em = [0xff_u8; K];
        let tail_len = 1 + self.hash.digest_info.len() + hash.as_ref().len();
        let (head, tail) = em.split_at_mut(K - tail_len);
        if let [b0, b1, ..] = head {
            *b0 = 0x00;
            *b1 = 0x01;
        }
        if let Some((separator, rest)) = tail.split_first_mut() {
            *separator = 0x00;
            let (info, digest) = rest.split_at_mut(self.hash.digest_info.len());
            info.copy_from_slice(self.hash.digest_info);
            digest.copy_from_slice(hash.as_ref());
        }
        em
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{self as rs, RsaPublicKeyComponents};
    use rsa::traits::PublicKeyParts;
    use rsa::RsaPrivateKey;

    fn dev_key() -> RsaPrivateKey {
        use rsa::pkcs8::DecodePrivateKey;
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/envoy/dev-keys/rs256-DEV-ONLY.pem"
        ))
        .unwrap();
        RsaPrivateKey::from_pkcs8_pem(&pem).unwrap()
    }

    #[test]
    fn agrees_with_ring_on_every_bit_flip_and_edge_case() {
        use rsa::signature::{SignatureEncoding, Signer};
        let key = dev_key();
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        let ring_says = |params: &rs::RsaParameters, m: &[u8], s: &[u8]| {
            RsaPublicKeyComponents { n: &n, e: &e }
                .verify(params, m, s)
                .is_ok()
        };
        let msg = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJkZW1vLXVzZXIifQ";
        let cases: [(Hash, &rs::RsaParameters, Vec<u8>); 3] = [
            (
                SHA256,
                &rs::RSA_PKCS1_2048_8192_SHA256,
                rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone())
                    .sign(msg)
                    .to_vec(),
            ),
            (
                SHA384,
                &rs::RSA_PKCS1_2048_8192_SHA384,
                rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(key.clone())
                    .sign(msg)
                    .to_vec(),
            ),
            (
                SHA512,
                &rs::RSA_PKCS1_2048_8192_SHA512,
                rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(key.clone())
                    .sign(msg)
                    .to_vec(),
            ),
        ];
        for (i, (hash, params, sig)) in cases.iter().enumerate() {
            let prepared = Prepared::new(&n, &e, *hash).unwrap();
            assert!(prepared.verify(msg, sig) && ring_says(params, msg, sig));
            for bit in 0..K * 8 {
                let mut flipped = sig.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(!prepared.verify(msg, &flipped), "case {i}, bit {bit}");
                assert!(!ring_says(params, msg, &flipped), "case {i}, bit {bit}");
            }
            // Another hash's signature, another message, and the integers around n.
            let other = &cases[(i + 1) % 3].2;
            assert!(!prepared.verify(msg, other) && !ring_says(params, msg, other));
            assert!(!prepared.verify(b"another message", sig));
            let mut n_minus_1 = n.clone();
            n_minus_1[K - 1] -= 1;
            let mut one = [0u8; K];
            one[K - 1] = 1;
            for edge in [&n[..], &n_minus_1, &[0u8; K], &one, &sig[1..]] {
                assert!(!prepared.verify(msg, edge));
                assert!(!ring_says(params, msg, edge));
            }
            let mut long = vec![0u8];
            long.extend_from_slice(sig);
            assert!(!prepared.verify(msg, &long) && !ring_says(params, msg, &long));
        }
    }

    #[test]
    fn only_2048_bit_keys_with_e_65537_are_prepared() {
        let key = dev_key();
        let n = key.n().to_bytes_be();
        assert!(Prepared::new(&n, &[1, 0, 1], SHA256).is_some());
        assert!(Prepared::new(&n, &[3], SHA256).is_none());
        assert!(Prepared::new(&n, &[0, 1, 0, 1], SHA256).is_none());
        assert!(Prepared::new(&n[1..], &[1, 0, 1], SHA256).is_none());
        let mut longer = vec![0x80];
        longer.extend_from_slice(&n);
        assert!(Prepared::new(&longer, &[1, 0, 1], SHA256).is_none());
        let mut even = n.clone();
        even[K - 1] &= 0xfe;
        assert!(Prepared::new(&even, &[1, 0, 1], SHA256).is_none());
        let mut short_top = n.clone();
        short_top[0] &= 0x7f; // 2047 bits
        assert!(Prepared::new(&short_top, &[1, 0, 1], SHA256).is_none());
    }
}
