//! Viewer pseudonyms: the gateway replaces every client's `viewer_id` with a
//! keyed hash before the event reaches Kafka, so raw viewer ids are never in
//! `tally.views`, the counts topic or the Parquet archive.
//!
//! The hash is HMAC-SHA-256 keyed with a configured secret, cut to 128 bits
//! and written as 32 lowercase hex digits. Keyed, because a plain hash of a
//! guessable id (an e-mail address, a user number) is reversed by hashing
//! guesses; deterministic, because the same viewer must hash the same in
//! every gateway and after every restart, or uniques would count one viewer
//! many times. Changing the secret therefore starts every viewer anew.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Hex digits of a pseudonym.
pub const PSEUDONYM_LEN: usize = 32;

/// Turns viewer ids into pseudonyms with one secret.
#[derive(Clone)]
pub struct Pseudonymizer {
    /// The keyed state, cloned per id (the key schedule is done once).
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymizer(***)")
    }
}

impl Pseudonymizer {
    /// A pseudonymizer keyed with `secret` (any length; HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        Self { mac: Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key")) }
    }

    /// The pseudonym of `viewer_id`.
    pub fn pseudonym(&self, viewer_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(viewer_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut out = String::with_capacity(PSEUDONYM_LEN);
        for byte in &digest[..PSEUDONYM_LEN / 2] {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_the_keyed_hash_stable_and_secret_dependent() {
        // RFC 4231, test case 2: HMAC-SHA-256("Jefe", "what do ya want for nothing?").
        let rfc = Pseudonymizer::new(b"Jefe");
        assert_eq!(rfc.pseudonym("what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c7");
        let a = Pseudonymizer::new(b"secret-a");
        assert_eq!(a.pseudonym("alice@example.com"), Pseudonymizer::new(b"secret-a").pseudonym("alice@example.com"));
        assert_ne!(a.pseudonym("alice@example.com"), a.pseudonym("bob@example.com"));
        assert_ne!(a.pseudonym("alice@example.com"), Pseudonymizer::new(b"secret-b").pseudonym("alice@example.com"));
        assert!(!a.pseudonym("alice@example.com").contains("alice"));
        assert_eq!(format!("{a:?}"), "Pseudonymizer(***)");
    }
}
