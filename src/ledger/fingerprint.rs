//! A message's fingerprint: 63 bits of the SHA-1 of its `message_id` and body, written in
//! the receipt of its record. A delivery whose fingerprint was accepted before is a copy of
//! that message (redelivered by the broker after a lost ack, or re-sent by its publisher),
//! not a new event; see [`crate::ledger::Index::turns`] for what that decides.

use std::fmt;
use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

/// The fingerprint of one message; written as 16 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(NonZeroU64);

impl Fingerprint {
    /// The fingerprint of a message with `message_id` (if it has one) and `body`.
    pub fn of_message(message_id: Option<&str>, body: &[u8]) -> Self {
        let id = message_id.unwrap_or_default();
        let mut hasher = Sha1::new();
        // The length first, so that no split of the same bytes between id and body collides.
        hasher.update((id.len() as u64).to_be_bytes());
        hasher.update(id.as_bytes());
        hasher.update(body);
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize()[..8]);
        Fingerprint::from_bits(u64::from_be_bytes(first))
    }

    /// The lowest bit is always set: never zero, so that an `Option<Fingerprint>` takes
    /// no more room than the fingerprint (the index holds one per key).
    fn from_bits(bits: u64) -> Self {
        Fingerprint(NonZeroU64::MIN | bits)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl From<Fingerprint> for String {
    fn from(fingerprint: Fingerprint) -> String {
        fingerprint.to_string()
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let digits = text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit());
        match u64::from_str_radix(&text, 16) {
            Ok(value) if digits => Ok(Fingerprint::from_bits(value)),
            _ => Err(format!("a fingerprint is 16 hexadecimal digits, not {text:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_and_the_body_both_count_and_the_text_form_reads_back() {
        let a = Fingerprint::of_message(Some("m-1"), b"{}");
        assert_eq!(a, Fingerprint::of_message(Some("m-1"), b"{}"));
        assert_ne!(a, Fingerprint::of_message(Some("m-2"), b"{}"));
        assert_ne!(a, Fingerprint::of_message(Some("m-1"), b"{ }"));
        assert_ne!(Fingerprint::of_message(Some("ab"), b"c"), Fingerprint::of_message(Some("a"), b"bc"));
        assert_eq!(Fingerprint::try_from(a.to_string()), Ok(a));
        assert!(Fingerprint::try_from("xyz".to_owned()).is_err());
        assert!(Fingerprint::try_from("+0000000000000001".to_owned()).is_err());
        assert_eq!(size_of::<Option<Fingerprint>>(), 8);
    }
}
